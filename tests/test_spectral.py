"""spectral-bounds: every per-layer bound checked against the layer's own operator.

The reference for a linear layer (convolution, pooling, batch norm) is its exact L2 norm,
from the dense matrix of the map (small sizes) or from power iteration through autograd
(vector-Jacobian products); for nonlinear layers, the largest ratio a search over inputs
and perturbations finds. A bound must never be below the reference; where the paper's
method is exact (circular padding with the stride dividing the input size, linear layers,
pooling, batch norm) it must equal it.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness import Context, Model, ParamError
from harness.plugins import default_registry
from harness.testing import run_suite_text
from harness_plugins.analyses import spectral as sp
from harness_plugins.analyses.spectral import (ContrastNorm, SpectralBounds, circular_conv_norm,
                                               conv_bound, linear_norm, lrn_bound)

F64 = torch.float64


def dense_norm(op, in_shape) -> float:
    """The exact L2 norm of the linear map ``op`` on inputs of ``in_shape`` (no batch): the
    largest singular value of its dense matrix."""
    n = math.prod(in_shape)
    basis = torch.eye(n, dtype=F64).view(n, *in_shape)
    with torch.no_grad():
        return float(torch.linalg.svdvals(op(basis).reshape(n, -1))[0])


def power_norm(op, in_shape, iters: int = 400, seed: int = 0) -> float:
    """Power iteration on op^T op through autograd (a jvp/vjp pair per step): a lower
    estimate of the norm of the linear map ``op``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, *in_shape, generator=gen, dtype=F64)
    for _ in range(iters):
        y, back = torch.func.vjp(op, x)
        x = back(y)[0]
        x = x / x.norm()
    return float(op(x).norm())


def records(res, metric="upper_bound"):
    return {r["param"]: r["value"] for r in res.records if r["metric"] == metric}


def analyse(module, input_shape, **params):
    model = Model(module.double() if params.pop("double", True) else module,
                  input_shape=input_shape, num_classes=1)
    return SpectralBounds(**params).run(model, None, Context())


# ------------------------------------------------------------------ convolutions

# (in channels, out channels, kernel, stride, padding, height, width, groups, dilation, mode)
ZERO_PADDED = [
    (1, 1, 3, 1, 1, 8, 8, 1, 1),
    (2, 3, 3, 2, 1, 9, 7, 1, 1),        # input size not a multiple of the stride
    (3, 2, 5, 3, 2, 11, 11, 1, 1),
    (2, 4, 4, 4, 0, 16, 13, 1, 1),
    (3, 4, 11, 4, 2, 19, 19, 1, 1),     # AlexNet's first layer, on a small input
    (4, 6, 3, 2, 1, 10, 10, 2, 1),      # grouped
    (2, 2, 3, 1, 2, 8, 8, 1, 2),        # dilated
    (2, 3, 1, 2, 3, 5, 5, 1, 1),        # padding larger than the kernel
]


@pytest.mark.parametrize("c,d,k,s,p,h,w,g,dil", ZERO_PADDED)
def test_zero_padded_conv_bound_is_valid_and_the_circular_norm_of_its_grid(c, d, k, s, p, h, w, g, dil):
    gen = torch.Generator().manual_seed(c * 100 + k * 10 + s)
    weight = torch.randn(d, c // g, k, k, generator=gen, dtype=F64)
    conv = lambda x: F.conv2d(x, weight, stride=s, padding=p, dilation=dil, groups=g)
    out = conv(torch.zeros(1, c, h, w, dtype=F64)).shape[2:]
    true = dense_norm(conv, (c, h, w))
    b = conv_bound(weight, (h, w), out, (s, s), [(p, p), (p, p)], groups=g, dilation=(dil, dil))
    assert b.value >= true * (1 - 1e-9)
    assert not b.exact and b.method == "zeros"
    assert all(n % s == 0 for n in b.grid)
    # the number is exactly the norm of the circular convolution on the chosen grid
    # (Parseval, checked against the dense operator), not some looser quantity
    keff = dil * (k - 1) + 1
    big = torch.zeros(d, c // g, keff, keff, dtype=F64)
    big[:, :, ::dil, ::dil] = weight
    nh, nw = b.grid

    def circular(x):
        y = F.conv2d(F.pad(x, (0, keff - 1, 0, keff - 1), mode="circular"), big, stride=s, groups=g)
        return y[..., :nh // s, :nw // s]

    assert b.value == pytest.approx(dense_norm(circular, (c, nh, nw)), rel=1e-9)
    # and for these random kernels the boundary effects it ignores are small
    assert b.value <= 1.15 * true


def test_zero_padding_needs_the_larger_grid():
    """On the input's own grid the circular convolution wraps the padding around onto the
    input, and its norm can fall below the zero-padded layer's: not a bound. The grid with
    room for the padding gives one."""
    weight = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(198), dtype=F64)
    conv = lambda x: F.conv2d(x, weight, padding=2)
    true = dense_norm(conv, (1, 3, 3))
    assert circular_conv_norm(weight, (3, 3), (1, 1)) < 0.9 * true     # the naive grid
    b = conv_bound(weight, (3, 3), (4, 4), (1, 1), [(2, 2), (2, 2)])
    assert b.grid == (5, 5) and b.value >= true * (1 - 1e-9)


# exact cases: circular padding, the stride divides the input size, the outputs cover it
CIRCULAR_EXACT = [
    (2, 3, 3, 1, 1, 8, 8),
    (2, 3, 3, 2, 1, 8, 10),
    (3, 2, 3, 3, 1, 9, 9),
    (3, 2, 5, 4, 2, 12, 8),
    (1, 4, 5, 1, 2, 6, 6),
]


@pytest.mark.parametrize("c,d,k,s,p,h,w", CIRCULAR_EXACT)
def test_circular_conv_bound_is_exact(c, d, k, s, p, h, w):
    gen = torch.Generator().manual_seed(7 * c + k + s)
    weight = torch.randn(d, c, k, k, generator=gen, dtype=F64)
    conv = lambda x: F.conv2d(F.pad(x, (p, p, p, p), mode="circular"), weight, stride=s)
    out = conv(torch.zeros(1, c, h, w, dtype=F64)).shape[2:]
    b = conv_bound(weight, (h, w), out, (s, s), [(p, p), (p, p)], padding_mode="circular")
    assert b.exact and b.method == "circular"
    assert b.value == pytest.approx(dense_norm(conv, (c, h, w)), rel=1e-9)


@pytest.mark.parametrize("mode,s,p,h", [("circular", 2, 1, 7), ("circular", 3, 1, 8),
                                        ("reflect", 2, 1, 8), ("replicate", 2, 2, 7),
                                        ("reflect", 1, 2, 6)])
def test_other_padding_modes_give_valid_bounds(mode, s, p, h):
    gen = torch.Generator().manual_seed(s + p + h)
    weight = torch.randn(3, 2, 3, 3, generator=gen, dtype=F64)
    conv = lambda x: F.conv2d(F.pad(x, (p, p, p, p), mode=mode), weight, stride=s)
    out = conv(torch.zeros(1, 2, h, h, dtype=F64)).shape[2:]
    b = conv_bound(weight, (h, h), out, (s, s), [(p, p), (p, p)], padding_mode=mode)
    true = dense_norm(conv, (2, h, h))
    assert true * (1 - 1e-9) <= b.value <= 3 * true
    assert not b.exact


def test_conv_bound_against_power_iteration_through_autograd():
    """A size too big for a dense matrix: AlexNet's first layer on a 43x43 input."""
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(16, 3, 11, 11, generator=gen, dtype=F64) / 20
    conv = lambda x: F.conv2d(x, weight, stride=4, padding=2)
    b = conv_bound(weight, (43, 43), (10, 10), (4, 4), [(2, 2), (2, 2)])
    est = power_norm(conv, (3, 43, 43))
    assert est * (1 - 1e-9) <= b.value <= 1.1 * est
    # circular padding, 44 = 4 * 11: exact, and power iteration converges to it
    circ = lambda x: F.conv2d(F.pad(x, (5, 5, 5, 5), mode="circular"), weight, stride=4)
    assert circ(torch.zeros(1, 3, 44, 44, dtype=F64)).shape[2:] == (11, 11)
    b = conv_bound(weight, (44, 44), (11, 11), (4, 4), [(5, 5), (5, 5)], padding_mode="circular")
    assert b.exact
    assert b.value == pytest.approx(power_norm(circ, (3, 44, 44), iters=600), rel=1e-4)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_conv1d_and_same_padding_layers():
    torch.manual_seed(0)
    # an even kernel with padding="same" pads one more after than before
    net = nn.Sequential(nn.Conv1d(2, 3, 4, stride=2, padding=1), nn.Conv1d(3, 3, 4, padding="same"))
    res = analyse(net, (2, 13))
    bounds = records(res)
    conv0 = lambda x: F.conv1d(x, net[0].weight, stride=2, padding=1)
    conv1 = lambda x: F.conv1d(x, net[1].weight, padding="same")
    assert bounds["layer=0"] >= dense_norm(conv0, (2, 13)) * (1 - 1e-9)
    assert bounds["layer=1"] >= dense_norm(conv1, (3, 6)) * (1 - 1e-9)
    assert bounds["layer=1"] <= 1.15 * dense_norm(conv1, (3, 6))


def test_circular_conv_norm_of_a_subsampling_is_one():
    """A 1x1 identity kernel with stride s only keeps every s-th pixel: norm exactly 1 (the
    1/sqrt(s_h s_w) scaling of the aliased frequencies)."""
    for s in (1, 2, 3, 4):
        assert circular_conv_norm(torch.ones(1, 1, 1, 1), (12, 12), (s, s)) == pytest.approx(1, rel=1e-12)


# ------------------------------------------------------------------ linear layers

@pytest.mark.parametrize("shape", [(7, 13), (40, 3), (1, 9), (64, 64)])
def test_linear_bound_is_the_largest_singular_value(shape):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    assert linear_norm(w) == pytest.approx(float(torch.linalg.matrix_norm(w.double(), ord=2)), rel=1e-12)


def test_large_linear_bound_is_certified_and_tight(monkeypatch):
    monkeypatch.setattr(sp, "DIRECT_SVD_MAX", 16)
    for shape in [(60, 90), (150, 40)]:
        w = torch.randn(*shape, generator=torch.Generator().manual_seed(shape[0]), dtype=F64)
        exact = float(torch.linalg.matrix_norm(w, ord=2))
        got = linear_norm(w)
        assert exact <= got <= exact * (1 + 1e-8)
    # a matrix with a repeated top singular value (no gap) is still bounded correctly
    q, _ = torch.linalg.qr(torch.randn(50, 50, dtype=F64, generator=torch.Generator().manual_seed(3)))
    w = q * torch.tensor([3.0] * 5 + [1.0] * 45, dtype=F64)
    assert 3.0 <= linear_norm(w) <= 3.0 * (1 + 1e-8)


# ------------------------------------------------------------------ pooling

def _spike_ratios(pool, shape):
    """||pool(e_i)|| on a zero background, for every input pixel i: for max pooling the
    largest is the exact Lipschitz constant (a single pixel raised in all its windows)."""
    n = math.prod(shape)
    basis = torch.eye(n, dtype=F64).view(n, *shape)
    return pool(basis).reshape(n, -1).norm(dim=1)


@pytest.mark.parametrize("pool,shape,expected", [
    (nn.MaxPool2d(2), (2, 8, 8), 1.0),                            # non-overlapping: the paper's 1
    (nn.MaxPool2d(3, 2), (1, 9, 9), 2.0),                         # AlexNet's overlapping pooling
    (nn.MaxPool2d(3, 2, padding=1, ceil_mode=True), (1, 8, 7), None),
    (nn.MaxPool2d(3, 1, dilation=2), (1, 9, 9), 3.0),
    (nn.MaxPool2d((3, 2), (1, 2)), (1, 6, 6), math.sqrt(3)),
    (nn.AdaptiveMaxPool2d((3, 4)), (1, 8, 9), None),
    (nn.MaxPool1d(4, 2), (3, 11), math.sqrt(2)),
])
def test_max_pool_bound_is_the_true_lipschitz_constant(pool, shape, expected):
    res = analyse(nn.Sequential(pool), shape)
    bound = records(res)["layer=0"]
    assert records(res, "paper_bound")["layer=0"] == 1.0
    if expected is not None:
        assert bound == pytest.approx(expected, rel=1e-12)
    # attained: some single pixel lies in that many windows
    assert float(_spike_ratios(pool, shape).max()) == pytest.approx(bound, rel=1e-12)
    # and never exceeded by random inputs and perturbations, small or large
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2000, *shape, generator=gen, dtype=F64)
    r = torch.randn(2000, *shape, generator=gen, dtype=F64)
    r = r * torch.logspace(-4, 1, 2000, dtype=F64).view(-1, *[1] * len(shape))
    ratio = (pool(x + r) - pool(x)).flatten(1).norm(dim=1) / r.flatten(1).norm(dim=1)
    assert float(ratio.max()) <= bound * (1 + 1e-12)


@pytest.mark.parametrize("pool,shape", [
    (nn.AvgPool2d(2), (1, 8, 8)),
    (nn.AvgPool2d(3, 2), (2, 9, 9)),
    (nn.AvgPool2d(3, 2, padding=1, count_include_pad=False, ceil_mode=True), (1, 9, 8)),
    (nn.AvgPool2d(3, 2, padding=1, ceil_mode=True), (1, 8, 9)),
    (nn.AvgPool2d(3, 2, divisor_override=5), (1, 9, 7)),
    (nn.AdaptiveAvgPool2d((3, 4)), (1, 7, 9)),
    (nn.AdaptiveAvgPool2d(6), (1, 2, 3)),                       # upsamples: norm above 1
    (nn.AvgPool1d(3, 2, 1), (2, 10)),
])
def test_average_pool_bound_is_exact(pool, shape):
    res = analyse(nn.Sequential(pool), shape)
    assert records(res)["layer=0"] == pytest.approx(dense_norm(pool, shape), rel=1e-10)


# ------------------------------------------------------------------ normalizations, activations

def test_batch_norm_bound_is_exact():
    gen = torch.Generator().manual_seed(0)
    bn = nn.BatchNorm2d(5).double().eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(5, generator=gen))
        bn.running_var.copy_(torch.rand(5, generator=gen) + 0.1)
        bn.weight.copy_(torch.randn(5, generator=gen))
        bn.bias.copy_(torch.randn(5, generator=gen))
    shape = (5, 3, 3)
    zero = bn(torch.zeros(1, *shape, dtype=F64))
    res = analyse(nn.Sequential(bn), shape)
    assert records(res)["layer=0"] == pytest.approx(dense_norm(lambda x: bn(x) - zero, shape), rel=1e-12)
    expected = float((bn.weight.abs() / (bn.running_var + bn.eps).sqrt()).max())
    assert records(res)["layer=0"] == pytest.approx(expected, rel=1e-12)


def _largest_jacobian_norm(f, points) -> float:
    return max(float(torch.linalg.matrix_norm(torch.autograd.functional.jacobian(f, x), ord=2))
               for x in points)


def test_local_response_norm_bound_is_valid():
    gen = torch.Generator().manual_seed(0)
    channels = 9
    for size, alpha, beta, k in [(5, 1e-4, 0.75, 2.0), (5, 1.0, 0.75, 2.0), (3, 2.0, 0.5, 1.0)]:
        lrn = nn.LocalResponseNorm(size, alpha, beta, k)
        f = lambda x: lrn(x.view(1, channels, 1, 1)).flatten()
        scales = torch.logspace(-2, 3, 300, dtype=F64)
        points = [torch.randn(channels, generator=gen, dtype=F64) * s for s in scales]
        points += [torch.zeros(channels, dtype=F64)]
        found = _largest_jacobian_norm(f, points)
        bound = lrn_bound(size, alpha, beta, k)
        assert k ** -beta * (1 - 1e-12) <= found <= bound    # k^-beta: the slope at x = 0
    res = analyse(nn.Sequential(nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0)), (9, 2, 2))
    assert records(res)["layer=0"] == pytest.approx(lrn_bound(5, 1e-4, 0.75, 2.0))
    assert records(res, "paper_bound")["layer=0"] == pytest.approx(2.0 ** -0.75)
    assert any("LocalResponseNorm" in n for n in res.notes)


def test_contrast_norm_bound_is_the_papers_and_exact():
    gen = torch.Generator().manual_seed(0)
    for eps, gamma in [(1.0, 0.5), (0.1, 0.75), (2.0, 1.0)]:
        cn = ContrastNorm(eps, gamma, dim=0)
        points = [torch.randn(6, generator=gen, dtype=F64) * s for s in torch.logspace(-2, 2, 200)]
        points.append(torch.zeros(6, dtype=F64))
        assert _largest_jacobian_norm(cn, points) == pytest.approx(eps ** -gamma, rel=1e-9)
        res = analyse(nn.Sequential(ContrastNorm(eps, gamma)), (6, 2, 2))
        assert records(res)["layer=0"] == pytest.approx(eps ** -gamma)


def test_pointwise_bounds_are_the_largest_slopes():
    x = torch.linspace(-12, 12, 480001, dtype=F64, requires_grad=True)
    layers = [nn.ReLU(), nn.LeakyReLU(0.2), nn.LeakyReLU(-1.5), nn.Tanh(), nn.Sigmoid(), nn.ELU(2.0),
              nn.GELU(), nn.SiLU(), nn.Hardswish(), nn.Softplus(), nn.Hardsigmoid(), nn.SELU()]
    res = analyse(nn.Sequential(*layers), (5,))
    bounds = records(res)
    for i, layer in enumerate(layers):
        slope, = torch.autograd.grad(layer(x).sum(), x)
        top = float(slope.abs().max())
        # (torch's Hardsigmoid uses 1/6 rounded to float32: 3e-8 above 1/6)
        assert top * (1 - 1e-6) <= bounds[f"layer={i}"] <= top * 1.001, type(layer).__name__


# ------------------------------------------------------------------ networks

def _small_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.BatchNorm2d(4).eval(), nn.Flatten(), nn.Dropout(0.5), nn.Linear(36, 20), nn.Sigmoid(),
        nn.Linear(20, 5))


def test_network_bound_is_the_product_and_bounds_the_network():
    net = _small_net().double().eval()
    res = analyse(net, (2, 14, 14))
    bounds = records(res)
    layers = [v for p, v in bounds.items() if p.startswith("layer=")]
    assert list(bounds)[:len(layers)] == [f"layer={i}" for i in range(9)]   # order applied
    assert bounds["network"] == pytest.approx(math.prod(layers), rel=1e-12)
    assert bounds["layer=2"] == 2.0
    assert records(res, "paper_bound")["network"] == pytest.approx(bounds["network"] / 2)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, 2, 14, 14, generator=gen, dtype=F64)
    r = torch.randn(500, 2, 14, 14, generator=gen, dtype=F64) * 1e-3
    with torch.no_grad():
        ratio = (net(x + r) - net(x)).norm(dim=1) / r.flatten(1).norm(dim=1)
    assert float(ratio.max()) <= bounds["network"]
    sizes = {(r["metric"], r["param"]): r["value"] for r in res.records}
    assert sizes[("stride", "layer=0")] == 2 and sizes[("kernel", "layer=0")] == 3
    assert sizes[("in_features", "layer=6")] == 36 and sizes[("out_features", "layer=8")] == 5
    assert any("sequential composition" in n for n in res.notes)


def test_layers_parameter_reports_a_subset_but_multiplies_all():
    net = _small_net().double().eval()
    full = records(analyse(net, (2, 14, 14)))
    res = analyse(net, (2, 14, 14), layers=["0", "6"], details=False)
    part = records(res)
    assert set(part) == {"layer=0", "layer=6", "network"}
    assert part["network"] == pytest.approx(full["network"], rel=1e-12)
    # no sizes without details; the paper's value (max pooling taken as 1) for the network
    assert {(r["metric"], r["param"]) for r in res.records if r["metric"] != "upper_bound"} \
        == {("paper_bound", "network")}
    with pytest.raises(ParamError, match="no layer 'classifier'"):
        analyse(net, (2, 14, 14), layers=["classifier"])


class Square(nn.Module):
    def forward(self, x):
        return x * x


def test_unknown_layer_is_reported_not_a_crash():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), Square(), nn.Linear(4, 2))
    res = analyse(net, (4,))
    bounds = records(res)
    assert math.isnan(bounds["layer=1"]) and math.isnan(bounds["network"])
    known = bounds["layer=0"] * bounds["layer=2"]
    assert records(res, "layer_product")["network"] == pytest.approx(known)
    assert any("No bound is known for layer(s) 1" in n and "Square" in n and "not a bound" in n
               for n in res.notes)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 6), nn.ReLU())

    def forward(self, x):
        return x + self.body(x)


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.b(3 * self.a(x))


@pytest.mark.parametrize("net,op", [(nn.Sequential(nn.Linear(6, 6), Residual()), "AddBackward"),
                                    (Scaled(), "MulBackward")])
def test_non_sequential_models_get_no_network_bound(net, op):
    res = analyse(net, (6,))
    bounds = records(res)
    assert math.isnan(bounds["network"])
    assert all(not math.isnan(v) for p, v in bounds.items() if p != "network")
    assert any("not a sequential composition" in n and op in n for n in res.notes)


def test_torchvision_alexnet_features():
    """torchvision's AlexNet layers (random weights), on a smaller input to stay quick."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    features = torchvision.models.alexnet(weights=None).features
    res = analyse(features, (3, 99, 99), double=False)
    numbers = {(r["metric"], r["param"]): r["value"] for r in res.records}
    convs = ["features.0", "features.3", "features.6", "features.8", "features.10"]
    # torchvision's AlexNet is sequential at the top level: paths are "0", "3"...
    assert [numbers[("stride", f"layer={c.split('.')[1]}")] for c in convs] == [4, 1, 1, 1, 1]
    assert [numbers[("kernel", f"layer={c.split('.')[1]}")] for c in convs] == [11, 5, 3, 3, 3]
    for pool in ("2", "5", "12"):
        assert numbers[("upper_bound", f"layer={pool}")] == 2.0
        assert numbers[("paper_bound", f"layer={pool}")] == 1.0
    product = math.prod(v for (m, p), v in numbers.items() if m == "upper_bound" and p != "network")
    assert numbers[("upper_bound", "network")] == pytest.approx(product)
    assert 0 < product < math.inf


# ------------------------------------------------------------------ parameters, plugin, suite

@pytest.mark.parametrize("params,param", [
    ({"input_shape": []}, "input_shape"), ({"input_shape": [0, 3]}, "input_shape"),
    ({"layers": []}, "layers"), ({"layers": [""]}, "layers"), ({"layers": ["a", "a"]}, "layers"),
    ({"precision": "float16"}, "precision"), ({"details": "yes"}, "details"),
])
def test_bad_parameters_are_param_errors(params, param):
    with pytest.raises(ParamError) as info:
        SpectralBounds(**params)
    assert info.value.param == param


def test_registered_and_parameters_checked_by_the_registry():
    registry = default_registry()
    assert "spectral-bounds" in registry.names("analysis")
    built = registry.build("analysis", "spectral-bounds", {"input_shape": [1, 8, 8]})
    assert isinstance(built, SpectralBounds) and built.input_shape == [1, 8, 8]
    with pytest.raises(ParamError):
        registry.build("analysis", "spectral-bounds", {"precision": "half"})


SUITE = """\
name: spectral
models:
  linear: {use: torch, factory: "tiny_models:linear", input_shape: [1, 8, 8]}
  conv: {use: torch, factory: "torch.nn:Conv2d", input_shape: [1, 8, 8],
         kwargs: {in_channels: 1, out_channels: 2, kernel_size: 3, stride: 2, padding: 1}}
tests:
  - name: bounds
    analysis: {use: spectral-bounds}
gates:
  - {test: bounds, model: linear, metric: upper_bound, param: network, max: 100}
"""


def test_runs_in_a_suite(tmp_path):
    code, results = run_suite_text(SUITE, tmp_path)
    assert code == 0
    rows = results[results.metric == "upper_bound"].set_index(["model", "param"]).value
    import tiny_models

    weight = tiny_models.linear()[1].weight.detach().double()
    assert rows[("linear", "layer=1")] == pytest.approx(float(torch.linalg.matrix_norm(weight, 2)), rel=1e-9)
    assert rows[("linear", "network")] == pytest.approx(rows[("linear", "layer=1")])
    assert rows[("conv", "layer=(model)")] == pytest.approx(rows[("conv", "network")])
    from harness.report import build_tables, render_markdown
    from harness.store import RunStore

    summary, tables = build_tables(RunStore(tmp_path / "run"))
    md = render_markdown(summary, tables)
    assert "Linear: the largest singular value" in md and "Convolutions (zero padding)" in md


@pytest.mark.parametrize("jump", [nn.Hardshrink(0.5), nn.Threshold(0.1, 20.0)])
def test_discontinuous_layers_make_the_network_bound_infinite(jump):
    """Hardshrink jumps at +-lambda (Threshold at its threshold): no Lipschitz constant, so
    the layer's bound and the network's are infinite, with the reason beside them."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), jump, nn.Linear(4, 2))
    res = analyse(net, (4,))
    bounds = records(res)
    assert bounds["layer=1"] == math.inf and bounds["network"] == math.inf
    assert math.isfinite(bounds["layer=0"]) and math.isfinite(bounds["layer=2"])
    name = type(jump).__name__
    assert any(n.startswith(f"Discontinuous layers ({name}: it jumps") for n in res.notes)
    assert any(n.startswith(f"Network: infinite, because layer(s) 1 ({name}") for n in res.notes)
    # a jump inside an unknown or branching model still makes the whole bound infinite
    res = analyse(nn.Sequential(nn.Linear(4, 4), Square(), jump, nn.Linear(4, 2)), (4,))
    assert records(res)["network"] == math.inf


def test_continuous_shrinks_and_thresholds_keep_slope_one():
    res = analyse(nn.Sequential(nn.Softshrink(0.5), nn.Hardshrink(0.0), nn.Threshold(0.3, 0.3),
                                nn.Tanhshrink()), (5,))
    bounds = records(res)
    assert [bounds[f"layer={i}"] for i in range(4)] == [1.0, 1.0, 1.0, 1.0]
    assert bounds["network"] == 1.0
