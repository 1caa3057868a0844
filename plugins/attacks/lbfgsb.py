"""Batched, box-constrained L-BFGS in pure torch: many independent problems solved at once.

Each row ``i`` of a batch ``x [B, d]`` is its own problem

    minimize f_i(x_i)   subject to   lo_i <= x_i <= hi_i   (elementwise)

with its own limited-memory history, its own line search, its own iteration count and its
own convergence test. All state lives in batched tensors on the device of ``x0``; nothing is
copied to the CPU inside the loop (the host only reads a few flags and row counts for
control flow: which rows to evaluate, whether any row accepted its step).

The method is a projected limited-memory quasi-Newton method in the spirit of L-BFGS-B:

* the inverse-Hessian approximation ``H`` is the usual L-BFGS one, built from the row's
  last ``m`` pairs ``(s, y)`` (``H_0 = gamma I``, ``gamma = s.y / y.y`` of the newest pair);
  a pair with ``s.y <= eps * y.y`` (``eps`` the dtype's machine epsilon) is skipped. ``H v``
  is evaluated with the compact representation of Byrd, Nocedal and Schnabel (1994),
  ``H = gamma I + [S  gamma Y] W [S  gamma Y]^T``: one batched product of the new step,
  gradient change and gradient with the history gives everything a step needs, and one more
  gives ``H v``, instead of a loop over the history;
* a variable that sits on a bound while its gradient points out of the box is held fixed for
  the step: its gradient component and its direction component are set to zero;
* the step follows the projected path ``P(x + t d)`` (``P`` = clamping onto the box) and ``t``
  is chosen by Armijo backtracking on that path, ``f(P(x + t d)) <= f(x) + c1 g.(P(x + t d) - x)``,
  with safeguarded quadratic interpolation; rows that accepted their step stop searching;
* when the quasi-Newton direction stops being a descent direction after projection the row
  falls back to the projected steepest-descent direction; when its line search fails the
  row's history is cleared and the step retried once from steepest descent.

Stopping rules (a row stops at the first that holds; each can be switched off with 0, and
a step that does not lower ``f`` at all always stops the row):

* ``gtol``: the infinity norm of the projected gradient ``P(x - g) - x`` is at most ``gtol``
  (an absolute rule: it depends on the scale of ``f``);
* ``gtol_rel``: the L2 norm of the gradient on the free variables is at most ``gtol_rel``
  times its norm at the row's first evaluation (scale-free; the reference is kept when the
  row is restarted, and is readable as :attr:`BoxLBFGS.gref`);
* ``ftol``: one step lowers ``f`` by no more than ``ftol * max(|f|, |f_new|, 1)`` (relative to
  the value of ``f``: it depends on the offset of ``f``);
* ``progress_tol``: one step lowers ``f`` by no more than ``progress_tol`` times the decrease
  since the row's (re)start (scale- and offset-free);
* after ``max_iter`` accepted steps, when its line search fails from steepest descent, or
  when ``f`` or its gradient is not finite at the row's starting point (trial points where
  ``f`` is not finite are rejected by the line search).

The objective ``fun(x, idx)`` is called with the rows ``x [k, d]`` (a leaf tensor that
requires grad) of the problems listed in ``idx [k]`` and returns either the values ``f [k]``
(the gradient then comes from autograd), or ``(f, g)``, or ``(f, g, aux)`` where ``aux [k, ...]``
is anything the caller wants kept for the current point of each row (such as a prediction);
``g`` may be None there too (autograd); the optimizer keeps the returned gradient and may
write into it later. Each call covers every row that needs an evaluation
at once: rows that are starting are evaluated at their starting point, the others at their
line search's current trial point.

Use :func:`minimize` for a batch of problems run to convergence, or :class:`BoxLBFGS`
directly to interleave other work: :meth:`BoxLBFGS.step` performs one function evaluation
for every running row and reports the rows that just stopped, and :meth:`BoxLBFGS.restart`
starts rows again, from a new point, or from where they stopped after the caller changed
their objective by a known amount (``shift``: no evaluation is spent on the restart; and
when the change is ``(kappa / 2) |x|^2`` plus a linear term, ``curvature`` keeps the history,
made exact for the new objective).

Memory: per row ``2 m + 9`` vectors of size ``d`` while it is held (the history, the point,
its gradient, the trial point, the direction, two work vectors and the step, gradient
change and free gradient), plus two (``x`` and ``g`` of stopped rows) when ``keep`` is
true, plus the objective's own (the new gradient, while the step runs). Buffers are reused
from step to step (CPU allocations of this size would each cost page faults).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Union

import torch

Tensor = torch.Tensor
Objective = Callable[[Tensor, Tensor], Union[Tensor, tuple]]
#: ``shift(x, idx) -> (df, dg)``: how the objective's value and gradient changed at ``x``
Shift = Callable[[Tensor, Tensor], tuple]

# phase of a held row: stopped; to be evaluated at its start; to be evaluated at its trial
# point; started with a known value and gradient (takes its first step without evaluation)
DONE, INIT, TRIAL, READY = 0, 1, 2, 3

# status of a row (``BoxLBFGS.status``)
RUNNING = 0
CONVERGED_GRAD = 1      # projected gradient below gtol / gtol_rel
CONVERGED_F = 2         # decrease of f below ftol / progress_tol
MAX_ITER = 3            # iteration budget used up
LINE_SEARCH_FAILED = 4  # no acceptable step even along steepest descent
NOT_FINITE = 5          # f or its gradient not finite (at the start, or at a point taken)
STATUS_NAMES = {RUNNING: "running", CONVERGED_GRAD: "converged (projected gradient)",
                CONVERGED_F: "converged (function decrease)", MAX_ITER: "iteration limit",
                LINE_SEARCH_FAILED: "line search failed",
                NOT_FINITE: "objective or gradient not finite"}


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


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return torch.linalg.vecdot(a, b)


def _front(t: Tensor, keep: Tensor) -> Tensor:
    """``t[keep]`` (``keep`` ascending) moved to the front of ``t`` in place, a few rows (at
    most about 2^22 values) at a time, as the view ``t[:len(keep)]``: no second copy of a
    large state tensor. Safe since ``keep[i] >= i``: a row is read before any later chunk
    writes over it."""
    k = keep.numel()
    chunk = max(1, 2 ** 22 // max(1, t[0].numel())) if len(t) else 1
    for i in range(0, k, chunk):
        j = min(k, i + chunk)
        t[i:j] = t.index_select(0, keep[i:j])
    return t[:k]


class BoxLBFGS:
    """The state of ``B`` independent box-constrained L-BFGS problems of dimension ``d``.

    Parameters: ``fun`` the objective (see the module docstring); ``x0 [B, d]`` the starting
    points (projected onto the box); ``lo``/``hi`` the bounds (numbers or tensors broadcastable
    to ``[B, d]``; ``lo == hi`` fixes a variable); ``m`` the number of stored pairs; ``max_iter``
    the iterations per row; ``gtol``, ``gtol_rel``, ``ftol``, ``progress_tol`` the stopping
    rules of the module docstring; ``max_ls`` the backtracking steps per line search; ``c1``
    the Armijo constant; ``start`` whether every row starts running (else all rows start
    stopped and :meth:`restart` selects the ones to run); ``keep`` whether the point and
    gradient of stopped rows are kept in ``x`` and ``g`` (off saves two vectors per row;
    a stopped row can then be restarted only while it is still held, or from a given ``x``).

    Per-row results, ``[B, ...]`` tensors: ``x``, ``f``, ``g``, ``aux`` (the current point,
    its value, gradient and auxiliary output), ``iters`` (accepted steps since the row's last
    start) and ``status``: up to date for every row that has stopped (``x`` and ``g`` only
    with ``keep``); ``nfev`` (evaluations in total) and :attr:`gref`: always up to date.
    Internally only the rows still running are kept: stopped rows are dropped from the
    working tensors once they are an eighth of them.
    """

    def __init__(self, fun: Objective, x0: Tensor, lo: float | Tensor = float("-inf"),
                 hi: float | Tensor = float("inf"), *, m: int = 10, max_iter: int = 100,
                 gtol: float = 1e-5, ftol: float = 1e-9, gtol_rel: float = 0.0,
                 progress_tol: float = 0.0, max_ls: int = 20, c1: float = 1e-4,
                 start: bool = True, keep: bool = True):
        if x0.dim() != 2:
            raise ValueError(f"x0 must be [B, d], not {tuple(x0.shape)}")
        if m < 1 or max_iter < 0 or max_ls < 1 or not 0 < c1 < 1:
            raise ValueError("need m >= 1, max_iter >= 0, max_ls >= 1 and 0 < c1 < 1")
        if min(gtol, ftol, gtol_rel, progress_tol) < 0:
            raise ValueError("tolerances must be >= 0")
        self.fun = fun
        self.m, self.max_iter, self.max_ls = int(m), int(max_iter), int(max_ls)
        self.gtol, self.ftol, self.c1 = float(gtol), float(ftol), float(c1)
        self.gtol_rel, self.progress_tol = float(gtol_rel), float(progress_tol)
        self.keep = bool(keep)
        x0 = x0.detach()
        B, d = x0.shape
        dev, dt = x0.device, x0.dtype
        self._lo_all = _bound(lo, x0)
        self._hi_all = _bound(hi, x0)
        crossed = self._lo_all > self._hi_all
        if bool(crossed.any()) if isinstance(crossed, Tensor) else crossed:
            raise ValueError("some lower bound is above its upper bound")
        self.curv_eps = float(torch.finfo(dt).eps)
        self._eye = torch.eye(self.m, dtype=torch.float64, device=dev)
        self._slots = torch.arange(self.m, device=dev)
        # per-row results, [B, ...]
        self._x_start = x0  # clamped when rows start
        self.x = torch.clamp(x0, self._lo_all, self._hi_all) if self.keep else None
        self.f = torch.full((B,), float("nan"), dtype=dt, device=dev)
        self.g = torch.zeros_like(x0) if self.keep else None
        self.aux: Tensor | None = None
        self.iters = torch.zeros(B, dtype=torch.long, device=dev)
        self.nfev = torch.zeros(B, dtype=torch.long, device=dev)
        self.status = torch.zeros(B, dtype=torch.long, device=dev)
        self._gref_out = torch.full((B,), float("nan"), dtype=dt, device=dev)
        self._B, self._d, self._dev, self._dt = B, d, dev, dt
        # working state of the rows held (running, or stopped and not yet dropped)
        self._ids = torch.zeros(0, dtype=torch.long, device=dev)
        self._alloc(0)
        if start:
            self.restart(torch.ones(B, dtype=torch.bool, device=dev))

    # ------------------------------------------------------------------ public interface
    @property
    def running(self) -> Tensor:
        """Rows that are still being optimized ([B] bool)."""
        out = torch.zeros(self._B, dtype=torch.bool, device=self._dev)
        return out.index_fill_(0, self._ids[self._phase != DONE], True)

    def any_running(self) -> bool:
        return bool((self._phase != DONE).any())

    def restart(self, rows: Tensor, x: Tensor | None = None, *,
                shift: Shift | None = None, curvature: Tensor | None = None) -> None:
        """Start the rows in mask ``rows`` ([B] bool) again: resets their iteration count
        and status and clears their history.

        From ``x [B, d]`` when given (evaluated afresh on the next :meth:`step`); else from
        the rows' current point, evaluated afresh, or, with ``shift``, not evaluated at all:
        ``shift(x, idx) -> (df [k], dg [k, d])`` says by how much the objective's value and
        gradient at the rows' current points ``x [k, d]`` (rows ``idx [k]``) changed, and the
        rows take their first step on the next :meth:`step`. When moreover the objective's
        Hessian changed by ``curvature [B]`` times the identity (``f + (kappa / 2) |x|^2``
        plus any linear term), the history is kept, its pairs' ``y`` raised by
        ``kappa s`` (exact for such a change); pairs that lose their positive curvature are
        dropped."""
        if not bool(rows.any()):
            return
        if x is not None and shift is not None:
            raise ValueError("give x or shift, not both")
        if curvature is not None and shift is None:
            raise ValueError("curvature needs shift")
        if x is not None:
            x = torch.clamp(x.detach().to(self._dt), self._lo_all, self._hi_all)
        new = rows.clone().index_fill_(0, self._ids, False)
        ni = _rows(new)
        if ni.numel():  # rows not held: bring them back (their history is gone)
            evaluated = not bool((self.nfev.index_select(0, ni) == 0).all())
            if x is not None:
                start = x.index_select(0, ni)
            elif not evaluated:
                start = torch.clamp(self._x_start.index_select(0, ni), self._lo_rows(ni),
                                    self._hi_rows(ni))
            elif self.keep:
                start = self.x.index_select(0, ni)
            else:
                raise ValueError("rows already dropped cannot be restarted where they "
                                 "stopped when keep=False; give x")
            if shift is not None and not (self.keep and evaluated):
                raise ValueError("shift needs the rows' value and gradient: restart rows "
                                 "that were evaluated, with keep=True or while held")
            old, old_aux = self._state(), self._aux
            self._alloc(ni.numel(), start)
            self._gref = self._gref_out.index_select(0, ni)
            if shift is not None:
                self._f = self.f.index_select(0, ni)
                self._g = self.g.index_select(0, ni)
            if self._ids.numel():           # (nothing held: the new state is the state)
                for name, value in old.items():
                    setattr(self, name, torch.cat((value, getattr(self, name))))
            self._ids = torch.cat((self._ids, ni))
            self._bounds()
            if self.aux is not None:
                new_aux = self.aux.index_select(0, ni)
                self._aux = new_aux if old_aux is None else torch.cat((old_aux, new_aux))
        held = rows.index_select(0, self._ids)
        hr = _rows(held)
        if x is not None:
            self._x.index_copy_(0, hr, x.index_select(0, self._ids.index_select(0, hr)))
        if curvature is None:
            self._valid = self._valid & ~held[:, None]
            self._ptr = torch.where(held, 0, self._ptr)
            self._gamma = torch.where(held, 1.0, self._gamma)
        else:
            self._bend(hr, curvature.index_select(0, self._ids.index_select(0, hr)))
        self._iters = torch.where(held, 0, self._iters)
        self._nls = torch.where(held, 0, self._nls)
        self._status = torch.where(held, RUNNING, self._status)
        if shift is None:
            self._xt.index_copy_(0, hr, self._x.index_select(0, hr))
            self._phase = torch.where(held, INIT, self._phase)
            return
        # known value and gradient: the rows take their first step on the next step()
        df, dg = shift(self._x.index_select(0, hr), self._ids.index_select(0, hr))
        f = self._f.index_select(0, hr) + df.detach().to(self._dt)
        self._f = self._f.index_copy(0, hr, f)
        self._f0 = self._f0.index_copy(0, hr, f)
        self._g.index_add_(0, hr, dg.detach().to(self._dt))
        self._phase = torch.where(held, READY, self._phase)

    def _bend(self, hr: Tensor, kappa: Tensor) -> None:
        """The held rows ``hr``'s Hessian changed by ``kappa [k]`` times the identity: every
        stored ``y`` gains ``kappa s``; the Gram blocks follow from S^T S."""
        m = self.m
        kd = kappa.to(self._SY.dtype)[:, None]
        for j in range(m):                  # one slot at a time: little memory on top
            self._SY[:, m + j].index_add_(0, hr, self._SY[:, j].index_select(0, hr) * kd)
        k = kappa.double()[:, None, None]
        sts = self._StS.index_select(0, hr)
        sty = self._StY.index_select(0, hr)
        yty = self._YtY.index_select(0, hr)
        yty = yty + k * (sty + sty.transpose(1, 2)) + k * k * sts
        sty = sty + k * sts
        self._StY.index_copy_(0, hr, sty)
        self._YtY.index_copy_(0, hr, yty)
        sy = torch.diagonal(sty, dim1=1, dim2=2)
        yy = torch.diagonal(yty, dim1=1, dim2=2)
        valid = self._valid.index_select(0, hr) & (sy > self.curv_eps * yy) & (yy > 0)
        self._valid.index_copy_(0, hr, valid)
        newest = ((self._ptr.index_select(0, hr) - 1) % m)[:, None]
        ok = valid.gather(1, newest).squeeze(1)
        gamma = torch.where(ok, sy.gather(1, newest).squeeze(1)
                            / yy.gather(1, newest).squeeze(1).clamp_min(1e-300), 1.0)
        self._gamma.index_copy_(0, hr, gamma)

    @property
    def gref(self) -> Tensor:
        """Per row, the L2 norm of the gradient on the free variables at the row's first
        evaluation (NaN before it): the reference of ``gtol_rel``."""
        return self._gref_out.index_copy(0, self._ids, self._gref)

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
        stopped_all = torch.zeros(self._B, dtype=torch.bool, device=self._dev)
        phase = self._phase
        n = phase.shape[0]
        init = phase == INIT
        trial = phase == TRIAL
        ready = phase == READY
        idx = _rows(init | trial)
        k = idx.numel()
        if k == 0 and not bool(ready.any()):
            return stopped_all
        everyone = k == n
        x, g, f = self._x, self._g, self._f
        auxe = None
        if everyone:
            fn, gn, auxe = self._evaluate(self._xt, self._ids)
            self.nfev.index_add_(0, self._ids, torch.ones_like(self._ids))
        elif k:
            gid = self._ids.index_select(0, idx)
            fe, ge, auxe = self._evaluate(self._xt.index_select(0, idx), gid)
            self.nfev.index_add_(0, gid, torch.ones_like(gid))
            fn = f.index_copy(0, idx, fe)
            gn = g.index_copy(0, idx, ge)
        else:  # only rows with a known value and gradient
            fn, gn = f, g
        if auxe is not None and self._aux is None:
            self._aux = torch.zeros((n,) + auxe.shape[1:], dtype=auxe.dtype, device=auxe.device)
            self.aux = torch.zeros((self._B,) + auxe.shape[1:], dtype=auxe.dtype,
                                   device=auxe.device)

        # Armijo test on the projected path for rows with a trial point (s = xt - x and
        # gs = g.s were stored with the trial point)
        W = self._W
        s, y = W[:, 0], W[:, 1]
        finite = torch.isfinite(fn)
        acc = trial & finite & (self._gs < 0) & (fn <= f + self.c1 * self._gs)
        any_acc = bool(acc.any())
        if any_acc:
            torch.sub(gn, g, out=y)
            sy = _dot(s, y)
            yy = _dot(y, y)
            upd = acc & (sy > self.curv_eps * yy) & (yy > 0)
        else:
            upd = acc
        rej = trial & ~acc

        # rows that moved (accepted step) or started take the new point (the buffers of x
        # and xt swap roles when every row does); rows started with a known value have it
        take = acc | init
        n_take = int(take.sum())
        if n_take == n:
            self._x, self._xt, self._g = self._xt, self._x, gn
        elif n_take:
            tm = take[:, None]
            torch.where(tm, self._xt, x, out=x)
            if gn is not g:
                torch.where(tm, gn, g, out=g)
        take = take | ready
        f_old = f
        self._f = torch.where(take, fn, f)
        self._f0 = torch.where(init, fn, self._f0)
        if auxe is not None and n_take and k:
            if everyone:
                self._aux = torch.where((acc | init).view((-1,) + (1,) * (auxe.dim() - 1)),
                                        auxe, self._aux)
            else:
                tk = _rows(acc | init)
                pos = torch.zeros(n, dtype=torch.long, device=idx.device)
                pos[idx] = torch.arange(k, device=idx.device)
                self._aux = self._aux.index_copy(0, tk, auxe.index_select(0, pos[tk]))
        self._iters += acc.long()

        # free variables, gradient on them, stopping tests for the rows that took a point
        x, g = self._x, self._g
        proj = torch.sub(x, g, out=self._buf).clamp_(self.lo, self.hi)     # P(x - g)
        pg = (x - proj).abs().amax(1) if self.gtol > 0 and x.shape[1] else None
        free = proj.ne_(x)                                     # 1.0 where P(x - g) != x
        self._buf, self._free = self._free, free
        v = torch.mul(g, free, out=W[:, 2])
        vn = torch.linalg.vector_norm(v, dim=1)
        first = init & torch.isnan(self._gref)
        self._gref = torch.where(first, vn, self._gref)
        status = torch.zeros_like(phase)
        status.masked_fill_(take & (self._iters >= self.max_iter), MAX_ITER)
        # (with both tolerances 0, a step that does not lower f at all still stops the row)
        status.masked_fill_(acc & ((f_old - self._f) <= self.ftol * torch.maximum(
            torch.maximum(f_old.abs(), self._f.abs()), torch.ones_like(f_old))), CONVERGED_F)
        if self.progress_tol > 0:
            status.masked_fill_(acc & ((f_old - self._f) <= self.progress_tol
                                       * (self._f0 - self._f)), CONVERGED_F)
        small_g = torch.zeros_like(take)
        if self.gtol > 0:
            small_g = pg <= self.gtol if pg is not None else torch.ones_like(take)
        if self.gtol_rel > 0:
            small_g = small_g | (vn <= self.gtol_rel * self._gref)
        status.masked_fill_(take & small_g, CONVERGED_GRAD)
        status.masked_fill_(take & ~(torch.isfinite(self._f) & torch.isfinite(vn)), NOT_FINITE)

        # rejected steps: shrink the step, or give up on the history, or stop
        nls = torch.where(rej, self._nls + 1, self._nls)
        exhausted = rej & (nls >= self.max_ls)
        retry = exhausted & self._valid.any(1)
        status.masked_fill_(exhausted & ~retry, LINE_SEARCH_FAILED)
        stopped = status != RUNNING
        # safeguarded quadratic interpolation along the projected path
        curv = fn - f - self._gs
        ratio = torch.where(finite & (curv > 0), -self._gs / (2 * curv),
                            torch.full_like(curv, 0.1))
        shrink = rej & ~exhausted
        t = torch.where(shrink, self._t * ratio.clamp(0.1, 0.5), self._t)

        # store the new pairs, each row in its slot ptr, then find new directions: one
        # product of s, y and v with the history gives what both need
        fresh = (take & ~stopped) | retry
        any_fresh = bool(fresh.any())
        any_upd = any_acc and bool(upd.any())
        p = self._ptr
        if any_upd:
            self._push(upd, s, y)
        if bool(retry.any()):
            self._valid = self._valid & ~retry[:, None]
        if any_fresh or any_upd:
            Q = torch.bmm(W, self._SY.transpose(1, 2)).double() \
                if any_upd or bool(self._valid.any()) else None
            if any_upd:
                self._update_gram(upd, p, Q, sy, yy)
            if any_fresh:
                d, t_new = self._direction(v, vn, free, Q[:, 2] if Q is not None else None)
                if bool(fresh.all()):
                    self._dir, self._buf, t = d, self._dir, t_new
                else:
                    torch.where(fresh[:, None], d, self._dir, out=self._dir)
                    t = torch.where(fresh, t_new, t)
        self._t = t
        moving = fresh | shrink
        if bool(moving.any()):
            self._set_trial(fresh, v)
        self._nls = torch.where(fresh, 0, nls)
        self._status = torch.where(stopped, status, self._status)
        self._phase = torch.where(stopped, DONE, torch.where(fresh, TRIAL, phase))
        if bool(stopped.any()):
            si = _rows(stopped)
            self._export(si)
            stopped_all.index_fill_(0, self._ids.index_select(0, si), True)
        return stopped_all

    # ------------------------------------------------------------------ internals
    _STATE = ("_x", "_g", "_f", "_f0", "_xt", "_dir", "_buf", "_free", "_t", "_gs", "_nls",
              "_W", "_SY",
              "_StY", "_YtY", "_StS", "_valid", "_ptr", "_gamma", "_iters", "_status", "_phase",
              "_gref")

    def _state(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in self._STATE}

    def _alloc(self, n: int, x: Tensor | None = None) -> None:
        """Fresh working state for ``n`` rows starting (phase INIT) at ``x``."""
        dev, dt, d, m = self._dev, self._dt, self._d, self.m
        self._x = x if x is not None else torch.zeros(n, d, dtype=dt, device=dev)
        self._g = torch.zeros_like(self._x)
        self._f = torch.full((n,), float("nan"), dtype=dt, device=dev)
        self._f0 = torch.full_like(self._f, float("nan"))
        self._xt = self._x.clone()
        self._dir = torch.zeros_like(self._x)
        self._buf = torch.zeros_like(self._x)                    # work vector
        self._free = torch.zeros_like(self._x)                   # 1.0 on free variables
        self._t = torch.ones(n, dtype=dt, device=dev)
        self._gs = torch.zeros(n, dtype=dt, device=dev)
        self._nls = torch.zeros(n, dtype=torch.long, device=dev)
        # work vectors: s (the trial step xt - x), y (the gradient change), v (the gradient
        # on the free variables), side by side for one batched product with the history
        self._W = torch.zeros(n, 3, d, dtype=dt, device=dev)
        # history: S and Y stacked as SY [n, 2m, d], a circular buffer per row (slot j holds
        # s in j and y in m + j; ptr[i] is the slot written next), with the Gram blocks
        # S^T Y and Y^T Y kept up to date
        self._SY = torch.zeros(n, 2 * m, d, dtype=dt, device=dev)
        self._StY = torch.zeros(n, m, m, dtype=torch.float64, device=dev)
        self._YtY = torch.zeros_like(self._StY)
        self._StS = torch.zeros_like(self._StY)       # for restarts that bend the history
        self._valid = torch.zeros(n, m, dtype=torch.bool, device=dev)
        self._ptr = torch.zeros(n, dtype=torch.long, device=dev)
        self._gamma = torch.ones(n, dtype=torch.float64, device=dev)
        self._iters = torch.zeros(n, dtype=torch.long, device=dev)
        self._status = torch.zeros(n, dtype=torch.long, device=dev)
        self._phase = torch.full((n,), INIT, dtype=torch.long, device=dev)
        self._gref = torch.full((n,), float("nan"), dtype=dt, device=dev)
        self._aux = None
        self._bounds()

    def _lo_rows(self, ids: Tensor) -> float | Tensor:
        lo = self._lo_all
        return lo.index_select(0, ids) if isinstance(lo, Tensor) else lo

    def _hi_rows(self, ids: Tensor) -> float | Tensor:
        hi = self._hi_all
        return hi.index_select(0, ids) if isinstance(hi, Tensor) else hi

    @staticmethod
    def _held_rows(b: float | Tensor, hr: Tensor) -> float | Tensor:
        return b.index_select(0, hr) if isinstance(b, Tensor) else b

    def _bounds(self) -> None:
        lo, hi = self._lo_all, self._hi_all
        self.lo = lo.index_select(0, self._ids) if isinstance(lo, Tensor) else lo
        self.hi = hi.index_select(0, self._ids) if isinstance(hi, Tensor) else hi

    def _compact(self) -> None:
        """Drop stopped rows from the working state once they are an eighth of it."""
        done = self._phase == DONE
        n_done = int(done.sum())
        if n_done == 0 or 8 * n_done < self._phase.shape[0]:
            return
        keep = _rows(~done)
        for name in self._STATE:
            setattr(self, name, _front(getattr(self, name), keep))
        if self._aux is not None:
            self._aux = _front(self._aux, keep)
        self._ids = self._ids.index_select(0, keep)
        self._bounds()

    def _export(self, si: Tensor) -> None:
        """Copy the working state of held rows ``si`` to the per-row results."""
        ids = self._ids.index_select(0, si)
        if self.keep:
            self.x.index_copy_(0, ids, self._x.index_select(0, si))
            self.g.index_copy_(0, ids, self._g.index_select(0, si))
        self.f.index_copy_(0, ids, self._f.index_select(0, si))
        self.iters.index_copy_(0, ids, self._iters.index_select(0, si))
        self.status.index_copy_(0, ids, self._status.index_select(0, si))
        self._gref_out.index_copy_(0, ids, self._gref.index_select(0, si))
        if self._aux is not None:
            self.aux.index_copy_(0, ids, self._aux.index_select(0, si))

    @staticmethod
    def _t_sd(vnorm: Tensor) -> Tensor:
        """First step along steepest descent: a move of unit length (whatever the scale of
        ``f``)."""
        return torch.where(vnorm > 0, 1.0 / vnorm, torch.ones_like(vnorm))

    def _set_trial(self, mask: Tensor, v: Tensor) -> None:
        """Trial points ``P(x + t d)`` of every held row, their steps ``s`` and slopes ``g.s``;
        the rows in ``mask`` whose projected step is no descent step fall back to steepest
        descent along ``-v``."""
        x, g, xt = self._x, self._g, self._xt
        torch.addcmul(x, self._t[:, None], self._dir, out=xt).clamp_(self.lo, self.hi)
        s = torch.sub(xt, x, out=self._W[:, 0])
        gs = _dot(g, s)
        bad = mask & ~(gs < 0)
        if bool(bad.any()):
            vn = torch.linalg.vector_norm(v, dim=1)
            self._dir = torch.where(bad[:, None], -v, self._dir)
            self._t = torch.where(bad, self._t_sd(vn), self._t)
            torch.addcmul(x, self._t[:, None], self._dir, out=xt).clamp_(self.lo, self.hi)
            s = torch.sub(xt, x, out=self._W[:, 0])
            gs = _dot(g, s)
        self._gs = gs

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
        f = f.detach().to(self._dt)
        g = g.detach().to(self._dt)
        return f, g, (aux.detach() if aux is not None else None)

    def _push(self, upd: Tensor, s: Tensor, y: Tensor) -> None:
        """Store the pair (s, y) of the rows in mask ``upd`` in their slot ``ptr``."""
        n, m2, d = self._SY.shape
        flat = self._SY.view(n * m2, d)
        ui = _rows(upd)
        if ui.numel() == n:
            at = self._slots.new_tensor(range(0, n * m2, m2)) + self._ptr
            flat.index_copy_(0, at, s)
            flat.index_copy_(0, at + self.m, y)
        else:
            at = ui * m2 + self._ptr.index_select(0, ui)
            flat.index_copy_(0, at, s.index_select(0, ui))
            flat.index_copy_(0, at + self.m, y.index_select(0, ui))

    def _update_gram(self, upd: Tensor, p: Tensor, Q: Tensor, sy: Tensor, yy: Tensor) -> None:
        """After a push into slot ``p`` (rows in mask ``upd``): row and column ``p`` of S^T Y,
        Y^T Y and S^T S from ``Q`` (s, y and v against every stored vector, the new pair included),
        the pair marked valid, gamma and the pointers moved on."""
        m = self.m
        at = (self._slots[None, :] == p[:, None]) & upd[:, None]     # [n, m]: slot p of upd
        row_sty = Q[:, 0, m:]              # s_new . y_j
        col_sty = Q[:, 1, :m]              # s_j . y_new
        row_yty = Q[:, 1, m:]              # y_new . y_j
        row_sts = Q[:, 0, :m]              # s_new . s_j
        rows, cols = at[:, :, None], at[:, None, :]
        StS = torch.where(rows, row_sts[:, None, :], self._StS)
        self._StS = torch.where(cols, row_sts[:, :, None], StS)
        StY = torch.where(rows, row_sty[:, None, :], self._StY)
        self._StY = torch.where(cols, col_sty[:, :, None], StY)
        YtY = torch.where(rows, row_yty[:, None, :], self._YtY)
        self._YtY = torch.where(cols, row_yty[:, :, None], YtY)
        self._valid = self._valid | at
        self._gamma = torch.where(upd, sy.double() / yy.double().clamp_min(1e-300), self._gamma)
        self._ptr = torch.where(upd, (p + 1) % m, p)

    def _hv(self, v: Tensor, ab: Tensor | None, out: Tensor | None = None) -> Tensor:
        """``H v`` for every held row, with the compact representation of the L-BFGS matrix:
        ``H v = gamma v + S p - gamma Y u`` where ``u = R^-1 S^T v`` and
        ``p = R^-T ((D + gamma Y^T Y) u - gamma Y^T v)``, ``R`` the upper triangle of
        ``S^T Y`` and ``D`` its diagonal, pairs in chronological order. ``ab [n, 2m]`` holds
        ``S^T v`` and ``Y^T v`` in slot order; the result goes to ``out`` when given."""
        n, m = v.shape[0], self.m
        gamma = self._gamma
        dt = v.dtype
        vg = torch.mul(v, gamma.to(dt)[:, None], out=out)
        if ab is None or not bool(self._valid.any()):
            return vg
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
        vg.unsqueeze(1).baddbmm_(coef.to(dt).unsqueeze(1), self._SY)
        return vg

    def _direction(self, v: Tensor, vn: Tensor, free: Tensor,
                   ab: Tensor | None) -> tuple[Tensor, Tensor]:
        """Quasi-Newton direction ``-H v`` on the free variables and its first step: 1 with
        curvature information, else a move of unit length along ``-v``."""
        d = self._hv(v, ab, out=self._buf).mul_(free).neg_()
        has_hist = self._valid.any(1)
        t = torch.where(has_hist, torch.ones_like(vn), self._t_sd(vn))
        return d, t


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
    ``gtol_rel``, ``ftol``, ``progress_tol``, ``max_ls``, ``c1``)."""
    opt = BoxLBFGS(fun, x0, lo, hi, **options)
    while opt.any_running():
        opt.step()
    return MinimizeResult(opt.x, opt.f, opt.g, opt.iters, opt.nfev, opt.status, opt.aux)
