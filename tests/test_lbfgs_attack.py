"""The ``lbfgs`` attack on a small MLP trained here on scikit-learn's 8x8 digits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import harness
from harness import Context, HarnessError, Model, ParamError
from harness.plugins import default_registry
from harness.testing import check_attack
from harness_plugins.attacks.lbfgs import LBFGS

N = 48  # test images attacked


@pytest.fixture(scope="module")
def model() -> Model:
    """A 64-32-10 sigmoid MLP, full-batch Adam on the digits' training split (~1 s)."""
    torch.manual_seed(0)
    train = harness.Context().dataset("digits", split="train")
    x, y = train.x.flatten(1), train.y
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Sigmoid(), nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(300):
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model = Model(net, input_shape=(1, 8, 8), num_classes=10, name="digits-mlp")
    assert float((model.predict(train.x) == y).float().mean()) > 0.97
    return model


@pytest.fixture(scope="module")
def data():
    test = harness.Context().dataset("digits", split="test")
    return test.x[:N], test.y[:N]


def distortion(x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return ((x_adv - x).flatten(1).pow(2).sum(1) / x[0].numel()).sqrt()


def pred(model: Model, x: torch.Tensor) -> torch.Tensor:
    return model.predict(x)


def test_targeted_reaches_every_target_in_the_box(model, data):
    x, y = data
    res = check_attack(LBFGS(), model, harness.Data(x, y, 10), Context(seed=0))
    assert torch.equal(res.target, (y + 1) % 10)
    assert bool(res.success.all())
    assert torch.equal(pred(model, res.x_adv), res.target)
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    moved = ~res.already
    assert bool((res.distortion[moved] > 0).all())
    assert bool((res.grad_evals[moved] > 0).all()) and bool((res.forward_evals >= 1).all())
    assert bool((res.info["const"][moved] > 0).all())
    assert bool((res.info["const_steps"][moved] >= 2).all())


def test_untargeted_misclassifies_everything(model, data):
    x, y = data
    res = check_attack(LBFGS(targeted=False), model, harness.Data(x, y, 10), Context(seed=0))
    assert res.target is None
    assert bool(res.success.all())
    assert bool((pred(model, res.x_adv) != y).all())
    # the nearest wrong class is no farther than the "next" label
    nxt = LBFGS()(model, x, y)
    assert float(res.distortion.mean()) < float(nxt.distortion.mean())


def test_images_already_at_the_goal_are_reported_untouched(model, data):
    x, y = data
    p = pred(model, x)
    label = int(torch.mode(p).values)
    res = LBFGS(target=label)(model, x, y)
    already = p == label
    assert int(already.sum()) >= 2
    assert torch.equal(res.already, already)
    assert bool(res.success.all())
    assert torch.equal(res.x_adv[already], x[already])
    assert bool((res.grad_evals[already] == 0).all())
    assert bool((res.grad_evals[~already] > 0).all())
    assert bool((res.distortion[already] == 0).all())

    # untargeted: feed images that the model already gets wrong, next to correct ones
    adv = LBFGS(targeted=False)(model, x[:6], y[:6]).x_adv
    mixed_x = torch.cat((adv, x[6:12]))
    mixed_y = y[:12]
    wrong = pred(model, mixed_x) != mixed_y
    assert int(wrong.sum()) >= 6
    res = LBFGS(targeted=False)(model, mixed_x, mixed_y)
    assert torch.equal(res.already, wrong)
    assert torch.equal(res.x_adv[wrong], mixed_x[wrong])
    assert bool(res.success.all())

    # a whole batch with nothing to do
    res = LBFGS(targeted=False)(model, adv[wrong[:6]], y[:6][wrong[:6]])
    assert bool(res.already.all()) and bool(res.success.all())


def _sign_steps(model: Model, x, target, step: float = 0.01, max_steps: int = 500):
    """Baseline: targeted gradient-sign steps of size ``step`` until each image reaches its
    target (iterative FGSM, stopped per image at its first success)."""
    x_adv = x.clone()
    done = pred(model, x_adv) == target
    for _ in range(max_steps):
        if bool(done.all()):
            break
        z = x_adv.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(model(z), target)
        g, = torch.autograd.grad(loss, z)
        moved = (x_adv - step * g.sign()).clamp(0, 1)
        x_adv = torch.where(done[:, None, None, None], x_adv, moved)
        done = pred(model, x_adv) == target
    return x_adv, done


def test_smaller_than_simple_baselines(model, data):
    x, y = data
    res = LBFGS()(model, x, y)
    ours = res.distortion[~res.already]
    # iterative gradient-sign steps
    x_fgsm, done = _sign_steps(model, x, res.target)
    assert bool(done.all())
    fgsm = distortion(x_fgsm, x)[~res.already]
    assert float(ours.mean()) < 0.85 * float(fgsm.mean())
    assert float((ours <= fgsm).float().mean()) >= 0.95
    # a single tiny c: the penalty barely holds the perturbation back
    tiny = LBFGS(initial_const=1e-3, search_steps=1, refine_steps=0, polish_steps=0)
    tiny = tiny(model, x, y)
    assert bool(tiny.success.all())
    assert float(ours.mean()) < 0.7 * float(tiny.distortion[~res.already].mean())
    # the refinements only ever shorten: shortening, then polishing along the boundary
    raw = LBFGS(refine_steps=0, polish_steps=0)(model, x, y)
    short = LBFGS(polish_steps=0)(model, x, y)
    assert bool(raw.success.all()) and bool(short.success.all())
    assert bool((short.distortion <= raw.distortion + 1e-7).all())
    assert bool((res.distortion <= short.distortion + 1e-7).all())
    assert float(res.distortion.mean()) < float(short.distortion.mean())
    assert float(short.distortion.mean()) < float(raw.distortion.mean())


def test_results_stay_successes_when_evaluated_alone(model, data):
    """Kept points sit just inside the target's region, with room for round-off: the model
    still agrees when it sees each image alone instead of in the attacked batch."""
    x, y = data
    res = LBFGS()(model, x, y)
    alone = torch.cat([model.logits(res.x_adv[i:i + 1]).argmax(1) for i in range(len(x))])
    assert torch.equal(alone, res.target)


def test_random_targets_are_reproducible(model, data):
    x, y = data
    a = LBFGS(target="random", max_iter=5, search_steps=1)(model, x, y, Context(seed=7))
    b = LBFGS(target="random", max_iter=5, search_steps=1)(model, x, y, Context(seed=7))
    c = LBFGS(target="random", max_iter=5, search_steps=1)(model, x, y, Context(seed=8))
    assert torch.equal(a.target, b.target) and torch.equal(a.x_adv, b.x_adv)
    assert not torch.equal(a.target, c.target)
    assert bool((a.target != y).all()) and bool((c.target != y).all())
    assert len(set(a.target.tolist())) >= 5


def test_least_likely_and_fixed_targets(model, data):
    x, y = data
    res = LBFGS(target="least-likely")(model, x[:16], y[:16])
    assert torch.equal(res.target, model.logits(x[:16]).argmin(1))
    assert bool(res.success.all())
    res = LBFGS(target="3")(model, x[:16], y[:16])
    assert bool((res.target == 3).all()) and bool(res.success.all())


def test_batches_are_independent(model, data):
    """An image's result does not depend on the batch it was attacked in, up to round-off:
    the model's batched products round a row differently in batches of other sizes, and the
    polish's accept/reject decisions near the boundary can turn on that."""
    x, y = data
    whole = LBFGS()(model, x[:20], y[:20])
    split = LBFGS(batch_size=7)(model, x[:20], y[:20])
    assert bool(split.success.all())
    torch.testing.assert_close(split.distortion, whole.distortion, atol=0, rtol=1e-2)
    assert abs(float(split.distortion.mean() / whole.distortion.mean()) - 1) < 1e-3
    raw = dict(refine_steps=0, polish_steps=0)
    torch.testing.assert_close(LBFGS(batch_size=7, **raw)(model, x[:20], y[:20]).distortion,
                               LBFGS(**raw)(model, x[:20], y[:20]).distortion,
                               atol=0, rtol=1e-4)


def test_registered_and_validated():
    reg = default_registry()
    attack = reg.build("attack", "lbfgs", {"target": "random", "targeted": True,
                                            "history": 3, "refine_steps": 0})
    assert isinstance(attack, LBFGS) and attack.history == 3 and attack.target == "random"
    assert LBFGS(target="4").target == 4
    bad = [("target", "sideways"), ("target", -1), ("targeted", "yes"), ("batch_size", 0),
           ("initial_const", 0.0), ("initial_const", float("inf")), ("const_factor", 1.0),
           ("search_steps", 0), ("const_rtol", -0.1), ("max_iter", 0), ("history", 0),
           ("history", 2.5), ("gtol", 0), ("ftol", -1.0), ("refine_steps", -1),
           ("polish_steps", None)]
    for name, value in bad:
        with pytest.raises(ParamError) as err:
            LBFGS(**{name: value})
        assert err.value.param == name, (name, value)
    with pytest.raises(ParamError) as err:
        reg.build("attack", "lbfgs", {"histroy": 3})
    assert err.value.param == "histroy"


def test_label_out_of_range_and_non_differentiable_model(model, data):
    x, y = data
    with pytest.raises(ParamError):
        LBFGS(target=12)(model, x[:4], y[:4])
    frozen = Model(forward=model.module, input_shape=(1, 8, 8), num_classes=10,
                   differentiable=False, name="frozen")
    with pytest.raises(HarnessError, match="differentiable"):
        LBFGS()(frozen, x[:4], y[:4])


# --- defaults that follow the model's scale -------------------------------------------------

def linear_model(scale: float, shape=(3, 16, 16), classes: int = 1000) -> Model:
    """A fixed random linear classifier whose logits (and input gradients) are ``scale``
    times those of the same classifier at scale 1: the same decision regions."""
    size = int(torch.tensor(shape).prod())
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(size, classes, bias=False))
    with torch.no_grad():
        net[1].weight.copy_(scale * torch.randn(classes, size, generator=gen) / size ** 0.5)
    return Model(net, input_shape=shape, num_classes=classes, name=f"linear x{scale:g}")


def test_defaults_succeed_whatever_the_loss_and_gradient_scale():
    """1000 classes (loss about 6.9 at the image) and logits scaled by 1e-3 ... 30: the
    default c and stopping rules find every target in a few values of c, at the same
    distortion to within the polish's precision."""
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    dist = {}
    for scale in (1e-3, 1.0, 30.0):
        model = linear_model(scale)
        y = model.predict(x)
        res = LBFGS()(model, x, y)
        assert bool(res.success.all()), scale
        assert res.failure == [""] * 6
        assert bool((res.info["const_steps"] <= 8).all()), res.info["const_steps"]
        dist[scale] = float(res.distortion.mean())
    assert max(dist.values()) < 1.15 * min(dist.values()), dist


def test_a_convolutional_net_at_224_succeeds_with_the_defaults():
    """ImageNet-size inputs and 1000 classes (a small random conv net, to stay fast): every
    image reaches its target with the defaults, and the batch follows the input size."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 7, stride=4), nn.ReLU(), nn.Conv2d(4, 8, 5, stride=4),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, 1000))
    model = Model(net, input_shape=(3, 224, 224), num_classes=1000, name="conv224")
    x = torch.rand(3, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    attack = LBFGS()
    assert attack.auto_batch_size(model) == 13
    res = attack(model, x, model.predict(x))
    assert bool(res.success.all()) and res.failure == ["", "", ""]
    assert torch.equal(model.predict(res.x_adv), res.target)
    assert float(res.distortion.max()) < 0.05


def test_auto_batch_size_splits_large_inputs():
    model = linear_model(1.0, shape=(3, 64, 64), classes=10)
    attack = LBFGS(search_steps=1, max_iter=2, refine_steps=0, polish_steps=0)
    assert attack.batch_size == "auto" and attack.auto_batch_size(model) == 170
    assert LBFGS().auto_batch_size(Model(nn.Flatten(), input_shape=(1, 28, 28),
                                         num_classes=10)) == 1000
    seen = []
    inner = model._forward

    def counting(z):
        seen.append(len(z))
        return inner(z)

    model._forward = counting
    x = torch.rand(200, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    res = attack(model, x, torch.zeros(200, dtype=torch.long))
    assert len(res.success) == 200 and max(seen) == 170
    assert LBFGS(batch_size=64)(model, x[:100], torch.zeros(100, dtype=torch.long),
                                ).success.shape == (100,)
    assert max(seen[-10:]) <= 64


# --- why an image failed --------------------------------------------------------------------

class _NegatedGradient(torch.autograd.Function):
    """Identity forward, gradient pointing the wrong way: a model whose gradients lie."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return -grad


def _wrapped(model: Model, forward, name: str) -> Model:
    return Model(forward=forward, input_shape=model.input_shape, num_classes=10, name=name)


def test_failures_say_why_on_cases_built_to_fail_each_way(model, data):
    x, y = data
    x, y = x[:12], y[:12]
    advice = LBFGS.failure_advice

    def check(res, expected: str, where: torch.Tensor):
        assert torch.equal(res.success, ~where)
        assert res.failure == [expected if bad else "" for bad in where.tolist()]
        assert expected in advice

    everything = torch.ones(12, dtype=torch.bool)
    # the iteration budget: one L-BFGS step per value of c, one value of c
    res = LBFGS(max_iter=1, search_steps=1, initial_const=1.0)(model, x, y)
    assert not bool(res.success.all())
    check(res, "budget", ~res.success)
    # the search over c: a huge penalty, shrunk twice, never lets the image move enough
    # (on 3x16x16 inputs, where the first trial step, of unit length, is too short)
    lin = linear_model(1.0)
    xl = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    res = LBFGS(initial_const=1e6, search_steps=2)(lin, xl, lin.predict(xl))
    check(res, "c-search", torch.ones(6, dtype=torch.bool))
    # a barrier: the target's logit peaks (at 0) where the pixels' mean is 0.5 and the other
    # class's is 1 everywhere, so the loss has a minimum short of the goal whatever c is
    def barrier(z):
        mean = z.flatten(1).mean(1, keepdim=True)
        return torch.cat([torch.ones_like(mean), -10 * (mean - 0.5) ** 2], 1)

    walled = Model(forward=barrier, input_shape=(1, 2, 2), num_classes=2, name="barrier")
    xb = torch.full((3, 1, 2, 2), 0.2)
    res = LBFGS(target=1)(walled, xb, torch.zeros(3, dtype=torch.long))
    check(res, "local-minimum", torch.ones(3, dtype=torch.bool))
    assert "targeted: false" in advice["local-minimum"]
    # NaN logits for images whose corner pixel is lit (the first four)
    lit = x.clone()
    lit[:4, 0, 0, 0] = 1.0
    nan_model = _wrapped(model, lambda z: torch.where(
        z.flatten(1)[:, :1] > 0.5, float("nan"), model(z)), "nan-corner")
    # the attack marks those images (run alone)...
    from harness import Context
    from harness.errors import ModelError

    res = LBFGS().run(nan_model, lit, y, Context())
    assert [f == "non-finite" for f in res.failure] == (torch.arange(12) < 4).tolist()
    # ...and the harness fails the case: NaN logits anywhere in an attack are the model's fault
    with pytest.raises(ModelError, match="NaN or infinite logits during the attack"):
        LBFGS()(nan_model, lit, y)
    # no gradient at all
    flat = _wrapped(model, lambda z: model(z.detach() + 0 * z), "no-gradient")
    check(LBFGS()(flat, x, y), "no-gradient", everything)
    # gradients pointing the wrong way: steps along them do not lower the loss
    liar = _wrapped(model, lambda z: model(_NegatedGradient.apply(z)), "negated-gradient")
    check(LBFGS(search_steps=2)(liar, x, y), "bad-gradient", everything)
    # every code the attack uses is explained, with the parameter to change
    for code, text in advice.items():
        assert text and code in {"budget", "c-search", "bad-gradient", "non-finite",
                                 "no-gradient", "local-minimum"}
    assert "max_iter" in advice["budget"] and "search_steps" in advice["c-search"]


def test_deprecated_tolerances_warn_and_still_stop_solves(model, data):
    x, y = data
    with pytest.warns(FutureWarning, match="gtol is deprecated.*grad_rtol"):
        attack = LBFGS(gtol=1e-5)
    assert bool(attack(model, x[:8], y[:8]).success.all())
    with pytest.warns(FutureWarning, match="progress_rtol"):
        loose = LBFGS(ftol=0.5, search_steps=3)
    tight = LBFGS(search_steps=3)
    assert int(loose(model, x[:8], y[:8]).grad_evals.sum()) < \
        int(tight(model, x[:8], y[:8]).grad_evals.sum())


# --- against the exact minimum --------------------------------------------------------------

def _exact_minimum(W: torch.Tensor, b: torch.Tensor, x: torch.Tensor, t: int,
                   margin: float) -> float:
    """min ||r|| with x + r in [0, 1] and (W (x + r) + b)_t - (W (x + r) + b)_j >= margin for
    every j != t: a convex QP, solved through its dual (one multiplier per other class; the
    primal minimizer for multipliers lam is clamp(A^T lam / 2) to the box)."""
    import numpy as np

    optimize = pytest.importorskip("scipy.optimize")
    W, b, x = W.double().numpy(), b.double().numpy(), x.double().numpy()
    others = [j for j in range(len(b)) if j != t]
    A = W[t] - W[others]
    beta = margin - (A @ x + b[t] - b[others])
    lo, hi = -x, 1 - x

    def neg_dual(lam):
        u = A.T @ lam
        r = np.clip(u / 2, lo, hi)
        return -(r @ r - u @ r + lam @ beta), -(beta - A @ r)

    sol = optimize.minimize(neg_dual, np.full(len(others), 0.1), jac=True, method="L-BFGS-B",
                            bounds=[(0, None)] * len(others),
                            options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-12})
    r = np.clip(A.T @ sol.x / 2, lo, hi)
    assert (A @ r - beta).min() > -1e-7
    return float(np.sqrt(r @ r))


def test_softmax_regression_within_one_percent_of_the_exact_minimum():
    """For a linear classifier the smallest perturbation reaching a target is a convex QP:
    the attack's perturbations are never shorter than the exact minimum (they are verified
    successes) and on average within 1% of it (without the polish: 3%)."""
    torch.manual_seed(0)
    train = harness.Context().dataset("digits", split="train")
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), lr=0.05, weight_decay=1e-3)
    for _ in range(200):
        loss = nn.functional.cross_entropy(net(train.x), train.y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model = Model(net, input_shape=(1, 8, 8), num_classes=10, name="digits-softmax")
    test = harness.Context().dataset("digits", split="test")
    x, y = test.x[:40], test.y[:40]
    res = LBFGS()(model, x, y)
    assert bool(res.success.all())
    W, b = net[1].weight.detach(), net[1].bias.detach()
    moved = (~res.already).nonzero().squeeze(1).tolist()
    ours = res.l2[moved]
    exact = torch.tensor([_exact_minimum(W, b, x[i].flatten(), int(res.target[i]), 1e-5)
                          for i in moved])
    assert bool((ours >= exact * (1 - 1e-3)).all())
    assert float(ours.mean()) <= 1.01 * float(exact.mean()), (float(ours.mean()),
                                                              float(exact.mean()))
