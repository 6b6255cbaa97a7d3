"""``gdp-graph train``: the whole GDP pipeline on CIFAR-10 with a built-in CIFAR ResNet.

pretrain (or load a checkpoint) -> attach gates from a policy -> GDP phase (task loss +
lambda * regularizer, epsilon annealed, lambda steered to the budget) -> finalize (exact, smaller
model) -> optional fine-tune -> report. The defaults are a short schedule that finishes in a few
minutes on 2 CPU cores; ``--preset full`` is the paper-style recipe (run it on a GPU).

:func:`run_pipeline` takes a :class:`TrainSettings` (``gdp_graph.cli.cmd_train`` builds it from the
command line) and runs one small function per stage; every training epoch goes through
:func:`train_epochs` or the GDP phase, both on the library's one loop
(:func:`gdp_graph.recipes.recovery.train_steps`).
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import torch
from rich.console import Console
from torch import nn

from gdp_graph.gates.model import DEFAULT_GATE_LR
from gdp_graph.recipes.cifar10.compare import run_comparison
from gdp_graph.recipes.cifar10.gdp_phase import gdp_phase
from gdp_graph.recipes.cifar10.summary import print_report
from gdp_graph.report.console import terminal_console

#: the finalized model's measured fraction must be within this of the target
BUDGET_BAND = 0.01
#: every model trains in this layout: a training step is faster in it than in the default one
#: (benchmarks/memory_format.py, results in benchmarks/results/memory_format.json)
FORMAT = torch.channels_last
#: exit status of a run whose finalized model missed the budget band (1 means "outputs differ")
EXIT_BUDGET_MISSED = 3

#: the short preset's ``regularizer.fix_at`` (the policy's 0.3 otherwise): the short gated phase
#: does better with the earlier cut on the held-out split (benchmarks/results/
#: cifar_preset_tuning.json, "fix_at 0.15"); on the CIFAR benchmark's shorter window it did not,
#: so the policies keep 0.3
SHORT_FIX_AT = 0.15

PRESETS: dict[str, dict[str, Any]] = {
    # a few minutes on 2 CPU cores: a subset of CIFAR-10, ResNet-20
    "short": dict(depth=20, train_subset=5000, heldout=2000, test_subset=2000, pretrain_epochs=3, gdp_epochs=4,
                  finetune_epochs=1, batch_size=128, lr=0.1, gdp_lr=0.02, finetune_lr=0.01, gate_lr=DEFAULT_GATE_LR,
                  compare_unpruned=True, fix_at=SHORT_FIX_AT),
    # the paper-style recipe: full data, ResNet-56 (hours on a GPU)
    "full": dict(depth=56, train_subset=None, heldout=0, test_subset=None, pretrain_epochs=160, gdp_epochs=120,
                 finetune_epochs=40, batch_size=128, lr=0.1, gdp_lr=0.01, finetune_lr=0.01, gate_lr=DEFAULT_GATE_LR,
                 compare_unpruned=False, fix_at=None),
}


@dataclass(frozen=True)
class CifarPreset:
    """A preset's schedule and data sizes (:data:`PRESETS`), with the command line's overrides;
    reported as ``settings``."""

    depth: int
    train_subset: Optional[int]
    heldout: int
    test_subset: Optional[int]
    pretrain_epochs: int
    gdp_epochs: int
    finetune_epochs: int
    batch_size: int
    lr: float
    gdp_lr: float
    finetune_lr: float
    gate_lr: float
    compare_unpruned: bool
    fix_at: Optional[float]

    @classmethod
    def named(cls, name: str, **overrides: Any) -> "CifarPreset":
        return cls(**{**PRESETS[name], **overrides})


@dataclass(frozen=True)
class TrainSettings:
    """One ``gdp-graph train`` run (the command line fills it: ``gdp_graph.cli.cmd_train``)."""

    preset: CifarPreset = field(default_factory=lambda: CifarPreset.named("short"))
    data: Optional[str] = None  #: the CIFAR-10 archive or directory (None: $GDP_GRAPH_CIFAR10, else download)
    policy: str = "cifar_resnet"  #: a YAML policy file or a shipped policy's name
    regularizer: Optional[str] = None  #: overrides the policy's regularizer
    target: Optional[float] = None  #: overrides the policy's target fraction
    policy_set: tuple[str, ...] = ()  #: ``dotted.key=yaml-value`` policy overrides
    checkpoint: Optional[str] = None  #: pretrained state_dict to start from instead of pretraining
    save_pretrained: Optional[str] = None
    pretrain_only: bool = False
    compare: tuple[str, ...] = ()  #: other methods on the same schedule (compare.COMPARE_METHODS)
    finalize_at_cut: bool = False
    device: str = "auto"
    autocast: bool = False  #: bfloat16 autocast in training
    seed: int = 0
    latency_rounds: int = 15
    out: Optional[str] = None  #: directory for the pruned model, its plan and report.json
    json: bool = False  #: print the report as JSON (the console goes to stderr)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _policy(settings: TrainSettings, fix_at: float | None = None):
    """The policy with the settings' regularizer/target/``policy_set`` overrides and the
    schedule's ``fix_at`` applied (validated again, so an override produces the same precise
    errors as a file)."""
    from gdp_graph.policy import load_policy, policy_from_dict, set_override, switch_regularizer
    policy = load_policy(settings.policy)
    if not settings.regularizer and settings.target is None and fix_at is None and not settings.policy_set:
        return policy
    data = policy.to_dict()
    reg = data["regularizer"]
    if settings.regularizer and settings.regularizer != reg["name"]:
        switch_regularizer(data, settings.regularizer)
    if settings.target is not None:
        data["target"]["fraction"] = settings.target
    if fix_at is not None:
        reg["fix_at"] = fix_at
    for item in settings.policy_set:
        set_override(data, item)
    return policy_from_dict(data, source=f"{policy.source} with command-line overrides", name=policy.name)


def apply_gate_init(gated: Any, train: Any, *, seed: int) -> Optional[Any]:
    """The policy's ``regularizer.init`` on ``gated`` (scores from a few training batches, which
    the training order does not depend on); None for ``uniform``."""
    import torch.nn.functional as F
    from gdp_graph.importance import init_gates
    train.set_epoch(seed)
    return init_gates(gated, train, lambda out, batch: F.cross_entropy(out, batch[1]))


@dataclass
class _Run:
    """What the stages of one run share."""

    settings: TrainSettings
    console: Console
    device: torch.device
    policy: Any
    train: Any
    test: Any
    held: Optional[Any]  #: the held-out split's loader (None without one)
    report: dict[str, Any]
    started: float

    @property
    def preset(self) -> CifarPreset:
        return self.settings.preset

    def accuracy(self, net: nn.Module, key: str, *, heldout: bool = True) -> None:
        """``net``'s test accuracy as ``report[key]`` (and with ``heldout`` its held-out one as
        ``report["heldout"][key]``, when there is that split)."""
        from gdp_graph.recipes.cifar10.training import evaluate
        self.report[key] = evaluate(net, self.test, device=self.device)["accuracy"]
        if heldout and self.held is not None:
            self.report.setdefault("heldout", {})[key] = evaluate(net, self.held, device=self.device)["accuracy"]


def run_pipeline(settings: TrainSettings) -> int:
    """The whole run (see the module docstring); returns the exit status: 0, or
    :data:`EXIT_BUDGET_MISSED` when the finalized model missed the budget band."""
    from gdp_graph.recipes.cifar10.models.cifar_resnet import cifar_resnet
    run = _prepare(settings)
    model = cifar_resnet(run.preset.depth).to(run.device, memory_format=FORMAT)
    pretrained = _pretrain(run, model)
    if settings.pretrain_only:
        return 0
    example = next(iter(run.test))[0][:2]
    pruned, finalized = _gdp(run, model, example)
    if run.preset.finetune_epochs > 0:
        train_epochs(run, pruned, run.preset.finetune_epochs, run.preset.finetune_lr, "finetune")
        run.accuracy(pruned, "acc_finetuned")
    _compare_methods(run, pretrained, example)
    if run.preset.compare_unpruned and not settings.checkpoint:
        _unpruned(run, pretrained)
    pruned_cpu = _measure(run, model, pruned, example)
    return _finish(run, pruned_cpu, finalized)


def _prepare(settings: TrainSettings) -> _Run:
    """Seed, policy, data and loaders; the run's heading printed."""
    from gdp_graph.recipes.cifar10.data.cifar10 import cifar10_loaders, load_cifar10
    console = terminal_console(stderr=settings.json)
    s, device = settings.preset, _device(settings.device)
    torch.manual_seed(settings.seed)
    policy = _policy(settings, s.fix_at)
    started = time.perf_counter()
    data, heldout = _split_heldout(load_cifar10, settings.data, s)
    train, test = cifar10_loaders(data, batch_size=s.batch_size, device=device, seed=settings.seed)
    held = None if heldout is None else cifar10_loaders(heldout, batch_size=s.batch_size, device=device)[1]
    held_note = "" if held is None else f" / {len(heldout.test_labels)} held-out"
    console.print(f"CIFAR-10 from {data.source}: {len(data.train_labels)} train{held_note} / "
                  f"{len(data.test_labels)} test images; ResNet-{s.depth} on {device}; policy {policy.name} "
                  f"({policy.regularizer.name}, keep {policy.target.fraction:g} of {policy.target.metric})")
    report = {"settings": asdict(s), "device": str(device), "policy": policy.name,
              "regularizer": policy.regularizer.name, "target": policy.target.fraction, "metric": policy.target.metric}
    return _Run(settings, console, device, policy, train, test, held, report, started)


def train_epochs(run: _Run, net: nn.Module, n: int, lr: float, phase: str) -> None:
    """``n`` epochs of ``net`` on the training split: SGD (``training.make_optimizer``) with a
    per-step cosine learning rate from ``lr``, one line printed per epoch."""
    from gdp_graph.recipes.cifar10.training import cosine_schedule, make_optimizer, train_one_epoch
    if n <= 0:
        return
    opt = make_optimizer(net, lr)
    sched = cosine_schedule(opt, n * len(run.train))
    step = 0
    for epoch in range(n):
        run.train.set_epoch(epoch)
        stats = train_one_epoch(net, run.train, opt, device=run.device, autocast=run.settings.autocast, scheduler=sched,
                                progress=True, start_step=step, description=f"{phase} {epoch + 1}/{n}")
        step = stats["global_step"]
        run.console.print(f"  {phase} epoch {epoch + 1}/{n}: loss {stats['loss']:.3f} (task {stats['task_loss']:.3f}), "
                          f"train acc {stats['accuracy']:.3f}, {stats['seconds']:.0f}s")


def _pretrain(run: _Run, model: nn.Module) -> dict[str, torch.Tensor]:
    """Pretrain ``model`` (or load the checkpoint) and evaluate it; returns a copy of its state."""
    settings, started = run.settings, time.perf_counter()
    if settings.checkpoint:
        model.load_state_dict(torch.load(settings.checkpoint, map_location=run.device, weights_only=True))
        run.console.print(f"loaded pretrained weights from {settings.checkpoint}")
    else:
        train_epochs(run, model, run.preset.pretrain_epochs, run.preset.lr, "pretrain")
        if settings.save_pretrained:
            torch.save(model.state_dict(), settings.save_pretrained)
    run.report["pretrain_seconds"] = time.perf_counter() - started
    run.accuracy(model, "acc_pretrained")
    run.console.print(f"pretrained accuracy {run.report['acc_pretrained']:.4f}")
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _gdp(run: _Run, model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, Any]:
    """Gates attached to ``model`` (started as the policy's ``regularizer.init`` says), the GDP
    phase, finalized: (the pruned model, the finalize report)."""
    from gdp_graph.gates.attach import attach
    s, started = run.preset, time.perf_counter()
    total = max(1, s.gdp_epochs * len(run.train))
    gated = attach(model, policy=run.policy, example_inputs=example, total_steps=total,
                   steps_per_epoch=len(run.train), gate_lr=s.gate_lr)
    gated.to(run.device, memory_format=FORMAT)
    scores = apply_gate_init(gated, run.train, seed=run.settings.seed)
    run.report.update(gate_init=run.policy.regularizer.init if scores is not None else "uniform", trajectory=[],
                      gdp_steps=total)
    # gated.step() also closes each epoch: attach() was told the epoch length
    pruned, finalized, run.report["gated_epochs"] = gdp_phase(
        gated, run.train, epochs=s.gdp_epochs, lr=s.gdp_lr, gate_lr=s.gate_lr, device=run.device,
        autocast=run.settings.autocast, console=run.console, trajectory=run.report["trajectory"],
        on_finalized=functools.partial(_finalized, run, gated), finalize_at_cut=run.settings.finalize_at_cut)
    run.report["gdp_seconds"] = time.perf_counter() - started
    if run.report["gated_epochs"] < s.gdp_epochs:
        run.accuracy(pruned, "acc_gdp_end", heldout=False)
    return pruned, finalized


def _finalized(run: _Run, gated: Any, pruned: nn.Module, finalized: Any) -> None:
    """Right after finalizing: the gates' state and both models' accuracies into the report."""
    pruned.to(memory_format=FORMAT)  # in place: the GDP phase may train it on
    # the gated and the finalized model compute the same function: evaluated once each here
    run.accuracy(gated, "acc_gated", heldout=False)
    run.report["gates"] = gated.report()
    run.report["fix"] = gated.fix_report
    # per iteration until the gates were fixed: step, hard and soft fraction, lambda
    run.report["controller_history"] = gated.controller.history if gated.controller is not None else []
    run.report["finalize"] = finalized.to_dict()
    run.accuracy(pruned, "acc_finalized")
    run.console.print(f"gated accuracy {run.report['acc_gated']:.4f}, finalized {run.report['acc_finalized']:.4f}")


def _compare_methods(run: _Run, pretrained: dict[str, torch.Tensor], example: torch.Tensor) -> None:
    """Each ``compare`` method on the same schedule from the pretrained weights."""
    from gdp_graph.recipes.cifar10.models.cifar_resnet import cifar_resnet
    settings, s = run.settings, run.preset
    for method in settings.compare:
        other = cifar_resnet(s.depth).to(run.device, memory_format=FORMAT)
        other.load_state_dict(pretrained)
        # polarization: the policy file with that regularizer (GDP-only overrides left out)
        kept_sets = tuple(i for i in settings.policy_set if not i.startswith("regularizer."))
        other_policy = (_policy(replace(settings, regularizer=method, policy_set=kept_sets), s.fix_at)
                        if method == "polarization" else run.policy)
        run.report.setdefault("compare", {})[method] = run_comparison(
            method, model=other, policy=other_policy, s=s, train=run.train, test=run.test, held=run.held,
            device=run.device, console=run.console, seed=settings.seed, autocast=settings.autocast,
            train_epochs=functools.partial(train_epochs, run), example=example, memory_format=FORMAT)


def _unpruned(run: _Run, pretrained: dict[str, torch.Tensor]) -> None:
    """The same total epochs without pruning: the pretrained weights, trained on with the gated
    phase's and the fine-tuning's learning rates."""
    from gdp_graph.recipes.cifar10.models.cifar_resnet import cifar_resnet
    s = run.preset
    unpruned = cifar_resnet(s.depth).to(run.device, memory_format=FORMAT)
    unpruned.load_state_dict(pretrained)
    train_epochs(run, unpruned, s.gdp_epochs, s.gdp_lr, "unpruned")
    train_epochs(run, unpruned, s.finetune_epochs, s.finetune_lr, "unpruned")
    run.accuracy(unpruned, "acc_unpruned_same_epochs")


def _measure(run: _Run, model: nn.Module, pruned: nn.Module, example: torch.Tensor) -> nn.Module:
    """FLOPs, parameters and CPU latency before and after, and whether the finalized model is in
    the budget band, into the report; returns the pruned model on the CPU."""
    from gdp_graph.graph.cost import model_cost
    from gdp_graph.recipes.cifar10.models.cifar_resnet import cifar_resnet
    from gdp_graph.report.latency import measure_latency
    cpu_inputs = example.detach().cpu()
    original_cpu = cifar_resnet(run.preset.depth).to(memory_format=FORMAT)  # as the pruned one
    original_cpu.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
    pruned_cpu = pruned.cpu()
    before, after = model_cost(original_cpu, (cpu_inputs[:1],)), model_cost(pruned_cpu, (cpu_inputs[:1],))
    batch = torch.randn(64, 3, 32, 32)
    lat_before, lat_after = measure_latency([original_cpu, pruned_cpu], (batch,), rounds=run.settings.latency_rounds)
    run.report.update(flops_before=before.flops, flops_after=after.flops, params_before=before.params,
                      params_after=after.params, latency_before_s=lat_before, latency_after_s=lat_after,
                      wall_seconds=time.perf_counter() - run.started)
    metric = run.policy.target.metric
    run.report["kept"] = kept = after.metric(metric) / before.metric(metric)
    run.report["in_band"] = abs(kept - run.policy.target.fraction) <= BUDGET_BAND
    return pruned_cpu


def _finish(run: _Run, pruned_cpu: nn.Module, finalized: Any) -> int:
    """The report printed (and written with ``out``); the exit status."""
    report, settings, target = run.report, run.settings, run.policy.target
    print_report(run.console, report)
    if settings.out:
        out = Path(settings.out)
        out.mkdir(parents=True, exist_ok=True)
        from gdp_graph.prune.export import save
        save(pruned_cpu, out / "pruned.pt")
        finalized.plan.save(out / "plan.json")  # re-apply with `gdp-graph apply`
        (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
        run.console.print(f"wrote {out / 'pruned.pt'}, {out / 'plan.json'} and {out / 'report.json'}")
    if settings.json:
        print(json.dumps(report, indent=1, default=str))
    if not report["in_band"]:
        run.console.print(f"BUDGET MISSED: the finalized model keeps {report['kept']:.4f} of its {target.metric} "
                          f"(FlopCounterMode), target {target.fraction:g} ± {BUDGET_BAND}", style="bold red")
        return EXIT_BUDGET_MISSED
    return 0


def _split_heldout(load_cifar10, path, s: CifarPreset):
    """The training subset and, when ``heldout`` > 0, the next ``heldout`` training images as
    a split that is never trained on (settings are chosen on it, not on the test images);
    ``None`` when there is no such split (no subset, or the data has no images left)."""
    from gdp_graph.recipes.cifar10.data.dataset import Cifar10Data

    n, extra = s.train_subset, s.heldout or 0
    if n is None or extra <= 0:
        return load_cifar10(path, train_subset=n, test_subset=s.test_subset), None
    full = load_cifar10(path, train_subset=n + extra, test_subset=s.test_subset)
    if len(full.train_labels) <= n:
        return full, None
    train = Cifar10Data(full.train_images[:n], full.train_labels[:n], full.test_images, full.test_labels, full.source)
    held = Cifar10Data(full.train_images[n:], full.train_labels[n:], full.train_images[n:], full.train_labels[n:],
                       full.source)
    return train, held
