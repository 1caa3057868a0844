"""The Ray executor: chunks as Ray tasks on a local Ray instance give the numbers of a run in
this process, also when a worker is killed in the middle of a task (Ray runs it again)."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from harness.cli import main
from harness.store import RunStore

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install '.[ray]'")

HERE = os.path.dirname(os.path.abspath(__file__))

SUITE = """\
name: rayed
seed: 5
data: {use: digits, split: test, limit: 90}
chunk_size: 30
models:
  near: {use: torch, factory: "tiny_models:dies_once", kwargs: {marker: "MARKER"},
         input_shape: [1, 8, 8]}
  lin: {use: torch, factory: "tiny_models:linear", input_shape: [1, 8, 8]}
tests:
  - name: lbfgs
    attack: {use: lbfgs, search_steps: 3}
  - name: xfer
    attack: {use: gaussian-noise, stddev: 0.3}
    models: [near]
    transfer: all
"""


def ledger(folder):
    return RunStore(folder).ledger().drop(columns="seconds")


def results(folder):
    df = RunStore(folder).results()
    return df[df.metric != "seconds"].reset_index(drop=True)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": HERE, "OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


def test_ray_gives_the_numbers_of_a_local_run_even_when_a_worker_dies(
        local_ray, write_suite, tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)   # what the workers use
    done_marker = tmp_path / "already-died"
    done_marker.write_text("the local run must not die")
    local = write_suite(SUITE.replace("MARKER", str(done_marker)), "local.yaml")
    assert main(["run", str(local), "--out", str(tmp_path / "local"), "-q",
                 "--threads", "1"]) == 0
    marker = tmp_path / "dies"
    rayed = write_suite(SUITE.replace("MARKER", str(marker)), "rayed.yaml")
    code = main(["run", str(rayed), "--out", str(tmp_path / "ray"), "-q",
                 "--executor", "ray"])
    assert code == 0, capsys.readouterr().err
    assert marker.exists()            # a worker was killed building the model, in a task
    pd.testing.assert_frame_equal(ledger(tmp_path / "ray"), ledger(tmp_path / "local"))
    pd.testing.assert_frame_equal(results(tmp_path / "ray"), results(tmp_path / "local"))
    assert RunStore(tmp_path / "ray").summary()["options"]["executor"] == "ray"


def test_address_needs_the_ray_executor(write_suite, capsys):
    assert main(["run", str(write_suite(SUITE)), "--address", "auto", "-q"]) == 2
    assert "--executor ray" in capsys.readouterr().err
