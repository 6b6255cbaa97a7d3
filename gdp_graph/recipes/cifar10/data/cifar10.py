"""CIFAR-10: locate, (optionally) download, decode, and iterate in memory.

The loader reads the official "CIFAR-10 python version" layout::

    cifar-10-batches-py/
        data_batch_1 ... data_batch_5   # 10,000 training images each
        test_batch                      # 10,000 test images
        batches.meta

Each batch file is a pickled dict with ``b'data'`` (an ``N x 3072`` uint8 array, channel-major:
1024 red values, then 1024 green, then 1024 blue, each plane row-major) and ``b'labels'``
(``N`` ints in ``0..9``). The data can be given as a directory (one that contains
``cifar-10-batches-py/``, or that directory itself, or one holding ``cifar-10-python.tar.gz``)
or as the ``.tar.gz`` archive, whose members are read straight from the tarfile.

Where the data lives is resolved in this order: an explicit path, the ``GDP_GRAPH_CIFAR10``
environment variable, and only when neither is given, a download of the official archive into
``~/.cache/gdp_graph`` (``$XDG_CACHE_HOME/gdp_graph`` when set) with an MD5 check.

This module finds and reads the files (:func:`read_cifar10`, :func:`resolve_cifar10_path`,
:func:`load_cifar10`) and re-exports the rest of the public API, which lives in one module per
concept:

* :mod:`.constants` -- file names, image shape, class names, normalization statistics;
* :mod:`.errors` -- the :class:`Cifar10Error` hierarchy;
* :mod:`.safe_pickle` -- decoding of the batch files with a restricted unpickler that only
  rebuilds the few types the format uses (dicts, lists, bytes and uint8 arrays), so numpy is
  not needed and a tampered file cannot run code;
* :mod:`.download` -- cache directory, MD5, download with checksum check;
* :mod:`.loader` -- :class:`CifarLoader`, which iterates over in-memory uint8 tensors in
  batches: per-epoch shuffling, vectorized random crop (zero padding) and horizontal flip,
  normalization, and the move to the target device, all driven by a seeded
  :class:`torch.Generator` so a run is reproducible.
"""

from __future__ import annotations

import os
import tarfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from gdp_graph.recipes.cifar10.data.constants import (
    BATCH_NAMES,
    CIFAR10_ARCHIVE_NAME,
    CIFAR10_CLASSES,
    CIFAR10_DIR_NAME,
    CIFAR10_ENV_VAR,
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGE_SHAPE,
    TEST_BATCHES,
    TRAIN_BATCHES,
    PathLike,
)
from gdp_graph.recipes.cifar10.data.dataset import Cifar10Data
from gdp_graph.recipes.cifar10.data.download import (
    CIFAR10_MD5,
    CIFAR10_URL,
    default_cache_dir,
    download_cifar10,
    md5_of_file,
)
from gdp_graph.recipes.cifar10.data.errors import (
    Cifar10ChecksumError,
    Cifar10DownloadError,
    Cifar10Error,
    Cifar10FormatError,
    local_copy_hint,
)
from gdp_graph.recipes.cifar10.data.loader import CifarLoader, cifar10_loaders, crop_and_flip
from gdp_graph.recipes.cifar10.data.safe_pickle import decode_batch

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_ENV_VAR",
    "CIFAR10_MD5",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR10_URL",
    "Cifar10Data",
    "Cifar10DownloadError",
    "Cifar10Error",
    "Cifar10FormatError",
    "Cifar10ChecksumError",
    "CifarLoader",
    "cifar10_loaders",
    "crop_and_flip",
    "default_cache_dir",
    "download_cifar10",
    "load_cifar10",
    "md5_of_file",
    "read_cifar10",
    "resolve_cifar10_path",
]


# --------------------------------------------------------------------------------------------
# locating and reading the files


def _is_batches_dir(path: Path) -> bool:
    return any((path / name).is_file() for name in BATCH_NAMES)


def _find_source(path: Path) -> Path:
    """Map a user-given path to a batches directory or an archive file."""
    if path.is_file():
        return path
    if path.is_dir():
        if _is_batches_dir(path):
            return path
        if _is_batches_dir(path / CIFAR10_DIR_NAME):
            return path / CIFAR10_DIR_NAME
        if (path / CIFAR10_ARCHIVE_NAME).is_file():
            return path / CIFAR10_ARCHIVE_NAME
        raise Cifar10FormatError(
            f"{path}: directory holds neither CIFAR-10 batch files (data_batch_1..5, "
            f"test_batch), nor a {CIFAR10_DIR_NAME}/ subdirectory, nor {CIFAR10_ARCHIVE_NAME}"
        )
    raise FileNotFoundError(f"CIFAR-10 data not found at {path}")


@dataclass(frozen=True)
class _Need:
    """Which batch files to read for one split, and how many images to keep."""

    names: tuple[str, ...]
    limit: int | None

    def done(self, got: Mapping[str, tuple[Tensor, Tensor]]) -> bool:
        """True once the files read so far already cover the needed prefix."""
        count = 0
        for name in self.names:
            if name not in got:
                return False
            count += got[name][1].numel()
            if self.limit is not None and count >= self.limit:
                return True
        return True


def _split_names(limit: int | None, names: tuple[str, ...]) -> _Need:
    if limit is not None and limit < 0:
        raise ValueError(f"subset size must be >= 0 or None, got {limit}")
    return _Need(names=() if limit == 0 else names, limit=limit)


def _concat(need: _Need, got: Mapping[str, tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    images: list[Tensor] = []
    labels: list[Tensor] = []
    count = 0
    for name in need.names:
        if need.limit is not None and count >= need.limit:
            break
        x, y = got[name]
        images.append(x)
        labels.append(y)
        count += y.numel()
    if not images:
        return torch.empty(0, *IMAGE_SHAPE, dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
    x = torch.cat(images) if len(images) > 1 else images[0]
    y = torch.cat(labels) if len(labels) > 1 else labels[0]
    if need.limit is not None:
        x, y = x[: need.limit], y[: need.limit]
    return x.contiguous(), y.contiguous()


def _member_key(member_name: str) -> str | None:
    """The batch file name a tar member stands for, or None when it is not one."""
    parts = [p for p in member_name.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts:
        return None
    base = parts[-1]
    if base not in BATCH_NAMES:
        return None
    if len(parts) == 1 or parts[-2] == CIFAR10_DIR_NAME:
        return base
    return None


def _read_from_archive(archive: Path, needs: Sequence[_Need]) -> dict[str, tuple[Tensor, Tensor]]:
    wanted = {name for need in needs for name in need.names}
    got: dict[str, tuple[Tensor, Tensor]] = {}
    if not wanted:
        return got
    try:
        # stream mode: one sequential pass, members decoded as they come, stop when done
        with tarfile.open(archive, mode="r|*") as tf:
            for member in tf:
                key = _member_key(member.name)
                if key is None or key not in wanted or key in got or not member.isfile():
                    continue
                fh = tf.extractfile(member)
                if fh is None:  # pragma: no cover - isfile() members always have data
                    continue
                got[key] = decode_batch(fh.read(), f"{archive} (member {member.name!r})")
                if all(need.done(got) for need in needs):
                    break
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise Cifar10FormatError(f"{archive}: cannot read archive ({exc})") from exc
    for need in needs:
        if not need.done(got):
            missing = next(n for n in need.names if n not in got)
            raise Cifar10FormatError(
                f"{archive}: archive has no member '{CIFAR10_DIR_NAME}/{missing}' "
                f"(needed for CIFAR-10)"
            )
    return got


def _read_from_dir(directory: Path, needs: Sequence[_Need]) -> dict[str, tuple[Tensor, Tensor]]:
    got: dict[str, tuple[Tensor, Tensor]] = {}
    for need in needs:
        for name in need.names:
            if need.done(got):
                break
            if name in got:
                continue
            file = directory / name
            if not file.is_file():
                raise Cifar10FormatError(
                    f"{directory}: missing CIFAR-10 batch file {name!r} (looked for {file})"
                )
            got[name] = decode_batch(file.read_bytes(), str(file))
    return got


def read_cifar10(
    path: PathLike,
    *,
    train_subset: int | None = None,
    test_subset: int | None = None,
) -> Cifar10Data:
    """Read CIFAR-10 from an existing directory or ``.tar.gz`` archive (no download).

    Args:
        path: a ``cifar-10-batches-py`` directory, a directory containing it (or containing
            ``cifar-10-python.tar.gz``), or the archive itself.
        train_subset: keep only the first ``n`` training images (``0`` skips the split,
            ``None`` keeps all 50,000). Only the batch files needed are read.
        test_subset: the same for the 10,000 test images.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        Cifar10FormatError: a batch file is missing or malformed; the message names the file
            (and the archive member).
    """
    source = _find_source(Path(path).expanduser())
    needs = [_split_names(train_subset, TRAIN_BATCHES), _split_names(test_subset, TEST_BATCHES)]
    if source.is_dir():
        got = _read_from_dir(source, needs)
    else:
        got = _read_from_archive(source, needs)
    train_x, train_y = _concat(needs[0], got)
    test_x, test_y = _concat(needs[1], got)
    return Cifar10Data(train_x, train_y, test_x, test_y, source=source)


# --------------------------------------------------------------------------------------------
# resolution


def _existing_source(path: PathLike, origin: str) -> Path:
    """:func:`_find_source` for a path that must exist; ``origin`` says where it came from."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"CIFAR-10 path {p} ({origin}) does not exist")
    return _find_source(p)


def resolve_cifar10_path(
    path: PathLike | None = None,
    *,
    download: bool = True,
    cache_dir: PathLike | None = None,
    url: str = CIFAR10_URL,
    md5: str | None = CIFAR10_MD5,
) -> Path:
    """Where to read CIFAR-10 from: ``path``, else ``$GDP_GRAPH_CIFAR10``, else a download.

    An explicit path or environment variable that points nowhere is an error (no silent
    fallback to downloading). The download (see :func:`download_cifar10`) happens only when
    neither is given and ``download`` is true.

    Returns:
        A batches directory or an archive file, ready for :func:`read_cifar10`.
    """
    if path is not None and str(path) != "":
        return _existing_source(path, "given explicitly")
    env = os.environ.get(CIFAR10_ENV_VAR, "").strip()
    if env:
        return _existing_source(env, f"from the {CIFAR10_ENV_VAR} environment variable")
    if not download:
        raise Cifar10Error(
            f"no CIFAR-10 path given and downloading is disabled. {local_copy_hint()}"
        )
    return download_cifar10(cache_dir, url=url, md5=md5)


def load_cifar10(
    path: PathLike | None = None,
    *,
    subset: int | None = None,
    train_subset: int | None = None,
    test_subset: int | None = None,
    download: bool = True,
    cache_dir: PathLike | None = None,
    url: str = CIFAR10_URL,
    md5: str | None = CIFAR10_MD5,
) -> Cifar10Data:
    """Resolve (see :func:`resolve_cifar10_path`) and read CIFAR-10.

    Args:
        path: explicit location (directory or archive); ``None`` falls back to the
            ``GDP_GRAPH_CIFAR10`` environment variable, then to a download.
        subset: keep the first ``n`` images of each split (for short schedules).
        train_subset, test_subset: per-split override of ``subset``.
        download, cache_dir, url, md5: see :func:`download_cifar10`.
    """
    source = resolve_cifar10_path(path, download=download, cache_dir=cache_dir, url=url, md5=md5)
    return read_cifar10(
        source,
        train_subset=subset if train_subset is None else train_subset,
        test_subset=subset if test_subset is None else test_subset,
    )

