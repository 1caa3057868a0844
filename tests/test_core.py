"""The shared machinery plugins rely on: Model, the Attack base class, targets, devices."""

from __future__ import annotations

import pytest
import torch

import tiny_models
from harness import (Attack, AttackResult, Context, HarnessError, Model, ModelError, ParamError,
                     PluginError, check_target, choose_targets, resolve_device)
from harness_plugins.attacks.noise import GaussianNoise


@pytest.fixture(scope="module")
def digits():
    return Context().dataset("digits", split="test")


@pytest.fixture(scope="module")
def model():
    return Model(tiny_models.digits_template(), input_shape=(1, 8, 8), num_classes=10, name="t")


class Shift(Attack):
    """Adds a constant; deliberately leaves the box when told to."""

    needs_gradients = False

    def __init__(self, *, amount: float = 0.1, clip: bool = True, batch_size: int | None = None):
        self.amount, self.clip, self.batch_size = amount, clip, batch_size
        self.calls = 0

    def run(self, model, x, y, ctx):
        self.calls += 1
        x_adv = x + self.amount
        if self.clip:
            x_adv = x_adv.clamp(0, 1)
        return AttackResult(x_adv=x_adv, success=model(x_adv).argmax(1) != y,
                            info={"batch": torch.full((len(x),), self.calls), "name": "shift"})


def test_attack_base_batches_and_measures_distortion(model, digits):
    attack = Shift(amount=0.1, batch_size=100)
    res = attack(model, digits.x, digits.y)
    assert attack.calls == 4  # 360 images in batches of 100
    # per-image info is joined across batches; the rest comes from the first
    assert res.info["batch"].tolist() == [1] * 100 + [2] * 100 + [3] * 100 + [4] * 60
    assert res.info["name"] == "shift"
    assert res.x_adv.shape == digits.x.shape and res.success.shape == (360,)
    r = (res.x_adv - digits.x).flatten(1)
    assert torch.allclose(res.distortion, (r.pow(2).sum(1) / 64).sqrt())
    assert torch.allclose(res.l2, r.norm(dim=1))
    assert res.seconds > 0 and res.grad_evals.sum() == 0 and not res.already.any()


def test_attack_base_refuses_to_leave_the_box(model, digits):
    with pytest.raises(PluginError, match=r"returned images outside \[0, 1\].*expected images "
                                          r"in the \[0, 1\] box"):
        Shift(amount=0.5, clip=False)(model, digits.x, digits.y)
    with pytest.raises(ValueError, match="must lie in"):
        Shift()(model, digits.x + 2, digits.y)
    with pytest.raises(ValueError, match="do not fit model"):
        Shift()(model, torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.long))


def test_targets():
    y = torch.tensor([0, 3, 9, 9])
    assert choose_targets("next", y, None, 10).tolist() == [1, 4, 0, 0]
    logits = torch.eye(10)[[1, 2, 3, 4]] * -5
    assert choose_targets("least-likely", y, logits, 10).tolist() == [1, 2, 3, 4]
    assert choose_targets(7, y, None, 10).tolist() == [7] * 4
    a = choose_targets("random", y.repeat(50), None, 10, torch.Generator().manual_seed(1))
    b = choose_targets("random", y.repeat(50), None, 10, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and (a != y.repeat(50)).all() and len(a.unique()) == 10
    assert check_target("4") == 4 and check_target("next") == "next"
    with pytest.raises(ParamError, match="unknown target"):
        check_target("nxt")
    with pytest.raises(ParamError, match="out of range"):
        choose_targets(12, y, None, 10)


def test_noise_is_reproducible_and_matches_its_size(model, digits):
    ctx = Context(seed=5)
    a = GaussianNoise(stddev=0.1)(model, digits.x, digits.y, ctx)
    b = GaussianNoise(stddev=0.1)(model, digits.x, digits.y, Context(seed=5))
    c = GaussianNoise(stddev=0.1)(model, digits.x, digits.y, Context(seed=6))
    assert torch.equal(a.x_adv, b.x_adv) and not torch.equal(a.x_adv, c.x_adv)
    # clipping to the box only shrinks the noise
    assert 0.05 < float(a.distortion.mean()) <= 0.1 + 1e-3
    assert [label for label, _ in GaussianNoise(stddev=[0.1, 0.3]).variants()] == \
        ["stddev=0.1", "stddev=0.3"]
    with pytest.raises(ParamError):
        GaussianNoise(stddev=[])
    # unclipped: the distortion is the stddev itself (up to sampling), outside the box
    raw = GaussianNoise(stddev=0.3, clip=False)(model, digits.x, digits.y, ctx)
    assert abs(float(raw.distortion.mean()) - 0.3) < 0.01
    assert float(raw.x_adv.min()) < 0 and float(raw.x_adv.max()) > 1
    clipped = GaussianNoise(stddev=0.3)(model, digits.x, digits.y, ctx)
    assert torch.equal(clipped.x_adv, raw.x_adv.clamp(0, 1))


def test_model_checks_logits(digits):
    bad = Model(tiny_models.digits_template(nan=True), input_shape=(1, 8, 8), num_classes=10,
                name="bad")
    with pytest.raises(ModelError, match="NaN or infinite logits for 360 of 360"):
        bad.logits(digits.x)
    wrong = Model(tiny_models.wrong_classes(), input_shape=(1, 8, 8), num_classes=10, name="w")
    with pytest.raises(ModelError, match=r"shape \(360, 3\)"):
        wrong.logits(digits.x)


def test_model_layers_and_features(model, digits):
    assert isinstance(model.layer("1"), torch.nn.Linear)
    with pytest.raises(ModelError, match="has no layer 'fc9'"):
        model.layer("fc9")
    feats = model.features("0", digits.x[:5])
    assert feats.shape == (5, 64)
    assert not any(p.requires_grad for p in model.module.parameters())


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected
    if not torch.cuda.is_available():
        with pytest.raises(HarnessError, match="CUDA is not available"):
            resolve_device("cuda:0")
    with pytest.raises(HarnessError, match="unknown device|unsupported device"):
        resolve_device("tpu")


def test_context_generators_are_keyed():
    ctx = Context(seed=1)
    a = torch.rand(3, generator=ctx.generator("x", 1))
    assert torch.equal(a, torch.rand(3, generator=Context(seed=1).generator("x", 1)))
    assert not torch.equal(a, torch.rand(3, generator=ctx.generator("x", 2)))
    assert not torch.equal(a, torch.rand(3, generator=Context(seed=2).generator("x", 1)))


def test_features_are_copied_before_in_place_ops():
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8),
                                 torch.nn.ReLU(inplace=True), torch.nn.Linear(8, 10))
    model = Model(module, input_shape=(1, 8, 8), num_classes=10)
    x = torch.rand(16, 1, 8, 8)
    feats = model.features("1", x)
    assert torch.allclose(feats, module[1](x.flatten(1)))
    assert (feats < 0).any()  # the ReLU after it did not overwrite the captured values
