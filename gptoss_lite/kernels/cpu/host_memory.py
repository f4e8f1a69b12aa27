"""Host memory for the weights the CPU reads at every token, in 2 MiB pages where the OS allows.

A CPU decode step streams every attention matrix, the routed experts and the head from RAM once,
and in 4 KiB pages a TLB miss every 4 KiB holds the kernels well under the machine's read rate
(decode was about a fifth faster once the shards happened to sit in 2 MiB pages). Two homes:

- `HostArena`: anonymous memory, 2 MiB-aligned and advised MADV_HUGEPAGE, that the loader reads
  those weights into. A fault there compacts memory to find a 2 MiB page (THP "defrag" is
  "madvise" by default), and `collapse` (MADV_COLLAPSE, Linux 6.1) gathers whatever still came
  in 4 KiB pages. Anonymous memory stays: the pages of a mapped file are the page cache's, which
  the kernel takes back when memory runs short, and a weight read again then comes from the disk
  in 4 KiB pages (20b geometry on 23 GiB, weights left mapped: of a shard's 4.3 GB, 0.06 GB
  still resident once the other shards had been copied).
- `MappedFile`: a checkpoint shard mapped whole (privately: a write copies, the file never
  changes), for what is read from the file rather than streamed: the embedding's rows, a tensor
  to convert. Not advised to use 2 MiB pages: a row of the embedding read through a 2 MiB page
  maps the whole page, and a prompt's tokens, spread over the vocabulary, then map most of it.

Linux backs the arena with transparent huge pages when /sys/kernel/mm/transparent_hugepage/enabled
is "madvise" or "always"; elsewhere they are ordinary pages, the same bytes.
`huge_page_bytes()` says how much of this process's memory is in 2 MiB pages.
"""

from __future__ import annotations

import errno
import math
import mmap
import os
import weakref
from pathlib import Path

import torch

HUGE_PAGE = 2 * 1024 * 1024
ALIGN = 64  # a cache line: every tensor starts on one
MADV_COLLAPSE = getattr(mmap, "MADV_COLLAPSE", 25)  # Linux 6.1

_mapped: weakref.WeakSet[MappedFile] = weakref.WeakSet()


class MappedFile:
    """One file mapped whole, copy-on-write."""

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        self.bytes = torch.frombuffer(self._map, dtype=torch.uint8)  # the whole file
        _mapped.add(self)

    def tensor(self, offset: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """The tensor of `shape` and `dtype` whose bytes start at `offset` in the file: a storage
        of its own over the mapping (which it keeps alive), so it counts as its own bytes."""
        count = math.prod(shape)
        if offset + count * dtype.itemsize > self.bytes.numel():
            raise ValueError(f"{self.path} is shorter than its header says")
        if count == 0:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(self._map, dtype=dtype, count=count, offset=offset).view(shape)

    def prefetch(self, offset: int, length: int) -> None:
        """Read [offset, offset + length) into the page cache ahead of use, mapping nothing."""
        if hasattr(os, "posix_fadvise"):
            with open(self.path, "rb") as f:
                os.posix_fadvise(f.fileno(), offset, length, os.POSIX_FADV_WILLNEED)


def mapping_of(tensor: torch.Tensor) -> tuple[MappedFile, int] | None:
    """The `MappedFile` a tensor's bytes lie in, and their offset in the file; None if none."""
    address = tensor.data_ptr()
    for mapped in _mapped:
        offset = address - mapped.bytes.data_ptr()
        if 0 <= offset < mapped.bytes.numel():
            return mapped, offset
    return None


class HostArena:
    """`nbytes` of host memory in 2 MiB pages where possible, handed out as tensors."""

    def __init__(self, nbytes: int):
        size = -(-max(nbytes, 1) // HUGE_PAGE) * HUGE_PAGE  # whole pages: the last one too
        self._map = mmap.mmap(-1, size + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        start = -torch.frombuffer(self._map, dtype=torch.uint8, count=1).data_ptr() % HUGE_PAGE
        if hasattr(mmap, "MADV_HUGEPAGE"):
            self._map.madvise(mmap.MADV_HUGEPAGE, start, size)
        self._start, self._next, self._end = start, start, start + nbytes

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised tensor of `shape` and `dtype` from the arena: a storage of its own
        over the mapping (which it keeps alive), so it counts as its own bytes."""
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        if self._next + nbytes > self._end:
            raise ValueError(f"the arena has {self._end - self._next} bytes left, not {nbytes}")
        if count == 0:
            return torch.empty(shape, dtype=dtype)
        out = torch.frombuffer(self._map, dtype=dtype, count=count, offset=self._next)
        self._next += -(-nbytes // ALIGN) * ALIGN
        return out.view(shape)

    def collapse(self) -> bool:
        """Gather the arena's pages that came in 4 KiB into 2 MiB pages where the kernel can
        (MADV_COLLAPSE: synchronous, compacting memory); where it cannot, they stay as they are.
        False when it found too little free memory for them all (more may be had once some is
        freed), else True."""
        size = -(-(self._end - self._start) // HUGE_PAGE) * HUGE_PAGE
        try:
            self._map.madvise(MADV_COLLAPSE, self._start, size)
        except OSError as exc:  # before Linux 6.1 or without THP: small pages stay
            return exc.errno not in (errno.ENOMEM, errno.EAGAIN)
        return True


def arena_bytes(shapes: list[tuple[tuple[int, ...], torch.dtype]]) -> int:
    """The arena size that holds tensors of these (shape, dtype), each 64-byte aligned."""
    return sum(-(-math.prod(s) * d.itemsize // ALIGN) * ALIGN for s, d in shapes)


def huge_page_bytes() -> int | None:
    """Bytes of this process's memory mapped as 2 MiB pages (anonymous and file-backed), or None
    where the OS does not say."""
    try:
        text = Path("/proc/self/smaps_rollup").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return 1024 * (_kib(fields.get("AnonHugePages")) + _kib(fields.get("FilePmdMapped")))


def _kib(value: str | None) -> int:
    return int(value.split()[0]) if value else 0
