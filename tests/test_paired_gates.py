"""Gates a CI pipeline can trust: interval bounds, and max_drop as a paired test on the same
images (McNemar's exact test for rates, a paired bootstrap for means)."""

from __future__ import annotations

import json

import pytest

from harness.cli import main

SUITE = """\
name: paired
seed: 0
data: {use: digits, split: test}
models:
  m: {use: torch, factory: "tiny_models:MODEL", input_shape: [1, 8, 8]}
tests:
  - name: noise
    attack: {use: gaussian-noise, stddev: 0.3}
    metrics: [clean_error, adv_error, mean_distortion]
gates:
  - {test: noise, model: m, metric: adv_error, max_drop: 0.0, drop: absolute, paired: true}
  - {test: noise, model: m, metric: mean_distortion, max_drop: 0.5, paired: true, alpha: 0.01}
"""


def verdicts(folder):
    return json.loads((folder / "summary.json").read_text())["gates"]


@pytest.fixture
def baseline(write_suite, tmp_path):
    path = write_suite(SUITE.replace("MODEL", "digits_template"), "base.yaml")
    assert main(["run", str(path), "--out", str(tmp_path / "base"), "-q"]) == 0
    return tmp_path / "base"


def test_an_unchanged_model_passes_a_paired_gate_when_noise_moves_the_rate(
        baseline, write_suite, tmp_path, capsys):
    path = write_suite(SUITE.replace("MODEL", "digits_template"), "same.yaml")
    # another seed: other noise, so some images change outcome each way, by chance alone
    code = main(["run", str(path), "--out", str(tmp_path / "same"), "--seed", "11",
                 "--baseline", str(baseline), "-q"])
    out = capsys.readouterr().out
    assert code == 0, out
    v = verdicts(tmp_path / "same")[0]
    assert v["paired"] and v["passed"] and v["p_value"] >= 0.05
    assert v["paired_n"] == 360 and 0 < v["detectable"] < 0.1
    assert "no significant worsening" in v["reason"] and "McNemar" in v["reason"]


def test_a_worse_model_fails_the_paired_gate_with_its_evidence(baseline, write_suite,
                                                               tmp_path, capsys):
    path = write_suite(SUITE.replace("MODEL", "linear"), "worse.yaml")
    code = main(["run", str(path), "--out", str(tmp_path / "worse"),
                 "--baseline", str(baseline), "-q"])
    out = capsys.readouterr().out
    assert code == 1
    v = verdicts(tmp_path / "worse")[0]
    assert not v["passed"] and v["p_value"] < 1e-6
    assert "a significant change" in v["reason"]
    assert "drop <= 0 vs baseline, significant at 0.05 (paired)" in out


def test_an_unpaired_gate_without_a_ledger_says_why(baseline, write_suite, tmp_path):
    import shutil

    shutil.rmtree(baseline / "ledger")
    path = write_suite(SUITE.replace("MODEL", "digits_template"), "same.yaml")
    code = main(["run", str(path), "--out", str(tmp_path / "x"), "--baseline", str(baseline),
                 "-q"])
    assert code == 1
    v = verdicts(tmp_path / "x")[0]
    assert "has no per-image ledger" in v["reason"]


def test_a_gate_on_the_lower_bound_of_the_interval(write_suite, tmp_path):
    text = SUITE.replace("MODEL", "digits_template").split("gates:")[0] + """gates:
  - {test: noise, model: m, metric: clean_error, max: 0.12, bound: upper}
  - {test: noise, model: m, metric: clean_error, max: 0.12}
"""
    path = write_suite(text)
    code = main(["run", str(path), "--out", str(tmp_path / "b"), "--limit", "60", "-q"])
    upper, plain = verdicts(tmp_path / "b")
    # on 60 images the error is under 12%, but its upper 95% bound is not
    assert plain["passed"] and not upper["passed"] and code == 1
    assert "upper bound of the 95% interval" in upper["reason"]


def test_paired_needs_a_metric_with_per_image_values(write_suite, capsys):
    text = SUITE.replace("MODEL", "digits_template").replace(
        "metrics: [clean_error, adv_error, mean_distortion]",
        "metrics: [clean_error, adv_error, mean_distortion, seconds]").split("gates:")[0] + """gates:
  - {test: noise, model: m, metric: seconds, max_drop: 0.5, paired: true}
"""
    assert main(["validate", str(write_suite(text))]) == 2
    err = capsys.readouterr().err
    assert "no per-image values" in err and "suite.yaml:11: gates[0].paired" in err


def test_a_paired_gate_pairs_only_its_own_tests_images(baseline, write_suite, tmp_path):
    # another test of the same model with the same setting (here: none, one attack setting
    # each) writes ledger rows beside the gated test's; the gate must pair the images of its
    # own test only: the gated test is unchanged, so nothing changed and the gate passes
    one = SUITE.replace("MODEL", "digits_template").replace("stddev: 0.3", "stddev: 0.1")
    path = write_suite(one, "one.yaml")
    assert main(["run", str(path), "--out", str(tmp_path / "one"), "-q"]) == 0
    two = one.replace("gates:", """  - name: loud
    attack: {use: gaussian-noise, stddev: 1.0}
    metrics: [clean_error, adv_error, mean_distortion]
gates:""")
    path = write_suite(two, "two.yaml")
    code = main(["run", str(path), "--out", str(tmp_path / "two"), "--baseline",
                 str(tmp_path / "one"), "-q"])
    rate, mean = verdicts(tmp_path / "two")
    assert rate["paired_n"] == 360 and mean["paired_n"] == 360
    assert rate["passed"] and mean["passed"] and code == 0
    assert "0 changed for the worse, 0 for the better" in rate["reason"]
