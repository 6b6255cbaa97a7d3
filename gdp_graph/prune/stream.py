"""Apply a plan to a safetensors checkpoint without loading the model: tensor by tensor.

:func:`stream_apply` reads each tensor of a Hugging Face folder's shards with ``safe_open`` (one
tensor mapped at a time: the file is opened for that tensor and closed again, so the pages it
read leave the process), slices it by the plan's :class:`~gdp_graph.prune.slices.SliceMap` and
writes it in its own dtype to shards of at most ``max_shard_bytes``, with the index, the config
(its sizes changed), and every other file of the folder (generation config, tokenizer). Peak
memory is one output shard plus one tensor, never the model.

Everything that can be checked is checked before anything is written: the index names existing
shards, every shard's header is whole (a truncated file is refused), every tensor is a tensor of
the model the plan was made for, with its shape. The output is written to a temporary folder
beside ``out`` and renamed when complete, so a failed run never leaves a folder that looks
finished. The source is only read.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from gdp_graph.errors import GdpError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
#: files of the source folder that the writer makes itself (weights, their index, the config)
WRITTEN_HERE = (INDEX, SINGLE, "config.json")
#: weights in other formats: never copied beside the pruned safetensors (they are the unpruned model)
OTHER_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx", ".safetensors")


class CheckpointError(GdpError, ValueError):
    """The checkpoint folder cannot be read, or does not fit the plan (the message says which file)."""


@dataclass(frozen=True)
class Checkpoint:
    """A folder's safetensors shards as their headers describe them (no tensor read)."""

    folder: Path
    weight_map: dict[str, str]  #: tensor name -> shard file name, in the order the shards store them
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]  #: safetensors dtype names (BF16, F32, ...)
    metadata: dict[str, Any]  #: the index's metadata (``total_size``), {} for a single file


@dataclass(frozen=True)
class StreamReport:
    out: Path
    tensors: int
    shards: int
    params_before: int
    params_after: int
    bytes_before: int
    bytes_after: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "tensors": self.tensors, "shards": self.shards,
                "params_before": self.params_before, "params_after": self.params_after,
                "bytes_before": self.bytes_before, "bytes_after": self.bytes_after, "seconds": self.seconds}


def read_checkpoint(folder: str | Path) -> Checkpoint:
    """The shards of ``folder`` (``model.safetensors.index.json`` or one ``model.safetensors``),
    every header read and checked.

    Raises:
        CheckpointError: no weights, several shards without an index, a shard the index names
            that is missing, a truncated or unreadable shard.
    """
    from safetensors import safe_open
    folder = Path(folder)
    files, metadata = _shard_files(folder)
    weight_map, shapes, dtypes = {}, {}, {}
    for file in files:
        try:
            with safe_open(folder / file, framework="pt") as f:
                for name in f.keys():
                    view = f.get_slice(name)
                    weight_map[name], shapes[name], dtypes[name] = file, tuple(view.get_shape()), view.get_dtype()
        except Exception as exc:  # noqa: BLE001 - safetensors says what is wrong with the header
            raise CheckpointError(f"{folder / file}: not a readable safetensors file ({_first_line(exc)})") from None
    listed = metadata.pop("_weight_map", {})
    wrong = next((n for n, f in listed.items() if weight_map.get(n) != f), None)
    if wrong is not None:
        raise CheckpointError(f"{folder / INDEX}: names '{wrong}' in {listed[wrong]}, which does not hold it")
    return Checkpoint(folder, weight_map, shapes, dtypes, metadata)


def _shard_files(folder: Path) -> tuple[list[str], dict[str, Any]]:
    index = folder / INDEX
    if index.is_file():
        try:
            data = json.loads(index.read_text())
            files = list(dict.fromkeys(data["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{index}: not a safetensors index ({type(exc).__name__}: {exc})") from None
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise CheckpointError(f"{index}: names {len(missing)} missing shard(s), first {folder / missing[0]}")
        return files, {**dict(data.get("metadata") or {}), "_weight_map": data["weight_map"]}
    if (folder / SINGLE).is_file():
        return [SINGLE], {}
    shards = sorted(p.name for p in folder.glob("*.safetensors"))
    if shards:
        raise CheckpointError(f"{folder}: {len(shards)} safetensors shard(s) but no {INDEX} to say which tensor "
                              f"is where")
    raise CheckpointError(f"{folder}: no safetensors weights ({SINGLE} or {INDEX})")


def check_fits(checkpoint: Checkpoint, expected: Mapping[str, tuple[int, ...]], smap: Any) -> None:
    """Refuse a checkpoint whose tensors are not those of the model the plan was made for
    (``expected``: its state dict's shapes, e.g. from the meta model built from config.json)."""
    for name, shape in checkpoint.shapes.items():
        want = expected.get(name)
        if want is None:
            raise CheckpointError(f"{checkpoint.folder / checkpoint.weight_map[name]}: tensor '{name}' is not in the "
                                  f"model built from config.json (a checkpoint of another model?)")
        if tuple(want) != shape:
            raise CheckpointError(f"{checkpoint.folder / checkpoint.weight_map[name]}: tensor '{name}' has shape "
                                  f"{shape}, the model built from config.json has {tuple(want)}")
    for name, shape in smap.shapes.items():
        if name in checkpoint.shapes and checkpoint.shapes[name] != tuple(shape):
            raise CheckpointError(f"tensor '{name}': the checkpoint has shape {checkpoint.shapes[name]}, the plan "
                                  f"was made for {tuple(shape)}")


def pruned_shapes(checkpoint: Checkpoint, smap: Any,
                  rename: Optional[Callable[[str], Optional[str]]] = None) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor the pruned checkpoint will hold, by its new name."""
    out = {}
    for name, shape in checkpoint.shapes.items():
        new = rename(name) if rename is not None else name
        if new is not None and smap.keeps(name):
            out[new] = tuple(smap.new_shape(name, shape))
    return out


def shape_mismatch(built: Any, shapes: Mapping[str, tuple[int, ...]]) -> Optional[str]:
    """Why a model built from the pruned config (on the meta device) would not load tensors of
    ``shapes``, or None: every tensor must fit, and every tensor of the model must be given
    (tied aliases aside)."""
    state = {k: tuple(v.shape) for k, v in built.state_dict().items()}
    for name, shape in shapes.items():
        if name not in state:
            return f"the pruned config's model has no tensor '{name}'"
        if state[name] != shape:
            return f"tensor '{name}' is {shape} after pruning, the pruned config builds {state[name]}"
    aliases: dict[int, set[str]] = {}
    for name, t in [*built.named_parameters(remove_duplicate=False), *built.named_buffers(remove_duplicate=False)]:
        aliases.setdefault(id(t), set()).add(name)
    given = {n for names in aliases.values() if names & set(shapes) for n in names}
    missing = sorted(set(state) - given)
    return f"the pruned config's model also has '{missing[0]}', which the plan removes" if missing else None


def stream_apply(checkpoint: Checkpoint, smap: Any, out: str | Path, *, config_text: str,
                 rename: Optional[Callable[[str], Optional[str]]] = None, max_shard_bytes: int = 400 * 2 ** 20,
                 extra_files: Optional[Mapping[str, str]] = None) -> StreamReport:
    """Write the pruned checkpoint to ``out`` (which must not exist).

    Args:
        smap: the plan's slice map over the checkpoint's tensor names.
        config_text: the pruned ``config.json`` (from :func:`gdp_graph.prune.hf_config.pruned_hf_config`:
            the slice map holds tensor slices, not the config).
        rename: a tensor's name in the pruned checkpoint, or None to leave it out (removed
            layers, with the kept ones renumbered); default: names kept.
        max_shard_bytes: the largest output shard (a single larger tensor gets a shard of its own).
        extra_files: name -> text written beside the weights (the plan).
    """
    out = Path(out)
    if out.exists():
        raise CheckpointError(f"{out}: already exists (the pruned checkpoint is written to a new folder)")
    if not out.parent.is_dir():
        raise CheckpointError(f"{out.parent}: no such folder")
    start = time.perf_counter()
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        counts = _write_shards(checkpoint, smap, tmp, max_shard_bytes, rename or (lambda name: name))
        (tmp / "config.json").write_text(config_text)
        _copy_other_files(checkpoint.folder, tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return StreamReport(out, *counts, seconds=time.perf_counter() - start)


def _write_shards(checkpoint: Checkpoint, smap: Any, tmp: Path, max_shard_bytes: int,
                  rename: Callable[[str], Optional[str]]) -> tuple[int, ...]:
    """Read, slice and write every kept tensor; returns (tensors, shards, params and bytes before
    and after)."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    shard: dict[str, Any] = {}
    shard_bytes, written, names_of = 0, [], []
    params = [0, 0]
    size = [0, 0]
    for name, file in checkpoint.weight_map.items():
        with safe_open(checkpoint.folder / file, framework="pt") as f:  # closed again: its pages unmapped
            tensor = f.get_tensor(name)
        params[0] += tensor.numel()
        size[0] += tensor.nbytes
        new_name = rename(name)
        if new_name is None or not smap.keeps(name):
            continue
        pruned = smap.apply_to_tensor(name, tensor).contiguous()
        del tensor
        if shard and shard_bytes + pruned.nbytes > max_shard_bytes:
            names_of.append(list(shard))
            written.append(_save_shard(shard, tmp, len(written), save_file))
            shard, shard_bytes = {}, 0
        shard[new_name] = pruned
        shard_bytes += pruned.nbytes
        params[1] += pruned.numel()
        size[1] += pruned.nbytes
    if shard or not written:
        names_of.append(list(shard))
        written.append(_save_shard(shard, tmp, len(written), save_file))
    total = len(written)
    weight_map = {}
    for i, (temp, names) in enumerate(zip(written, names_of)):
        final = f"model-{i + 1:05d}-of-{total:05d}.safetensors" if total > 1 else SINGLE
        os.rename(temp, tmp / final)
        weight_map.update({n: final for n in names})
    if total > 1:
        index = {"metadata": {"total_size": size[1]}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return len(weight_map), total, params[0], params[1], size[0], size[1]


def _save_shard(tensors: dict[str, Any], tmp: Path, number: int, save_file: Any) -> Path:
    path = tmp / f"shard-{number}.partial"
    save_file(tensors, str(path), metadata={"format": "pt"})
    tensors.clear()
    return path


def _copy_other_files(source: Path, tmp: Path) -> None:
    """Generation config, tokenizer, chat template, ...: every other top-level file, except
    weights in any format and the source's model card (it describes the unpruned model)."""
    for path in sorted(source.iterdir()):
        if (not path.is_file() or path.name in WRITTEN_HERE or path.name.endswith(OTHER_WEIGHTS)
                or path.name.lower() == "readme.md" or path.name.startswith(".")):
            continue
        shutil.copy2(path, tmp / path.name)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


__all__ = ["Checkpoint", "CheckpointError", "StreamReport", "check_fits", "pruned_shapes", "read_checkpoint",
           "shape_mismatch", "stream_apply"]
