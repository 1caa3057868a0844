"""The batched box-constrained L-BFGS against scipy's L-BFGS-B, one problem at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness_plugins.attacks.lbfgsb import (CONVERGED_F, CONVERGED_GRAD, MAX_ITER, NOT_FINITE,
                                            BoxLBFGS, minimize)

scipy_optimize = pytest.importorskip("scipy.optimize")

TIGHT = dict(gtol=1e-10, ftol=0.0, max_iter=1000)


def random_quadratics(dims: list[int], seed: int = 0):
    """Strictly convex quadratics 0.5 x'Ax + b'x of the given dimensions, padded to the
    largest one with variables fixed at 0 (lo = hi = 0), and boxes that cut off part of
    each unconstrained optimum, so that some coordinates of the solution lie on a bound."""
    gen = torch.Generator().manual_seed(seed)
    B, d = len(dims), max(dims)
    A = torch.zeros(B, d, d, dtype=torch.float64)
    b = torch.zeros(B, d, dtype=torch.float64)
    lo = torch.zeros(B, d, dtype=torch.float64)
    hi = torch.zeros(B, d, dtype=torch.float64)
    for i, n in enumerate(dims):
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
        eig = torch.logspace(-1, 1.5, n, dtype=torch.float64)  # condition number ~300
        A[i, :n, :n] = q @ torch.diag(eig) @ q.T
        b[i, :n] = 3 * torch.randn(n, generator=gen, dtype=torch.float64)
        lo[i, :n] = -torch.rand(n, generator=gen, dtype=torch.float64)
        hi[i, :n] = torch.rand(n, generator=gen, dtype=torch.float64)
        A[i, n:, n:] = torch.eye(d - n, dtype=torch.float64)
    return A, b, lo, hi


def quadratic(A, b):
    def fun(x, idx):
        Ax = torch.bmm(A[idx], x.unsqueeze(2)).squeeze(2)
        return 0.5 * (x * Ax).sum(1) + (b[idx] * x).sum(1), Ax + b[idx]
    return fun


def scipy_solve(fun_np, x0, lo, hi):
    x, f, info = scipy_optimize.fmin_l_bfgs_b(fun_np, x0, bounds=list(zip(lo, hi)),
                                             factr=10.0, pgtol=1e-12, maxiter=10000)
    assert info["warnflag"] == 0, info
    return x, f


def test_quadratics_match_scipy():
    dims = [2, 5, 9, 16, 16, 3, 12]
    A, b, lo, hi = random_quadratics(dims)
    x0 = torch.zeros_like(b)
    res = minimize(quadratic(A, b), x0, lo, hi, **TIGHT)
    assert bool(res.converged.all()), res.status
    n_at_bound = n_inside = 0
    for i, n in enumerate(dims):
        Ai, bi = A[i, :n, :n].numpy(), b[i, :n].numpy()
        xs, fs = scipy_solve(lambda x: (0.5 * x @ Ai @ x + bi @ x, Ai @ x + bi), np.zeros(n),
                             lo[i, :n].numpy(), hi[i, :n].numpy())
        x = res.x[i, :n].numpy()
        assert abs(float(res.f[i]) - fs) <= 1e-9 * (1 + abs(fs)), (i, float(res.f[i]), fs)
        np.testing.assert_allclose(x, xs, atol=1e-6)
        assert np.all(res.x[i, n:].numpy() == 0.0)             # the fixed padding
        assert np.all(x >= lo[i, :n].numpy()) and np.all(x <= hi[i, :n].numpy())
        at_bound = (x == lo[i, :n].numpy()) | (x == hi[i, :n].numpy())
        n_at_bound += int(at_bound.sum())
        n_inside += int((~at_bound).sum())
    # the problems exercise both the active constraints and the free variables
    assert n_at_bound >= 10 and n_inside >= 10


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_autograd_objective_matches_scipy(dtype):
    """A smooth convex non-quadratic objective returning only f (gradient by autograd),
    bounds shared by all rows, starting points outside the box. In float32, f cannot
    resolve x better than about sqrt(eps): the tolerances follow."""
    gen = torch.Generator().manual_seed(1)
    B, d, k = 5, 10, 7
    W = torch.randn(B, k, d, generator=gen, dtype=torch.float64)
    c = torch.randn(B, k, generator=gen, dtype=torch.float64)
    t = 2 * torch.randn(B, d, generator=gen, dtype=torch.float64)
    x0 = 3 * torch.randn(B, d, generator=gen, dtype=torch.float64)
    Wt, ct, tt = W.to(dtype), c.to(dtype), t.to(dtype)

    def fun(x, idx):
        z = torch.bmm(Wt[idx], x.unsqueeze(2)).squeeze(2) + ct[idx]
        return torch.nn.functional.softplus(z).sum(1) + 0.5 * ((x - tt[idx]) ** 2).sum(1)

    exact = dtype == torch.float64
    res = minimize(fun, x0.to(dtype), -0.5, 0.5, gtol=1e-9 if exact else 1e-5, ftol=0.0,
                   max_iter=500)
    assert res.x.dtype == dtype
    for i in range(B):
        Wi, ci, ti = W[i].numpy(), c[i].numpy(), t[i].numpy()

        def f_np(x):
            z = Wi @ x + ci
            return (np.logaddexp(0, z).sum() + 0.5 * ((x - ti) ** 2).sum(),
                    Wi.T @ (1 / (1 + np.exp(-z))) + x - ti)

        xs, fs = scipy_solve(f_np, np.clip(x0[i].numpy(), -0.5, 0.5), [-0.5] * d, [0.5] * d)
        np.testing.assert_allclose(res.x[i].double().numpy(), xs, atol=1e-7 if exact else 3e-3)
        assert abs(float(res.f[i]) - fs) <= (1e-12 if exact else 1e-6) * (1 + abs(fs))
    assert float(res.x.abs().max()) <= 0.5
    if exact:
        assert bool(res.converged.all())


def test_unbounded_rows_match_scipy():
    A, b, _, _ = random_quadratics([6, 6, 6], seed=3)
    res = minimize(quadratic(A, b), torch.zeros_like(b), **TIGHT)
    expected = torch.linalg.solve(A, -b)
    torch.testing.assert_close(res.x, expected, atol=1e-6, rtol=0)


def test_rows_are_independent():
    """A row's result does not depend on the other rows of its batch: alone, in another
    order, or next to other problems, it takes the same steps to the same point."""
    dims = [4, 11, 16, 7, 16, 2]
    A, b, lo, hi = random_quadratics(dims, seed=5)
    x0 = torch.zeros_like(b)
    opts = dict(gtol=1e-8, ftol=1e-12, max_iter=200)
    full = minimize(quadratic(A, b), x0, lo, hi, **opts)
    for i in range(len(dims)):
        one = minimize(quadratic(A[i:i + 1], b[i:i + 1]), x0[i:i + 1], lo[i:i + 1],
                       hi[i:i + 1], **opts)
        torch.testing.assert_close(one.x[0], full.x[i], atol=1e-12, rtol=0)
        assert int(one.iters[0]) == int(full.iters[i])
        assert int(one.nfev[0]) == int(full.nfev[i])
    # a permuted batch mixed with other problems
    A2, b2, lo2, hi2 = random_quadratics([16] * 4, seed=9)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    mixA = torch.cat((A2[:2], A[perm], A2[2:]))
    mixb, mixlo, mixhi = (torch.cat((u[:2], v[perm], u[2:])) for u, v in
                          ((b2, b), (lo2, lo), (hi2, hi)))
    mixed = minimize(quadratic(mixA, mixb), torch.zeros_like(mixb), mixlo, mixhi, **opts)
    torch.testing.assert_close(mixed.x[2:8], full.x[perm], atol=1e-12, rtol=0)
    assert torch.equal(mixed.iters[2:8], full.iters[perm])


def test_iteration_limit_and_counts():
    A, b, lo, hi = random_quadratics([16, 16], seed=2)
    res = minimize(quadratic(A, b), torch.zeros_like(b), lo, hi, gtol=1e-12, ftol=0.0,
                   max_iter=3)
    assert torch.equal(res.status, torch.full((2,), MAX_ITER))
    assert torch.equal(res.iters, torch.full((2,), 3))
    assert bool((res.nfev >= 4).all())            # the start plus one per step at least


def test_step_interface_restart_with_new_objective():
    """Rows restarted on a changed objective reach the new optimum; the others keep theirs."""
    A, b, lo, hi = random_quadratics([8, 8, 8], seed=4)
    scale = torch.ones(3, dtype=torch.float64)

    def fun(x, idx):
        Ax = torch.bmm(A[idx], x.unsqueeze(2)).squeeze(2)
        s = scale[idx, None]
        return (0.5 * (x * Ax).sum(1) + (s * b[idx] * x).sum(1), Ax + s * b[idx],
                idx.double())

    opt = BoxLBFGS(fun, torch.zeros_like(b), lo, hi, m=5, **TIGHT)
    while opt.any_running():
        opt.step()
    first = opt.x.clone()
    assert torch.equal(opt.aux, torch.arange(3, dtype=torch.float64))
    scale[1] = -1.0
    opt.restart(torch.tensor([False, True, False]))
    assert torch.equal(opt.running, torch.tensor([False, True, False]))
    while opt.any_running():
        opt.step()
    ref = minimize(lambda x, idx: fun(x, idx)[:2], torch.zeros_like(b), lo, hi, **TIGHT)
    torch.testing.assert_close(opt.x[1], ref.x[1], atol=1e-7, rtol=0)
    torch.testing.assert_close(opt.x[0], first[0], atol=0, rtol=0)
    assert not torch.allclose(opt.x[1], first[1])
    assert int(opt.status[1]) in (CONVERGED_F, CONVERGED_GRAD)


def test_start_at_the_optimum_and_fixed_box():
    """A row that starts optimal stops after one evaluation; a box of width 0 pins x."""
    A, b, lo, hi = random_quadratics([5, 5], seed=6)
    lo[1] = hi[1] = 0.25
    x0 = torch.zeros_like(b)
    res = minimize(quadratic(A, b), x0, torch.where(torch.arange(2)[:, None] == 0,
                                                    torch.full_like(lo, -10), lo),
                   torch.where(torch.arange(2)[:, None] == 0, torch.full_like(hi, 10), hi),
                   **TIGHT)
    assert torch.equal(res.x[1], torch.full((5,), 0.25, dtype=torch.float64))
    assert int(res.nfev[1]) == 1 and int(res.status[1]) == CONVERGED_GRAD
    again = minimize(quadratic(A[:1], b[:1]), res.x[:1], -10.0, 10.0, gtol=1e-6)
    assert int(again.nfev[0]) == 1 and int(again.iters[0]) == 0


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        BoxLBFGS(lambda x, i: x.sum(1), torch.zeros(3))
    with pytest.raises(ValueError):
        BoxLBFGS(lambda x, i: x.sum(1), torch.zeros(2, 3), 1.0, 0.0)
    with pytest.raises(ValueError):
        minimize(lambda x, i: x.sum(), torch.zeros(2, 3), 0.0, 1.0)


def two_loop(v, pairs, gamma):
    """Reference H v by the textbook two-loop recursion; ``pairs`` oldest first."""
    q = v.clone()
    alphas = []
    for s, y in reversed(pairs):
        a = (s @ q) / (s @ y)
        q = q - a * y
        alphas.append(a)
    r = gamma * q
    for (s, y), a in zip(pairs, reversed(alphas)):
        b = (y @ r) / (s @ y)
        r = r + (a - b) * s
    return r


def test_compact_product_matches_two_loop_recursion():
    """After the circular history has wrapped around (and skipped no pair or some), the
    optimizer's H v equals the two-loop recursion over its pairs in chronological order."""
    A, b, lo, hi = random_quadratics([12, 12, 12], seed=8)
    lo.fill_(-10.0)
    hi.fill_(10.0)
    opt = BoxLBFGS(quadratic(A, b), torch.zeros_like(b), lo, hi, m=4, gtol=0.0, ftol=0.0,
                   max_iter=7)
    for _ in range(7):
        opt.step()
    assert bool(opt._valid.all()) and opt._ptr.tolist() != [0, 0, 0]
    v = torch.randn(3, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ab = torch.bmm(v.unsqueeze(1), opt._SY.transpose(1, 2)).squeeze(1)
    hv = opt._hv(v, ab)
    m = opt.m
    for i in range(3):
        order = [(int(opt._ptr[i]) + k) % m for k in range(m)]
        pairs = [(opt._SY[i, j], opt._SY[i, m + j]) for j in order]
        s, y = pairs[-1]
        ref = two_loop(v[i], pairs, float((s @ y) / (y @ y)))
        torch.testing.assert_close(hv[i], ref, atol=1e-10, rtol=1e-8)


def test_restart_of_a_row_already_dropped_from_the_working_set():
    """Stopped rows leave the working tensors; restarting one brings it back correctly."""
    A, b, lo, hi = random_quadratics([10] * 4, seed=11)
    xstar = torch.linalg.solve(A, -b)
    lo.fill_(-1e3)
    hi.fill_(1e3)
    assert float(xstar.abs().max()) < 1e3
    x0 = torch.zeros_like(b)
    x0[0] = xstar[0]                       # row 0 starts at its optimum and stops at once

    def fun(x, idx):
        f, g = quadratic(A, b)(x, idx)
        return f, g, 10 * idx

    opt = BoxLBFGS(fun, x0, lo, hi, m=5, gtol=1e-9, ftol=0.0, max_iter=200)
    assert bool(opt.step()[0])
    opt.step()
    opt.step()
    assert 0 not in opt._ids.tolist() and opt.any_running()
    opt.restart(torch.tensor([True, False, False, False]), torch.ones_like(b))
    assert 0 in opt._ids.tolist()
    while opt.any_running():
        opt.step()
    torch.testing.assert_close(opt.x, xstar, atol=1e-5, rtol=0)
    assert torch.equal(opt.aux, 10 * torch.arange(4))
    assert int(opt.iters[0]) > 0


# --- scale-free stopping, warm restarts with a known change, states ------------------------

SCALE_FREE = dict(gtol=0.0, ftol=0.0, gtol_rel=1e-6, progress_tol=1e-9, max_iter=500)


def test_scale_free_rules_do_not_see_the_objective_s_scale_or_offset():
    """gtol_rel and progress_tol take the same steps to the same point whether f is scaled
    or shifted; the absolute and value-relative rules do not."""
    A, b, lo, hi = random_quadratics([12, 7, 16], seed=12)
    x0 = torch.zeros_like(b)

    def scaled(k: float, shift: float = 0.0):
        def fun(x, idx):
            f, g = quadratic(A, b)(x, idx)
            return k * f + shift, k * g
        return fun

    ref = minimize(scaled(1.0), x0, lo, hi, **SCALE_FREE)
    assert bool(ref.converged.all())
    for k in (2.0 ** -14, 2.0 ** 14):    # powers of two: every product is scaled exactly
        res = minimize(scaled(k), x0, lo, hi, **SCALE_FREE)
        assert torch.equal(res.iters, ref.iters), k
        assert torch.equal(res.x, ref.x), k
    shifted = minimize(scaled(1.0, 1e3), x0, lo, hi, **SCALE_FREE)
    assert bool(((shifted.iters - ref.iters).abs() <= 2).all())
    torch.testing.assert_close(shifted.x, ref.x, atol=1e-6, rtol=0)
    # the old rules stop at different places for different scales
    loose = dict(gtol=1e-5, ftol=1e-9, max_iter=500)
    small = minimize(scaled(1e-4), x0, lo, hi, **loose)
    big = minimize(scaled(1e4), x0, lo, hi, **loose)
    assert not torch.equal(small.iters, big.iters)


def test_relative_gradient_rule_and_its_reference():
    A, b, lo, hi = random_quadratics([10, 10], seed=13)
    lo.fill_(-1e3)
    hi.fill_(1e3)
    opt = BoxLBFGS(quadratic(A, b), torch.zeros_like(b), lo, hi, m=5, gtol=0.0, ftol=0.0,
                   gtol_rel=1e-4, max_iter=500)
    while opt.any_running():
        opt.step()
    assert bool((opt.status == CONVERGED_GRAD).all())
    torch.testing.assert_close(opt.gref, b.norm(dim=1))        # the gradient at x = 0 is b
    assert bool((opt.g.norm(dim=1) <= 1e-4 * opt.gref).all())
    assert bool((opt.g.norm(dim=1) > 1e-9 * opt.gref).all())   # it did not run on for ever


def test_restart_with_a_known_shift_needs_no_evaluation():
    """Adding c |x|^2 to the objective: restarting with the change of value and gradient
    follows the same steps as restarting with a fresh evaluation, one evaluation sooner."""
    A, b, lo, hi = random_quadratics([9, 9, 9], seed=14)
    c = torch.zeros(3, dtype=torch.float64)

    def fun(x, idx):
        f, g = quadratic(A, b)(x, idx)
        ci = c[idx]
        return f + ci * (x * x).sum(1), g + 2 * ci[:, None] * x

    runs = {}
    for how in ("evaluate", "shift"):
        c.zero_()
        opt = BoxLBFGS(fun, torch.zeros_like(b), lo, hi, m=5, **TIGHT)
        while opt.any_running():
            opt.step()
        before = opt.nfev.clone()
        c.copy_(torch.tensor([0.0, 2.0, 5.0], dtype=torch.float64))
        rows = torch.tensor([False, True, True])
        if how == "evaluate":
            opt.restart(rows)
        else:
            opt.restart(rows, shift=lambda x, idx: (c[idx] * (x * x).sum(1), 2 * c[idx, None] * x))
        while opt.any_running():
            opt.step()
        runs[how] = (opt.x.clone(), opt.iters.clone(), opt.nfev - before)
    (xe, ie, ne), (xs, is_, ns) = runs["evaluate"], runs["shift"]
    torch.testing.assert_close(xs, xe, atol=1e-9, rtol=0)
    assert torch.equal(is_, ie)
    assert torch.equal(ns, ne - torch.tensor([0, 1, 1]))
    ref = minimize(fun, torch.zeros_like(b), lo, hi, **TIGHT)
    torch.testing.assert_close(xs, ref.x, atol=1e-6, rtol=0)


def test_not_finite_start_is_reported_and_other_rows_go_on():
    A, b, lo, hi = random_quadratics([6, 6, 6], seed=15)

    def fun(x, idx):
        f, g = quadratic(A, b)(x, idx)
        bad = idx == 1
        return torch.where(bad, float("nan"), f), g

    res = minimize(fun, torch.zeros_like(b), lo, hi, **TIGHT)
    assert res.status.tolist()[1] == NOT_FINITE and int(res.nfev[1]) == 1
    assert bool(res.converged[[0, 2]].all())


def test_without_keep_stopped_rows_leave_no_copies():
    A, b, lo, hi = random_quadratics([8, 8, 8, 8], seed=16)
    opt = BoxLBFGS(quadratic(A, b), torch.zeros_like(b), lo, hi, keep=False, **TIGHT)
    while opt.any_running():
        opt.step()
    assert opt.x is None and opt.g is None
    assert bool((opt.status == CONVERGED_GRAD).all() | (opt.status == CONVERGED_F).all())
    assert not bool(opt.step().any())                  # a step with nothing to run
    assert opt._ids.numel() == 0                       # ... dropped the stopped rows
    with pytest.raises(ValueError, match="keep=False"):
        opt.restart(torch.tensor([True, False, False, False]))
    opt.restart(torch.tensor([True, False, False, False]), torch.zeros_like(b))
    while opt.any_running():
        opt.step()
    assert int(opt.nfev[0]) > int(opt.nfev[1])


def test_restart_that_bends_the_history_keeps_it_exact():
    """A restart with ``curvature`` (the objective gained (kappa / 2) |x|^2) keeps the
    history with every y raised by kappa s: the Gram blocks stay equal to the products of
    the stored vectors, and the rows reach the new optimum as they do from a cleared
    history. Rows are restarted as they stop, while the optimizer still holds them (as the
    attack does)."""
    A, b, lo, hi = random_quadratics([12, 12, 12], seed=17)
    lo.fill_(-10.0)
    hi.fill_(10.0)
    kappa = torch.zeros(3, dtype=torch.float64)
    dk = torch.tensor([3.0, -0.05, 0.5], dtype=torch.float64)

    def fun(x, idx):
        f, g = quadratic(A, b)(x, idx)
        k = kappa[idx]
        return f + 0.5 * k * (x * x).sum(1), g + k[:, None] * x

    def bend(x, idx, d):
        return 0.5 * d[idx] * (x * x).sum(1), d[idx, None] * x

    for keep_history in (False, True):
        kappa.zero_()
        bent = torch.zeros(3, dtype=torch.bool)
        opt = BoxLBFGS(fun, torch.zeros_like(b), lo, hi, m=10, gtol=1e-5, ftol=0.0,
                       max_iter=500)
        while opt.any_running():
            stopped = opt.step()
            now = stopped & ~bent
            if bool(now.any()):
                d = torch.where(now, dk, 0.0)
                kappa += d
                bent |= now
                opt.restart(now, shift=lambda x, idx, d=d: bend(x, idx, d),
                            curvature=d if keep_history else None)
                if keep_history:
                    held = now.index_select(0, opt._ids)
                    assert bool(opt._valid[held].any(1).all())
                    m = opt.m
                    S, Y = opt._SY[:, :m], opt._SY[:, m:]
                    vv = (opt._valid[:, :, None] & opt._valid[:, None, :]) & held[:, None, None]
                    for mine, ref in ((opt._StY, S @ Y.mT), (opt._YtY, Y @ Y.mT),
                                      (opt._StS, S @ S.mT)):
                        torch.testing.assert_close(mine[vv], ref[vv], atol=1e-9, rtol=1e-9)
        assert bool(bent.all())
        assert bool(((opt.status == CONVERGED_GRAD) | (opt.status == CONVERGED_F)).all())
        ref = minimize(fun, torch.zeros_like(b), lo, hi, gtol=1e-9, ftol=0.0, max_iter=500)
        torch.testing.assert_close(opt.x, ref.x, atol=1e-4, rtol=0)
