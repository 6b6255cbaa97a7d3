"""In-memory iteration over CIFAR-10: batches that are shuffled, augmented and normalized.

:class:`CifarLoader` iterates over in-memory uint8 tensors in batches: per-epoch shuffling,
vectorized random crop (zero padding) and horizontal flip (:func:`crop_and_flip`),
normalization, and the move to the target device, all driven by a seeded
:class:`torch.Generator` so a run is reproducible. :func:`cifar10_loaders` builds the usual
train/test pair from a :class:`~gdp_graph.recipes.cifar10.data.dataset.Cifar10Data`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from gdp_graph.recipes.cifar10.data.constants import CIFAR10_MEAN, CIFAR10_STD
from gdp_graph.recipes.cifar10.data.dataset import Cifar10Data

__all__ = ["CifarLoader", "cifar10_loaders", "crop_and_flip"]


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
