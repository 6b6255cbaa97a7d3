"""``train``: GDP on CIFAR-10 with a built-in ResNet (:mod:`gdp_graph.recipes.cifar10.pipeline`).

The command line is read here, once, into a :class:`~gdp_graph.recipes.cifar10.pipeline.TrainSettings`;
the pipeline never sees argparse.
"""

from __future__ import annotations

import argparse
from typing import Callable

from gdp_graph.cli.common import UsageError, resolve_device, resolve_policy_argument
from gdp_graph.gates.model import DEFAULT_GATE_LR
from gdp_graph.recipes.cifar10.compare import COMPARE_METHODS
from gdp_graph.recipes.cifar10.pipeline import PRESETS, SHORT_FIX_AT, CifarPreset, TrainSettings, run_pipeline
from gdp_graph.vocabulary import REGULARIZERS

__all__ = ["add_train_arguments", "register", "settings_from_args"]


def _add_data_and_policy(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="CIFAR-10: the official .tar.gz or its directory "
                   "(default: $GDP_GRAPH_CIFAR10, else download)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="short", help="schedule defaults (default: short)")
    p.add_argument("--policy", default="cifar_resnet",
                   help="YAML policy file or shipped policy name (default: cifar_resnet)")
    p.add_argument("--regularizer", choices=REGULARIZERS, help="override the policy's regularizer")
    p.add_argument("--target", type=float, help="override the policy's target fraction (of FLOPs or params) to keep")
    p.add_argument("--depth", type=int, help="CIFAR ResNet depth 6n+2 (20, 32, 56, 110)")
    p.add_argument("--checkpoint", help="start from this pretrained state_dict instead of pretraining")
    p.add_argument("--save-pretrained", help="write the pretrained state_dict here (reuse it with --checkpoint)")
    p.add_argument("--pretrain-only", action="store_true", help="stop after pretraining (with --save-pretrained)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="policy_set",
                   help="override a policy key, dotted, with a YAML value (e.g. regularizer.init=magnitude); "
                        "repeatable, applied after --regularizer/--target")
    p.add_argument("--fix-at", type=float, help="override the policy's regularizer.fix_at (the short preset "
                   f"sets {SHORT_FIX_AT})")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    _add_data_and_policy(p)
    for name in ("pretrain-epochs", "gdp-epochs", "finetune-epochs", "batch-size", "train-subset", "test-subset"):
        p.add_argument(f"--{name}", type=int)
    p.add_argument("--heldout", type=int, help="also evaluate on this many training images after the training subset, "
                   "never trained on (the split to choose settings on; default 2000 in the short preset)")
    for name in ("lr", "gdp-lr", "finetune-lr"):
        p.add_argument(f"--{name}", type=float)
    p.add_argument("--gate-lr", type=float, help=f"the gates' Adam learning rate (default {DEFAULT_GATE_LR})")
    p.add_argument("--compare-unpruned", action=argparse.BooleanOptionalAction, default=None,
                   help="also train the unpruned model for the same total epochs (default: on in the short preset)")
    p.add_argument("--compare", action="append", default=[], choices=COMPARE_METHODS, metavar="METHOD",
                   help="also run METHOD on the same schedule from the same pretrained weights and report its "
                        f"accuracy beside GDP's ({', '.join(COMPARE_METHODS)}; repeatable)")
    p.add_argument("--finalize-at-cut", action="store_true",
                   help="finalize at the first epoch end after the gates are fixed and train the smaller model "
                        "for the rest of the GDP phase (faster for long phases; default: finalize at its end)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    p.add_argument("--autocast", action="store_true", help="bfloat16 autocast in training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latency-rounds", type=int, default=15, help="interleaved timing rounds for the latency figure")
    p.add_argument("--out", help="directory for the pruned model, its plan and report.json")
    p.add_argument("--json", action="store_true", help="print the final report as JSON")


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    """The run the command line asks for: the preset with the flags that were given on top."""
    overrides = {key: getattr(args, key) for key in PRESETS[args.preset] if getattr(args, key, None) is not None}
    return TrainSettings(
        preset=CifarPreset.named(args.preset, **overrides), data=args.data, policy=args.policy,
        regularizer=args.regularizer, target=args.target, policy_set=tuple(args.policy_set),
        checkpoint=args.checkpoint, save_pretrained=args.save_pretrained, pretrain_only=args.pretrain_only,
        compare=tuple(args.compare), finalize_at_cut=args.finalize_at_cut, device=args.device,
        autocast=args.autocast, seed=args.seed, latency_rounds=args.latency_rounds, out=args.out, json=args.json)


def cmd_train(args: argparse.Namespace) -> int:
    if args.device != "auto":
        resolve_device(args.device)  # refuse `cuda` on a CPU-only torch before loading any data
    args.policy = resolve_policy_argument(args.policy)
    if args.pretrain_only and not args.save_pretrained:
        raise UsageError("--pretrain-only saves nothing without --save-pretrained FILE")
    return run_pipeline(settings_from_args(args))


def register(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    p = add("train", "GDP on CIFAR-10 with a built-in ResNet: pretrain, polarize gates, finalize, fine-tune, report")
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)
