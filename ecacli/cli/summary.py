"""`ecacli summary`: layers, shapes, parameters, mult-adds and ECA kernel sizes of a spec's model."""

from __future__ import annotations

from typing import Annotated

import typer

from ecacli.cli.common import JsonOption, SetOption, SpecArgument, TableSpec, console, fmt_bytes, fmt_int, load_spec_arg, print_json, print_table
from ecacli.errors import UserError
from ecacli.spec import MAX_BATCH, check_input_size


def summary(
    spec: SpecArgument,
    depth: Annotated[int, typer.Option(metavar="N", min=0, max=10, help="Levels: 1 stages, 2 blocks, 3 layers (default).", show_default=False)] = 3,
    input_size: Annotated[int | None, typer.Option(metavar="PX", help="Input side in pixels (default: the spec's).", show_default=False)] = None,
    batch: Annotated[int, typer.Option(metavar="N", min=1, max=MAX_BATCH, help="Batch of the input.")] = 1,
    use_torchinfo: Annotated[bool, typer.Option("--torchinfo", help="Print torchinfo's own table instead.")] = False,
    features: Annotated[bool, typer.Option("--features", help="Show the feature levels a backbone returns.")] = False,
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a spec's layers, shapes, parameters, mult-adds and ECA k.

    Counted from the architecture without torch (no weights or activations exist);
    --torchinfo runs torchinfo itself on the meta device instead.
    """
    if input_size is not None:
        check_input_size(input_size)
    model_spec = load_spec_arg(spec, overrides)
    from ecacli.reports.summary import summarize, torchinfo_table

    if use_torchinfo and as_json:
        raise UserError("--torchinfo prints torchinfo's text table; for JSON drop --torchinfo (the numbers are the same).")
    if features and use_torchinfo:
        raise UserError("--features shows the feature levels, --torchinfo torchinfo's table of layers: choose one.")
    if features:
        from ecacli.reports.summary import feature_rows

        rows = feature_rows(model_spec, batch, input_size)
        if as_json:
            print_json([vars(row) for row in rows])
            return
        _render_features(rows, model_spec, input_size)
        return
    if use_torchinfo:
        typer.echo(torchinfo_table(model_spec, batch, input_size, depth))
        return
    report = summarize(model_spec, batch, input_size, depth)
    if as_json:
        print_json(report.to_dict())
        return
    from ecacli.spec_loader import with_overrides

    _render(report, with_overrides(model_spec.name, overrides or []))


def _runs(values: list[int]) -> str:
    """Compact 'k x count' runs: [5, 5, 5, 7] -> '5 x3, 7 x1'."""
    runs: list[list[int]] = []
    for value in values:
        if runs and runs[-1][0] == value:
            runs[-1][1] += 1
        else:
            runs.append([value, 1])
    return ", ".join(f"{value} x{count}" for value, count in runs)


def short_type(name: str) -> str:
    """A module type without the words a narrow table can spare: AdaptiveAvgPool2d -> AvgPool, EcaModule -> Eca."""
    name = name.removeprefix("Adaptive").removesuffix("Module")
    return name[:-2] if name.endswith(("1d", "2d", "3d")) else name


def _render(report, title: str) -> None:
    from rich.panel import Panel

    def rows(indent: bool, types) -> list[list[str]]:
        return [
            [
                ("  " * (row.depth - 1) if indent else "") + row.name,
                types(row.type),
                "x".join(map(str, row.output_shape)),
                fmt_int(row.params) if row.params else "-",
                fmt_int(row.mult_adds) if row.mult_adds else "-",
                ",".join(map(str, row.eca_k)),
            ]
            for row in report.layers
        ]

    caption = f"{title}  input {list(report.input_size)}"
    numeric = [False, False, True, True, True, True]
    wide = TableSpec(caption, ["Module", "Type", "Output shape", "Params", "Mult-adds", "ECA k"], rows(True, str), numeric)
    narrow = TableSpec(caption, ["Module", "Type", "Output", "Params", "Mult-adds", "k"], rows(False, short_type), numeric)
    kernels = _runs(report.eca_kernel_sizes)
    totals = "\n".join(
        [
            f"Total params:        {fmt_int(report.total_params)}",
            f"Trainable params:    {fmt_int(report.trainable_params)}",
            f"Mult-adds:           {fmt_int(report.mult_adds)} ({report.mult_adds / 1e9:,.2f} G)",
            f"Input:               {list(report.input_size)} ({fmt_bytes(report.input_bytes)})",
            f"Parameter memory:    {fmt_bytes(report.param_bytes)}",
            f"Activation memory:   {fmt_bytes(report.activation_bytes)} (fwd + bwd, torchinfo's estimate)",
            f"Attention:           {report.attention_type}, {fmt_int(report.attention_params)} params ({report.attention_params / report.total_params:.5%} of all)",
            *([f"ECA k per block:     {kernels}"] if kernels else []),
        ]
    )
    out = console()
    if report.layers:
        print_table(out, wide, narrow)
    out.print(Panel(totals, title=f"{title} totals", expand=False))


def _render_features(rows, spec, input_size: int | None) -> None:
    side = input_size or spec.input_size
    cells = [[str(r.index), r.module, fmt_int(r.channels), str(r.stride), "x".join(map(str, r.output_shape))] for r in rows]
    title = f"{spec.name}: feature levels at {side} px"
    numeric = [True, False, True, True, True]
    print_table(console(), TableSpec(title, ["index", "module", "channels", "stride", "output shape"], cells, numeric))
