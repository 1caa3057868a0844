"""Per-layer upper Lipschitz bounds (Szegedy et al. 2013, Section 4.3).

The paper bounds how much a network can amplify a perturbation: for a composition
``phi = phi_K o ... o phi_1``, ``||phi(x) - phi(x + r)|| <= (prod_k L_k) ||r||`` where each
``L_k`` is an upper bound on the Lipschitz constant of layer ``k`` for the L2 norm (its
Table 5 lists them for AlexNet). ``spectral-bounds`` computes those ``L_k`` for any torch
model, layer by layer in the order the layers are applied, each at the input size the
layer sees in a forward pass, and their product when that product is a bound.

How each kind of layer is bounded (every bound is for the L2 norm; biases never matter):

* ``Linear``: the largest singular value of the weight, exactly (see :func:`linear_norm`).
* ``Conv1d``/``Conv2d``: the paper's Fourier method (see :func:`conv_bound`): on a grid of
  ``N`` points per axis (a multiple of the stride), the circular convolution with stride
  ``s`` is block-diagonalized by the DFT; its norm is ``1/sqrt(s_h s_w)`` times the largest
  singular value, over the ``(N/s)^2`` frequencies ``xi``, of the ``D x (C s_h s_w)`` matrix
  of the kernel's DFT at the aliased frequencies ``xi + l N/s``. For zero padding the grid
  is chosen large enough that the circular convolution reproduces every output of the
  zero-padded one without wrap-around; the zero-padded layer is then "embed the input in
  the grid, convolve circularly, keep some outputs", and embedding and restriction have norm
  at most 1, so the circular norm is an upper bound (exact for circular padding when the
  stride divides the input size).
* max pooling: ``sqrt(m)``, ``m`` the largest number of pooling windows one input lies in
  (exact); the paper's value, 1, holds for non-overlapping windows and is recorded beside.
* average pooling (also adaptive): exact, from the separable averaging matrices.
* batch normalization (eval): exact, ``max |gamma| / sqrt(var + eps)``.
* ``LocalResponseNorm`` and :class:`ContrastNorm`: analytic bounds (see :func:`lrn_bound`).
* pointwise activations: the largest slope (ReLU, Tanh: 1; Sigmoid: 1/4; ...).
* anything else: unknown; it is reported without a number and no network bound is given.

The product of per-layer bounds bounds the network only if the network *is* that
composition. :func:`trace_layers` checks it on the autograd graph of one forward pass: the
input of every layer must be the output of the layer before (up to reshapes); a residual
connection, a branch or a functional operation between layers breaks the chain, and then no
network bound is given.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal, Sequence, Union

from pydantic import AfterValidator, BeforeValidator

import harness
from harness import Analysis, AnalysisResult, Context, Data, Field, Model, ModelError, \
    ParamError, hookimpl

from ..params import Shape

if TYPE_CHECKING:
    import torch
    from torch import nn

#: largest smaller side of a weight matrix whose singular values are computed directly;
#: larger ones go through the certified Lanczos route of :func:`linear_norm`
DIRECT_SVD_MAX = 768
#: complex entries per block of DFT matrices handled at once by :func:`circular_conv_norm`
FOURIER_BLOCK = 1 << 22
#: autograd nodes that only move or reshape values (norm-preserving) between two layers
PASS_THROUGH = {"View", "UnsafeView", "ReshapeAlias", "Clone", "Permute", "Transpose", "T",
                "Squeeze", "Unsqueeze", "Alias", "ToCopy", "Flatten", "Unflatten"}
#: torch-heavy names of this module, defined in :mod:`.spectral_layers` and imported on
#: first use (so that building the plugin imports no torch): the paper's contrast
#: normalization and the layer types each rule applies to
_LAYER_NAMES = ("ContrastNorm", "POINTWISE_ONE", "DISCONTINUOUS", "RESHAPE", "MAXPOOL",
                "AVGPOOL", "BATCHNORM", "KNOWN_TYPES")


def __getattr__(name: str) -> Any:
    if name in _LAYER_NAMES:
        from . import spectral_layers

        return getattr(spectral_layers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _float64() -> "torch.dtype":
    import torch

    return torch.float64


# ------------------------------------------------------------------ linear layers

def linear_norm(weight: torch.Tensor, dtype: torch.dtype | None = None,
                steps: int = 300, seed: int = 0) -> float:
    """The largest singular value of ``weight`` (any ``[out, in]`` matrix).

    Matrices whose smaller side is at most :data:`DIRECT_SVD_MAX` get their singular values
    directly. For larger ones a full SVD takes minutes on a CPU, so the value is found from
    the Gram matrix ``G = A A^T`` of the smaller side: a Lanczos estimate ``theta`` of its
    largest eigenvalue, then a certificate: a Cholesky factorization of ``mu I - G`` exists
    only if every eigenvalue of ``G`` is below ``mu``, for ``mu = theta (1 + delta)`` with
    ``delta`` as small as succeeds (from 100 units in the last place, times 10 per
    failure), plus the rounding error of the factorization. The result is ``sqrt(mu)``: an
    upper bound within a relative ``delta / 2`` of the exact value. ``dtype``: float64 by
    default.
    """
    import torch

    dtype = dtype or torch.float64
    a = weight.detach().to(dtype).flatten(1)
    if a.shape[0] > a.shape[1]:
        a = a.T
    m = a.shape[0]
    if m == 0 or a.shape[1] == 0:
        return 0.0
    if m <= DIRECT_SVD_MAX:
        return float(torch.linalg.svdvals(a)[0])
    gram = _gram(a)
    theta = _lanczos_top(gram, steps, seed)
    if theta <= 0:
        return 0.0
    rounding = 2 * (m + 1) * torch.finfo(dtype).eps
    eye = torch.eye(m, dtype=dtype, device=gram.device)
    delta = 100 * torch.finfo(dtype).eps
    while delta < 1:
        mu = theta * (1 + delta)
        _, info = torch.linalg.cholesky_ex(mu * eye - gram)
        if int(info) == 0:
            return math.sqrt(mu * (1 + rounding))
        delta *= 10
    return float(torch.linalg.svdvals(a)[0])   # not reached for a finite matrix


def _gram(a: torch.Tensor, blocks: int = 4) -> torch.Tensor:
    """``a @ a.T``, computing only the blocks on and below the diagonal (about 5/8 of the
    products) and mirroring the rest."""
    import torch

    m = a.shape[0]
    size = -(-m // blocks)
    gram = torch.empty(m, m, dtype=a.dtype, device=a.device)
    for i in range(0, m, size):
        for j in range(0, i + 1, size):
            block = a[i:i + size] @ a[j:j + size].T
            gram[i:i + size, j:j + size] = block
            if j != i:
                gram[j:j + size, i:i + size] = block.T
    return gram


def _lanczos_top(g: torch.Tensor, steps: int, seed: int) -> float:
    """The largest Ritz value of symmetric ``g`` after up to ``steps`` Lanczos steps with
    full reorthogonalization (a lower estimate of its largest eigenvalue)."""
    import torch

    n = g.shape[0]
    steps = min(steps, n)
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n, generator=gen, dtype=torch.float64, device="cpu").to(g)
    q /= q.norm()
    basis = torch.zeros(steps, n, dtype=g.dtype, device=g.device)
    alphas: list[float] = []
    betas: list[float] = []
    theta_old = -math.inf
    theta = 0.0
    for j in range(steps):
        basis[j] = q
        v = g @ q
        alpha = float(q @ v)
        alphas.append(alpha)
        for _ in range(2):
            v -= basis[:j + 1].T @ (basis[:j + 1] @ v)
        beta = float(v.norm())
        if j % 10 == 9 or j == steps - 1 or beta <= 1e-12 * max(abs(alpha), 1e-300):
            t = torch.diag(torch.tensor(alphas, dtype=torch.float64, device="cpu"))
            if betas:
                off = torch.tensor(betas, dtype=torch.float64, device="cpu")
                t += torch.diag(off, 1) + torch.diag(off, -1)
            theta = float(torch.linalg.eigvalsh(t)[-1])
            if beta <= 1e-12 * max(abs(theta), 1e-300) or abs(theta - theta_old) <= 1e-13 * abs(theta):
                break
            theta_old = theta
        betas.append(beta)
        q = v / beta
    return theta


# ------------------------------------------------------------------ convolutions

@dataclass
class ConvBound:
    """What :func:`conv_bound` found: the bound, the Fourier grid per spatial axis, whether
    the bound is the exact norm, how padding was handled and the factor it contributed."""

    value: float
    grid: tuple[int, ...]
    exact: bool
    #: "zeros", "circular" (the circular convolution on the input's grid) or "padded"
    #: (padding that copies inputs, times the bound without padding)
    method: str = "zeros"
    padding_factor: float = 1.0


def _dft(n: int, stride: int, k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``E[xi, l, a] = exp(-2 pi i a (xi + l n/stride) / n)``: the DFT of ``k`` taps on ``n``
    points at the ``stride`` aliased frequencies of each of the ``n/stride`` reduced ones."""
    import torch

    m = n // stride
    freq = torch.arange(stride, device=device).view(1, stride) * m + torch.arange(m, device=device).view(m, 1)
    phase = (freq.unsqueeze(-1) * torch.arange(k, device=device)) % n
    angle = phase.to(dtype) * (-2 * math.pi / n)
    return torch.polar(torch.ones_like(angle), angle)


def circular_conv_norm(weight: torch.Tensor, grid: Sequence[int], stride: Sequence[int],
                       groups: int = 1, dtype: torch.dtype | None = None) -> float:
    """The exact L2 operator norm of the circular convolution (cross-correlation) with
    ``weight`` ``[D, C/groups, kh, kw]`` and ``stride`` on a ``grid`` ``(N_h, N_w)`` (each a
    multiple of its stride), ``y[d, i, j] = sum w[d, c, a, b] x[c, (s_h i + a) % N_h,
    (s_w j + b) % N_w]``.

    By Parseval the operator is block-diagonal in frequency: the output's DFT at a reduced
    frequency ``xi`` is ``1/(s_h s_w)`` times the ``D x (C s_h s_w)`` matrix of the kernel's
    DFT at the aliased frequencies ``xi + (l_h N_h/s_h, l_w N_w/s_w)`` applied to the input's
    DFT there; with the DFT normalizations this gives ``norm = max_xi sigma_max(A(xi)) /
    sqrt(s_h s_w)``. Groups make the operator block-diagonal over groups: the largest norm.
    """
    import torch

    dtype = dtype or torch.float64

    d, cg, kh, kw = weight.shape
    (nh, nw), (sh, sw) = grid, stride
    if nh % sh or nw % sw:
        raise ValueError(f"grid {tuple(grid)} is not a multiple of the stride {tuple(stride)}")
    if d % groups:
        raise ValueError(f"{d} output channels do not split into {groups} groups")
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    dev = weight.device
    w = weight.detach().to(dtype).reshape(groups, d // groups, cg, kh, kw).to(cdtype)
    eh = _dft(nh, sh, kh, dtype, dev)            # [Mh, sh, kh]
    ew = _dft(nw, sw, kw, dtype, dev)            # [Mw, sw, kw]
    part = torch.einsum("gdcab,ymb->gdcaym", w, ew)   # DFT over the width first
    mh, mw = nh // sh, nw // sw
    per_row = mw * d * cg * sh * sw
    rows = max(1, FOURIER_BLOCK // max(per_row, 1))
    # a real kernel's DFT is conjugate-symmetric: A(-xi) is A(xi) conjugated, with its
    # columns permuted, so half of the reduced frequencies (xi_h <= M_h / 2) are enough
    half = mh // 2 + 1
    best = running = 0.0
    for x0 in range(0, half, rows):
        block = torch.einsum("gdcaym,xla->xygdclm", part, eh[x0:min(x0 + rows, half)])
        a = block.reshape(-1, d // groups, cg * sh * sw)
        if a.shape[1] > a.shape[2]:
            a = a.mH
        # sigma_max^2 is the largest eigenvalue of the smaller Gram matrix
        bound, running = top_eigenvalue_bound(a @ a.mH, floor=running)
        best = max(best, bound)
    return math.sqrt(best / (sh * sw))


def top_eigenvalue_bound(gram: torch.Tensor, *, floor: float = 0.0, iters: int = 8,
                         candidates: int = 4, delta: float | None = None) -> tuple[float, float]:
    """An upper bound on the largest eigenvalue of a batch ``[B, n, n]`` of Hermitian
    positive semi-definite matrices, and a lower estimate of it (at least ``floor``).

    A few steps of batched power iteration rank the matrices; the ``candidates`` ranked
    highest get their eigenvalues computed exactly, giving ``low``, the largest so far. A
    Cholesky factorization of ``mu I - G`` exists exactly when every eigenvalue of ``G`` is
    below ``mu``: with ``mu = low (1 + delta)`` (``delta`` 100 units in the last place by
    default) it certifies the other matrices at once, and any that fail get their
    eigenvalues computed exactly too. Much faster than an eigendecomposition of every
    matrix, and as tight. A relative margin for the rounding of the factorization,
    ``2 (n + 1)`` units in the last place, is added.
    """
    import torch

    b, n, _ = gram.shape
    real = torch.float64 if gram.dtype in (torch.float64, torch.complex128) else torch.float32
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(b, n, 1, generator=gen, dtype=real, device="cpu").to(gram)
    tiny = torch.finfo(real).tiny
    for _ in range(iters):
        v = gram @ v
        v = v / v.norm(dim=1, keepdim=True).clamp_min(tiny)
    est = (v.mH @ (gram @ v)).real.reshape(b)
    top = est.topk(min(candidates, b)).indices
    low = max(float(torch.linalg.eigvalsh(gram[top])[..., -1].max()), floor, 0.0)
    if delta is None:
        delta = 100 * torch.finfo(real).eps
    mu = low * (1 + delta)
    eye = torch.eye(n, dtype=gram.dtype, device=gram.device)
    _, info = torch.linalg.cholesky_ex(mu * eye - gram)
    failed = info != 0
    failed[top] = False
    exact = 0.0
    if bool(failed.any()):
        exact = float(torch.linalg.eigvalsh(gram[failed])[..., -1].max())
    margin = 1 + 2 * (n + 1) * torch.finfo(real).eps
    return max(mu, exact) * margin, max(low, exact)


def _copies(size: int, pad: tuple[int, int], mode: str) -> int:
    """The largest number of times one input index appears after padding one axis of
    ``size`` by ``pad`` in ``mode`` (reflect, replicate, circular)."""
    import torch
    import torch.nn.functional as F

    index = torch.arange(size, dtype=torch.float64, device="cpu").view(1, 1, size)
    padded = F.pad(index, pad, mode=mode).round().long().flatten()
    return int(torch.bincount(padded, minlength=size).max())


def conv_bound(weight: torch.Tensor, in_size: Sequence[int], out_size: Sequence[int],
               stride: Sequence[int], pads: Sequence[tuple[int, int]], *, groups: int = 1,
               dilation: Sequence[int] | None = None, padding_mode: str = "zeros",
               dtype: torch.dtype | None = None) -> ConvBound:
    """An upper bound on the L2 norm of a convolution layer, by the paper's Fourier method.

    ``weight`` ``[D, C/groups, *kernel]`` with one or two spatial axes; ``in_size`` and
    ``out_size`` the spatial sizes of its input and output; ``pads`` the (before, after)
    padding per axis; ``padding_mode`` as in torch.

    * zeros: per axis, the output ``i < out`` reads inputs ``s i - p + a`` (``a`` < kernel),
      all within ``[-p, in + p)``. On a circular grid of ``N >= in + p`` points that also
      holds ``out`` strided outputs (``N >= s out``), with ``N`` a multiple of ``s``, the
      reads of padding land on grid points that hold no input, so the layer equals
      restriction o (circular convolution on the grid) o (embedding of the input in the
      grid, zeros elsewhere). Embedding and restriction have norm <= 1: the circular norm
      (:func:`circular_conv_norm`, where shifting the kernel by ``p`` changes nothing) is an
      upper bound.
    * circular: the output ``i`` reads ``(s i - p + a) mod in``: when the stride divides the
      input size, the layer is the strided circular convolution on the input's own grid
      restricted to its outputs, exact when it keeps them all (``out * s == in``); else, as
      long as the outputs ``s i`` are distinct modulo ``in``, the stride-1 circular
      convolution on that grid followed by a restriction (a bound).
    * otherwise (reflect, replicate, very large circular padding): padding copies inputs; the
      padding map has norm ``sqrt(prod of the largest copy count per axis)``, and the
      convolution of the padded input is bounded as in the zeros case without padding.
    """
    import torch

    dtype = dtype or torch.float64

    nd = weight.dim() - 2
    if nd not in (1, 2):
        raise ValueError("only 1-d and 2-d convolutions are supported")
    dilation = tuple(dilation or (1,) * nd)
    w = weight.detach()
    if any(dl > 1 for dl in dilation):   # a dilated kernel is an ordinary one with zeros
        big = torch.zeros(*w.shape[:2], *[dl * (k - 1) + 1 for dl, k in zip(dilation, w.shape[2:])],
                          dtype=w.dtype, device=w.device)
        big[(slice(None), slice(None)) + tuple(slice(None, None, dl) for dl in dilation)] = w
        w = big
    in_size, out_size, stride = list(in_size), list(out_size), list(stride)
    pads = [tuple(p) for p in pads]
    if nd == 1:   # a 1-d convolution is a 2-d one of height 1
        w = w.unsqueeze(2)
        in_size, out_size, stride, pads = [1] + in_size, [1] + out_size, [1] + stride, [(0, 0)] + pads
    kernel = list(w.shape[2:])

    if all(p == (0, 0) for p in pads):
        padding_mode = "zeros"
    if padding_mode == "circular" and all(s * (o - 1) < n and max(p) <= n
                                         for n, o, s, p in zip(in_size, out_size, stride, pads)):
        if all(n % s == 0 and o * s <= n for n, o, s in zip(in_size, out_size, stride)):
            value = circular_conv_norm(w, in_size, stride, groups, dtype)
            exact = all(o * s == n for n, o, s in zip(in_size, out_size, stride))
        else:   # the stride-1 circular convolution, then a restriction to distinct outputs
            value = circular_conv_norm(w, in_size, [1] * len(in_size), groups, dtype)
            exact = False
        return ConvBound(value, tuple(in_size[-nd:]), exact, "circular")

    factor = 1.0
    if padding_mode != "zeros":
        copies = 1
        for n, p in zip(in_size, pads):
            if p != (0, 0):
                copies *= _copies(n, p, padding_mode)
        factor = math.sqrt(copies)
        in_size = [n + p[0] + p[1] for n, p in zip(in_size, pads)]
        pads = [(0, 0)] * len(pads)

    grid = []
    for n, o, s, k, (before, _after) in zip(in_size, out_size, stride, kernel, pads):
        last_read = s * (o - 1) - before + k - 1
        need = max(n + before, s * o, last_read + 1)
        grid.append(-(-need // s) * s)
    value = factor * circular_conv_norm(w, grid, stride, groups, dtype)
    return ConvBound(value, tuple(grid[-nd:]), False,
                     "zeros" if padding_mode == "zeros" else "padded", factor)


def _conv_pads(conv: nn.Module) -> list[tuple[int, int]]:
    """(before, after) padding per spatial axis, as torch applies it."""
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return [(0, 0)] * len(conv.kernel_size)
        totals = [dl * (k - 1) for dl, k in zip(conv.dilation, conv.kernel_size)]
        return [(t // 2, t - t // 2) for t in totals]
    return [(int(p), int(p)) for p in conv.padding]


# ------------------------------------------------------------------ pooling

def _pool_axis(size: int, out: int, kernel: int, stride: int, pad: int, dilation: int = 1) -> list[range]:
    """The input indices of each window along one axis of a (max or average) pooling."""
    windows = []
    for o in range(out):
        start = o * stride - pad
        windows.append([start + dilation * t for t in range(kernel)
                        if 0 <= start + dilation * t < size])
    return windows


def _adaptive_axis(size: int, out: int) -> list[list[int]]:
    """The input indices of each window along one axis of an adaptive pooling."""
    return [list(range((o * size) // out, -(-((o + 1) * size) // out))) for o in range(out)]


def max_windows(windows: list[list[int]], size: int) -> int:
    """The largest number of windows one input index lies in."""
    counts = [0] * size
    for win in windows:
        for i in win:
            counts[i] += 1
    return max(counts) if counts else 0


def _avg_axis_matrix(size: int, out: int, layer: nn.Module, axis: int, nd: int,
                     dtype: torch.dtype) -> torch.Tensor:
    """The ``[out, size]`` averaging matrix of one axis of an average pooling. Torch divides
    each 2-d window by the product of its per-axis extents (or by ``divisor_override``), so
    the 2-d operator is the Kronecker product of the axes' matrices; this runs the pooling
    with the layer's settings on that axis only, over the identity."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    eye = torch.eye(size, dtype=dtype, device="cpu")
    if isinstance(layer, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
        res = F.adaptive_avg_pool1d(eye.view(size, 1, size), out)
        return res.view(size, out).T
    def pick(v: Any) -> int:
        return v if isinstance(v, int) else v[axis]
    k, s, p = pick(layer.kernel_size), pick(layer.stride), pick(layer.padding)
    kw = dict(ceil_mode=layer.ceil_mode, count_include_pad=layer.count_include_pad)
    if nd == 2:
        override = getattr(layer, "divisor_override", None)
        res = F.avg_pool2d(eye.view(size, 1, size, 1), (k, 1), (s, 1), (p, 0),
                           divisor_override=1 if override else None, **kw)
    else:
        res = F.avg_pool1d(eye.view(size, 1, size), k, s, p, **kw)
    if res.shape[2] != out:
        raise ValueError(f"pooling axis {axis}: expected {out} outputs, got {res.shape[2]}")
    return res.reshape(size, out).T


# ------------------------------------------------------------------ normalizations

def lrn_bound(size: int, alpha: float, beta: float, k: float) -> float:
    """An upper bound on the L2 Lipschitz constant of torch's ``LocalResponseNorm``,
    ``b_c = a_c / (k + alpha/n sum_{c' in W(c)} a_c'^2)^beta`` (``n`` = size, ``W(c)`` the
    window of ``n`` channels around ``c``), for ``alpha >= 0``, ``beta > 0``, ``k > 0``.

    Its Jacobian at each position is ``diag(D^-beta) - (2 alpha beta / n) B`` with
    ``|B_cc'| = |a_c a_c'| D_c^(-beta-1)`` for ``c'`` in ``W(c)``. The first part has norm
    ``<= k^-beta``. With ``g = max_t t (k+t)^(-beta-1) = k^-beta (beta/(beta+1))^(beta+1) /
    beta`` (times ``n/alpha``), the rows of ``|B|`` sum to at most ``g (1 + sqrt n)/2`` and
    the columns to ``g (n + 1)/2`` (Cauchy-Schwarz and AM-GM within a window), so by the
    Schur test ``||J|| <= k^-beta (1 + (beta/(beta+1))^(beta+1) sqrt((1 + sqrt n)(n + 1)))``.
    The paper's contrast-normalization value would be ``k^-beta`` alone (the diagonal part).
    """
    base = k ** -beta
    if alpha == 0:
        return base
    return base * (1 + (beta / (beta + 1)) ** (beta + 1) * math.sqrt((1 + math.sqrt(size)) * (size + 1)))


# ------------------------------------------------------------------ tracing the layers

@dataclass
class LayerCall:
    """One application of a layer in a forward pass: its module path (with ``#2``, ``#3``
    for a module applied again), the module, and its input and output shapes (no batch)."""

    path: str
    label: str
    module: nn.Module
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    in_node: Any = field(default=None, repr=False)
    out_node: Any = field(default=None, repr=False)


@dataclass
class Trace:
    """The layers of a model in the order applied, and whether the model is their
    sequential composition (``why_not`` says what breaks the chain when it is not)."""

    calls: list[LayerCall]
    sequential: bool
    why_not: str = ""


def is_known(module: nn.Module) -> bool:
    """Whether :func:`bound_layer` has a rule for this module's type."""
    from .spectral_layers import KNOWN_TYPES

    return isinstance(module, KNOWN_TYPES) or _is_normalize(module)


def _atoms(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The layers of ``module``: known layer types and childless modules, not descending
    into either."""
    if not prefix and (is_known(module) or not any(True for _ in module.children())):
        return [("", module)]
    out = []
    for name, child in module.named_children():
        path = f"{prefix}.{name}" if prefix else name
        if is_known(child) or not any(True for _ in child.children()):
            out.append((path, child))
        else:
            out += _atoms(child, path)
    return out


def _op(node: Any) -> str:
    return re.sub(r"Backward\d*$", "", type(node).__name__)


def _chain(node: Any, target: Any) -> str:
    """"" when ``node`` derives from ``target`` through reshapes only, else what is in
    between."""
    if target is None:
        return "an output without autograd history"
    for _ in range(10_000):
        if node is target:
            return ""
        if node is None:
            return "a value that does not depend on it"
        name = _op(node)
        parents = [f for f, _ in node.next_functions if f is not None]
        if name not in PASS_THROUGH:
            return f"the operation {type(node).__name__}"
        if len(parents) != 1:
            return f"the operation {type(node).__name__} with {len(parents)} inputs"
        node = parents[0]
    return "a chain of operations too long to follow"


def _first_tensor(value: Any) -> torch.Tensor | None:
    import torch

    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


def trace_layers(module: nn.Module, input_shape: Sequence[int],
                 device: torch.device | str = "cpu") -> Trace:
    """Run ``module`` on one zero input of shape ``[1, *input_shape]`` with hooks on its
    layers (see :func:`_atoms`), and check on the autograd graph that it is their
    sequential composition."""
    import torch

    atoms = _atoms(module)
    calls: list[LayerCall] = []
    pending: dict[int, tuple[tuple[int, ...], Any]] = {}
    seen: dict[str, int] = {}

    def pre(path: str):
        def hook(mod: nn.Module, args: tuple) -> None:
            x = _first_tensor(args)
            pending[id(mod)] = (tuple(x.shape[1:]) if x is not None else (),
                                x.grad_fn if x is not None else None)
        return hook

    def post(path: str):
        def hook(mod: nn.Module, args: tuple, out: Any) -> None:
            y = _first_tensor(out)
            in_shape, in_node = pending.pop(id(mod), ((), None))
            seen[path] = seen.get(path, 0) + 1
            label = path or "(model)"
            if seen[path] > 1:
                label += f"#{seen[path]}"
            calls.append(LayerCall(path, label, mod, in_shape,
                                   tuple(y.shape[1:]) if y is not None else (),
                                   in_node, y.grad_fn if y is not None else None))
        return hook

    handles = []
    try:
        for path, mod in atoms:
            handles.append(mod.register_forward_pre_hook(pre(path)))
            handles.append(mod.register_forward_hook(post(path)))
        params = next(iter(module.parameters()), None)
        dtype = params.dtype if params is not None and params.is_floating_point() else torch.float32
        leaf = torch.zeros(1, *input_shape, dtype=dtype, device=device, requires_grad=True)
        x = leaf.clone()
        with torch.enable_grad():
            try:
                out = module(x)
            except Exception as exc:
                raise ModelError(f"the model fails on an input of shape {[1, *input_shape]}: "
                                 f"{type(exc).__name__}: {exc}", hint="check input_shape") from None
    finally:
        for h in handles:
            h.remove()

    why = ""
    prev_node, prev_name = x.grad_fn, "the model's input"
    for call in calls:
        gap = _chain(call.in_node, prev_node)
        if gap:
            why = f"{gap} lies between {prev_name} and the input of {call.label}"
            break
        prev_node, prev_name = call.out_node, f"the output of {call.label}"
    if not why:
        y = _first_tensor(out)
        gap = "a non-tensor output" if y is None else _chain(y.grad_fn, prev_node)
        if gap:
            why = f"{gap} lies between {prev_name} and the model's output"
    if not calls:
        why = why or "no layers were applied"
    return Trace(calls, not why, why)


# ------------------------------------------------------------------ one layer

@dataclass
class LayerBound:
    """The bound of one layer: ``value`` (None: unknown), the rule used (``kind``, a key
    of :data:`NOTES`), extra numbers for the results, and why it is unknown if so."""

    value: float | None
    kind: str
    numbers: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    #: for pointwise and reshaping layers: "<type> <value>", listed in the note of the kind
    what: str = ""


#: one sentence per kind of bound: what it is and what it assumes
NOTES = {
    "linear": "Linear: the largest singular value of the weight matrix, exact (an SVD, or for "
              "large matrices a Lanczos estimate on W W^T certified by a Cholesky factorization "
              "of mu I - W W^T, at most about 1e-12 above the exact value in float64).",
    "conv": "Convolutions (zero padding): the paper's Fourier bound, 1/sqrt(s_h s_w) times the "
            "largest singular value over frequencies of the kernel's DFT at the s_h s_w aliased "
            "frequencies, computed for a circular convolution on a grid (fourier_grid) large "
            "enough to hold the zero-padded input and every output without wrap-around; "
            "embedding the input in the grid and dropping the extra outputs have norm <= 1, so "
            "it is an upper bound (a little above the true norm, which boundary effects lower).",
    "conv-circular": "Convolutions with circular padding: the circular convolution on the "
                     "input's own grid (strided if the stride divides the input size, else with "
                     "stride 1), restricted to the layer's outputs; the exact norm when the "
                     "stride divides the input size and the outputs cover the grid.",
    "conv-padded": "Convolutions with reflect/replicate padding (or circular padding the "
                   "stride does not fit): sqrt(largest number of copies of one input made by "
                   "the padding) times the Fourier bound of the convolution of the padded input.",
    "pointwise": "Elementwise activations ({what}): the largest slope of the function "
                 "(Lipschitz in each coordinate, so in L2).",
    "discontinuous": "Discontinuous layers ({what}): no Lipschitz constant at all (at a jump an "
                     "arbitrarily small change of the input moves the output by a fixed amount), "
                     "so their bound is infinite, and so is the network's.",
    "softmax": "Softmax: 1 (its Jacobian diag(p) - p p^T has eigenvalues in [0, max p]).",
    "reshape": "{what}: 1 (they only move values; dropout is the identity in eval mode).",
    "maxpool": "Max pooling: sqrt(m), m the largest number of windows one input lies in "
               "(exact: a single input raised in all its windows attains it); the paper's "
               "value 1 (paper_bound) holds only for non-overlapping windows (m = 1).",
    "avgpool": "Average pooling: exact, the product over the axes of the largest singular "
               "values of the averaging matrices (torch's windows and divisors separate by axis).",
    "batchnorm": "Batch normalization in eval mode: exact, max over channels of "
                 "|gamma| / sqrt(running_var + eps) (fixed running statistics assumed).",
    "lrn": "LocalResponseNorm: k^-beta (1 + (beta/(beta+1))^(beta+1) sqrt((1 + sqrt n)(n + 1))), "
           "a proven bound on its Jacobian's norm at every input (Schur test on the "
           "off-diagonal part); the paper's contrast-normalization value k^-beta (paper_bound) "
           "is the Jacobian's norm at 0 and bounds its diagonal part, but is not proven to "
           "bound the whole.",
    "contrast": "Contrast normalization x / (eps + ||x||^2)^gamma: eps^-gamma, as in the paper, "
                "exact for 0 <= gamma <= 1 (attained at x = 0).",
    "normalize": "Input normalization (x - mean) / std: 1 / min |std|.",
}

#: largest slopes: GELU (exact erf form) 1.12880 at x = sqrt 2, SiLU 1.09984, rounded up
GELU_SLOPE, SILU_SLOPE = 1.129, 1.1


def _is_normalize(module: nn.Module) -> bool:
    """The torch model plugin's ``(x - mean) / std`` wrapper."""
    import torch

    return type(module).__name__ == "Normalize" and isinstance(getattr(module, "std", None), torch.Tensor)


def _unknown(reason: str) -> LayerBound:
    return LayerBound(None, "unknown", reason=reason)


def bound_layer(call: LayerCall, dtype: torch.dtype | None = None) -> LayerBound:
    """The upper Lipschitz bound of one applied layer (see :data:`NOTES`), in ``dtype``
    (float64 by default)."""
    from torch import nn

    from .spectral_layers import BATCHNORM, MAXPOOL, RESHAPE, AVGPOOL, ContrastNorm

    dtype = dtype or _float64()
    mod = call.module
    name = type(mod).__name__
    if getattr(mod, "training", False) and isinstance(mod, RESHAPE + BATCHNORM):
        return _unknown(f"{name} is in training mode")
    if isinstance(mod, nn.Linear):
        return LayerBound(linear_norm(mod.weight, dtype), "linear",
                          {"in_features": mod.in_features, "out_features": mod.out_features})
    if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
        nd = mod.weight.dim() - 2
        if len(call.in_shape) != nd + 1:
            return _unknown(f"{name} got an input of shape {list(call.in_shape)} (unbatched?)")
        res = conv_bound(mod.weight, call.in_shape[1:], call.out_shape[1:], mod.stride,
                         _conv_pads(mod), groups=mod.groups, dilation=mod.dilation,
                         padding_mode=mod.padding_mode, dtype=dtype)
        kind = {"zeros": "conv", "circular": "conv-circular", "padded": "conv-padded"}[res.method]
        numbers = {"in_channels": mod.in_channels, "out_channels": mod.out_channels,
                   "kernel": mod.kernel_size[-1], "stride": mod.stride[-1]}
        if mod.groups > 1:
            numbers["groups"] = mod.groups
        numbers["fourier_grid"] = res.grid[-1]
        return LayerBound(res.value, kind, numbers)
    if isinstance(mod, RESHAPE):
        return LayerBound(1.0, "reshape", what=name)
    jump = _jump(mod)
    if jump:
        return LayerBound(math.inf, "discontinuous", reason=jump, what=f"{name}: {jump}")
    slope = _slope(mod)
    if slope is not None:
        return LayerBound(slope, "pointwise", what=f"{name} {slope:.4g}")
    if isinstance(mod, nn.GELU):
        return _unknown("GELU with the tanh approximation")
    if isinstance(mod, nn.Softmax):
        return LayerBound(1.0, "softmax")
    if isinstance(mod, MAXPOOL + AVGPOOL):
        return _pool_bound(call, dtype)
    if isinstance(mod, BATCHNORM):
        if mod.running_var is None:
            return _unknown(f"{name} without running statistics normalizes by the batch")
        scale = (mod.running_var.detach().to(dtype) + mod.eps).rsqrt()
        if mod.weight is not None:
            scale = scale * mod.weight.detach().to(dtype).abs()
        return LayerBound(float(scale.max()), "batchnorm")
    if isinstance(mod, nn.LocalResponseNorm):
        if not (mod.alpha >= 0 and mod.beta > 0 and mod.k > 0):
            return _unknown("LocalResponseNorm with alpha < 0, beta <= 0 or k <= 0")
        return LayerBound(lrn_bound(mod.size, mod.alpha, mod.beta, mod.k), "lrn",
                          {"paper_bound": mod.k ** -mod.beta})
    if isinstance(mod, ContrastNorm):
        if not 0 <= mod.gamma <= 1:
            return _unknown("contrast normalization with gamma outside [0, 1]")
        return LayerBound(mod.eps ** -mod.gamma, "contrast", {"paper_bound": mod.eps ** -mod.gamma})
    if _is_normalize(mod):
        return LayerBound(float(1 / mod.std.detach().to(dtype).abs().min()), "normalize")
    return _unknown(f"no bound is known for {name}")


def _jump(mod: nn.Module) -> str:
    """Where an elementwise function jumps (so has no Lipschitz constant), or ""."""
    from torch import nn

    if isinstance(mod, nn.Hardshrink) and mod.lambd > 0:
        return f"it jumps by {mod.lambd:g} at +-{mod.lambd:g}"
    if isinstance(mod, nn.Threshold) and mod.value != mod.threshold:
        return f"it jumps from {mod.value:g} to {mod.threshold:g} at {mod.threshold:g}"
    return ""


def _slope(mod: nn.Module) -> float | None:
    """The largest slope of an elementwise activation, or None."""
    from torch import nn

    from .spectral_layers import DISCONTINUOUS, POINTWISE_ONE

    if isinstance(mod, POINTWISE_ONE):
        return 1.0
    if isinstance(mod, DISCONTINUOUS):  # without a jump: Hardshrink(0) and Threshold(t, t)
        return 1.0
    if isinstance(mod, nn.LeakyReLU):
        return max(1.0, abs(mod.negative_slope))
    if isinstance(mod, nn.PReLU):
        return max(1.0, float(mod.weight.detach().abs().max()))
    if isinstance(mod, nn.ELU):
        return max(1.0, float(mod.alpha))
    if isinstance(mod, nn.SELU):
        return 1.0507009873554805 * 1.6732632423543772
    if isinstance(mod, nn.Sigmoid):
        return 0.25
    if isinstance(mod, nn.Hardsigmoid):
        return 1 / 6
    if isinstance(mod, nn.GELU) and mod.approximate == "none":
        return GELU_SLOPE
    if isinstance(mod, nn.SiLU):
        return SILU_SLOPE
    if isinstance(mod, nn.Hardswish):
        return 1.5
    return None


def _pool_bound(call: LayerCall, dtype: torch.dtype) -> LayerBound:
    import torch
    from torch import nn

    from .spectral_layers import MAXPOOL

    mod = call.module
    nd = 2 if isinstance(mod, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d,
                               nn.AdaptiveAvgPool2d)) else 1
    sizes, outs = call.in_shape[-nd:], call.out_shape[-nd:]
    if len(call.in_shape) < nd + 1 or len(call.out_shape) < nd + 1:
        return _unknown(f"{type(mod).__name__} got an input of shape {list(call.in_shape)}")

    def pick(v: Any, axis: int) -> int:
        return v if isinstance(v, int) else v[axis]

    if isinstance(mod, MAXPOOL):
        m = 1
        for axis, (n, o) in enumerate(zip(sizes, outs)):
            if isinstance(mod, (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)):
                windows = _adaptive_axis(n, o)
            else:
                windows = _pool_axis(n, o, pick(mod.kernel_size, axis), pick(mod.stride, axis),
                                     pick(mod.padding, axis), pick(mod.dilation, axis))
            m *= max_windows(windows, n)
        return LayerBound(math.sqrt(m), "maxpool", {"paper_bound": 1.0})
    value = 1.0
    for axis, (n, o) in enumerate(zip(sizes, outs)):
        a = _avg_axis_matrix(n, o, mod, axis, nd, dtype)
        value *= float(torch.linalg.svdvals(a)[0])
    override = getattr(mod, "divisor_override", None)
    if override:
        value /= override
    return LayerBound(value, "avgpool")


# ------------------------------------------------------------------ the analysis

def _distinct_paths(paths: list[str]) -> list[str]:
    if any(not p.strip() for p in paths):
        raise ValueError("holds an empty path")
    if len(set(paths)) != len(paths):
        raise ValueError("names a path twice")
    return paths


#: module paths, such as ``features.0``: a non-empty list, each named once
_Paths = Annotated[list[str], BeforeValidator(lambda v: list(v) if isinstance(v, tuple) else v),
                   Field(min_length=1), AfterValidator(_distinct_paths)]


class SpectralBounds(Analysis):
    """Upper Lipschitz bounds (L2) of every layer of a torch model and of the network, as
    the paper's Table 5. Results: ``upper_bound`` per ``layer=<module path>`` and for
    ``network`` (NaN when the product is not a bound), ``paper_bound`` where the paper's
    rule gives another value (max pooling, local response normalization), and with
    ``details`` the layers' sizes (``in_channels``, ``out_channels``, ``kernel``, ``stride``,
    ``fourier_grid``, ``in_features``, ``out_features``).

    Parameters: ``input_shape`` (default: the model's) sets the size every layer sees;
    ``layers`` restricts the reported layers to these module paths (or everything under
    them), the product still runs over all; ``precision`` of the linear algebra;
    ``details``: also record the layers' sizes.
    """

    needs_data = False
    needs_module = True

    class Params(harness.Params):
        input_shape: Union[Shape, None] = Field(
            None, description="the shape of one input, without the batch dimension, that "
                              "sets the size every layer sees (default: the model's)")
        layers: Union[_Paths, None] = Field(
            None, description="report only these module paths (and what is under them); the "
                              "network bound still runs over every layer")
        precision: Literal["float64", "float32"] = Field(
            "float64", description="the precision of the linear algebra")
        details: bool = Field(True, description="also record each layer's sizes (channels, "
                                                "kernel, stride, Fourier grid, features)")

    def _reported(self, call: LayerCall) -> bool:
        if self.layers is None:
            return True
        return any(call.path == p or call.path.startswith(p + ".") for p in self.layers)

    def trace(self, model: Model) -> Trace:
        """The model's layers in the order applied (checking ``layers`` against them)."""
        if model.module is None:
            raise ModelError(f"model {model.name!r} is not a torch module; spectral bounds "
                             "need its layers")
        shape = tuple(self.input_shape) if self.input_shape else tuple(model.input_shape)
        trace = trace_layers(model.module, shape, model.device)
        if self.layers is not None:
            paths = {c.path for c in trace.calls}
            missing = [p for p in self.layers
                       if not any(q == p or q.startswith(p + ".") for q in paths)]
            if missing:
                raise ParamError("layers", f"no layer {missing[0]!r} is applied in the model",
                                 hint="layers: " + ", ".join(c.path for c in trace.calls[:40]))
        return trace

    def bounds(self, model: Model) -> tuple[Trace, list[LayerBound]]:
        """The traced layers and the bound of each, in the order applied."""
        import torch

        trace = self.trace(model)
        dtype = getattr(torch, self.precision)
        with torch.no_grad():
            return trace, [bound_layer(call, dtype) for call in trace.calls]

    def run(self, model: Model, data: Data | None, ctx: Context) -> AnalysisResult:
        trace, bounds = self.bounds(model)
        res = AnalysisResult()
        shape = list(self.input_shape or model.input_shape)
        res.notes.append(
            f"Upper bounds on each layer's Lipschitz constant for the L2 norm, at the sizes "
            f"the layers see for an input of shape {shape}, layers in the order applied; "
            "biases do not change them. Small bounds rule out adversarial examples; large "
            "ones do not prove they exist.")
        kinds: list[str] = []
        whats: dict[str, list[str]] = {}
        product, paper_product = 1.0, 1.0
        unknown: list[str] = []
        for call, b in zip(trace.calls, bounds):
            if b.value is None:
                unknown.append(f"{call.label} ({b.reason})")
            else:
                product *= b.value
                paper_product *= b.numbers.get("paper_bound", b.value)
                if b.kind not in kinds:
                    kinds.append(b.kind)
                if b.what and b.what not in whats.setdefault(b.kind, []):
                    whats[b.kind].append(b.what)
            if not self._reported(call):
                continue
            param = f"layer={call.label}"
            res.add("upper_bound", math.nan if b.value is None else b.value, param)
            for metric, value in b.numbers.items():
                if metric == "paper_bound" or self.details:
                    res.add(metric, value, param)
        res.notes += [NOTES[k].replace("{what}", ", ".join(whats.get(k, []))) for k in kinds]
        infinite = [f"{call.label} ({b.what})" for call, b in zip(trace.calls, bounds)
                    if b.value is not None and math.isinf(b.value)]
        valid = trace.sequential and not unknown
        if infinite:  # bounds the network whatever its shape: it has no Lipschitz constant
            res.add("upper_bound", math.inf, "network")
            res.notes.append(
                "Network: infinite, because layer(s) " + "; ".join(infinite) + " have no "
                "Lipschitz constant: no finite number bounds how far the output moves.")
            return res
        res.add("upper_bound", product if valid else math.nan, "network")
        if valid:
            if paper_product != product:
                res.add("paper_bound", paper_product, "network")
            res.notes.append(
                "Network: the product of the layer bounds, a bound because the model was checked "
                "to be a sequential composition (on the autograd graph of one forward pass, each "
                "layer's input is the previous layer's output, up to reshapes).")
        else:
            res.add("layer_product", product, "network")
        if unknown:
            res.notes.append(
                "No bound is known for layer(s) " + "; ".join(unknown) + ": recorded without a "
                "number, so the network product is not a bound (layer_product multiplies the "
                "known ones only).")
        if not trace.sequential:
            res.notes.append(
                f"The model is not a sequential composition of its layers ({trace.why_not}), "
                "e.g. a residual connection or a branch: a product of per-layer bounds does not "
                "bound it, so no network bound is given (layer_product is only the product).")
        return res


@hookimpl
def register_analyses(register):
    register("spectral-bounds", SpectralBounds)
