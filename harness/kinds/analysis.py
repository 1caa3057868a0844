"""Analysis tests: an analysis plugin (unit probes, spectral bounds...) on each model. Its
numbers are result rows as they come; an analysis sees all of its images at once, so a case
is one chunk (the data is read into memory, bounded by the test's limit)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ModelError
from ..records import ChunkRecord, ResultRow, ledger_frame
from ..base import registered_name
from . import ChunkOutput, Env, TestKind

if TYPE_CHECKING:
    import pandas as pd

    from ..plan import Case, Chunk, Plan
    from ..suite import TestConfig


class AnalysisTest(TestKind):
    kind = "analysis"
    chunked = False

    def __init__(self, plan: "Plan", index: int, config: "TestConfig"):
        super().__init__(plan, index, config)
        self.analysis = plan.built[("tests", index, "analysis")]

    @property
    def reads_data(self) -> bool:
        return self.analysis.needs_data and self.data_spec is not None

    def cost_per_image(self, mid: str) -> float:
        return 2.0

    def settings(self) -> list[str] | None:
        return None   # an analysis names its settings when it runs

    def run_chunk(self, env: Env, case: "Case", chunk: "Chunk") -> ChunkOutput:
        model = env.model(case.model)
        if self.analysis.needs_module and model.module is None:
            raise ModelError(f"analysis {registered_name(self.analysis)!r} needs a torch module, and model "
                             f"{case.model!r} is not one")
        data = None
        if self.analysis.needs_data:
            source = env.data(self)
            self.check_fit(case.model, model, source)
            data = source.materialize()
        res = self.analysis.run(model, data, env.context(0))
        n = len(data) if data is not None else 0
        record = ChunkRecord(case.key, chunk.index, chunk.start, chunk.stop)
        record.rows = [ResultRow(self.name, case.model, rec["metric"], float(rec["value"]),
                                 rec.get("param", "") or "", n=n).as_dict()
                       for rec in res.records]
        record.notes = list(res.notes)
        out = ChunkOutput(record, ledger_frame([]))
        for name, png in res.figures.items():
            out.files[f"figures/{self.name}/{case.model}/{name}"] = png
        record.files = list(out.files)
        return out

    def aggregate(self, case: "Case", ledger: "pd.DataFrame", chunks: list[ChunkRecord],
                  seed: int) -> list[ResultRow]:
        return [ResultRow.from_dict(row) for ch in chunks for row in ch.rows]
