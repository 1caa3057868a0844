"""Transfer tests: examples made for one model fed to others, amplified, with a noise
baseline; saved in a portable format and reusable."""

from __future__ import annotations

import json
import types

import numpy as np

from harness import transfer
import pytest
import torch

from harness import Model, ModelPlugin, hookimpl
from harness.errors import SuiteError
from harness.report import build_tables
from harness.store import RunStore
from harness.suite import load_suite
from harness.testing import make_registry, run_suite_text
from harness.transfer import amplify, distortion_of


class Blackbox(ModelPlugin):
    """The nearest-mean digits classifier behind a forward function: no gradients."""

    def __init__(self):
        pass

    def load(self, ctx):
        import tiny_models

        module = tiny_models.digits_template().to(ctx.device).eval()
        return Model(forward=lambda x: module(x).detach(), input_shape=(1, 8, 8),
                     num_classes=10, device=ctx.device, differentiable=False)


PLUGIN = types.SimpleNamespace(register_models=hookimpl(lambda register: register("blackbox", Blackbox)))

SUITE = """\
name: transfer
seed: 3
data: {use: digits, split: test, limit: 60}
models:
  near: {use: torch, factory: "tiny_models:digits_template", input_shape: [1, 8, 8]}
  mlp: {use: mlp, hidden: [32], epochs: 200}
  box: {use: blackbox}
tests:
  - name: xfer
    attack: {use: lbfgs, target: next, search_steps: 6}
    models: [near, mlp]
    transfer: all
    baseline: {use: gaussian-noise, stddev: [0.1, 0.3], clip: false}
    amplify: [0.25]
    pictures: 2
tables:
  - title: Matrix
    matrix: {test: xfer, models: [near, mlp]}
    reference: {source: invented, rows: {made_for=near: [1.0, 0.3, 0.1]}}
"""


@pytest.fixture(scope="module")
def registry():
    return make_registry(PLUGIN)


@pytest.fixture(scope="module")
def first_run(registry, tmp_path_factory):
    folder = tmp_path_factory.mktemp("xfer")
    code, results = run_suite_text(SUITE, folder, registry)
    return folder, code, results


def value(results, model, metric, param):
    rows = results[(results.model == model) & (results.metric == metric) & (results.param == param)]
    assert len(rows) == 1, (model, metric, param)
    return float(rows.value.iloc[0])


def test_matrix_values(first_run):
    folder, code, results = first_run
    assert code == 0
    # examples made for a model fool it (targeted L-BFGS reaches every target)
    for src in ("near", "mlp"):
        assert value(results, src, "success_rate", f"made_for={src}") == 1.0
        assert value(results, src, "adv_error", f"made_for={src}") == 1.0
    # a gradient-free model can be fed, though not attacked
    assert 0.0 <= value(results, "box", "adv_error", "made_for=mlp") <= 1.0
    # the black box is the same function as `near`: it is fooled exactly as much
    assert value(results, "box", "adv_error", "made_for=near") == 1.0
    # amplified perturbations: distortion at most the level asked for (clipping shrinks it)
    d = value(results, "near", "mean_distortion", "made_for=near,amplified=0.25")
    assert 0.15 < d <= 0.25 + 1e-6
    assert value(results, "mlp", "adv_error", "made_for=near,amplified=0.25") >= \
        value(results, "mlp", "adv_error", "made_for=near")
    # unclipped noise: distortion is the stddev
    assert abs(value(results, "mlp", "mean_distortion", "gaussian-noise stddev=0.3") - 0.3) < 0.01


def test_matrix_report(first_run):
    folder, _, _ = first_run
    _, tables = build_tables(RunStore(folder / "run"))
    matrix = next(t for t in tables if t.title == "Matrix")
    assert matrix.headers == ["made for / fed to", "near", "paper", "mlp", "paper",
                              "av. distortion", "paper"]
    first = matrix.rows[0]
    assert first[0] == "made_for=near" and first[1] == "100%" and first[2] == "100%"
    auto = next(t for t in tables if t.title.startswith("Test xfer"))
    assert [r[0] for r in auto.rows] == [
        "made_for=near", "made_for=near,amplified=0.25", "made_for=mlp",
        "made_for=mlp,amplified=0.25", "gaussian-noise stddev=0.1", "gaussian-noise stddev=0.3"]
    assert auto.headers[1:4] == ["near", "mlp", "box"]
    assert "figures/xfer/near/examples.png" in auto.figures


def test_saved_examples_are_portable(first_run):
    folder, _, _ = first_run
    base = folder / "run" / "artifacts" / "xfer"
    # one NumPy file per chunk of images, named by the positions it holds
    chunks = sorted(p.name for p in (base / "near").glob("*.npz"))
    assert chunks == ["0-60.npz"]
    with np.load(base / "near" / "0-60.npz") as f:
        assert set(f.files) == {"x_adv", "x", "y", "success", "distortion", "target"}
    f = transfer.load_examples(folder / "run", "xfer", "near")   # the chunks joined
    assert f["x_adv"].shape == (60, 1, 8, 8) and f["x_adv"].dtype == np.float32
    assert f["success"].all() and ((f["y"] + 1) % 10 == f["target"]).all()
    r = (f["x_adv"] - f["x"]).reshape(60, -1)
    assert np.allclose(np.sqrt((r ** 2).mean(1)), f["distortion"], atol=1e-6)
    meta = json.loads((base / "near.json").read_text())
    assert meta["format"] == "harness-adversarial-examples/1"
    assert meta["model_spec"]["use"] == "torch" and meta["seed"] == 3 and meta["n"] == 60


def test_reuse_adds_a_model_without_crafting_again(first_run, registry, tmp_path):
    folder, _, results = first_run
    more = SUITE.replace("  box: {use: blackbox}\n",
                         "  box: {use: blackbox}\n  wide: {use: mlp, hidden: [48], epochs: 200}\n")
    code, again = run_suite_text(more, tmp_path, registry, reuse=folder / "run")
    assert code == 0
    summary = RunStore(tmp_path / "run").summary()
    notes = [n for c in summary["cases"] for n in c["notes"]]
    assert any("examples for near reused" in n for n in notes)
    assert any("examples for mlp reused" in n for n in notes)
    # the same examples: the same errors on the models both runs have
    assert value(again, "box", "adv_error", "made_for=mlp") == value(results, "box", "adv_error", "made_for=mlp")
    assert 0 <= value(again, "wide", "adv_error", "made_for=near") <= 1
    # a changed attack does not reuse
    changed = more.replace("search_steps: 6", "search_steps: 5")
    run_suite_text(changed, tmp_path / "c", registry, reuse=folder / "run")
    notes = [n for c in RunStore(tmp_path / "c" / "run").summary()["cases"] for n in c["notes"]]
    assert not any("reused" in n for n in notes)


def test_amplify():
    x = torch.full((2, 1, 4, 4), 0.5)
    x_adv = x.clone()
    x_adv[0, 0, 0, 0] += 0.1
    out = amplify(x, x_adv, 0.05)
    assert torch.allclose(distortion_of(x, out)[0], torch.tensor(0.05))
    assert torch.equal(out[1], x[1])  # no perturbation: nothing to amplify
    big = amplify(x, x_adv, 1.0)
    assert float(big.max()) == 1.0  # clipped to the box


@pytest.mark.parametrize("old,new,words", [
    ("    transfer: all\n", "", "belong to transfer tests"),
    ("    attack: {use: lbfgs, target: next, search_steps: 6}\n", "", "needs an attack"),
    ("baseline: {use: gaussian-noise, stddev: [0.1, 0.3], clip: false}", "baseline: lbfgs",
     "a baseline is made once for all models"),
    ("transfer: all", "transfer: [near, far]", "unknown model id 'far'"),
    ("amplify: [0.25]", "amplify: [0]", "must be > 0"),
    ("matrix: {test: xfer, models: [near, mlp]}", "matrix: {test: xfer, models: [near, nope]}",
     "does not feed model 'nope'"),
])
def test_validation(write_suite, registry, old, new, words):
    assert old in SUITE
    with pytest.raises(SuiteError, match=words):
        load_suite(write_suite(SUITE.replace(old, new)), registry)


def test_cases_plan(write_suite, registry):
    """One case per source model, plus one for the baseline (what `harness validate` counts)."""
    from harness.plan import Plan

    suite = load_suite(write_suite(SUITE), registry)
    assert [c.model for c in Plan(suite, registry).cases] == ["near", "mlp", "(baseline)"]
    no_baseline = SUITE.replace("    baseline: {use: gaussian-noise, stddev: [0.1, 0.3], clip: false}\n", "")
    plan = Plan(load_suite(write_suite(no_baseline), registry), registry)
    assert [c.model for c in plan.cases] == ["near", "mlp"]


def test_noise_distortion_is_over_all_images_in_every_test_kind(tmp_path, capsys):
    """Noise has no goal: the noise test and a transfer test's noise rows both average its
    distortion over all images (the same draws, the same number), and say how many; the
    attack's distortion stays over its successful images."""
    from harness.cli import main

    text = """\
name: noise-conventions
seed: 1
data: {use: digits, split: test, limit: 40}
models:
  near: {use: torch, factory: "tiny_models:digits_template", input_shape: [1, 8, 8]}
tests:
  - name: noise
    attack: {use: gaussian-noise, stddev: 0.05, clip: false}
    metrics: [success_rate, mean_distortion]
  - name: xfer
    attack: {use: lbfgs, search_steps: 2}
    transfer: all
    baseline: {use: gaussian-noise, stddev: 0.05, clip: false}
"""
    code, df = run_suite_text(text, tmp_path)
    assert code == 0
    value = lambda test, param: df[(df.test == test) & (df.metric == "mean_distortion")
                                   & (df.param == param)].iloc[0]
    noise, row = value("noise", ""), value("xfer", "gaussian-noise")
    success = df[(df.test == "noise") & (df.metric == "success_rate")].value.iloc[0]
    assert success < 0.5  # most noisy images are still classified right...
    assert noise.n == row.n == 40  # ...yet the distortion is over all of them
    assert noise.value == pytest.approx(row.value, rel=1e-6)
    assert noise.value == pytest.approx(0.05, rel=0.1)
    attack = value("xfer", "made_for=near")
    rate = df[(df.test == "xfer") & (df.metric == "success_rate")].value.iloc[0]
    assert attack.n == round(rate * 40)
    assert main(["plugins", "--kind", "metric"]) == 0
    listing = capsys.readouterr().out
    assert "over successful images (noise: over all images)" in " ".join(listing.split())
