"""Nothing escapes a run folder: paths read from it stay inside it, names read back from it
are checked like a suite's, merge copies regular files only, and files get the umask's mode."""

from __future__ import annotations

import json
import os
import stat

import pytest

import malformed
from harness.cli import main


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return malformed.make_runs(tmp_path_factory.mktemp("runs"))


def one_error(args, capsys) -> str:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_html_report_never_embeds_a_file_outside_the_folder(runs, tmp_path, capsys):
    """A figure path of ../../../../etc/passwd in summary.json, or a figure that is a link to
    it: the report is refused, and nothing of the file is written anywhere."""
    import shutil

    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    for how in ("path", "link"):
        folder = tmp_path / how
        shutil.copytree(runs["good"], folder, symlinks=True)
        summary = json.loads((folder / "summary.json").read_text())
        k = next(i for i, c in enumerate(summary["cases"]) if c["figures"])
        if how == "path":
            summary["cases"][k]["figures"] = [os.path.relpath(secret, folder)]
            (folder / "summary.json").write_text(json.dumps(summary))
        else:
            figure = folder / summary["cases"][k]["figures"][0]
            figure.unlink()
            figure.symlink_to(secret)
        out = tmp_path / f"{how}.html"
        line = one_error(["report", folder, "--format", "html", "-o", out], capsys)
        assert "outside the run folder" in line or "not a path inside" in line, line
        assert not out.exists() and not (folder / "report.html").exists()


def test_merge_refuses_a_suite_name_that_leaves_reports(runs, tmp_path, monkeypatch, capsys):
    import shutil

    monkeypatch.chdir(tmp_path)
    shards = []
    for k in (1, 2):
        shard = tmp_path / f"s{k}"
        shutil.copytree(runs[f"s{k}"], shard, symlinks=True)
        summary = json.loads((shard / "summary.json").read_text())
        summary["suite"]["name"] = str(tmp_path / "escaped")
        (shard / "summary.json").write_text(json.dumps(summary))
        shards.append(shard)
    line = one_error(["merge", *shards], capsys)  # no --out: the name would make the folder
    assert "summary.json: suite.name: use letters, digits" in line
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "reports").exists()


def test_merge_copies_regular_files_only(runs, tmp_path, capsys):
    import shutil

    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    shard = tmp_path / "s1"
    shutil.copytree(runs["s1"], shard, symlinks=True)
    figure = next((shard / "figures").rglob("*.png"))
    figure.unlink()
    figure.symlink_to(secret)
    line = one_error(["merge", shard, runs["s2"], "--out", tmp_path / "merged"], capsys)
    assert f"{figure} is a symbolic link" in line
    assert not (tmp_path / "merged").exists()
    # without the link, merge writes its folder with regular files only
    figure.unlink()
    shutil.copy(next((runs["s1"] / "figures").rglob("*.png")), figure)
    assert main(["merge", str(shard), str(runs["s2"]), "--out", str(tmp_path / "merged")]) == 0
    files = [p for p in (tmp_path / "merged").rglob("*")]
    assert files and not any(p.is_symlink() for p in files)


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_run_folder_files_get_the_umask_mode(runs, tmp_path, capsys, umask, mode):
    old = os.umask(umask)
    try:
        folder = tmp_path / "run"
        assert main(["run", str(runs["suite"]), "--out", str(folder), "-q"]) == 0
        assert main(["report", str(folder), "--format", "html"]) == 0
    finally:
        os.umask(old)
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == \
        {p.name: oct(mode) for p in files}
    assert {"summary.json", "results.csv", "suite.yaml", "report.md", "report.html",
            ".lock"} <= {p.name for p in files}
    assert any(p.suffix == ".png" for p in files) and any(p.suffix == ".npz" for p in files)
