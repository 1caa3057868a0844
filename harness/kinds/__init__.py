"""Test kinds: how each kind of test is planned, run chunk by chunk, and summarized.

- :mod:`.evaluation`: clean evaluation and attacks on each model (the paper's Table 1);
- :mod:`.transfer`: examples made for one model fed to others (Tables 2-4);
- :mod:`.analysis`: measurements that are not attacks (unit probes, spectral bounds).

A kind turns a chunk of a case into ledger rows and a :class:`~harness.records.ChunkRecord`
(:meth:`TestKind.run_chunk`) and a case's ledger into result rows
(:meth:`TestKind.aggregate`). The engine that calls them (:mod:`harness.runner`) knows no
kind in particular.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from ..errors import DataError
from ..records import ChunkRecord, ResultRow

if TYPE_CHECKING:
    import pandas as pd

    from ..context import Context
    from ..data import DataSource
    from ..model import Model
    from ..plan import Case, Chunk, Plan
    from ..suite import TestConfig


class Env(Protocol):
    """What a kind may ask of the engine while it runs a chunk."""

    ctx: "Context"
    reuse: Any

    def model(self, mid: str) -> "Model": ...
    def data(self, test: "TestKind") -> "DataSource": ...
    def context(self, position: int) -> "Context": ...


@dataclass
class ChunkOutput:
    """What running one chunk gives: its ledger rows, its record, and the files to write
    into the run folder (path -> bytes). ``error``: the chunk ran, but part of it failed
    (a transfer target that could not be loaded); the case is then reported failed."""

    record: ChunkRecord
    ledger: "pd.DataFrame"
    files: dict[str, bytes] = field(default_factory=dict)
    error: str | None = None


class TestKind:
    """Base of the test kinds. Subclasses set :attr:`kind` and implement the methods."""

    kind: ClassVar[str] = ""
    #: whether the test's cases are cut into chunks of images
    chunked: ClassVar[bool] = True

    def __init__(self, plan: "Plan", index: int, config: "TestConfig"):
        self.plan = plan
        self.index = index
        self.config = config
        self.name = config.name
        self.data_spec = plan.suite.test_data(config)
        self.data_plugin = (plan.built.get(("tests", index, "data"))
                            or plan.built.get(("data",)))

    @property
    def reads_data(self) -> bool:
        return self.data_spec is not None

    def case_models(self) -> list[str]:
        """The model ids this test has a case for."""
        return self.plan.suite.test_models(self.config)

    def models_of_case(self, mid: str) -> list[str]:
        """Every model the case of ``mid`` loads."""
        return [mid]

    def cost_per_image(self, mid: str) -> float:
        return 1.0

    def chunk_size(self, data: "DataSource") -> int:
        """Images per chunk: the suite's ``chunk_size`` where given, else what
        :meth:`batch_size` says, capped so that a chunk's images fit in
        :data:`~harness.plan.CHUNK_BYTES`."""
        from ..plan import CHUNK_BYTES

        given = self.config.chunk_size or self.plan.suite.chunk_size
        if given:
            return int(given)
        pixels = math.prod(data.input_shape) if len(data) else 1
        return max(1, min(self.batch_size(data), CHUNK_BYTES // (4 * max(pixels, 1))))

    def batch_size(self, data: "DataSource") -> int:
        from ..plan import DEFAULT_CHUNK

        return DEFAULT_CHUNK

    def settings(self) -> list[str] | None:
        """The ``param`` values of the test's results (gates may name them); None when they
        are known only once the test ran."""
        return [""]

    def metric_names(self) -> list[str]:
        return []

    def higher_is_better(self, metric: str) -> bool | None:
        return None

    def run_chunk(self, env: Env, case: "Case", chunk: "Chunk") -> ChunkOutput:
        raise NotImplementedError

    def case_notes(self, case: "Case", ledger: "pd.DataFrame") -> list[str]:
        """Sentences about a case read from its ledger (why an attack fell short...)."""
        return []

    def figures(self, ledger: "pd.DataFrame", rows: list[ResultRow]) -> dict[str, bytes]:
        """Figures of the whole test drawn from its ledger rows and result rows (file name
        -> PNG bytes)."""
        return {}

    def pairable(self, metric: str) -> bool:
        """Whether :meth:`per_image` gives values for ``metric``."""
        return False

    def per_image(self, ledger: "pd.DataFrame", model: str, metric: str,
                  param: str) -> "pd.Series | None":
        """The per-image values (indexed by image id; NaN where an image does not count)
        behind result row (model, metric, param), for paired tests against a baseline run;
        None when the metric has none."""
        return None

    def aggregate(self, case: "Case", ledger: "pd.DataFrame", chunks: list[ChunkRecord],
                  seed: int) -> list[ResultRow]:
        raise NotImplementedError

    # ------------------------------------------------------------------ shared helpers

    def check_fit(self, mid: str, model: "Model", data: "DataSource") -> None:
        if tuple(data.input_shape) != tuple(model.input_shape):
            raise DataError(f"test {self.name!r}: images of shape {list(data.input_shape)} "
                            f"({data.name}) do not fit model {mid!r}, which takes "
                            f"{list(model.input_shape)}",
                            hint="use data the model was built for, or a transform (resize, "
                                 "center_crop, rgb) in the dataset's spec")
        if data.num_classes > model.num_classes:
            raise DataError(f"test {self.name!r}: {data.name} has {data.num_classes} classes "
                            f"but model {mid!r} outputs {model.num_classes}")


def compile_test(plan: "Plan", index: int, config: "TestConfig") -> TestKind:
    """The kind of test ``config`` is, built."""
    from .analysis import AnalysisTest
    from .evaluation import EvaluationTest
    from .transfer import TransferTest

    if config.transfer is not None:
        return TransferTest(plan, index, config)
    if config.analysis is not None:
        return AnalysisTest(plan, index, config)
    return EvaluationTest(plan, index, config)
