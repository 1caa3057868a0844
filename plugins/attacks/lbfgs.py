"""The paper's attack: box-constrained L-BFGS on c * ||r||^2 + loss_f(x + r, l), with a
search over c per image (Szegedy et al. 2013, Section 4.1)."""

from __future__ import annotations

import math

import torch

from harness import (Attack, AttackResult, Context, Model, ModelError, ParamError,
                     check_target, choose_targets)

from .lbfgsb import BoxLBFGS

#: relative room above round-off a kept point's margin must have (see ``LBFGS._safe``)
SAFE_MARGIN = 1e-5
#: bisection steps of each polishing step's segment search and shortening
POLISH_SEGMENT_STEPS = 10


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
            or not math.isfinite(value):
        raise ParamError(name, f"{name} must be a positive number, not {value!r}")
    return value


def _count(name: str, value: int, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ParamError(name, f"{name} must be an integer >= {least}, not {value!r}")
    return value


class LBFGS(Attack):
    """Box-constrained L-BFGS (Szegedy et al. 2013): per image, the smallest r found with
    f(x + r) = l (targeted) or f(x + r) != y (untargeted) and x + r in [0, 1].

    For each image the attack minimizes ``c * ||r||_2^2 + loss_f(x + r)`` over the box
    [0, 1] with the batched projected L-BFGS of :mod:`lbfgsb` (every image its own problem),
    and searches ``c > 0`` for the largest value whose minimizer still reaches the goal (the
    smallest perturbation): starting at ``initial_const``, ``c`` is multiplied by
    ``const_factor`` while the minimizer succeeds and divided by it while it fails; once a
    success and a failure bracket the goal, ``log c`` is bisected, the cut moved towards
    where the minimizers' logit margins interpolate to zero (kept within the middle 60% of
    the bracket). An image stops once its bracket is narrower than a factor
    ``1 + const_rtol`` or after ``search_steps`` values of ``c``. Each new ``c`` starts from
    the previous minimizer (warm start), and images move on to their next ``c`` independently,
    so the batch stays full. Every point the model is evaluated at is a candidate: the
    successful one of smallest norm is kept per image.

    Two cheap refinements follow. The kept ``r`` is shortened by ``refine_steps`` steps of
    bisection on ``alpha`` in ``x + alpha r`` (forward passes only), removing the overshoot
    past the decision boundary. Then ``polish_steps`` steps move it along the boundary: the
    logit margin is linearized at ``x + r`` (one gradient), the smallest perturbation in the
    box reaching the linearized boundary is taken, the first success on the segment from it
    back to ``r`` is found by bisection and shortened again (forward passes), and kept when
    shorter. (The penalty's minimizers are not exactly the smallest perturbations: the
    cross-entropy also pushes away from the other classes; on MNIST the polish removes most
    of that excess, about 0.4% of the distortion.)

    The distance term is the squared L2 norm (smooth, so the optimizer sees a quadratic);
    the paper writes ``c|r|`` without saying which norm power. ``loss_f`` is the paper's
    cross-entropy: ``-log p_l`` for target ``l``; untargeted ``-log(1 - p_y)``, the
    cross-entropy of "any label but the true one y". Success means the target's logit
    exceeds every other logit (untargeted: some other logit exceeds the true one's); points
    kept as results must exceed it by a little more than round-off (``SAFE_MARGIN`` times
    the largest logit's size), so that they stay successes when evaluated again.

    Parameters (all keyword-only; defaults in brackets):

    - ``target`` [next]: ``next`` (y + 1 mod K), ``random`` (uniform over the other labels,
      drawn from the run's seed and the batch's labels), ``least-likely`` or a class label;
    - ``targeted`` [true]: false = any label but the true one (``target`` is then unused);
    - ``batch_size`` [1000]: images attacked together; memory is about
      ``(2 * history + 10) * batch_size * input size`` floats;
    - ``initial_const`` [3.0]: first ``c`` (its scale depends on the input size and the
      model; the default suits MNIST-sized inputs);
    - ``const_factor`` [3.0]: growth / shrink factor of ``c`` until the goal is bracketed;
    - ``search_steps`` [10]: most values of ``c`` tried per image;
    - ``const_rtol`` [0.05]: an image stops once ``c_fail / c_success <= 1 + const_rtol``;
    - ``max_iter`` [100]: L-BFGS iterations per value of ``c``;
    - ``history`` [5]: (s, y) pairs kept per image by L-BFGS;
    - ``gtol`` [1e-5]: L-BFGS stops when the projected gradient's largest entry is below it;
    - ``ftol`` [1e-4]: ... or when a step lowers the objective by less than this fraction;
    - ``refine_steps`` [16]: bisection steps of the final shortening (0 = none);
    - ``polish_steps`` [3]: steps along the decision boundary (0 = none: the plain method).

    Images the model already assigns to the target (untargeted: already misclassifies) are
    returned unchanged and reported in ``already`` (a success with zero perturbation).
    Images with no successful point found are returned unchanged with ``success`` false.
    ``info`` holds per image ``const`` (the largest successful ``c``, 0 if none),
    ``iterations`` (L-BFGS steps over all values of ``c``) and ``const_steps`` (values of
    ``c`` tried). ``grad_evals`` counts forward+backward passes of the model,
    ``forward_evals`` forward-only passes (the clean prediction and the refinements).
    """

    def __init__(self, *, target: str | int = "next", targeted: bool = True,
                 batch_size: int = 1000, initial_const: float = 3.0,
                 const_factor: float = 3.0, search_steps: int = 10,
                 const_rtol: float = 0.05, max_iter: int = 100, history: int = 5,
                 gtol: float = 1e-5, ftol: float = 1e-4, refine_steps: int = 16,
                 polish_steps: int = 3):
        self.target = check_target(target)
        if not isinstance(targeted, bool):
            raise ParamError("targeted", f"targeted must be true or false, not {targeted!r}")
        self.targeted = targeted
        self.batch_size = _count("batch_size", batch_size, 1)
        self.initial_const = _positive("initial_const", initial_const)
        self.const_factor = _positive("const_factor", const_factor)
        if not self.const_factor > 1:
            raise ParamError("const_factor", f"const_factor must be > 1, not {const_factor!r}")
        self.search_steps = _count("search_steps", search_steps, 1)
        self.const_rtol = _positive("const_rtol", const_rtol)
        self.max_iter = _count("max_iter", max_iter, 1)
        self.history = _count("history", history, 1)
        self.gtol = _positive("gtol", gtol)
        self.ftol = _positive("ftol", ftol)
        self.refine_steps = _count("refine_steps", refine_steps, 0)
        self.polish_steps = _count("polish_steps", polish_steps, 0)

    # ------------------------------------------------------------------ helpers
    def _loss(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Per-image cross-entropy: of ``label`` (targeted), of "not ``label``" (untargeted)."""
        lse = torch.logsumexp(logits, 1)
        if self.targeted:
            return lse - logits.gather(1, label[:, None]).squeeze(1)
        others = logits.scatter(1, label[:, None], float("-inf"))
        return lse - torch.logsumexp(others, 1)

    def _margin(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """How far the goal is reached: > 0 on success (logit of the target minus the best
        other logit; untargeted: the best other logit minus the true one)."""
        own = logits.gather(1, label[:, None]).squeeze(1)
        best_other = logits.scatter(1, label[:, None], float("-inf")).amax(1)
        return own - best_other if self.targeted else best_other - own

    def _safe(self, logits: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
        """Success with a little room: a margin above round-off (relative to the logits'
        size), so that a point kept close to the boundary stays a success when the model is
        evaluated on it again in another batch."""
        return margin > SAFE_MARGIN * (1.0 + logits.detach().abs().amax(1))

    def _reaches(self, model: Model, z: torch.Tensor, label: torch.Tensor,
                 shape: torch.Size) -> torch.Tensor:
        """Whether the flat points ``z`` are (safe) successes; a forward pass."""
        with torch.no_grad():
            logits = model(z.view(-1, *shape))
            return self._safe(logits, self._margin(logits, label))

    def _shorten(self, model: Model, x0: torch.Tensor, r: torch.Tensor, label: torch.Tensor,
                 shape: torch.Size, steps: int) -> torch.Tensor:
        """Bisection on alpha in [0, 1] for the shortest successful ``alpha * r`` (``r``
        itself a success): ``steps`` forward passes."""
        lo = torch.zeros(len(r), dtype=r.dtype, device=r.device)
        hi = torch.ones_like(lo)
        for _ in range(steps):
            mid = 0.5 * (lo + hi)
            hit = self._reaches(model, x0 + mid[:, None] * r, label, shape)
            hi = torch.where(hit, mid, hi)
            lo = torch.where(hit, lo, mid)
        return hi[:, None] * r

    def _polish(self, model: Model, x0: torch.Tensor, r: torch.Tensor, label: torch.Tensor,
                shape: torch.Size) -> torch.Tensor:
        """One step along the decision boundary from the successful ``x0 + r``: linearize
        the margin there (one gradient), take the smallest perturbation in the box that
        reaches the linearized boundary, then the first success on the segment from it back
        to ``r`` (bisection) and shorten that; keep it where it is shorter than ``r``."""
        z = (x0 + r).requires_grad_(True)
        with torch.enable_grad():
            logits = model(z.view(-1, *shape))
            margin = self._margin(logits, label)
            n, = torch.autograd.grad(margin.sum(), z)
        margin = margin.detach()
        lo_box, hi_box = -x0, 1.0 - x0
        # min ||q|| s.t. n.q >= n.r - margin, x0 + q in the box: q = clip(lam * n), with the
        # smallest lam >= 0 reaching the bound (n.clip(lam * n) grows with lam)
        beta = (n * r).sum(1) - margin
        nn2 = (n * n).sum(1).clamp_min(1e-30)
        lam_hi = (beta / nn2).clamp(1e-12, 1e30)
        lam_lo = torch.zeros_like(lam_hi)
        for _ in range(40):
            short = (n * torch.clamp(lam_hi[:, None] * n, lo_box, hi_box)).sum(1) < beta
            if not bool(short.any()):
                break
            lam_lo = torch.where(short, lam_hi, lam_lo)
            lam_hi = torch.where(short, (2 * lam_hi).clamp(max=1e30), lam_hi)
        for _ in range(30):
            mid = 0.5 * (lam_lo + lam_hi)
            ok = (n * torch.clamp(mid[:, None] * n, lo_box, hi_box)).sum(1) >= beta
            lam_hi = torch.where(ok, mid, lam_hi)
            lam_lo = torch.where(ok, lam_lo, mid)
        q = torch.clamp(lam_hi[:, None] * n, lo_box, hi_box)
        # first success on the segment q -> r (r a success), then shorten
        t_lo = torch.zeros_like(lam_hi, dtype=r.dtype)
        t_hi = torch.ones_like(t_lo)
        at_q = self._reaches(model, x0 + q, label, shape)
        t_hi = torch.where(at_q, 0.0, t_hi)
        for _ in range(POLISH_SEGMENT_STEPS):
            mid = 0.5 * (t_lo + t_hi)
            hit = self._reaches(model, x0 + (q + mid[:, None] * (r - q)), label, shape)
            t_hi = torch.where(hit, mid, t_hi)
            t_lo = torch.where(hit, t_lo, mid)
        cand = q + t_hi[:, None] * (r - q)
        cand = self._shorten(model, x0, cand, label, shape, POLISH_SEGMENT_STEPS)
        better = (cand * cand).sum(1) < (r * r).sum(1)
        return torch.where(better[:, None], cand, r)

    # ------------------------------------------------------------------ the attack
    def run(self, model: Model, x: torch.Tensor, y: torch.Tensor, ctx: Context) -> AttackResult:
        if not model.differentiable:
            raise ModelError(f"attack lbfgs needs gradients, but model {model.name!r} is not "
                             "differentiable", hint="use a gradient-free attack for this model")
        B = len(x)
        dev = x.device
        shape = x.shape[1:]
        x0 = x.detach().reshape(B, -1)
        if not x0.is_floating_point():
            x0 = x0.float()
        with torch.no_grad():
            logits0 = model(x.detach())
        if self.targeted:
            gen = ctx.generator(self.name or "lbfgs", "target", tuple(y.tolist())) \
                if self.target == "random" else None
            label = choose_targets(self.target, y, logits0, model.num_classes, gen)
        else:
            label = y
        already = self._margin(logits0, label) > 0

        c = torch.full((B,), float(self.initial_const), dtype=torch.float64, device=dev)
        c_ok = torch.zeros_like(c)                      # largest c whose minimizer succeeded
        c_bad = torch.full_like(c, math.inf)            # smallest c whose minimizer failed
        m_ok = torch.zeros_like(c)                      # margins of those two minimizers
        m_bad = torch.zeros_like(c)
        n_const = torch.zeros(B, dtype=torch.long, device=dev)
        iters = torch.zeros(B, dtype=torch.long, device=dev)
        best_d2 = torch.full((B,), math.inf, dtype=torch.float32, device=dev)
        best_x = x0.clone()

        def objective(z: torch.Tensor, idx: torch.Tensor):
            r = z - x0.index_select(0, idx)
            d2 = (r * r).sum(1)
            logits = model(z.view(-1, *shape))
            lab = label.index_select(0, idx)
            f = c.index_select(0, idx).to(z.dtype) * d2 + self._loss(logits, lab)
            margin = self._margin(logits.detach(), lab)
            # every point seen is a candidate: keep the closest successful one
            d2 = d2.detach()
            old = best_d2.index_select(0, idx)
            better = self._safe(logits, margin) & (d2 < old)
            best_d2.index_copy_(0, idx, torch.where(better, d2, old))
            best_x.index_copy_(0, idx, torch.where(better[:, None], z.detach(),
                                                   best_x.index_select(0, idx)))
            return f, None, margin

        opt = BoxLBFGS(objective, x0, 0.0, 1.0, m=self.history, max_iter=self.max_iter,
                       gtol=self.gtol, ftol=self.ftol, start=False)
        opt.restart(~already)
        log_grow = math.log(self.const_factor)
        while opt.any_running():
            stopped = opt.step()
            if not bool(stopped.any()):
                continue
            margin = opt.aux.double()
            ok = stopped & (margin > 0)
            bad = stopped & ~(margin > 0)
            iters += torch.where(stopped, opt.iters, 0)
            n_const += stopped.long()
            c_ok, m_ok = torch.where(ok, c, c_ok), torch.where(ok, margin, m_ok)
            c_bad, m_bad = torch.where(bad, c, c_bad), torch.where(bad, margin, m_bad)
            # next c: geometric growth / shrinkage until the goal is bracketed, then
            # bisection of log c, moved towards the root of the margin's linear interpolation
            bracket = (c_ok > 0) & torch.isfinite(c_bad)
            frac = (m_ok / (m_ok - m_bad).clamp_min(1e-12)).clamp(0.2, 0.8)
            log_ok, log_bad = c_ok.clamp_min(1e-300).log(), c_bad.log()
            c_next = torch.where(
                bracket, (log_ok + frac * (log_bad - log_ok)).exp(),
                torch.where(c_ok > 0, c * math.exp(log_grow), c * math.exp(-log_grow)))
            narrow = bracket & (c_bad <= c_ok * (1 + self.const_rtol))
            go_on = stopped & ~narrow & (n_const < self.search_steps)
            c = torch.where(go_on, c_next, c)
            if bool(go_on.any()):
                opt.restart(go_on)

        success = torch.isfinite(best_d2)
        r = best_x - x0
        grads = opt.nfev.clone()
        forward = torch.ones(B, dtype=torch.long, device=dev)
        todo = success.nonzero().squeeze(1)
        if todo.numel() and (self.refine_steps or self.polish_steps):
            xs, rs = x0.index_select(0, todo), r.index_select(0, todo)
            lab = label.index_select(0, todo)
            rs = self._shorten(model, xs, rs, lab, shape, self.refine_steps)
            for _ in range(self.polish_steps):
                rs = self._polish(model, xs, rs, lab, shape)
            r.index_copy_(0, todo, rs)
            forward.index_add_(0, todo, torch.full_like(
                todo, self.refine_steps + self.polish_steps * (1 + 2 * POLISH_SEGMENT_STEPS)))
            grads.index_add_(0, todo, torch.full_like(todo, self.polish_steps))
        x_adv = (x0 + r).clamp_(0.0, 1.0)
        x_adv = torch.where(already[:, None], x0, x_adv)
        success = success | already
        return AttackResult(
            x_adv=x_adv.view_as(x).to(x.dtype), success=success,
            target=label if self.targeted else None, already=already,
            grad_evals=grads, forward_evals=forward,
            info={"const": c_ok.float(), "iterations": iters, "const_steps": n_const})
