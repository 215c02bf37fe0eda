"""Side-by-side comparison of specs: parameters, attention cost, mult-adds, reported accuracy (torch-free).

The static numbers come from the same torch-free accounting as `ecacli summary`; mult-adds are
per image (one image at the input size). Measured timings, when asked for, are attached by the
caller from `ecacli.profiling`.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass
from typing import Any

from ecacli.reports.summary import summarize
from ecacli.spec import NetworkSpec


@dataclass
class CompareRow:
    """One spec's line in the comparison; deltas are against the first spec."""

    name: str
    attention: str
    total_params: int
    delta_params: int
    delta_params_pct: float
    attention_params: int
    mult_adds_per_image: int
    delta_mult_adds_pct: float
    param_bytes: int
    reported: dict[str, Any] | None
    measured: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_specs(specs: list[NetworkSpec], input_size: int | None = None) -> list[CompareRow]:
    """Static comparison rows, one per spec, in the order given; mult-adds per image at `input_size` (default: each spec's)."""
    reports = [summarize(spec, 1, input_size, depth=0) for spec in specs]
    base = reports[0]
    return [
        CompareRow(
            name=spec.name,
            attention=spec.attention.type,
            total_params=r.total_params,
            delta_params=r.total_params - base.total_params,
            delta_params_pct=100 * (r.total_params - base.total_params) / base.total_params,
            attention_params=r.attention_params,
            mult_adds_per_image=r.mult_adds,
            delta_mult_adds_pct=100 * (r.mult_adds - base.mult_adds) / base.mult_adds,
            param_bytes=r.param_bytes,
            reported=spec.reported.model_dump(exclude_none=True) if spec.reported else None,
        )
        for spec, r in zip(specs, reports)
    ]


TABLE_COLUMNS = ["name", "attention", "params", "Δ params", "Δ %", "attn params", "GMACs/img", "Δ MACs %", "top-1 (reported)"]
NUMERIC_COLUMNS = [False, False, True, True, True, True, True, True, True]
STACKED_COLUMNS = ["name", "attn", "params\nΔ params", "Δ params\n%", "attn\nparams", "GMACs/img\nΔ MACs %", "top-1\n(reported)"]
STACKED_NUMERIC = [False, False, True, True, True, True, True]


def table_cells(row: CompareRow) -> list[str]:
    """The row as display strings, in TABLE_COLUMNS order (reported figures marked as such)."""
    top1 = row.reported.get("top1") if row.reported else None
    return [
        row.name,
        row.attention,
        f"{row.total_params:,}",
        f"{row.delta_params:+,}",
        f"{row.delta_params_pct:+.4f}",
        f"{row.attention_params:,}",
        f"{row.mult_adds_per_image / 1e9:.3f}",
        f"{row.delta_mult_adds_pct:+.4f}",
        f"{top1:.2f}" if top1 is not None else "-",
    ]


def stacked_cells(row: CompareRow) -> list[str]:
    """`table_cells` in STACKED_COLUMNS order: each delta below its figure, for narrow screens."""
    name, attention, params, delta, delta_pct, attention_params, gmacs, delta_macs, top1 = table_cells(row)
    return [name, attention, f"{params}\n{delta}", delta_pct, attention_params, f"{gmacs}\n{delta_macs}", top1]


MEASURED_COLUMNS = ["fwd ms", "step ms", "step / first (p10-p90)", "img/s", "peak MB"]
NARROW_MEASURED_COLUMNS = ["fwd\nms", "step\nms", "step /\nfirst", "img/s", "peak\nMB"]


IMPRECISE_MARK = "?"
"""Marks a step ratio the precision rule does not trust (`ecacli.profiling.precision`)."""


def imprecise_note(rows: list[CompareRow]) -> str | None:
    """What the marked ratios lack and what to change, or None when every ratio is precise enough."""
    flagged = [r for r in rows if (r.measured or {}).get("precision") and not r.measured["precision"]["trusted"]]
    if not flagged:
        return None
    problems = "; ".join(f"{r.name}: {', '.join(r.measured['precision']['problems'])}" for r in flagged)
    advice = max((r.measured["precision"]["advice"] for r in flagged), key=len)
    return f"{IMPRECISE_MARK} not precise ({problems}). {advice}"


def measured_figures(report: Any, label: str, first_label: str) -> dict[str, Any]:
    """The figures compare shows from a `ecacli.profiling.ProfileReport`: medians, throughput, peak memory, step ratio to the first spec."""
    model = report.model(label)
    ratio = report.ratio(label, first_label)
    precision = report.precision(label, first_label).get("ratio") if label != first_label else None
    return {
        "device": report.header.get("device"),
        "batch": model.input_shape[0],
        "forward_ms": model.forward_ms.median if model.forward_ms else None,
        "step_ms": model.step_ms.median if model.step_ms else None,
        "step_ratio_to_first": ratio.median if ratio else None,
        "step_ratio_p10": ratio.p10 if ratio else None,
        "step_ratio_p90": ratio.p90 if ratio else None,
        "precision": precision.to_dict() if precision else None,
        "images_per_s": model.images_per_s,
        "peak_memory_bytes": model.peak_memory_bytes,
    }


def measured_cells(row: CompareRow, stacked: bool = False) -> list[str]:
    """The measured figures as display strings, in MEASURED_COLUMNS order; `stacked` puts the ratio's p10-p90 on a line of its own."""
    m = row.measured or {}

    def number(key: str, fmt: str) -> str:
        return format(m[key], fmt) if m.get(key) is not None else "-"

    ratio = "-"
    if m.get("step_ratio_to_first") is not None:
        spread = f"({m['step_ratio_p10']:.3f}-{m['step_ratio_p90']:.3f})"
        flag = IMPRECISE_MARK if m.get("precision") and not m["precision"]["trusted"] else ""
        ratio = f"{m['step_ratio_to_first']:.3f}{flag}{chr(10) if stacked else ' '}{spread}"
    memory = f"{m['peak_memory_bytes'] / 1e6:,.1f}" if m.get("peak_memory_bytes") is not None else "-"
    return [number("forward_ms", ".1f"), number("step_ms", ".1f"), ratio, number("images_per_s", ",.1f"), memory]


def to_csv(rows: list[CompareRow]) -> str:
    """Flat CSV with raw numbers (no thousands separators), one line per spec."""
    fields = ["name", "attention", "total_params", "delta_params", "delta_params_pct", "attention_params", "mult_adds_per_image", "delta_mult_adds_pct", "param_bytes", "reported_top1", "reported_top5", "reported_source"]
    measured_keys = sorted({k for r in rows if r.measured for k in r.measured})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(fields + [f"measured_{k}" for k in measured_keys])
    for r in rows:
        reported = r.reported or {}
        base = [r.name, r.attention, r.total_params, r.delta_params, f"{r.delta_params_pct:.4f}", r.attention_params, r.mult_adds_per_image, f"{r.delta_mult_adds_pct:.4f}", r.param_bytes, reported.get("top1", ""), reported.get("top5", ""), reported.get("source", "")]
        writer.writerow(base + [(r.measured or {}).get(k, "") for k in measured_keys])
    return buffer.getvalue()


def to_markdown(rows: list[CompareRow], with_measured: bool = False) -> str:
    """A GitHub-flavoured Markdown table, for papers and READMEs."""
    headers = TABLE_COLUMNS + (MEASURED_COLUMNS if with_measured else [])
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        cells = table_cells(row) + (measured_cells(row) if with_measured else [])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
