"""The typed records a run leaves behind, owned by the store:

- :class:`ResultRow`: one row of ``results.csv`` (a test x model x metric [x setting]), with
  its number of images and, where the metric has one, its 95% interval;
- the **ledger**: one row per image x model x setting (:data:`LEDGER_COLUMNS`), kept as
  Parquet files in the run folder, from which every aggregate is computed;
- :class:`ChunkRecord`: what the run kept of one chunk besides its ledger rows (timing,
  per-chunk values of metrics that look at the images, rows of analyses, notes, files);
- settings labels (``made_for=<model>``, ``eps=0.5``): built and parsed here alone.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterable

#: the columns of results.csv, in order (``low``/``high``: the 95% interval, empty if none)
RESULT_COLUMNS = ["test", "model", "param", "metric", "value", "n", "low", "high"]


@dataclass
class ResultRow:
    test: str
    model: str
    metric: str
    value: float
    param: str = ""
    n: int = 0
    low: float = math.nan
    high: float = math.nan

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "ResultRow":
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in row.items() if k in names}
        param = values.get("param")
        values["param"] = "" if param is None or (isinstance(param, float) and param != param) \
            else str(param)
        n = values.get("n")
        values["n"] = int(n) if n is not None and n == n and n != "" else 0
        for key in ("value", "low", "high"):
            v = values.get(key)
            values[key] = math.nan if v is None or v == "" else float(v)
        return cls(**values)

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.test, self.model, self.metric, self.param)


# ---------------------------------------------------------------------------- the ledger

#: ledger column -> (pyarrow type name, meaning)
LEDGER_COLUMNS: dict[str, tuple[str, str]] = {
    "test": ("string", "the test's name"),
    "model": ("string", "the model the row is about (for transfer: the model fed)"),
    "setting": ("string", "the attack's setting (\"stddev=0.1\", \"made_for=fc100\"...); "
                          "\"\" for none"),
    "attack": ("string", "the attack's plugin name; \"\" for a test without one"),
    "image": ("string", "stable image id: the data's fingerprint and the image's position"),
    "index": ("int64", "the image's position in the test's data"),
    "label": ("int64", "true label"),
    "target": ("int64", "target label of a targeted attack; -1 for none"),
    "clean_pred": ("int64", "the model's prediction on the clean image"),
    "adv_pred": ("int64", "its prediction on the attacked image; -1 without an attack"),
    "success": ("bool", "the attack reached its goal (transfer rows: on its source model)"),
    "already": ("bool", "no perturbation was needed"),
    "distortion": ("float64", "the paper's sqrt(sum r^2 / n); NaN without an attack"),
    "l2": ("float64", "L2 norm of the perturbation"),
    "linf": ("float64", "largest absolute pixel change"),
    "grad_evals": ("int64", "model gradient evaluations the image took part in (0: none)"),
    "forward_evals": ("int64", "model forward passes the image took part in (0: none)"),
    "seconds": ("float64", "the image's share of its batch's attack time"),
    "failure": ("string", "why the attack failed on the image, where the attack says"),
    "chunk": ("int64", "the chunk of the case the image was run in"),
}


def ledger_schema():
    import pyarrow as pa

    types = {"string": pa.string(), "int64": pa.int64(), "bool": pa.bool_(),
             "float64": pa.float64()}
    return pa.schema([(name, types[t]) for name, (t, _) in LEDGER_COLUMNS.items()])


def empty_ledger():
    import pandas as pd

    return ledger_frame([])


def ledger_frame(columns: Iterable[dict[str, Any]] | dict[str, Any]):
    """A pandas DataFrame with exactly :data:`LEDGER_COLUMNS` in their types, from a dict of
    equal-length columns (or a list of such dicts, concatenated)."""
    import numpy as np
    import pandas as pd

    parts = [columns] if isinstance(columns, dict) else list(columns)
    frames = []
    for part in parts:
        n = max((len(v) for v in part.values() if hasattr(v, "__len__")
                 and not isinstance(v, str)), default=0)
        data = {}
        for name, (kind, _) in LEDGER_COLUMNS.items():
            value = part.get(name, _DEFAULTS.get(name, _DEFAULTS[kind]))
            if isinstance(value, str) or not hasattr(value, "__len__"):
                value = [value] * n
            data[name] = np.asarray(value, dtype=_NUMPY[kind])
        frames.append(pd.DataFrame(data))
    if not frames:
        return pd.DataFrame({name: np.asarray([], dtype=_NUMPY[kind])
                             for name, (kind, _) in LEDGER_COLUMNS.items()})
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


_DEFAULTS = {"string": "", "int64": -1, "bool": False, "float64": math.nan,
             "grad_evals": 0, "forward_evals": 0, "seconds": 0.0}
_NUMPY = {"string": object, "int64": "int64", "bool": "bool", "float64": "float64"}


# ---------------------------------------------------------------------------- chunks

@dataclass
class ChunkRecord:
    """One finished chunk of a case: its place, its time, and what is not in the ledger.

    ``partials``: per-chunk values of metrics computed on the images themselves (combined
    over chunks as a mean weighted by images): ``{"setting", "metric", "value", "n"}``;
    ``rows``: result rows the chunk's work gives directly (analyses);
    ``files``: paths (inside the run folder) of the figures and artifacts it wrote."""

    case: str
    chunk: int
    start: int
    stop: int
    seconds: float = 0.0
    partials: list[dict[str, Any]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ChunkRecord":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# ---------------------------------------------------------------------------- labels

MADE_FOR = "made_for="
AMPLIFIED = "amplified="


def transfer_label(source: str, amplified: float | None = None) -> str:
    """The setting of transfer rows: examples made for ``source`` (amplified)."""
    return f"{MADE_FOR}{source}" + (f",{AMPLIFIED}{amplified:g}" if amplified is not None
                                    else "")


def baseline_label(attack: str, setting: str) -> str:
    """The setting of a transfer test's baseline rows (``gaussian-noise stddev=0.1``)."""
    return f"{attack} {setting}".strip()


@dataclass(frozen=True)
class Setting:
    """A parsed setting label."""

    made_for: str | None = None
    amplified: float | None = None
    text: str = ""

    @property
    def is_baseline(self) -> bool:
        return self.made_for is None


def parse_label(label: str) -> Setting:
    """``made_for=a,amplified=0.1`` -> Setting(made_for='a', amplified=0.1); anything else
    is a baseline's or an attack's own setting."""
    label = label or ""
    if not label.startswith(MADE_FOR):
        return Setting(text=label)
    parts = label.split(",")
    source = parts[0][len(MADE_FOR):]
    amplified = None
    for part in parts[1:]:
        if part.startswith(AMPLIFIED):
            try:
                amplified = float(part[len(AMPLIFIED):])
            except ValueError:
                pass
    return Setting(made_for=source, amplified=amplified, text=label)


def join_settings(*labels: str) -> str:
    """Settings of nested sweeps (an attack's, then a metric's) as one label."""
    return ",".join(label for label in labels if label)
