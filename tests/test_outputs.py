"""Report folders: an earlier report is replaced whole or kept, never mixed, nothing left over."""

from __future__ import annotations

import errno

import pytest

from gptoss_lite import GptossError
from gptoss_lite.outputs import replacing

NAMES = ("report.md", "report.json", "report.png")


def contents(folder):
    return {p.name: p.read_text() for p in folder.iterdir()}


def old_report(folder):
    folder.mkdir()
    for name in NAMES:
        (folder / name).write_text(f"old {name}")
    return contents(folder)


def test_a_new_folder_is_made(tmp_path):
    with replacing(tmp_path / "a" / "out", NAMES) as new:
        (new / "report.md").write_text("new")
    assert contents(tmp_path / "a" / "out") == {"report.md": "new"}
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["out"]


def test_the_old_report_goes_whole_even_files_the_new_one_lacks(tmp_path):
    old_report(tmp_path / "out")
    with replacing(tmp_path / "out", NAMES) as new:
        (new / "report.md").write_text("new md")
        (new / "report.json").write_text("new json")
    assert contents(tmp_path / "out") == {"report.md": "new md", "report.json": "new json"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"), KeyError])
def test_a_failure_mid_write_leaves_the_old_report(tmp_path, failure):
    before = old_report(tmp_path / "out")
    expected = GptossError if isinstance(failure, OSError) else KeyError
    with pytest.raises(expected) as err, replacing(tmp_path / "out", NAMES) as new:
        (new / "report.json").write_text("new json")
        raise failure
    if isinstance(failure, OSError):
        assert str(err.value) == (
            f"writing {tmp_path / 'out'} failed: No space left on device; nothing was written"
        )
    assert contents(tmp_path / "out") == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_other_files_in_the_folder_are_kept(tmp_path):
    old_report(tmp_path / "out")
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with replacing(tmp_path / "out", NAMES) as new:
        (new / "report.md").write_text("new md")
    assert contents(tmp_path / "out") == {"report.md": "new md", "notes.txt": "mine"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_the_working_folder_is_not_renamed_under_the_process(tmp_path, monkeypatch):
    old_report(tmp_path / "out")
    monkeypatch.chdir(tmp_path / "out")
    with replacing(tmp_path / "out", NAMES) as new:
        (new / "report.md").write_text("new md")
    assert contents(tmp_path / "out") == {"report.md": "new md"}
    assert (tmp_path / "out").samefile(".")


def test_a_failure_beside_other_files_leaves_them_and_the_old_report(tmp_path):
    before = old_report(tmp_path / "out")
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with (
        pytest.raises(GptossError, match="No space left on device"),
        replacing(tmp_path / "out", NAMES) as new,
    ):
        (new / "report.md").write_text("new md")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert contents(tmp_path / "out") == before | {"notes.txt": "mine"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
