"""Batched, box-constrained L-BFGS in pure torch: many independent problems solved at once.

Each row ``i`` of a batch ``x [B, d]`` is its own problem

    minimize f_i(x_i)   subject to   lo_i <= x_i <= hi_i   (elementwise)

with its own limited-memory history, its own line search, its own iteration count and its
own convergence test. All state lives in batched tensors on the device of ``x0``; nothing is
copied to the CPU inside the loop (the host only reads a few flags and row counts for
control flow: which rows to evaluate, whether any row needs a new direction).

The method is a projected limited-memory quasi-Newton method in the spirit of L-BFGS-B:

* the inverse-Hessian approximation ``H`` is the usual L-BFGS one, built from the last ``m``
  pairs ``(s, y)`` of the row (``H_0 = gamma I``, ``gamma = s.y / y.y`` of the newest pair);
  a pair with ``s.y <= eps * y.y`` (``eps`` the dtype's machine epsilon) is skipped;
  ``H v`` is evaluated with the compact representation of Byrd, Nocedal and Schnabel (1994),
  ``H = gamma I + [S  gamma Y] W [S  gamma Y]^T``, so one product costs a few batched matrix
  products instead of a loop over the history;
* a variable that sits on a bound while its gradient points out of the box is held fixed for
  the step: its gradient component and its direction component are set to zero;
* the step follows the projected path ``P(x + t d)`` (``P`` = clamping onto the box) and ``t``
  is chosen by Armijo backtracking on that path, ``f(P(x + t d)) <= f(x) + c1 g.(P(x + t d) - x)``,
  with safeguarded quadratic interpolation; rows that accepted their step stop searching;
* when the quasi-Newton direction stops being a descent direction after projection the row
  falls back to the projected steepest-descent direction; when its line search fails the
  row's history is cleared and the step retried once from steepest descent.

A row stops when the infinity norm of its projected gradient ``P(x - g) - x`` is at most
``gtol``, when one step lowers ``f`` by no more than ``ftol * max(|f|, |f_new|, 1)``, after
``max_iter`` iterations, or when its line search fails from steepest descent.

The objective ``fun(x, idx)`` is called with the rows ``x [k, d]`` (a leaf tensor that
requires grad) of the problems listed in ``idx [k]`` and returns either the values ``f [k]``
(the gradient then comes from autograd), or ``(f, g)``, or ``(f, g, aux)`` where ``aux [k, ...]``
is anything the caller wants kept for the current point of each row (such as a prediction);
``g`` may be None there too (autograd). Each call covers every running row at once: rows
that are starting are evaluated at their starting point, the others at their line search's
current trial point.

Use :func:`minimize` for a batch of problems run to convergence, or :class:`BoxLBFGS`
directly to interleave other work: :meth:`BoxLBFGS.step` performs one function evaluation
for every running row and reports the rows that just stopped, and :meth:`BoxLBFGS.restart`
starts rows again from a new point (for instance after the caller changed their objective).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Union

import torch

Tensor = torch.Tensor
Objective = Callable[[Tensor, Tensor], Union[Tensor, tuple]]

# phase of a row
DONE, INIT, TRIAL = 0, 1, 2

# status of a row (``BoxLBFGS.status``)
RUNNING = 0
CONVERGED_GRAD = 1      # projected gradient below gtol
CONVERGED_F = 2         # relative decrease of f below ftol
MAX_ITER = 3            # iteration budget used up
LINE_SEARCH_FAILED = 4  # no acceptable step even along steepest descent
STATUS_NAMES = {RUNNING: "running", CONVERGED_GRAD: "converged (projected gradient)",
                CONVERGED_F: "converged (function decrease)", MAX_ITER: "iteration limit",
                LINE_SEARCH_FAILED: "line search failed"}


def _bound(b: float | Tensor, like: Tensor) -> float | Tensor:
    """A bound as a Python number (kept as such: the fast path) or as a ``[B, d]`` view of a
    tensor broadcastable to ``like``."""
    if isinstance(b, Tensor):
        if b.numel() == 1:
            return float(b)
        return b.to(dtype=like.dtype, device=like.device).expand_as(like)
    return float(b)


def _rows(mask: Tensor) -> Tensor:
    return mask.nonzero().squeeze(1)


class BoxLBFGS:
    """The state of ``B`` independent box-constrained L-BFGS problems of dimension ``d``.

    Parameters: ``fun`` the objective (see the module docstring); ``x0 [B, d]`` the starting
    points (projected onto the box); ``lo``/``hi`` the bounds (numbers or tensors broadcastable
    to ``[B, d]``; ``lo == hi`` fixes a variable); ``m`` the number of stored pairs; ``max_iter``
    the iterations per row; ``gtol`` the projected-gradient tolerance (infinity norm);
    ``ftol`` the relative-decrease tolerance; ``max_ls`` the backtracking steps per line
    search; ``c1`` the Armijo constant; ``start`` whether every row starts running (else all
    rows start stopped and :meth:`restart` selects the ones to run).

    Per-row results, ``[B, ...]`` tensors: ``x``, ``f``, ``g``, ``aux`` (the current point,
    its value, gradient and auxiliary output), ``iters`` (accepted steps since the row's last
    start) and ``status``: up to date for every row that has stopped; ``nfev`` (evaluations
    in total): always up to date. Internally only the rows still running are kept: stopped
    rows are dropped from the working tensors once they are a quarter of them.
    """

    def __init__(self, fun: Objective, x0: Tensor, lo: float | Tensor = float("-inf"),
                 hi: float | Tensor = float("inf"), *, m: int = 10, max_iter: int = 100,
                 gtol: float = 1e-5, ftol: float = 1e-9, max_ls: int = 20, c1: float = 1e-4,
                 start: bool = True):
        if x0.dim() != 2:
            raise ValueError(f"x0 must be [B, d], not {tuple(x0.shape)}")
        if m < 1 or max_iter < 0 or max_ls < 1 or not 0 < c1 < 1:
            raise ValueError("need m >= 1, max_iter >= 0, max_ls >= 1 and 0 < c1 < 1")
        self.fun = fun
        self.m, self.max_iter, self.max_ls = int(m), int(max_iter), int(max_ls)
        self.gtol, self.ftol, self.c1 = float(gtol), float(ftol), float(c1)
        x0 = x0.detach()
        B, d = x0.shape
        dev, dt = x0.device, x0.dtype
        self._lo_all = _bound(lo, x0)
        self._hi_all = _bound(hi, x0)
        crossed = self._lo_all > self._hi_all
        if bool(crossed.any()) if isinstance(crossed, Tensor) else crossed:
            raise ValueError("some lower bound is above its upper bound")
        self.curv_eps = float(torch.finfo(dt).eps)
        self._slots = torch.arange(self.m, device=dev)
        self._eye = torch.eye(self.m, dtype=torch.float64, device=dev)
        # per-row results, [B, ...]
        self.x = torch.clamp(x0, self._lo_all, self._hi_all)
        self.f = torch.full((B,), float("nan"), dtype=dt, device=dev)
        self.g = torch.zeros_like(self.x)
        self.aux: Tensor | None = None
        self.iters = torch.zeros(B, dtype=torch.long, device=dev)
        self.nfev = torch.zeros(B, dtype=torch.long, device=dev)
        self.status = torch.zeros(B, dtype=torch.long, device=dev)
        # working state of the rows held (running, or stopped and not yet dropped)
        self._ids = torch.zeros(0, dtype=torch.long, device=dev)
        self._alloc(0)
        if start:
            self.restart(torch.ones(B, dtype=torch.bool, device=dev))

    # ------------------------------------------------------------------ public interface
    @property
    def running(self) -> Tensor:
        """Rows that are still being optimized ([B] bool)."""
        out = torch.zeros_like(self.status, dtype=torch.bool)
        return out.index_fill_(0, self._ids[self._phase != DONE], True)

    def any_running(self) -> bool:
        return bool((self._phase != DONE).any())

    def restart(self, rows: Tensor, x: Tensor | None = None) -> None:
        """Start the rows in mask ``rows`` ([B] bool) again, from ``x [B, d]`` (the rows'
        current point when None): clears their history, iteration count and status. Their
        objective is evaluated afresh on the next :meth:`step`, so it may have changed."""
        if not bool(rows.any()):
            return
        if x is not None:
            x = torch.clamp(x.detach().to(self.x.dtype), self._lo_all, self._hi_all)
        held = rows.index_select(0, self._ids)
        hr = _rows(held)
        if hr.numel():
            if x is not None:
                self._x = self._x.index_copy(0, hr, x.index_select(0, self._ids[hr]))
            self._xt = self._xt.index_copy(0, hr, self._x.index_select(0, hr))
            self._phase = torch.where(held, INIT, self._phase)
            self._valid = self._valid & ~held[:, None]
            self._gamma = torch.where(held, 1.0, self._gamma)
            self._ptr = torch.where(held, 0, self._ptr)
            self._iters = torch.where(held, 0, self._iters)
            self._nls = torch.where(held, 0, self._nls)
            self._status = torch.where(held, RUNNING, self._status)
        new = rows.clone().index_fill_(0, self._ids, False)
        ni = _rows(new)
        if ni.numel():
            start = (self.x if x is None else x).index_select(0, ni)
            old, old_aux = self._state(), self._aux
            self._alloc(ni.numel(), start)
            for name, value in old.items():
                setattr(self, name, torch.cat((value, getattr(self, name))))
            self._ids = torch.cat((self._ids, ni))
            self._bounds()
            if self.aux is not None:
                self._aux = torch.cat((old_aux, self.aux.index_select(0, ni)))

    def stop(self, rows: Tensor) -> None:
        """Stop the rows in mask ``rows`` ([B] bool) where they are (status kept)."""
        held = rows.index_select(0, self._ids) & (self._phase != DONE)
        if bool(held.any()):
            self._phase = torch.where(held, DONE, self._phase)
            self._export(_rows(held))

    def step(self) -> Tensor:
        """One evaluation of ``fun`` on every running row (its starting point or its line
        search's trial point), then the bookkeeping. Returns the rows that stopped in this
        step ([B] bool)."""
        self._compact()
        stopped_all = torch.zeros_like(self.status, dtype=torch.bool)
        phase = self._phase
        n = phase.shape[0]
        run = phase != DONE
        idx = _rows(run)
        if idx.numel() == 0:
            return stopped_all
        everyone = idx.numel() == n
        init = phase == INIT
        trial = phase == TRIAL
        gid = self._ids if everyone else self._ids.index_select(0, idx)
        fe, ge, auxe = self._evaluate(self._xt if everyone else self._xt.index_select(0, idx), gid)
        self.nfev.index_add_(0, gid, torch.ones_like(gid))
        if everyone:
            fn, gn = fe, ge
        else:
            fn = torch.full_like(self._f, float("nan")).index_copy_(0, idx, fe)
            gn = torch.zeros_like(self._g).index_copy_(0, idx, ge)
        if auxe is not None and self._aux is None:
            self._aux = torch.zeros((n,) + auxe.shape[1:], dtype=auxe.dtype, device=auxe.device)
            self.aux = torch.zeros((self.x.shape[0],) + auxe.shape[1:], dtype=auxe.dtype,
                                   device=auxe.device)

        # Armijo test on the projected path for rows with a trial point
        x, g, f = self._x, self._g, self._f
        s = self._xt - x
        gs = (g * s).sum(1)
        finite = torch.isfinite(fn)
        acc = trial & finite & (gs < 0) & (fn <= f + self.c1 * gs)
        rej = trial & ~acc
        upd = torch.zeros_like(acc)
        if bool(acc.any()):
            y = gn - g
            sy = (s * y).sum(1)
            yy = (y * y).sum(1)
            upd = acc & (sy > self.curv_eps * yy) & (yy > 0)

        # rows that moved (accepted step) or started take the new point
        take = acc | init
        tk = _rows(take)
        if tk.numel() == n:
            self._x, self._g = self._xt, gn
        elif tk.numel():
            self._x = x.index_copy(0, tk, self._xt.index_select(0, tk))
            self._g = g.index_copy(0, tk, gn.index_select(0, tk))
        self._f = torch.where(take, fn, f)
        if auxe is not None and tk.numel():
            pos = torch.zeros(n, dtype=torch.long, device=idx.device)
            pos[idx] = torch.arange(idx.numel(), device=idx.device)
            self._aux = self._aux.index_copy(0, tk, auxe.index_select(0, pos[tk]))
        self._iters += acc.long()

        # stopping tests for those rows
        x, g = self._x, self._g
        pg = x - self._project(x - g)
        pgn = pg.abs().amax(1) if pg.shape[1] else torch.zeros_like(f)
        small_g = take & (pgn <= self.gtol)
        small_f = acc & ((f - self._f) <= self.ftol * torch.maximum(
            torch.maximum(f.abs(), self._f.abs()), torch.ones_like(f)))
        # (later fills take precedence)
        status = torch.zeros_like(phase)
        status.masked_fill_(init & ~torch.isfinite(self._f), LINE_SEARCH_FAILED)
        status.masked_fill_(take & (self._iters >= self.max_iter), MAX_ITER)
        status.masked_fill_(small_f, CONVERGED_F)
        status.masked_fill_(small_g, CONVERGED_GRAD)

        # rejected steps: shrink the step, or give up on the history, or stop
        nls = torch.where(rej, self._nls + 1, self._nls)
        exhausted = rej & (nls >= self.max_ls)
        retry = exhausted & self._valid.any(1)
        status.masked_fill_(exhausted & ~retry, LINE_SEARCH_FAILED)
        stopped = status != RUNNING
        if bool(retry.any()):
            self._valid = self._valid & ~retry[:, None]
            self._gamma = torch.where(retry, 1.0, self._gamma)
        # safeguarded quadratic interpolation along the projected path
        curv = fn - f - gs
        ratio = torch.where(finite & (curv > 0), -gs / (2 * curv), torch.full_like(gs, 0.1))
        shrink = rej & ~exhausted
        self._t = torch.where(shrink, self._t * ratio.clamp(0.1, 0.5), self._t)

        # store the new pairs and find new directions; one pass over the history gives the
        # products the pairs and the directions need (taken before the pairs are written)
        fresh = (take & ~stopped) | retry
        any_fresh, any_upd = bool(fresh.any()), bool(upd.any())
        if any_fresh or any_upd:
            free = pg.sign().abs_()
            v = g * free
            vecs = ((s, y) if any_upd else ()) + ((v,) if any_fresh else ())
            if bool(self._valid.any()):
                Q = torch.bmm(torch.stack(vecs, 1), self._SY.transpose(1, 2)).double()
            else:
                Q = torch.zeros(n, len(vecs), 2 * self.m, dtype=torch.float64, device=v.device)
            ab = Q[:, -1]
            if any_upd:
                p = self._ptr
                self._push(upd, s, y, sy, yy, Q[:, 0], Q[:, 1])
                if any_fresh:
                    # slot p now holds the new pair
                    new = torch.stack(((s * v).sum(1), (y * v).sum(1)), 1).double()
                    at = torch.stack((p, p + self.m), 1)
                    ab = torch.where(upd[:, None], ab.scatter(1, at, new), ab)
            if any_fresh:
                self._new_direction(fresh, v, free, ab)
        if any_fresh or bool(shrink.any()):
            self._xt = self._project(torch.addcmul(self._x, self._t[:, None], self._dir))
        self._nls = torch.where(fresh, 0, nls)
        self._status = torch.where(stopped, status, self._status)
        self._phase = torch.where(stopped, DONE, torch.where(fresh, TRIAL, phase))
        if bool(stopped.any()):
            si = _rows(stopped)
            self._export(si)
            stopped_all.index_fill_(0, self._ids.index_select(0, si), True)
        return stopped_all

    # ------------------------------------------------------------------ internals
    _STATE = ("_x", "_g", "_f", "_xt", "_dir", "_t", "_nls", "_SY", "_StY", "_YtY", "_valid",
              "_ptr", "_gamma", "_iters", "_status", "_phase")

    def _state(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in self._STATE}

    def _alloc(self, n: int, x: Tensor | None = None) -> None:
        """Fresh working state for ``n`` rows starting (phase INIT) at ``x``."""
        ref = self.x
        dev, dt, d, m = ref.device, ref.dtype, ref.shape[1], self.m
        self._x = x if x is not None else ref.new_zeros(n, d)
        self._g = torch.zeros_like(self._x)
        self._f = torch.full((n,), float("nan"), dtype=dt, device=dev)
        self._xt = self._x.clone()
        self._dir = torch.zeros_like(self._x)
        self._t = torch.ones(n, dtype=dt, device=dev)
        self._nls = torch.zeros(n, dtype=torch.long, device=dev)
        # history: S and Y stacked as SY [n, 2m, d], a circular buffer per row (ptr[i] is
        # the slot written next), with the Gram blocks S^T Y and Y^T Y kept up to date
        self._SY = torch.zeros(n, 2 * m, d, dtype=dt, device=dev)
        self._StY = torch.zeros(n, m, m, dtype=torch.float64, device=dev)
        self._YtY = torch.zeros_like(self._StY)
        self._valid = torch.zeros(n, m, dtype=torch.bool, device=dev)
        self._ptr = torch.zeros(n, dtype=torch.long, device=dev)
        self._gamma = torch.ones(n, dtype=torch.float64, device=dev)
        self._iters = torch.zeros(n, dtype=torch.long, device=dev)
        self._status = torch.zeros(n, dtype=torch.long, device=dev)
        self._phase = torch.full((n,), INIT, dtype=torch.long, device=dev)
        self._aux = None
        self._bounds()

    def _bounds(self) -> None:
        lo, hi = self._lo_all, self._hi_all
        self.lo = lo.index_select(0, self._ids) if isinstance(lo, Tensor) else lo
        self.hi = hi.index_select(0, self._ids) if isinstance(hi, Tensor) else hi

    def _compact(self) -> None:
        """Drop stopped rows from the working state once they are a quarter of it."""
        done = self._phase == DONE
        n_done = int(done.sum())
        if n_done == 0 or 4 * n_done < self._phase.shape[0]:
            return
        keep = _rows(~done)
        for name in self._STATE:
            setattr(self, name, getattr(self, name).index_select(0, keep))
        if self._aux is not None:
            self._aux = self._aux.index_select(0, keep)
        self._ids = self._ids.index_select(0, keep)
        self._bounds()

    def _export(self, si: Tensor) -> None:
        """Copy the working state of held rows ``si`` to the per-row results."""
        ids = self._ids.index_select(0, si)
        self.x.index_copy_(0, ids, self._x.index_select(0, si))
        self.g.index_copy_(0, ids, self._g.index_select(0, si))
        self.f.index_copy_(0, ids, self._f.index_select(0, si))
        self.iters.index_copy_(0, ids, self._iters.index_select(0, si))
        self.status.index_copy_(0, ids, self._status.index_select(0, si))
        if self._aux is not None:
            self.aux.index_copy_(0, ids, self._aux.index_select(0, si))

    def _project(self, x: Tensor) -> Tensor:
        return torch.clamp(x, self.lo, self.hi)

    def _evaluate(self, x: Tensor, idx: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            out = self.fun(x, idx)
            aux = None
            if isinstance(out, tuple):
                if len(out) == 3:
                    f, g, aux = out
                elif len(out) == 2:
                    f, g = out
                else:
                    raise ValueError("the objective must return f, (f, g) or (f, g, aux)")
                if g is None:
                    g, = torch.autograd.grad(f.sum(), x)
            else:
                f = out
                g, = torch.autograd.grad(f.sum(), x)
        if f.shape != (x.shape[0],) or g.shape != x.shape:
            raise ValueError(f"the objective returned f of shape {tuple(f.shape)} and g of "
                             f"shape {tuple(g.shape)} for x of shape {tuple(x.shape)}")
        f = f.detach().to(self.x.dtype)
        g = g.detach().to(self.x.dtype)
        return f, g, (aux.detach() if aux is not None else None)

    def _push(self, upd: Tensor, s: Tensor, y: Tensor, sy: Tensor, yy: Tensor,
              qs: Tensor, qy: Tensor) -> None:
        """Store the pair (s, y) of the rows in mask ``upd`` in their slot ``ptr``.
        ``qs``/``qy`` [n, 2m]: s and y against every stored vector, taken before the write."""
        m = self.m
        ui = _rows(upd)
        p = self._ptr.index_select(0, ui)
        self._SY.index_put_((ui, p), s.index_select(0, ui))
        self._SY.index_put_((ui, p + m), y.index_select(0, ui))
        sy_u = sy.index_select(0, ui).double()[:, None]
        yy_u = yy.index_select(0, ui).double()[:, None]
        pc = p[:, None]
        # row p of S^T Y: s.y_j; column p: s_j.y; row and column p of Y^T Y: y.y_j
        row_sty = qs.index_select(0, ui)[:, m:].scatter(1, pc, sy_u)
        col_sty = qy.index_select(0, ui)[:, :m].scatter(1, pc, sy_u)
        row_yty = qy.index_select(0, ui)[:, m:].scatter(1, pc, yy_u)
        self._StY[ui, p, :] = row_sty
        self._StY[ui, :, p] = col_sty
        self._YtY[ui, p, :] = row_yty
        self._YtY[ui, :, p] = row_yty
        self._valid[ui, p] = True
        self._gamma = torch.where(upd, sy.double() / yy.double().clamp_min(1e-300), self._gamma)
        self._ptr = torch.where(upd, (self._ptr + 1) % m, self._ptr)

    def _hv(self, v: Tensor, ab: Tensor) -> Tensor:
        """``H v`` for every held row, with the compact representation of the L-BFGS matrix:
        ``H v = gamma v + S p - gamma Y u`` where ``u = R^-1 S^T v`` and
        ``p = R^-T ((D + gamma Y^T Y) u - gamma Y^T v)``, ``R`` the upper triangle of
        ``S^T Y`` and ``D`` its diagonal, pairs in chronological order. ``ab [n, 2m]`` holds
        ``S^T v`` and ``Y^T v`` in slot order."""
        n, m = v.shape[0], self.m
        gamma = self._gamma
        if not bool(self._valid.any()):
            return v * gamma.to(v.dtype)[:, None]
        # slots from oldest to newest, per row
        order = (self._ptr[:, None] + self._slots[None, :]) % m
        vf = self._valid.gather(1, order).double()
        a = ab[:, :m].gather(1, order) * vf
        b = ab[:, m:].gather(1, order) * vf
        rows_o = order[:, :, None].expand(n, m, m)
        cols_o = order[:, None, :].expand(n, m, m)
        vv = vf[:, :, None] * vf[:, None, :]
        sty = self._StY.gather(1, rows_o).gather(2, cols_o) * vv
        yty = self._YtY.gather(1, rows_o).gather(2, cols_o) * vv
        # empty slots get a unit diagonal so R stays invertible; their a, b are zero
        R = torch.triu(sty) + self._eye * (1.0 - vf)[:, None, :]
        D = torch.diagonal(sty, dim1=1, dim2=2)
        u = torch.linalg.solve_triangular(R, a.unsqueeze(2), upper=True)
        w = D.unsqueeze(2) * u + gamma[:, None, None] * (torch.bmm(yty, u) - b.unsqueeze(2))
        p = torch.linalg.solve_triangular(R.transpose(1, 2), w, upper=False)
        coef = torch.cat((p.squeeze(2) * vf, -gamma[:, None] * u.squeeze(2) * vf), 1)
        # back to slot order
        coef = torch.zeros_like(coef).scatter_(1, torch.cat((order, order + m), 1), coef)
        dt = v.dtype
        return torch.baddbmm(v.unsqueeze(1), coef.to(dt).unsqueeze(1), self._SY).squeeze(1) \
            + v * (gamma.to(dt)[:, None] - 1.0)

    def _new_direction(self, rows: Tensor, v: Tensor, free: Tensor, ab: Tensor) -> None:
        """Direction and first step for the held rows in mask ``rows``. ``free`` is 1 on the
        free variables, 0 on the fixed ones (on a bound, gradient pointing out of the box)
        and where the gradient vanishes; ``v`` the gradient on the free variables."""
        x, g = self._x, self._g
        d = self._hv(v, ab).mul_(free).neg_()
        has_hist = self._valid.any(1)
        # first step: 1 with curvature information, else a unit move along -v
        vnorm = v.norm(dim=1)
        t_sd = torch.where(vnorm > 0, 1.0 / vnorm, torch.ones_like(vnorm)).clamp(max=1.0)
        t = torch.where(has_hist, torch.ones_like(t_sd), t_sd)
        # still a descent direction once projected? else projected steepest descent
        gs = (g * (self._project(torch.addcmul(x, t[:, None], d)) - x)).sum(1)
        bad = rows & ~(gs < 0)
        if bool(bad.any()):
            bi = _rows(bad)
            d = d.index_copy(0, bi, -v.index_select(0, bi))
            t = torch.where(bad, t_sd, t)
        ri = _rows(rows)
        self._dir = d if ri.numel() == x.shape[0] else \
            self._dir.index_copy(0, ri, d.index_select(0, ri))
        self._t = torch.where(rows, t, self._t)


@dataclass
class MinimizeResult:
    """What :func:`minimize` returns, one entry per row: the solution ``x [B, d]``, its
    value ``f [B]`` and gradient ``g [B, d]``, ``aux`` (when the objective returns one),
    the iterations ``iters``, function evaluations ``nfev`` and ``status`` (see
    ``STATUS_NAMES``)."""

    x: Tensor
    f: Tensor
    g: Tensor
    iters: Tensor
    nfev: Tensor
    status: Tensor
    aux: Any = None

    @property
    def converged(self) -> Tensor:
        return (self.status == CONVERGED_GRAD) | (self.status == CONVERGED_F)


def minimize(fun: Objective, x0: Tensor, lo: float | Tensor = float("-inf"),
             hi: float | Tensor = float("inf"), **options: Any) -> MinimizeResult:
    """Minimize ``B`` independent problems ``fun`` from ``x0 [B, d]`` over the box
    ``[lo, hi]``; ``options`` are those of :class:`BoxLBFGS` (``m``, ``max_iter``, ``gtol``,
    ``ftol``, ``max_ls``, ``c1``)."""
    opt = BoxLBFGS(fun, x0, lo, hi, **options)
    while opt.any_running():
        opt.step()
    return MinimizeResult(opt.x, opt.f, opt.g, opt.iters, opt.nfev, opt.status, opt.aux)
