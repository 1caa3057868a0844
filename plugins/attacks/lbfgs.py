"""The paper's attack: box-constrained L-BFGS on c * ||r||^2 + loss_f(x + r, l), with a
search over c per image (Szegedy et al. 2013, Section 4.1)."""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Union

import harness
from harness import Attack, AttackResult, Context, Field, Model, ModelError, ParamError, \
    choose_targets

from ..params import Real, Target, auto_or

if TYPE_CHECKING:
    import torch

#: relative room above round-off a kept point's margin must have (see ``LBFGS._safe``)
SAFE_MARGIN = 1e-5
#: with ``batch_size: auto``, images per batch = this many input values / the input's size
#: (at most ``AUTO_BATCH_MAX``): 1000 MNIST images, 682 at 3x32x32, 13 at 3x224x224
AUTO_BATCH_VALUES = 2 ** 21
AUTO_BATCH_MAX = 1000
#: a boundary search along a ray stops once its bracket is narrower than this, relative
ROOT_RTOL = 1e-5
#: most forward passes of the boundary search of each polishing step
POLISH_SEARCH_STEPS = 5
#: the polish linearizes the margin this much further along the ray than the point kept
POLISH_INSIDE = 3e-3
#: Newton steps and relative tolerance of the polish's linearized projection
TANGENT_STEPS = 8
TANGENT_RTOL = 1e-4
#: a search that failed ended at a minimum of the loss itself ("local-minimum") when, at
#: its last point, the loss's gradient on the free pixels had shrunk to at most this share
#: of its size at the image, or the penalty's gradient 2 c r was at most this share of the
#: loss's (where the penalty holds a solve back, the two gradients balance at its end)
STUCK_SHARE = 0.1


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.linalg.vecdot(a, b)


#: a positive finite number
_Positive = Annotated[Real, Field(gt=0)]


def _check_target_fits(target: str | int, targeted: bool, num_classes: int) -> None:
    """A targeted attack's ``target`` against the data's class count (``check_data``)."""
    if not targeted:
        return
    if num_classes < 2:
        raise ParamError("targeted", f"a targeted attack needs at least 2 classes, and the "
                                     f"data has {num_classes}", hint="write targeted: false")
    if isinstance(target, int) and target >= num_classes:
        raise ParamError("target", f"target {target} is not a class of the data, which has "
                                   f"{num_classes} classes (labels 0 to {num_classes - 1})",
                         hint="give a label below "
                              f"{num_classes}, or next, random or least-likely")


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
    the previous minimizer with the L-BFGS history kept: changing ``c`` adds a multiple of
    ``||r||^2``, whose effect on the value, the gradient and every stored curvature pair is
    known exactly, so no model evaluation is spent on the restart and the first step is
    already a quasi-Newton one. Images move on to their next ``c`` independently, so the
    batch stays full. Every point the model is evaluated at is a candidate: the successful
    one of smallest norm is kept per image.

    Defaults that follow the model's scale. ``initial_const: auto`` balances the two terms
    per image from the model itself: with ``g`` the loss gradient at the image (on the
    pixels free to move) and ``D`` the drop of the loss from the image to the nearest tie
    (the target's logit raised to the best other one; untargeted: the best other one raised
    to the true one's), a linear model of the loss puts the boundary at distance ``D / |g|``
    along ``-g``, and ``c = |g|^2 / (2 D)`` is the value whose penalized minimizer stops right
    there. The inner solves stop on scale-free rules: when the gradient on the free pixels
    has shrunk to ``grad_rtol`` of its size at the image, or when a step lowers the objective
    by less than ``progress_rtol`` of what this value of ``c`` has gained so far. Neither
    depends on the size of the loss (about 2.3 at 10 classes, 6.9 at 1000) or of the input
    gradients, so the same defaults serve an MNIST MLP and an ImageNet ResNet.

    Two refinements follow. ``polish_steps`` steps move the kept ``r`` along the decision
    boundary: the margin is linearized a little inside the goal, at ``x + (1 + 0.003) r``
    (one gradient), the smallest perturbation ``q`` in the box reaching the linearized
    boundary is found (Newton's method on a concave piecewise-linear function), the first
    success on the segment from ``q`` to that point is found and moved back to the boundary
    along its ray from ``x`` (a few forward passes each), and kept when shorter. Linearized
    inside the goal rather than on its boundary, the step reaches further; the first step
    starts from the point the search found, which lies deeper inside still. Then what was
    kept is shortened along ``x + alpha r`` to the boundary (regula falsi on the logit
    margin, at most ``refine_steps`` forward passes). (The penalty's minimizers are not
    exactly the smallest perturbations: the cross-entropy also pushes away from the other
    classes; on smooth models the polish removes that excess. On ReLU networks the
    linearization holds only in a tiny region and the polish rarely finds a shorter point.)

    The distance term is the squared L2 norm (smooth, so the optimizer sees a quadratic);
    the paper writes ``c|r|`` without saying which norm power. ``loss_f`` is the paper's
    cross-entropy: ``-log p_l`` for target ``l``; untargeted ``-log(1 - p_y)``, the
    cross-entropy of "any label but the true one y". Success means the target's logit
    exceeds every other logit (untargeted: some other logit exceeds the true one's); points
    kept as results must exceed it by a little more than round-off (``SAFE_MARGIN`` times
    the largest logit's size), so that they stay successes when evaluated again.

    Parameters (all keyword-only; defaults in brackets):

    - ``target`` [next]: ``next`` (y + 1 mod K), ``random`` (uniform over the other labels,
      drawn from the run's seed, the batch's position in the data and its labels),
      ``least-likely`` or a class label;
    - ``targeted`` [true]: false = any label but the true one (``target`` is then unused);
    - ``batch_size`` [auto]: images attacked together; ``auto`` takes as many as make about
      2 million input values (``AUTO_BATCH_VALUES``), at most 1000: 1000 MNIST images, 682
      at 3x32x32, 13 at 3x224x224. Memory: at its peak the attack holds about
      ``2 * history + 15`` input-sized float vectors per image of the batch (25 with the
      default history: the L-BFGS history, point, gradient, trial point, direction, work
      vectors, the best point found, and the model's input gradient while it is computed;
      measured by ``benchmarks/lbfgs_memory.py``), plus what the model needs for one forward
      and backward pass of the batch. For a torchvision resnet18 at 3x224x224 that is about
      15 MB of attack state and 47 MB of activations per image: some 0.8 GB for the automatic
      13 images, against 62 GB for a batch of 1000;
    - ``initial_const`` [auto]: first ``c``, per image from the model's loss and gradient
      (see above), or one number for all images;
    - ``const_factor`` [3.0]: growth / shrink factor of ``c`` until the goal is bracketed;
    - ``search_steps`` [10]: most values of ``c`` tried per image;
    - ``const_rtol`` [0.05]: an image stops once ``c_fail / c_success <= 1 + const_rtol``;
    - ``max_iter`` [100]: L-BFGS iterations per value of ``c``;
    - ``history`` [5]: (s, y) pairs kept per image by L-BFGS;
    - ``grad_rtol`` [1e-2]: an L-BFGS solve stops when the gradient on the free pixels is
      below this fraction of its size at the image;
    - ``progress_rtol`` [1e-2]: ... or when a step lowers the objective by less than this
      fraction of the decrease since the solve began (smaller: closer minimizers, smaller
      perturbations, more gradient evaluations);
    - ``polish_steps`` [3]: steps along the decision boundary (0 = none: the plain method);
    - ``refine_steps`` [8]: most forward passes of the final shortening (0 = none);
    - ``gtol``, ``ftol``: deprecated (an absolute gradient tolerance and a decrease relative
      to the loss's value, which do not carry over from one model to another); when given,
      they stop a solve in addition to ``grad_rtol`` and ``progress_rtol``.

    Images the model already assigns to the target (untargeted: already misclassifies) are
    returned unchanged and reported in ``already`` (a success with zero perturbation).
    Images with no successful point found are returned unchanged with ``success`` false and
    a ``failure`` code saying why (see :attr:`failure_advice`; the harness's reports show
    them beside the success rate). ``info`` holds per image ``const`` (the largest successful
    ``c``, 0 if none), ``initial_const`` (the first ``c``), ``iterations`` (L-BFGS steps over
    all values of ``c``) and ``const_steps`` (values of ``c`` tried). ``grad_evals`` counts
    forward+backward passes of the model, ``forward_evals`` forward-only passes (the clean
    prediction and the refinements).
    """

    minimum_norm = True
    seed_name = "lbfgs"

    failure_advice: ClassVar[dict[str, str]] = {
        "budget": "the L-BFGS iteration limit per value of c stopped the last solve before "
                  "it converged; raise max_iter",
        "c-search": "every value of c tried held the perturbation back too much (the search "
                    "shrank c search_steps times without reaching the goal); raise "
                    "search_steps or const_factor, or give a smaller initial_const",
        "local-minimum": "the last solve ended at a minimum of the model's loss short of the "
                         "goal, with c too small to matter: no value of c reaches the goal "
                         "from this image by a local search (the target lies beyond a "
                         "barrier of the loss); ask for any wrong label (targeted: false), "
                         "another target, or use an attack with random restarts",
        "bad-gradient": "the model's gradient does not describe its loss (a step along it "
                        "does not lower the loss as predicted: masked, quantized or "
                        "non-differentiable layers); use a gradient-free attack",
        "non-finite": "the model returned NaN or infinite logits or gradients at the image "
                      "or near it; check the model's weights and input normalization",
        "no-gradient": "the loss has no gradient at the image on the pixels free to move "
                       "(saturated softmax or gradients cut off); use a gradient-free attack "
                       "or the model's logits before the saturation",
    }

    class Params(harness.Params):
        target: Target = "next"
        targeted: bool = Field(True, description="false: any label but the true one (target "
                                                 "is then unused)")
        batch_size: auto_or(Annotated[int, Field(ge=1)]) = Field(
            "auto", description="images attacked together (auto: about 2 million input "
                                "values, at most 1000)")
        initial_const: auto_or(_Positive) = Field(
            "auto", description="the first c (auto: per image, from the model's loss and "
                                "gradient at the image)")
        const_factor: Real = Field(3.0, gt=1, description="growth and shrink factor of c "
                                                          "until the goal is bracketed")
        search_steps: int = Field(10, ge=1, description="most values of c tried per image")
        const_rtol: _Positive = Field(0.05, description="an image stops once c_fail / "
                                                        "c_success <= 1 + const_rtol")
        max_iter: int = Field(100, ge=1, description="L-BFGS iterations per value of c")
        history: int = Field(5, ge=1, description="(s, y) pairs kept per image by L-BFGS")
        grad_rtol: _Positive = Field(1e-2, description="a solve stops when the gradient on "
                                                       "the free pixels falls below this "
                                                       "fraction of its size at the image")
        progress_rtol: _Positive = Field(1e-2, description="... or when a step lowers the "
                                                           "objective by less than this "
                                                           "fraction of the decrease so far")
        refine_steps: int = Field(8, ge=0, description="most forward passes of the final "
                                                       "shortening along the ray (0: none)")
        polish_steps: int = Field(3, ge=0, description="steps along the decision boundary "
                                                       "(0: none, the plain method)")
        gtol: Union[_Positive, None] = Field(None, description="deprecated: write grad_rtol "
                                                               "instead")
        ftol: Union[_Positive, None] = Field(None, description="deprecated: write "
                                                               "progress_rtol instead")

    def __init__(self, **values: Any):
        super().__init__(**values)
        for name, instead in (("gtol", "grad_rtol"), ("ftol", "progress_rtol")):
            if getattr(self, name) is not None:
                warnings.warn(f"lbfgs: {name} is deprecated (its stopping rule depends on the "
                              f"model's scale); write {instead} instead", FutureWarning,
                              stacklevel=2)

    def check_data(self, num_classes: int) -> None:
        _check_target_fits(self.target, self.targeted, num_classes)

    # ------------------------------------------------------------------ batching
    def auto_batch_size(self, model: Model) -> int:
        """Images per batch for ``batch_size: auto`` (see the class docstring)."""
        return self.batch_size_for(model.input_shape)

    def batch_size_for(self, input_shape: tuple[int, ...]) -> int:
        if self.batch_size != "auto":
            return int(self.batch_size)
        size = math.prod(input_shape) or 1
        return max(1, min(AUTO_BATCH_MAX, AUTO_BATCH_VALUES // size))

    # ------------------------------------------------------------------ helpers
    def _loss(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Per-image cross-entropy: of ``label`` (targeted), of "not ``label``" (untargeted)."""
        import torch

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

    def _tie_drop(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """How much the loss drops from ``logits`` to the nearest tie: the target's logit
        raised to the best other one (untargeted: the best other one raised to the true
        one's), the rest unchanged."""
        own = logits.gather(1, label[:, None])
        others = logits.scatter(1, label[:, None], float("-inf"))
        if self.targeted:
            tied = logits.scatter(1, label[:, None], others.amax(1, keepdim=True))
        else:
            tied = others.scatter(1, others.argmax(1, keepdim=True), own)
            tied = tied.scatter(1, label[:, None], own)
        return self._loss(logits, label) - self._loss(tied, label)

    def _threshold(self, logits: torch.Tensor) -> torch.Tensor:
        """The margin a kept point must exceed: round-off room relative to the logits."""
        return SAFE_MARGIN * (1.0 + logits.detach().abs().amax(1))

    def _safe(self, logits: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
        """Success with a little room: a margin above round-off (relative to the logits'
        size), so that a point kept close to the boundary stays a success when the model is
        evaluated on it again in another batch."""
        return margin > self._threshold(logits)

    def _probe(self, model: Model, z: torch.Tensor, label: torch.Tensor,
               shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        """Margins and their safety thresholds at the flat points ``z``; a forward pass."""
        import torch

        with torch.no_grad():
            logits = model(z.view(-1, *shape))
            return self._margin(logits, label), self._threshold(logits)

    def _boundary(self, model: Model, base: torch.Tensor, p: torch.Tensor,
                  label: torch.Tensor, shape: torch.Size, a_lo: torch.Tensor,
                  g_lo: torch.Tensor, a_hi: torch.Tensor, g_hi: torch.Tensor, steps: int,
                  count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Where the lines ``base + a p`` cross into the goal: ``g = margin - threshold`` is
        <= 0 at ``a_lo`` and > 0 at ``a_hi``; at most ``steps`` forward passes of regula falsi
        (Illinois) shrink each bracket, rows stopping once it is narrower than ``ROOT_RTOL``
        (relative to ``|a_hi|``, or absolute below 1). Returns the success end ``a_hi`` and its
        ``g``; ``count`` (per row) is raised by the passes."""
        import torch

        side = torch.zeros_like(a_lo)      # +1 / -1: which end the last cut replaced
        for _ in range(steps):
            todo = (a_hi - a_lo).abs() > ROOT_RTOL * a_hi.abs().clamp_min(1.0)
            ti = todo.nonzero().squeeze(1)
            if ti.numel() == 0:
                break
            lo, hi = a_lo.index_select(0, ti), a_hi.index_select(0, ti)
            glo, ghi = g_lo.index_select(0, ti), g_hi.index_select(0, ti)
            frac = (glo / (glo - ghi).clamp(max=-1e-30)).clamp(0.02, 0.98)
            a = lo + frac * (hi - lo)
            m, thr = self._probe(model, torch.addcmul(base.index_select(0, ti), a[:, None],
                                                      p.index_select(0, ti)),
                                 label.index_select(0, ti), shape)
            count.index_add_(0, ti, torch.ones_like(ti))
            g = m - thr
            hit = g > 0
            s = side.index_select(0, ti)
            # Illinois: an end kept twice in a row has its value halved
            g_lo_new = torch.where(hit, torch.where(s > 0, glo * 0.5, glo), g)
            g_hi_new = torch.where(hit, g, torch.where(s < 0, ghi * 0.5, ghi))
            a_lo = a_lo.index_copy(0, ti, torch.where(hit, lo, a))
            a_hi = a_hi.index_copy(0, ti, torch.where(hit, a, hi))
            g_lo = g_lo.index_copy(0, ti, g_lo_new)
            g_hi = g_hi.index_copy(0, ti, g_hi_new)
            side = side.index_copy(0, ti, torch.where(hit, 1.0, -1.0).to(side.dtype))
        return a_hi, g_hi

    @staticmethod
    def _tangent_point(n: torch.Tensor, beta: torch.Tensor, lo: torch.Tensor,
                       hi: torch.Tensor) -> torch.Tensor:
        """Per row, the smallest ``q`` with ``n.q >= beta`` and ``lo <= q <= hi`` (``lo <= 0 <=
        hi``), up to ``TANGENT_RTOL``: ``q = clamp(lam n, lo, hi)`` with the least ``lam >= 0``
        that reaches ``beta``. ``phi(lam) = n.clamp(lam n, lo, hi)`` is concave and piecewise
        linear (each pixel grows as ``lam n_j^2`` until it saturates), so Newton's method from
        ``lam = 0`` climbs to the root from below, exactly on the last linear piece. Where
        even full saturation falls short, ``q`` is the saturated point."""
        import torch

        n2 = n * n
        lam = torch.zeros_like(beta)
        q = torch.zeros_like(n)
        for _ in range(TANGENT_STEPS):
            ln = lam[:, None] * n
            torch.clamp(ln, lo, hi, out=q)
            phi = _dot(n, q)
            short = phi < beta * (1 - TANGENT_RTOL)
            if not bool(short.any()):
                break
            slope = _dot(n2, (q == ln).to(n.dtype))
            lam = torch.where(short, lam + (beta - phi) / slope.clamp_min(1e-30), lam)
            lam = torch.where(short & ~(slope > 0), torch.inf, lam)
        full = torch.isinf(lam)
        if bool(full.any()):
            q = torch.where(full[:, None], torch.where(n > 0, hi, torch.where(n < 0, lo, 0.0)),
                            q)
        return q

    def _polish(self, model: Model, x0: torch.Tensor, r: torch.Tensor, g_r: torch.Tensor,
                label: torch.Tensor, shape: torch.Size, g0: torch.Tensor,
                grads: torch.Tensor, forwards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step along the decision boundary from the successful ``x0 + r`` (its ``g =
        margin - threshold`` is ``g_r``; ``g0`` that of the clean image): linearize the margin
        a little further along the ray, at ``x0 + (1 + POLISH_INSIDE) r`` (one gradient),
        take the smallest ``q`` in the box on the linearized boundary, find where the segment
        from ``q`` to that point (or to ``r``, where it is no success) enters the goal and
        move that point along its ray from ``x0`` back to the boundary; keep it where it is
        shorter than ``r``. Returns the new ``r`` and its ``g``."""
        import torch

        # linearize a little inside the goal, along the ray (the step then reaches further)
        inner = torch.clamp(x0 + (1 + POLISH_INSIDE) * r, 0.0, 1.0)
        z = inner.requires_grad_(True)
        with torch.enable_grad():
            logits = model(z.view(-1, *shape))
            margin = self._margin(logits, label)
            n, = torch.autograd.grad(margin.sum(), z)
        grads += 1
        margin, thr = margin.detach(), self._threshold(logits)
        inner = inner.detach_().sub_(x0)
        g_in = margin - thr
        inside = g_in > 0
        inner = torch.where(inside[:, None], inner, r)
        g_in = torch.where(inside, g_in, g_r)
        # the linearized margin reaches thr where n.q >= n.inner - margin + thr
        q = self._tangent_point(n, _dot(n, inner) - g_in, -x0, 1.0 - x0)
        mq, tq = self._probe(model, x0 + q, label, shape)
        forwards += 1
        gq = mq - tq
        zero, one = torch.zeros_like(gq), torch.ones_like(gq)
        # the first success on the segment q -> inner, unless q itself is one
        t, g_c = self._boundary(model, x0 + q, inner - q, label, shape, zero, gq, one, g_in,
                                POLISH_SEARCH_STEPS, forwards)
        t = torch.where(gq > 0, zero, t)
        g_c = torch.where(gq > 0, gq, g_c)
        cand = torch.lerp(q, inner, t[:, None])
        # back to the boundary along the candidate's ray
        a, g_c = self._boundary(model, x0, cand, label, shape, zero, g0, one, g_c,
                                POLISH_SEARCH_STEPS, forwards)
        cand = a[:, None] * cand
        # kept where it is a success (every end of a search is) and shorter than r
        better = (g_c > 0) & (_dot(cand, cand) < _dot(r, r))
        return torch.where(better[:, None], cand, r), torch.where(better, g_c, g_r)

    # ------------------------------------------------------------------ the attack
    def run(self, model: Model, x: torch.Tensor, y: torch.Tensor, ctx: Context) -> AttackResult:
        import torch

        from .lbfgsb import NOT_FINITE, BoxLBFGS

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
            logits0 = model(x0.view(B, *shape))
        if self.targeted:
            gen = ctx.generator(self.seed_key, "target", ctx.position, tuple(y.tolist())) \
                if self.target == "random" else None
            label = choose_targets(self.target, y, logits0, model.num_classes, gen)
        else:
            label = y
        margin0 = self._margin(logits0, label)
        already = margin0 > 0
        drop = self._tie_drop(logits0, label).double()

        auto = self.initial_const == "auto"
        c = torch.full((B,), 0.0 if auto else float(self.initial_const), dtype=torch.float64,
                       device=dev)
        c_ok = torch.zeros_like(c)                      # largest c whose minimizer succeeded
        c_bad = torch.full_like(c, math.inf)            # smallest c whose minimizer failed
        m_ok = torch.zeros_like(c)                      # margins of those two minimizers
        m_bad = torch.zeros_like(c)
        n_const = torch.zeros(B, dtype=torch.long, device=dev)
        iters = torch.zeros(B, dtype=torch.long, device=dev)
        last_status = torch.zeros(B, dtype=torch.long, device=dev)
        not_finite = torch.zeros(B, dtype=torch.bool, device=dev)
        no_grad = torch.zeros(B, dtype=torch.bool, device=dev)
        best_d2 = torch.full((B,), math.inf, dtype=x0.dtype, device=dev)
        best_m = torch.zeros_like(best_d2)              # margin - threshold at the best point
        best_x = x0.clone()
        # the size of the loss's own gradient on the pixels free to move at each image's
        # latest evaluation: where the search ends without a success and that gradient has
        # all but vanished (the penalty no longer holds the solve back), the loss itself has
        # a minimum short of the goal (see _failures)
        last_gl = torch.full((B,), math.inf, dtype=x0.dtype, device=dev)
        last_pen = torch.full((B,), math.inf, dtype=x0.dtype, device=dev)  # |2 c r|

        def objective(z: torch.Tensor, idx: torch.Tensor):
            whole = len(idx) == B
            lab = label if whole else label.index_select(0, idx)
            logits = model(z.view(-1, *shape))
            loss = self._loss(logits, lab)
            gl, = torch.autograd.grad(loss.sum(), z)
            with torch.no_grad():
                logits = logits.detach()
                r = z.detach() - (x0 if whole else x0.index_select(0, idx))
                d2 = _dot(r, r)
                ci = (c if whole else c.index_select(0, idx)).to(z.dtype)
                f = ci * d2 + loss.detach()
                g = torch.addcmul(gl, r, (2 * ci)[:, None])
                zd = z.detach()
                free = ~(((zd <= 0.0) & (gl > 0)) | ((zd >= 1.0) & (gl < 0)))
                last_gl.index_copy_(0, idx, (gl * free).norm(dim=1).to(last_gl.dtype))
                last_pen.index_copy_(0, idx, (2 * ci * d2.sqrt()).to(last_pen.dtype))
                not_finite.index_fill_(0, idx[~torch.isfinite(f)], True)   # (for the report)
                margin = self._margin(logits, lab)
                room = margin - self._threshold(logits)
                # every point seen is a candidate: keep the closest successful one
                better = (room > 0) & (d2 < (best_d2 if whole else best_d2.index_select(0, idx)))
                if bool(better.any()):
                    bi = better.nonzero().squeeze(1)
                    rows = idx.index_select(0, bi)
                    best_d2.index_copy_(0, rows, d2.index_select(0, bi))
                    best_m.index_copy_(0, rows, room.index_select(0, bi))
                    best_x.index_copy_(0, rows, z.detach().index_select(0, bi))
            return f, g, margin

        def new_const(z: torch.Tensor, idx: torch.Tensor, dc: torch.Tensor):
            """The objective's change at ``z`` when c moves by ``dc``."""
            r = z - x0.index_select(0, idx)
            dci = dc.index_select(0, idx).to(z.dtype)
            return dci * _dot(r, r), r * (2 * dci)[:, None]

        opt = BoxLBFGS(objective, x0, 0.0, 1.0, m=self.history, max_iter=self.max_iter,
                       gtol=self.gtol or 0.0, ftol=self.ftol or 0.0, gtol_rel=self.grad_rtol,
                       progress_tol=self.progress_rtol, start=False, keep=False)
        opt.restart(~already)
        log_grow = math.log(self.const_factor)
        first = True
        c_first = torch.zeros_like(c)
        gref = torch.zeros(B, dtype=torch.float64, device=dev)
        while opt.any_running():
            stopped = opt.step()
            if first:
                # the rows were evaluated at the images, where r = 0: the value and gradient
                # there do not depend on c, which can be chosen now
                first = False
                gref = opt.gref.double()
                no_grad = ~already & ~(gref > 0) & ~not_finite
                if auto:
                    c = (gref * gref / (2 * drop.clamp_min(1e-12))).clamp(1e-30, 1e30)
                    c = torch.where(torch.isfinite(c), c, 1.0)
                c_first = torch.where(already, 0.0, c)
            if not bool(stopped.any()):
                continue
            margin = opt.aux.double()
            status = opt.status
            last_status = torch.where(stopped, status, last_status)
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
            # no use trying other values of c where the objective cannot be evaluated at the
            # start, or has no gradient there
            hopeless = no_grad | (status == NOT_FINITE)
            go_on = stopped & ~narrow & ~hopeless & (n_const < self.search_steps)
            if bool(go_on.any()):
                dc = torch.where(go_on, c_next - c, 0.0)
                c = torch.where(go_on, c_next, c)
                opt.restart(go_on, shift=lambda z, idx, dc=dc: new_const(z, idx, dc),
                            curvature=2 * dc)

        success = torch.isfinite(best_d2)
        grads = opt.nfev.clone()
        del opt, objective                  # the optimizer's memory, before the refinements
        r = best_x.sub_(x0)
        forward = torch.ones(B, dtype=torch.long, device=dev)
        todo = success.nonzero().squeeze(1)
        if todo.numel() and (self.refine_steps or self.polish_steps):
            every = todo.numel() == B
            xs = x0 if every else x0.index_select(0, todo)
            rs = r if every else r.index_select(0, todo)
            lab = label.index_select(0, todo)
            m0 = margin0.index_select(0, todo).to(x0.dtype)
            fw = torch.zeros_like(todo)
            gr = torch.zeros_like(todo)
            g0 = m0 - self._threshold(logits0).index_select(0, todo)
            g_r = best_m.index_select(0, todo)
            # polish from the point found (inside the goal: the linearized boundary lies
            # further in, and the steps are longer than from the boundary itself), then
            # shorten what was kept
            for _ in range(self.polish_steps):
                rs, g_r = self._polish(model, xs, rs, g_r, lab, shape, g0, gr, fw)
            if self.refine_steps:
                a, g_r = self._boundary(model, xs, rs, lab, shape, torch.zeros_like(m0), g0,
                                        torch.ones_like(m0), g_r, self.refine_steps, fw)
                rs = a[:, None] * rs
            r = rs if every else r.index_copy_(0, todo, rs)
            forward.index_add_(0, todo, fw)
            grads.index_add_(0, todo, gr)
        x_adv = (x0 + r).clamp_(0.0, 1.0)
        x_adv = torch.where(already[:, None], x0, x_adv)
        success = success | already
        # where no success came from a search that could run, check that the gradients
        # describe the loss at the image (else no value of c can help)
        misled = ~success & ~already & ~no_grad & ~not_finite
        if bool(misled.any()):
            mi = misled.nonzero().squeeze(1)
            agrees = self._gradient_agrees(model, x0.index_select(0, mi),
                                           label.index_select(0, mi), shape,
                                           drop.index_select(0, mi))
            misled = misled.index_fill(0, mi[agrees], False)
            forward.index_add_(0, mi, torch.ones_like(mi))
            grads.index_add_(0, mi, torch.ones_like(mi))
        stuck = ~success & ((last_gl <= STUCK_SHARE * gref.to(last_gl.dtype))
                            | (last_pen <= STUCK_SHARE * last_gl))
        failure = self._failures(success, no_grad, not_finite, misled, last_status, stuck)
        return AttackResult(
            x_adv=x_adv.view_as(x).to(x.dtype), success=success,
            target=label if self.targeted else None, already=already,
            grad_evals=grads, forward_evals=forward, failure=failure,
            info={"const": c_ok.float(), "initial_const": c_first.float(),
                  "iterations": iters, "const_steps": n_const})

    def _gradient_agrees(self, model: Model, x0: torch.Tensor, label: torch.Tensor,
                         shape: torch.Size, drop: torch.Tensor) -> torch.Tensor:
        """Per image, whether a step along the loss's negative gradient (on the free pixels)
        lowers the loss as the gradient predicts: a step a tenth of the way to the linearized
        tie, which should lower the loss by about a tenth of ``drop``; one gradient and one
        forward pass."""
        import torch

        z = x0.clone().requires_grad_(True)
        with torch.enable_grad():
            loss = self._loss(model(z.view(-1, *shape)), label)
            g, = torch.autograd.grad(loss.sum(), z)
        v = torch.where(torch.clamp(x0 - g, 0.0, 1.0) != x0, g, 0.0)
        vn = torch.linalg.vector_norm(v, dim=1).clamp_min(1e-30)
        step = (0.1 * drop.to(vn.dtype) / vn)[:, None]
        with torch.no_grad():
            after = self._loss(model(torch.clamp(x0 - step * v / vn[:, None], 0.0, 1.0)
                                     .view(-1, *shape)), label)
        return (after - loss.detach()) <= -0.025 * drop.to(after.dtype)

    @staticmethod
    def _failures(success: torch.Tensor, no_grad: torch.Tensor, not_finite: torch.Tensor,
                  misled: torch.Tensor, last_status: torch.Tensor,
                  stuck: torch.Tensor | None = None) -> list[str]:
        """Per image, why it failed ("" where it succeeded); see ``failure_advice``.
        ``stuck``: the last solve ended where the penalty was a negligible part of the
        objective (a minimum of the loss itself short of the goal)."""
        import torch

        from .lbfgsb import MAX_ITER

        codes = torch.full_like(last_status, 4)
        if stuck is not None:
            codes = torch.where(stuck, 6, codes)
        codes = torch.where(last_status == MAX_ITER, 3, codes)
        codes = torch.where(misled, 2, codes)
        codes = torch.where(not_finite, 1, codes)
        codes = torch.where(no_grad, 0, codes)
        codes = torch.where(success, 5, codes)
        names = ["no-gradient", "non-finite", "bad-gradient", "budget", "c-search", "",
                 "local-minimum"]
        return [names[i] for i in codes.tolist()]
