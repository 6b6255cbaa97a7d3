"""Sanity checks for the reference model zoo (tests/zoo)."""
from __future__ import annotations

import pytest
import torch
import torch.fx
from torch import nn

from tests.zoo import UNTRACEABLE, ZOO, ZOO_TRACEABLE

EXPECTED_NAMES = {
    "vgg", "resnet_basic", "resnet_bottleneck", "resnet_cifar_optiona", "resnext", "mobilenetv2", "mobilenetv3",
    "efficientnet", "densenet", "inception", "shufflenetv2", "convnext", "vit", "vit_manual_attn", "vit_mha",
    "swin", "unet", "deeplab_aspp", "embedding_lm", "pixelshuffle_sr", "grouped_norm", "untraceable",
    "vit_torchvision", "efficientnet_stochastic_depth", "resnet_timm_normact", "decoder_hf4_style",
    "gpt2_hf4_style", "levit", "nfnet", "yolov8", "ghostnet", "res2net", "resnest",
    "mlp_mixer", "convmixer", "poolformer", "hrnet", "repvgg", "wav2vec2", "textcnn", "hifigan", "t5_encoder",
}

EXPECTED_OUTPUT_SHAPES = {
    "unet": (2, 2, 32, 32),
    "deeplab_aspp": (2, 3, 32, 32),
    "embedding_lm": (2, 8, 50),
    "pixelshuffle_sr": (2, 3, 32, 32),
    "grouped_norm": (2, 3, 16, 16),
}


def _run(model: nn.Module, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(*inputs)


def test_zoo_names():
    assert set(ZOO) == EXPECTED_NAMES
    assert set(ZOO_TRACEABLE) == EXPECTED_NAMES - UNTRACEABLE
    assert UNTRACEABLE == {"untraceable", "gpt2_hf4_style", "yolov8", "t5_encoder"}


@pytest.mark.parametrize("name", list(ZOO))
def test_factory_forward_is_finite_and_deterministic(name):
    model, inputs = ZOO[name]()
    assert isinstance(model, nn.Module) and not model.training
    assert isinstance(inputs, tuple) and inputs and all(t.shape[0] == 2 for t in inputs)

    out1 = _run(model, inputs)
    out2 = _run(model, inputs)
    assert isinstance(out1, torch.Tensor)
    assert out1.shape[0] == 2
    if name in EXPECTED_OUTPUT_SHAPES:
        assert tuple(out1.shape) == EXPECTED_OUTPUT_SHAPES[name]
    assert torch.isfinite(out1).all()
    assert out1.std() > 0
    assert torch.equal(out1, out2)

    # a second factory call rebuilds exactly the same model and inputs
    model_b, inputs_b = ZOO[name]()
    assert all(torch.equal(a, b) for a, b in zip(inputs, inputs_b))
    state, state_b = model.state_dict(), model_b.state_dict()
    assert state.keys() == state_b.keys()
    assert all(torch.equal(state[k], state_b[k]) for k in state)


@pytest.mark.parametrize("name", list(ZOO))
def test_norm_layers_are_randomized(name):
    model, _ = ZOO[name]()
    for mod_name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            assert not torch.allclose(module.running_var, torch.ones_like(module.running_var)), mod_name
            assert not torch.allclose(module.running_mean, torch.zeros_like(module.running_mean)), mod_name
        weight = getattr(module, "weight", None)
        if "Norm" in type(module).__name__ and isinstance(weight, nn.Parameter):
            assert not torch.allclose(weight, torch.ones_like(weight)), mod_name


@pytest.mark.parametrize("name", list(ZOO_TRACEABLE))
def test_symbolic_trace_matches_eager(name):
    model, inputs = ZOO[name]()
    traced = torch.fx.symbolic_trace(model)
    expected = _run(model, inputs)
    actual = _run(traced, inputs)
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_untraceable_model_fails_to_trace():
    model, inputs = ZOO["untraceable"]()
    assert hasattr(model, "gate_block")
    with pytest.raises(torch.fx.proxy.TraceError):
        torch.fx.symbolic_trace(model)
    # the parts around the gate block trace fine on their own
    torch.fx.symbolic_trace(model.stem)
    torch.fx.symbolic_trace(model.head_conv)
    with pytest.raises(torch.fx.proxy.TraceError):
        torch.fx.symbolic_trace(model.gate_block)
