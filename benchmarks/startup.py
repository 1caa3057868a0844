"""How long the commands that run nothing take: ``harness validate SUITE`` and ``harness
plugins``, the ones a pre-commit hook or an editor calls and a user waits for.

Each command runs ``--repeat`` times as a fresh process (the installed ``harness`` script,
as a user starts it); the best and the median wall time are printed, with the heavy
packages (torch, numpy, pandas, ...) that the command imported, found by running it once
more inside a process that reports its ``sys.modules``. The goal is under 0.5 s without
importing torch::

    python benchmarks/startup.py [--repeat 5] [--suite suites/quickstart.yaml] [--builtin]

``--builtin`` loads the harness's own plugins only (``HARNESS_ONLY_PLUGINS``), leaving out
other installed plugin packages (whose import time is theirs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "torchvision", "numpy", "pandas", "scipy", "sklearn", "onnx", "onnxruntime",
         "matplotlib", "pyarrow", "torchattacks", "timm")

#: runs the command in-process, then prints which heavy packages it imported
PROBE = """
import json, sys
from harness.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps([m for m in {heavy!r} if m in sys.modules]), file=sys.stderr)
"""


def harness_command() -> list[str]:
    script = Path(sys.executable).with_name("harness")
    if script.is_file():
        return [str(script)]
    found = shutil.which("harness")
    return [found] if found else [sys.executable, "-c", "from harness.cli import main; main()"]


def wall_times(argv: list[str], repeat: int, env: dict[str, str]) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            sys.exit(f"{' '.join(argv)} exited with {done.returncode}: {done.stderr.strip()}")
    return times


def imported(args: list[str], env: dict[str, str]) -> list[str]:
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], cwd=ROOT,
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return json.loads(done.stderr.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--suite", default="suites/quickstart.yaml")
    parser.add_argument("--builtin", action="store_true",
                        help="load only the harness's own plugins")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.builtin:
        env["HARNESS_ONLY_PLUGINS"] = "robustness-harness"
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, best / median of "
          f"{args.repeat} runs{', built-in plugins only' if args.builtin else ''}")
    for label, cmd in ((f"harness validate {args.suite}", ["validate", args.suite]),
                       ("harness plugins", ["plugins"])):
        times = wall_times(harness_command() + cmd, args.repeat, env)
        heavy = imported(cmd, env)
        print(f"{label:45s} {min(times):6.2f} s / {statistics.median(times):6.2f} s   "
              f"imports: {', '.join(heavy) or 'none of ' + '/'.join(HEAVY[:3])}")


if __name__ == "__main__":
    main()
