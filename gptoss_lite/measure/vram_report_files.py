"""Writing a `MemoryReport`: report.md for people, report.json for scripts, report.png (chart).

The three are written into a fresh folder beside `--out` and swapped in whole
(`outputs.replacing`), so an earlier report is either kept or fully replaced.

The markdown opens with the verdict line, then the plan-vs-measured table per category (MiB and
the difference in %), the phases (time, tokens/s, tensors allocated and at peak, resident memory)
and how each figure was measured. The PNG needs matplotlib (`pip install gptoss-lite[report]`);
without it the other two files are written and the markdown says the chart was skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..outputs import replacing
from ..units import mib
from .vram_report import MemoryReport, Row
from .vram_report_chart import draw_chart

REPORT_FILES = ("report.md", "report.json", "report.png")
PNG_SKIPPED = "chart skipped: matplotlib is not installed (pip install gptoss-lite[report])"


def write_report(report: MemoryReport, out_dir: str | Path) -> list[Path]:
    """Write report.json, report.png (when matplotlib is there) and report.md into `out_dir`,
    replacing an earlier report there whole; returns the files written."""
    out = Path(out_dir)
    with replacing(out, REPORT_FILES) as new:
        md_path, json_path, png_path = (new / name for name in REPORT_FILES)
        json_path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        drew = draw_chart(report, png_path)
        md_path.write_text(render_markdown(report, png_path.name if drew else None))
    return [out / name for name in REPORT_FILES if drew or name != "report.png"]


def render_markdown(report: MemoryReport, chart: str | None = None) -> str:
    """The report as markdown; `chart` is the PNG's file name, None when it was skipped."""
    p = report.plan
    cap = f", allocator capped at {mib(report.cap_bytes)} MiB" if report.cap_bytes else ""
    lines = [
        f"# Memory profile: {report.model} on {report.device}",
        "",
        f"**{report.verdict()[1]}**",
        "",
        f"Profile `{p.profile}` (budget {mib(report.budget_bytes)} MiB, reserve "
        f"{mib(p.reserve_bytes)} MiB{cap}); context {p.context:,} tokens, prefill chunk "
        f"{p.prefill_chunk}; {report.kernels} kernels; prompt {report.prompt_tokens} random "
        f"tokens, {report.gen_tokens} decoded greedily.",
        "",
        "## Plan vs measured",
        "",
        *comparison_table(report.rows()),
        "",
        "## Phases",
        "",
        *phase_table(report),
        "",
        "## How it was measured",
        "",
        *_method(report),
        "",
        f"![memory chart]({chart})" if chart else PNG_SKIPPED,
    ]
    return "\n".join(lines) + "\n"


def comparison_table(rows: list[Row]) -> list[str]:
    """Markdown rows: category, plan MiB, measured MiB, difference in %."""
    out = ["| | plan MiB | measured MiB | diff |", "|---|---:|---:|---:|"]
    for r in rows:
        diff = "n/a" if r.diff_pct is None else f"{r.diff_pct:+.2f}%"
        out.append(f"| {r.name} | {mib(r.plan)} | {mib(r.measured)} | {diff} |")
    return out


def phase_table(report: MemoryReport) -> list[str]:
    """Markdown rows: each phase's time and memory (MiB)."""
    res = report.resident_label
    out = [
        f"| phase | s | tokens/s | tensors at start | at end | peak | {res} | {res} peak | error |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for ph in report.phases:
        d = ph.to_dict()
        rate = "" if d["tokens_per_s"] is None else f"{d['tokens_per_s']:.2f}"
        memory = [mib(d[k]) for k in ("start", "allocated", "peak", "resident", "resident_peak")]
        cells = [ph.name, f"{ph.seconds:.1f}", rate, *memory, ph.error or ""]
        out.append("| " + " | ".join(cells) + " |")
    return out


def _method(report: MemoryReport) -> list[str]:
    how = report.measured_with
    return [
        f"- tensors: {how.get('allocated', '')}; weights per category from the loaded "
        "parameters, KV cache from its tensors; activations = phase peak − tensors at its start",
        f"- {report.resident_label}: {how.get('resident', '')}",
        "- plan: `gptoss_lite.memory.plan` for this config, profile and context "
        "(weights and KV exact, activations an upper bound for one prefill chunk)",
    ]
