"""Report folders: files replace nothing unless the user says so, and never half a report.

Commands that write reports call `check_outputs` before their (slow) measurement, so a clash is
one clear line at once, not a lost file or a lost run. `replacing` then gives them a fresh
folder beside the old one to write into, and swaps the finished report in whole: a failure
while writing (a full disk, a bug) leaves the old report as it was and nothing new behind.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import GptossError


def check_outputs(folder: Path, names: Iterable[str], overwrite: bool) -> None:
    """Fail if any of `names` already exists in `folder` and `overwrite` is off."""
    if folder.exists() and not folder.is_dir():
        raise GptossError(f"{folder} is a file; --out needs a folder")
    taken = [name for name in names if (folder / name).exists()]
    if taken and not overwrite:
        raise GptossError(
            f"{folder / taken[0]} already exists; pass --overwrite to replace it, or another --out"
        )


@contextmanager
def replacing(folder: Path, names: Iterable[str]) -> Iterator[Path]:
    """Yield an empty folder beside `folder` to write a report of files among `names` into;
    when the block succeeds, they replace the report in `folder` whole (old files of `names`
    that the new report lacks go too). When it fails, `folder` is left untouched."""
    names = set(names)
    folder = Path(folder).absolute()
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        new = _sibling(folder, "new")
        new.mkdir()
    except OSError as exc:
        raise GptossError(f"cannot write the report into {folder}: {exc.strerror}") from None
    try:
        yield new
        written = {p.name for p in new.iterdir()}
        if not written <= names:
            raise ValueError(f"unexpected report files: {sorted(written - names)}")
        _swap_in(new, folder, names, written)
    except OSError as exc:
        raise GptossError(
            f"cannot write the report into {folder}: {exc.strerror}; the folder is unchanged"
        ) from None
    finally:
        shutil.rmtree(new, ignore_errors=True)


def _swap_in(new: Path, folder: Path, names: set[str], written: set[str]) -> None:
    """Put the files of `new` into `folder`: by renaming the folders when `folder` holds nothing
    but a report (and is not where this process runs), else file by file."""
    held = {p.name for p in folder.iterdir()} if folder.exists() else set()
    if held <= names and not Path.cwd().resolve().is_relative_to(folder.resolve()):
        old = _sibling(folder, "old") if folder.exists() else None
        if old is None:
            new.rename(folder)
            return
        folder.rename(old)
        try:
            new.rename(folder)
        except OSError:
            old.rename(folder)
            raise
        shutil.rmtree(old, ignore_errors=True)
        return
    for name in written:
        os.replace(new / name, folder / name)
    for name in (held & names) - written:
        (folder / name).unlink()


def _sibling(folder: Path, kind: str) -> Path:
    return folder.parent / f".{folder.name}.{kind}-{secrets.token_hex(4)}"
