"""The torchattacks adapter: the library's attacks run as harness attacks."""

from __future__ import annotations

import pytest
import torch

from harness import ParamError
from harness.plugins import default_registry
from harness.testing import check_attack, tiny_data, tiny_model

pytest.importorskip("torchattacks")


@pytest.fixture(scope="module")
def registry():
    return default_registry()


def test_pgd_untargeted_keeps_the_contract(registry):
    attack = registry.build("attack", "torchattacks",
                            {"attack": "PGD", "options": {"eps": 0.3, "alpha": 0.05, "steps": 20}})
    res = check_attack(attack)  # shapes, device, box, success vs predictions, reproducible
    assert float(res.success.float().mean()) > 0.9
    # an L-infinity attack: no pixel moves more than eps
    data = tiny_data(64)
    assert float((res.x_adv.cpu() - data.x).abs().max()) <= 0.3 + 1e-5
    assert int(res.grad_evals[0]) == 20


def test_targeted_uses_the_harness_targets(registry):
    attack = registry.build("attack", "torchattacks",
                            {"attack": "PGD", "targeted": True, "target": "next",
                             "options": {"eps": 0.5, "alpha": 0.05, "steps": 40}})
    model, data = tiny_model(), tiny_data(64)
    res = attack(model, data.x, data.y)
    assert torch.equal(res.target.cpu(), (data.y + 1) % 10)
    pred = model.predict(res.x_adv).cpu()
    assert torch.equal(pred == res.target.cpu(), res.success.cpu())
    assert float(res.success.float().mean()) > 0.8


def test_bad_parameters(registry):
    with pytest.raises(ParamError, match="did you mean 'PGD'"):
        registry.build("attack", "torchattacks", {"attack": "PDG"})
    with pytest.raises(ParamError, match="takes no epsilon"):
        registry.build("attack", "torchattacks", {"attack": "PGD", "options": {"epsilon": 1}})
