"""CIFAR-10 reading, path resolution, download and the in-memory loader.

Everything runs on a tiny synthetic copy written in the official layout; only the ``slow``
test touches the real archive.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gdp_graph.recipes.cifar10.data.cifar10 import (
    CIFAR10_ENV_VAR,
    CIFAR10_MEAN,
    CIFAR10_STD,
    Cifar10ChecksumError,
    Cifar10DownloadError,
    Cifar10Error,
    Cifar10FormatError,
    CifarLoader,
    cifar10_loaders,
    crop_and_flip,
    download_cifar10,
    load_cifar10,
    read_cifar10,
    resolve_cifar10_path,
)

from tests.fixtures.cifar10_synthetic import (
    BATCH_DIR,
    REAL_ARCHIVE,
    TEST_SIZE,
    TRAIN_SIZES,
    Synthetic,
)

@pytest.fixture
def synth(tmp_path: Path) -> Synthetic:
    return Synthetic(tmp_path)


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CIFAR10_ENV_VAR, raising=False)


def check_matches(data, synth: Synthetic) -> None:
    assert data.train_images.shape == (sum(TRAIN_SIZES), 3, 32, 32)
    assert data.test_images.shape == (TEST_SIZE, 3, 32, 32)
    assert data.train_images.dtype == torch.uint8 and data.test_images.dtype == torch.uint8
    assert data.train_labels.dtype == torch.int64 and data.test_labels.dtype == torch.int64
    assert torch.equal(data.train_images, synth.train_images)
    assert torch.equal(data.test_images, synth.test_images)
    assert torch.equal(data.train_labels, synth.train_labels)
    assert torch.equal(data.test_labels, synth.test_labels)


# --------------------------------------------------------------------------------------------
# reading


def test_reads_archive(synth: Synthetic) -> None:
    data = read_cifar10(synth.archive)
    check_matches(data, synth)
    assert data.source == synth.archive


@pytest.mark.parametrize("which", ["parent", "batches_dir", "dir_with_archive"])
def test_reads_directories(synth: Synthetic, which: str) -> None:
    path = {
        "parent": synth.parent,
        "batches_dir": synth.batches_dir,
        "dir_with_archive": synth.archive.parent,
    }[which]
    if which == "dir_with_archive":
        # tmp_path holds the archive and "extracted/", not the batch files themselves
        assert not (path / BATCH_DIR).exists()
    check_matches(read_cifar10(path), synth)


@pytest.mark.parametrize("style", ["raw", "numpy2", "numpy4", "numpy5"])
def test_pickle_variants(tmp_path: Path, style: str) -> None:
    synth = Synthetic(tmp_path, style=style)
    check_matches(read_cifar10(synth.archive), synth)
    check_matches(read_cifar10(synth.parent), synth)


def test_channel_major_decoding(synth: Synthetic) -> None:
    img = read_cifar10(synth.archive).train_images[0]  # (C, H, W)
    assert img[0, 1, 2] == 200 and img[1, 31, 0] == 77 and img[2, 0, 31] == 99
    red, green, blue = img[0].clone(), img[1].clone(), img[2].clone()
    red[1, 2], green[31, 0], blue[0, 31] = 10, 20, 30
    assert (red == 10).all() and (green == 20).all() and (blue == 30).all()


def test_subsets(synth: Synthetic) -> None:
    data = read_cifar10(synth.archive, train_subset=6, test_subset=2)  # spans batches 1 and 2
    assert torch.equal(data.train_images, synth.train_images[:6])
    assert torch.equal(data.train_labels, synth.train_labels[:6])
    assert torch.equal(data.test_labels, synth.test_labels[:2])
    only_test = read_cifar10(synth.parent, train_subset=0)
    assert only_test.train_images.shape == (0, 3, 32, 32)
    assert torch.equal(only_test.test_images, synth.test_images)
    both = load_cifar10(synth.archive, subset=3)
    assert len(both.train_labels) == 3 and len(both.test_labels) == 3
    larger = read_cifar10(synth.archive, train_subset=1000)  # more than there is: all of it
    assert len(larger.train_labels) == sum(TRAIN_SIZES)
    with pytest.raises(ValueError, match=">= 0"):
        read_cifar10(synth.archive, train_subset=-1)


def test_subset_reads_only_needed_files(tmp_path: Path) -> None:
    synth = Synthetic(
        tmp_path, skip=("data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")
    )
    for source in (synth.archive, synth.parent):
        data = read_cifar10(source, train_subset=4)
        assert torch.equal(data.train_images, synth.train_images[:4])


def test_missing_member_names_archive_and_member(tmp_path: Path) -> None:
    synth = Synthetic(tmp_path, skip=("data_batch_3",))
    with pytest.raises(Cifar10FormatError) as err:
        read_cifar10(synth.archive)
    assert str(synth.archive) in str(err.value) and "data_batch_3" in str(err.value)
    with pytest.raises(Cifar10FormatError) as err:
        read_cifar10(synth.parent)
    assert str(synth.batches_dir / "data_batch_3") in str(err.value)


def test_corrupt_batch_names_file(synth: Synthetic) -> None:
    bad = synth.batches_dir / "test_batch"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(Cifar10FormatError, match="test_batch"):
        read_cifar10(synth.parent)
    bad.write_bytes(pickle.dumps({b"labels": [1, 2], b"data": b"\x00" * 100}, protocol=2))
    with pytest.raises(Cifar10FormatError, match=r"test_batch.*2 labels need"):
        read_cifar10(synth.parent)
    bad.write_bytes(pickle.dumps({b"labels": [11], b"data": b"\x00" * 3072}, protocol=2))
    with pytest.raises(Cifar10FormatError, match="labels must be in 0..9"):
        read_cifar10(synth.parent)


def test_refuses_foreign_globals(synth: Synthetic) -> None:
    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    (synth.batches_dir / "test_batch").write_bytes(
        pickle.dumps({b"labels": [], b"data": Evil()}, protocol=2)
    )
    with pytest.raises(Cifar10FormatError, match="refusing to load global"):
        read_cifar10(synth.parent)


def test_not_cifar(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(Cifar10FormatError, match="empty"):
        read_cifar10(tmp_path / "empty")
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"junk")
    with pytest.raises(Cifar10FormatError, match="junk.tar.gz"):
        read_cifar10(junk)


# --------------------------------------------------------------------------------------------
# resolution and download


def test_env_var_resolution(
    synth: Synthetic, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(CIFAR10_ENV_VAR, str(synth.archive))
    assert resolve_cifar10_path() == synth.archive
    check_matches(load_cifar10(download=False), synth)
    # an explicit path wins over the environment
    monkeypatch.setenv(CIFAR10_ENV_VAR, str(tmp_path / "nowhere"))
    assert resolve_cifar10_path(synth.parent) == synth.batches_dir
    with pytest.raises(FileNotFoundError, match=CIFAR10_ENV_VAR):
        resolve_cifar10_path()
    with pytest.raises(FileNotFoundError, match="given explicitly"):
        resolve_cifar10_path(tmp_path / "missing")


def test_nothing_given_and_no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(Cifar10Error, match="--data PATH"):
        resolve_cifar10_path(download=False)


def test_download_file_url(synth: Synthetic, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    data = load_cifar10(cache_dir=cache, url=synth.archive.as_uri(), md5=synth.md5)
    check_matches(data, synth)
    cached = cache / "cifar-10-python.tar.gz"
    assert data.source == cached and cached.read_bytes() == synth.archive.read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == ["cifar-10-python.tar.gz"]
    # a verified cached copy is reused: the URL is not needed any more
    again = download_cifar10(cache, url=(tmp_path / "gone.tar.gz").as_uri(), md5=synth.md5)
    assert again == cached


def test_download_bad_checksum_leaves_nothing(synth: Synthetic, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(Cifar10ChecksumError) as err:
        load_cifar10(cache_dir=cache, url=synth.archive.as_uri(), md5="0" * 32)
    msg = str(err.value)
    assert "0" * 32 in msg and synth.md5 in msg and synth.archive.as_uri() in msg
    assert not cache.exists() or list(cache.iterdir()) == []


def test_download_replaces_corrupt_cache(synth: Synthetic, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "cifar-10-python.tar.gz").write_bytes(b"truncated")
    path = download_cifar10(cache, url=synth.archive.as_uri(), md5=synth.md5)
    assert path.read_bytes() == synth.archive.read_bytes()


def test_download_unreachable(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(Cifar10DownloadError) as err:
        load_cifar10(cache_dir=cache, url=(tmp_path / "nope.tar.gz").as_uri())
    msg = str(err.value)
    assert "--data PATH" in msg and CIFAR10_ENV_VAR in msg
    assert list(cache.iterdir()) == []


# --------------------------------------------------------------------------------------------
# loader


def test_loader_shapes_and_normalization(synth: Synthetic) -> None:
    data = read_cifar10(synth.archive)
    loader = CifarLoader(data.train_images, data.train_labels, batch_size=8)
    assert len(loader) == 3  # 20 images: 8 + 8 + 4
    batches = list(loader)
    assert [x.shape[0] for x, _ in batches] == [8, 8, 4]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (20, 3, 32, 32)
    assert torch.equal(y, data.train_labels)  # no shuffle by default
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(x * std + mean, data.train_images.float() / 255, atol=1e-5, rtol=0)
    dropped = CifarLoader(data.train_images, data.train_labels, batch_size=8, drop_last=True)
    assert len(dropped) == 2 and len(list(dropped)) == 2


def test_loader_shuffles_each_epoch_as_a_permutation(synth: Synthetic) -> None:
    n = sum(TRAIN_SIZES)
    loader = CifarLoader(synth.train_images, torch.arange(n), batch_size=6, shuffle=True, seed=3)
    assert loader.augment  # defaults to shuffle
    e0 = torch.cat([y for _, y in loader])
    e1 = torch.cat([y for _, y in loader])
    assert sorted(e0.tolist()) == list(range(n)) and sorted(e1.tolist()) == list(range(n))
    assert not torch.equal(e0, e1)


def _epochs(loader: CifarLoader, count: int) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    return [list(loader) for _ in range(count)]


def test_loader_deterministic_by_seed(synth: Synthetic) -> None:
    def make(seed: int) -> CifarLoader:
        return CifarLoader(
            synth.train_images, synth.train_labels, batch_size=7, shuffle=True, seed=seed
        )

    a, b, c = _epochs(make(0), 2), _epochs(make(0), 2), _epochs(make(1), 2)
    for ea, eb in zip(a, b):
        for (xa, ya), (xb, yb) in zip(ea, eb):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a[0], c[0]))
    # set_epoch replays an epoch exactly
    loader = make(0)
    loader.set_epoch(1)
    for (xa, ya), (xb, yb) in zip(a[1], loader):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def _all_offsets() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (top, left, flip) choice for 4-pixel padding: 9 x 9 x 2 = 162 of them."""
    tops, lefts, flips = torch.meshgrid(
        torch.arange(9), torch.arange(9), torch.tensor([0, 1]), indexing="ij"
    )
    return tops.flatten(), lefts.flatten(), flips.flatten().bool()


def test_crop_and_flip_matches_reference() -> None:
    g = torch.Generator().manual_seed(0)
    tops, lefts, flips = _all_offsets()
    imgs = torch.randint(0, 256, (len(tops), 3, 32, 32), generator=g, dtype=torch.uint8)
    out = crop_and_flip(imgs, tops, lefts, flips)  # every image gets its own choice
    padded = F.pad(imgs, (4, 4, 4, 4))
    for i, (top, left, flip) in enumerate(zip(tops.tolist(), lefts.tolist(), flips.tolist())):
        ref = padded[i, :, top : top + 32, left : left + 32]
        if flip:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref), (top, left, flip)


def test_crop_and_flip_on_known_image() -> None:
    img = torch.zeros(1, 1, 32, 32, dtype=torch.uint8)
    img[..., :16] = 255  # left half white
    img[0, 0, 0, 0] = 7  # marker in the top-left corner
    centre, no_flip, flip = torch.tensor([4]), torch.tensor([False]), torch.tensor([True])
    assert torch.equal(crop_and_flip(img, centre, centre, no_flip), img)  # centred crop = id
    mirrored = crop_and_flip(img, centre, centre, flip)[0, 0]
    assert (mirrored[1:, 16:] == 255).all() and (mirrored[:, :16] == 0).all()
    assert mirrored[0, 31] == 7  # the corner marker moved to the top-right
    shifted = crop_and_flip(img, torch.tensor([0]), torch.tensor([0]), no_flip)[0, 0]
    assert (shifted[:4] == 0).all() and (shifted[:, :4] == 0).all()  # zero padding
    assert torch.equal(shifted[4:, 4:], img[0, 0, :28, :28])  # content moved down-right by 4


def test_loader_augmentation_is_crop_and_flip(synth: Synthetic) -> None:
    n = sum(TRAIN_SIZES)
    images = synth.train_images
    loader = CifarLoader(images, torch.arange(n), batch_size=8, shuffle=True, seed=0)
    # every (top, left, flip) candidate of every image, normalized like the loader does
    tops, lefts, flips = _all_offsets()
    k = len(tops)
    cands = loader.normalize(
        crop_and_flip(
            images.repeat_interleave(k, 0), tops.repeat(n), lefts.repeat(n), flips.repeat(n)
        )
    ).reshape(n, k, -1)
    seen_flip = seen_shift = seen_plain = False
    for _ in range(3):
        for x, idx in loader:
            err = (cands[idx] - x.reshape(len(idx), 1, -1)).abs().amax(-1)  # (B, k)
            assert (err.min(1).values < 1e-5).all(), "an image is not a crop/flip of its source"
            choice = err.argmin(1)
            seen_flip |= bool(flips[choice].any())
            seen_plain |= bool((~flips[choice]).any())
            seen_shift |= bool(((tops[choice] != 4) | (lefts[choice] != 4)).any())
    assert seen_flip and seen_plain and seen_shift


def test_cifar10_loaders(synth: Synthetic) -> None:
    data = read_cifar10(synth.archive)
    train, test = cifar10_loaders(data, batch_size=8, eval_batch_size=4)
    assert train.shuffle and train.augment and train.drop_last and len(train) == 2
    assert not test.shuffle and not test.augment and len(test) == 2
    assert torch.equal(torch.cat([y for _, y in test]), data.test_labels)


def test_loader_rejects_bad_input() -> None:
    with pytest.raises(TypeError, match="uint8"):
        CifarLoader(torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        CifarLoader(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(3, dtype=torch.long))


# --------------------------------------------------------------------------------------------
# the real archive


@pytest.mark.slow
def test_real_archive() -> None:
    path = REAL_ARCHIVE.resolve()
    if not path.is_file():
        pytest.skip(f"real CIFAR-10 archive not found at {path}")
    data = read_cifar10(path)
    assert data.train_images.shape == (50000, 3, 32, 32)
    assert data.test_images.shape == (10000, 3, 32, 32)
    assert torch.equal(torch.bincount(data.train_labels), torch.full((10,), 5000))
    assert torch.equal(torch.bincount(data.test_labels), torch.full((10,), 1000))
    x = data.train_images.float() / 255
    torch.testing.assert_close(x.mean((0, 2, 3)), torch.tensor(CIFAR10_MEAN), atol=1e-3, rtol=0)
    torch.testing.assert_close(x.std((0, 2, 3)), torch.tensor(CIFAR10_STD), atol=1e-3, rtol=0)
    small = read_cifar10(path, train_subset=100, test_subset=50)
    assert torch.equal(small.train_images, data.train_images[:100])
    assert torch.equal(small.test_labels, data.test_labels[:50])
