"""The suites that benchmarks/memory.py and benchmarks/gpu.py run are valid and cut into the
chunks and batches the scripts count on (checked here, on a CPU, before the scripts run on a
GPU or for minutes), and memory.py's verdict follows its measurements."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from harness.plugins import default_registry
from harness.plan import Plan
from harness.runner import RunOptions, Runner
from harness.suite import load_suite

ROOT = Path(__file__).resolve().parent.parent


def script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}",
                                                  ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def registry():
    return default_registry()


def planned(registry, text: str, tmp_path: Path) -> Plan:
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    plan = Plan(load_suite(path, registry), registry)
    Runner(plan, RunOptions(device="cpu"))   # cuts the cases into chunks (reads no image)
    return plan


def test_the_memory_suite_streams_the_clean_test_in_chunks_of_the_smallest_size(
        registry, tmp_path):
    memory = script("memory")
    text = memory.suite_text(2000, shape=[3, 224, 224], classes=10, lbfgs_images=2,
                             factory="torchvision.models:resnet18", seed=0, chunk_size=200)
    plan = planned(registry, text, tmp_path)
    clean, lbfgs = plan.cases
    assert (clean.images, [c.images for c in clean.chunks]) == (2000, [200] * 10)
    assert (lbfgs.images, len(lbfgs.chunks)) == (2, 1)
    default = planned(registry, text.replace("  chunk_size: 200\n", ""), tmp_path)
    assert default.cases[0].chunks[0].images == 222     # the 128 MB cap at 3x224x224


def test_the_memory_verdict_follows_the_peaks(capsys):
    memory = script("memory")
    args = memory.argparse.Namespace(shape=[3, 224, 224], factory="f", classes=10,
                                     lbfgs_images=2, threads=1)

    def measured(n: int, peak_mib: float) -> dict:
        case = {"images": n, "seconds": 10.0, "status": "ok"}
        return {"n": n, "peak_kib": peak_mib * 1024, "seconds": 12.0,
                "cases": {"clean": case, "lbfgs": case},
                "chunk_images": {"clean": 200}, "chunks": {"clean": n // 200}}

    assert memory.report([measured(200, 2400.0), measured(2000, 2410.0)], args) == 0
    out = capsys.readouterr().out
    assert "peak x1.004" in out and "bounded" in out
    held = 1800 * 3 * 224 * 224 * 4 / 2 ** 20    # what holding the extra images takes
    assert memory.report([measured(200, 2400.0), measured(2000, 2400.0 + held)], args) == 1
    assert "GROWS" in capsys.readouterr().out


def test_the_gpu_steps_ask_for_what_they_measure(registry, tmp_path):
    pytest.importorskip("torchattacks")
    gpu = script("gpu")
    pgd = gpu.Step("resnet50-pgd", "resnet50", "pgd", 512, attack=gpu.PGD)
    plan = planned(registry, gpu.suite_text(pgd, 224, 1000, 0), tmp_path)
    case = plan.cases[0]
    assert [c.images for c in case.chunks] == [222, 222, 68]
    assert case.test.attacks[0].batch_size_for((3, 224, 224)) == 256
    # the back-off step: one chunk, and a batch as large as the chunk
    oom = gpu.Step("resnet50-oom", "resnet50", "oom", 2593,
                   attack={**gpu.PGD, "options": {"steps": 2}, "batch_size": 2593},
                   chunk_size=2593)
    plan = planned(registry, gpu.suite_text(oom, 224, 1000, 0), tmp_path)
    case = plan.cases[0]
    assert [c.images for c in case.chunks] == [2593]
    assert case.test.attacks[0].batch_size_for((3, 224, 224)) == 2593
    lbfgs = gpu.Step("resnet18-lbfgs", "resnet18", "lbfgs", 39,
                     attack={"use": "lbfgs", "target": "next"})
    plan = planned(registry, gpu.suite_text(lbfgs, 224, 1000, 0), tmp_path)
    assert [c.images for c in plan.cases[0].chunks] == [13, 13, 13]   # batch_size auto


def test_the_memory_script_reads_what_a_run_did(registry, tmp_path):
    """memory.py's suite at a tiny size, run in this process: what the script reads back
    from the run folder (cases, chunks, lbfgs's success) is what the run did."""
    from harness.runner import run_suite
    from harness.store import RunStore

    memory = script("memory")
    path = tmp_path / "tiny.yaml"
    path.write_text(memory.suite_text(6, shape=[3, 4, 4], classes=10, lbfgs_images=1,
                                      factory="torchvision.models:resnet18", seed=0,
                                      chunk_size=4))
    result, code = run_suite(load_suite(path, registry), registry, RunStore(tmp_path / "run"),
                             RunOptions(device="cpu", cache_dir=tmp_path / "cache"))
    assert code == 0
    run = memory.read_run(tmp_path / "run")
    assert (run["chunks"]["clean"], run["chunk_images"]["clean"]) == (2, 4)
    assert run["cases"]["clean"]["images"] == 6 and run["cases"]["lbfgs"]["images"] == 1
    success = float(RunStore(tmp_path / "run").results().query(
        "test == 'lbfgs' and metric == 'success_rate'")["value"].iloc[0])
    assert run["lbfgs_success"] == success
