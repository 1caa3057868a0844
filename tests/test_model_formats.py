"""Model formats: safetensors weights, TorchScript, torch.export, timm and ONNX files give
the original module's logits and gradients, run attacks through a suite, and are pinned
by sha256."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from harness import Context, ModelError, ParamError
from harness.cli import main
from harness.plugins import default_registry
from tiny_models import small_conv

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


@pytest.fixture(scope="module")
def registry():
    return default_registry()


def normalized(module: nn.Module) -> nn.Module:
    m = torch.tensor(MEAN).view(1, 3, 1, 1)
    s = torch.tensor(STD).view(1, 3, 1, 1)
    return lambda x: module((x - m) / s)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The same module (seed 7) saved in every format."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("formats")
    net = small_conv(seed=7).eval()
    x = torch.rand(2, 3, 8, 8)
    save_file(net.state_dict(), str(folder / "w.safetensors"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(net, x).save(str(folder / "m.ts"))
        batch = torch.export.Dim("batch")
        torch.export.save(torch.export.export(net, (x,), dynamic_shapes=({0: batch},)),
                          str(folder / "m.pt2"))
        torch.export.save(torch.export.export(net, (x[:1],)), str(folder / "fixed.pt2"))
        torch.onnx.export(net, (x,), str(folder / "m.onnx"), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    return net, folder


SPECS = {
    "torch": lambda f: {"use": "torch", "factory": "tiny_models:small_conv",
                        "weights": str(f / "w.safetensors")},
    "torchscript": lambda f: {"use": "torchscript", "path": str(f / "m.ts")},
    "torch-export": lambda f: {"use": "torch-export", "path": str(f / "m.pt2")},
    "fixed-batch": lambda f: {"use": "torch-export", "path": str(f / "fixed.pt2")},
    "onnx": lambda f: {"use": "onnx", "path": str(f / "m.onnx")},
}


def build(registry, spec):
    spec = dict(spec)
    return registry.build("model", spec.pop("use"), spec)


@pytest.mark.parametrize("fmt", list(SPECS))
def test_every_format_gives_the_modules_logits_and_gradients(registry, files, fmt):
    net, folder = files
    ctx = Context(input_shape=(3, 8, 8), num_classes=4)
    model = build(registry, {**SPECS[fmt](folder), "mean": MEAN, "std": STD}).load(ctx)
    assert model.input_shape == (3, 8, 8) and model.num_classes == 4 and model.differentiable
    x = torch.rand(5, 3, 8, 8)
    ref = normalized(net)
    with torch.no_grad():
        assert torch.allclose(model.logits(x), ref(x), atol=1e-5)
    target = torch.tensor([0, 1, 2, 3, 0])
    grads = []
    for f in (model, ref):
        xg = x.clone().requires_grad_(True)
        with torch.enable_grad():
            torch.nn.functional.cross_entropy(f(xg), target).backward()
        grads.append(xg.grad)
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], atol=1e-5)
    # the file's weights are frozen: attacks do not accumulate gradients in them
    params = model.module.parameters() if model.module is not None else []
    assert not any(p.requires_grad for p in params)


def test_a_fixed_batch_program_is_fed_its_batch_size(registry, files):
    net, folder = files
    model = build(registry, SPECS["fixed-batch"](folder)).load(Context())
    assert model.input_shape == (3, 8, 8)     # read from the program itself
    assert "fixed batch of 1" in model.gradient_note
    x = torch.rand(3, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model(x), net(x), atol=1e-5)


def test_an_attack_runs_on_every_format_with_the_same_numbers(files, tmp_path):
    _, folder = files
    models = "\n".join(f"  {name}: {dict(SPECS[name](folder), mean=MEAN, std=STD)}"
                       for name in SPECS)
    suite = tmp_path / "formats.yaml"
    suite.write_text(f"""name: formats
data: {{use: synthetic, shape: [3, 8, 8], num_classes: 4, size: 6}}
models:
{models}
tests:
  - name: clean
  - name: lbfgs
    attack: {{use: lbfgs, target: next, search_steps: 6, max_iter: 40}}
""")
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out), "-q", "--cache-dir",
                 str(tmp_path / "cache")]) == 0
    res = pd.read_csv(out / "results.csv")
    table = res[res.test == "lbfgs"].pivot_table(index="model", columns="metric",
                                                  values="value")
    assert (table["success_rate"] == 1.0).all()
    ref = table.loc["torch"]
    for name in SPECS:
        assert table.loc[name, "clean_error"] == ref["clean_error"]
        assert table.loc[name, "mean_distortion"] == pytest.approx(ref["mean_distortion"],
                                                                    rel=1e-3)


@pytest.mark.parametrize("fmt", list(SPECS))
def test_a_wrong_pin_stops_the_run_before_anything_runs(files, tmp_path, capsys, fmt):
    _, folder = files
    spec = SPECS[fmt](folder)
    pinned = Path(spec.get("weights") or spec["path"])
    digest = hashlib.sha256(pinned.read_bytes()).hexdigest()
    suite = tmp_path / "pin.yaml"
    text = f"""name: pin
data: {{use: synthetic, shape: [3, 8, 8], num_classes: 4, size: 2}}
models:
  m:
{chr(10).join(f'    {k}: {v}' for k, v in spec.items())}
    sha256: {{pin}}
tests:
  - name: clean
"""
    suite.write_text(text.replace("{pin}", digest))
    assert main(["run", str(suite), "--out", str(tmp_path / "ok"), "-q"]) == 0
    capsys.readouterr()
    suite.write_text(text.replace("{pin}", "ab" * 32))
    out = tmp_path / "bad"
    assert main(["run", str(suite), "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    line = next(i for i, l in enumerate(text.splitlines(), 1) if "sha256" in l)
    assert len(err) == 1 and f"{suite}:{line}:" in err[0] and digest in err[0]
    assert not out.exists()          # nothing ran, no run folder
    suite.write_text(text.replace("{pin}", "not-a-digest"))
    assert main(["validate", str(suite)]) == 2
    assert f"{suite}:{line}:" in capsys.readouterr().err


def test_file_errors_are_one_line(registry, files, tmp_path):
    _, folder = files
    with pytest.raises(ParamError) as info:
        build(registry, {"use": "torchscript", "path": str(tmp_path / "none.ts")})
    assert info.value.param == "path"
    with pytest.raises(ModelError, match="torch.jit.load.*torch-export") as info:
        build(registry, {"use": "torchscript", "path": str(folder / "m.pt2")}).load(Context())
    assert "\n" not in str(info.value)
    with pytest.raises(ModelError, match="torch.export.load"):
        build(registry, {"use": "torch-export", "path": str(folder / "m.ts")}).load(Context())
    with pytest.raises(ModelError, match="does not fit"):
        build(registry, {"use": "torch-export", "path": str(folder / "m.pt2"),
                         "input_shape": [3, 9, 9]}).load(Context())
    with pytest.raises(ModelError, match="give input_shape"):
        build(registry, {"use": "torchscript", "path": str(folder / "m.ts")}).load(Context())
    with pytest.raises(ModelError, match="channels"):
        build(registry, {"use": "torchscript", "path": str(folder / "m.ts"), "mean": [0.5, 0.5],
                         "std": [0.2, 0.2]}).load(Context(input_shape=(3, 8, 8)))
    with pytest.raises(ParamError) as info:
        build(registry, {"use": "torch", "factory": "tiny_models:small_conv", "sha256": "ab" * 32})
    assert info.value.param == "sha256"
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2)}, str(other))
    with pytest.raises(ModelError, match="do not fit.*missing"):
        build(registry, {"use": "torch", "factory": "tiny_models:small_conv",
                         "weights": str(other)}).load(Context(input_shape=(3, 8, 8)))


def test_mean_std_imagenet_shorthand(registry, files):
    _, folder = files
    plugin = build(registry, {"use": "torchscript", "path": str(folder / "m.ts"),
                              "mean": "imagenet", "std": "imagenet"})
    assert plugin.mean == [0.485, 0.456, 0.406] and plugin.std == [0.229, 0.224, 0.225]


def test_timm_model_by_name_with_a_local_checkpoint(registry, tmp_path):
    timm = pytest.importorskip("timm", reason="timm is not installed (extra [timm])")
    from safetensors.torch import save_file

    torch.manual_seed(3)
    net = timm.create_model("test_resnet", pretrained=False, num_classes=5).eval()
    save_file(net.state_dict(), str(tmp_path / "ckpt.safetensors"))
    model = build(registry, {"use": "timm", "model": "test_resnet",
                             "checkpoint": str(tmp_path / "ckpt.safetensors"),
                             "kwargs": {"num_classes": 5}}).load(Context(input_shape=(3, 32, 32)))
    assert model.num_classes == 5 and model.input_shape == (3, 32, 32)
    cfg = net.pretrained_cfg
    m = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    s = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    with torch.enable_grad():
        out = model(x)
        out[:, 1].sum().backward()
    with torch.no_grad():
        assert torch.allclose(out, net((x - m) / s), atol=1e-5)
    assert x.grad.abs().sum() > 0
    assert model.layer("1.fc") is not None            # layers addressable behind the normalization
    with pytest.raises(ModelError, match="did you mean"):
        build(registry, {"use": "timm", "model": "test_resnett"}).load(Context())
    with pytest.raises(ParamError) as info:
        build(registry, {"use": "timm", "model": "resnet18", "kwargs": {"pretrained": True}})
    assert info.value.param == "kwargs"


def test_export_a_model_that_takes_its_shape_from_streamed_data(tmp_path, capsys):
    pytest.importorskip("onnx")
    suite = tmp_path / "s.yaml"
    suite.write_text("""name: s
data: {use: synthetic, shape: [3, 8, 8], num_classes: 4, size: 5}
models:
  m: {use: torch, factory: "tiny_models:small_conv"}
tests:
  - name: clean
""")
    out = tmp_path / "m.onnx"
    assert main(["export", str(suite), "m", str(out), "--legacy"]) == 0
    assert "5 images of synthetic" in capsys.readouterr().out
    assert out.is_file()
