"""Analyses: measurements of a model that are not attacks (unit probes, spectral bounds...).

An analysis returns named numbers (rows of the results table), optional figures (written
to the run folder and linked from the report) and notes (what its numbers assume).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from .base import Plugin

if TYPE_CHECKING:
    from .context import Context
    from .data import Data
    from .model import Model


@dataclass
class AnalysisResult:
    """``records``: ``{"metric": str, "param": str, "value": float}`` each (``param`` names
    the setting, such as ``layer=features.0``; "" for none); ``figures``: file name (``.png``)
    -> PNG bytes; ``notes``: sentences for the report."""

    records: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, bytes] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, metric: str, value: float, param: str = "") -> None:
        self.records.append({"metric": metric, "param": param, "value": float(value)})


class Analysis(Plugin):
    """Base of analyses: parameters in the constructor, the work in :meth:`run`."""

    kind: ClassVar[str] = "analysis"
    #: whether :meth:`run` needs the test's data (else it gets None)
    needs_data: ClassVar[bool] = True
    #: whether the model must be a torch module (layers, weights)
    needs_module: ClassVar[bool] = False

    def run(self, model: "Model", data: "Data | None", ctx: "Context") -> AnalysisResult:
        raise NotImplementedError
