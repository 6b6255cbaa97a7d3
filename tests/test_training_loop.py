"""The generic training / evaluation loop and the optimizer / schedule helpers."""

from __future__ import annotations

import io
import math

import pytest
import torch
from rich.console import Console
from rich.progress import Progress
from torch import nn

from gdp_graph.recipes.cifar10.training import (
    cosine_lr_factor,
    cosine_schedule,
    evaluate,
    make_optimizer,
    train_one_epoch,
)


def make_data(n: int = 64, d: int = 8, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, d, generator=g) * 3
    y = torch.randint(0, classes, (n,), generator=g)
    x = centers[y] + torch.randn(n, d, generator=g) * 0.5
    return x, y


def batches(
    x: torch.Tensor, y: torch.Tensor, bs: int = 16
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i : i + bs], y[i : i + bs]) for i in range(0, len(y), bs)]


def small_model(d: int = 8, classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, classes))


def test_loss_decreases() -> None:
    x, y = make_data()
    loader = batches(x, y)
    model = small_model()
    opt = make_optimizer(model, lr=0.1)
    before = evaluate(model, loader, device="cpu")
    step = 0
    for _ in range(5):
        stats = train_one_epoch(model, loader, opt, device="cpu", start_step=step)
        step = stats["global_step"]
    after = evaluate(model, loader, device="cpu")
    assert after["loss"] < 0.5 * before["loss"]
    assert after["accuracy"] > 0.9 and after["n"] == 64
    assert stats["steps"] == 4 and stats["n"] == 64 and step == 20
    assert stats["extra_loss"] == 0.0 and stats["loss"] == stats["task_loss"]
    assert 0.0 <= stats["accuracy"] <= 1.0 and stats["seconds"] >= 0


def test_extra_loss_is_added_and_reported() -> None:
    x, y = make_data()
    loader = batches(x, y)
    model = small_model()
    calls = []

    def penalty() -> torch.Tensor:
        calls.append(1)
        return torch.tensor(0.5)

    stats = train_one_epoch(
        model, loader, make_optimizer(model, lr=0.01), device="cpu", extra_loss=penalty
    )
    assert len(calls) == 4
    assert stats["extra_loss"] == pytest.approx(0.5)
    assert stats["loss"] == pytest.approx(stats["task_loss"] + 0.5)


def test_extra_loss_reaches_the_gradients() -> None:
    x, y = make_data(n=16)
    lr, c = 0.01, 3.0
    results = []
    for use_extra in (False, True):
        model = small_model()
        opt = make_optimizer(model, lr=lr, momentum=0.0, weight_decay=0.0)
        w = model[3].weight
        extra = (lambda w=w: c * w.sum()) if use_extra else None
        train_one_epoch(model, [(x, y)], opt, device="cpu", extra_loss=extra)
        results.append(w.detach().clone())
    # d(c * sum(w))/dw = c, so plain SGD moves every weight an extra -lr * c
    torch.testing.assert_close(results[1] - results[0], torch.full_like(results[0], -lr * c))


def test_on_step_scheduler_and_max_steps() -> None:
    x, y = make_data()
    loader = batches(x, y)
    model = small_model()
    opt = make_optimizer(model, lr=0.1)
    sched = cosine_schedule(opt, total_steps=8)
    seen: list[tuple[int, float]] = []
    stats = train_one_epoch(
        model,
        loader,
        opt,
        device="cpu",
        scheduler=sched,
        start_step=0,
        on_step=lambda s: seen.append((s, opt.param_groups[0]["lr"])),
    )
    # called after each optimizer step, with the schedule already advanced
    assert [s for s, _ in seen] == [1, 2, 3, 4]
    for s, lr in seen:
        assert lr == pytest.approx(0.1 * cosine_lr_factor(s, 8))
    stats = train_one_epoch(
        model,
        loader,
        opt,
        device="cpu",
        scheduler=sched,
        start_step=stats["global_step"],
        max_steps=2,
        on_step=lambda s: seen.append((s, 0.0)),
    )
    assert [s for s, _ in seen[4:]] == [5, 6] and stats["steps"] == 2 and stats["n"] == 32
    assert stats["global_step"] == 6 and stats["lr"] == pytest.approx(0.1 * cosine_lr_factor(6, 8))


class ModeProbe(nn.Module):
    """Records the training flag and grad mode it ran under."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 3)
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((self.training, torch.is_grad_enabled()))
        return self.lin(x)


def test_evaluate_restores_modes_and_uses_no_grad() -> None:
    x, y = make_data(n=20)
    model = ModeProbe()
    model.train()
    out = evaluate(model, batches(x, y, bs=8), device="cpu")
    assert model.training and model.lin.training
    assert model.seen == [(False, False)] * 3 and out["n"] == 20
    # mixed modes (e.g. a frozen submodule) are restored module by module
    model.lin.eval()
    evaluate(model, batches(x, y), device="cpu")
    assert model.training and not model.lin.training
    model.eval()
    evaluate(model, batches(x, y), device="cpu")
    assert not model.training


def test_evaluate_restores_mode_on_error() -> None:
    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    model = Boom().train()
    with pytest.raises(RuntimeError, match="boom"):
        evaluate(model, [(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))], device="cpu")
    assert model.training


def test_evaluate_exact_values() -> None:
    class Fixed(nn.Module):
        def forward(self, x):
            return x  # the inputs are the logits

    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 0.0]])
    target = torch.tensor([0, 1, 1, 0])
    out = evaluate(Fixed(), [(logits[:3], target[:3]), (logits[3:], target[3:])], device="cpu")
    expected = torch.nn.functional.cross_entropy(logits, target).item()
    assert out["loss"] == pytest.approx(expected) and out["n"] == 4
    assert out["accuracy"] == pytest.approx(3 / 4)  # the tie in row 3 resolves to class 0


def test_autocast_bfloat16_on_cpu() -> None:
    x, y = make_data()
    model = small_model()
    dtypes = []
    model[0].register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    stats = train_one_epoch(
        model, batches(x, y), make_optimizer(model, lr=0.05), device="cpu", autocast=True
    )
    assert set(dtypes) == {torch.bfloat16} and math.isfinite(stats["loss"])
    ev = evaluate(model, batches(x, y), device="cpu", autocast=True)
    assert math.isfinite(ev["loss"])
    assert model[0].weight.dtype == torch.float32


def test_progress_options() -> None:
    x, y = make_data()
    loader = batches(x, y)
    model = small_model()
    opt = make_optimizer(model, lr=0.01)
    # True: under pytest stderr is no terminal, so no bar and no error
    train_one_epoch(model, loader, opt, device="cpu", progress=True)
    # a caller's Progress on a non-terminal console: left untouched
    quiet = Progress(console=Console(file=io.StringIO()))
    train_one_epoch(model, loader, opt, device="cpu", progress=quiet)
    assert len(quiet.tasks) == 0
    # a caller's Progress on a terminal: a task is added while the epoch runs, then removed
    buf = io.StringIO()
    live = Progress(console=Console(file=buf, force_terminal=True, width=100))
    with live:
        train_one_epoch(model, loader * 10, opt, device="cpu", progress=live, description="ep1")
        evaluate(model, loader, device="cpu", progress=live)
    assert len(live.tasks) == 0 and "ep1" in buf.getvalue()
    with pytest.raises(TypeError, match="progress"):
        train_one_epoch(model, loader, opt, device="cpu", progress="yes")  # type: ignore[arg-type]


def test_make_optimizer() -> None:
    model = small_model()
    opt = make_optimizer(model, lr=0.1)
    assert isinstance(opt, torch.optim.SGD)
    g = opt.param_groups[0]
    assert g["nesterov"] and g["momentum"] == 0.9 and g["weight_decay"] == 5e-4 and g["lr"] == 0.1
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    split = make_optimizer(model, lr=0.1, no_weight_decay=lambda name, p: p.ndim == 1)
    assert [gr["weight_decay"] for gr in split.param_groups] == [5e-4, 0.0]
    assert all(p.ndim == 1 for p in split.param_groups[1]["params"])
    plain = make_optimizer(model, lr=0.1, momentum=0.0)
    assert not plain.param_groups[0]["nesterov"]
    model[0].weight.requires_grad_(False)
    assert sum(len(g["params"]) for g in make_optimizer(model, lr=0.1).param_groups) == 5


def test_cosine_schedule() -> None:
    assert cosine_lr_factor(0, 100) == pytest.approx(1.0)
    assert cosine_lr_factor(50, 100) == pytest.approx(0.5)
    assert cosine_lr_factor(100, 100) == pytest.approx(0.0, abs=1e-12)
    assert cosine_lr_factor(500, 100) == pytest.approx(0.0, abs=1e-12)
    assert cosine_lr_factor(100, 100, min_factor=0.1) == pytest.approx(0.1)
    assert [cosine_lr_factor(s, 20, warmup_steps=4) for s in range(5)] == pytest.approx(
        [0.25, 0.5, 0.75, 1.0, 1.0]
    )
    model = small_model()
    opt = make_optimizer(model, lr=0.2)
    sched = cosine_schedule(opt, total_steps=10, warmup_steps=2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[2] == pytest.approx(0.2)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        cosine_schedule(opt, total_steps=0)


def test_resnet_on_cifar_loader_smoke() -> None:
    from gdp_graph.recipes.cifar10.data.cifar10 import CifarLoader
    from gdp_graph.recipes.cifar10.models.cifar_resnet import resnet20

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (16,), generator=g)
    train = CifarLoader(images, labels, batch_size=8, shuffle=True, seed=0)
    test = CifarLoader(images, labels, batch_size=16)
    model = resnet20()
    stats = train_one_epoch(model, train, make_optimizer(model, lr=0.05), device="cpu")
    ev = evaluate(model, test, device="cpu")
    assert stats["steps"] == 2 and ev["n"] == 16 and math.isfinite(ev["loss"])
