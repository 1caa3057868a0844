"""Between attack results and the ledger: the per-image columns of a result, an evaluation
rebuilt from ledger rows, and a case's metric rows with their intervals."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ..records import ResultRow, join_settings

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from ..attack import AttackResult
    from ..metric import Evaluation


def result_columns(res: "AttackResult", adv_pred: "torch.Tensor") -> dict[str, Any]:
    """The ledger columns of an attack's result on a batch (numpy arrays)."""
    import numpy as np

    n = len(res.success)

    def arr(t: Any, fill: Any, dtype: str) -> Any:
        if t is None:
            return np.full(n, fill, dtype=dtype)
        return t.detach().cpu().numpy().astype(dtype, copy=False)

    return {
        "target": arr(res.target, -1, "int64"),
        "adv_pred": arr(adv_pred, -1, "int64"),
        "success": arr(res.success, False, "bool"),
        "already": arr(res.already, False, "bool"),
        "distortion": arr(res.distortion, math.nan, "float64"),
        "l2": arr(res.l2, math.nan, "float64"),
        "linf": arr(getattr(res, "linf", None), math.nan, "float64"),
        "grad_evals": arr(res.grad_evals, 0, "int64"),
        "forward_evals": arr(res.forward_evals, 0, "int64"),
        "seconds": np.full(n, float(res.seconds) / max(n, 1)),
        "failure": np.asarray(list(res.failure) if res.failure is not None else [""] * n,
                              dtype=object),
    }


def case_evaluation(rows: "pd.DataFrame", with_attack: bool,
                    distortion_over: str = "success") -> "Evaluation":
    """An :class:`~harness.metric.Evaluation` of a case's ledger rows (one setting), on the
    CPU: labels, predictions and the attack's per-image outcomes; no images (``x`` and
    ``result.x_adv`` are None) and no model."""
    import torch

    from ..attack import AttackResult
    from ..metric import Evaluation

    rows = rows.sort_values("index", kind="stable")

    def t(col: str, dtype: Any = None) -> "torch.Tensor":
        return torch.as_tensor(rows[col].to_numpy(copy=True), dtype=dtype)

    y = t("label", torch.long)
    clean_pred = t("clean_pred", torch.long)
    if not with_attack:
        return Evaluation(None, None, y, clean_pred)
    target = t("target", torch.long)
    res = AttackResult(
        x_adv=None, success=t("success", torch.bool),
        target=None if bool((target < 0).all()) else target,
        already=t("already", torch.bool), grad_evals=t("grad_evals", torch.long),
        forward_evals=t("forward_evals", torch.long),
        distortion=t("distortion", torch.float64), l2=t("l2", torch.float64),
        linf=t("linf", torch.float64), seconds=float(rows["seconds"].sum()),
        failure=[str(f) for f in rows["failure"].tolist()], distortion_over=distortion_over)
    return Evaluation(None, None, y, clean_pred, res, t("adv_pred", torch.long))


def metric_rows(test: str, model: str, setting: str, metrics: list[tuple[str, Any]],
                ev: "Evaluation", partials: list[dict[str, Any]], seed: int) -> list[ResultRow]:
    """The result rows of ``metrics`` on a case's evaluation: metrics that read the ledger
    are computed on ``ev`` with their intervals; the others are combined from their
    per-chunk ``partials`` (a mean weighted by images)."""
    rows = []
    for name, metric in metrics:
        for mlabel, m in metric.variants():
            param = join_settings(setting, mlabel)
            if m.from_ledger:
                row = ledger_metric(test, model, name, param, m, ev, seed)
            else:
                row = combined_metric(test, model, name, param, mlabel,
                                      [p for p in partials if p["metric"] == name])
            if row is not None:
                rows.append(row)
    return rows


def ledger_metric(test: str, model: str, name: str, param: str, metric: Any,
                  ev: "Evaluation", seed: int) -> ResultRow | None:
    from ..base import blame
    from ..context import stable_seed
    from ..stats import bootstrap_interval, rate_interval

    with blame(metric, f"computing it for model {model!r}"):
        value = metric.compute(ev)
        values = metric.values(ev) if value is not None else None
    if value is None:
        return None
    row = ResultRow(test, model, name, float(value), param, n=len(ev.y))
    if values is None:
        return row
    import numpy as np

    v = values.detach().double().cpu().numpy()
    v = v[np.isfinite(v)]
    row.n = int(len(v))
    if row.n == 0:
        row.value = math.nan
        return row
    if metric.statistic == "rate":
        interval = rate_interval(int(round(float(v.sum()))), row.n)
    else:
        interval = bootstrap_interval(v, metric.statistic,
                                      seed=stable_seed(seed, test, model, name, param) % 2**32)
    row.low, row.high = interval.low, interval.high
    return row


def combined_metric(test: str, model: str, name: str, param: str, mlabel: str,
                    partials: list[dict[str, Any]]) -> ResultRow | None:
    parts = [p for p in partials if p.get("param", "") == mlabel
             and p["value"] is not None and p["value"] == p["value"]]
    if not parts:
        nan_parts = [p for p in partials if p.get("param", "") == mlabel]
        return (ResultRow(test, model, name, math.nan, param, n=0) if nan_parts else None)
    n = sum(int(p["n"]) for p in parts)
    value = sum(float(p["value"]) * int(p["n"]) for p in parts) / n if n else math.nan
    return ResultRow(test, model, name, value, param, n=n)


def rate_row(test: str, model: str, metric: str, param: str, hits: Any) -> ResultRow:
    """A rate over images (0/1 per image) with its Wilson interval."""
    import numpy as np

    from ..stats import rate_interval

    hits = np.asarray(hits, dtype=bool)
    n = int(len(hits))
    if n == 0:
        return ResultRow(test, model, metric, math.nan, param, n=0)
    k = int(hits.sum())
    interval = rate_interval(k, n)
    return ResultRow(test, model, metric, k / n, param, n=n, low=interval.low,
                     high=interval.high)


def mean_row(test: str, model: str, metric: str, param: str, values: Any,
             seed: int) -> ResultRow:
    """A mean over images with its (seeded) bootstrap interval; NaN values do not count."""
    import numpy as np

    from ..context import stable_seed
    from ..stats import bootstrap_interval

    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return ResultRow(test, model, metric, math.nan, param, n=0)
    interval = bootstrap_interval(v, "mean",
                                  seed=stable_seed(seed, test, model, metric, param) % 2**32)
    return ResultRow(test, model, metric, float(v.mean()), param, n=int(len(v)),
                     low=interval.low, high=interval.high)
