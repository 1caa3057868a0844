"""Device discipline, tested without a GPU: every built-in attack, metric and analysis, and the
ONNX model's gradient paths, run with PyTorch's default device set to ``meta`` (see
:func:`harness.testing.strict_device`). A tensor made without ``device=`` (one that would sit
on the CPU while the model is on CUDA) then holds no data and the run fails."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness import Context, Model
from harness.export import export_model
from harness.metric import Evaluation
from harness.testing import check_analysis, check_attack, make_registry, strict_device, tiny_data, tiny_model
from harness.transfer import amplify, distortion_of


@pytest.fixture(scope="module")
def registry():
    return make_registry()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def data():
    return tiny_data(24)


@pytest.fixture(scope="module")
def conv() -> Model:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 10)).eval()
    return Model(net, input_shape=(1, 8, 8), num_classes=10, name="conv")


def test_the_check_catches_a_stray_tensor(model, data):
    """The mechanism itself: a tensor made without a device fails the run, one made with
    ``device=`` passes."""
    x = data.x
    with pytest.raises(AssertionError, match="stray made a tensor without saying on which device"):
        with strict_device("stray"):
            float((model.logits(x) + torch.zeros(len(x), 10)).sum())
    with strict_device("careful"):
        total = float((model.logits(x) + torch.zeros(len(x), 10, device=x.device)).sum())
    assert total == pytest.approx(float(model.logits(x).sum()))


ATTACKS = [
    ("lbfgs", {"search_steps": 2, "max_iter": 10}),
    ("lbfgs", {"targeted": False, "search_steps": 2, "max_iter": 10}),
    ("lbfgs", {"target": "random", "search_steps": 2, "max_iter": 10}),
    ("lbfgs", {"target": "least-likely", "search_steps": 2, "max_iter": 10}),
    ("gaussian-noise", {"stddev": 0.1}),
    ("gaussian-noise", {"stddev": 0.3, "clip": False}),
]


@pytest.mark.parametrize("use,params", ATTACKS, ids=[f"{u}-{i}" for i, (u, _) in enumerate(ATTACKS)])
def test_attacks(registry, model, data, use, params):
    attack = registry.build("attack", use, params)
    if use == "gaussian-noise" and not params.get("clip", True):
        # unclipped noise leaves the box on purpose; run it directly, strictly
        with strict_device(use):
            res = attack(model, data.x, data.y, Context(seed=0))
        assert res.x_adv.device == data.x.device
    else:
        check_attack(attack, model, data, Context(seed=0))


def test_torchattacks_pgd(registry, model, data):
    pytest.importorskip("torchattacks")
    attack = registry.build("attack", "torchattacks",
                            {"attack": "PGD", "options": {"eps": 0.2, "alpha": 0.05, "steps": 5}})
    check_attack(attack, model, data, Context(seed=0))


def test_metrics_and_transfer(registry, model, data):
    x, y = data.x, data.y
    res = registry.build("attack", "lbfgs", {"search_steps": 2, "max_iter": 10})(model, x, y)
    ev = Evaluation(model, x, y, model.predict(x), res, model.predict(res.x_adv))
    names = registry.names("metric")
    assert {"clean_error", "adv_error", "mean_distortion"} <= set(names)
    with strict_device("the built-in metrics"):
        values = {name: registry.build("metric", name, {}).compute(ev) for name in names}
        far = amplify(x, res.x_adv, 0.2)
        d = distortion_of(x, far)
    assert all(v is None or v == v for v in values.values())
    assert float(d.max()) <= 0.2 + 1e-5


def test_analyses(registry, conv, data):
    """Both built-in analyses keep the analysis contract (strictly on the device, too)."""
    bounds = check_analysis(registry.build("analysis", "spectral-bounds", {}), conv)
    probes = check_analysis(registry.build("analysis", "unit-probe",
                                           {"layer": "1", "units": 3, "directions": 3, "top": 3}),
                            conv, data)
    assert bounds.notes and probes.figures


@pytest.mark.parametrize("gradients", ["convert", "finite-differences", "spsa"])
def test_onnx_gradient_paths(registry, model, data, tmp_path, gradients):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "tiny.onnx"
    export_model(model, path, dynamo=False, check_batch=data.x[:4])
    onnx = registry.build("model", "onnx", {"path": str(path), "gradients": gradients}).load(Context())
    lbfgs = registry.build("attack", "lbfgs", {"search_steps": 2, "max_iter": 4})
    with strict_device(f"the onnx model ({gradients})"):
        res = lbfgs(onnx, data.x[:4], data.y[:4], Context(seed=0))
    assert res.x_adv.shape == (4, 1, 8, 8)
