"""``lbfgs`` against the exact minimum on Table 1's softmax regressions.

For a linear classifier the smallest perturbation taking image x to target t is a convex QP:
minimize |r|^2 subject to x + r in [0, 1] and (W (x + r) + b)_t - (W (x + r) + b)_j >= m for
every j != t (m: the same small safety margin the attack demands). Its dual has one
multiplier per other class, and the primal minimizer for multipliers lam is
clamp(A^T lam / 2) to the box, so scipy's L-BFGS-B on 9 variables solves it exactly. This
prints Table 1's setting (the first 1000 MNIST training images, targets y + 1 mod 10) for
FC10(1e-4), FC10(1e-2) and FC10(1): the exact mean minimum distortion beside ``lbfgs``'s.

    python benchmarks/lbfgs_exact.py --data-dir ../shared/data [--n 1000]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from scipy import optimize
from tabulate import tabulate

import harness
from harness.plugins import default_registry
from harness_plugins.attacks.lbfgs import SAFE_MARGIN

DECAYS = {"fc10-1e-4": 1e-4, "fc10-1e-2": 1e-2, "fc10-1": 1.0}


def exact_l2(W: np.ndarray, b: np.ndarray, x: np.ndarray, t: int) -> float:
    z = W @ x + b
    others = [j for j in range(len(b)) if j != t]
    A = W[t] - W[others]
    margin = SAFE_MARGIN * (1 + np.abs(z).max())
    beta = margin - (A @ x + b[t] - b[others])
    if beta.max() <= 0:
        return 0.0
    lo, hi = -x, 1 - x

    def neg_dual(lam):
        u = A.T @ lam
        r = np.clip(u / 2, lo, hi)
        return -(r @ r - u @ r + lam @ beta), -(beta - A @ r)

    sol = optimize.minimize(neg_dual, np.full(len(others), 0.1), jac=True, method="L-BFGS-B",
                            bounds=[(0, None)] * len(others),
                            options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-12})
    r = np.clip(A.T @ sol.x / 2, lo, hi)
    return float(np.sqrt(r @ r))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    reg = default_registry()
    ctx = harness.Context(data_dir=args.data_dir, registry=reg)
    data = ctx.dataset("mnist", split="train", limit=args.n)
    rows = []
    for name, decay in DECAYS.items():
        model = reg.build("model", "paper-mnist", {"hidden": [], "weight_decay": decay}).load(ctx)
        linear = [m for m in model.module.modules() if isinstance(m, torch.nn.Linear)]
        W = linear[0].weight.detach().double().numpy()
        b = linear[0].bias.detach().double().numpy()
        res = reg.build("attack", "lbfgs", {"target": "next"})(model, data.x, data.y, ctx)
        x = data.x.flatten(1).double().numpy()
        d = x.shape[1]
        exact = np.array([exact_l2(W, b, x[i], int(res.target[i])) for i in range(len(x))])
        exact /= np.sqrt(d)
        ours = res.distortion.double().numpy()
        rows.append([model.name + f"({decay:g})", f"{res.success.float().mean():.0%}",
                     f"{ours.mean():.5f}", f"{exact.mean():.5f}",
                     f"{ours.mean() / exact.mean() - 1:+.2%}",
                     f"{(ours >= exact * (1 - 1e-3)).mean():.0%}"])
    print(f"first {args.n} MNIST training images, targets y + 1 mod 10")
    print(tabulate(rows, headers=["model", "lbfgs success", "lbfgs mean distortion",
                                  "exact minimum", "lbfgs above it", "images not below it"]))


if __name__ == "__main__":
    main()
