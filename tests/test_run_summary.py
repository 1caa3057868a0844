"""summary.json is a versioned schema owned by the store: written checked, read checked, and
run folders of the first format (written before the version field existed) still read,
render, compare and serve as baselines."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness.cli import main
from harness.store import SUMMARY_FORMAT, RunStore, RunSummary

FORMAT1 = Path(__file__).parent / "data" / "run-format1"


@pytest.fixture
def old_run(tmp_path) -> Path:
    """A run folder written by the harness before summary.json had a format version."""
    folder = tmp_path / "old"
    shutil.copytree(FORMAT1, folder)
    assert "format" not in json.loads((folder / "summary.json").read_text())
    return folder


def test_a_first_format_folder_reads_renders_and_compares(old_run, tmp_path, capsys):
    summary = RunStore(old_run).read_summary()
    assert isinstance(summary, RunSummary) and summary.format == 1 and len(summary.cases) == 4
    for fmt in ("text", "markdown", "html", "junit"):
        assert main(["report", str(old_run), "--format", fmt, "-o",
                     str(tmp_path / f"r.{fmt}")]) == 0, capsys.readouterr().err
    text = (tmp_path / "r.text").read_text()
    assert "Test noise: gaussian-noise" in text and "OK: 4 case(s) ran, 1 gate(s) passed" in text
    capsys.readouterr()
    assert main(["compare", str(old_run), str(FORMAT1)]) == 0
    out = capsys.readouterr().out
    assert any(ln.split()[:3] == ["clean", "near", "clean_error"] and ln.endswith("+0.0%")
               for ln in out.splitlines()), out


def test_a_first_format_folder_is_a_baseline_and_not_resumed(old_run, tmp_path, capsys):
    suite = tmp_path / "format1.yaml"
    suite.write_text((old_run / "suite.yaml").read_text())
    new = tmp_path / "new"
    assert main(["run", str(suite), "--baseline", str(old_run), "--out", str(new), "-q"]) == 0
    summary = json.loads((new / "summary.json").read_text())
    assert summary["format"] == SUMMARY_FORMAT and summary["options"]["baseline"] == str(old_run)
    assert main(["compare", str(old_run), str(new), "--metric", "clean_error"]) == 0
    assert "+0.0%" in capsys.readouterr().out
    capsys.readouterr()
    # it has no per-image ledger to continue from: resuming it is refused in one line
    assert main(["run", str(suite), "--resume", str(old_run), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "older version" in err[0]


def test_the_harness_writes_only_valid_summaries(tmp_path):
    store = RunStore(tmp_path / "run")
    store.lock()
    with pytest.raises(ValueError, match="seed"):
        store.write_summary({"suite": {"name": "x"}, "seed": "zero", "device": "cpu",
                             "started": "now", "cases": []})
    assert not (tmp_path / "run" / "summary.json").exists()
    store.unlock()
