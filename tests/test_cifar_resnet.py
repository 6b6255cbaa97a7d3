"""The built-in CIFAR ResNets (He et al. 2016) with option-B shortcuts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.fx as fx
from torch import nn

from gdp_graph.recipes.cifar10.models.cifar_resnet import (
    BasicBlock,
    CifarResNet,
    cifar_resnet,
    resnet20,
    resnet32,
    resnet56,
    resnet110,
)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def expected_params(n: int, width: int = 16, classes: int = 10) -> int:
    """Parameter count from the architecture, layer by layer (convs have no bias)."""
    w1, w2, w3 = width, 2 * width, 4 * width
    bn = lambda c: 2 * c  # noqa: E731 - gamma and beta
    stem = 3 * w1 * 9 + bn(w1)
    block = lambda cin, c: cin * c * 9 + c * c * 9 + 2 * bn(c)  # noqa: E731
    shortcut = lambda cin, c: cin * c + bn(c)  # noqa: E731 - 1x1 conv + BN (option B)
    stage1 = n * block(w1, w1)
    stage2 = block(w1, w2) + shortcut(w1, w2) + (n - 1) * block(w2, w2)
    stage3 = block(w2, w3) + shortcut(w2, w3) + (n - 1) * block(w3, w3)
    return stem + stage1 + stage2 + stage3 + w3 * classes + classes


def test_param_counts_match_paper_plus_option_b() -> None:
    # ResNet-20 (n=3), by hand:
    #   stem      conv 3*16*9 = 432, bn 32                                       ->     464
    #   layer1    3 x (2 x 16*16*9 + 2 x 32)       = 3 x 4,672                   ->  14,016
    #   layer2    16*32*9 + 32*32*9 + 128 = 13,952, shortcut 16*32 + 64 = 576,
    #             2 x (2 x 32*32*9 + 128)  = 37,120                              ->  51,648
    #   layer3    32*64*9 + 64*64*9 + 256 = 55,552, shortcut 32*64 + 128 = 2,176,
    #             2 x (2 x 64*64*9 + 256)  = 147,968                             -> 205,696
    #   fc        64*10 + 10                                                     ->     650
    #   total 272,474 = the paper's 0.27M (269,722 with option-A shortcuts) + 2,752 for the
    #   two 1x1 conv + BN shortcuts (576 + 2,176).
    assert n_params(resnet20()) == 272_474 == 269_722 + 2_752
    # ResNet-56 (n=9): layer1 9 x 4,672 = 42,048; layer2 13,952 + 576 + 8 x 18,560 = 163,008;
    # layer3 55,552 + 2,176 + 8 x 73,984 = 649,600; + 464 + 650 = 855,770 (paper: 0.85M,
    # 853,018 with option A, + 2,752).
    assert n_params(resnet56()) == 855_770 == 853_018 + 2_752
    assert n_params(resnet32()) == expected_params(5) == 466_906
    assert n_params(resnet110()) == expected_params(18) == 1_730_714
    assert n_params(cifar_resnet(20)) == expected_params(3)
    assert n_params(cifar_resnet(20, num_classes=100, width=32)) == expected_params(3, 32, 100)


@pytest.mark.parametrize("builder", [resnet20, resnet32, resnet56])
def test_output_shape_and_backward(builder) -> None:
    model = builder()
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_width_and_classes() -> None:
    model = cifar_resnet(20, num_classes=100, width=8)
    assert model.conv1.out_channels == 8
    assert model.layer2[0].conv1.out_channels == 16
    assert model.layer3[-1].conv2.out_channels == 32
    assert model.fc.in_features == 32 and model.fc.out_features == 100
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 100)
    assert model.depth == 20


@pytest.mark.parametrize("depth", [0, 2, 7, 21, 55])
def test_bad_depth(depth: int) -> None:
    with pytest.raises(ValueError, match="6n\\+2"):
        cifar_resnet(depth)


def test_module_names_and_shortcuts() -> None:
    model = resnet20()
    names = dict(model.named_modules())
    for name in [
        "conv1",
        "bn1",
        "layer1.0.conv1",
        "layer1.0.bn1",
        "layer1.0.conv2",
        "layer1.0.bn2",
        "layer2.0.downsample.0",
        "layer2.0.downsample.1",
        "layer3.2.conv2",
        "avgpool",
        "fc",
    ]:
        assert name in names, name
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 9
    with_shortcut = [
        n
        for n, m in model.named_modules()
        if isinstance(m, BasicBlock) and m.downsample is not None
    ]
    assert with_shortcut == ["layer2.0", "layer3.0"]
    ds = model.layer2[0].downsample
    assert isinstance(ds[0], nn.Conv2d) and ds[0].kernel_size == (1, 1) and ds[0].stride == (2, 2)
    assert isinstance(ds[1], nn.BatchNorm2d)
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))


def test_fx_traceable() -> None:
    model = resnet20().eval()
    gm = fx.symbolic_trace(model)
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)
    targets = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    assert {"conv1", "layer1.0.conv1", "layer2.0.downsample.0", "layer3.2.bn2", "fc"} <= targets
    adds = [n for n in gm.graph.nodes if n.op == "call_function" and "add" in str(n.target)]
    assert len(adds) == 9  # one residual add per block


def test_kaiming_init() -> None:
    torch.manual_seed(0)
    model = resnet56()
    conv = model.layer3[4].conv1  # 64 -> 64, 3x3: fan_out = 576
    torch.testing.assert_close(conv.weight.std().item(), math.sqrt(2 / 576), rtol=0.05, atol=0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert (m.weight == 1).all() and (m.bias == 0).all()
    assert (model.fc.bias == 0).all()
    zero = cifar_resnet(20, zero_init_residual=True)
    assert all((b.bn2.weight == 0).all() for b in zero.modules() if isinstance(b, BasicBlock))


def test_is_cifar_resnet_instance() -> None:
    assert isinstance(resnet110(), CifarResNet)
