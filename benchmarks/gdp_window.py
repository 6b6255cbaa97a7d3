"""Do the gates decide before they are cut? The gated phase of ``gdp-graph train``'s short preset
up to its cut, per iteration, for policy variants; no accuracy (that is the main command's job).

    OMP_NUM_THREADS=1 python benchmarks/gdp_window.py --data ../shared/data/cifar10/cifar-10-python.tar.gz \
        --checkpoint runs/pre_s0.pt --variant current --variant init=magnitude \
        --variant "init=taylor;init_spread=0.9" [--seed 0]

A variant is ``;``-separated ``key=yaml`` overrides of the ``cifar_resnet`` policy's
``regularizer`` (``current``: none). Per variant it records, per iteration until the cut: the
soft kept fraction, lambda, the share of free gates that are polarized (< 0.05 or > 0.95) and
the soft fraction right after the optimizer step (before epsilon moves and theta is projected);
and at the cut: the soft fraction after the last step before it, the polarized share then, and how many units
the cut changed (cut although their gate was > 0.5, or kept although it was <= 0.5). The
schedule is the short preset's (5,000 training images, batch 128, 4 gated epochs, ``fix_at``
0.15: the gates are cut after 23 of 156 iterations). Records go to
``benchmarks/results/gdp_window.json`` (see benchmarks/records.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

try:
    from benchmarks import records
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    import records

RESULTS = Path(__file__).with_name("results") / "gdp_window.json"


def _policy(variant: str):
    from gdp_graph.policy import load_policy, policy_from_dict, set_override
    from gdp_graph.recipes.cifar10.pipeline import SHORT_FIX_AT

    data = load_policy("cifar_resnet").to_dict()
    data["regularizer"]["fix_at"] = SHORT_FIX_AT
    if variant != "current":
        for item in variant.split(";"):
            set_override(data["regularizer"], item.strip())
    return policy_from_dict(data, source=f"cifar_resnet, {variant}", name="cifar_resnet")


def _polarized(gated) -> tuple[float, torch.Tensor]:
    from gdp_graph.recipes.driver import free_gate_values
    values = free_gate_values(gated)
    return float(((values < 0.05) | (values > 0.95)).float().mean()), values


def run_variant(args, variant: str) -> dict[str, Any]:
    from gdp_graph.gates.attach import attach
    from gdp_graph.recipes.cifar10.data.cifar10 import cifar10_loaders, load_cifar10
    from gdp_graph.recipes.cifar10.gdp_phase import GateOptimizer
    from gdp_graph.recipes.cifar10.models.cifar_resnet import cifar_resnet
    from gdp_graph.recipes.cifar10.pipeline import PRESETS, apply_gate_init
    from gdp_graph.recipes.cifar10.training import cosine_schedule, train_one_epoch

    s = PRESETS["short"]
    torch.manual_seed(args.seed)
    data = load_cifar10(args.data, train_subset=s["train_subset"], test_subset=256)
    train, _ = cifar10_loaders(data, batch_size=s["batch_size"], seed=args.seed)
    model = cifar_resnet(s["depth"])
    model.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=True))
    policy = _policy(variant)
    gated = attach(model, policy=policy, example_inputs=torch.randn(2, 3, 32, 32),
                   total_steps=s["gdp_epochs"] * len(train), steps_per_epoch=len(train), gate_lr=s["gate_lr"])
    apply_gate_init(gated, train, seed=args.seed)
    opt = GateOptimizer(gated, s["gdp_lr"], s["gate_lr"])
    sched = cosine_schedule(opt.weights, s["gdp_epochs"] * len(train))
    rows: list[list[float]] = []
    before: dict[str, Any] = {}

    def on_step(step: int) -> None:
        soft_after_update = gated.fractions()[1]  # before epsilon moves and theta is projected
        gated.step()
        if step == gated.fix_step - 1:  # the gates as the last step before the cut left them
            share, values = _polarized(gated)
            before.update(polarized=share, soft=gated.fractions()[1], values=values)
        if not bool(gated.fixed):
            rows.append([step, round(gated.fractions()[1], 4), round(gated.lam, 4), round(_polarized(gated)[0], 4),
                         round(soft_after_update, 4)])

    step = 0
    while not bool(gated.fixed):
        train.set_epoch(step // len(train))
        stats = train_one_epoch(gated, train, opt, device="cpu", extra_loss=gated.penalty, on_step=on_step,
                                scheduler=sched, start_step=step, max_steps=gated.fix_step - step)
        step = stats["global_step"]
    _, after = _polarized(gated)
    changed = int(((before["values"] > 0.5) != (after > 0)).sum())
    return {"fix_step": gated.fix_step, "soft_before_cut": before["soft"], "polarized_before_cut": before["polarized"],
            "cut_changed_units": changed, "free_units": int(after.numel()), "fix": gated.fix_report, "steps": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--checkpoint", required=True, help="the short preset's pretrained state_dict (--save-pretrained)")
    p.add_argument("--variant", action="append", default=[], help="';'-separated regularizer overrides, or 'current'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", default=str(RESULTS))
    records.add_record_flags(p)
    args = p.parse_args()
    torch.set_num_threads(1)
    for variant in args.variant or ["current"]:
        settings = {"variant": variant, "protocol": "short preset gated phase"}
        if not args.rerun and records.recorded(args.results, "gdp_window", settings):
            continue
        result = run_variant(args, variant)
        print(variant, {k: v for k, v in result.items() if k != "steps"}, flush=True)
        records.append_record(args.results, records.new_record("gdp_window", settings, result, seed=args.seed,
                                                               checkpoints=[args.checkpoint], note=args.note))


if __name__ == "__main__":
    main()
