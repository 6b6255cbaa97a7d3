"""Downloading the official CIFAR-10 archive into a local cache, verified by MD5.

Used only when neither an explicit path nor ``$GDP_GRAPH_CIFAR10`` says where the data is (see
:func:`gdp_graph.recipes.cifar10.data.cifar10.resolve_cifar10_path`). The cache is ``~/.cache/gdp_graph``
(``$XDG_CACHE_HOME/gdp_graph`` when set).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from gdp_graph.recipes.cifar10.data.constants import CIFAR10_ARCHIVE_NAME, PathLike
from gdp_graph.recipes.cifar10.data.errors import Cifar10ChecksumError, Cifar10DownloadError, local_copy_hint

__all__ = [
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "default_cache_dir",
    "download_cifar10",
    "md5_of_file",
]

logger = logging.getLogger(__name__)

#: Official download location of the python-version archive and its MD5 checksum.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"

_CHUNK_SIZE = 1 << 20


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/gdp_graph``, by default ``~/.cache/gdp_graph``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gdp_graph"


def _chunks(fh: IO[bytes], chunk_size: int = _CHUNK_SIZE) -> Iterator[bytes]:
    """The contents of a binary stream, ``chunk_size`` bytes at a time."""
    return iter(lambda: fh.read(chunk_size), b"")


def md5_of_file(path: PathLike, chunk_size: int = _CHUNK_SIZE) -> str:
    """Hex MD5 digest of a file."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in _chunks(fh, chunk_size):
            h.update(chunk)
    return h.hexdigest()


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
    try:
        logger.info("downloading %s to %s", url, target)
        actual = _fetch(url, fd, timeout)
        if expected is not None and actual != expected:
            raise Cifar10ChecksumError(
                f"checksum mismatch for CIFAR-10 downloaded from {url}: expected MD5 {expected}, "
                f"got {actual}; the download was discarded. {local_copy_hint()}"
            )
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def _fetch(url: str, fd: int, timeout: float) -> str:
    """Write what ``url`` holds to the open file ``fd`` (closed afterwards); its hex MD5."""
    h = hashlib.md5(usedforsecurity=False)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            for chunk in _chunks(resp):
                h.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Cifar10DownloadError(f"could not download CIFAR-10 from {url}: {reason}. {local_copy_hint()}") from exc
    return h.hexdigest()
