"""Datasets: MNIST from the original IDX files (offline), its splits; digits."""

from __future__ import annotations

import shutil

import pytest
import torch

from harness import Context, DataError


def test_mnist_splits_from_flat_folder(mnist_dir, tmp_path):
    ctx = Context(data_dir=mnist_dir, cache_dir=tmp_path)
    test = ctx.dataset("mnist", split="test")
    assert len(test) == 10000 and test.x.shape[1:] == (1, 28, 28)
    assert test.x.dtype == torch.float32 and 0 <= float(test.x.min()) and float(test.x.max()) == 1
    assert test.y[:5].tolist() == [7, 2, 1, 0, 4]
    p1, p2 = ctx.dataset("mnist", split="p1"), ctx.dataset("mnist", split="p2")
    train = ctx.dataset("mnist", split="train")
    assert len(p1) == len(p2) == 30000 and len(train) == 60000
    assert torch.equal(torch.cat([p1.x, p2.x]), train.x)
    assert len(ctx.dataset("mnist", split="test", limit=7)) == 7
    assert p1.fingerprint() != p2.fingerprint()


def test_mnist_in_torchvision_layout(mnist_dir, tmp_path):
    raw = tmp_path / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (mnist_dir / "mnist").glob("t10k-*.gz"):
        shutil.copy(f, raw / f.name)
    for f in (mnist_dir / "mnist").glob("train-*.gz"):
        (raw / f.name).symlink_to(f.resolve())
    before = sorted(p.name for p in raw.iterdir())
    ctx = Context(cache_dir=tmp_path / "cache")
    data = ctx.dataset("mnist", split="test", root=str(tmp_path / "root"), download=False)
    assert len(data) == 10000
    # unpacked into the cache, never beside the originals (the data folder may be read-only)
    assert sorted(p.name for p in raw.iterdir()) == before
    assert not list((tmp_path / "root").rglob("*-ubyte"))
    assert len(list((tmp_path / "cache").rglob("*-ubyte"))) == 4


@pytest.mark.parametrize("layout", ["MNIST/raw", "mnist"])
def test_a_damaged_mnist_file_says_its_checksum_does_not_match(mnist_dir, tmp_path, layout):
    folder = tmp_path / "root" / layout
    folder.mkdir(parents=True)
    for f in (mnist_dir / "mnist").glob("*.gz"):
        (folder / f.name).symlink_to(f.resolve())
    bad = folder / "t10k-labels-idx1-ubyte.gz"
    bad.unlink()
    data = (mnist_dir / "mnist" / bad.name).read_bytes()
    bad.write_bytes(data[:-100])
    ctx = Context(cache_dir=tmp_path / "cache")
    with pytest.raises(DataError) as info:
        ctx.dataset("mnist", split="test", root=str(tmp_path / "root"))
    msg = str(info.value)
    assert msg.startswith(f"{bad}: checksum does not match the original MNIST file") \
        and "replace it" in msg and "download" not in msg and "\n" not in msg


def test_mnist_missing_offline_is_a_clear_error(tmp_path, monkeypatch):
    ctx = Context(data_dir=tmp_path, cache_dir=tmp_path / "cache")
    with pytest.raises(DataError) as info:
        ctx.dataset("mnist", split="test", download=False)
    msg = str(info.value)
    assert "MNIST not found" in msg and "--data-dir" in msg and "\n" not in msg


def test_mnist_from_environment(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_DATA_DIR", str(mnist_dir))
    data = Context(cache_dir=tmp_path).dataset("mnist", split="test", limit=3, download=False)
    assert data.y.tolist() == [7, 2, 1]


def test_digits_splits():
    ctx = Context()
    train, test, every = (ctx.dataset("digits", split=s) for s in ("train", "test", "all"))
    assert (len(train), len(test), len(every)) == (1437, 360, 1797)
    assert train.x.shape[1:] == (1, 8, 8) and float(every.x.max()) == 1.0
    assert torch.equal(every.x[::5], test.x)
