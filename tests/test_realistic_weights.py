"""check's realistic weights: degenerate (constant) tensors are redrawn on a copy, BatchNorm
statistics calibrated, and a check on a degenerate model is refused rather than passed."""

from __future__ import annotations

import json

import torch
from torch import nn

from gdp_graph.cli.main import main
from gdp_graph.prune.weights import realistic_weights


class ZeroHeadNet(nn.Module):
    """Random-init conv stack whose classifier starts at zero and whose residual branch ends in a
    1e-6 layer scale: outputs are all zero until the weights are made realistic."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.gamma = nn.Parameter(torch.full((1, 8, 1, 1), 1e-6))
        self.head = nn.Linear(8, 4)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = x + self.gamma * self.conv(x)
        return self.head(x.mean((2, 3)))


def zero_head_net():
    torch.manual_seed(0)
    return ZeroHeadNet().eval(), torch.randn(4, 3, 8, 8)


def test_constant_tensors_are_redrawn_on_a_copy_and_varying_ones_kept():
    model, x = zero_head_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    real = realistic_weights(model, (x,), seed=0)
    for key, value in model.state_dict().items():  # the user's model is untouched
        assert torch.equal(value, before[key]), key
    state = real.state_dict()
    assert torch.equal(state["stem.weight"], before["stem.weight"])  # random init already varies
    for key in ("head.weight", "head.bias", "bn.bias", "gamma"):
        assert not bool((state[key] == state[key].reshape(-1)[0]).all()), key
    assert float(state["gamma"].abs().min()) > 0.4  # a 1e-6 layer scale is treated as 1
    # BatchNorm calibrated on the example batch: normalized activations have unit scale
    feats = real.stem(x)
    assert torch.allclose(state["bn.running_mean"], feats.mean((0, 2, 3)), atol=1e-5)
    assert not real.training
    out = real(x).detach()
    assert float(out.std()) > 1e-3
    assert torch.equal(realistic_weights(model, (x,), seed=0).head.weight, real.head.weight)  # deterministic


def test_check_refuses_a_degenerate_model_and_passes_with_realistic_weights(capsys):
    spec = f"{__file__}:zero_head_net"
    assert main(["check", spec, "--ratio", "0.5", "--blocks", "0", "--no-realistic-weights"]) == 2
    err = capsys.readouterr().err
    assert "cannot verify" in err and "all zeros" in err and "--no-realistic-weights" in err
    assert main(["check", spec, "--ratio", "0.5", "--blocks", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["realistic_weights"] and not out["inconclusive"]
    assert out["params_after"] < out["params_before"]


class TrainModeFails(nn.Module):
    """Runs in eval mode only (a forward that refuses training mode, as some inference-only
    code does), after a BatchNorm whose statistics are trained ones."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.second = nn.BatchNorm2d(4)
        with torch.no_grad():
            for bn in (self.bn, self.second):
                bn.running_mean.copy_(torch.tensor([0.3, -1.0, 2.0, 0.5]))
                bn.running_var.copy_(torch.tensor([0.2, 4.0, 1.5, 0.7]))
                bn.num_batches_tracked.fill_(100)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        if self.training:
            raise RuntimeError("inference only")
        return self.second(x)


def test_a_failed_calibration_keeps_the_statistics_the_norms_had():
    model = TrainModeFails().eval()
    real = realistic_weights(model, (torch.randn(2, 3, 4, 4),))
    for name in ("bn", "second"):
        for key in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(getattr(getattr(real, name), key), getattr(getattr(model, name), key)), (name, key)
        assert getattr(real, name).momentum == 0.1
    assert not real.training
