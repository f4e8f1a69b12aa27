"""Building the CPU kernel library: compiled the first time a kernel is to run on the CPU, cached.

The C sources of this folder (its `*.c`, with its `*.h`) are compiled into one library by the
system C compiler (`$CC`, else `cc`, `gcc` or `clang`) and cached under the user's cache folder
(`$XDG_CACHE_HOME` or `~/.cache`, then `gptoss-lite/kernels/`), keyed by a hash of the sources,
the compiler's path and version, the machine (`platform.machine()`) and the flags; the file is
written beside its final name and renamed, so concurrent first uses never see half a library.
With OpenMP the kernels run on torch's threads; a compiler without it builds a library that
runs on one thread, and says so. A failed build says why in one line (the compiler's first
error line) and where its full output was written; the kernels' callers then run the torch
path. Notices go through `logging` (logger `gptoss_lite.kernels`), as the Triton fallback's do.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

HERE = Path(__file__).parent
FLAGS = ("-O3", "-std=c11", "-fPIC", "-shared")
OPENMP = "-fopenmp"
TIMEOUT_S = 300
TORCH_PATH = "MXFP4 experts run on the slow torch path on CPU"

log = logging.getLogger("gptoss_lite.kernels")


class Failed(Exception):
    """A build that did not produce a library: why, in one line, and where its log is."""

    def __init__(self, reason: str, log: Path | None = None) -> None:
        super().__init__(reason + (f" (full output: {log})" if log else ""))
        self.log = log


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gptoss-lite" / "kernels"


def sources() -> list[Path]:
    """The C files compiled into the library."""
    return sorted(HERE.glob("*.c"))


def compiler() -> str | None:
    """The path of the C compiler to use, or None where there is none."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@cache
def compiler_version(path: str) -> str:
    """What `path --version` prints (empty if it prints nothing or fails)."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


def library_path(path: str, flags: tuple[str, ...]) -> Path:
    """Where the library built by compiler `path` with `flags` is cached."""
    parts = [p.read_bytes() for p in (*sources(), *sorted(HERE.glob("*.h")))]
    parts += [s.encode() for s in (path, compiler_version(path), platform.machine(), *flags)]
    key = hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]
    return cache_dir() / f"mxfp4_cpu-{key}.so"


def compile_library(path: str, flags: tuple[str, ...]) -> Path:
    """The cached library built by compiler `path` with `flags`, compiling it if needed; a
    `Failed` naming the compiler's first error line and the log of its whole output if not."""
    target = library_path(path, flags)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
    os.close(fd)
    command = [path, *flags, *map(str, sources()), "-o", tmp, "-lm"]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
        if out.returncode == 0:
            os.replace(tmp, target)
            return target
    except subprocess.TimeoutExpired:
        raise Failed(f"{path} took more than {TIMEOUT_S} s") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log_file = target.with_suffix(".log")
    log_file.write_text(f"$ {' '.join(command)}\n{out.stdout}{out.stderr}")
    raise Failed(f"{path} failed: {first_error(out.stderr or out.stdout)}", log_file)


def first_error(output: str) -> str:
    """The line of a compiler's output that says what went wrong: its first "error" line, else
    its first line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["no output"])[0]


def load_library() -> ctypes.CDLL | None:
    """The kernel library, built if need be (with OpenMP when the compiler has it); None, with
    a notice saying why, when it cannot be built or loaded."""
    path = compiler()
    if path is None:
        log.warning(
            "no C compiler found: %s; install one (gcc or clang; set CC to choose one) for the "
            "compiled kernels",
            TORCH_PATH,
        )
        return None
    try:
        return ctypes.CDLL(str(compile_library(path, (*FLAGS, OPENMP))))
    except (Failed, OSError) as exc:
        without = exc
    try:
        lib = ctypes.CDLL(str(compile_library(path, FLAGS)))
    except (Failed, OSError) as exc:
        log.warning("the CPU kernels did not build: %s; %s", exc, TORCH_PATH)
        return None
    log.warning("the CPU kernels were built without OpenMP (%s): they run on one thread", without)
    return lib
