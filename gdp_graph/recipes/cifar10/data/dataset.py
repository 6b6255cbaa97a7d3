"""CIFAR-10 held in memory (what the reader returns and the loaders iterate)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from gdp_graph.recipes.cifar10.data.constants import CIFAR10_CLASSES

__all__ = ["Cifar10Data"]


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
