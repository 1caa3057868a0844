"""What a plugin may ask of the harness while it works: device, seeds, data and cache folders,
datasets, progress. Part of the public API: it imports nothing from the engine, which hands
it what it needs (a dataset loader)."""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

from ._lazy import torch

from .errors import HarnessError

if TYPE_CHECKING:
    from .data import DataSource

#: where datasets are looked for when no ``--data-dir`` is given
DATA_ENV = "HARNESS_DATA_DIR"
#: the cache of trained weights and staged data
CACHE_ENV = "HARNESS_CACHE_DIR"


class Progress(Protocol):
    """A progress bar, as ``ctx.progress(...)`` yields it (tqdm's interface, reduced):
    ``update(n)`` after ``n`` more units of work, ``set_postfix(**values)`` to show numbers
    beside it (a loss, a success rate)."""

    def update(self, n: int = 1) -> None: ...
    def set_postfix(self, **values: Any) -> None: ...


#: ``loader(use, params, ctx)`` -> the data of dataset plugin ``use`` built with ``params``:
#: what :meth:`Context.dataset` calls (the engine provides it)
DatasetLoader = Callable[[str, "dict[str, Any]", "Context"], "DataSource"]


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values: Any) -> None:
        pass


#: ``factory(description, total, unit)`` -> a context manager yielding a :class:`Progress`
ProgressFactory = Callable[[str, "int | None", str], Any]


@contextmanager
def silent_progress(desc: str, total: int | None = None, unit: str = "it") -> Iterator[Progress]:
    yield _Silent()


def default_data_dir() -> Path | None:
    """``$HARNESS_DATA_DIR``, when set."""
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else None


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "robustness-harness"


def resolve_device(spec: str | torch.device | None) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda``/``cuda:N`` checked to exist."""
    spec = "auto" if spec is None else str(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise HarnessError(f"unknown device {spec!r}",
                           hint="use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise HarnessError(f"device {spec!r} asked for, but CUDA is not available here",
                               hint="use --device cpu or --device auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise HarnessError(f"device {spec!r} asked for, but only "
                               f"{torch.cuda.device_count()} CUDA device(s) exist")
    elif dev.type != "cpu":
        raise HarnessError(f"unsupported device {spec!r}", hint="use auto, cpu, cuda or cuda:N")
    return dev


def stable_seed(*parts: Any) -> int:
    """A 63-bit seed derived from any printable parts (stable across runs and machines)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass
class Context:
    """Handed to every plugin's ``load``/``run``: where to compute, how to be reproducible,
    where data and caches live, and how to report progress.

    - ``device``: where the model lives; every tensor a plugin makes goes there.
    - ``seed`` and :meth:`generator`: randomness keyed by the run's seed and a name, so that
      results do not depend on the order in which things run or on the device.
    - :meth:`seeded`: a block whose torch global random state (layer initializations) is
      seeded from the run's seed and a key.
    - ``data_dir`` (``--data-dir``, else ``$HARNESS_DATA_DIR``), ``cache_dir``
      (``--cache-dir``, else ``$HARNESS_CACHE_DIR``, else ``~/.cache/robustness-harness``),
      ``use_cache`` (false with ``--no-cache``), :meth:`cache_path` and :meth:`write_cache`
      (atomic writes: a process killed while writing leaves no half file).
    - :meth:`dataset`: another dataset plugin's data (a model trained on it), loaded once
      per run.
    - ``progress(description, total, unit)``: a context manager yielding a
      :class:`Progress`.
    - ``input_shape``/``num_classes``: those of the data the model's first test feeds it,
      when known (a model plugin may use them where its suite gives none).
    - ``position``: in an attack's ``run``, the position in the test's data of the batch's
      first image (key per-batch randomness by it, so every batch draws its own stream).
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    data_dir: Path | None = field(default_factory=default_data_dir)
    cache_dir: Path = field(default_factory=default_cache_dir)
    use_cache: bool = True
    progress: ProgressFactory = silent_progress
    #: the engine's dataset loader (see :data:`DatasetLoader`); without one, ``dataset``
    #: builds the plugin from the installed plugins
    loader: DatasetLoader | None = field(default=None, repr=False)
    #: kept for plugins written before ``loader``: a registry to build dataset plugins with
    registry: Any = field(default=None, repr=False)
    input_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    position: int = 0
    _datasets: dict[str, "DataSource"] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.data_dir is None:
            self.data_dir = default_data_dir()

    def generator(self, *key: Any) -> torch.Generator:
        """A CPU generator seeded from the run's seed and ``key`` (draw on the CPU, then move:
        the numbers are then the same on every device)."""
        return torch.Generator().manual_seed(stable_seed(self.seed, *key))

    @contextmanager
    def seeded(self, *key: Any) -> Iterator[None]:
        """Inside, torch's global random state is seeded from the run's seed and ``key`` (so
        ``nn.Linear(...)`` initializes the same way every run), and restored afterwards."""
        devices = [self.device] if getattr(self.device, "type", "cpu") == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(stable_seed(self.seed, *key))
            yield

    def cache_path(self, *parts: str) -> Path:
        """A path inside the cache folder (its parent folders created)."""
        path = Path(self.cache_dir).joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write_cache(self, path: Path | str, data: bytes) -> Path:
        """Write ``data`` to ``path`` (inside the cache, see :meth:`cache_path`) atomically:
        a temporary file renamed into place, so a reader never sees half a file."""
        from .store_io import atomic_write_bytes

        atomic_write_bytes(Path(path), data)
        return Path(path)

    def dataset(self, use: str, **params: Any) -> "DataSource":
        """The data of dataset plugin ``use`` built with ``params`` (loaded once per run)."""
        key = repr((use, sorted(params.items(), key=lambda kv: str(kv[0]))))
        if key not in self._datasets:
            loader = self.loader
            if loader is None:
                loader = _default_loader(self.registry)
            self._datasets[key] = loader(use, params, self)
        return self._datasets[key]


def _default_loader(registry: Any) -> DatasetLoader:
    """For a context made without the engine (a plugin's own tests): build dataset plugins
    from the installed plugins."""
    def load(use: str, params: dict[str, Any], ctx: "Context") -> "DataSource":
        import importlib

        from .base import blame

        reg = registry
        if reg is None:   # the engine, found at run time only: no import cycle
            reg = importlib.import_module("harness.plugins").default_registry()
        plugin = reg.build("dataset", use, params)
        with blame(plugin, "loading data"):
            return plugin.load(ctx)
    return load
