"""Report folders: files are written only where they replace nothing, unless the user says so.

Commands that write reports call `check_outputs` before their (slow) measurement, so a clash is
one clear line at once, not a lost file or a lost run.
"""

from __future__ import annotations

from collections.abc import Iterable
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
