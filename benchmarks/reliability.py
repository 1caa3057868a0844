"""Reliability check (on demand, not a test): stop ``harness run`` at random moments, resume,
and compare with an uninterrupted run; feed damaged run folders to every command that reads
run folders. Prints the tallies.

    python benchmarks/reliability.py [--trials 20] [--seed 0] [--only kills|malformed]
                                     [--signals KILL TERM INT] [--keep DIR] [-v]

Kills: a suite of its own on scikit-learn's digits (three models, two of them trained, so a
cold cache means training inside the run; an attack test with pictures, a transfer test
with amplification and a noise baseline, and a spectral-bounds analysis) runs once
uninterrupted (the reference). Then, per signal, ``--trials`` runs are stopped at a moment
drawn uniformly over the run's length (drawn again, shorter, when the run had already
finished by then), half of them with an empty model cache (cold: the
kill often lands inside training, before the first case finished) and half with a filled
one (warm); each is then finished with ``harness run SUITE --resume DIR`` and its
results.csv compared with the reference, row by row and bit for bit (except the ``seconds``
of attacks). For SIGTERM and SIGINT the stopped run must also exit with 143 or 130, say
"INTERRUPTED" in its summary, and print the resume command. All runs use ``--threads 1``.

Malformed: every damage of ``tests/malformed.py`` (corrupted, truncated, mistyped, binary,
linked-out files...) on a run folder, for every command that reads the damaged file
(``report`` as text, markdown, html and junit, ``compare``, ``merge``, ``run --resume``,
``run --baseline``, ``run --reuse``): how many answer exit 2 with one line on stderr naming
the file, and how many end in an internal error.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"

SUITE = """\
name: reliability
seed: 0
data: {use: digits, split: test, limit: 60}
models:
  fc: {use: mlp, hidden: [], epochs: 150}
  mlp: {use: mlp, hidden: [64], epochs: 1000}
  near: {use: torch, factory: "tiny_models:digits_template", input_shape: [1, 8, 8]}
tests:
  - name: clean
  - name: lbfgs
    attack: {use: lbfgs, search_steps: 4}
    pictures: 2
  - name: xfer
    attack: {use: lbfgs, search_steps: 4}
    models: [fc, mlp]
    transfer: all
    amplify: [0.1]
    baseline: {use: gaussian-noise, stddev: [0.1, 0.3], clip: false}
  - name: bounds
    analysis: {use: spectral-bounds}
    models: [fc, mlp]
"""

SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "INT": signal.SIGINT}
EXPECTED_CODE = {"TERM": 143, "INT": 130}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def harness_cmd(*args: object) -> list[str]:
    return [sys.executable, "-m", "harness.cli", *map(str, args)]


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=env)


def rows(folder: Path) -> list[tuple[str, ...]]:
    """results.csv without the attacks' wall times, as exact strings."""
    with (folder / "results.csv").open() as fh:
        return [tuple(r.values()) for r in csv.DictReader(fh) if r["metric"] != "seconds"]


def kills(args: argparse.Namespace, work: Path) -> None:
    env = _env()
    work.mkdir(parents=True, exist_ok=True)
    suite = work / "reliability.yaml"
    suite.write_text(SUITE)
    warm_cache = work / "cache-warm"
    t0 = time.perf_counter()
    ref = run(harness_cmd("run", suite, "--out", work / "reference", "--cache-dir", warm_cache,
                          "--threads", 1, "-q"), env)
    cold_seconds = time.perf_counter() - t0
    if ref.returncode != 0:
        sys.exit(f"the reference run failed ({ref.returncode}):\n{ref.stderr}")
    t0 = time.perf_counter()
    again = run(harness_cmd("run", suite, "--out", work / "reference-warm", "--cache-dir",
                            warm_cache, "--threads", 1, "-q"), env)
    warm_seconds = time.perf_counter() - t0
    reference = rows(work / "reference")
    cases = len(json.loads((work / "reference" / "summary.json").read_text())["cases"])
    assert again.returncode == 0 and rows(work / "reference-warm") == reference, \
        "a warm-cache run differs from the cold one"
    print(f"reference: {cases} cases, {len(reference)} result rows; one run takes "
          f"{cold_seconds:.1f} s with an empty model cache, {warm_seconds:.1f} s with a full "
          "one (process start included)")

    rng = random.Random(args.seed)
    table = []
    for name in args.signals:
        sig = SIGNALS[name]
        tally = {"trials": 0, "identical": 0, "before_first_case": 0, "no_folder": 0,
                 "redrawn": 0, "exit_ok": 0, "at_start": 0, "at_exit": 0, "marked": 0,
                 "hint": 0}
        for trial in range(args.trials):
            cold = trial % 2 == 0
            cache = work / f"cache-{name}-{trial}" if cold else warm_cache
            folder = work / f"{name}-{trial}"
            bound = cold_seconds if cold else warm_seconds
            while True:  # a moment the run has not finished by (the machine's speed varies)
                at = rng.uniform(0.0, bound)
                started = time.perf_counter()
                proc = subprocess.Popen(harness_cmd("run", suite, "--out", folder,
                                                    "--cache-dir", cache, "--threads", 1, "-q"),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True, env=env)
                time.sleep(at)
                if proc.poll() is None:
                    proc.send_signal(sig)
                    _, err = proc.communicate()
                    break
                proc.communicate()
                bound = min(bound, time.perf_counter() - started)
                tally["redrawn"] += 1
                shutil.rmtree(folder, ignore_errors=True)
                if cold:
                    shutil.rmtree(cache, ignore_errors=True)
            tally["trials"] += 1
            summary = folder / "summary.json"
            done = len(json.loads(summary.read_text())["cases"]) if summary.is_file() else 0
            tally["before_first_case"] += done == 0
            had_folder = folder.is_dir()
            if name in EXPECTED_CODE:
                ended = done == cases and json.loads(summary.read_text())["exit_code"] == 0
                if proc.returncode == -sig and not ended:  # no handler yet: Python starts
                    tally["at_start"] += 1
                elif ended and proc.returncode in (0, -sig):  # the run had ended: its report
                    tally["at_exit"] += 1                     # was cut short, or Python exited
                tally["exit_ok"] += proc.returncode == EXPECTED_CODE[name]
                if proc.returncode not in (EXPECTED_CODE[name], -sig, 0):
                    print(f"  SIG{name} trial {trial}: exit {proc.returncode}; stderr ends: "
                          + " | ".join(err.strip().splitlines()[-3:]))
                if summary.is_file():
                    tally["marked"] += json.loads(summary.read_text())["verdict"].startswith(
                        "INTERRUPTED")
                tally["hint"] += f"--resume {folder}" in err
            if had_folder:
                resumed = run(harness_cmd("run", suite, "--resume", folder, "--cache-dir", cache,
                                          "--threads", 1, "-q"), env)
            else:  # stopped before it made its folder: nothing to resume, run it there
                tally["no_folder"] += 1
                resumed = run(harness_cmd("run", suite, "--out", folder, "--cache-dir", cache,
                                          "--threads", 1, "-q"), env)
            same = resumed.returncode == 0 and rows(folder) == reference
            tally["identical"] += same
            if args.verbose or not same:
                print(f"  SIG{name} trial {trial} ({'cold' if cold else 'warm'} cache, at "
                      f"{at:.1f} s): exit {proc.returncode}, {done} case(s) saved, "
                      f"{'folder' if had_folder else 'no folder'}; resumed: exit "
                      f"{resumed.returncode}, {'identical' if same else 'DIFFERENT'}")
            if cold and not args.keep:
                shutil.rmtree(cache, ignore_errors=True)
        table.append((name, tally))

    print(f"\nstopped at {args.trials} random moments per signal (seed {args.seed}; a moment "
          "the run had finished by is drawn again), half with an empty model cache; each "
          "then finished with --resume:")
    for name, t in table:
        line = (f"  SIG{name}: {t['identical']}/{t['trials']} resumed runs identical to the "
                f"uninterrupted one; {t['before_first_case']} stopped before the first case "
                f"finished ({t['no_folder']} before the run folder existed); "
                f"{t['redrawn']} moment(s) drawn again")
        if name in EXPECTED_CODE:
            stopped = t["trials"] - t["at_start"] - t["at_exit"]
            line += (f"; ended by the signal's own action (a shell sees exit "
                     f"{EXPECTED_CODE[name]} too) {t['at_start']} while Python started, before "
                     f"the harness handles signals; {t['at_exit']} after the run had ended whole "
                     f"(exit 0, or the signal's action while Python shut down); of the other "
                     f"{stopped}: exit "
                     f"{EXPECTED_CODE[name]} in {t['exit_ok']}, summary INTERRUPTED in "
                     f"{t['marked']}, resume command printed in {t['hint']}")
        print(line)


def malformed(work: Path) -> None:
    sys.path.insert(0, str(TESTS))
    import malformed as m

    from harness.cli import main

    os.environ["OMP_NUM_THREADS"] = "1"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        runs = m.make_runs(work / "runs")
    pairs = m.pairs()
    good = one_line = internal = 0
    bad: list[str] = []
    for i, (damage, command) in enumerate(pairs):
        where = work / f"case-{i}"
        where.mkdir()
        folder = m.damaged_copy(damage, command, runs, where)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(m.COMMANDS[command](folder, runs))
        lines = err.getvalue().strip().splitlines()
        internal += "internal error" in err.getvalue()
        ok_line = len(lines) == 1 and lines[0].startswith("error: ") and damage.file in lines[0]
        one_line += ok_line
        if code == 2 and ok_line:
            good += 1
        else:
            bad.append(f"  {damage.name} x {command}: exit {code}: {err.getvalue().strip()[:200]}")
    print(f"\nmalformed run folders: {len(m.DAMAGES)} damages x the commands that read the "
          f"damaged file ({', '.join(m.COMMANDS)}) = {len(pairs)} runs: {good} answered exit 2 "
          f"with one line naming the file, {internal} internal error(s)")
    print("\n".join(bad))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="stops per signal (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random moments")
    parser.add_argument("--signals", nargs="+", choices=list(SIGNALS),
                        default=["KILL", "TERM", "INT"])
    parser.add_argument("--only", choices=["kills", "malformed"])
    parser.add_argument("--keep", type=Path, help="keep the run folders in this folder")
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per trial")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="harness-reliability-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.only in (None, "malformed"):
            malformed(work / "malformed")
        if args.only in (None, "kills"):
            kills(args, work / "kills")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
