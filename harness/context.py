"""What a plugin may ask of the harness while it works: device, seeds, folders, progress."""

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
    from .data import Data
    from .registry import Registry


class Progress(Protocol):
    def update(self, n: int = 1) -> None: ...
    def set_postfix(self, **values: Any) -> None: ...


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


def default_cache_dir() -> Path:
    env = os.environ.get("HARNESS_CACHE_DIR")
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
    """Handed to every plugin's ``load``/``run``: where to compute and how to be reproducible.

    Randomness comes from :meth:`generator`, keyed by the run's seed and a name, so results
    do not depend on the order in which things run.
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    data_dir: Path | None = None
    cache_dir: Path = field(default_factory=default_cache_dir)
    use_cache: bool = True
    progress: ProgressFactory = silent_progress
    registry: "Registry | None" = None
    #: the shape of one input image and the number of classes of the data a model will be fed,
    #: when the suite's data tells (a model plugin may use them where the suite gives none)
    input_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    #: the position, in the test's data, of the first image of the batch being attacked (key
    #: per-batch randomness by it, so that every batch draws its own stream)
    position: int = 0
    _datasets: dict[str, "Data"] = field(default_factory=dict, repr=False)

    def generator(self, *key: Any) -> torch.Generator:
        """A CPU generator seeded from the run's seed and ``key`` (draw on the CPU, then move:
        the numbers are then the same on every device)."""
        return torch.Generator().manual_seed(stable_seed(self.seed, *key))

    def dataset(self, use: str, **params: Any) -> "Data":
        """Load (once per run) the dataset plugin ``use`` with ``params``."""
        key = repr((use, sorted(params.items())))
        if key not in self._datasets:
            if self.registry is None:
                from .plugins import default_registry
                self.registry = default_registry()
            plugin = self.registry.build("dataset", use, params)
            from .base import blame

            with blame(plugin, "loading data"):
                self._datasets[key] = plugin.load(self)
        return self._datasets[key]
