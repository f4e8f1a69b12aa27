"""Host memory for the weights the CPU reads at every token, in 2 MiB pages where the OS allows.

A CPU decode step streams every attention matrix, the routed experts and the head from RAM once.
Memory-mapped shards sit in the page cache in whatever pages it holds them (4 KiB after random
faults), and a TLB miss every 4 KiB holds the kernels well under the machine's read rate (decode
was about a fifth faster once the shards happened to sit in 2 MiB pages). So the weights the CPU
reads are copied into a `HostArena`: one anonymous mapping, aligned to 2 MiB and advised
MADV_HUGEPAGE, which Linux backs with transparent huge pages when
/sys/kernel/mm/transparent_hugepage/enabled is "madvise" or "always" (elsewhere it is ordinary
memory, the same bytes). Tensors are carved from it one after another, 64-byte aligned, so the
padding is one partial 2 MiB page for the whole model. `huge_page_bytes()` says how much of this
process's anonymous memory is in 2 MiB pages.
"""

from __future__ import annotations

import math
import mmap
from pathlib import Path

import torch

HUGE_PAGE = 2 * 1024 * 1024
ALIGN = 64  # a cache line: every tensor starts on one


class HostArena:
    """`nbytes` of host memory in 2 MiB pages where possible, handed out as tensors."""

    def __init__(self, nbytes: int):
        size = -(-max(nbytes, 1) // HUGE_PAGE) * HUGE_PAGE  # whole pages: the last one too
        self._map = mmap.mmap(-1, size + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._all = torch.frombuffer(self._map, dtype=torch.uint8)  # keeps the mapping alive
        start = -self._all.data_ptr() % HUGE_PAGE
        if hasattr(mmap, "MADV_HUGEPAGE"):
            self._map.madvise(mmap.MADV_HUGEPAGE, start, size)
        self._next, self._end = start, start + nbytes

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised tensor of `shape` and `dtype` from the arena."""
        nbytes = math.prod(shape) * dtype.itemsize
        if self._next + nbytes > self._end:
            raise ValueError(f"the arena has {self._end - self._next} bytes left, not {nbytes}")
        out = self._all[self._next : self._next + nbytes]
        self._next += -(-nbytes // ALIGN) * ALIGN
        return out.view(dtype).view(shape)


def arena_bytes(shapes: list[tuple[tuple[int, ...], torch.dtype]]) -> int:
    """The arena size that holds tensors of these (shape, dtype), each 64-byte aligned."""
    return sum(-(-math.prod(s) * d.itemsize // ALIGN) * ALIGN for s, d in shapes)


def huge_page_bytes() -> int | None:
    """Bytes of this process's anonymous memory in 2 MiB pages, or None where not reported."""
    try:
        text = Path("/proc/self/smaps_rollup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1]) * 1024
    return None
