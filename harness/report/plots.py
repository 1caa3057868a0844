"""Figures made from a run's ledger and results, for the run folder and the HTML report:

- robustness curves: from a minimum-norm attack's per-image distortions, the robust accuracy
  at every epsilon (L2 and Linf), every model of the test in one plot;
- the distribution of the distortions per model (a box per model);
- a transfer test's matrix as a heatmap.

Each function returns PNG bytes (matplotlib's Agg backend), or None when there is nothing to
draw.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def robust_accuracy(rows: "pd.DataFrame", norm: str, eps: np.ndarray) -> np.ndarray:
    """The share of images still classified right under every perturbation of ``norm``
    (``l2``, ``linf`` or ``distortion``) at most ``eps``: clean-correct, and the attack found
    no misclassified point within ``eps`` (one value per eps)."""
    correct = (rows["clean_pred"] == rows["label"]).to_numpy()
    fooled = ((rows["adv_pred"] != rows["label"]) & rows["success"]).to_numpy()
    size = rows[norm].to_numpy(dtype=np.float64)
    size = np.where(rows["already"].to_numpy(), 0.0, size)
    broken_at = np.where(fooled & np.isfinite(size), size, np.inf)
    broken_at = np.where(correct, broken_at, -np.inf)
    n = max(len(rows), 1)
    return np.array([(broken_at > e).sum() / n for e in eps])


def curve_grid(rows: "pd.DataFrame", norm: str, points: int = 200) -> np.ndarray:
    sizes = rows.loc[rows["success"], norm].to_numpy(dtype=np.float64)
    sizes = sizes[np.isfinite(sizes)]
    top = float(sizes.max()) * 1.05 if len(sizes) and sizes.max() > 0 else 1.0
    return np.linspace(0.0, top, points)


def robustness_curves(test: str, ledger: "pd.DataFrame") -> bytes | None:
    """Robust accuracy against epsilon, L2 and Linf side by side, a line per model (and
    setting, where the test has several)."""
    if ledger.empty or not ledger["success"].any():
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.4))
    groups = list(ledger.groupby(["model", "setting"], sort=False))
    several = len({s for (_, s), _ in groups}) > 1
    for ax, norm, title in zip(axes, ("l2", "linf"), ("L2", "Linf")):
        for (model, setting), rows in groups:
            eps = curve_grid(ledger, norm)
            label = f"{model} ({setting})" if several and setting else model
            ax.plot(eps, robust_accuracy(rows, norm, eps), label=label)
        ax.set_xlabel(f"epsilon ({title} norm of the perturbation)")
        ax.set_ylabel("robust accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{test}: robust accuracy at each epsilon", fontsize=9)
    fig.tight_layout()
    from ..figures import png_bytes

    return png_bytes(fig)


def distortion_boxes(test: str, ledger: "pd.DataFrame") -> bytes | None:
    """The distortion sqrt(sum r^2 / n) of the successful images, a box per model (and
    setting)."""
    ok = ledger[ledger["success"] & ~ledger["already"] & np.isfinite(ledger["distortion"])]
    if ok.empty:
        return None
    plt = _plt()
    groups = list(ok.groupby(["model", "setting"], sort=False))
    fig, ax = plt.subplots(figsize=(max(3.5, 0.9 * len(groups) + 1.5), 3.2))
    labels = [f"{m}\n{s}" if s else m for (m, s), _ in groups]
    ax.boxplot([g["distortion"].to_numpy() for _, g in groups], showfliers=True)
    ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=7)
    ax.set_ylabel("distortion sqrt(sum r^2 / n)")
    ax.set_title(f"{test}: distortion of the successful examples", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    from ..figures import png_bytes

    return png_bytes(fig)


def transfer_heatmap(test: str, rows: list[str], columns: list[str],
                     values: list[list[float | None]], metric: str) -> bytes | None:
    """A transfer matrix (rows: where the examples come from; columns: the models fed)."""
    if not rows or not columns:
        return None
    data = np.array([[math.nan if v is None else float(v) for v in row] for row in values])
    if not np.isfinite(data).any():
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.2 * len(columns) + 3.0, 0.45 * len(rows) + 1.6))
    image = ax.imshow(data, vmin=0.0, vmax=1.0, cmap="magma_r", aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    for i in range(len(rows)):
        for j in range(len(columns)):
            if np.isfinite(data[i, j]):
                ax.text(j, i, f"{100 * data[i, j]:.0f}%", ha="center", va="center",
                        fontsize=7, color="white" if data[i, j] > 0.55 else "black")
    fig.colorbar(image, ax=ax, label=metric)
    ax.set_title(f"{test}: {metric} of each model fed (columns) on the examples of each row",
                 fontsize=8)
    fig.tight_layout()
    from ..figures import png_bytes

    return png_bytes(fig)
