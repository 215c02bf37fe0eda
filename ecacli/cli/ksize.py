"""`ecacli ksize`: ECA kernel sizes per channel width, and per stage of a spec (no torch)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated

import typer

from ecacli.cli.common import JsonOption, SetOption, TableSpec, console, fmt_int, load_optional_spec_arg, print_json, print_table
from ecacli.errors import UserError
from ecacli.arch.attention import SeAttention
from ecacli.kernel import DEFAULT_B, DEFAULT_GAMMA, MAX_CHANNELS, kernel_intervals, kernel_run, kernel_t, table_widths

if TYPE_CHECKING:
    from ecacli.spec import NetworkSpec

DEFAULT_RANGE = (64, 2048)
SE = SeAttention(type="se", reduction=16)
"""The SE block the table prices: `attention: {type: se}` with its defaults (r=16, hidden width a multiple of 8, biases)."""
MIN_GAMMA = 0.05  # below this nearly every width gets its own k: tables of millions of runs
MAX_GAMMA = MAX_ABS_B = 64.0  # the spec's bounds


def width_row(channels: int, gamma: float, b: float) -> dict[str, int]:
    """One table row: the rule's t and k, the ECA and SE parameter counts, and the whole run of C with this k."""
    run = kernel_run(channels, gamma, b)
    return {
        "channels": channels,
        "t": kernel_t(channels, gamma, b),
        "k": run.k,
        "eca_params": run.k,
        "se_params_r16": SE.params(channels),
        "k_constant_from": run.low,
        "k_constant_to": run.high,
    }


def _check_inputs(widths: list[int], channels: tuple[int, int] | None, gamma: float, b: float) -> None:
    if not (math.isfinite(b) and abs(b) <= MAX_ABS_B):
        raise UserError(f"--b must be a finite number from -{MAX_ABS_B:g} to {MAX_ABS_B:g} (as in a spec), got {b}.")
    if not (math.isfinite(gamma) and MIN_GAMMA <= gamma <= MAX_GAMMA):
        raise UserError(f"--gamma must be a finite number of at least {MIN_GAMMA} and at most {MAX_GAMMA:g}, got {gamma}.")
    for c in [*widths, *(channels or ())]:
        if not 1 <= c <= MAX_CHANNELS:
            raise UserError(f"channel widths must be between 1 and {MAX_CHANNELS:,}, got {c}.")
    if channels and channels[0] > channels[1]:
        raise UserError(f"--channels LOW HIGH needs LOW <= HIGH, got {channels[0]} {channels[1]}.")


def ksize(
    widths: Annotated[list[int] | None, typer.Argument(metavar="C", help="Channel widths, one row each.", show_default=False)] = None,
    channels: Annotated[tuple[int, int] | None, typer.Option("--channels", metavar="LOW HIGH", help="Powers of two in between, the ends, and the runs of constant k.", show_default=False)] = None,
    gamma: Annotated[float, typer.Option(metavar="X", help="gamma of the rule.")] = DEFAULT_GAMMA,
    b: Annotated[float, typer.Option("--b", metavar="X", help="b of the rule.")] = DEFAULT_B,
    spec: Annotated[str | None, typer.Option("--spec", metavar="SPEC", help="k per stage of a spec under each width convention.", show_default=False)] = None,
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the ECA kernel size per channel width.

    k = odd(|(log2 C + b) / gamma|) per channel width C, with ECA's and SE's parameter costs.
    """
    widths = widths or []
    _check_inputs(widths, channels, gamma, b)
    if widths and channels:
        raise UserError("give widths or --channels LOW HIGH, not both.")
    if spec is not None and (widths or channels or gamma != DEFAULT_GAMMA or b != DEFAULT_B):
        raise UserError("--spec takes the widths, gamma and b from the spec; drop the widths, --channels, --gamma and --b (or change the spec with --set).")
    model_spec = load_optional_spec_arg(spec, overrides)
    if model_spec is not None:
        _spec_table(model_spec, as_json)
        return
    low, high = channels or DEFAULT_RANGE
    shown = widths or table_widths(low, high)
    rows = [width_row(c, gamma, b) for c in shown]
    intervals = [] if widths else kernel_intervals(low, high, gamma, b)
    if as_json:
        print_json(rows)
        return
    _render_rows(rows, intervals, gamma, b)


def _render_rows(rows: list[dict[str, int]], intervals: list, gamma: float, b: float) -> None:
    out = console()
    cells = [
        [fmt_int(r["channels"]), str(r["t"]), str(r["k"]), str(r["eca_params"]), fmt_int(r["se_params_r16"]),
         f"{fmt_int(r['k_constant_from'])} .. {fmt_int(r['k_constant_to'])}"]
        for r in rows
    ]
    stacked = [[*row[:5], row[5].replace(" .. ", " ..\n")] for row in cells]
    title = f"ECA kernel size per width (gamma={gamma:g}, b={b:g})"
    numeric = [True] * 6
    print_table(
        out,
        TableSpec(title, ["C", "t", "k", "ECA params", "SE params (r=16)", "k constant for C in"], cells, numeric),
        TableSpec(title, ["C", "t", "k", "ECA\nparams", "SE params\n(r=16)", "k constant\nfor C in"], stacked, numeric),
    )
    out.print(f"SE params: one SE block as `attention: {{type: se}}` builds it (r={SE.reduction}, hidden width a multiple of {SE.divisor}, both biases), as compare counts it.")
    if intervals:
        runs = [[fmt_int(i.low), fmt_int(i.high), str(i.k)] for i in intervals]
        print_table(out, TableSpec("Exact runs of C with constant k", ["C from", "C to", "k"], runs, [True] * 3))


def describe_attention(spec: NetworkSpec) -> str:
    """The attention settings in words: 'eca, k_size adaptive (gamma 2, b 1, on output width)'."""
    attention = spec.attention
    if not attention.has_kernel:
        return attention.type
    k = attention.k_size
    if k == "adaptive":
        return f"{attention.type}, k_size adaptive (gamma {attention.gamma:g}, b {attention.b:g}, on the {attention.adaptive_on} width)"
    return f"{attention.type}, k_size {k if isinstance(k, int) else ', '.join(map(str, k))}"


def _spec_table(spec: NetworkSpec, as_json: bool) -> None:
    if spec.attaches:
        _points_table(spec, as_json)
        return
    rows = [{"channels": r["output"], "k": r["k_spec"], **r} for r in spec.kernel_conventions()]
    if as_json:
        print_json(rows)
        return
    noun, inner = spec.group_noun, spec.inner_noun
    key = noun.split()[-1]
    cells = [
        [str(r[key]), str(r["blocks"]), fmt_int(r["planes"]), fmt_int(r["output"]), str(r["k_output"]), str(r["k_planes"]), "-" if r["k_spec"] is None else str(r["k_spec"])]
        for r in rows
    ]
    title = f"{spec.name}: ECA k per {noun} under each width convention"
    caption = f"this spec's attention: {describe_attention(spec)}"
    numeric = [True] * 7
    out = console()
    print_table(
        out,
        TableSpec(title, [key, "blocks", inner, "output width", "k (output width)", f"k ({inner})", "k (this spec)"], cells, numeric, caption),
        TableSpec(title, [key, "blocks", inner, "output\nwidth", "k (output\nwidth)", f"k\n({inner})", "k (this\nspec)"], cells, numeric, caption),
    )
    out.print(
        f"A checkpoint loads only when every {noun}'s k matches: output width is timm's and the write-up's "
        f"convention, {inner} is what readers of the paper compute, and the paper's releases use explicit k "
        "(r50_k3557, r101_k3357, r152_k3357, eca_mobilenetv2_k13).",
    )


def _points_table(spec: NetworkSpec, as_json: bool) -> None:
    """A base spec's insertion points, found on its base built on the meta device: module, attention, channels and k."""
    if spec.attention.after is None and spec.attention.replace is None:
        raise UserError(f"spec '{spec.name}' attaches no attention to {spec.base}; give attention.after or attention.replace (--set attention.after='layer*.*.bn3').")  # type: ignore[attr-defined]
    from ecacli.models.base import base_insertion_points

    points = base_insertion_points(spec)  # type: ignore[arg-type]
    rows = [{"module": p.name, "attention": p.attention, "channels": p.channels, "k": p.k} for p in points]
    if as_json:
        print_json(rows)
        return
    cells = [[r["module"], r["attention"], fmt_int(r["channels"]), "-" if r["k"] is None else str(r["k"])] for r in rows]
    title = f"{spec.name}: ECA k at each of {len(rows)} insertion points"
    caption = f"{spec.layout_text()}; {describe_attention(spec)}"
    print_table(console(), TableSpec(title, ["module", "attention", "channels", "k"], cells, [False, False, True, True], caption))
