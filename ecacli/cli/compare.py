"""`ecacli compare`: several specs side by side, as a table, JSON, CSV, Markdown or a plot."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ecacli.cli.common import JsonOption, SetOption, console, load_spec_arg, print_json
from ecacli.errors import UserError


def compare(
    specs: Annotated[list[str], typer.Argument(help="Spec files or preset names; deltas are against the first.", show_default=False)],
    input_size: Annotated[int | None, typer.Option(min=8, max=2048, help="Square input side for mult-adds [default: each spec's].", show_default=False)] = None,
    batch: Annotated[int, typer.Option(min=1, max=65536, help="Batch size for mult-adds.")] = 1,
    overrides: SetOption = None,
    as_json: JsonOption = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV.")] = False,
    as_markdown: Annotated[bool, typer.Option("--markdown", help="Print a Markdown table.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Write a params vs reported top-1 PNG here (needs the `plot` extra).", show_default=False)] = None,
) -> None:
    """Compare specs: params, Δ params, attention params, mult-adds, reported top-1 (labelled reported)."""
    if sum([as_json, as_csv, as_markdown]) > 1:
        raise UserError("choose one of --json, --csv and --markdown.")
    loaded = [load_spec_arg(s, overrides) for s in specs]
    from ecacli.reports.compare import TABLE_COLUMNS, compare_specs, table_cells, to_csv, to_markdown

    rows = compare_specs(loaded, batch, input_size)
    if plot is not None:
        from ecacli.reports.plot import plot_params_vs

        plotted = plot_params_vs(rows, "top1", plot)
        typer.echo(f"wrote {plot} ({plotted} of {len(rows)} specs had a reported top-1)", err=True)
    if as_json:
        print_json([row.to_dict() for row in rows])
    elif as_csv:
        typer.echo(to_csv(rows), nl=False)
    elif as_markdown:
        typer.echo(to_markdown(rows), nl=False)
    else:
        from rich.table import Table

        table = Table(title=f"{len(rows)} specs, deltas against {rows[0].name}", caption="reported = figures the spec's `reported:` block cites, not measured")
        for i, name in enumerate(TABLE_COLUMNS):
            table.add_column(name, justify="left" if i < 2 else "right", no_wrap=True)
        for row in rows:
            table.add_row(*table_cells(row))
        console().print(table)
