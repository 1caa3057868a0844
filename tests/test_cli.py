"""The command line as users and CI pipelines see it: tables, run folders, exit codes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from harness.cli import main

SUITE = """\
name: tiny
seed: 1
data: {use: digits, split: test, limit: 120}
models:
  near: {use: torch, factory: "tiny_models:digits_template", input_shape: [1, 8, 8]}
  rand: {use: torch, factory: "tiny_models:linear", input_shape: [1, 8, 8]}
tests:
  - name: clean
  - name: noise
    attack: {use: gaussian-noise, stddev: [0.1, 0.5]}
    metrics: [clean_error, adv_error, success_rate, mean_distortion]
gates:
  - {test: clean, model: near, metric: clean_error, max: 0.2}
tables:
  - title: Side by side
    rows: [near, rand]
    labels: {near: Nearest mean}
    columns:
      - {test: clean, metric: clean_error, header: Clean error}
      - {test: noise, metric: adv_error, param: stddev=0.5, header: Noise 0.5}
    reference: {source: made-up numbers, rows: {near: [0.11, 0.5]}}
"""


def run_cli(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_run_writes_folder_prints_tables_and_passes(write_suite, tmp_path, capsys):
    out_dir = tmp_path / "run"
    code, out, err = run_cli(["run", str(write_suite(SUITE)), "--out", str(out_dir), "-q"], capsys)
    assert code == 0, err
    for name in ("results.csv", "summary.json", "report.md", "suite.yaml"):
        assert (out_dir / name).is_file(), name
    rows = list(csv.DictReader((out_dir / "results.csv").open()))
    assert {"test", "model", "metric", "value", "param"} <= set(rows[0])
    clean_near = [r for r in rows if r["test"] == "clean" and r["model"] == "near"]
    assert len(clean_near) == 1 and 0.0 < float(clean_near[0]["value"]) < 0.2
    noise = [r for r in rows if r["test"] == "noise" and r["metric"] == "adv_error"]
    assert {r["param"] for r in noise} == {"stddev=0.1", "stddev=0.5"}
    # bigger noise, more errors, for the nearest-mean model
    by = {r["param"]: float(r["value"]) for r in noise if r["model"] == "near"}
    assert by["stddev=0.5"] > by["stddev=0.1"]
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["seed"] == 1 and summary["device"] == "cpu" and summary["exit_code"] == 0
    assert summary["suite"]["name"] == "tiny" and "torch" in summary["versions"]
    assert summary["gates"][0]["passed"] is True
    assert {c["status"] for c in summary["cases"]} == {"ok"} and len(summary["cases"]) == 4
    assert "Side by side" in out and "Nearest mean" in out and "11%" in out
    assert "PASS" in out and "OK: 4 case(s) ran, 1 gate(s) passed" in out
    md = (out_dir / "report.md").read_text()
    assert "## Side by side" in md and "| Nearest mean" in md


def test_report_rerenders_without_recomputing(write_suite, tmp_path, capsys):
    out_dir = tmp_path / "run"
    code, out, _ = run_cli(["run", str(write_suite(SUITE)), "--out", str(out_dir), "-q"], capsys)
    assert code == 0
    code, again, _ = run_cli(["report", str(out_dir)], capsys)
    assert code == 0 and again == out
    # the report reads the folder only: change a stored value and it shows up
    import csv

    with open(out_dir / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        if (row["test"], row["model"], row["metric"]) == ("clean", "near", "clean_error"):
            row["value"] = "0.987654"
    with open(out_dir / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    _, changed, _ = run_cli(["report", str(out_dir)], capsys)
    assert "98.8%" in changed


def test_same_seed_same_numbers(write_suite, tmp_path, capsys):
    path = write_suite(SUITE)
    for name in ("a", "b"):
        assert run_cli(["run", str(path), "--out", str(tmp_path / name), "-q"], capsys)[0] == 0
    strip = lambda p: [r for r in csv.DictReader(p.open()) if r["metric"] != "seconds"]
    assert strip(tmp_path / "a" / "results.csv") == strip(tmp_path / "b" / "results.csv")
    run_cli(["run", str(path), "--out", str(tmp_path / "c"), "-q", "--seed", "2"], capsys)
    assert strip(tmp_path / "a" / "results.csv") != strip(tmp_path / "c" / "results.csv")


def test_failed_gate_exits_1_and_still_writes(write_suite, tmp_path, capsys):
    path = write_suite(SUITE.replace("max: 0.2}", "max: 0.01}"))
    code, out, err = run_cli(["run", str(path), "--out", str(tmp_path / "r"), "-q"], capsys)
    assert code == 1
    assert "FAIL" in out and "FAILED: 1 of 1 gate(s) failed" in out
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["exit_code"] == 1 and summary["gates"][0]["passed"] is False


def test_nan_model_is_one_line_exit_2_and_others_still_run(write_suite, tmp_path, capsys):
    path = write_suite(SUITE.replace('"tiny_models:linear"', '"tiny_models:digits_template", '
                                                             "kwargs: {nan: true}"))
    code, out, err = run_cli(["run", str(path), "--out", str(tmp_path / "r"), "-q"], capsys)
    assert code == 2
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert errors and all("model 'rand' returned NaN" in ln for ln in errors)
    assert "Traceback" not in err + out
    rows = list(csv.DictReader((tmp_path / "r" / "results.csv").open()))
    assert {r["model"] for r in rows} == {"near"}  # the good model's results are kept


def test_internal_error_is_recorded_with_traceback_file(write_suite, tmp_path, capsys):
    path = write_suite(SUITE.replace('"tiny_models:linear"', '"tiny_models:not_a_module"'))
    code, out, err = run_cli(["run", str(path), "--out", str(tmp_path / "r"), "-q"], capsys)
    assert code == 2 and "returned str, not a torch.nn.Module" in err


@pytest.mark.parametrize("args,words", [
    (["run", "missing.yaml"], "missing.yaml: no such file"),
    (["run", "{suite}", "--device", "tpu"], "device 'tpu'"),
    (["run", "{suite}", "--data-dir", "/no/such/dir"], "--data-dir /no/such/dir: no such folder"),
    (["run", "{suite}", "--limit", "0"], "--limit"),
    (["validate", "{bad}"], "suite.yaml:10: tests[1].attack.use: unknown attack 'pgd'"),
    (["report", "/no/such/run"], "is not a run folder"),
    (["plugins", "--kind", "widget"], "'widget' is not one of"),
    (["frobnicate"], "No such command"),
])
def test_bad_input_is_one_line_and_exit_2(write_suite, capsys, args, words):
    suite = write_suite(SUITE)
    bad = write_suite(SUITE.replace("use: gaussian-noise, stddev: [0.1, 0.5]", "use: pgd"),
                      "suite.yaml" if "{bad}" in args else "other.yaml")
    args = [a.replace("{suite}", str(suite)).replace("{bad}", str(bad)) for a in args]
    code, out, err = run_cli(args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], err


def test_validate_ok_and_plugins_listing(write_suite, capsys):
    code, out, _ = run_cli(["validate", str(write_suite(SUITE))], capsys)
    assert code == 0 and "valid (2 model(s), 2 test(s), 4 case(s), 1 gate(s))" in out
    code, out, _ = run_cli(["plugins"], capsys)
    assert code == 0
    assert any(ln.split()[:2] == ["attack", "gaussian-noise"] and "robustness-harness" in ln
               for ln in out.splitlines())
    code, out, _ = run_cli(["plugins", "--kind", "dataset"], capsys)
    assert "mnist" in out and "gaussian-noise" not in out


def test_an_unknown_plugin_name_is_one_line_with_the_closest_name(capsys):
    code, _, err = run_cli(["plugins", "lbgfs"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "no plugin is named 'lbgfs'; did you mean 'lbfgs'?" in err and "attack" not in err


def test_plugin_parameters_show_types_and_defaults_as_written_in_a_suite(capsys):
    code, out, _ = run_cli(["plugins", "torchvision", "-v"], capsys)
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.strip()}
    assert code == 0
    assert rows["download"][1:3] == ["bool", "False"]          # never downloads unasked
    assert rows["limit"][1:5] == ["int", "|", "None", "None"]
    code, out, _ = run_cli(["plugins", "lbfgs", "-v"], capsys)
    rows = {ln.split()[0]: ln for ln in out.splitlines() if ln.strip()}
    assert "'auto' | int" in rows["batch_size"] and "Validator" not in out


def test_console_script_exit_codes(write_suite, env_with_tests_on_path, tmp_path):
    exe = [sys.executable, "-m", "harness.cli"]
    bad = write_suite("name: x\nmodels: {}\ntests: []\n")
    proc = subprocess.run(exe + ["validate", str(bad)], capture_output=True, text=True,
                          env=env_with_tests_on_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert f"{bad}:2: models:" in proc.stderr
    proc = subprocess.run(exe + ["run", str(write_suite(SUITE)), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, env=env_with_tests_on_path)
    assert proc.returncode == 0, proc.stderr
    assert "[4/4] noise x rand: ok" in proc.stderr and "Side by side" in proc.stdout
