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

The batch files are unpickled with a restricted unpickler that only rebuilds the few types the
format uses (dicts, lists, bytes and uint8 arrays), so numpy is not needed and a tampered file
cannot run code.

Where the data lives is resolved in this order: an explicit path, the ``GDP_GRAPH_CIFAR10``
environment variable, and only when neither is given, a download of the official archive into
``~/.cache/gdp_graph`` (``$XDG_CACHE_HOME/gdp_graph`` when set) with an MD5 check.

:class:`CifarLoader` iterates over in-memory uint8 tensors in batches: per-epoch shuffling,
vectorized random crop (zero padding) and horizontal flip, normalization, and the move to the
target device, all driven by a seeded :class:`torch.Generator` so a run is reproducible.
"""

from __future__ import annotations

import codecs
import hashlib
import http.client
import io
import logging
import math
import os
import pickle
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor

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

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: Official download location of the python-version archive and its MD5 checksum.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_ARCHIVE_NAME = "cifar-10-python.tar.gz"
CIFAR10_DIR_NAME = "cifar-10-batches-py"
#: Environment variable consulted when no explicit path is given.
CIFAR10_ENV_VAR = "GDP_GRAPH_CIFAR10"

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
#: Per-channel statistics of the training set (pixel values scaled to [0, 1]).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

_IMAGE_SHAPE = (3, 32, 32)
_IMAGE_NUMEL = 3 * 32 * 32


# --------------------------------------------------------------------------------------------
# errors


class Cifar10Error(RuntimeError):
    """Base class for CIFAR-10 loading problems."""


class Cifar10FormatError(Cifar10Error):
    """A CIFAR-10 file or archive is missing a part or does not have the expected layout."""


class Cifar10DownloadError(Cifar10Error):
    """The archive could not be downloaded (network unreachable, HTTP error, ...)."""


class Cifar10ChecksumError(Cifar10DownloadError):
    """The downloaded archive does not have the expected MD5 checksum."""


# --------------------------------------------------------------------------------------------
# restricted unpickling (no numpy needed, no arbitrary globals)


class _NDArrayType:
    """Stand-in for ``numpy.ndarray`` when it appears as an argument of ``_reconstruct``."""


class _DType:
    """Stand-in for ``numpy.dtype``: remembers the type code and byte order."""

    def __init__(self, spec: Any = "u1", align: Any = False, copy: Any = True) -> None:
        self.spec = spec.decode("latin1") if isinstance(spec, (bytes, bytearray)) else str(spec)
        self.byteorder = "|"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1:
            order = state[1]
            if isinstance(order, (bytes, bytearray)):
                order = order.decode("latin1")
            self.byteorder = str(order)


# type code (without byte order) -> torch dtype
_TORCH_DTYPES = {
    "u1": torch.uint8,
    "B": torch.uint8,
    "uint8": torch.uint8,
    "i1": torch.int8,
    "i2": torch.int16,
    "i4": torch.int32,
    "i8": torch.int64,
}


class _Array:
    """Stand-in for a numpy array: shape, dtype, memory order and the raw bytes."""

    def __init__(self) -> None:
        self.shape: tuple[int, ...] | None = None
        self.dtype: _DType | None = None
        self.fortran = False
        self.raw: bytes | None = None

    def __setstate__(self, state: Any) -> None:
        # numpy's ndarray state: (version, shape, dtype, is_fortran, rawdata); older pickles
        # omit the version.
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("unexpected ndarray state in pickle")
        shape, dtype, fortran, raw = state[-4:]
        self.shape = tuple(int(s) for s in shape)
        self.dtype = dtype if isinstance(dtype, _DType) else _DType(dtype)
        self.fortran = bool(fortran)
        if isinstance(raw, str):  # pickled by Python 2 and loaded with a text encoding
            raw = raw.encode("latin1")
        if not isinstance(raw, (bytes, bytearray)):
            raise pickle.UnpicklingError("ndarray data in pickle is not a byte string")
        self.raw = bytes(raw)

    def to_tensor(self) -> Tensor:
        """Convert to a torch tensor (copying the bytes)."""
        if self.shape is None or self.dtype is None or self.raw is None:
            raise ValueError("incomplete array in pickle")
        spec = self.dtype.spec.lstrip("<>|=")
        order = self.dtype.spec[0] if self.dtype.spec[:1] in "<>|=" else self.dtype.byteorder
        if spec not in _TORCH_DTYPES:
            raise ValueError(f"unsupported array dtype {self.dtype.spec!r}")
        dtype = _TORCH_DTYPES[spec]
        itemsize = torch.empty((), dtype=dtype).element_size()
        if order == ">" and itemsize > 1:
            raise ValueError("big-endian arrays are not supported")
        numel = math.prod(self.shape)
        if len(self.raw) != numel * itemsize:
            raise ValueError(
                f"array of shape {self.shape} needs {numel * itemsize} bytes, found {len(self.raw)}"
            )
        if numel == 0:
            return torch.empty(self.shape, dtype=dtype)
        flat = torch.frombuffer(bytearray(self.raw), dtype=dtype)
        if self.fortran:
            return (
                flat.reshape(tuple(reversed(self.shape)))
                .permute(*reversed(range(len(self.shape))))
                .contiguous()
            )
        return flat.reshape(self.shape)


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> _Array:
    return _Array()


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> _Array:
    # numpy's reduction under pickle protocol 5 (buffer pickled in-band)
    arr = _Array()
    fortran = order in ("F", b"F")
    arr.__setstate__((tuple(shape), dtype, fortran, bytes(buf)))
    return arr


_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("_codecs", "encode"): codecs.encode,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): _NDArrayType,
    ("numpy", "dtype"): _DType,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "bytes"): bytes,
    ("__builtin__", "bytearray"): bytearray,
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: not part of the CIFAR-10 format"
            ) from None


def _get(d: Mapping[Any, Any], key: str) -> Any:
    if key.encode() in d:
        return d[key.encode()]
    if key in d:
        return d[key]
    raise KeyError(key)


def _decode_batch(payload: bytes, where: str) -> tuple[Tensor, Tensor]:
    """Decode one pickled batch file into ``(images uint8 (N,3,32,32), labels int64 (N,))``.

    ``where`` names the file (and archive member) for error messages.
    """
    try:
        obj = _CifarUnpickler(io.BytesIO(payload), encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise Cifar10FormatError(f"{where}: cannot unpickle CIFAR-10 batch ({exc})") from exc
    if not isinstance(obj, dict):
        raise Cifar10FormatError(f"{where}: expected a pickled dict, found {type(obj).__name__}")
    try:
        data = _get(obj, "data")
        labels = _get(obj, "labels")
    except KeyError as exc:
        raise Cifar10FormatError(
            f"{where}: batch dict has no {exc.args[0]!r} entry (keys: {sorted(map(repr, obj))})"
        ) from None

    try:
        if isinstance(labels, _Array):
            label_t = labels.to_tensor().reshape(-1).to(torch.int64)
        else:
            label_t = torch.tensor([int(v) for v in labels], dtype=torch.int64)
    except (TypeError, ValueError) as exc:
        raise Cifar10FormatError(f"{where}: bad labels ({exc})") from exc
    n = label_t.numel()

    try:
        if isinstance(data, _Array):
            if data.dtype is not None and data.dtype.spec.lstrip("<>|=") not in (
                "u1",
                "B",
                "uint8",
            ):
                raise ValueError(f"expected uint8 data, found dtype {data.dtype.spec!r}")
            data_t = data.to_tensor()
        elif isinstance(data, (bytes, bytearray, memoryview)):
            raw = bytes(data)
            data_t = (
                torch.frombuffer(bytearray(raw), dtype=torch.uint8)
                if raw
                else torch.empty(0, dtype=torch.uint8)
            )
        else:
            raise ValueError(f"unsupported type {type(data).__name__} for 'data'")
    except ValueError as exc:
        raise Cifar10FormatError(f"{where}: bad 'data' entry ({exc})") from exc

    if data_t.numel() != n * _IMAGE_NUMEL:
        raise Cifar10FormatError(
            f"{where}: 'data' holds {data_t.numel()} values but {n} labels need "
            f"{n} x {_IMAGE_NUMEL} = {n * _IMAGE_NUMEL} (expected an N x 3072 uint8 array)"
        )
    if n and (int(label_t.min()) < 0 or int(label_t.max()) >= len(CIFAR10_CLASSES)):
        raise Cifar10FormatError(
            f"{where}: labels must be in 0..{len(CIFAR10_CLASSES) - 1}, found "
            f"{int(label_t.min())}..{int(label_t.max())}"
        )
    # channel-major rows: 1024 R, 1024 G, 1024 B, each 32x32 row-major -> (N, 3, 32, 32)
    return data_t.reshape(n, *_IMAGE_SHAPE), label_t


# --------------------------------------------------------------------------------------------
# locating and reading the files


def _is_batches_dir(path: Path) -> bool:
    return any((path / name).is_file() for name in TRAIN_BATCHES + TEST_BATCHES)


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
        return torch.empty(0, *_IMAGE_SHAPE, dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
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
    if base not in TRAIN_BATCHES + TEST_BATCHES:
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
                got[key] = _decode_batch(fh.read(), f"{archive} (member {member.name!r})")
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
            got[name] = _decode_batch(file.read_bytes(), str(file))
    return got


@dataclass(frozen=True)
class Cifar10Data:
    """CIFAR-10 in memory: uint8 images ``(N, 3, 32, 32)`` and int64 labels ``(N,)``."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    source: Path
    classes: tuple[str, ...] = CIFAR10_CLASSES

    def __repr__(self) -> str:
        return (
            f"Cifar10Data(train={self.train_labels.numel()}, test={self.test_labels.numel()}, "
            f"source={str(self.source)!r})"
        )


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
# resolution and download


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/gdp_graph``, by default ``~/.cache/gdp_graph``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gdp_graph"


def md5_of_file(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex MD5 digest of a file."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_size), b""):
            h.update(chunk)
    return h.hexdigest()


def _hint() -> str:
    return (
        f"Pass --data PATH (a directory or {CIFAR10_ARCHIVE_NAME}) or set "
        f"{CIFAR10_ENV_VAR}=PATH to point at a local copy of CIFAR-10."
    )


def download_cifar10(
    cache_dir: PathLike | None = None,
    *,
    url: str = CIFAR10_URL,
    md5: str | None = CIFAR10_MD5,
    filename: str = CIFAR10_ARCHIVE_NAME,
    timeout: float = 60.0,
) -> Path:
    """Download the CIFAR-10 archive into ``cache_dir`` (verified by MD5) and return its path.

    A cached file with the right checksum is reused. The download goes to a temporary file in
    the same directory and is renamed into place only after the checksum matches, so a failed
    or corrupt download never leaves a bad file in the cache.

    Args:
        cache_dir: target directory (default :func:`default_cache_dir`).
        url: where to fetch the archive from (any scheme urllib handles, ``file://`` included).
        md5: expected hex MD5 of the archive, or ``None`` to skip the check.
        filename: file name of the archive inside ``cache_dir``.
        timeout: socket timeout in seconds.

    Raises:
        Cifar10DownloadError: the URL cannot be fetched (message says how to give a local path).
        Cifar10ChecksumError: the downloaded bytes have the wrong checksum.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = cache / filename
    expected = md5.lower() if md5 else None
    if target.is_file():
        if expected is None or md5_of_file(target) == expected:
            return target
        logger.warning("cached %s has the wrong MD5 checksum; downloading it again", target)
        target.unlink()

    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=cache)
    tmp = Path(tmp_name)
    h = hashlib.md5(usedforsecurity=False)
    try:
        logger.info("downloading %s to %s", url, target)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    h.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Cifar10DownloadError(
                f"could not download CIFAR-10 from {url}: {reason}. {_hint()}"
            ) from exc
        actual = h.hexdigest()
        if expected is not None and actual != expected:
            raise Cifar10ChecksumError(
                f"checksum mismatch for CIFAR-10 downloaded from {url}: expected MD5 {expected}, "
                f"got {actual}; the download was discarded. {_hint()}"
            )
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


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
        p = Path(path).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"CIFAR-10 path {p} (given explicitly) does not exist")
        return _find_source(p)
    env = os.environ.get(CIFAR10_ENV_VAR, "").strip()
    if env:
        p = Path(env).expanduser()
        if not p.exists():
            raise FileNotFoundError(
                f"CIFAR-10 path {p} (from the {CIFAR10_ENV_VAR} environment variable) "
                f"does not exist"
            )
        return _find_source(p)
    if not download:
        raise Cifar10Error(f"no CIFAR-10 path given and downloading is disabled. {_hint()}")
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


# --------------------------------------------------------------------------------------------
# in-memory batch iteration


def crop_and_flip(
    images: Tensor,
    top: Tensor,
    left: Tensor,
    flip: Tensor,
    padding: int = 4,
) -> Tensor:
    """Crop each zero-padded image at its own offset and mirror it where ``flip`` is set.

    Equivalent, image by image, to padding with ``padding`` zeros on every side, taking the
    ``H x W`` window whose top-left corner is ``(top[i], left[i])`` in the padded image, and
    then flipping it left-right when ``flip[i]`` is true — done for the whole batch with one
    gather.

    Args:
        images: ``(B, C, H, W)`` tensor of any dtype.
        top, left: ``(B,)`` integer offsets in ``[0, 2 * padding]``.
        flip: ``(B,)`` bool.
        padding: zero padding on each side.
    """
    if images.dim() != 4:
        raise ValueError(f"expected (B, C, H, W) images, got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    dev = images.device
    top = top.to(device=dev, dtype=torch.long)
    left = left.to(device=dev, dtype=torch.long)
    flip = flip.to(device=dev, dtype=torch.bool)
    if padding > 0:
        padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    else:
        padded = images
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    rows = top[:, None] + ar_h  # (B, H)
    cols = left[:, None] + torch.where(flip[:, None], (w - 1) - ar_w, ar_w)  # (B, W)
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def _mix_seed(seed: int, epoch: int) -> int:
    # splitmix64-style mixing so nearby (seed, epoch) pairs give unrelated streams
    z = (seed * 0x9E3779B97F4A7C15 + (epoch + 1) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


class CifarLoader:
    """Fast in-memory batches of normalized (and optionally augmented) images.

    Each pass (``for x, y in loader``) is one epoch: the order is reshuffled (when
    ``shuffle``) and each image gets a random crop from its ``padding``-zero-padded version and
    a random horizontal flip (when ``augment``); then pixels are scaled to ``[0, 1]`` and
    normalized with ``mean``/``std``. Randomness comes from a :class:`torch.Generator` seeded
    with ``(seed, epoch)``, so epoch ``e`` is the same for a given seed however the loader was
    used before; :meth:`set_epoch` picks the epoch explicitly. The uint8 images are stored on
    ``device`` once and augmented there; batches come out as float ``(B, 3, H, W)`` and int64
    ``(B,)`` tensors on ``device``.

    Args:
        images: uint8 ``(N, C, H, W)``.
        labels: integer ``(N,)``.
        batch_size: images per batch.
        shuffle: reshuffle every epoch (training) or keep the order (evaluation).
        augment: random crop + flip (default: same as ``shuffle``).
        drop_last: drop the last incomplete batch.
        device: where batches (and the stored images) live.
        seed: seed of the per-epoch generator.
        mean, std: per-channel normalization on the ``[0, 1]`` scale.
        padding: zero padding for the random crop.
        dtype: floating dtype of the images.
        channels_last: return images in ``torch.channels_last`` memory format.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        batch_size: int = 128,
        shuffle: bool = False,
        augment: bool | None = None,
        drop_last: bool = False,
        device: torch.device | str = "cpu",
        seed: int = 0,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
        padding: int = 4,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
    ) -> None:
        if images.dim() != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        if images.dtype != torch.uint8:
            raise TypeError(f"images must be uint8, got {images.dtype}")
        if labels.dim() != 1 or labels.numel() != images.shape[0]:
            raise ValueError(
                f"labels must be (N,) with N={images.shape[0]}, got shape {tuple(labels.shape)}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        c = images.shape[1]
        if len(mean) != c or len(std) != c:
            raise ValueError(f"mean/std need {c} values (one per channel)")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, dtype=torch.int64)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.augment = self.shuffle if augment is None else bool(augment)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.padding = int(padding)
        self.dtype = dtype
        self.channels_last = bool(channels_last)
        std_t = torch.tensor(list(std), dtype=torch.float32)
        mean_t = torch.tensor(list(mean), dtype=torch.float32)
        # x_norm = (x / 255 - mean) / std = x * scale + shift
        self._scale = (1.0 / (255.0 * std_t)).view(1, c, 1, 1).to(self.device)
        self._shift = (-mean_t / std_t).view(1, c, 1, 1).to(self.device)
        self.epoch = 0

    @property
    def num_samples(self) -> int:
        """Number of images in the underlying data."""
        return int(self.labels.numel())

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass use the shuffling/augmentation of ``epoch``."""
        self.epoch = int(epoch)

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 images -> normalized floats (on the images' device)."""
        x = images.to(torch.float32) * self._scale.to(images.device) + self._shift.to(images.device)
        return x.to(self.dtype)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        return self._epoch(epoch)

    def _epoch(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        n = self.num_samples
        gen = torch.Generator(device="cpu")
        gen.manual_seed(_mix_seed(self.seed, epoch))
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        if self.augment:
            span = 2 * self.padding + 1
            tops = torch.randint(0, span, (n,), generator=gen)
            lefts = torch.randint(0, span, (n,), generator=gen)
            flips = torch.rand(n, generator=gen) < 0.5
            tops, lefts, flips = (t.to(self.device) for t in (tops, lefts, flips))
        order = order.to(self.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            x = self.images.index_select(0, idx)
            if self.augment:
                sl = slice(i * self.batch_size, i * self.batch_size + idx.numel())
                x = crop_and_flip(x, tops[sl], lefts[sl], flips[sl], self.padding)
            x = self.normalize(x)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels.index_select(0, idx)

    def __repr__(self) -> str:
        return (
            f"CifarLoader(n={self.num_samples}, batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, augment={self.augment}, device={self.device})"
        )


def cifar10_loaders(
    data: Cifar10Data,
    *,
    batch_size: int = 128,
    eval_batch_size: int | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    augment: bool = True,
    drop_last: bool = True,
    channels_last: bool = False,
) -> tuple[CifarLoader, CifarLoader]:
    """Standard train (shuffled, augmented) and test (fixed order, plain) loaders."""
    train = CifarLoader(
        data.train_images,
        data.train_labels,
        batch_size=batch_size,
        shuffle=True,
        augment=augment,
        drop_last=drop_last,
        device=device,
        seed=seed,
        channels_last=channels_last,
    )
    test = CifarLoader(
        data.test_images,
        data.test_labels,
        batch_size=eval_batch_size or max(batch_size, 256),
        shuffle=False,
        augment=False,
        drop_last=False,
        device=device,
        seed=seed,
        channels_last=channels_last,
    )
    return train, test
