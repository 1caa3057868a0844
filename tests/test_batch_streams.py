"""Per-batch randomness is keyed by the batch's position in the data: two batches holding the
same labels (or the same shape) draw different random targets and different noise, and a
batch drawn again at the same position draws the same."""

import torch

from harness import Context
from harness.plugins import default_registry
from harness.testing import tiny_model


def _registry():
    return default_registry()


def test_noise_differs_between_batches_of_the_same_shape():
    reg = _registry()
    noise = reg.build("attack", "gaussian-noise", {"stddev": 0.3, "clip": False})
    model = tiny_model()
    x = torch.full((8, *model.input_shape), 0.5)
    y = torch.zeros(8, dtype=torch.long)
    first = noise.run(model, x, y, Context(seed=0, position=0)).x_adv
    second = noise.run(model, x, y, Context(seed=0, position=8)).x_adv
    again = noise.run(model, x, y, Context(seed=0, position=8)).x_adv
    assert not torch.equal(first, second)
    assert torch.equal(second, again)


def test_random_targets_differ_between_batches_with_the_same_labels():
    reg = _registry()
    lbfgs = reg.build("attack", "lbfgs", {"target": "random", "max_iter": 2,
                                           "search_steps": 1})
    model = tiny_model()
    x = torch.full((16, *model.input_shape), 0.5)
    y = torch.tensor([0, 1, 2, 3] * 4)
    t0 = lbfgs.run(model, x, y, Context(seed=0, position=0)).target
    t1 = lbfgs.run(model, x, y, Context(seed=0, position=16)).target
    again = lbfgs.run(model, x, y, Context(seed=0, position=16)).target
    assert not torch.equal(t0, t1)
    assert torch.equal(t1, again)
    assert bool((t0 != y).all()) and bool((t1 != y).all())
