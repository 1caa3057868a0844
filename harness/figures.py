"""Figures written into run folders (PNG bytes, made with matplotlib's Agg backend)."""

from __future__ import annotations

import io
from typing import Sequence

import torch


def _image(t: torch.Tensor):
    """[C, H, W] in [0, 1] -> what imshow takes (gray or RGB)."""
    arr = t.detach().float().cpu().clamp(0, 1)
    if arr.shape[0] == 1:
        return arr[0].numpy(), "gray"
    return arr[:3].permute(1, 2, 0).numpy(), None


def png_bytes(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def examples_grid(x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, clean_pred: torch.Tensor,
                  adv_pred: torch.Tensor, classes: Sequence[str] | None = None,
                  title: str = "") -> bytes:
    """The paper's Fig. 5 layout: one row per image - the original, the perturbation
    (magnified to fill the grey range, the factor printed), the adversarial image - with the
    model's predictions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(x)
    fig, axes = plt.subplots(n, 3, figsize=(4.8, 1.7 * n + 0.4), squeeze=False)
    name = (lambda k: classes[k]) if classes else str
    for i in range(n):
        r = (x_adv[i] - x[i]).detach().float().cpu()
        peak = float(r.abs().max())
        scale = 0.5 / peak if peak > 0 else 1.0
        shown_r = (0.5 + r * scale).clamp(0, 1)
        panels = [
            (x[i], f"original: {name(int(clean_pred[i]))} (true {name(int(y[i]))})"),
            (shown_r, f"perturbation x{2 * scale:.0f}" if peak > 0 else "no perturbation"),
            (x_adv[i], f"adversarial: {name(int(adv_pred[i]))}"),
        ]
        for ax, (img, label) in zip(axes[i], panels):
            arr, cmap = _image(img)
            ax.imshow(arr, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(label, fontsize=7)
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return png_bytes(fig)
