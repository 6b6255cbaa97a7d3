"""What a latency build measured, as plain data that round-trips through JSON: per node, its
seconds at the scales it ran at; the whole model's seconds; the key the table was built for."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

FORMAT = 1


@dataclass(frozen=True)
class LatencyTable:
    """``points[node] = ((scale, seconds), ...)``, one pair per grid width the node ran at;
    ``whole_s``: the unpruned model's seconds per forward; ``whole_points``: per width, the sum of
    its nodes and the whole forward (what the nodes leave out); ``key``: what it is valid for
    (:func:`gdp_graph.latency.cache.table_key`); ``build_s``: how long the build took."""

    key: Mapping[str, Any]
    whole_s: float
    points: Mapping[str, tuple[tuple[float, float], ...]]
    fractions: tuple[float, ...] = ()
    build_s: float = 0.0
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: per grid width, (its nodes' seconds added up, the whole forward's seconds)
    whole_points: tuple[tuple[float, float], ...] = ()

    def node_seconds(self, scale: float = 1.0) -> dict[str, float]:
        """Each node's measured seconds at the point closest to ``scale``."""
        return {n: min(pts, key=lambda p: abs(p[0] - scale))[1] for n, pts in self.points.items() if pts}

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "key": dict(self.key), "whole_s": self.whole_s, "fractions": list(self.fractions),
                "build_s": self.build_s, "extra": dict(self.extra),
                "whole_points": [list(p) for p in self.whole_points],
                "points": {n: [list(p) for p in pts] for n, pts in self.points.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LatencyTable":
        if data.get("format") != FORMAT:
            raise ValueError(f"latency table format {data.get('format')!r}, expected {FORMAT}")
        points = {n: tuple((float(s), float(t)) for s, t in pts) for n, pts in data["points"].items()}
        return cls(key=dict(data["key"]), whole_s=float(data["whole_s"]), points=points,
                   fractions=tuple(float(f) for f in data.get("fractions", ())),
                   build_s=float(data.get("build_s", 0.0)),
                   extra=dict(data.get("extra", {})),
                   whole_points=tuple((float(a), float(b)) for a, b in data.get("whole_points", ())))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Written to a temporary file in the same folder, then renamed (never half-written)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(self.to_dict(), f)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "LatencyTable":
        return cls.from_dict(json.loads(Path(path).read_text()))
