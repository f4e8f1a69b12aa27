"""Byte units and how sizes are printed, in one place for every table, line and message.

Memory is counted in binary units (MiB, GiB: what allocators and profiles use); bandwidth and
the bytes a token reads in decimal GB, as benchmarks quote them.
"""

from __future__ import annotations

MIB = 1 << 20
GIB = 1 << 30
GB = 10**9


def format_bytes(n: int | None) -> str:
    """`n` bytes as "1.23 GiB" from one GiB up, else "45.6 MiB"; "n/a" when unknown."""
    if n is None:
        return "n/a"
    return f"{n / GIB:.2f} GiB" if abs(n) >= GIB else f"{n / MIB:.1f} MiB"


def mib(n: int | None, digits: int = 2) -> str:
    """`n` bytes in MiB with thousands separators, for table cells; "n/a" when unknown."""
    return "n/a" if n is None else f"{n / MIB:,.{digits}f}"
