"""Built-in datasets: MNIST (torchvision's loader), scikit-learn's bundled 8x8 digits, and
(in :mod:`.generic`) torchvision's datasets, image folders, tensor files and synthetic images."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Literal, Union

import harness
from harness import Context, Data, DataError, DatasetPlugin, Field, hookimpl

from ..params import Limit

DATA_ENV = "HARNESS_DATA_DIR"

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def data_roots(root: str | None, ctx: Context) -> list[Path]:
    """Where to look for data, first match wins: the suite's ``root``, ``--data-dir``,
    ``$HARNESS_DATA_DIR``, then the harness's cache."""
    roots = [Path(root).expanduser()] if root else []
    if ctx.data_dir:
        roots.append(Path(ctx.data_dir).expanduser())
    if os.environ.get(DATA_ENV):
        roots.append(Path(os.environ[DATA_ENV]).expanduser())
    roots.append(ctx.cache_dir / "data")
    return roots


def _find_mnist_files(root: Path) -> dict[str, Path] | None:
    """The four MNIST files (``.gz`` or unpacked) in any of the usual layouts under ``root``."""
    for folder in (root / "MNIST" / "raw", root / "mnist", root / "mnist" / "raw",
                   root / "MNIST", root):
        found = {}
        for stem in MNIST_FILES:
            for cand in (folder / stem, folder / f"{stem}.gz"):
                if cand.is_file():
                    found[stem] = cand
                    break
        if len(found) == len(MNIST_FILES):
            return found
    return None


#: md5 of the four original ``.gz`` files (as torchvision checks them)
MNIST_MD5 = {"train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
             "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
             "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
             "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c"}
_VERIFIED: set[tuple[str, int, int]] = set()


def _verify_mnist(found: dict[str, Path]) -> None:
    """Check the md5 of each ``.gz`` file found (once per file and process): a damaged or
    foreign file is a DataError saying so, not a failed download."""
    for stem, path in found.items():
        if path.suffix != ".gz":
            continue
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if key in _VERIFIED:
            continue
        digest = hashlib.md5()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != MNIST_MD5[stem]:
            raise DataError(f"{path}: checksum does not match the original MNIST file (md5 "
                            f"{digest.hexdigest()}, expected {MNIST_MD5[stem]}); it is damaged "
                            "or not MNIST", hint="replace it with the original file")
        _VERIFIED.add(key)


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


class MNIST(DatasetPlugin):
    """MNIST handwritten digits (28x28, 10 classes) through torchvision's loader.

    Splits: ``train`` (60,000), ``test`` (10,000), ``p1``/``p2`` (the first and the second
    30,000 training images: the paper's disjoint halves). Reads the four original IDX files
    (``.gz`` or unpacked) from ``root``, ``--data-dir`` or ``$HARNESS_DATA_DIR``, in
    torchvision's layout (``ROOT/MNIST/raw/``) or flat (``ROOT/mnist/``); checks the md5 of
    ``.gz`` files and unpacks them into the cache (the data folder may be read-only: nothing
    is written there); downloads them into the cache when they are nowhere and the network
    allows.
    """

    class Params(harness.Params):
        split: Literal["train", "test", "p1", "p2"] = Field(
            "test", description="train (60,000 images), test (10,000), or the paper's halves "
                                "of the training set, p1 and p2 (30,000 each)")
        limit: Limit = None
        root: Union[str, None] = Field(None, description="a folder holding the four MNIST "
                                                         "files (default: --data-dir, "
                                                         "$HARNESS_DATA_DIR, the cache)")
        download: bool = Field(True, description="download the files into the cache when "
                                                 "they are nowhere to be found")

    def num_classes_hint(self) -> int:
        return 10

    def _torchvision_root(self, ctx: Context) -> tuple[Path, bool]:
        """The root to hand torchvision, and whether the files were found locally."""
        roots = data_roots(self.root, ctx)
        for root in roots:
            found = _find_mnist_files(root)
            if found is None:
                continue
            _verify_mnist(found)
            raw = {p.parent for p in found.values()}
            if len(raw) == 1 and raw.pop() == root / "MNIST" / "raw" \
                    and _inside(root, ctx.cache_dir):
                return root, True  # the cache's own copy (downloaded there earlier)
            # link the files into torchvision's layout inside the cache, where it unpacks
            # them: never beside the originals
            digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
            stage = ctx.cache_dir / "mnist-staging" / digest
            target = stage / "MNIST" / "raw"
            try:
                target.mkdir(parents=True, exist_ok=True)
                for path in found.values():
                    link = target / path.name
                    if link.is_symlink() or link.exists():
                        if link.resolve() == path.resolve():
                            continue
                        link.unlink()
                    link.symlink_to(path.resolve())
            except OSError as exc:
                raise DataError(f"cannot prepare MNIST in the cache ({target}): "
                                f"{exc.strerror or exc}",
                                hint="give a writable --cache-dir (or $HARNESS_CACHE_DIR)"
                                ) from None
            return stage, True
        if not self.download:
            raise DataError(
                f"MNIST not found in {', '.join(str(r) for r in roots)}",
                hint="pass --data-dir DIR with the four MNIST files in DIR/mnist/ or DIR/MNIST/raw/")
        return roots[-1], False

    def load(self, ctx: Context) -> Data:
        from torchvision.datasets import MNIST as TorchvisionMNIST

        root, local = self._torchvision_root(ctx)
        train = self.split != "test"
        try:
            # with the files at hand, torchvision checks their md5 and unpacks them; it only
            # goes to the network when they are missing
            ds = TorchvisionMNIST(str(root), train=train, download=local or self.download)
        except (RuntimeError, OSError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(
                f"MNIST could not be read or downloaded into {root} ({first})",
                hint="offline? pass --data-dir DIR with the four MNIST files "
                     "(train-images-idx3-ubyte.gz, ...) in DIR/mnist/ or DIR/MNIST/raw/") from None
        x = ds.data.unsqueeze(1).float().div_(255.0)
        y = ds.targets.long()
        if self.split == "p1":
            x, y = x[:30000], y[:30000]
        elif self.split == "p2":
            x, y = x[30000:], y[30000:]
        data = Data(x, y, 10, f"mnist:{self.split}", [str(i) for i in range(10)])
        return data.head(self.limit)


class Digits(DatasetPlugin):
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes), offline.

    Splits: ``train`` (the 1,437 images whose index is not a multiple of 5), ``test`` (the
    360 that are), ``all``. Pixels scaled from 0..16 to [0, 1].
    """

    class Params(harness.Params):
        split: Literal["train", "test", "all"] = Field(
            "test", description="train (the 1,437 images whose index is not a multiple of "
                                "5), test (the other 360) or all")
        limit: Limit = None

    def num_classes_hint(self) -> int:
        return 10

    def load(self, ctx: Context) -> Data:
        import torch
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = torch.tensor(bunch.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
        y = torch.tensor(bunch.target, dtype=torch.long)
        idx = torch.arange(len(y))
        if self.split == "train":
            keep = idx % 5 != 0
        elif self.split == "test":
            keep = idx % 5 == 0
        else:
            keep = torch.ones_like(idx, dtype=torch.bool)
        data = Data(x[keep], y[keep], 10, f"digits:{self.split}", [str(i) for i in range(10)])
        return data.head(self.limit)


@hookimpl
def register_datasets(register):
    register("mnist", MNIST)
    register("digits", Digits)
    from .generic import ImageFolder, Synthetic, Tensors, Torchvision

    register("torchvision", Torchvision)
    register("image-folder", ImageFolder)
    register("tensors", Tensors)
    register("synthetic", Synthetic)
