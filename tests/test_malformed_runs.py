"""Damaged run folders x every command that reads run folders: each answers exit 2 with one
line on stderr naming the damaged file; none ends in an internal error or renders silently."""

from __future__ import annotations

import pytest

import malformed
from harness.cli import main


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return malformed.make_runs(tmp_path_factory.mktemp("runs"))


@pytest.mark.parametrize("damage,command", malformed.pairs(),
                         ids=[f"{d.name}-{c}" for d, c in malformed.pairs()])
def test_damaged_run_folder_is_one_line_exit_2(runs, damage, command, tmp_path, capsys):
    folder = malformed.damaged_copy(damage, command, runs, tmp_path)
    capsys.readouterr()
    code = main(malformed.COMMANDS[command](folder, runs))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "internal error" not in err and damage.file in lines[0], err
    assert str(folder) in lines[0], err


@pytest.mark.parametrize("command", list(malformed.COMMANDS))
def test_undamaged_run_folders_pass_every_command(runs, command, tmp_path, capsys):
    """The control: the same commands on the same folders, undamaged, succeed."""
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(runs["s1" if command == "merge" else "good"], folder, symlinks=True)
    assert main(malformed.COMMANDS[command](folder, runs)) == 0, capsys.readouterr().err
