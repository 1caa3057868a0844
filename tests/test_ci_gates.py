"""What a CI pipeline relies on: regression gates against a baseline run, JUnit XML, compare."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from harness.cli import main

SUITE = """\
name: gated
seed: 0
data: {use: digits, split: test}
models:
  near: {use: torch, factory: "tiny_models:digits_template", input_shape: [1, 8, 8]}
  weak: {use: torch, factory: "tiny_models:linear", input_shape: [1, 8, 8]}
tests:
  - name: noise
    attack: {use: gaussian-noise, stddev: 0.3}
    metrics: [clean_error, adv_error, mean_distortion]
gates:
  - {test: noise, model: MODEL, metric: adv_error, max_drop: 0.5}
  - {test: noise, model: near, metric: clean_error, max: 0.5}
"""


def test_regression_against_baseline_fails_the_build(write_suite, tmp_path, capsys):
    # the baseline: the good model; the candidate: a much weaker model under the same id
    good = write_suite(SUITE.replace("MODEL", "near"), "good.yaml")
    assert main(["run", str(good), "--out", str(tmp_path / "base"), "-q"]) == 0
    swapped = SUITE.replace("MODEL", "near").replace('"tiny_models:digits_template"', "X") \
        .replace('"tiny_models:linear"', '"tiny_models:digits_template"').replace("X", '"tiny_models:linear"')
    regressed = write_suite(swapped, "regressed.yaml")
    junit = tmp_path / "junit.xml"
    code = main(["run", str(regressed), "--out", str(tmp_path / "cand"), "-q",
                 "--baseline", str(tmp_path / "base"), "--junit", str(junit)])
    out = capsys.readouterr().out
    assert code == 1
    assert "worse than the baseline's" in out and "FAIL" in out
    summary = json.loads((tmp_path / "cand" / "summary.json").read_text())
    assert summary["options"]["baseline"] == str(tmp_path / "base")
    adv_gate = summary["gates"][0]
    assert adv_gate["passed"] is False and adv_gate["baseline"] < adv_gate["value"]

    root = ET.parse(junit).getroot()
    suite = root.find("testsuite")
    assert suite.get("name") == "gated" and suite.get("failures") == "2"
    cases = suite.findall("testcase")
    assert len(cases) == 4  # 2 (test x model) cases + 2 gates
    failures = [c for c in cases if c.find("failure") is not None]
    assert {c.get("classname") for c in failures} == {"gated.gates.noise"}
    assert any("adv_error" in c.get("name") for c in failures)


def test_same_run_as_baseline_passes_and_junit_reports_errors(write_suite, tmp_path, capsys):
    text = SUITE.replace("MODEL", "near")
    path = write_suite(text)
    assert main(["run", str(path), "--out", str(tmp_path / "a"), "-q"]) == 0
    assert main(["run", str(path), "--out", str(tmp_path / "b"), "-q",
                 "--baseline", str(tmp_path / "a")]) == 0
    broken = write_suite(text.replace('"tiny_models:linear"', '"tiny_models:linear", '
                                                              "kwargs: {nan: true}"), "broken.yaml")
    junit = tmp_path / "j.xml"
    assert main(["run", str(broken), "--out", str(tmp_path / "c"), "-q", "--junit", str(junit)]) == 2
    suite = ET.parse(junit).getroot().find("testsuite")
    errored = [c for c in suite.findall("testcase") if c.find("error") is not None]
    assert len(errored) == 1 and errored[0].get("name") == "weak"
    assert "NaN" in errored[0].find("error").get("message")


def test_baseline_must_be_a_run_folder(write_suite, tmp_path, capsys):
    code = main(["run", str(write_suite(SUITE.replace("MODEL", "near"))), "--baseline",
                 str(tmp_path), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "is not a complete run folder" in err


def test_compare_shows_deltas(write_suite, tmp_path, capsys):
    path = write_suite(SUITE.replace("MODEL", "near"))
    main(["run", str(path), "--out", str(tmp_path / "a"), "-q"])
    main(["run", str(path), "--out", str(tmp_path / "b"), "-q", "--seed", "7"])
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--metric", "adv_error"]) == 0
    out = capsys.readouterr().out
    aggregates, per_image = out.split("Images that changed outcome")
    lines = [ln for ln in aggregates.splitlines() if ln.startswith("noise")]
    assert len(lines) == 2 and all("adv_error" in ln and "pts" in ln for ln in lines)
    assert "clean_error" not in out
    # image by image: the noise differs with the seed, so some images change outcome
    changed = [ln.split() for ln in per_image.splitlines() if ln.startswith("noise")]
    # (the setting is empty: test, model, images, right -> wrong, wrong -> right, net)
    assert len(changed) == 2 and all(int(c[2]) == 360 for c in changed)
    assert any(int(c[3]) + int(c[4]) > 0 for c in changed)
