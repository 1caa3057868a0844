"""Runs stopped by signals (SIGTERM as CI runners, Slurm and Kubernetes send it; SIGINT;
SIGKILL at any moment, even before the first case finished) keep what finished and resume to
the numbers of an uninterrupted run; two runs never write one folder at once."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest

from harness.cli import main

SUITE = """\
name: stop
seed: 2
data: {use: digits, split: test, limit: 30}
models:
  near: {use: torch, factory: "tiny_models:digits_template", input_shape: [1, 8, 8]}
  slow: {use: torch, factory: "tiny_models:sleepy", input_shape: [1, 8, 8], num_classes: 10}
tests:
  - name: clean
  - name: noise
    attack: {use: gaussian-noise, stddev: [0.1, 0.3]}
"""
#: the slow model first: a kill while its first case runs
SLOW_FIRST = SUITE.replace("""  near: {use: torch, factory: "tiny_models:digits_template", input_shape: [1, 8, 8]}
  slow: {use: torch, factory: "tiny_models:sleepy", input_shape: [1, 8, 8], num_classes: 10}
""", """  slow: {use: torch, factory: "tiny_models:sleepy", input_shape: [1, 8, 8], num_classes: 10}
  near: {use: torch, factory: "tiny_models:digits_template", input_shape: [1, 8, 8]}
""")


class Harness:
    """``harness`` in a child process, whose stderr is read line by line as it comes."""

    def __init__(self, args, env):
        self.proc = subprocess.Popen([sys.executable, "-m", "harness.cli", *map(str, args)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while not any(text in ln for ln in self.lines):
            if self.proc.poll() is not None or time.monotonic() > end:
                self.proc.kill()
                raise AssertionError(f"never saw {text!r}: {''.join(self.lines)}")
            time.sleep(0.05)

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        code = self.proc.wait(timeout)
        self._reader.join(10)
        self.proc.stdout.close()
        return code, "".join(self.lines)


@pytest.fixture
def env(env_with_tests_on_path):
    env = dict(env_with_tests_on_path)
    env["TINY_SLEEP"] = "30"  # the slow model's forward pass: long enough to stop it inside
    env["OMP_NUM_THREADS"] = "1"
    return env


def results_without_time(folder) -> pd.DataFrame:
    df = pd.read_csv(folder / "results.csv", keep_default_na=False)
    return df[df["metric"] != "seconds"].reset_index(drop=True)


@pytest.fixture
def uninterrupted(tmp_path, monkeypatch):
    def run(text: str):
        path = tmp_path / "suite.yaml"
        path.write_text(text)
        monkeypatch.setenv("TINY_SLEEP", "0")
        assert main(["run", str(path), "--out", str(tmp_path / "whole"), "-q"]) == 0
        return path, results_without_time(tmp_path / "whole")
    return run


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stop_signal_saves_marks_prints_and_resumes(tmp_path, env, uninterrupted,
                                                      monkeypatch, capsys, sig, code):
    suite, whole = uninterrupted(SUITE)
    folder = tmp_path / "run"
    child = Harness(["run", suite, "--out", folder], env)
    child.wait_for("clean x near: ok")
    time.sleep(0.3)  # now inside clean x slow
    child.proc.send_signal(sig)
    got, err = child.finish()
    assert got == code, err
    assert f"harness run {suite} --resume {folder}" in err and "Traceback" not in err
    summary = json.loads((folder / "summary.json").read_text())
    name = signal.Signals(sig).name
    assert summary["interrupted"] is True and summary["exit_code"] == code
    assert summary["verdict"] == f"INTERRUPTED by {name}: 1 case(s) finished"
    # the case it was in is listed as partial: its finished chunks are kept for --resume
    assert [(c["test"] + " x " + c["model"], c["status"]) for c in summary["cases"]] == \
        [("clean x near", "ok"), ("clean x slow", "partial")]
    assert (folder / "report.md").is_file()
    monkeypatch.setenv("TINY_SLEEP", "0")
    assert main(["run", str(suite), "--resume", str(folder), "-q"]) == 0
    pd.testing.assert_frame_equal(results_without_time(folder), whole)


@pytest.mark.parametrize("sig,code,word", [(signal.SIGTERM, 143, "terminated"),
                                           (signal.SIGINT, 130, "interrupted")])
def test_a_stop_signal_before_the_run_starts_keeps_its_exit_code(write_suite, monkeypatch,
                                                                 capsys, sig, code, word):
    """Stopped while the suite loads (before the run folder exists): 143 for SIGTERM, not the
    130 that click's Abort would make of any interrupt."""
    import harness.plugins
    from harness.errors import Interrupted

    def stopped():
        raise Interrupted(sig)

    monkeypatch.setattr(harness.plugins, "default_registry", stopped)
    assert main(["run", str(write_suite(SUITE)), "-q"]) == code
    assert capsys.readouterr().err.strip().splitlines()[-1] == word


def test_a_stop_signal_waits_for_an_import_in_progress(tmp_path, env, write_suite):
    """A signal during an import is delivered when the import is done: an import cut short
    leaves compiled extensions half-initialized (importing pandas again then fails, or the
    process crashes), and the run could not be saved or reported."""
    suite = write_suite(SUITE.replace('"tiny_models:sleepy", input_shape: [1, 8, 8], '
                                      'num_classes: 10',
                                      '"tiny_models:slow_import", input_shape: [1, 8, 8]'))
    marker = tmp_path / "imported"
    env = dict(env, SLOW_IMPORT_DONE=str(marker))
    child = Harness(["run", suite, "--out", tmp_path / "run"], env)
    child.wait_for("model slow: loading")
    time.sleep(0.5)  # inside the 3-second import
    child.proc.send_signal(signal.SIGTERM)
    code, err = child.finish()
    assert code == 143, err
    assert marker.read_text() == "done"  # the import finished before the run stopped
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["verdict"].startswith("INTERRUPTED by SIGTERM")


def test_a_kill_before_the_first_case_finished_resumes(tmp_path, env, uninterrupted,
                                                       monkeypatch):
    suite, whole = uninterrupted(SLOW_FIRST)
    folder = tmp_path / "run"
    child = Harness(["run", suite, "--out", folder], env)
    child.wait_for("running 4 case(s)")
    time.sleep(0.3)  # inside the first case: the slow model's first forward pass
    child.proc.kill()
    assert child.finish()[0] == -signal.SIGKILL
    assert not json.loads((folder / "summary.json").read_text())["cases"]
    monkeypatch.setenv("TINY_SLEEP", "0")
    assert main(["run", str(suite), "--resume", str(folder), "-q"]) == 0
    pd.testing.assert_frame_equal(results_without_time(folder), whole)


def test_a_folder_holding_only_its_suite_resumes(tmp_path, uninterrupted, capsys):
    """What a kill left before summaries were written from the start: only suite.yaml."""
    suite, whole = uninterrupted(SUITE)
    folder = tmp_path / "early"
    folder.mkdir()
    shutil.copy(suite, folder / "suite.yaml")
    assert main(["run", str(suite), "--resume", str(folder), "-q"]) == 0
    pd.testing.assert_frame_equal(results_without_time(folder), whole)
    other = tmp_path / "other"
    other.mkdir()
    (other / "suite.yaml").write_text(SUITE.replace("seed: 2", "seed: 5"))
    assert main(["run", str(suite), "--resume", str(other), "-q"]) == 2
    assert "holds a run of another suite" in capsys.readouterr().err


def test_a_second_run_into_a_busy_folder_is_refused_and_no_lock_survives_a_kill(
        tmp_path, env, uninterrupted, monkeypatch, capsys):
    suite, whole = uninterrupted(SUITE)
    folder = tmp_path / "run"
    first = Harness(["run", suite, "--out", folder], env)
    first.wait_for("clean x near: ok")
    before = (folder / "summary.json").read_bytes()
    started = time.monotonic()
    second = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(suite), "--out",
                             str(folder), "-q"], capture_output=True, text=True, env=env)
    assert time.monotonic() - started < 30  # refused at once, not after waiting
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(lines) == 1, second.stderr
    assert f"{folder} is in use by another harness process (pid {first.proc.pid})" in lines[0]
    assert (folder / "summary.json").read_bytes() == before
    first.proc.kill()  # the OS drops its lock
    first.finish()
    monkeypatch.setenv("TINY_SLEEP", "0")
    assert main(["run", str(suite), "--resume", str(folder), "-q"]) == 0
    pd.testing.assert_frame_equal(results_without_time(folder), whole)
