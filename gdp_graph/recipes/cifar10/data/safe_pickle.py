"""Decoding of CIFAR-10 batch files with a restricted unpickler (no numpy, no arbitrary code).

Each batch file is a pickled dict with ``b'data'`` (an ``N x 3072`` uint8 array, channel-major:
1024 red values, then 1024 green, then 1024 blue, each plane row-major) and ``b'labels'``
(``N`` ints in ``0..9``). The unpickler only rebuilds the few types the format uses (dicts,
lists, bytes and uint8 arrays): numpy arrays are replaced by small stand-ins that keep the shape,
dtype and raw bytes, and any other global is refused, so a tampered file cannot run code.
:func:`decode_batch` turns one file's bytes into tensors.
"""

from __future__ import annotations

import codecs
import io
import math
import pickle
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from gdp_graph.recipes.cifar10.data.constants import CIFAR10_CLASSES, IMAGE_NUMEL, IMAGE_SHAPE
from gdp_graph.recipes.cifar10.data.errors import Cifar10FormatError

__all__ = ["decode_batch"]


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

    @property
    def code(self) -> str:
        """The type code without its byte-order prefix (``"<i8"`` -> ``"i8"``)."""
        return self.spec.lstrip("<>|=")


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


def _flat_tensor(raw: bytes, dtype: torch.dtype) -> Tensor:
    """A 1-D tensor over a copy of ``raw`` (``torch.frombuffer`` refuses empty buffers)."""
    if not raw:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(bytearray(raw), dtype=dtype)


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
        spec = self.dtype.code
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
        flat = _flat_tensor(self.raw, dtype)
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


def decode_batch(payload: bytes, where: str) -> tuple[Tensor, Tensor]:
    """Decode one pickled batch file into ``(images uint8 (N,3,32,32), labels int64 (N,))``.

    ``where`` names the file (and archive member) for error messages.

    Raises:
        Cifar10FormatError: the bytes are not a CIFAR-10 batch (not a pickle, a foreign global,
            a missing entry, a wrong dtype or size, a label outside ``0..9``).
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
            if data.dtype is not None and _TORCH_DTYPES.get(data.dtype.code) is not torch.uint8:
                raise ValueError(f"expected uint8 data, found dtype {data.dtype.spec!r}")
            data_t = data.to_tensor()
        elif isinstance(data, (bytes, bytearray, memoryview)):
            data_t = _flat_tensor(bytes(data), torch.uint8)
        else:
            raise ValueError(f"unsupported type {type(data).__name__} for 'data'")
    except ValueError as exc:
        raise Cifar10FormatError(f"{where}: bad 'data' entry ({exc})") from exc

    if data_t.numel() != n * IMAGE_NUMEL:
        raise Cifar10FormatError(
            f"{where}: 'data' holds {data_t.numel()} values but {n} labels need "
            f"{n} x {IMAGE_NUMEL} = {n * IMAGE_NUMEL} (expected an N x 3072 uint8 array)"
        )
    if n and (int(label_t.min()) < 0 or int(label_t.max()) >= len(CIFAR10_CLASSES)):
        raise Cifar10FormatError(
            f"{where}: labels must be in 0..{len(CIFAR10_CLASSES) - 1}, found "
            f"{int(label_t.min())}..{int(label_t.max())}"
        )
    # channel-major rows: 1024 R, 1024 G, 1024 B, each 32x32 row-major -> (N, 3, 32, 32)
    return data_t.reshape(n, *IMAGE_SHAPE), label_t
