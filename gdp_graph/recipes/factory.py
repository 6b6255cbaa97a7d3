"""Import a factory named like ``package.module:factory`` or ``path/to/file.py:factory`` (model
SPECs and TASKs use the same form)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable

from gdp_graph.errors import GdpError

__all__ = ["FactoryError", "import_factory"]


class FactoryError(GdpError, ValueError):
    """The name cannot be resolved to a callable (the message says which part is wrong)."""


def import_factory(spec: str, what: str = "SPEC") -> Callable[[], Any]:
    """The callable named by ``package.module:name`` or ``path/to/file.py:name``."""
    if ":" not in spec:
        raise FactoryError(f"{what} {spec!r}: expected 'package.module:factory' or 'path/to/file.py:factory'")
    location, _, name = spec.rpartition(":")
    if location.endswith(".py") or "/" in location or "\\" in location:
        path = Path(location)
        if not path.is_file():
            raise FactoryError(f"{what} {spec!r}: file {location} not found")
        module_name = f"_gdp_spec_{abs(hash(str(path.resolve())))}"
        loader = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(loader)
        sys.modules[module_name] = module
        try:
            loader.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - the user's file failed to import
            raise FactoryError(f"{what} {spec!r}: importing {location} failed: {type(exc).__name__}: {exc}") from exc
    else:
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))  # like `python -m`: modules next to the caller
        try:
            module = importlib.import_module(location)
        except Exception as exc:  # noqa: BLE001
            raise FactoryError(f"{what} {spec!r}: cannot import module {location!r}: "
                               f"{type(exc).__name__}: {exc}") from exc
    factory = getattr(module, name, None)
    if factory is None:
        raise FactoryError(f"{what} {spec!r}: {location} has no attribute {name!r}")
    if not callable(factory):
        raise FactoryError(f"{what} {spec!r}: {name!r} is not callable")
    return factory
