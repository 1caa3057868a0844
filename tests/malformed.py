"""Run folders damaged in every way the harness must answer with exit 2 and one line naming
the file (never an internal error, never a silent render), and the commands that read them.

Used by tests/test_malformed_runs.py (one test per damage x command) and by
benchmarks/reliability.py (the tally)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

SUITE = """\
name: damage
seed: 3
data: {use: digits, split: test, limit: 24}
models:
  a: {use: torch, factory: "tiny_models:digits_template", input_shape: [1, 8, 8]}
  b: {use: torch, factory: "tiny_models:linear", input_shape: [1, 8, 8]}
tests:
  - name: xfer
    attack: {use: gaussian-noise, stddev: 0.3}
    models: [a]
    transfer: all
  - name: clean
  - name: noise
    attack: {use: gaussian-noise, stddev: 0.2}
    pictures: 2
"""


def make_runs(root: Path) -> dict[str, Path]:
    """The suite file, a whole run and its two shards, under ``root``."""
    from harness.cli import main

    root.mkdir(parents=True, exist_ok=True)
    suite = root / "damage.yaml"
    suite.write_text(SUITE)
    runs = {"suite": suite, "good": root / "good", "s1": root / "s1", "s2": root / "s2"}
    assert main(["run", str(suite), "--out", str(runs["good"]), "-q"]) == 0
    for k in (1, 2):
        assert main(["run", str(suite), "--shard", f"{k}/2", "--out", str(runs[f"s{k}"]),
                     "-q"]) == 0
    return runs


# ------------------------------------------------------------------------------ damages

def _write(name: str, data: bytes | str) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        path = folder / name
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    return damage


def _summary(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        path = folder / "summary.json"
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))
    return damage


def _set(path: tuple, value: object) -> Callable[[dict], object]:
    def change(data: dict) -> None:
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return change


def _drop(key: str) -> Callable[[dict], object]:
    return lambda data: data.pop(key)


def _remove(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).unlink()


def _link_out(name: str, target: str = "/etc/passwd") -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        path = folder / name
        path.unlink()
        os.symlink(target, path)
    return damage


def _dir_instead(name: str) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        (folder / name).unlink()
        (folder / name).mkdir()
    return damage


def _csv(change: Callable[[list[str]], list[str]]) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        path = folder / "results.csv"
        path.write_text("\n".join(change(path.read_text().splitlines())) + "\n")
    return damage


def _first_figure(folder: Path) -> Path:
    return sorted((folder / "figures").rglob("*.png"))[0]


def _figure_link(folder: Path) -> None:
    path = _first_figure(folder)
    path.unlink()
    os.symlink("/etc/passwd", path)


def _artifact_link(folder: Path) -> None:
    path = sorted((folder / "artifacts").rglob("*.npz"))[0]   # a chunk's saved examples
    path.unlink()
    os.symlink("/etc/passwd", path)


def _first(folder: Path, sub: str, suffix: str) -> Path:
    return sorted((folder / sub).glob(f"*{suffix}"))[0]


def _chunk_garbage(folder: Path) -> None:
    _first(folder, "chunks", ".json").write_text("{'case': ")


def _chunk_file_out(folder: Path) -> None:
    path = _first(folder, "chunks", ".json")
    data = json.loads(path.read_text())
    data["files"] = ["../../../etc/passwd"]
    path.write_text(json.dumps(data))


def _ledger_garbage(folder: Path) -> None:
    _first(folder, "ledger", ".parquet").write_bytes(b"PAR1 not really")


def _ledger_dir_link(folder: Path) -> None:
    shutil.rmtree(folder / "ledger")
    os.symlink("/etc", folder / "ledger")


def _figures_dir_link(folder: Path) -> None:
    shutil.rmtree(folder / "figures")
    os.symlink("/etc", folder / "figures")


def _suite_and_digest(text: str) -> Callable[[Path], None]:
    """Replace suite.yaml and the digest summary.json keeps of it (a consistent forgery)."""
    def damage(folder: Path) -> None:
        import hashlib

        (folder / "suite.yaml").write_text(text)
        _summary(_set(("suite", "sha256"), hashlib.sha256(text.encode()).hexdigest()))(folder)
    return damage


@dataclass
class Damage:
    name: str
    file: str                 # what the one line must name
    apply: Callable[[Path], None]
    #: the commands that read the damaged file (None: every command)
    readers: frozenset[str] | None = None


DAMAGES = [
    Damage("summary holds []", "summary.json", _write("summary.json", "[]")),
    Damage("summary holds null", "summary.json", _write("summary.json", "null")),
    Damage("summary holds {}", "summary.json", _write("summary.json", "{}")),
    Damage("summary holds a string", "summary.json", _write("summary.json", '"run"')),
    Damage("summary is binary", "summary.json", _write("summary.json", bytes(range(256)))),
    Damage("summary is not JSON", "summary.json", _write("summary.json", "{'seed': 1,")),
    Damage("summary is empty", "summary.json", _write("summary.json", "")),
    Damage("summary nested too deep", "summary.json",
           _write("summary.json", "[" * 100000 + "]" * 100000)),
    Damage("summary seed is a string", "summary.json", _summary(_set(("seed",), "zero"))),
    Damage("summary cases is a string", "summary.json", _summary(_set(("cases",), "all"))),
    Damage("summary case status unknown", "summary.json",
           _summary(_set(("cases", 0, "status"), 5))),
    Damage("summary case records negative", "summary.json",
           _summary(_set(("cases", 0, "records"), -3))),
    Damage("summary case test is a list", "summary.json",
           _summary(_set(("cases", 0, "test"), ["x"]))),
    Damage("summary case test has a newline", "summary.json",
           _summary(_set(("cases", 0, "test"), "clean\n"))),
    Damage("summary suite name is a path", "summary.json",
           _summary(_set(("suite", "name"), "/tmp/escape"))),
    Damage("summary suite name climbs", "summary.json",
           _summary(_set(("suite", "name"), "../../escape"))),
    Damage("summary suite is a list", "summary.json", _summary(_set(("suite",), []))),
    Damage("summary figure climbs out", "summary.json",
           _summary(_set(("cases", -1, "figures"), ["../../../../etc/passwd"]))),
    Damage("summary figure is absolute", "summary.json",
           _summary(_set(("cases", -1, "figures"), ["/etc/passwd"]))),
    Damage("summary shard is not K/N", "summary.json", _summary(_set(("shard",), [3, 2]))),
    Damage("summary gates is a mapping", "summary.json", _summary(_set(("gates",), {"a": 1}))),
    Damage("summary from a newer harness", "summary.json", _summary(_set(("format",), 99))),
    Damage("summary lacks cases", "summary.json", _summary(_drop("cases"))),
    Damage("summary lacks the suite", "summary.json", _summary(_drop("suite"))),
    Damage("summary is missing", "summary.json", _remove("summary.json")),
    Damage("summary is a folder", "summary.json", _dir_instead("summary.json")),
    Damage("summary links out", "summary.json", _link_out("summary.json")),
    Damage("results miss a row", "results.csv", _csv(lambda lines: lines[:-1])),
    Damage("results hold an extra row", "results.csv", _csv(lambda lines: lines + [lines[-1]])),
    Damage("results hold only the header", "results.csv", _csv(lambda lines: lines[:1])),
    Damage("results are binary", "results.csv", _write("results.csv", bytes(range(256)))),
    Damage("results are empty", "results.csv", _write("results.csv", "")),
    Damage("results lack the value column", "results.csv",
           _csv(lambda lines: [",".join(c for i, c in enumerate(ln.split(",")) if i != 4)
                               for ln in lines])),
    Damage("results hold a word as a value", "results.csv",
           _csv(lambda lines: lines[:1] + [",".join(lines[1].split(",")[:4] + ["lots"]
                                                     + lines[1].split(",")[5:])] + lines[2:])),
    Damage("results hold a row of another test", "results.csv",
           _csv(lambda lines: lines[:1] + ["other" + lines[1][lines[1].index(","):]]
                + lines[2:])),
    Damage("results are missing", "results.csv", _remove("results.csv")),
    Damage("results link out", "results.csv", _link_out("results.csv")),
    Damage("suite is binary", "suite.yaml", _write("suite.yaml", b"\xff\xfe\x00\x07name")),
    Damage("suite holds a control character", "suite.yaml",
           _write("suite.yaml", SUITE.replace("name: damage", "name: dam\x07age"))),
    Damage("suite with a control character and its digest", "suite.yaml",
           _suite_and_digest(SUITE.replace("name: damage", "name: dam\x07age"))),
    Damage("suite of the wrong shape and its digest", "suite.yaml",
           _suite_and_digest("- just\n- a list\n")),
    Damage("suite is not the one that ran", "suite.yaml", _write("suite.yaml", SUITE + "# x\n")),
    Damage("suite is empty", "suite.yaml", _write("suite.yaml", "")),
    Damage("suite is missing", "suite.yaml", _remove("suite.yaml")),
    Damage("suite links out", "suite.yaml", _link_out("suite.yaml")),
    Damage("a figure links out", "figures/", _figure_link, frozenset({"html", "merge"})),
    Damage("the figures folder links out", "figures", _figures_dir_link,
           frozenset({"html", "merge"})),
    Damage("saved examples link out", ".npz", _artifact_link, frozenset({"reuse", "merge"})),
    Damage("a chunk record is not JSON", "chunks/", _chunk_garbage,
           frozenset({"merge", "resume"})),
    Damage("a chunk record names a file outside", "chunks/", _chunk_file_out,
           frozenset({"merge", "resume"})),
    Damage("a ledger file is not Parquet", "ledger/", _ledger_garbage,
           frozenset({"merge", "resume"})),
    Damage("the ledger folder links out", "ledger", _ledger_dir_link,
           frozenset({"merge", "resume"})),
]

#: every command that reads run folders: name -> argv for (damaged folder, runs)
COMMANDS: dict[str, Callable[[Path, dict[str, Path]], list[str]]] = {
    "text": lambda d, r: ["report", str(d)],
    "markdown": lambda d, r: ["report", str(d), "--format", "markdown"],
    "html": lambda d, r: ["report", str(d), "--format", "html", "-o", str(d.parent / "r.html")],
    "junit": lambda d, r: ["report", str(d), "--format", "junit"],
    "compare": lambda d, r: ["compare", str(r["good"]), str(d)],
    "merge": lambda d, r: ["merge", str(d), str(r["s2"]), "--out", str(d.parent / "merged")],
    "resume": lambda d, r: ["run", str(r["suite"]), "--resume", str(d), "-q"],
    "baseline": lambda d, r: ["run", str(r["suite"]), "--baseline", str(d), "--out",
                              str(d.parent / "new"), "-q"],
    "reuse": lambda d, r: ["run", str(r["suite"]), "--reuse", str(d), "--out",
                           str(d.parent / "new"), "-q"],
}


def pairs() -> list[tuple[Damage, str]]:
    return [(d, c) for d in DAMAGES for c in COMMANDS if d.readers is None or c in d.readers]


def damaged_copy(damage: Damage, command: str, runs: dict[str, Path], where: Path) -> Path:
    """A copy of the run (shard 1 for merge) in ``where``, damaged."""
    source = runs["s1" if command == "merge" else "good"]
    folder = where / "run"
    shutil.copytree(source, folder, symlinks=True)
    damage.apply(folder)
    return folder
