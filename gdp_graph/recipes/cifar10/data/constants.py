"""Fixed facts about CIFAR-10: file names of the official python-version layout, image shape,
class names, normalization statistics, and the environment variable that points at a local copy.

Shared by the reading (:mod:`.cifar10`), decoding (:mod:`.safe_pickle`), downloading
(:mod:`.download`) and iteration (:mod:`.loader`) modules.
"""

from __future__ import annotations

import os
from typing import Union

__all__ = [
    "BATCH_NAMES",
    "CIFAR10_ARCHIVE_NAME",
    "CIFAR10_CLASSES",
    "CIFAR10_DIR_NAME",
    "CIFAR10_ENV_VAR",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGE_NUMEL",
    "IMAGE_SHAPE",
    "PathLike",
    "TEST_BATCHES",
    "TRAIN_BATCHES",
]

#: What the data-loading functions accept as a file-system location.
PathLike = Union[str, "os.PathLike[str]"]

CIFAR10_ARCHIVE_NAME = "cifar-10-python.tar.gz"
CIFAR10_DIR_NAME = "cifar-10-batches-py"
#: Environment variable consulted when no explicit path is given.
CIFAR10_ENV_VAR = "GDP_GRAPH_CIFAR10"

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
#: Every batch file of the layout, training files first.
BATCH_NAMES = TRAIN_BATCHES + TEST_BATCHES

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

#: One image: channels, height, width; and its number of values.
IMAGE_SHAPE = (3, 32, 32)
IMAGE_NUMEL = 3 * 32 * 32
