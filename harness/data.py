"""Datasets: labelled images in [0, 1], streamed in batches.

A dataset plugin's ``load`` returns a :class:`DataSource`: either :class:`Data` (images held in
memory as two tensors, for small sets such as MNIST) or :class:`StreamedData` (any map-style
``torch.utils.data.Dataset``, read in batches through a ``DataLoader``, so that a set of any
size never sits whole in memory). Both give the harness the same things: the number of
images, their shape and classes, a stable fingerprint, and :meth:`DataSource.batches` over
any range of positions, which is how a case is cut into chunks of images.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Sequence

from .base import Plugin

if TYPE_CHECKING:
    import torch

    from .context import Context

#: largest number of images :meth:`DataSource.materialize` holds in memory by default
MATERIALIZE_LIMIT = 100_000


@dataclass
class Batch:
    """A batch of images ``x`` (float32 ``[B, C, H, W]`` in [0, 1], on the CPU), their labels
    ``y`` (int64 ``[B]``) and their positions ``index`` (int64 ``[B]``) in the data source."""

    x: "torch.Tensor"
    y: "torch.Tensor"
    index: "torch.Tensor"

    def __len__(self) -> int:
        return int(self.y.shape[0])


class DataSource:
    """What every dataset gives the harness: ``len``, ``input_shape``, ``num_classes``,
    ``classes``, ``name``, :meth:`fingerprint` and :meth:`batches`.

    Positions run from 0 to ``len - 1``; :meth:`image_id` names an image stably across runs
    (the fingerprint and the position), which is what per-image records are keyed by."""

    name: str = ""
    num_classes: int = 0
    classes: list[str] | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def input_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None,
                workers: int | None = None, pin_memory: bool = False) -> Iterator[Batch]:
        """Batches of at most ``batch_size`` images at positions ``start`` to ``stop``, in
        order, on the CPU (pinned when ``pin_memory``, for fast copies to a GPU)."""
        raise NotImplementedError

    def head(self, n: int | None) -> "DataSource":
        """The first ``n`` images (all of them when ``n`` is None)."""
        return self.slice(0, n)

    def slice(self, offset: int = 0, limit: int | None = None) -> "DataSource":
        """Images ``offset`` to ``offset + limit`` (to the end when ``limit`` is None)."""
        raise NotImplementedError

    def materialize(self, max_images: int | None = MATERIALIZE_LIMIT) -> "Data":
        """All images in memory as :class:`Data` (for training a small model, or an analysis
        that needs every image at once); refuses more than ``max_images``."""
        import torch

        from .errors import DataError

        if max_images is not None and len(self) > max_images:
            raise DataError(f"{self.name}: {len(self)} images are too many to hold in memory "
                            f"at once (at most {max_images})",
                            hint="give the dataset a 'limit'")
        xs, ys = [], []
        for batch in self.batches(max(1, min(len(self), 1024))):
            xs.append(batch.x)
            ys.append(batch.y)
        x = torch.cat(xs) if xs else torch.empty(0, *self.input_shape)
        y = torch.cat(ys) if ys else torch.empty(0, dtype=torch.long)
        data = Data(x, y, self.num_classes, self.name, self.classes)
        data._fingerprint = self.fingerprint()
        return data

    def image_id(self, index: int) -> str:
        return f"{self.fingerprint()}:{index}"

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, n={len(self)}, "
                f"input_shape={self.input_shape}, num_classes={self.num_classes})")


@dataclass(repr=False)
class Data(DataSource):
    """Images ``x`` (float32 ``[N, C, H, W]`` in [0, 1], on the CPU) and labels ``y`` (int64),
    held in memory."""

    x: "torch.Tensor"
    y: "torch.Tensor"
    num_classes: int
    name: str = ""
    classes: list[str] | None = None
    _fingerprint: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"{self.name}: {self.x.shape[0]} images but {self.y.shape[0]} labels")

    def __repr__(self) -> str:
        return (f"Data({self.name!r}, n={len(self)}, input_shape={self.input_shape}, "
                f"num_classes={self.num_classes})")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def slice(self, offset: int = 0, limit: int | None = None) -> "Data":
        stop = len(self) if limit is None else min(len(self), offset + limit)
        if offset == 0 and stop == len(self):
            return self
        label = f"{self.name}[{offset}:{stop}]" if offset else f"{self.name}[:{stop}]"
        return Data(self.x[offset:stop], self.y[offset:stop], self.num_classes, label,
                    self.classes)

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None,
                workers: int | None = None, pin_memory: bool = False) -> Iterator[Batch]:
        import torch

        stop = len(self) if stop is None else min(stop, len(self))
        for i in range(start, stop, max(1, batch_size)):
            j = min(stop, i + batch_size)
            x, y = self.x[i:j], self.y[i:j]
            if pin_memory:
                x, y = x.pin_memory(), y.pin_memory()
            yield Batch(x, y, torch.arange(i, j, dtype=torch.long))

    def materialize(self, max_images: int | None = MATERIALIZE_LIMIT) -> "Data":
        return self

    def fingerprint(self) -> str:
        """A hash of the contents, for cache keys and image ids."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(str(tuple(self.x.shape)).encode())
            h.update(self.x.contiguous().numpy().tobytes())
            h.update(self.y.contiguous().numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint


def _collate(items: Sequence[tuple[Any, Any, int]]) -> Batch:
    import torch

    xs, ys, idx = zip(*items)
    xs = [torch.as_tensor(v, dtype=torch.float32) for v in xs]
    for v, i in zip(xs, idx):
        if v.shape != xs[0].shape:
            from .errors import DataError

            raise DataError(f"image {i} has shape {list(v.shape)} and image {idx[0]} "
                            f"{list(xs[0].shape)}: a batch needs images of one size",
                            hint="give the dataset a transform with a fixed size, e.g. "
                                 "[{resize: 256}, {center_crop: 224}]")
    x = torch.stack(xs)
    y = torch.as_tensor([int(v) for v in ys], dtype=torch.long)
    return Batch(x, y, torch.as_tensor(idx, dtype=torch.long))


class _Positions:
    """A map-style dataset over positions ``start..stop`` of ``base`` that also yields the
    position (so batches carry it), applying ``transform`` to each image."""

    def __init__(self, base: Any, positions: range, transform: Callable | None):
        self.base, self.positions, self.transform = base, positions, transform

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> tuple[Any, Any, int]:
        pos = self.positions[i]
        x, y = self.base[pos]
        if self.transform is not None:
            x = self.transform(x)
        return x, y, pos


class StreamedData(DataSource):
    """Images read on demand from a map-style dataset (``dataset[i] -> (image, label)``),
    such as a ``torchvision.datasets`` instance, in batches through a ``DataLoader``.

    ``transform`` turns each stored image into a float tensor ``[C, H, W]`` in [0, 1] (the
    dataset's own transform may do that already). ``fingerprint`` must identify the data
    (the files and the settings that shape the images); ``workers`` is the DataLoader's
    number of worker processes. ``offset``/``limit`` select a range of the dataset.
    """

    @property
    def x(self) -> "torch.Tensor":
        """Every image at once, for plugins written when datasets were tensors in memory;
        deprecated: call :meth:`materialize` (or stream with :meth:`batches`)."""
        return self._held("x")

    @property
    def y(self) -> "torch.Tensor":
        """Every label at once; deprecated like :attr:`x`."""
        return self._held("y")

    def _held(self, field: str) -> "torch.Tensor":
        import warnings

        warnings.warn(f"reading .{field} of a streamed dataset ({self.name or 'dataset'}) "
                      f"loads every image into memory; write data.materialize().{field} "
                      "(or stream with data.batches(n))", DeprecationWarning, stacklevel=3)
        if getattr(self, "_materialized", None) is None:
            self._materialized = self.materialize()
        return getattr(self._materialized, field)

    def __init__(self, dataset: Any, *, num_classes: int, fingerprint: str, name: str = "",
                 classes: list[str] | None = None, input_shape: Sequence[int] | None = None,
                 transform: Callable | None = None, workers: int = 0, offset: int = 0,
                 limit: int | None = None):
        self.dataset = dataset
        self.num_classes = int(num_classes)
        self.name = name
        self.classes = classes
        self.transform = transform
        self.workers = int(workers)
        total = len(dataset)
        self.offset = min(max(0, int(offset)), total)
        self._len = total - self.offset if limit is None else min(total - self.offset, int(limit))
        self._fingerprint = fingerprint
        self._shape = tuple(int(s) for s in input_shape) if input_shape is not None else None

    def __len__(self) -> int:
        return self._len

    @property
    def input_shape(self) -> tuple[int, ...]:
        if self._shape is None:
            if not len(self):
                raise ValueError(f"{self.name}: no images, so no input shape")
            x, _, _ = _Positions(self.dataset, range(self.offset, self.offset + 1),
                                 self.transform)[0]
            import torch

            self._shape = tuple(torch.as_tensor(x).shape)
        return self._shape

    def fingerprint(self) -> str:
        base = f"{self._fingerprint}:{self.offset}:{self._len}"
        return hashlib.sha256(base.encode()).hexdigest()[:16]

    def slice(self, offset: int = 0, limit: int | None = None) -> "StreamedData":
        start = min(self._len, max(0, int(offset)))
        n = self._len - start if limit is None else min(self._len - start, int(limit))
        if start == 0 and n == self._len:
            return self
        out = StreamedData(self.dataset, num_classes=self.num_classes,
                           fingerprint=self._fingerprint, name=f"{self.name}[{start}:{start + n}]",
                           classes=self.classes, input_shape=self._shape,
                           transform=self.transform, workers=self.workers,
                           offset=self.offset + start, limit=n)
        return out

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None,
                workers: int | None = None, pin_memory: bool = False) -> Iterator[Batch]:
        from torch.utils.data import DataLoader

        stop = self._len if stop is None else min(stop, self._len)
        if stop <= start:
            return
        positions = range(self.offset + start, self.offset + stop)
        workers = self.workers if workers is None else workers
        loader = DataLoader(_Positions(self.dataset, positions, self.transform),
                            batch_size=max(1, batch_size), shuffle=False, num_workers=workers,
                            collate_fn=_collate, pin_memory=pin_memory,
                            persistent_workers=False)
        it = iter(loader)
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except Exception as exc:
                if workers:
                    _reraise_from_worker(exc)
                raise
            batch.index = batch.index - self.offset
            yield batch


def _reraise_from_worker(exc: Exception) -> None:
    """A user error raised in a DataLoader worker reaches the main process as its whole
    traceback in one message: raise it again as the one line it was (a DataError)."""
    from .errors import DataError, HarnessError

    text = exc.message if isinstance(exc, HarnessError) else str(exc)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines or not lines[-1].startswith("harness.errors."):
        return
    message = lines[-1].partition(": ")[2].strip()
    raise DataError(message or lines[-1]) from None


class DatasetPlugin(Plugin):
    """Base of dataset plugins: parameters in the constructor, reading in ``load``."""

    kind: ClassVar[str] = "dataset"

    def load(self, ctx: "Context") -> DataSource:
        """Read the data (downloading where allowed) and return it: :class:`Data` in memory,
        or :class:`StreamedData` read in batches."""
        raise NotImplementedError

    def num_classes_hint(self) -> int | None:
        """The number of classes, when known without reading the data (MNIST: 10), so that
        ``harness validate`` can check parameters against it; None when not known."""
        return None
