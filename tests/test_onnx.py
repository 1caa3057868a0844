"""ONNX models: export (both torch exporters), conversion back to torch with a check against
onnxruntime, estimated gradients, attacks on ONNX models, and the errors users see.

The model zoo (the paper's FC10, FC100-100-10 and AE400-10, briefly trained; torchvision's
resnet18 at 64x64 and alexnet at 224x224 with random weights) is exported once per exporter
per module; MNIST tests skip when the files are absent.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnx2torch")
pytest.importorskip("onnxscript")

from harness import Context, Model, ModelError, ParamError  # noqa: E402
from harness.export import export_model, export_suite_model  # noqa: E402
from harness.plugins import default_registry  # noqa: E402
from harness.testing import run_suite_text  # noqa: E402
from harness_plugins.models import onnx_convert  # noqa: E402
from harness_plugins.models.onnx_model import choose_providers  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("HARNESS_TEST_DATA", ROOT.parent / "shared" / "data"))
HAVE_MNIST = (SHARED_DATA / "mnist" / "t10k-images-idx3-ubyte.gz").is_file()
needs_mnist = pytest.mark.skipif(not HAVE_MNIST, reason=f"MNIST not in {SHARED_DATA}")

#: the paper's nets, trained just enough to be non-trivial
ZOO = {
    "fc10": {"hidden": [], "limit": 1000},
    "fc100-100-10": {"hidden": [100, 100], "limit": 2000, "epochs": 3},
    "ae400-10": {"autoencoder": 400, "limit": 1000, "epochs": 2, "ae_epochs": 1},
}
#: torchvision nets with random weights: (factory, input shape)
VISION = {"resnet18": ("resnet18", (3, 64, 64)), "alexnet": ("alexnet", (3, 224, 224))}
EXPORTERS = {"dynamo": True, "legacy": False}


@pytest.fixture(scope="module")
def registry():
    return default_registry()


@pytest.fixture(scope="module")
def mnist_ctx(registry, tmp_path_factory):
    if not HAVE_MNIST:
        pytest.skip(f"MNIST not in {SHARED_DATA}")
    return Context(data_dir=SHARED_DATA, cache_dir=tmp_path_factory.mktemp("cache"),
                   registry=registry)


@pytest.fixture(scope="module")
def zoo(registry, mnist_ctx):
    return {name: registry.build("model", "paper-mnist", params).load(mnist_ctx)
            for name, params in ZOO.items()}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """exported(name, model, exporter, **kw) -> export_model's dict, once per argument set."""
    folder = tmp_path_factory.mktemp("onnx")
    done: dict[tuple, dict] = {}

    def export(name: str, model: Model, exporter: str, opset: int | None = None) -> dict:
        key = (name, exporter, opset)
        if key not in done:
            gen = torch.Generator().manual_seed(1)
            batch = torch.rand(3, *model.input_shape, generator=gen)
            done[key] = export_model(model, folder / f"{name}-{exporter}-{opset}.onnx",
                                     dynamo=EXPORTERS[exporter], opset=opset,
                                     check_batch=batch)
        return done[key]

    return export


def vision_model(name: str) -> Model:
    import torchvision

    factory, shape = VISION[name]
    torch.manual_seed(0)
    module = getattr(torchvision.models, factory)(weights=None)
    return Model(module, input_shape=shape, num_classes=1000, name=name)


def load_onnx(registry, path, ctx=None, **params) -> Model:
    return registry.build("model", "onnx", {"path": str(path), **params}).load(ctx or Context())


def input_grad(model: Model, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    with torch.enable_grad():
        loss = nn.functional.cross_entropy(model(x), target)
        grad, = torch.autograd.grad(loss, x)
    return grad


def check_converted(registry, original: Model, info: dict) -> Model:
    """The file converts, passes the check against onnxruntime, and behaves like the
    original torch model (logits and input gradients)."""
    assert info["max_abs_diff"] <= info["allowed_diff"]
    model = load_onnx(registry, info["path"], gradients="convert")
    assert model.gradient_source == "converted" and model.differentiable
    assert model.conversion_max_diff <= model.conversion_allowed_diff
    assert "converted to torch" in model.gradient_note
    assert model.input_shape == original.input_shape
    assert model.num_classes == original.num_classes
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(5, *original.input_shape, generator=gen)
    with torch.no_grad():
        ref, got = original(x), model(x)
    scale = max(1.0, float(ref.abs().max()))
    assert float((got - ref).abs().max()) <= 1e-4 * scale
    target = (ref.argmax(1) + 1) % original.num_classes
    g_ref, g = input_grad(original, x, target), input_grad(model, x, target)
    assert float((g - g_ref).norm() / g_ref.norm()) < 1e-3
    return model


# ------------------------------------------------------------------------ zoo x exporters

@needs_mnist
@pytest.mark.parametrize("exporter", list(EXPORTERS))
@pytest.mark.parametrize("name", list(ZOO))
def test_paper_zoo_exports_convert_and_verify(registry, zoo, exported, name, exporter):
    original = zoo[name]
    info = exported(name, original, exporter)
    assert info["exporter"] == exporter
    assert info["opset"] == 17 if exporter == "legacy" else info["opset"] >= 18
    model = check_converted(registry, original, info)
    # the converted module is a torch module whose layers probes can reach
    names = [n for n, _ in model.module.named_modules() if n]
    assert names and model.features(names[-1], torch.rand(2, 1, 28, 28)).shape[0] == 2


@pytest.mark.parametrize("exporter", list(EXPORTERS))
@pytest.mark.parametrize("name", list(VISION))
def test_torchvision_exports_convert_and_verify(registry, exported, name, exporter):
    original = vision_model(name)
    info = exported(name, original, exporter)
    model = check_converted(registry, original, info)
    if name == "resnet18" and exporter == "legacy":
        # the legacy exporter routes deduplicated biases through Identity nodes
        assert model.conversion_rewrites.get("identity_bypassed", 0) > 0
    if exporter == "dynamo":
        assert model.conversion_rewrites.get("reshape_allowzero_relaxed", 0) > 0


@pytest.mark.parametrize("opset", [18, 21, 23])
def test_dynamo_opsets_convert(registry, exported, opset):
    """Opset 18 keeps onnx2torch's Reshape-14 (allowzero rewritten); later ones use the
    added Reshape and type-widened converters."""
    original = vision_model("resnet18")
    info = exported("resnet18", original, "dynamo", opset)
    assert info["opset"] == opset
    check_converted(registry, original, info)


# ------------------------------------------------------------------------ converters

def make_graph(nodes, inputs, outputs, initializers=(), opset=18):
    from onnx import helper

    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=9)


def run_ort(model_proto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(model_proto.SerializeToString(),
                                providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("op", sorted(onnx_convert.REDUCTIONS))
@pytest.mark.parametrize("axes,keepdims", [([1], 1), ([1, 3], 0), ([-1], 0), (None, 1)])
def test_opset18_reductions_match_onnxruntime(op, axes, keepdims):
    from onnx import TensorProto, helper, numpy_helper

    inputs = ["x"] + (["axes"] if axes is not None else [])
    inits = [numpy_helper.from_array(np.array(axes, dtype=np.int64), "axes")] if axes else []
    node = helper.make_node(op, inputs, ["y"], keepdims=keepdims)
    proto = make_graph([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                              [2, 3, 4, 5])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    x = np.random.default_rng(0).uniform(0.5, 1.5, (2, 3, 4, 5)).astype(np.float32)
    module, _ = onnx_convert.convert(proto)
    got = module(torch.from_numpy(x)).numpy()
    ref = run_ort(proto, x)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opset", [19, 21])
@pytest.mark.parametrize("allowzero", [0, 1])
def test_reshape_with_a_computed_shape(opset, allowzero):
    """Reshape 19+ whose shape comes from the graph (Shape -> Concat), with and without
    allowzero, after an Identity and a Constant node (both rewritten away)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Identity", ["x"], ["x1"]),
        helper.make_node("Shape", ["x1"], ["s"], start=0, end=1),
        helper.make_node("Constant", [], ["minus1"],
                         value=numpy_helper.from_array(np.array([-1], dtype=np.int64))),
        helper.make_node("Concat", ["s", "minus1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x1", "shape"], ["y"], allowzero=allowzero),
    ]
    proto = make_graph(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                             ["n", 3, 4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                       opset=opset)
    module, stats = onnx_convert.convert(proto)
    assert stats["identity_bypassed"] == 1 and stats["constants_to_initializers"] == 1
    x = np.random.default_rng(0).normal(size=(5, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(module(torch.from_numpy(x)).numpy(), run_ort(proto, x))


def test_unsupported_operator_is_one_line():
    from onnx import TensorProto, helper

    proto = make_graph([helper.make_node("Mish", ["x"], ["y"])],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    with pytest.raises(onnx_convert.ConversionError, match="Mish") as info:
        onnx_convert.convert(proto)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------ small models

def small_net(seed: int = 0) -> nn.Module:
    """A random sigmoid net on 8x8 images (curved, so finite differences are tested)."""
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Sigmoid(), nn.Linear(32, 10))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return net.eval()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """(torch Model, path of its legacy export)."""
    model = Model(small_net(), input_shape=(1, 8, 8), num_classes=10, name="small")
    path = tmp_path_factory.mktemp("small") / "small.onnx"
    export_model(model, path, dynamo=False, check_batch=torch.rand(4, 1, 8, 8))
    return model, path


def test_finite_differences_match_autograd(registry, small):
    original, path = small
    model = load_onnx(registry, path, gradients="finite-differences")
    assert model.gradient_source == "finite-differences" and model.module is None
    assert "128 forward passes per image per gradient" in model.gradient_note
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    target = torch.arange(6) % 10
    g_ref, g = input_grad(original, x, target), input_grad(model, x, target)
    assert float((g - g_ref).norm() / g_ref.norm()) < 2e-3
    with torch.no_grad():
        assert torch.allclose(model(x), original(x), atol=1e-5)
    with pytest.raises(ModelError, match="exposes no layers"):
        model.layer("1")


def test_spsa_correlates_with_autograd_and_is_reproducible(registry, small):
    original, path = small
    model = load_onnx(registry, path, gradients="spsa", spsa_samples=256)
    assert model.gradient_source == "spsa" and "512 forward passes" in model.gradient_note
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    target = torch.tensor([1, 2, 3, 4])
    g_ref, g = input_grad(original, x, target), input_grad(model, x, target)
    cos = nn.functional.cosine_similarity(g.flatten(1), g_ref.flatten(1), dim=1)
    assert bool((cos > 0.6).all()), cos   # about sqrt(256 / (256 + 64)) = 0.89 expected
    assert torch.equal(g, input_grad(model, x, target))   # keyed by the inputs, not by order


def test_gradients_none_is_not_differentiable_and_lbfgs_refuses(registry, small, tmp_path):
    _, path = small
    model = load_onnx(registry, path, gradients="none")
    assert not model.differentiable and model.gradient_source is None
    suite = f"""\
name: onnx-none
data: {{use: digits, split: test, limit: 10}}
models:
  plain: {{use: onnx, path: "{path}", gradients: none}}
tests:
  - name: clean
  - name: lbfgs
    attack: {{use: lbfgs, target: next}}
"""
    code, results = run_suite_text(suite, tmp_path)
    assert code == 2   # a case failed on the user's input
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    by = {c["test"]: c for c in summary["cases"]}
    assert by["clean"]["status"] == "ok"
    assert by["lbfgs"]["status"] == "error" and "needs gradients" in by["lbfgs"]["error"]


def test_auto_falls_back_when_the_conversion_fails(registry, tmp_path, caplog):
    """A graph with an operator onnx2torch cannot convert (Mish): auto estimates gradients
    and says why; convert refuses with one line."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(64, 10)).astype(np.float32) * 0.2, "w")
    nodes = [helper.make_node("Flatten", ["x"], ["f"]),
             helper.make_node("MatMul", ["f", "w"], ["h"]),
             helper.make_node("Mish", ["h"], ["y"])]
    proto = make_graph(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                             ["n", 1, 8, 8])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])], [w])
    path = tmp_path / "mish.onnx"
    onnx.save(proto, str(path))
    with caplog.at_level("WARNING"):
        model = load_onnx(registry, path)
    assert model.gradient_source == "finite-differences" and model.differentiable
    assert "conversion to torch failed" in model.gradient_note and "Mish" in model.gradient_note
    assert "Mish" in caplog.text
    with pytest.raises(ModelError, match="Mish") as info:
        load_onnx(registry, path, gradients="convert")
    assert "\n" not in str(info.value)


def test_a_conversion_that_disagrees_is_not_used(registry, small, monkeypatch):
    _, path = small
    wrong = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    monkeypatch.setattr(onnx_convert, "convert", lambda proto, output=None: (wrong, {}))
    model = load_onnx(registry, path)
    assert model.gradient_source == "finite-differences"
    assert "differ from onnxruntime's" in model.gradient_note
    with pytest.raises(ModelError, match="differ from onnxruntime's"):
        load_onnx(registry, path, gradients="convert")


def test_normalization_static_batch_and_open_shapes(registry, tmp_path):
    """mean/std go before the graph; a graph exported with a fixed batch of 1 takes any
    batch; a graph with open image dims needs input_shape."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 5)).eval()
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    path = tmp_path / "conv.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(1, 3, 12, 12),), str(path), dynamo=False,
                          opset_version=17, input_names=["img"], output_names=["out"])
    x = torch.rand(5, 3, 12, 12)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = net((x - m) / s)
    for gradients in ("convert", "finite-differences"):
        model = load_onnx(registry, path, mean=mean, std=std, gradients=gradients)
        assert model.input_shape == (3, 12, 12) and model.num_classes == 5
        with torch.no_grad():
            assert torch.allclose(model(x), ref, atol=1e-5)
    # open height and width
    open_path = tmp_path / "open.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(2, 3, 12, 12),), str(open_path), dynamo=False,
                          opset_version=17, input_names=["img"], output_names=["out"],
                          dynamic_axes={"img": {0: "n", 2: "h", 3: "w"}, "out": {0: "n"}})
    with pytest.raises(ModelError, match="give input_shape"):
        load_onnx(registry, open_path)
    model = load_onnx(registry, open_path, input_shape=[3, 16, 16])
    assert model.input_shape == (3, 16, 16) and model.gradient_source == "converted"
    with pytest.raises(ModelError, match="does not fit"):
        load_onnx(registry, open_path, input_shape=[1, 16, 16])


def test_io_binding_gives_the_same_logits(registry, small):
    """The io-binding path (used with the CUDA provider) run on the CPU."""
    _, path = small
    model = load_onnx(registry, path, gradients="none")
    x = torch.rand(7, 1, 8, 8)
    plain = model(x)
    model.onnx_graph.bind = True
    assert torch.equal(model(x), plain)


def test_provider_choice():
    cuda_too = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(torch.device("cpu"), cuda_too) == ["CPUExecutionProvider"]
    assert choose_providers(torch.device("cuda:1"), cuda_too) == [
        ("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert choose_providers(torch.device("cuda"), ["CPUExecutionProvider"]) == [
        "CPUExecutionProvider"]


def test_runs_on_the_cpu_provider_here(registry, small):
    _, path = small
    model = load_onnx(registry, path, Context(device=torch.device("cpu")), gradients="spsa")
    assert model.onnx_providers == ["CPUExecutionProvider"]
    assert model.device == torch.device("cpu")


# ------------------------------------------------------------------------ errors

def test_missing_and_unreadable_files(registry, tmp_path):
    # a missing file is caught when the suite is checked (harness validate), on its line
    with pytest.raises(ParamError, match="not found") as info:
        load_onnx(registry, tmp_path / "nope.onnx")
    assert info.value.param == "path"
    with pytest.raises(ParamError, match="is a folder"):
        load_onnx(registry, tmp_path)
    junk = tmp_path / "junk.onnx"
    junk.write_text("this is not a protobuf\n" * 10)
    with pytest.raises(ModelError, match="cannot load") as info:
        load_onnx(registry, junk)
    assert "\n" not in str(info.value)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelError):
        load_onnx(registry, empty)


def test_bad_graph_inputs_and_outputs(registry, small, tmp_path):
    _, path = small
    with pytest.raises(ModelError, match="no input 'pixels'"):
        load_onnx(registry, path, input_name="pixels")
    with pytest.raises(ModelError, match="no output 'probs'"):
        load_onnx(registry, path, output_name="probs")
    with pytest.raises(ModelError, match="num_classes is 7"):
        load_onnx(registry, path, num_classes=7)
    with pytest.raises(ModelError, match="channels"):
        load_onnx(registry, path, mean=[0.5, 0.5], std=[0.2, 0.2])
    from onnx import TensorProto, helper

    two = make_graph([helper.make_node("Add", ["a", "b"], ["y"])],
                     [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 10])
                      for n in "ab"],
                     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])])
    onnx.save(two, str(tmp_path / "two.onnx"))
    with pytest.raises(ModelError, match="takes 2 inputs"):
        load_onnx(registry, tmp_path / "two.onnx")


@pytest.mark.parametrize("params,field", [
    ({"gradients": "adjoint"}, "gradients"),
    ({"fd_step": 0}, "fd_step"),
    ({"fd_step": 0.7}, "fd_step"),
    ({"spsa_samples": 0}, "spsa_samples"),
    ({"tolerance": -1.0}, "tolerance"),
    ({"mean": [0.5]}, "std"),
    ({"mean": [0.5], "std": [0.0]}, "std"),
    ({"input_shape": [1, 0, 28]}, "input_shape"),
    ({"num_classes": 0}, "num_classes"),
    ({"gradient": "auto"}, "gradient"),
])
def test_bad_params_name_the_parameter(registry, params, field):
    with pytest.raises(ParamError) as info:
        registry.build("model", "onnx", {"path": "m.onnx", **params})
    assert info.value.param == field


# ------------------------------------------------------------------------ attacks

@needs_mnist
def test_lbfgs_on_the_onnx_export_matches_the_torch_model(registry, zoo, exported, mnist_ctx):
    original = zoo["fc100-100-10"]
    info = exported("fc100-100-10", original, "dynamo")
    data = mnist_ctx.dataset("mnist", split="test", limit=20)
    attack = registry.build("attack", "lbfgs", {"target": "next"})

    def run(model, n):
        res = attack(model, data.x[:n], data.y[:n], mnist_ctx)
        return float(res.success.float().mean()), float(res.distortion[res.success].mean())

    ref = run(original, 20)
    converted = run(load_onnx(registry, info["path"], mnist_ctx), 20)
    assert converted[0] == ref[0] and converted[1] == pytest.approx(ref[1], rel=0.01)
    ref8 = run(original, 8)
    fd = run(load_onnx(registry, info["path"], mnist_ctx, gradients="finite-differences"), 8)
    assert fd[0] == ref8[0] and fd[1] == pytest.approx(ref8[1], rel=0.02)


# ------------------------------------------------------------------------ export

def test_export_model_errors_leave_no_file(small, tmp_path):
    original, _ = small
    out = tmp_path / "m.onnx"
    with pytest.raises(ModelError, match="differs from the module"):
        export_model(original, out, dynamo=False, check_batch=torch.rand(3, 1, 8, 8),
                     tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ModelError, match="check batch"):
        export_model(original, out, dynamo=False, check_batch=torch.rand(3, 1, 9, 9))
    with pytest.raises(ModelError, match="does not exist"):
        export_model(original, tmp_path / "no" / "m.onnx", dynamo=False,
                     check_batch=torch.rand(3, 1, 8, 8))
    bare = Model(forward=original, input_shape=(1, 8, 8), num_classes=10, name="bare")
    with pytest.raises(ModelError, match="no torch module"):
        export_model(bare, out, dynamo=False, check_batch=torch.rand(3, 1, 8, 8))


def test_export_suite_model_then_run_it(tmp_path):
    """``export_suite_model`` loads the suite's model as a run would; the exported file, run
    as an ``onnx`` model in a suite, gives the original's clean error."""
    suite = tmp_path / "suite.yaml"
    suite.write_text("""\
name: digits
seed: 3
data: {use: digits, split: test, limit: 100}
models:
  net: {use: mlp, hidden: [16], epochs: 20}
tests:
  - name: clean
""")
    out = tmp_path / "net.onnx"
    info = export_suite_model(suite, "net", out, device="cpu", cache_dir=tmp_path / "cache",
                              dynamo=False)
    assert out.is_file() and info["model"] == "net" and info["suite"] == "digits"
    assert info["checked"] == 32 and "images of digits" in info["check"]
    with pytest.raises(Exception, match="no model 'other'"):
        export_suite_model(suite, "other", out, device="cpu", cache_dir=tmp_path / "cache")
    both = f"""\
name: both
seed: 3
data: {{use: digits, split: test, limit: 100}}
models:
  net: {{use: mlp, hidden: [16], epochs: 20}}
  exported: {{use: onnx, path: "{out}"}}
tests:
  - name: clean
"""
    code, results = run_suite_text(both, tmp_path / "run2", cache_dir=tmp_path / "cache")
    assert code == 0
    errors = results.set_index("model")["value"]
    assert errors["net"] == errors["exported"]


def test_transfer_onto_the_deployed_model(tmp_path):
    """Examples made on the torch model, fed to its ONNX export (no gradients needed there)."""
    from harness.testing import run_suite_text
    from harness.export import export_suite_model

    suite = tmp_path / "deploy.yaml"
    text = """\
name: deploy
data: {use: digits, split: test, limit: 40}
models:
  torch-net: {use: torch, factory: "tiny_models:digits_template", input_shape: [1, 8, 8]}
tests:
  - name: clean
"""
    suite.write_text(text)
    onnx_path = tmp_path / "net.onnx"
    export_suite_model(suite, "torch-net", onnx_path, dynamo=False)
    text = text.replace("tests:", f"""  deployed: {{use: onnx, path: "{onnx_path}", gradients: none}}
tests:""") + """  - name: to-deployment
    models: [torch-net]
    attack: {use: lbfgs, target: next, search_steps: 5}
    transfer: all
"""
    code, results = run_suite_text(text, tmp_path / "run2")
    assert code == 0
    def get(model, metric, param=""):
        rows = results[(results.model == model) & (results.metric == metric) & (results.param == param)]
        return float(rows.value.iloc[0])
    assert get("deployed", "clean_error") == get("torch-net", "clean_error")
    # the deployment is the same function: the examples fool it exactly as much
    assert get("deployed", "adv_error", "made_for=torch-net") == \
        get("torch-net", "adv_error", "made_for=torch-net") == 1.0
    from harness.store import RunStore
    summary = RunStore(tmp_path / "run2" / "run").summary()
    grads = {m["id"]: m["gradients"] for m in summary["models"]}
    assert grads == {"torch-net": "autograd", "deployed": None}


def test_onnx_models_leave_the_home_folder_alone(tmp_path, env_with_tests_on_path):
    """onnxruntime's telemetry store (~/.cache/Microsoft/DeveloperTools) is turned off: a run
    with an ONNX model writes nothing under the home folder (a CI job's may be read-only)."""
    import subprocess
    import sys

    from onnx import TensorProto, helper, numpy_helper

    gen = np.random.default_rng(0)
    nodes = [helper.make_node("Flatten", ["input"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w", "b"], ["logits"], transB=1)]
    inits = [numpy_helper.from_array(gen.normal(size=(10, 64)).astype(np.float32), "w"),
             numpy_helper.from_array(np.zeros(10, np.float32), "b")]
    model = make_graph(nodes, [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                             ["N", 1, 8, 8])],
                       [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
                       inits, opset=17)
    path = tmp_path / "net.onnx"
    path.write_bytes(model.SerializeToString())
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"""\
name: ort
data: {{use: digits, split: test, limit: 20}}
models:
  net: {{use: onnx, path: "{path}", gradients: none}}
tests:
  - name: clean
""")
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in env_with_tests_on_path.items()
           if k not in ("XDG_CACHE_HOME", "ORT_DISABLE_TELEMETRY")}
    env.update(HOME=str(home), HARNESS_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(suite), "--out",
                           str(tmp_path / "run"), "-q"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert list(home.rglob("*")) == []
