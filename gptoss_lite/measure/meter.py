"""Memory readings per phase of a run (load, prefill, decode), on CUDA or on the CPU.

A `Reading` holds, in bytes: `allocated` (tensors at the end of the phase), `peak` (tensors at
their highest during it), `resident` and `resident_peak` (what the process holds from the system).
CUDA (`CudaMeter`): the caching allocator's counters, memory_allocated / max_memory_allocated and
memory_reserved / max_memory_reserved, with the peaks reset when a phase begins; `cap_memory`
caps the allocator with set_per_process_memory_fraction so a small card can be imitated.
CPU (`CpuMeter`): there is no allocator counter, so `allocated` is the bytes of the tensors the
meter was told to `hold` (the model's and the cache's) plus those that ops have created since and
that are still alive, and `peak` the highest such sum. A TorchDispatchMode sees each op's outputs
and notices through storage weak references when they are freed, so it counts at op granularity
(an op's internal scratch is not seen; nor is anything before `hold`, hence no tensor peak for the
load). `resident` is VmRSS and `resident_peak` VmHWM, reset at each phase by writing 5 to
/proc/self/clear_refs (Linux); where that fails the peak is ru_maxrss, the process's lifetime peak,
and `CpuMeter.peak_resets` is False. `peak_memory` is one number for a whole run: the allocator's
high-water mark on CUDA, the process's peak resident set size on CPU.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


@dataclass
class Reading:
    """Memory at the end of one phase, and its highest point during the phase (bytes)."""

    allocated: int = 0
    peak: int | None = None  # None: not measured (CPU tensors during the load)
    resident: int | None = None  # CUDA: reserved by the allocator; CPU: RSS
    resident_peak: int | None = None


class CudaMeter:
    """Readings from the CUDA caching allocator of one device."""

    def __init__(self, device: torch.device):
        self.device = device
        self.allocated_means = "torch.cuda.memory_allocated / max_memory_allocated"
        self.resident_means = "torch.cuda.memory_reserved / max_memory_reserved"

    def hold(self, tensors: Iterable[torch.Tensor]) -> None:
        """Nothing to do: the allocator already counts every tensor on the device."""

    @contextmanager
    def phase(self) -> Iterator[Reading]:
        """A reading filled in when the block ends (also when it raises, e.g. out of memory)."""
        reading = Reading()
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        try:
            yield reading
        finally:
            torch.cuda.synchronize(self.device)
            reading.allocated = torch.cuda.memory_allocated(self.device)
            reading.peak = torch.cuda.max_memory_allocated(self.device)
            reading.resident = torch.cuda.memory_reserved(self.device)
            reading.resident_peak = torch.cuda.max_memory_reserved(self.device)


def cap_memory(device: torch.device, limit_bytes: int) -> float:
    """Let the caching allocator of `device` hold at most `limit_bytes`; returns the fraction."""
    total = torch.cuda.get_device_properties(device).total_memory
    fraction = min(1.0, limit_bytes / total)
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction


class CpuMeter:
    """Readings of CPU tensors (held + created by ops and still alive) and of the process's RSS."""

    def __init__(self) -> None:
        self.held = 0  # bytes of the tensors given to `hold`
        self._known: set[int] = set()  # their storages, which ops may return views of
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}  # made by ops, maybe alive
        self.peak_resets = True
        self.allocated_means = "bytes of the model's and cache's tensors + live op outputs"
        self.resident_means = "VmRSS / VmHWM reset per phase via /proc/self/clear_refs"

    def hold(self, tensors: Iterable[torch.Tensor]) -> None:
        """Count these tensors (each storage once) as allocated from now on."""
        for t in tensors:
            if t.device.type == "cpu":
                ref = StorageWeakRef(t.untyped_storage())
                if ref.cdata not in self._known:
                    self._known.add(ref.cdata)
                    self.held += t.untyped_storage().nbytes()

    @contextmanager
    def phase(self) -> Iterator[Reading]:
        """A reading filled in when the block ends; tensors are counted only once some are held."""
        reading = Reading()
        if not _reset_rss_peak():
            self.peak_resets = False
            self.resident_means = "VmRSS / ru_maxrss (lifetime peak: it cannot be reset here)"
        counting = bool(self._known)
        mode = _LiveTensors(self._known, self._live)
        try:
            if counting:
                with mode:
                    yield reading
            else:
                yield reading
        finally:
            mode.sweep()
            reading.allocated = self.held + mode.now
            reading.peak = self.held + mode.peak if counting else None
            reading.resident, reading.resident_peak = rss()


class _LiveTensors(TorchDispatchMode):
    """Bytes of the CPU storages that ops created (outside `known`) and that are still alive."""

    def __init__(self, known: set[int], live: dict[int, tuple[StorageWeakRef, int]]):
        super().__init__()
        self.known, self.live = known, live
        self.sweep()
        self.peak = self.now

    @property
    def now(self) -> int:
        return sum(n for _, n in self.live.values())

    def sweep(self) -> None:
        """Forget the storages that were freed."""
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            del self.live[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.sweep()
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                ref = StorageWeakRef(storage)
                if ref.cdata not in self.known and ref.cdata not in self.live:
                    self.live[ref.cdata] = (ref, storage.nbytes())
        self.peak = max(self.peak, self.now)
        return out


Meter = CpuMeter | CudaMeter


def peak_memory(device: torch.device) -> tuple[int, str] | None:
    """(peak bytes, what they measure) for this process on `device`, or None if unknown."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "CUDA max allocated"
    peak = max_rss()
    return None if peak is None else (peak, "peak RSS")


def _reset_rss_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def rss() -> tuple[int | None, int | None]:
    """(current RSS, peak RSS) of this process in bytes."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None, max_rss()
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    kib = {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM") if k in fields}
    return kib.get("VmRSS"), kib.get("VmHWM")


def max_rss() -> int | None:
    """The peak resident set size of this process over its lifetime, in bytes (None on Windows)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere
