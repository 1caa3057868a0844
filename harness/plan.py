"""The plan: a suite compiled into cases (a test on a model) and each case into chunks (a range
of its images), with the built plugins attached.

``harness validate`` prints it, ``harness run`` executes it, ``--shard`` cuts it, ``--resume``
skips the chunks the run folder already holds and ``harness merge`` joins the shards' chunks;
nothing else rebuilds it. Cases are named by :attr:`Case.key` and chunks by their case and
index, both stable for a suite, so every process that compiles the same suite over the same
data agrees on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .suite import BASELINE, Suite, check_plugins

if TYPE_CHECKING:
    from .kinds import TestKind
    from .model import ModelPlugin

#: most bytes of images a chunk holds when nothing else sets its size (float32 pixels)
CHUNK_BYTES = 128 * 2 ** 20
#: images per chunk when the test's attack sets no batch size
DEFAULT_CHUNK = 1000


@dataclass(frozen=True)
class Chunk:
    """Images ``start`` to ``stop`` of the data of case ``case`` (a :attr:`Case.key`)."""

    case: str
    index: int
    start: int
    stop: int

    @property
    def images(self) -> int:
        return self.stop - self.start

    @property
    def id(self) -> str:
        return f"{self.case}#{self.index}"


@dataclass
class Case:
    """A test on one model (for a transfer test: the examples made for one source model, fed
    to every target; or the model-free baseline, model id :data:`BASELINE`)."""

    order: int
    test: "TestKind"
    model: str
    chunks: list[Chunk] = field(default_factory=list)
    images: int = 0

    @property
    def key(self) -> str:
        return case_key(self.test.name, self.model)

    @property
    def cost(self) -> float:
        """Work per image, relative to one attack on one model (for balancing shards)."""
        return self.test.cost_per_image(self.model)


def case_key(test: str, model: str) -> str:
    return f"{test}::{model}"


class Plan:
    """The compiled suite: the models and tests with their built plugins, and the cases in
    run order. :meth:`chunked` fixes each case's chunks once the data's sizes are known."""

    def __init__(self, suite: Suite, registry: Any, seed: int | None = None):
        from .kinds import compile_test

        self.suite = suite
        self.registry = registry
        #: the run's seed (the suite's unless overridden)
        self.seed = suite.seed if seed is None else int(seed)
        #: every built plugin by its place in the suite (for messages that name the line)
        self.built = suite._built if suite._built is not None else check_plugins(suite, registry)
        self.models: dict[str, "ModelPlugin"] = {mid: self.built[("models", mid)]
                                                 for mid in suite.models}
        self.tests: list["TestKind"] = [compile_test(self, i, t) for i, t in enumerate(suite.tests)]
        self.cases: list[Case] = []
        for test in self.tests:
            for mid in test.case_models():
                self.cases.append(Case(len(self.cases), test, mid))
        self._chunked = False

    def check_gates(self) -> None:
        """Gates must name settings the test has (``param``), and a paired gate a metric with
        per-image values."""
        for i, gate in enumerate(self.suite.gates):
            test = self.test(gate.test)
            labels = test.settings()
            if gate.param is not None and labels is not None:
                if gate.param not in labels:
                    shown = ", ".join(label for label in labels if label) or "none"
                    raise self.suite.error(("gates", i, "param"),
                                           f"test {gate.test!r} has no setting {gate.param!r}",
                                           hint=f"settings: {shown}")
            if gate.paired and not test.pairable(gate.metric):
                raise self.suite.error(("gates", i, "paired"),
                                       f"metric {gate.metric!r} has no per-image values, so it "
                                       "cannot be tested image by image",
                                       hint="use a metric that reads the ledger, or drop "
                                            "'paired'")

    # ------------------------------------------------------------------ lookup

    def test(self, name: str) -> "TestKind":
        for t in self.tests:
            if t.name == name:
                return t
        raise KeyError(name)

    def case(self, key: str) -> Case:
        for c in self.cases:
            if c.key == key:
                return c
        raise KeyError(key)

    def models_used(self, case: Case) -> list[str]:
        """The models a case loads, source first."""
        return case.test.models_of_case(case.model)

    # ------------------------------------------------------------------ chunks

    def chunked(self, open_data: Callable[["TestKind"], Any]) -> "Plan":
        """Cut every case into chunks; ``open_data(test)`` gives a test's data source (with
        the run's limit applied), or None for a test that reads no data (one chunk)."""
        if self._chunked:
            return self
        sources: dict[str, Any] = {}
        for case in self.cases:
            test = case.test
            if test.name not in sources:
                sources[test.name] = open_data(test) if test.reads_data else None
            data = sources[test.name]
            n = len(data) if data is not None else 0
            case.images = n
            size = test.chunk_size(data) if data is not None and test.chunked else max(n, 1)
            case.chunks = [Chunk(case.key, k, start, min(n, start + size))
                           for k, start in enumerate(range(0, n, size))] \
                or [Chunk(case.key, 0, 0, 0)]
        self._chunked = True
        return self

    def from_summary(self, saved: list[Any]) -> "Plan":
        """Take the chunks a run folder's summary recorded (to merge or re-summarize a run
        without its data)."""
        keyed = {(p.test, p.model): p for p in saved}
        for case in self.cases:
            p = keyed.get((case.test.name, case.model))
            if p is None:
                continue
            case.images = p.images
            case.chunks = [Chunk(case.key, k, int(a), int(b)) for k, (a, b) in enumerate(p.chunks)]
        self._chunked = True
        return self

    def chunks(self) -> Iterator[Chunk]:
        for case in self.cases:
            yield from case.chunks

    def shard(self, k: int, n: int) -> set[str]:
        """The ids of the chunks shard ``k`` of ``n`` (1-based) runs.

        Chunks are lined up model by model (each source model's cases together, in suite
        order; the baseline last), weighted by their work, and the line is cut into ``n``
        pieces of nearly equal work. A model's chunks therefore stay together unless its work
        is more than a shard's share, so few models are loaded by more than one shard, and
        one model's images split across shards when the suite has fewer models than shards."""
        if not self._chunked:
            raise RuntimeError("the plan is not chunked yet")
        order = {mid: i for i, mid in enumerate(self.suite.models)}
        order[BASELINE] = len(order)
        line = sorted(self.chunks(), key=lambda ch: (order.get(self.case(ch.case).model, 0),
                                                     self.case(ch.case).order, ch.index))
        weights = [max(ch.images, 1) * self.case(ch.case).cost for ch in line]
        total = sum(weights) or 1.0
        ids, before = set(), 0.0
        for ch, w in zip(line, weights):
            middle = before + w / 2
            owner = min(n, int(math.floor(middle / total * n)) + 1)
            if owner == k:
                ids.add(ch.id)
            before += w
        return ids

    def describe(self) -> list[str]:
        """One line per case (and its chunks, once chunked), for ``harness validate``."""
        lines = []
        for case in self.cases:
            chunks = (f", {case.images} images in {len(case.chunks)} chunk(s)"
                      if self._chunked and case.test.reads_data else "")
            models = self.models_used(case)
            fed = (f" -> fed to {', '.join(m for m in models if m != case.model)}"
                   if case.test.kind == "transfer" else "")
            lines.append(f"{case.test.name} x {case.model} ({case.test.kind}){fed}{chunks}")
        return lines
