"""Report folders: files replace nothing unless the user says so, and never half a report.

Commands that write reports call `check_outputs` before their (slow) measurement, so a clash is
one clear line at once, not a lost file or a lost run. `replacing` then gives them a fresh
folder beside the old one to write into, and swaps the finished report in whole: a failure
while writing (a full disk, a bug) leaves the old report as it was and nothing new behind.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .checkpoint.staging import staged
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
    that the new report lacks go too). When it fails, `folder` is left untouched.

    A folder that holds nothing but a report is replaced by renaming (`checkpoint.staging`);
    one that holds other files too, or that this process runs in, gets the new files one by
    one once all of them are written."""
    names = set(names)
    folder = Path(folder).absolute()
    held = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    whole = held <= names and not Path.cwd().resolve().is_relative_to(folder.resolve())
    target = folder if whole else folder.parent / f".{folder.name}.new-report"
    with staged(target, replace=True) as new:
        yield new
        written = {p.name for p in new.iterdir()}
        if not written <= names:
            raise ValueError(f"unexpected report files: {sorted(written - names)}")
    if whole:
        return
    try:
        for name in written:
            os.replace(target / name, folder / name)
        for name in (held & names) - written:
            (folder / name).unlink()
    except OSError as exc:
        raise GptossError(f"writing {folder} failed: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(target, ignore_errors=True)
