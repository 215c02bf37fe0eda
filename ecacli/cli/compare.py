"""`ecacli compare`: several specs side by side, as a table, JSON, CSV, Markdown or a plot."""

from __future__ import annotations

from typing import Annotated

import typer

from ecacli.cli.common import JsonOption, SetOption, console, load_spec_arg, print_json
from ecacli.errors import UserError
from ecacli.spec import check_input_size


def compare(
    specs: Annotated[list[str], typer.Argument(help="Spec files or preset names; deltas are against the first.", show_default=False)],
    input_size: Annotated[int | None, typer.Option(help="Square input side in pixels (default: each spec's).", show_default=False)] = None,
    batch: Annotated[int, typer.Option(min=1, max=65536, help="Batch size for mult-adds and, with --time, for the timed steps.")] = 1,
    time: Annotated[bool, typer.Option("--time", help="Also measure forward and training-step time and peak memory, interleaved across the specs (as `ecacli profile`).")] = False,
    device: Annotated[str, typer.Option(help="With --time: cpu, cuda, cuda:N, mps, or auto.")] = "auto",
    warmup: Annotated[int, typer.Option(help="With --time: untimed steps per spec.")] = 3,
    iters: Annotated[int, typer.Option(help="With --time: timed steps per spec.")] = 10,
    threads: Annotated[int | None, typer.Option(help="With --time: CPU threads (default: torch's choice).", show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --plot file.")] = False,
    overrides: SetOption = None,
    as_json: JsonOption = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV.")] = False,
    as_markdown: Annotated[bool, typer.Option("--markdown", help="Print a Markdown table.")] = False,
    plot: Annotated[str | None, typer.Option(help="Write a PNG of params vs reported top-1 (with --time: vs measured images/s); needs the `plot` extra.", show_default=False)] = None,
) -> None:
    """Compare specs: params, Δ params, attention params, mult-adds, reported top-1 (labelled reported)."""
    if input_size is not None:
        check_input_size(input_size)
    if sum([as_json, as_csv, as_markdown]) > 1:
        raise UserError("choose one of --json, --csv and --markdown.")
    timing_options = {"--device": device != "auto", "--warmup": warmup != 3, "--iters": iters != 10, "--threads": threads is not None}
    if not time and any(timing_options.values()):
        raise UserError(f"{', '.join(k for k, v in timing_options.items() if v)} only apply to measured timings; add --time.")
    loaded = [load_spec_arg(s, overrides) for s in specs]
    if plot is not None:
        from ecacli.atomic import check_writable

        check_writable([plot], force)
    from ecacli.reports.compare import MEASURED_COLUMNS, TABLE_COLUMNS, compare_specs, measured_cells, table_cells, to_csv, to_markdown

    rows = compare_specs(loaded, batch, input_size)
    if time:
        _attach_timings(rows, loaded, batch, input_size, device, warmup, iters, threads, show_progress=not (as_json or as_csv or as_markdown))
    if plot is not None:
        from ecacli.reports.plot import plot_params_vs

        y = "images_per_s" if time else "top1"
        plotted = plot_params_vs(rows, y, plot, force)
        typer.echo(f"wrote {plot} ({plotted} of {len(rows)} specs plotted)", err=True)
    if as_json:
        print_json([row.to_dict() for row in rows])
    elif as_csv:
        typer.echo(to_csv(rows), nl=False)
    elif as_markdown:
        typer.echo(to_markdown(rows, with_measured=time), nl=False)
    else:
        from rich.table import Table

        table = Table(title=f"{len(rows)} spec{'s' if len(rows) > 1 else ''}, deltas against {rows[0].name}", caption="reported = cited in the spec's `reported:` block, not measured" + (f"; measured: {rows[0].measured['device']}, batch {rows[0].measured['batch']}, training steps interleaved" if time else ""))
        for i, name in enumerate(TABLE_COLUMNS):
            table.add_column(name, justify="left" if i < 2 else "right", no_wrap=True)
        for name in MEASURED_COLUMNS if time else ():
            table.add_column(name, justify="right", no_wrap=True)
        for row in rows:
            table.add_row(*table_cells(row), *(measured_cells(row) if time else ()))
        console().print(table)


def _attach_timings(rows, specs, batch: int, input_size: int | None, device: str, warmup: int, iters: int, threads: int | None, show_progress: bool) -> None:
    """Time every spec's training step interleaved in one process (the profile command's code) and attach the figures."""
    from ecacli.cli.common import progress_callback
    from ecacli.profiling import ProfileConfig, profile
    from ecacli.profiling.device import default_device
    from ecacli.reports.compare import measured_figures

    config = ProfileConfig(
        device=default_device() if device == "auto" else device, batch=batch, input_size=input_size, warmup=warmup, iters=iters, threads=threads
    )
    labels = [f"{i}:{spec.name}" for i, spec in enumerate(specs)]
    with progress_callback(enabled=show_progress) as progress:
        report = profile(list(zip(labels, specs)), config, progress)
    for row, label in zip(rows, labels):
        row.measured = measured_figures(report, label, labels[0])
    if report.interrupted:
        raise UserError("interrupted before every spec was timed; nothing is reported as measured from a partial run.")
