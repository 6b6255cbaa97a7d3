"""What can go wrong when loading CIFAR-10: the :class:`Cifar10Error` hierarchy, and the hint
that error messages give on how to point at a local copy instead.
"""

from __future__ import annotations

from gdp_graph.recipes.cifar10.data.constants import CIFAR10_ARCHIVE_NAME, CIFAR10_ENV_VAR
from gdp_graph.errors import GdpError

__all__ = [
    "Cifar10ChecksumError",
    "Cifar10DownloadError",
    "Cifar10Error",
    "Cifar10FormatError",
    "local_copy_hint",
]


class Cifar10Error(GdpError, RuntimeError):
    """Base class for CIFAR-10 loading problems."""


class Cifar10FormatError(Cifar10Error):
    """A CIFAR-10 file or archive is missing a part or does not have the expected layout."""


class Cifar10DownloadError(Cifar10Error):
    """The archive could not be downloaded (network unreachable, HTTP error, ...)."""


class Cifar10ChecksumError(Cifar10DownloadError):
    """The downloaded archive does not have the expected MD5 checksum."""


def local_copy_hint() -> str:
    """The sentence appended to errors raised when no usable copy of CIFAR-10 was found."""
    return (
        f"Pass --data PATH (a directory or {CIFAR10_ARCHIVE_NAME}) or set "
        f"{CIFAR10_ENV_VAR}=PATH to point at a local copy of CIFAR-10."
    )
