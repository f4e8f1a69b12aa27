"""The PNG of the VRAM report: plan vs measured per category, and memory over the phases.

Left: paired bars (plan, measured) for each weight category, the KV cache and the activations,
on a log scale in MiB (the categories span six orders of magnitude), each pair labelled with its
difference in %. Right: the tensor peak of each phase stacked as weights, KV cache and the rest,
and the resident peak (CUDA reserved or RSS), against the planned tensors and the budget.
Drawn on matplotlib's Agg canvas directly, so it never changes the backend of a pyplot session.
"""

from __future__ import annotations

from pathlib import Path

from ..units import GIB, MIB
from .vram_report import MemoryReport


def draw_chart(report: MemoryReport, path: Path) -> bool:
    """Write the chart to `path`; False (nothing written) when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    fig = Figure(figsize=(13, 5), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, width_ratios=(3, 2))
    _categories(left, report)
    _phases(right, report)
    held = "plan held" if report.verdict()[0] else "plan NOT held"
    fig.suptitle(f"{report.model} on {report.device}: {held}")
    fig.savefig(path, dpi=110)
    return True


def _categories(ax, report: MemoryReport) -> None:
    totals = report.total_rows()
    rows = [*report.weight_rows(), totals["kv"], totals["activations"]]
    x = range(len(rows))
    plan = [r.plan / MIB for r in rows]
    measured = [(r.measured or 0) / MIB for r in rows]
    ax.bar([i - 0.2 for i in x], plan, 0.4, label="plan", color="#9ab")
    ax.bar([i + 0.2 for i in x], measured, 0.4, label="measured", color="#d62")
    for i, r in zip(x, rows, strict=True):
        if r.diff_pct is not None:
            top = max(plan[i], measured[i])
            ax.annotate(f"{r.diff_pct:+.1f}%", (i, top), ha="center", va="bottom", fontsize=8)
    ax.set_yscale("log")
    ax.set_xticks(list(x), [r.name for r in rows], rotation=30, ha="right")
    ax.set_ylabel("MiB (log scale)")
    ax.set_title("plan vs measured per category")
    ax.legend()


def _phases(ax, report: MemoryReport) -> None:
    """Per phase, the tensor peak as weights + KV cache + the rest (activations), and the
    resident peak, against the planned tensors and the budget."""
    names = [p.name for p in report.phases]
    weights = sum(report.weights.values()) / GIB
    cache = report.cache_bytes / GIB
    rest = [(p.reading.peak or p.reading.allocated) / GIB - weights - cache for p in report.phases]
    ax.bar(names, [weights] * len(names), 0.5, label="weights", color="#9ab")
    ax.bar(names, [cache] * len(names), 0.5, bottom=weights, label="KV cache", color="#6a6")
    ax.bar(names, rest, 0.5, bottom=weights + cache, label="activations, other", color="#d62")
    resident = [p.reading.resident_peak for p in report.phases]
    if all(resident):
        ax.plot(names, [r / GIB for r in resident], "kD", label=f"{report.resident_label} peak")
    ax.axhline(report.total_rows()["tensors"].plan / GIB, color="gray", ls=":", label="planned")
    ax.axhline(report.budget_bytes / GIB, color="black", ls="--", label="budget")
    ax.set_ylabel("GiB")
    ax.set_title("tensor peak per phase")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
