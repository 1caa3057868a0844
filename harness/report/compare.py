"""Two runs side by side: every metric both have, with the change."""

from __future__ import annotations

import math
from ..store import RunStore
from . import Table, fmt, metric_format


def compare_tables(a: RunStore, b: RunStore, *, test: str | None = None,
                   metric: str | None = None) -> list[Table]:
    for store in (a, b):
        store.check()
    dfs = []
    for store in (a, b):
        df = store.results()
        if test:
            df = df[df["test"] == test]
        if metric:
            df = df[df["metric"] == metric]
        dfs.append(df)
    keys = ["test", "model", "metric", "param"]
    merged = dfs[0].merge(dfs[1], on=keys, how="outer", suffixes=("_a", "_b"), indicator=True)
    rows: list[list[str]] = []
    only: list[list[str]] = []
    for r in merged.to_dict("records"):
        kind = metric_format(r["metric"])
        label = [r["test"], r["model"], r["metric"], r["param"] or ""]
        if r["_merge"] != "both":
            side = "A" if r["_merge"] == "left_only" else "B"
            value = r["value_a"] if side == "A" else r["value_b"]
            only.append(label + [side, fmt(value, kind)])
            continue
        va, vb = r["value_a"], r["value_b"]
        delta = vb - va
        if abs(delta) <= 1e-6 * max(1.0, abs(va)):   # round-off (a rate in float32 before)
            delta = 0.0
        rel = (delta / abs(va)) if va not in (0, 0.0) and not math.isnan(va) else math.nan
        if math.isnan(delta):
            shown_delta = "-"
        elif kind == "percent":
            shown_delta = f"{100 * delta:+.3g} pts"
        else:
            shown_delta = f"{delta:+.3g}"
        rows.append(label + [fmt(va, kind), fmt(vb, kind), shown_delta,
                             "-" if math.isnan(rel) else f"{rel:+.1%}"])
    tables = [Table(f"A: {a.path}  vs  B: {b.path}",
                    ["test", "model", "metric", "setting", "A", "B", "B - A", "change"], rows)]
    if only:
        tables.append(Table("In one run only", ["test", "model", "metric", "setting", "run",
                                                "value"], only))
    return tables
