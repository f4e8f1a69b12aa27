"""Writing folders all or nothing: checkpoints, and report folders that replace nothing unasked.

`staged(dst)` yields `.DST.partial-PID` beside DST to write into and renames it to DST only once
the block finishes, so DST never holds half a checkpoint. Whatever stops the block (an error, a
full disk, Ctrl-C, SIGTERM) removes the partial folder; a full disk or any other OSError becomes
one `GptossError` line, and SIGTERM exits with status 143 after the cleanup (when no handler of
the program's own is installed). SIGKILL cannot be caught, so each run first removes the
partial folders of earlier runs for the same DST whose process is gone: only folders of that
exact name pattern beside that DST, never another live run's.

Commands that write reports call `check_outputs` before their (slow) measurement, so a clash is
one clear line at once, not a lost file or a lost run. `replacing` then gives them a fresh
folder beside the old one to write into, and swaps the finished report in whole: a failure
while writing (a full disk, a bug) leaves the old report as it was and nothing new behind.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import GptossError

SIGTERM_STATUS = 128 + signal.SIGTERM


def partial_name(dst: Path, pid: int | None = None) -> str:
    """The hidden folder name the run of process `pid` (this one by default) writes DST into."""
    return f".{dst.name}.partial-{os.getpid() if pid is None else pid}"


@contextmanager
def staged(dst: Path, *, replace: bool = False) -> Iterator[Path]:
    """A new empty folder to write DST into; on success it becomes DST (replacing an existing
    DST when `replace`, else only an absent or empty one)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(dst)
    partial = dst.parent / partial_name(dst)
    with _sigterm_exits() as terminated:
        partial.mkdir(mode=0o755)
        try:
            yield partial
            if terminated:
                raise SystemExit(SIGTERM_STATUS)
            _move_into_place(partial, dst, replace)
        except OSError as exc:
            shutil.rmtree(partial, ignore_errors=True)
            if terminated:
                raise SystemExit(SIGTERM_STATUS) from None
            where = f" ({exc.filename})" if exc.filename else ""
            raise GptossError(
                f"writing {dst} failed: {exc.strerror or exc}{where}; nothing was written"
            ) from None
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            if terminated:  # native code (safetensors, torch) may turn the SystemExit into another
                raise SystemExit(SIGTERM_STATUS) from None
            raise


def remove_stale(dst: Path) -> list[Path]:
    """Remove the partial folders left beside `dst` by runs that no longer exist."""
    pattern = re.compile(re.escape(f".{dst.name}.partial-") + r"(\d+)(\.old)?")
    removed = []
    for path in sorted(dst.parent.glob(f".{dst.name}.partial-*")):
        match = pattern.fullmatch(path.name)
        if not match or not path.is_dir() or path.is_symlink() or _alive(int(match[1])):
            continue
        if match[2] and not dst.exists():  # killed between the two renames of a replacement
            path.rename(dst)
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _move_into_place(partial: Path, dst: Path, replace: bool) -> None:
    if replace and dst.is_dir() and any(dst.iterdir()):
        old = dst.parent / f"{partial.name}.old"
        dst.rename(old)
        partial.rename(dst)
        shutil.rmtree(old)
    else:
        os.replace(partial, dst)  # atomic; replaces an empty DST folder


@contextmanager
def _sigterm_exits() -> Iterator[list[int]]:
    """SIGTERM raises SystemExit(143) in the main thread while the block runs, so the cleanup
    around it runs; left alone if the program has a handler of its own. Yields the list the
    handler appends the signal to, so the caller knows the run was terminated whatever became
    of the SystemExit."""
    terminated: list[int] = []
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield terminated
        return

    def exit_143(signum, frame) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the cleanup
        terminated.append(signum)
        raise SystemExit(SIGTERM_STATUS)

    signal.signal(signal.SIGTERM, exit_143)
    try:
        yield terminated
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


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

    A folder that holds nothing but a report is replaced by renaming (`staged`);
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
