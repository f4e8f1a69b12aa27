"""Host memory for the weights the CPU reads at every token, in 2 MiB pages where the OS allows.

A CPU decode step streams every attention matrix, the routed experts and the head from RAM once,
and in 4 KiB pages a TLB miss every 4 KiB holds the kernels well under the machine's read rate
(decode was about a fifth faster once the shards happened to sit in 2 MiB pages). Two homes:

- `MappedFile`: a checkpoint shard mapped whole (privately: a write copies, the file never
  changes) at a 2 MiB boundary and advised MADV_HUGEPAGE, so the page cache reads it in 2 MiB
  folios that map as single 2 MiB pages; the weights stay shared with the page cache (no copy, a
  second load finds them in RAM). `populate` faults a tensor's pages in at load; `in_huge_pages`
  says whether they did map as 2 MiB pages. They do not where the page cache already held the
  file in 4 KiB pages (read earlier without the advice) or found no free 2 MiB page (a busy,
  fragmented machine: it does not compact memory for the page cache); the loader then `move`s
  the tensors into a `HostArena`, releasing the mapping's pages as it goes.
- `HostArena`: anonymous memory, 2 MiB-aligned and advised MADV_HUGEPAGE, for weights that are
  made at load rather than mapped (a concatenation, a dtype conversion, random weights) or
  moved there. A fault there compacts memory to find a 2 MiB page (THP "defrag" is "madvise"
  by default), and `collapse` (MADV_COLLAPSE, Linux 6.1) gathers whatever still came in 4 KiB
  pages; the kernel cannot do that for a mapped ext4 file (CONFIG_READ_ONLY_THP_FOR_FS).

Linux backs both with transparent huge pages when /sys/kernel/mm/transparent_hugepage/enabled
is "madvise" or "always"; elsewhere they are ordinary pages, the same bytes.
`huge_page_bytes()` says how much of this process's memory is in 2 MiB pages.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import weakref
from pathlib import Path

import torch

HUGE_PAGE = 2 * 1024 * 1024
PAGE = mmap.PAGESIZE
ALIGN = 64  # a cache line: every tensor starts on one
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux 5.14
MADV_COLLAPSE = getattr(mmap, "MADV_COLLAPSE", 25)  # Linux 6.1
SETTLED = 0.95  # the share of a file's populated bytes in 2 MiB pages that it may stay mapped with
MOVE_CHUNK = 64 * 1024 * 1024  # bytes `move` copies before it releases their mapped pages

_mapped: weakref.WeakSet[MappedFile] = weakref.WeakSet()


class MappedFile:
    """One file mapped whole, copy-on-write, advised MADV_HUGEPAGE."""

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        self.bytes = torch.frombuffer(self._map, dtype=torch.uint8)  # the whole file
        if hasattr(mmap, "MADV_HUGEPAGE"):
            self._map.madvise(mmap.MADV_HUGEPAGE)
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

    def populate(self, offset: int, length: int) -> None:
        """Fault the pages of [offset, offset + length) in now (from the page cache, or the
        disk), rather than at the first decode step."""
        start = offset - offset % PAGE
        try:
            self._map.madvise(MADV_POPULATE_READ, start, offset + length - start)
        except OSError:  # a kernel before 5.14: read a byte of every page
            self.bytes[start : offset + length : PAGE].sum()

    def prefetch(self, offset: int, length: int) -> None:
        """Read [offset, offset + length) into the page cache ahead of use, mapping nothing."""
        if hasattr(os, "posix_fadvise"):
            with open(self.path, "rb") as f:
                os.posix_fadvise(f.fileno(), offset, length, os.POSIX_FADV_WILLNEED)

    def huge_share(self) -> float:
        """The share of this mapping's resident bytes mapped as 2 MiB pages."""
        fields = _vma_fields(self.bytes.data_ptr())
        rss = _kib(fields.get("Rss"))
        return _kib(fields.get("FilePmdMapped")) / rss if rss else 1.0

    def in_huge_pages(self) -> bool:
        """Whether (nearly) all the pages populated so far are mapped as 2 MiB pages."""
        return self.huge_share() >= SETTLED

    def move(self, offset: int, tensor: torch.Tensor, out: torch.Tensor) -> None:
        """Copy `tensor`, whose bytes start at `offset` in this file, into `out`, a chunk at a
        time, each chunk's mapped pages released once copied (so the resident bytes stay flat;
        the mapping is never written, so a page read again comes back from the file)."""
        source, target = tensor.view(-1).view(torch.uint8), out.view(-1).view(torch.uint8)
        for begin in range(0, source.numel(), MOVE_CHUNK):
            end = min(begin + MOVE_CHUNK, source.numel())
            target[begin:end].copy_(source[begin:end])
            first = (offset + begin) // PAGE * PAGE
            self._map.madvise(mmap.MADV_DONTNEED, first, -(-(offset + end) // PAGE) * PAGE - first)


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

    def collapse(self) -> None:
        """Gather the arena's pages that came in 4 KiB into 2 MiB pages where the kernel can
        (MADV_COLLAPSE: synchronous, compacting memory); where it cannot, they stay as they are."""
        size = -(-(self._end - self._start) // HUGE_PAGE) * HUGE_PAGE
        # before Linux 6.1, without THP, or with no 2 MiB page to be had: small pages stay
        with contextlib.suppress(OSError):
            self._map.madvise(MADV_COLLAPSE, self._start, size)


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


def _vma_fields(address: int) -> dict[str, str]:
    """The /proc/self/smaps fields of the mapping that holds `address` (empty if unknown)."""
    try:
        text = Path("/proc/self/smaps").read_text()
    except OSError:
        return {}
    fields, inside = {}, False
    for line in text.splitlines():
        head = line.split()[0] if line else ""
        if "-" in head and ":" not in head:
            start, end = (int(a, 16) for a in head.split("-"))
            if inside:
                break
            inside = start <= address < end
        elif inside:
            name, _, value = line.partition(":")
            fields[name] = value.strip()
    return fields
