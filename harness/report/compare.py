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


def image_changes(a: RunStore, b: RunStore, *, test: str | None = None,
                  images: bool = False) -> list[Table]:
    """Per test, model and setting: how many images both runs share and how many changed
    outcome each way (an image is *wrong* when the model misclassifies it: the attacked
    image for a test with an attack, the clean image for one without). With ``images``, the
    ids of the images that changed."""
    import numpy as np

    for store in (a, b):
        if not (store.path / store.LEDGER).is_dir():
            return [Table("Images that changed outcome", [], [],
                          [f"{store.path} has no per-image ledger (written before ledgers "
                           "were kept, or kept without its ledger/ folder): only the "
                           "aggregates can be compared"])]
    frames = []
    for store in (a, b):
        df = store.ledger()
        if test:
            df = df[df["test"] == test]
        wrong = np.where(df["adv_pred"].to_numpy() >= 0, df["adv_pred"].to_numpy(),
                         df["clean_pred"].to_numpy()) != df["label"].to_numpy()
        frames.append(df.assign(wrong=wrong)[["test", "model", "setting", "image", "wrong"]])
    keys = ["test", "model", "setting", "image"]
    both = frames[0].merge(frames[1], on=keys, suffixes=("_a", "_b"))
    rows, listed = [], []
    for (t, m, s), g in both.groupby(["test", "model", "setting"], sort=False):
        worse = g[~g["wrong_a"] & g["wrong_b"]]
        better = g[g["wrong_a"] & ~g["wrong_b"]]
        rows.append([t, m, s, str(len(g)), str(len(worse)), str(len(better)),
                     f"{100 * (len(worse) - len(better)) / len(g):+.3g} pts" if len(g) else "-"])
        if images:
            listed += [[t, m, s, "right -> wrong", img] for img in worse["image"]]
            listed += [[t, m, s, "wrong -> right", img] for img in better["image"]]
    notes = ["an image is wrong when the model misclassifies it: the attacked image in a test "
             "with an attack, the clean image in one without; only images both runs have "
             "count (the same data, by image id)"]
    tables = [Table("Images that changed outcome (A -> B)",
                    ["test", "model", "setting", "images", "right -> wrong",
                     "wrong -> right", "net change"], rows, notes)]
    if images:
        tables.append(Table("The images that changed", ["test", "model", "setting",
                                                        "change", "image"], listed))
    return tables
