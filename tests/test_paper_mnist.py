"""Trained models: ``mlp`` (digits, offline, seconds) and ``paper-mnist`` (MNIST).

Determinism from the seed, the weight cache (reuse, keys, corrupt files), parameter checks,
and that the nets learn. The Table 1 calibration on all of MNIST is marked slow and runs only
when asked for (``pytest --run-slow``) and when the MNIST files are present.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from harness import Context, Model, ModelError, ParamError
from harness.plugins import default_registry
from harness_plugins.models import paper_mnist, training
from harness_plugins.models.paper_mnist import MLP, PaperMNIST

#: a small net that trains on digits in well under a second
FAST = {"hidden": [32], "epochs": 60}


@pytest.fixture(scope="module")
def registry():
    return default_registry()


def build(registry, name: str, **params):
    return registry.build("model", name, params)


def make_ctx(registry, tmp_path, **kw) -> Context:
    return Context(cache_dir=tmp_path, registry=registry, **kw)


def state(model: Model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.module.state_dict().items()}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def error(model: Model, data) -> float:
    return float((model.predict(data.x).cpu() != data.y).float().mean())


@pytest.fixture
def count_fits(monkeypatch):
    """Counts how often a model is actually trained (not read from the cache)."""
    calls = []
    original = paper_mnist.TrainedClassifier.fit

    def counting(self, *args, **kwargs):
        calls.append(type(self).__name__)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(paper_mnist.TrainedClassifier, "fit", counting)
    return calls


def cache_files(tmp_path):
    return sorted((tmp_path / "models").glob("*.pt"))


# --- the mlp plugin on digits --------------------------------------------------------------

def test_mlp_on_digits_learns_and_has_the_right_shape(registry, tmp_path):
    ctx = make_ctx(registry, tmp_path)
    model = build(registry, "mlp", **FAST).load(ctx)
    assert isinstance(model, Model)
    assert model.input_shape == (1, 8, 8) and model.num_classes == 10
    assert model.device == torch.device("cpu") and model.name == "MLP32-10(relu)"
    # layers are addressable: 0 Flatten, 1 Linear, 2 activation, 3 Linear
    assert isinstance(model.layer("2"), nn.ReLU) and isinstance(model.layer("3"), nn.Linear)
    test = ctx.dataset("digits", split="test")
    assert model.features("2", test.x[:5]).shape == (5, 32)
    assert error(model, test) < 0.08  # chance is 0.9
    assert error(model, ctx.dataset("digits", split="train")) < 0.02
    # the module is frozen and in eval mode, like every Model
    assert not any(p.requires_grad for p in model.module.parameters())


def test_softmax_regression_uses_lbfgs_and_learns(registry, tmp_path):
    plugin = build(registry, "mlp", weight_decay=1e-3, epochs=40)
    assert plugin.schedule(1437).optimizer == "lbfgs"
    ctx = make_ctx(registry, tmp_path)
    model = plugin.load(ctx)
    assert [type(m) for m in model.module] == [nn.Flatten, nn.Linear]
    assert error(model, ctx.dataset("digits", split="test")) < 0.10


def test_sigmoid_activation(registry, tmp_path):
    model = build(registry, "mlp", activation="sigmoid", **FAST).load(make_ctx(registry, tmp_path))
    assert isinstance(model.layer("2"), nn.Sigmoid)


def test_training_is_deterministic_from_the_seed(registry, tmp_path):
    plugin = build(registry, "mlp", **FAST)
    first = state(plugin.load(make_ctx(registry, tmp_path / "a", seed=3)))
    again = state(plugin.load(make_ctx(registry, tmp_path / "b", seed=3)))
    other = state(plugin.load(make_ctx(registry, tmp_path / "c", seed=4)))
    assert same_weights(first, again)
    assert not same_weights(first, other)


def test_training_leaves_the_global_random_state_alone(registry, tmp_path):
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    build(registry, "mlp", **FAST).load(make_ctx(registry, tmp_path))
    assert torch.equal(before, torch.get_rng_state())


def test_second_load_comes_from_the_cache(registry, tmp_path, count_fits):
    plugin = build(registry, "mlp", **FAST)
    first = plugin.load(make_ctx(registry, tmp_path))
    assert count_fits == ["MLP"]
    files = cache_files(tmp_path)
    assert len(files) == 1
    # a fresh context (a new run) and a new plugin instance: read, not trained
    second = build(registry, "mlp", **FAST).load(make_ctx(registry, tmp_path))
    assert count_fits == ["MLP"]
    assert same_weights(state(first), state(second))
    assert not any(p.requires_grad for p in second.module.parameters())


def test_cache_is_keyed_by_parameters_and_seed(registry, tmp_path, count_fits):
    ctx = make_ctx(registry, tmp_path)
    build(registry, "mlp", **FAST).load(ctx)
    build(registry, "mlp", weight_decay=1e-3, **FAST).load(ctx)
    build(registry, "mlp", weight_decay=[1e-3, 0.0], **FAST).load(ctx)
    build(registry, "mlp", **FAST).load(make_ctx(registry, tmp_path, seed=1))
    assert len(count_fits) == 4
    assert len(cache_files(tmp_path)) == 4
    # the training data is part of the key too
    build(registry, "mlp", train={"use": "digits", "split": "train", "limit": 500},
          **FAST).load(ctx)
    assert len(cache_files(tmp_path)) == 5


def test_use_cache_false_retrains_and_overwrites(registry, tmp_path, count_fits):
    plugin = build(registry, "mlp", **FAST)
    plugin.load(make_ctx(registry, tmp_path))
    (path,) = cache_files(tmp_path)
    path.write_bytes(b"stale")
    model = plugin.load(make_ctx(registry, tmp_path, use_cache=False))
    assert len(count_fits) == 2
    assert path.read_bytes() != b"stale"
    reread = plugin.load(make_ctx(registry, tmp_path))
    assert len(count_fits) == 2
    assert same_weights(state(model), state(reread))


@pytest.mark.parametrize("damage", [
    lambda p: p.write_bytes(b"\x00not a torch file"),
    lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    lambda p: torch.save({"key": "someone else", "state_dict": {}}, p),
])
def test_a_corrupt_cache_file_is_retrained(registry, tmp_path, count_fits, damage, caplog):
    plugin = build(registry, "mlp", **FAST)
    original = state(plugin.load(make_ctx(registry, tmp_path)))
    (path,) = cache_files(tmp_path)
    damage(path)
    model = plugin.load(make_ctx(registry, tmp_path))
    assert len(count_fits) == 2
    assert same_weights(original, state(model))  # deterministic: the same weights again
    assert "training again" in caplog.text
    # the file was repaired: a third load reads it
    plugin.load(make_ctx(registry, tmp_path))
    assert len(count_fits) == 2
    assert not list((tmp_path / "models").glob("*.tmp"))


def test_training_reports_progress(registry, tmp_path):
    events = []

    @contextmanager
    def recording(desc, total=None, unit="it"):
        events.append(("open", desc, total, unit))

        class Bar:
            def update(self, n=1):
                events.append(("update", n))

            def set_postfix(self, **values):
                events.append(("postfix", values))

        yield Bar()

    build(registry, "mlp", **FAST).load(make_ctx(registry, tmp_path, progress=recording))
    assert events[0] == ("open", "MLP32-10(relu): training", 60, "epoch")
    assert sum(e[1] for e in events if e[0] == "update") == 60
    assert all("loss" in e[1] for e in events if e[0] == "postfix")
    # from the cache: nothing to report
    events.clear()
    build(registry, "mlp", **FAST).load(make_ctx(registry, tmp_path, progress=recording))
    assert events == []


def test_diverged_training_is_an_error_and_not_cached(registry, tmp_path, monkeypatch):
    def diverge(module, *args, **kwargs):
        with torch.no_grad():
            training.linears(module)[0].weight.fill_(float("nan"))
        return training.FitResult(float("nan"), 0.0)

    monkeypatch.setattr(paper_mnist, "fit_classifier", diverge)
    with pytest.raises(ModelError, match="diverged"):
        build(registry, "mlp", **FAST).load(make_ctx(registry, tmp_path))
    assert cache_files(tmp_path) == []


def test_default_epochs_scale_with_the_data_size():
    plugin = MLP(hidden=[8])
    assert plugin.schedule(60000).epochs == training.DEFAULT_EPOCHS["adam"]
    small = plugin.schedule(1437)
    assert small.optimizer == "adam" and small.epochs * 6 >= training.MIN_DEFAULT_STEPS
    assert MLP(hidden=[8], epochs=3).schedule(1437).epochs == 3
    assert PaperMNIST().schedule(60000).optimizer == "lbfgs"
    assert PaperMNIST(hidden=[10], optimizer="lbfgs").schedule(100).optimizer == "lbfgs"


# --- parameter checks ----------------------------------------------------------------------

@pytest.mark.parametrize("cls, params, bad", [
    (PaperMNIST, {"hidden": [100, 0]}, "hidden"),
    (PaperMNIST, {"hidden": "100"}, "hidden"),
    (PaperMNIST, {"weight_decay": -1e-4}, "weight_decay"),
    (PaperMNIST, {"weight_decay": float("nan")}, "weight_decay"),
    (PaperMNIST, {"hidden": [100, 100], "weight_decay": [1e-5, 1e-6]}, "weight_decay"),
    (PaperMNIST, {"train_split": "test"}, "train_split"),
    (PaperMNIST, {"autoencoder": 0}, "autoencoder"),
    (PaperMNIST, {"epochs": 0}, "epochs"),
    (PaperMNIST, {"lr": 0.0}, "lr"),
    (PaperMNIST, {"batch_size": 0}, "batch_size"),
    (PaperMNIST, {"optimizer": "sgd"}, "optimizer"),
    (PaperMNIST, {"limit": 0}, "limit"),
    (PaperMNIST, {"ae_target": 1.5}, "ae_target"),
    (PaperMNIST, {"ae_sparsity": -1}, "ae_sparsity"),
    (PaperMNIST, {"ae_epochs": 0}, "ae_epochs"),
    (PaperMNIST, {"conv": [16, 0]}, "conv"),
    (PaperMNIST, {"conv": "16"}, "conv"),
    (PaperMNIST, {"conv": [16], "autoencoder": 400}, "conv"),
    (PaperMNIST, {"conv": [4, 8], "hidden": [16], "weight_decay": [0.0, 0.0, 0.0]},
     "weight_decay"),
    (MLP, {"activation": "tanh"}, "activation"),
    (MLP, {"train": {"split": "train"}}, "train"),
    (MLP, {"hidden": [4], "weight_decay": [0.1]}, "weight_decay"),
])
def test_bad_parameters_raise_param_error(cls, params, bad):
    with pytest.raises(ParamError) as info:
        cls(**params)
    assert info.value.param == bad
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("params, bad", [
    ({"train_split": "p3"}, "train_split"),
    ({"hidden": [100, "wide"]}, "hidden"),
    ({"weight_decya": 1e-4}, "weight_decya"),
    ({"weight_decay": [1e-5, 1e-5]}, "weight_decay"),
])
def test_bad_parameters_through_the_registry(registry, params, bad):
    with pytest.raises(ParamError) as info:
        build(registry, "paper-mnist", **params)
    assert info.value.param == bad


def test_constructors_are_cheap_and_keep_their_parameters(registry):
    start = time.perf_counter()
    plugin = build(registry, "paper-mnist", hidden=[100, 100], weight_decay=["1e-5", 1e-5, 1e-6])
    assert time.perf_counter() - start < 0.5
    assert plugin.hidden == [100, 100] and plugin.weight_decay == [1e-5, 1e-5, 1e-6]
    assert plugin.params()["train_split"] == "train"
    assert repr(plugin).startswith("paper-mnist(hidden=[100, 100]")
    # the YAML spelling of a number (PyYAML reads 1e-4 as a string) is accepted
    assert build(registry, "paper-mnist", weight_decay="1e-4").weight_decay == 1e-4
    assert build(registry, "mlp").train == {"use": "digits", "split": "train"}


def test_paper_mnist_labels():
    plugin = PaperMNIST(hidden=[123, 456], train_split="p1")
    data = type("D", (), {"num_classes": 10})()
    assert plugin.label(data) == "FC123-456-10[p1]"
    assert PaperMNIST(autoencoder=400).label(data) == "AE400-10"
    assert PaperMNIST().label(data) == "FC10"


# --- paper-mnist on (a few images of) real MNIST -----------------------------------------

def test_paper_mnist_fc_on_a_subset(registry, mnist_dir, tmp_path, count_fits):
    ctx = make_ctx(registry, tmp_path, data_dir=mnist_dir)
    plugin = build(registry, "paper-mnist", hidden=[50, 50], weight_decay=[1e-5, 1e-5, 1e-6],
                   limit=2000, epochs=8)
    model = plugin.load(ctx)
    assert model.input_shape == (1, 28, 28) and model.num_classes == 10
    assert model.name == "FC50-50-10"
    layout = [type(m) for m in model.module]
    assert layout == [nn.Flatten, nn.Linear, nn.Sigmoid, nn.Linear, nn.Sigmoid, nn.Linear]
    test = ctx.dataset("mnist", split="test", limit=2000)
    assert error(model, test) < 0.25  # chance is 0.9
    # the cache key covers the training split (p2 is different data)
    build(registry, "paper-mnist", hidden=[50, 50], weight_decay=[1e-5, 1e-5, 1e-6],
          limit=2000, epochs=8, train_split="p2").load(ctx)
    assert len(count_fits) == 2 and len(cache_files(tmp_path)) == 2


def test_paper_mnist_autoencoder_is_frozen_under_its_classifier(registry, mnist_dir, tmp_path,
                                                                monkeypatch):
    encoders = []
    original = paper_mnist.fit_autoencoder

    def spy(*args, **kwargs):
        encoder, result = original(*args, **kwargs)
        encoders.append({k: v.clone() for k, v in encoder.state_dict().items()})
        return encoder, result

    monkeypatch.setattr(paper_mnist, "fit_autoencoder", spy)
    ctx = make_ctx(registry, tmp_path, data_dir=mnist_dir)
    model = build(registry, "paper-mnist", autoencoder=32, weight_decay=1e-6, limit=1000,
                  ae_epochs=10, batch_size=100, epochs=30).load(ctx)
    assert model.name == "AE32-10"
    assert [type(m) for m in model.module] == [nn.Flatten, nn.Linear, nn.Sigmoid, nn.Linear]
    # the classifier was trained on the autoencoder's code, which it left unchanged
    assert len(encoders) == 1
    assert same_weights(encoders[0], model.module[1].state_dict())
    x = ctx.dataset("mnist", split="test", limit=500).x
    code = model.features("2", x)
    assert code.shape == (500, 32) and 0 < float(code.min()) and float(code.max()) < 1
    assert error(model, ctx.dataset("mnist", split="test", limit=2000)) < 0.3


# --- the paper's Table 1 on all of MNIST (slow) -------------------------------------------

TABLE1 = {  # params, (max train error, min/max test error)
    "FC10(1e-4)": ({"weight_decay": 1e-4}, 0.08, (0.065, 0.085)),
    "FC10(1e-2)": ({"weight_decay": 1e-2}, 0.115, (0.085, 0.11)),
    "FC10(1)": ({"weight_decay": 1.0}, 0.25, (0.18, 0.24)),
    "FC100-100-10": ({"hidden": [100, 100], "weight_decay": [1e-5, 1e-5, 1e-6]}, 0.002,
                     (0.0, 0.025)),
    "FC200-200-10": ({"hidden": [200, 200], "weight_decay": [1e-5, 1e-5, 1e-6]}, 0.002,
                     (0.0, 0.025)),
    "AE400-10": ({"autoencoder": 400, "weight_decay": 1e-6}, 0.015, (0.0, 0.025)),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TABLE1))
def test_table1_errors(registry, mnist_dir, tmp_path, name):
    params, max_train, (lo, hi) = TABLE1[name]
    ctx = make_ctx(registry, tmp_path, data_dir=mnist_dir)
    model = build(registry, "paper-mnist", **params).load(ctx)
    assert model.name == name.split("(")[0]
    assert error(model, ctx.dataset("mnist", split="train")) <= max_train
    assert lo <= error(model, ctx.dataset("mnist", split="test")) <= hi


# --- the conv net (Section 3) ---------------------------------------------------------------

#: cache keys and random-stream ids of models that existed before ``conv``: adding a
#: parameter must not change them (it would retrain every cached model, and with different
#: random streams, differently)
PINNED_KEYS = [
    ({}, "4dd0d0057bd79b59"),
    ({"weight_decay": 1e-4}, "f3b0ab3333823f2c"),
    ({"hidden": [100, 100], "weight_decay": [1e-5, 1e-5, 1e-6]}, "63f2f5f286d9e07d"),
    ({"hidden": [123, 456], "train_split": "p1"}, "c5bf0eada3426e96"),
    ({"autoencoder": 400, "weight_decay": 1e-6}, "a94dc8fcb73a10f2"),
]


def fake_mnist(n: int = 10):
    from harness import Data

    return Data(torch.zeros(n, 1, 28, 28), torch.zeros(n, dtype=torch.long), 10, "fake")


@pytest.mark.parametrize("params, key", PINNED_KEYS)
def test_fully_connected_models_keep_their_cache_keys(registry, params, key):
    plugin = build(registry, "paper-mnist", **params)
    assert plugin.cache_key(Context(), fake_mnist()) == key
    assert "conv" not in plugin.params() and "conv" not in plugin.params_id()
    assert "conv" not in repr(plugin)


def test_conv_parameters_enter_the_key_when_used(registry):
    conv = build(registry, "paper-mnist", conv=[4, 8], hidden=[16])
    assert conv.params()["conv"] == [4, 8] and "conv=[4, 8]" in repr(conv)
    other = build(registry, "paper-mnist", conv=[4, 9], hidden=[16])
    assert conv.cache_key(Context(), fake_mnist()) != other.cache_key(Context(), fake_mnist())


def test_conv_defaults_labels_and_layout():
    plugin = PaperMNIST(conv=[16, 32], hidden=[128])
    assert plugin.schedule(60000) == training.Schedule("adam", paper_mnist.CONV_EPOCHS,
                                                       paper_mnist.CONV_LR, 256)
    assert plugin.schedule(1000).epochs * 4 >= paper_mnist.CONV_MIN_STEPS  # small data
    assert PaperMNIST(conv=[8]).schedule(60000).optimizer == "adam"  # not convex
    data = fake_mnist()
    assert plugin.label(data) == "Conv16-32-FC128-10"
    assert PaperMNIST(conv=[16]).label(data) == "Conv16-FC10"
    assert PaperMNIST(conv=[16], train_split="p2").label(data) == "Conv16-FC10[p2]"
    module = plugin.build(data, torch.Generator().manual_seed(0))
    assert [type(m) for m in module] == [
        nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Conv2d, nn.ReLU, nn.MaxPool2d,
        nn.Flatten, nn.Linear, nn.ReLU, nn.Linear]
    assert module[3].kernel_size == (5, 5) and module[7].in_features == 32 * 7 * 7
    x = torch.rand(3, 1, 28, 28)
    assert module[:3](x).shape == (3, 16, 14, 14) and module[:6](x).shape == (3, 32, 7, 7)
    assert module(x).shape == (3, 10)
    # the weight penalty covers the convolutions too, one lambda per layer in order
    assert [type(m) for m in training.weight_layers(module)] == [nn.Conv2d, nn.Conv2d,
                                                                 nn.Linear, nn.Linear]
    assert PaperMNIST(conv=[4, 8], hidden=[16], weight_decay=[1, 2, 3, 4]).weight_decay == \
        [1.0, 2.0, 3.0, 4.0]


def test_too_many_conv_layers_for_the_image(registry):
    plugin = PaperMNIST(conv=[2, 2, 2, 2, 2])  # 28 -> 14 -> 7 -> 3 -> 1 -> 0
    with pytest.raises(ModelError, match="too many for 28x28"):
        plugin.build(fake_mnist(), torch.Generator().manual_seed(0))
    PaperMNIST(conv=[2, 2, 2, 2]).build(fake_mnist(), torch.Generator().manual_seed(0))


def test_conv_net_on_a_subset(registry, mnist_dir, tmp_path, count_fits):
    params = {"conv": [4, 8], "hidden": [16], "limit": 1000, "epochs": 4, "batch_size": 50,
              "lr": 5e-3, "weight_decay": [1e-4, 1e-4, 1e-5, 0.0]}
    model = build(registry, "paper-mnist", **params).load(
        make_ctx(registry, tmp_path / "a", data_dir=mnist_dir))
    assert model.name == "Conv4-8-FC16-10" and model.input_shape == (1, 28, 28)
    test = make_ctx(registry, tmp_path, data_dir=mnist_dir).dataset("mnist", split="test",
                                                                   limit=1000)
    assert error(model, test) < 0.3  # chance is 0.9; 1000 images, 80 steps
    x = test.x[:5]
    assert model.features("2", x).shape == (5, 4 * 14 * 14)
    assert model.features("5", x).shape == (5, 8 * 7 * 7)
    assert model.features("8", x).shape == (5, 16)
    assert not any(p.requires_grad for p in model.module.parameters())
    # deterministic from the seed, cached like the others
    again = build(registry, "paper-mnist", **params).load(
        make_ctx(registry, tmp_path / "b", data_dir=mnist_dir))
    other = build(registry, "paper-mnist", **params).load(
        make_ctx(registry, tmp_path / "c", data_dir=mnist_dir, seed=1))
    assert same_weights(state(model), state(again))
    assert not same_weights(state(model), state(other))
    assert len(count_fits) == 3
    cached = build(registry, "paper-mnist", **params).load(
        make_ctx(registry, tmp_path / "a", data_dir=mnist_dir))
    assert len(count_fits) == 3 and same_weights(state(model), state(cached))


@pytest.mark.slow
def test_conv_net_errors(registry, mnist_dir, tmp_path):
    """The probe suite's conv net on all of MNIST: about 1% test error or better."""
    ctx = make_ctx(registry, tmp_path, data_dir=mnist_dir)
    model = build(registry, "paper-mnist", conv=[16, 32], hidden=[128]).load(ctx)
    assert model.name == "Conv16-32-FC128-10"
    assert error(model, ctx.dataset("mnist", split="train")) <= 0.01
    assert error(model, ctx.dataset("mnist", split="test")) <= 0.012
