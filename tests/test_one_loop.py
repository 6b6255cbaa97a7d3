"""The CIFAR recipe trains through the library's one training loop and computes what a
hand-written step sequence computes (same order of operations, same random numbers): the same
losses and bit-identical weights on a tiny random dataset."""

from __future__ import annotations

import ast
import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console

from gdp_graph.gates.attach import attach
from gdp_graph.recipes.cifar10.data.cifar10 import CifarLoader
from gdp_graph.recipes.cifar10.gdp_phase import GateOptimizer, gdp_phase
from gdp_graph.recipes.cifar10.models.cifar_resnet import cifar_resnet
from gdp_graph.recipes.cifar10.training import cosine_schedule, make_optimizer, train_one_epoch

PACKAGE = Path(__file__).resolve().parents[1] / "gdp_graph"


def _loader() -> CifarLoader:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (24, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (24,), generator=g)
    return CifarLoader(images, labels, batch_size=8, shuffle=True, seed=3)


def _reference(net, loader, opt, sched, epochs, *, extra_loss=None, on_step=None, autocast=False) -> list[float]:
    """The step sequence the CIFAR recipe has always run, written out by hand."""
    losses, step = [], 0
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        net.train()
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                task = F.cross_entropy(net(x), y)
            task = task.float()
            loss = task + extra_loss() if extra_loss is not None else task
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if on_step is not None:
                on_step(step)
            losses.append(float(loss.detach()))
    return losses


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    differ = [k for k in sa if isinstance(sa[k], torch.Tensor) and not torch.equal(sa[k], sb[k])]
    assert not differ, differ[:5]


@pytest.mark.parametrize("autocast", [False, True])
def test_plain_epochs_match_the_hand_written_steps(autocast) -> None:
    torch.manual_seed(0)
    model = cifar_resnet(8)
    twin = copy.deepcopy(model)
    loader, epochs = _loader(), 2
    opt = make_optimizer(model, 0.05)
    sched = cosine_schedule(opt, epochs * len(loader))
    means, step = [], 0
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        stats = train_one_epoch(model, loader, opt, device="cpu", scheduler=sched, start_step=step, autocast=autocast)
        step = stats["global_step"]
        means.append(stats["loss"])
    twin_opt = make_optimizer(twin, 0.05)
    losses = _reference(twin, loader, twin_opt, cosine_schedule(twin_opt, epochs * len(loader)), epochs,
                        autocast=autocast)
    _assert_same_state(model, twin)
    per_epoch = len(loader)
    expected = [sum(losses[i:i + per_epoch]) / per_epoch for i in range(0, len(losses), per_epoch)]
    assert means == pytest.approx(expected, rel=1e-6)


def test_the_gdp_phase_matches_the_hand_written_steps() -> None:
    torch.manual_seed(0)
    loader, epochs = _loader(), 2
    made = []
    for _ in range(2):
        torch.manual_seed(1)
        made.append(attach(cifar_resnet(8), policy="cifar_resnet", example_inputs=torch.randn(2, 3, 32, 32),
                           total_steps=epochs * len(loader), steps_per_epoch=len(loader)))
    gated, twin = made
    trajectory: list = []
    gdp_phase(gated, loader, epochs=epochs, lr=0.05, gate_lr=0.02, device=torch.device("cpu"), autocast=False,
              console=Console(quiet=True), trajectory=trajectory, on_finalized=lambda *_: None)
    opt = GateOptimizer(twin, 0.05, 0.02)
    _reference(twin, loader, opt, cosine_schedule(opt.weights, epochs * len(loader)), epochs,
               extra_loss=twin.penalty, on_step=lambda _: twin.step())
    _assert_same_state(gated, twin)
    assert gated.report()["lambda"] == twin.report()["lambda"] and bool(twin.fixed)


def _calls(tree: ast.AST, name: str) -> int:
    return sum(1 for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
               and node.func.attr == name)


def test_one_module_of_the_package_runs_a_training_loop() -> None:
    """``.backward()`` is called in exactly one module: the loop every recipe goes through."""
    backward = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                      if _calls(ast.parse(p.read_text()), "backward"))
    assert backward == ["recipes/recovery.py"]


def test_train_steps_stops_at_the_budget_or_when_the_batches_run_out_and_fetches_no_extra_batch() -> None:
    from gdp_graph.recipes.recovery import StepResult, train_steps
    from gdp_graph.recipes.task import Task

    fetched: list[int] = []

    def batches(n: int):
        for i in range(n):
            fetched.append(i)
            yield torch.randn(4, 3), torch.randint(0, 2, (4,))

    model = torch.nn.Linear(3, 2)
    task = Task(train_loader=[], loss=lambda out, batch: F.cross_entropy(out, batch[1]))
    seen: list[StepResult] = []
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mean = train_steps(model, task, torch.device("cpu"), 2, opt, batches=batches(5), scheduler=None, on_step=seen.append)
    assert fetched == [0, 1] and [s.step for s in seen] == [1, 2] and opt.param_groups[0]["lr"] == 0.1
    assert mean == pytest.approx(float(sum(s.loss.double() for s in seen)) / 2) and seen[0].extra is None
    fetched.clear()
    assert math.isnan(train_steps(model, task, torch.device("cpu"), 0, opt, batches=batches(5)))  # no step at all
    assert fetched == []
    mean = train_steps(model, task, torch.device("cpu"), 10, opt, batches=batches(3), on_step=seen.append,
                       extra_loss=lambda: model.weight.sum() * 0)
    assert fetched == [0, 1, 2] and seen[-1].step == 3 and seen[-1].extra is not None and math.isfinite(mean)
