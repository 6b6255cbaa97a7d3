"""GDP vs the baselines on CIFAR-10: the same ResNet, the same pretrained weights, the same
FLOPs target and schedule, one run per regularizer; prints one table.

    python benchmarks/cifar_regularizers.py --data ../shared/data/cifar10/cifar-10-python.tar.gz \
        [--out runs/regularizers] [--depth 20] [--train-subset 20000] [--test-subset 5000] \
        [--pretrain-epochs 15] [--gdp-epochs 8] [--finetune-epochs 2] [--target 0.5] [--device auto]

The first run pretrains and saves the checkpoint; the others start from it. Each run's full
report is in OUT/<regularizer>/report.json. Wall times are per run on the same machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REGULARIZERS = ("gdp", "polarization", "l1")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", default="runs/regularizers")
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--train-subset", type=int, default=20000)
    p.add_argument("--test-subset", type=int, default=5000)
    p.add_argument("--pretrain-epochs", type=int, default=15)
    p.add_argument("--gdp-epochs", type=int, default=8)
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--device", default="auto")
    p.add_argument("--regularizers", nargs="+", default=list(REGULARIZERS), choices=REGULARIZERS)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / f"resnet{args.depth}_pretrained.pt"
    common = ["--data", args.data, "--depth", str(args.depth), "--train-subset", str(args.train_subset),
              "--test-subset", str(args.test_subset), "--gdp-epochs", str(args.gdp_epochs),
              "--finetune-epochs", str(args.finetune_epochs), "--target", str(args.target),
              "--device", args.device, "--policy", "cifar_resnet"]
    if not checkpoint.exists():
        cmd = [sys.executable, "-m", "gdp_graph.cli.main", "train", *common, "--pretrain-epochs", str(args.pretrain_epochs),
               "--save-pretrained", str(checkpoint), "--pretrain-only"]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    for reg in args.regularizers:
        cmd = [sys.executable, "-m", "gdp_graph.cli.main", "train", *common, "--checkpoint", str(checkpoint),
               "--regularizer", reg, "--out", str(out / reg)]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    rows = []
    for reg in args.regularizers:
        r = json.loads((out / reg / "report.json").read_text())
        rows.append((reg, r))
    print(f"\nResNet-{args.depth}, CIFAR-10 ({args.train_subset} train / {args.test_subset} test images), "
          f"target {args.target:g} of FLOPs, {args.gdp_epochs} GDP epochs + {args.finetune_epochs} fine-tune epochs, "
          f"device {rows[0][1]['device'] if rows else '?'}")
    print("| regularizer | acc pretrained | acc gated | acc finalized | acc fine-tuned | FLOPs kept | params kept | GDP phase s | run s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for reg, r in rows:
        print(f"| {reg} | {r['acc_pretrained']:.4f} | {r['acc_gated']:.4f} | {r['acc_finalized']:.4f} | "
              f"{r.get('acc_finetuned', float('nan')):.4f} | {r['flops_after'] / r['flops_before']:.3f} | "
              f"{r['params_after'] / r['params_before']:.3f} | {r['gdp_seconds']:.0f} | {r['wall_seconds']:.0f} |")


if __name__ == "__main__":
    main()
