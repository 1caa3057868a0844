"""Datasets people have: torchvision's, folders of images, tensor files, seeded noise.

Every plugin here returns a :class:`harness.StreamedData`: images are read one at a time
(by a ``DataLoader``, with ``workers`` processes), so no dataset sits whole in memory, and
each takes ``offset``/``limit`` (a slice of the dataset), ``workers`` and ``transform`` (see
:mod:`.transforms`). Their fingerprints come from the files' identities (names, sizes,
headers, labels, a sample of bytes) and the settings that shape the images, not from reading
every image.

``torchvision``
    any ``torchvision.datasets`` class by name (``class: FashionMNIST``, ``CIFAR10``,
    ``ImageNet``...) with its ``split``/``train`` and other arguments (``args``). Looked
    for, as ``mnist`` is, in the suite's ``root``, ``--data-dir``, ``$HARNESS_DATA_DIR``
    and the cache; downloaded only with ``download: true``. The MNIST-style classes
    (MNIST, FashionMNIST, KMNIST) also find their four original files flat in a folder
    (``ROOT/fashion-mnist/*.gz``, as Debian's ``dataset-fashion-mnist`` installs them):
    they are checked (md5) and unpacked into the cache, never beside the originals.
``image-folder``
    a folder of class sub-folders of images (torchvision's ``ImageFolder`` layout), with
    the class-index mapping given (``classes``: a list, a mapping, or a JSON / text file)
    so that labels match the model's outputs.
``tensors``
    images and labels in a ``.safetensors``, ``.npy``, ``.pt`` or ``.npz`` file.
``synthetic``
    seeded random images of any shape and class count.
"""

from __future__ import annotations

import difflib
import gzip
import hashlib
import inspect
import json
import os
import shutil
from pathlib import Path
from typing import Any, Literal, Sequence, Union

from pydantic import field_validator, model_validator

import harness
from harness import (Context, DataError, DatasetPlugin, Field, ParamError, StreamedData,
                     stable_seed)

from ..params import Classes, Limit, NonBlank, Offset, Real, Sha256, Shape, Transform, Workers
from . import transforms as T

#: torchvision.datasets classes known without importing torchvision (a newer torchvision's
#: other classes are found by importing it)
TORCHVISION_CLASSES = (
    "CIFAR10", "CIFAR100", "Caltech101", "Caltech256", "CelebA", "Country211", "DTD",
    "EMNIST", "EuroSAT", "FER2013", "FGVCAircraft", "FakeData", "FashionMNIST", "Flowers102",
    "Food101", "GTSRB", "INaturalist", "ImageFolder", "ImageNet", "Imagenette", "KMNIST",
    "LFWPeople", "LSUN", "MNIST", "OxfordIIITPet", "PCAM", "Places365", "QMNIST",
    "RenderedSST2", "SEMEION", "STL10", "SUN397", "SVHN", "StanfordCars", "USPS",
    "CLEVRClassification", "Omniglot",
)
#: the classes read from the four original MNIST-style files
MNIST_STYLE = ("MNIST", "FashionMNIST", "KMNIST")
#: image file extensions an image folder reads (lower case)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                    ".ppm", ".pgm", ".pbm")
#: images whose bytes enter a torchvision dataset's fingerprint
FINGERPRINT_SAMPLES = 8
#: the number of classes of the torchvision.datasets classes whose label set is fixed
#: (whatever their split or arguments), so that ``harness validate`` can check class labels
#: in a suite against it without reading the data
TORCHVISION_NUM_CLASSES = {
    "MNIST": 10, "FashionMNIST": 10, "KMNIST": 10, "QMNIST": 10, "USPS": 10, "SEMEION": 10,
    "CIFAR10": 10, "CIFAR100": 100, "SVHN": 10, "STL10": 10, "ImageNet": 1000,
    "Imagenette": 10, "EuroSAT": 10, "GTSRB": 43, "DTD": 47, "FER2013": 7, "Food101": 101,
    "Flowers102": 102, "Country211": 211, "StanfordCars": 196, "SUN397": 397, "PCAM": 2,
}


# ---------------------------------------------------------------------------- shared

def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _check_folder(param: str, path: Any, what: str) -> Path:
    if not isinstance(path, (str, Path)) or not str(path).strip():
        raise ParamError(param, f"{param} must name a {what}, not {path!r}")
    p = Path(str(path)).expanduser()
    if not p.exists():
        where = "" if p.is_absolute() else f" (relative to {Path.cwd()})"
        raise ParamError(param, f"{what} {str(p)!r} not found{where}")
    if not p.is_dir():
        raise ParamError(param, f"{str(p)!r} is a file, not a {what}")
    return p


def _check_file(param: str, path: Any, what: str) -> Path:
    from ..models.files import check_file

    return Path(check_file(param, path, what))


def read_classes(value: Any, param: str = "classes") -> tuple[dict[str, int], list[str] | None]:
    """A class-index mapping from the suite: a list of names (index = position), a mapping
    ``{name: index}``, or the path of a file: JSON (either of those, or torchvision's
    ``imagenet_class_index.json`` form ``{"0": ["n01440764", "tench"], ...}``) or text, one
    class per line (``#`` comments and blank lines skipped).

    Returns ``({name: index}, display names by index or None)``."""
    display: dict[int, str] = {}
    if isinstance(value, (str, Path)):
        path = _check_file(param, value, "class list file")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ParamError(param, f"cannot read {str(path)!r}: {exc}") from None
        if path.suffix.lower() == ".json":
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ParamError(param, f"{str(path)!r} is not valid JSON ({exc})") from None
            if isinstance(value, dict) and value and all(
                    isinstance(v, list) and len(v) == 2 for v in value.values()):
                try:   # {"0": ["n01440764", "tench"], ...}
                    pairs = {str(v[0]): int(k) for k, v in value.items()}
                    display = {int(k): str(v[1]) for k, v in value.items()}
                except (TypeError, ValueError):
                    raise ParamError(param, f"{str(path)!r}: an index -> [folder, name] "
                                            "mapping needs whole-number keys") from None
                value = pairs
        else:
            value = [line.strip() for line in text.splitlines()
                     if line.strip() and not line.lstrip().startswith("#")]
    if isinstance(value, (list, tuple)):
        names = [str(v) for v in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ParamError(param, f"class names given twice: {', '.join(dupes[:5])}")
        mapping = {n: i for i, n in enumerate(names)}
    elif isinstance(value, dict):
        mapping = {}
        for k, v in value.items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ParamError(param, f"class {k!r} has index {v!r}; indices are whole "
                                        "numbers >= 0")
            mapping[str(k)] = int(v)
    else:
        raise ParamError(param, f"classes must be a list of names, a mapping name -> index, "
                                f"or a file, not {value!r}")
    if not mapping:
        raise ParamError(param, "the class list is empty")
    size = max(mapping.values()) + 1
    names_by_index = [display.get(i, "") for i in range(size)]
    for name, i in mapping.items():
        if not names_by_index[i]:
            names_by_index[i] = name
    return mapping, [n or str(i) for i, n in enumerate(names_by_index)]


class _StreamedPlugin(DatasetPlugin):
    """The parameters every streamed dataset shares (``offset``, ``limit``, ``workers`` and
    ``transform``: each subclass's ``Params`` declares them with the types of
    :mod:`harness_plugins.params`), and the stream built from them."""

    offset: int
    limit: int | None
    workers: int
    transform: Any

    def __init__(self, **values: Any):
        super().__init__(**values)
        self._steps = T.parse(self.transform)

    def _stream(self, dataset: Any, *, name: str, num_classes: int, fingerprint: str,
                classes: list[str] | None, input_shape: Sequence[int] | None = None,
                transform: Any = None) -> StreamedData:
        if len(dataset) == 0:
            raise DataError(f"{name}: no images")
        if self.offset >= len(dataset):
            raise DataError(f"{name}: offset {self.offset} is past its {len(dataset)} images",
                            hint=f"use an offset below {len(dataset)}")
        return StreamedData(dataset, num_classes=num_classes, fingerprint=fingerprint,
                            name=name, classes=classes, input_shape=input_shape,
                            transform=transform, workers=self.workers, offset=self.offset,
                            limit=self.limit)


# ---------------------------------------------------------------------------- synthetic

class _SyntheticImages:
    """Image ``i`` and its label drawn from a generator seeded by ``(seed, i)``: the same
    on every machine, in any order, in any worker."""

    def __init__(self, shape: Sequence[int], num_classes: int, size: int, seed: int,
                 transform: T.Transform | None, key: str = "synthetic"):
        self.shape, self.num_classes, self.size, self.seed = tuple(shape), num_classes, size, seed
        self.transform, self.key = transform, key

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> tuple[Any, int]:
        import torch

        if not 0 <= i < self.size:
            raise IndexError(i)
        gen = torch.Generator().manual_seed(stable_seed(self.seed, self.key, i))
        y = int(torch.randint(self.num_classes, (1,), generator=gen, device="cpu"))
        x = torch.rand(self.shape, generator=gen, device="cpu")
        return (self.transform(x) if self.transform else x), y


class Synthetic(_StreamedPlugin):
    """Seeded random images (uniform in [0, 1]) of any ``shape`` and ``num_classes``, with
    random labels: ``size`` images, each drawn from ``seed`` (default: the run's) and its
    index; for smoke tests and benchmarks."""

    seed_name = "synthetic"

    class Params(harness.Params):
        shape: Shape = Field([3, 32, 32], description="the shape of one image, e.g. "
                                                      "[3, 224, 224]")
        num_classes: int = Field(10, ge=1, description="the number of classes (labels drawn "
                                                       "uniformly)")
        size: int = Field(1000, ge=1, description="the number of images")
        seed: Union[int, None] = Field(None, description="the seed the images are drawn "
                                                         "from (default: the run's)")
        offset: Offset = 0
        limit: Limit = None
        workers: Workers = 0
        transform: Transform = None

        @field_validator("shape", mode="before")
        @classmethod
        def _default_shape(cls, value: Any) -> Any:
            return [3, 32, 32] if value is None else value   # null: the default shape

    def __init__(self, **values: Any):
        super().__init__(**values)
        self._out_shape = T.output_shape(self._steps, self.shape, what="the synthetic images")

    def num_classes_hint(self) -> int:
        return self.num_classes

    def load(self, ctx: Context) -> StreamedData:
        seed = ctx.seed if self.seed is None else self.seed
        transform = T.Transform(self._steps, "synthetic image") if self._steps else None
        images = _SyntheticImages(self.shape, self.num_classes, self.size, seed, transform,
                                  self.seed_key)
        fp = _digest("synthetic", 1, self.shape, self.num_classes, self.size, seed,
                     T.describe(self._steps))
        return self._stream(images, name="synthetic", num_classes=self.num_classes,
                            fingerprint=fp, classes=[str(i) for i in range(self.num_classes)],
                            input_shape=self._out_shape)


# ---------------------------------------------------------------------------- image folder

class _ImageFiles:
    """Images read from files, one at a time, with their labels."""

    def __init__(self, files: list[tuple[str, int]], color: str, transform: T.Transform,
                 root: str):
        self.files, self.color, self.transform, self.root = files, color, transform, root
        #: the shape every image must have (set from the first image)
        self.expected: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image, UnidentifiedImageError

        path, label = self.files[i]
        full = os.path.join(self.root, path)
        try:
            with Image.open(full) as img:
                img = img.convert("RGB" if self.color == "rgb" else "L")
                x = self.transform(img)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            if isinstance(exc, DataError):
                raise
            raise DataError(f"cannot read image {full!r}: {' '.join(str(exc).split())}",
                            hint="remove or replace the file") from None
        except DataError as exc:
            raise DataError(f"{full}: {exc.message}", hint=exc.hint) from None
        if self.expected is not None and tuple(x.shape) != self.expected:
            raise DataError(
                f"image {full!r} is {list(x.shape)} after the transform, the first image "
                f"{list(self.expected)}; a batch needs images of one size",
                hint="give the dataset a transform with a fixed size, e.g. "
                     "[{resize: 256}, {center_crop: 224}] or [{resize: [H, W]}]")
        return x, label


class ImageFolder(_StreamedPlugin):
    """A folder of class sub-folders of images (torchvision's ImageFolder layout), labels
    from ``classes`` (a list, a mapping or a file; default: the sorted folder names)."""

    class Params(harness.Params):
        root: str = Field(description="the folder holding one sub-folder of images per class")
        classes: Classes = Field(None, description="the class-index mapping: a list of names "
                                                   "(index = position), {name: index}, or a "
                                                   "JSON or text file (default: the sorted "
                                                   "folder names)")
        num_classes: Union[int, None] = Field(None, ge=1, description="the number of classes, "
                                                                      "when the model has more "
                                                                      "than the folder")
        extensions: Union[list[str], None] = Field(None, description="the image file "
                                                                     "extensions read (default: "
                                                                     "the usual ones)")
        color: Literal["rgb", "gray"] = Field("rgb", description="images read as RGB or as "
                                                                 "gray levels")
        order: Literal["interleaved", "sorted"] = Field(
            "interleaved", description="interleaved: the classes take turns, so that any "
                                       "first N images spread over them; sorted: class by class")
        offset: Offset = 0
        limit: Limit = None
        workers: Workers = 0
        transform: Transform = None

    def __init__(self, **values: Any):
        super().__init__(**values)
        folder = _check_folder("root", self.root, "image folder")
        exts = self.extensions if self.extensions is not None else IMAGE_EXTENSIONS
        self._exts = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in exts)
        classes, num_classes = self.classes, self.num_classes
        subfolders = sorted(e.name for e in os.scandir(folder)
                            if e.is_dir() and not e.name.startswith("."))
        if not subfolders:
            raise ParamError("root", f"{str(folder)!r} has no class sub-folders",
                             hint="an image folder holds one sub-folder of images per class "
                                  "(root/cat/1.jpg, root/dog/2.jpg)")
        if classes is None:
            self._mapping = {name: i for i, name in enumerate(subfolders)}
            self._names = list(subfolders)
        else:
            self._mapping, self._names = read_classes(classes)
            unknown = [s for s in subfolders if s not in self._mapping]
            if unknown:
                close = difflib.get_close_matches(unknown[0], list(self._mapping), n=1)
                raise ParamError("classes", f"{len(unknown)} folder(s) of {str(folder)!r} are "
                                            f"not in the class list: {', '.join(unknown[:8])}"
                                 + (" ..." if len(unknown) > 8 else ""),
                                 hint=(f"did you mean {close[0]!r}? " if close else "")
                                 + "add them to the class list, or move them out of the folder")
        size = max(self._mapping.values()) + 1
        if num_classes is not None and num_classes < size:
            raise ParamError("num_classes", f"num_classes {num_classes} is less than the "
                                            f"class list's {size} indices")
        self._subfolders = subfolders
        shape = T.fixed_size(self._steps)
        if shape is not None:
            channels = 3 if self.color == "rgb" else 1
            T.output_shape(self._steps, (channels, *shape), what="the images")

    def num_classes_hint(self) -> int:
        return self.num_classes or len(self._names)

    def _list(self) -> list[tuple[str, int, int]]:
        """``(relative path, label, size in bytes)`` of every image, by class then path."""
        root = Path(self.root).expanduser()
        out = []
        for name in sorted(self._subfolders, key=lambda s: (self._mapping[s], s)):
            label = self._mapping[name]
            for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
                dirnames.sort()
                for fn in sorted(filenames):
                    if fn.lower().endswith(self._exts) and not fn.startswith("."):
                        full = os.path.join(dirpath, fn)
                        out.append((os.path.relpath(full, root), label, os.path.getsize(full)))
        return out

    def load(self, ctx: Context) -> StreamedData:
        root = Path(self.root).expanduser()
        if not root.is_dir():
            raise DataError(f"image folder {str(root)!r} not found")
        listed = self._list()
        if not listed:
            raise DataError(f"no images in {str(root)!r} (extensions: {', '.join(self._exts)})",
                            hint="give extensions: [...] for other file types")
        if self.order == "interleaved":   # every prefix spreads over the classes
            by_class: dict[int, list[tuple[str, int, int]]] = {}
            for item in listed:
                by_class.setdefault(item[1], []).append(item)
            groups = [by_class[k] for k in sorted(by_class)]
            listed = [g[j] for j in range(max(map(len, groups))) for g in groups if j < len(g)]
        transform = T.Transform(self._steps, "image")
        files = [(p, label) for p, label, _ in listed]
        images = _ImageFiles(files, self.color, transform, str(root))
        start = min(self.offset, len(images) - 1)
        first = images[start][0]
        images.expected = tuple(first.shape)
        num_classes = self.num_classes or len(self._names)
        fp = _digest("image-folder", 1, listed, self._mapping, self.color, self.order,
                     T.describe(self._steps))
        return self._stream(images, name=f"image-folder:{root.name}", num_classes=num_classes,
                            fingerprint=fp, classes=self._names + [
                                str(i) for i in range(len(self._names), num_classes)],
                            input_shape=images.expected)


# ---------------------------------------------------------------------------- tensor files

TENSOR_SUFFIXES = (".safetensors", ".npy", ".npz", ".pt", ".pth")
IMAGE_KEYS = ("images", "image", "x", "X", "inputs", "data", "imgs", "features")
LABEL_KEYS = ("labels", "label", "y", "Y", "targets", "target")


class _TensorFile:
    """Lazy access to the arrays of a tensor file: ``keys()``, ``shape(key)``, ``dtype(key)``,
    ``row(key, i)`` (one image, read alone where the format allows) and ``whole(key)``.

    ``.safetensors`` (safe_open) and ``.npy`` (memory-mapped) read one image at a time;
    ``.pt`` is memory-mapped (``torch.load(mmap=True)``) when saved in torch's zip format;
    ``.npz`` members are read whole when first used. The handle is opened again in each
    process (DataLoader workers)."""

    def __init__(self, path: str, labels_path: str | None = None):
        self.path, self.labels_path = path, labels_path
        self.suffix = Path(path).suffix.lower()
        self._pid: int | None = None
        self._handle: Any = None
        self._arrays: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_pid=None, _handle=None, _arrays={})
        return state

    def _open(self) -> Any:
        if self._pid == os.getpid():
            return self._handle
        self._arrays = {}
        if self.suffix == ".safetensors":
            from safetensors import safe_open

            handle: Any = safe_open(self.path, framework="pt", device="cpu")
        elif self.suffix == ".npy":
            import numpy as np

            handle = {"images": np.load(self.path, mmap_mode="r")}
            if self.labels_path:
                handle["labels"] = np.load(self.labels_path, mmap_mode="r")
        elif self.suffix == ".npz":
            import numpy as np

            handle = np.load(self.path, allow_pickle=False)
        else:
            import torch

            try:
                obj = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:   # the legacy (non-zip) format cannot be memory-mapped
                obj = torch.load(self.path, map_location="cpu", weights_only=True)
            if isinstance(obj, (tuple, list)) and len(obj) == 2:
                obj = {"images": obj[0], "labels": obj[1]}
            if not isinstance(obj, dict):
                raise DataError(f"{self.path}: holds {type(obj).__name__}; expected a dict of "
                                "tensors or an (images, labels) pair")
            handle = obj
        self._handle, self._pid = handle, os.getpid()
        return handle

    def keys(self) -> list[str]:
        h = self._open()
        if self.suffix == ".safetensors":
            return list(h.keys())
        if self.suffix == ".npz":
            return list(h.files)
        return list(h.keys())

    def _array(self, key: str) -> Any:
        h = self._open()
        if self.suffix == ".npz":
            if key not in self._arrays:
                self._arrays[key] = h[key]
            return self._arrays[key]
        return h[key]

    def shape(self, key: str) -> tuple[int, ...]:
        h = self._open()
        if self.suffix == ".safetensors":
            return tuple(h.get_slice(key).get_shape())
        if self.suffix == ".npz":
            return _npz_member_shape(h, key)
        return tuple(self._array(key).shape)

    def dtype(self, key: str) -> str:
        h = self._open()
        if self.suffix == ".safetensors":
            return str(h.get_slice(key).get_dtype()).lower()
        return str(self._array(key).dtype).replace("torch.", "")

    def row(self, key: str, i: int) -> Any:
        import numpy as np
        import torch

        h = self._open()
        if self.suffix == ".safetensors":
            return h.get_slice(key)[i:i + 1][0]
        x = self._array(key)[i]
        if isinstance(x, np.ndarray):
            return torch.from_numpy(np.array(x))
        return x.clone() if isinstance(x, torch.Tensor) else torch.as_tensor(x)

    def whole(self, key: str) -> Any:
        import numpy as np
        import torch

        h = self._open()
        if self.suffix == ".safetensors":
            return h.get_tensor(key)
        x = self._array(key)
        return torch.from_numpy(np.array(x)) if isinstance(x, np.ndarray) else torch.as_tensor(x)


def _npz_member_shape(npz: Any, key: str) -> tuple[int, ...]:
    """The shape of an ``.npz`` member from its header alone."""
    import numpy as np

    with npz.zip.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, _, _ = read(f)
    return tuple(shape)


class _TensorImages:
    """Images and labels from a :class:`_TensorFile`, one image at a time."""

    def __init__(self, file: _TensorFile, key: str, labels: Any, layout: str, scale: float | None,
                 transform: T.Transform):
        self.file, self.key, self.labels, self.layout = file, key, labels, layout
        self.scale, self.transform = scale, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        import torch

        x = self.file.row(self.key, i)
        if x.dim() == 2:
            x = x[None]
        elif self.layout == "NHWC":
            x = x.permute(2, 0, 1)
        if x.dtype == torch.uint8 and self.scale in (None, 255.0):
            pass                      # the transform scales uint8 by 255
        else:
            x = x.float()
            if self.scale is not None:
                x = x / self.scale
            lo, hi = float(x.min()), float(x.max())
            if lo < -1e-6 or hi > 1 + 1e-6:
                raise DataError(f"{self.file.path}: image {i} has values in [{lo:g}, {hi:g}]; "
                                "the harness takes images in [0, 1]",
                                hint="give scale: 255 when the file holds 0..255 values")
            x = x.clamp(0, 1)
        return self.transform(x), int(self.labels[i])


class Tensors(_StreamedPlugin):
    """Images and labels from a ``.safetensors``, ``.npy``, ``.pt`` or ``.npz`` file
    (``images``/``labels`` name the arrays; found by their usual names otherwise)."""

    class Params(harness.Params):
        path: str = Field(description="the .safetensors, .npy, .pt or .npz file")
        images: Union[str, None] = Field(None, description="the array of images (default: "
                                                           "found by its usual names, such "
                                                           "as images or x)")
        labels: Union[str, None] = Field(None, description="the array of labels (default: "
                                                           "found by its usual names); for a "
                                                           ".npy file, the .npy file of labels")
        layout: Literal["auto", "NCHW", "NHWC"] = Field(
            "auto", description="how 4-d image arrays are laid out (auto: guessed from "
                                "where the 1, 3 or 4 channels are)")
        scale: Union[Real, None] = Field(None, gt=0, description="the images are divided by "
                                                                 "it (255 for 0..255 values; "
                                                                 "uint8 images are by default)")
        num_classes: Union[int, None] = Field(None, ge=1, description="the number of classes "
                                                                      "(default: from classes, "
                                                                      "else the labels)")
        classes: Classes = Field(None, description="the class names: a list (index = "
                                                   "position), {name: index}, or a file")
        sha256: Sha256 = None
        offset: Offset = 0
        limit: Limit = None
        workers: Workers = 0
        transform: Transform = None

    def __init__(self, **values: Any):
        super().__init__(**values)
        p = _check_file("path", self.path, "tensor file")
        suffix = p.suffix.lower()
        if suffix not in TENSOR_SUFFIXES:
            raise ParamError("path", f"{p.name}: unknown tensor file type {suffix or '(none)'}",
                             hint=f"use one of {', '.join(TENSOR_SUFFIXES)}")
        if suffix == ".npy":
            if self.labels is None:
                raise ParamError("labels", "a .npy file holds one array (the images): give "
                                           "labels: the path of a .npy file of labels")
            _check_file("labels", self.labels, "labels file")
        self._names = read_classes(self.classes)[1] if self.classes is not None else None

    def num_classes_hint(self) -> int | None:
        return self.num_classes or (len(self._names) if self._names else None)

    def preflight(self, ctx: Context) -> None:
        from harness_plugins.models.files import verify_pin

        verify_pin(self.path, self.sha256)
        self._inspect(_TensorFile(str(Path(self.path).expanduser()), self._labels_path()))

    def _labels_path(self) -> str | None:
        if Path(self.path).suffix.lower() == ".npy":
            return str(Path(str(self.labels)).expanduser())
        return None

    def _inspect(self, file: _TensorFile) -> tuple[str, str, str, tuple[int, ...]]:
        """(images key, labels key, layout, image shape before transforms), checked."""
        try:
            keys = file.keys()
        except DataError:
            raise
        except Exception as exc:
            raise ParamError("path", f"cannot read {self.path!r}: "
                                     f"{' '.join(str(exc).split())[:200]}") from None
        npy = file.suffix == ".npy"
        ikey = "images" if npy else self._key("images", self.images, IMAGE_KEYS, keys)
        lkey = "labels" if npy else self._key("labels", self.labels, LABEL_KEYS, keys)
        shape, lshape = file.shape(ikey), file.shape(lkey)
        if len(shape) not in (2, 3, 4):
            raise ParamError("images", f"{ikey!r} has shape {list(shape)}; images are "
                                       "[N, C, H, W], [N, H, W, C] or [N, H, W]")
        if not lshape or lshape[0] != shape[0] or len(lshape) > 2:
            raise ParamError("labels", f"{lkey!r} has shape {list(lshape)} for "
                                       f"{shape[0]} images; labels are [N] (or one-hot [N, K])")
        layout = self.layout
        if len(shape) == 4 and layout == "auto":
            layout = "NHWC" if shape[3] in (1, 3, 4) and shape[1] not in (1, 3, 4) else "NCHW"
        if len(shape) == 4:
            image = shape[1:] if layout == "NCHW" else (shape[3], shape[1], shape[2])
        elif len(shape) == 3:
            image = (1, *shape[1:])
        else:
            image = tuple(shape[1:])
        T.output_shape(self._steps, image, what=f"the images of {Path(self.path).name}")
        return ikey, lkey, layout, tuple(image)

    @staticmethod
    def _key(param: str, given: str | None, usual: Sequence[str], keys: list[str]) -> str:
        if given is not None:
            if given not in keys:
                raise ParamError(param, f"no array {given!r} in the file",
                                 hint=f"its arrays: {', '.join(keys)}")
            return given
        found = [k for k in usual if k in keys]
        if not found:
            raise ParamError(param, f"no {param} array found (looked for "
                                    f"{', '.join(usual[:4])}...)",
                             hint=f"name it with {param}: KEY; the file's arrays: "
                                  f"{', '.join(keys)}")
        return found[0]

    def load(self, ctx: Context) -> StreamedData:
        import torch

        path = str(Path(self.path).expanduser())
        file = _TensorFile(path, self._labels_path())
        try:
            ikey, lkey, layout, _ = self._inspect(file)
        except ParamError as exc:
            raise DataError(f"{self.path}: {exc.message}", hint=exc.hint) from None
        labels = file.whole(lkey)
        if labels.dim() == 2:          # one-hot or scores
            k = labels.shape[1]
            labels = labels.argmax(1)
        else:
            k = None
        if labels.dtype.is_floating_point:
            if not torch.equal(labels, labels.round()):
                raise DataError(f"{self.path}: labels {lkey!r} are not whole numbers")
        labels = labels.long()
        if len(labels) and int(labels.min()) < 0:
            raise DataError(f"{self.path}: labels {lkey!r} has negative values")
        top = int(labels.max()) + 1 if len(labels) else 0
        num_classes = self.num_classes or (len(self._names) if self._names else None) or k or top
        if top > num_classes:
            raise DataError(f"{self.path}: label {top - 1} is outside {num_classes} classes",
                            hint="give num_classes")
        images = _TensorImages(file, ikey, labels, layout, self.scale,
                               T.Transform(self._steps, f"{Path(path).name} image"))
        size = os.path.getsize(path)
        with open(path, "rb") as f:      # the file's identity: size, header and tail bytes
            head = f.read(1 << 16)
            f.seek(max(0, size - (1 << 16)))
            tail = f.read()
        ident = self.sha256 or _digest(size, hashlib.sha256(head + tail).hexdigest())
        fp = _digest("tensors", 1, ident, ikey, lkey, file.shape(ikey), file.dtype(ikey),
                     hashlib.sha256(labels.numpy().tobytes()).hexdigest(), layout, self.scale,
                     T.describe(self._steps))
        names = self._names or [str(i) for i in range(num_classes)]
        return self._stream(images, name=f"tensors:{Path(path).stem}", num_classes=num_classes,
                            fingerprint=fp, classes=names + [
                                str(i) for i in range(len(names), num_classes)])


# ---------------------------------------------------------------------------- torchvision

def _mnist_folders(root: Path, cls: str) -> list[Path]:
    kebab = "".join(f"-{c.lower()}" if c.isupper() and i and not cls[i - 1].isupper() else
                    c.lower() for i, c in enumerate(cls))
    names = dict.fromkeys([cls, cls.lower(), kebab, kebab.replace("-", "_")])
    out = [root / cls / "raw"]
    for n in names:
        out += [root / n, root / n / "raw"]
    return out + [root]


class _Labelled:
    """A torchvision dataset whose targets are checked to be class indices. For the classes
    whose items are exactly ``Image.fromarray(data[i])`` (the MNIST-style ones and CIFAR)
    the pixels are taken from ``data`` directly, skipping the round trip through PIL."""

    def __init__(self, dataset: Any, name: str, direct: bool = False):
        self.dataset, self.name = dataset, name
        data = getattr(dataset, "data", None)
        self.direct = direct and data is not None and str(getattr(data, "dtype", "")) in (
            "uint8", "torch.uint8") and len(getattr(data, "shape", ())) in (3, 4) \
            and getattr(dataset, "transform", None) is None \
            and getattr(dataset, "target_transform", None) is None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        if self.direct:
            import torch

            x = torch.as_tensor(self.dataset.data[i])
            x = x[None] if x.dim() == 2 else x.permute(2, 0, 1)
            y = self.dataset.targets[i]
        else:
            x, y = self.dataset[i]
        try:
            return x, int(y)
        except (TypeError, ValueError):
            raise DataError(f"{self.name}: image {i} has target {type(y).__name__} {y!r}, not "
                            "a class index; only classification datasets can be used",
                            hint="choose the dataset's class-label target (e.g. "
                                 "args: {target_type: category})") from None


class Torchvision(_StreamedPlugin):
    """Any torchvision.datasets class by name (``class: FashionMNIST``, ``CIFAR10``,
    ``ImageNet``...), read from ``root``/``--data-dir``; downloaded only with ``download:
    true``."""

    class Params(harness.Params):
        class_: NonBlank = Field(description="the torchvision.datasets class, such as "
                                             "FashionMNIST, CIFAR10 or ImageNet")
        root: Union[str, None] = Field(None, description="the folder holding its files "
                                                         "(default: --data-dir, "
                                                         "$HARNESS_DATA_DIR, the cache)")
        split: Union[str, None] = Field(None, description="the split, for the classes that "
                                                          "take one (ImageNet: train or val)")
        train: Union[bool, None] = Field(None, description="the training (true) or test "
                                                           "(false) set, for the classes that "
                                                           "take train")
        download: bool = Field(False, description="let torchvision download the files into "
                                                  "the cache when they are not found")
        args: Union[dict[str, Any], None] = Field(None, description="other keyword arguments "
                                                                    "of the class")
        num_classes: Union[int, None] = Field(None, ge=1, description="the number of classes "
                                                                      "(default: the "
                                                                      "dataset's)")
        offset: Offset = 0
        limit: Limit = None
        workers: Workers = 0
        transform: Transform = None

        @model_validator(mode="after")
        def _split_or_train(self) -> "Torchvision.Params":
            if self.split is not None and self.train is not None:
                raise ParamError("train", "give split or train, not both",
                                 hint=f"{self.class_} takes the one its torchvision class has")
            for reserved in ("root", "transform", "target_transform", "download", "split",
                             "train"):
                if reserved in (self.args or {}):
                    raise ParamError("args", f"give {reserved} as its own key, not in args")
            self.args = self.args or None
            return self

    def __init__(self, **values: Any):
        super().__init__(**values)
        class_ = self.class_
        if class_ not in TORCHVISION_CLASSES:
            import torchvision.datasets as tvd

            known = [n for n in getattr(tvd, "__all__", ()) if n[:1].isupper()]
            if class_ not in known or not isinstance(getattr(tvd, class_, None), type):
                close = difflib.get_close_matches(class_, known or TORCHVISION_CLASSES, n=1)
                raise ParamError("class", f"torchvision.datasets has no class {class_!r}",
                                 hint=(f"did you mean {close[0]!r}? " if close else "")
                                 + "e.g. FashionMNIST, CIFAR10, ImageNet")
        if class_ in MNIST_STYLE:
            T.output_shape(self._steps, (1, 28, 28), what=f"{class_}'s 28x28 images")
        elif class_ in ("CIFAR10", "CIFAR100", "SVHN"):
            T.output_shape(self._steps, (3, 32, 32), what=f"{class_}'s 32x32 images")

    def num_classes_hint(self) -> int | None:
        return self.num_classes or TORCHVISION_NUM_CLASSES.get(self.class_)

    # --------------------------------------------------------------- finding the files

    def _kwargs(self, cls: type) -> dict[str, Any]:
        params = inspect.signature(cls.__init__).parameters
        takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
        kwargs = dict(self.args or {})
        for key, value in (("split", self.split), ("train", self.train)):
            if value is None:
                continue
            if key not in params and not takes_any:
                other = "train: true|false" if "train" in params else \
                    "split: ..." if "split" in params else "neither split nor train"
                raise DataError(f"torchvision's {self.class_} takes no {key}",
                                hint=f"it takes {other}")
            kwargs[key] = value
        return kwargs

    def _stage_mnist(self, cls: type, roots: list[Path], ctx: Context) -> Path | None:
        """A root where torchvision finds this MNIST-style class's files unpacked: the
        folder itself when they are there already, else a staging folder in the cache with
        the originals linked or unpacked (never written beside them)."""
        stems = [r[0][:-3] if r[0].endswith(".gz") else r[0] for r in cls.resources]
        for root in roots:
            for folder in _mnist_folders(root, self.class_):
                found = {}
                for stem in stems:
                    for cand in (folder / stem, folder / f"{stem}.gz"):
                        if cand.is_file():
                            found[stem] = cand
                            break
                if len(found) != len(stems):
                    continue
                if folder == root / self.class_ / "raw" and all(
                        p.name == s for s, p in found.items()):
                    return root
                ident = _digest([(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns)
                                 for p in found.values()])[:16]
                stage = ctx.cache_dir / "torchvision-staging" / self.class_ / ident
                raw = stage / self.class_ / "raw"
                raw.mkdir(parents=True, exist_ok=True)
                for stem, src in found.items():
                    target = raw / stem
                    if target.exists():
                        continue
                    if src.suffix == ".gz":   # (no md5 check: repackaged .gz files, such as
                        # Debian's, differ from upstream's; torchvision checks the headers)
                        tmp = raw / f".{stem}.{os.getpid()}.tmp"
                        with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
                            shutil.copyfileobj(fin, fout, 1 << 20)
                        os.replace(tmp, target)
                    else:
                        target.symlink_to(src.resolve())
                return stage
        return None

    def _open(self, ctx: Context) -> Any:
        import torchvision.datasets as tvd

        from . import data_roots

        cls = getattr(tvd, self.class_)
        kwargs = self._kwargs(cls)
        has_download = "download" in inspect.signature(cls.__init__).parameters
        roots = data_roots(self.root, ctx)
        tried: list[str] = []
        if self.class_ in MNIST_STYLE:
            staged = self._stage_mnist(cls, roots, ctx)
            candidates = [staged] if staged is not None else []
        else:
            candidates = [r for r in roots if r.is_dir()]
        def make(root: Path) -> Any:
            if has_download:
                return cls(str(root), download=False, **kwargs)
            return cls(str(root), **kwargs)

        for root in candidates:
            try:
                try:
                    return make(root)
                except PermissionError:
                    # a class that writes beside its files (ImageNet's meta.bin) in a
                    # read-only folder: give it a folder in the cache linking to the files
                    return make(_linked_copy(root, ctx.cache_dir / "torchvision-staging"
                                             / self.class_))
            except (RuntimeError, OSError, ValueError) as exc:
                tried.append(f"{root} ({' '.join(str(exc).split())[:120]})")
        if self.download:
            if not has_download:
                raise DataError(f"torchvision's {self.class_} cannot download its files",
                                hint=f"get them and pass --data-dir DIR")
            target = ctx.cache_dir / "data"
            try:
                return cls(str(target), download=True, **kwargs)
            except Exception as exc:
                raise DataError(f"{self.class_} could not be downloaded into {target} "
                                f"({' '.join(str(exc).split())[:160]})",
                                hint="offline? pass --data-dir DIR with its files") from None
        where = ", ".join(str(r) for r in roots)
        detail = f"; tried: {'; '.join(tried)}" if tried else ""
        layout = (f"DIR/{self.class_}/raw/ or DIR/{self.class_.lower()}/ with its four files"
                  if self.class_ in MNIST_STYLE else f"its files in torchvision's layout")
        raise DataError(f"{self.class_} not found in {where}{detail}",
                        hint=f"pass --data-dir DIR ({layout}), or write download: true in "
                             "the suite to let torchvision download it")

    def load(self, ctx: Context) -> StreamedData:
        dataset = self._open(ctx)
        label = self.class_ + (f":{self.split}" if self.split else
                               ":train" if self.train else ":test" if self.train is False else "")
        wrapped = _Labelled(dataset, label,
                            direct=self.class_ in MNIST_STYLE + ("CIFAR10", "CIFAR100"))
        transform = T.Transform(self._steps, f"{self.class_} image")
        classes = getattr(dataset, "classes", None)
        classes = [str(c) for c in classes] if isinstance(classes, (list, tuple)) and classes \
            else None
        targets = None
        for attr in ("targets", "labels", "_labels", "y"):
            value = getattr(dataset, attr, None)
            if value is not None and not isinstance(value, str):
                targets = value
                break
        import numpy as np

        labels = None
        if targets is not None:
            try:
                labels = (targets.numpy() if hasattr(targets, "numpy")
                          else np.asarray(targets)).astype(np.int64).ravel()
            except (TypeError, ValueError):
                labels = None
        num_classes = self.num_classes or (len(classes) if classes else None)
        if num_classes is None and labels is not None and len(labels):
            num_classes = int(labels.max()) + 1
        if num_classes is None:
            raise DataError(f"{label}: the number of classes is not known",
                            hint="give num_classes")
        n = len(wrapped)
        if n == 0:
            raise DataError(f"{label}: no images")
        # identity: class, arguments, size, labels and a few images' pixels
        h = hashlib.sha256()
        if labels is not None:
            h.update(labels.tobytes())
        step = max(1, n // FINGERPRINT_SAMPLES)
        for i in list(range(0, n, step))[:FINGERPRINT_SAMPLES]:
            x, y = wrapped[i]
            h.update(transform(x).numpy().tobytes())
            h.update(str(y).encode())
        fp = _digest("torchvision", 1, self.class_, self.split, self.train, self.args, n,
                     h.hexdigest(), T.describe(self._steps))
        return self._stream(wrapped, name=label, num_classes=num_classes, fingerprint=fp,
                            classes=classes, transform=transform)


def _linked_copy(root: Path, under: Path) -> Path:
    """A folder under ``under`` (one per source folder) whose entries are symbolic links to
    those of ``root``: a dataset class can write its index files there."""
    stage = under / _digest(str(root.resolve()))[:16]
    stage.mkdir(parents=True, exist_ok=True)
    for entry in root.iterdir():
        link = stage / entry.name
        if not link.exists() and not link.is_symlink():
            link.symlink_to(entry.resolve())
    return stage
