"""The `torch` model plugin: factories, weights, normalization, seeded initialization."""

from __future__ import annotations

import pytest
import torch

from harness import Context, ModelError, ParamError
from harness.plugins import default_registry


@pytest.fixture(scope="module")
def registry():
    return default_registry()


def load(registry, seed=0, **params):
    params = {"factory": "tiny_models:default_init", "input_shape": [1, 8, 8], **params}
    return registry.build("model", "torch", params).load(Context(seed=seed))


def weights(model):
    return [p.detach().clone() for p in model.module.parameters()]


def test_random_initialization_follows_the_seed(registry):
    state = torch.random.get_rng_state()
    a, b, c = load(registry, 0), load(registry, 0), load(registry, 1)
    assert all(torch.equal(x, y) for x, y in zip(weights(a), weights(b)))
    assert not all(torch.equal(x, y) for x, y in zip(weights(a), weights(c)))
    assert torch.equal(state, torch.random.get_rng_state())  # global state untouched
    assert a.num_classes == 10 and a.input_shape == (1, 8, 8)


def test_weights_file_and_normalization(registry, tmp_path):
    source = load(registry, 5)
    path = tmp_path / "w.pt"
    torch.save(source.module.state_dict(), path)
    loaded = load(registry, 0, weights=str(path))
    assert all(torch.equal(x, y) for x, y in zip(weights(source), weights(loaded)))
    x = torch.rand(4, 1, 8, 8)
    normed = load(registry, 5, weights=str(path), mean=[0.5], std=[0.25])
    assert torch.allclose(normed(x), source((x - 0.5) / 0.25), atol=1e-6)


def test_errors(registry, tmp_path):
    with pytest.raises(ParamError, match="not found") as missing:   # caught by validate
        load(registry, weights=str(tmp_path / "missing.pt"))
    assert missing.value.param == "weights"
    (tmp_path / "bad.pt").write_text("not a state dict")
    with pytest.raises(ModelError, match="cannot read weights"):
        load(registry, weights=str(tmp_path / "bad.pt"))
    with pytest.raises(ParamError, match="cannot import"):
        load(registry, factory="no_such_module:make")
    with pytest.raises(ParamError, match="give both mean and std"):
        registry.build("model", "torch", {"factory": "a:b", "input_shape": [1], "mean": [0.5]})
    with pytest.raises(ModelError, match="fails on an input of shape"):
        load(registry, input_shape=[1, 28, 28])
