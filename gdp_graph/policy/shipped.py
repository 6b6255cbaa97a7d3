"""Where the shipped policies are.

They live in the top-level ``policies/`` folder of the source tree and install as the data
package ``gdp_graph.shipped_policies`` (see setup.py).
"""
from __future__ import annotations

import importlib.resources
from pathlib import Path

__all__ = ["POLICY_DIR"]


def _shipped_policy_dir() -> Path:
    try:
        return Path(str(importlib.resources.files("gdp_graph.shipped_policies")))
    except ModuleNotFoundError:  # a source checkout or editable install: the folder itself
        return Path(__file__).resolve().parents[2] / "policies"


POLICY_DIR = _shipped_policy_dir()
