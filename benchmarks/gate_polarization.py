"""Do a policy's gates polarize before the cut? The gated phase up to ``fix_at``, per step, on a
small model with synthetic data (CPU, seconds to two minutes); no accuracy.

    OMP_NUM_THREADS=1 python benchmarks/gate_polarization.py --model own --gate-steps 14
    OMP_NUM_THREADS=1 python benchmarks/gate_polarization.py --model resnet --gate-steps 600 --previous
    python benchmarks/gate_polarization.py --table

``--model own``: examples/own_model.py (two conv layers, 64 gated channels); ``resnet``: a
ResNet-20 of width 8 (224 gated units, residual streams) on 16x16 inputs with 4 classes;
``mobilenetv2`` / ``vit``: the test zoo's models (run them with ``--policy mobilenetv2`` / ``vit``)
trained to reproduce their own outputs on random inputs. The
gated phase is sized so that ``fix_at`` falls after ``--gate-steps`` steps (SGD on the weights
at the task's learning rate, the gates' Adam, ``regularizer.init`` applied as ``prune`` does).
Printed per sampled step: the soft and hard (gates > 0.5) kept fraction, the share of free gates
in (0.05, 0.95), lambda and epsilon; at the cut: the fractions just before it, the fraction it
leaves, and how many units it changed (cut with a gate > 0.5 the step before, or kept with one
<= 0.5). Each run appends a record to ``benchmarks/results/gate_polarization.json`` (see
benchmarks/records.py; a setting the current clean commit already recorded is skipped unless
``--rerun``); ``--table`` prints the latest record of every setting as the table of docs/gdp.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

try:
    from benchmarks import records
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    import records

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("results") / "gate_polarization.json"
#: the library default before issue 17 (every gate at 0.99, no hold, no deadline)
PREVIOUS = ["regularizer.init=uniform", "regularizer.hold_budget=false", "regularizer.lambda_controller.deadline=false"]


def own_model():
    spec = importlib.util.spec_from_file_location("own_model", ROOT / "examples" / "own_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    net, example = module.model()
    return net, example, module.task()


def resnet_model():
    from gdp_graph.recipes.cifar10.models.cifar_resnet import resnet20
    from gdp_graph.recipes.task import Task
    torch.manual_seed(0)
    net = resnet20(num_classes=4, width=8)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 3, 16, 16, generator=g)
    y = (x.mean((2, 3)) @ torch.randn(3, 4, generator=g)).argmax(1)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    return net, torch.randn(2, 3, 16, 16), Task(train_loader=loader, loss=lambda o, b: F.cross_entropy(o, b[1]),
                                                epochs=4, lr=0.05)


def zoo_model(name: str):
    """A model of the test zoo (tests/zoo) trained to reproduce its own outputs on random inputs
    (64 samples, batch 8): the task gradient keeps what the model computes."""
    import sys
    from gdp_graph.recipes.task import Task
    sys.path.insert(0, str(ROOT))
    from tests.zoo import ZOO
    torch.manual_seed(0)
    net, inputs = ZOO[name]()
    example = inputs[0] if isinstance(inputs, (tuple, list)) else inputs
    net.eval()
    with torch.no_grad():
        x = torch.randn(64, *example.shape[1:])
        y = net(x)
    net.train()
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))
    return net, example[:2], Task(train_loader=loader, loss=lambda o, b: ((o - b[1]) ** 2).mean(), epochs=1, lr=0.01)


MODELS = {"own": own_model, "resnet": resnet_model, "mobilenetv2": lambda: zoo_model("mobilenetv2"),
          "vit": lambda: zoo_model("vit")}


def load(policy: str, target: float, overrides: list[str]):
    from gdp_graph.policy import load_policy, policy_from_dict, set_override
    data = load_policy(policy).to_dict()
    data["target"]["fraction"] = target
    for item in overrides:
        set_override(data, item)
    return policy_from_dict(data, name=policy)


def state(gated, step: int) -> dict:
    from gdp_graph.recipes.driver import free_gate_values
    values = free_gate_values(gated)
    hard, soft = gated.fractions()
    middle = float(((values > 0.05) & (values < 0.95)).float().mean())
    return {"step": step, "soft": soft, "hard": hard, "middle": middle,
            "lam": gated.lam, "eps": gated.epsilon, "values": values}


def trace(net, example, task, policy, gate_steps: int, seed: int):
    """Per-step states up to the last step before the cut, and the gated model after it."""
    from gdp_graph.gates.attach import attach
    from gdp_graph.importance import init_gates
    torch.manual_seed(seed)
    total = math.ceil(gate_steps / policy.regularizer.fix_at)
    gated = attach(net, policy, example_inputs=(example,), total_steps=total, steps_per_epoch=len(task.train_loader))
    gated.train()
    init_gates(gated, itertools.islice(itertools.cycle(task.train_loader), 4), task.loss, max_batches=4)
    weights = torch.optim.SGD(gated.weight_parameters(), lr=task.lr, momentum=0.9)
    gates = gated.gate_optimizer()
    rows = [state(gated, 0)]
    for step, (x, y) in enumerate(itertools.chain.from_iterable(itertools.repeat(task.train_loader)), 1):
        loss = task.loss(gated(x), (x, y)) + gated.penalty()
        weights.zero_grad(), gates.zero_grad()
        loss.backward()
        weights.step(), gates.step()
        gated.step()
        if bool(gated.fixed):
            return rows, gated
        rows.append(state(gated, step))
    raise AssertionError("unreachable")


def summary(rows: list, gated) -> dict:
    """The record's result: the state just before the cut, after it, and a sampled trace."""
    from gdp_graph.recipes.driver import free_gate_values
    fix, last = gated.fix_report, rows[-1]
    every = max(1, len(rows) // 8)
    sampled = rows[::every] + ([rows[-1]] if (len(rows) - 1) % every else [])
    return {"fix_step": fix["step"], "hard_before": fix["hard_before"], "soft_before": fix["soft_before"],
            "after": fix["fraction"], "middle_step_before": last["middle"], "units": int(last["values"].numel()),
            "changed": int(((last["values"] > 0.5) != (free_gate_values(gated) > 0)).sum()),
            "trace": [{k: v for k, v in r.items() if k != "values"} for r in sampled]}


def table(path: Path) -> str:
    """Markdown: the latest record of every setting, in the order they were first recorded."""
    latest: dict[str, dict] = {}
    for r in records.load_records(path):
        if r.get("benchmark") == "gate_polarization":
            latest[json.dumps(r["settings"], sort_keys=True)] = r
    lines = ["| model | gate steps | target | policy | soft / hard before the cut | after the cut | "
             "gates in (0.05, 0.95) the step before | units the cut changed | commit |", "|---" * 9 + "|"]
    for r in latest.values():
        s, res = r["settings"], r["result"]
        if s["overrides"] == PREVIOUS:
            policy = "previous default" if s["policy"] == "default" else f"{s['policy']}, previous default's keys"
        else:
            policy = s["policy"] + "".join(f", {o}" for o in s["overrides"])
        commit = (r.get("commit") or "?")[:7] + ("+" if r.get("dirty") else "")
        lines.append(f"| {s['model']} | {s['gate_steps']} | {s['target']:g} | {policy} | {res['soft_before']:.3f} / "
                     f"{res['hard_before']:.3f} | {res['after']:.3f} | {res['middle_step_before']:.2f} | "
                     f"{res['changed']} of {res['units']} | {commit} |")
    return "\n".join(lines)


def main() -> None:
    import warnings
    warnings.simplefilter("ignore")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(MODELS), default="own")
    p.add_argument("--gate-steps", type=int, default=14, help="steps before the cut")
    p.add_argument("--policy", default="default")
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--set", action="append", default=[], metavar="KEY=YAML", help="policy override, e.g. "
                   "regularizer.init=uniform")
    p.add_argument("--previous", action="store_true", help="the previous default: --set " + " --set ".join(PREVIOUS))
    p.add_argument("--seed", type=int, default=0)
    records.add_record_flags(p, results=RESULTS)
    a = p.parse_args()
    if a.table:
        print(table(Path(a.results)))
        return
    overrides = (PREVIOUS if a.previous else []) + a.set
    settings = {"model": a.model, "gate_steps": a.gate_steps, "target": a.target, "policy": a.policy,
                "overrides": overrides, "seed": a.seed}
    if not a.rerun and records.recorded(a.results, "gate_polarization", settings):
        return
    torch.set_num_threads(1)
    net, example, task = MODELS[a.model]()
    rows, gated = trace(net, example, task, load(a.policy, a.target, overrides), a.gate_steps, a.seed)
    result = summary(rows, gated)
    for r in result["trace"]:
        print(f"step {r['step']:5d}  soft {r['soft']:.3f}  hard {r['hard']:.3f}  in (0.05, 0.95) {r['middle']:.2f}  "
              f"lambda {r['lam']:.3g}  epsilon {r['eps']:.2g}")
    print(f"cut at step {result['fix_step']}: hard {result['hard_before']:.3f} soft {result['soft_before']:.3f} -> "
          f"{result['after']:.3f}; the step before: soft {rows[-1]['soft']:.3f}, {result['middle_step_before']:.2f} of "
          f"the gates in (0.05, 0.95); {result['changed']} of {result['units']} units changed by the cut")
    records.append_record(a.results, records.new_record("gate_polarization", settings, result, seed=a.seed,
                                                        note=a.note))


if __name__ == "__main__":
    main()
