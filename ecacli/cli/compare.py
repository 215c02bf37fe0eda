"""`ecacli compare`: several specs side by side, as a table, JSON, CSV, Markdown or a plot."""

from __future__ import annotations

from typing import Annotated

import typer

from ecacli.cli.common import JsonOption, SetOption, TableSpec, console, load_spec_arg, only_with, output_path, print_json, print_table
from ecacli.errors import Interrupted, UserError
from ecacli.spec import check_input_size


def compare(
    specs: Annotated[list[str], typer.Argument(metavar="SPEC", help="Spec files or presets; deltas are against the first.", show_default=False)],
    input_size: Annotated[int | None, typer.Option(metavar="PX", help="Input side in pixels (default: each spec's).", show_default=False)] = None,
    time: Annotated[bool, typer.Option("--time", help="Also time training steps: each spec interleaved with the first, one pair at a time (as profile).")] = False,
    batch: Annotated[int, typer.Option(metavar="N", help="With --time: images per step.")] = 1,
    device: Annotated[str, typer.Option(metavar="DEVICE", help="With --time: cpu, cuda[:N], mps or auto.")] = "auto",
    warmup: Annotated[int, typer.Option(metavar="N", help="With --time: untimed steps per spec.")] = 3,
    iters: Annotated[int, typer.Option(metavar="N", help="With --time: timed steps per spec.")] = 10,
    threads: Annotated[int | None, typer.Option(metavar="N", help="With --time: CPU threads (default: torch's).", show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --plot file.")] = False,
    overrides: SetOption = None,
    as_json: JsonOption = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV.")] = False,
    as_markdown: Annotated[bool, typer.Option("--markdown", help="Print a Markdown table.")] = False,
    plot: Annotated[str | None, typer.Option(metavar="PATH", help="Write a PNG of params vs top-1 (--time: vs images/s).", show_default=False)] = None,
) -> None:
    """Compare specs side by side.

    Params, Δ params, attention params, mult-adds per image and reported top-1 (cited in the
    spec, not measured); with --time, measured step times and their ratio to the first spec.
    """
    if input_size is not None:
        check_input_size(input_size)
    if sum([as_json, as_csv, as_markdown]) > 1:
        raise UserError("choose one of --json, --csv and --markdown.")
    timing_options = {"--batch": batch != 1, "--device": device != "auto", "--warmup": warmup != 3, "--iters": iters != 10, "--threads": threads is not None}
    if not time and any(timing_options.values()):
        raise UserError(f"{only_with([k for k, v in timing_options.items() if v], 'measured timings')}; add --time.")
    plot_path = output_path(plot, "--plot", "params.png") if plot is not None else None
    loaded = [load_spec_arg(s, overrides) for s in specs]
    if plot_path is not None:
        from ecacli.atomic import check_writable

        check_writable([plot_path], force)
    from ecacli.reports.compare import compare_specs, to_csv, to_markdown

    rows = compare_specs(loaded, input_size)
    if time:
        _attach_timings(rows, loaded, batch, input_size, device, warmup, iters, threads, show_progress=not (as_json or as_csv or as_markdown))
    if plot_path is not None:
        from ecacli.reports.plot import plot_params_vs

        y = "images_per_s" if time else "top1"
        plotted = plot_params_vs(rows, y, plot_path, force)
        typer.echo(f"wrote {plot_path} ({plotted} of {len(rows)} specs plotted)", err=True)
    if as_json:
        print_json([row.to_dict() for row in rows])
    elif as_csv:
        typer.echo(to_csv(rows), nl=False)
    elif as_markdown:
        typer.echo(to_markdown(rows, with_measured=time), nl=False)
    else:
        _render(rows, time, overrides or [])


def _render(rows, time: bool, overrides: list[str]) -> None:
    from ecacli.reports.compare import (
        MEASURED_COLUMNS,
        NARROW_MEASURED_COLUMNS,
        NUMERIC_COLUMNS,
        STACKED_COLUMNS,
        STACKED_NUMERIC,
        TABLE_COLUMNS,
        imprecise_note,
        measured_cells,
        stacked_cells,
        table_cells,
    )
    from ecacli.spec_loader import with_overrides

    title = f"{len(rows)} spec{'s' if len(rows) > 1 else ''}, deltas against {rows[0].name}"
    notes = ["GMACs/img: 10^9 multiply-adds per image", "reported: cited in the spec's `reported:` block, not measured"]
    if overrides:
        notes.append(with_overrides("every spec", overrides))
    if time:
        measured = rows[0].measured
        notes.append(f"measured: {measured['device']}, batch {measured['batch']}, training steps interleaved with the first, one pair at a time; step / first: median (p10-p90) of per-round ratios")
        imprecise = imprecise_note(rows)
        if imprecise:
            notes.append(imprecise)
    measured = [True] * len(MEASURED_COLUMNS) if time else []
    wide = TableSpec(title, TABLE_COLUMNS + (MEASURED_COLUMNS if time else []),
                     [table_cells(row) + (measured_cells(row) if time else []) for row in rows], NUMERIC_COLUMNS + measured, caption="; ".join(notes))
    narrow = TableSpec(title, STACKED_COLUMNS + (NARROW_MEASURED_COLUMNS if time else []),
                       [stacked_cells(row) + (measured_cells(row, stacked=True) if time else []) for row in rows], STACKED_NUMERIC + measured, caption="\n".join(notes))
    print_table(console(), wide, narrow)


def _attach_timings(rows, specs, batch: int, input_size: int | None, device: str, warmup: int, iters: int, threads: int | None, show_progress: bool) -> None:
    """Time every spec's training step interleaved with the first's, one pair at a time in one process (the profile command's code), and attach the figures."""
    from ecacli.cli.common import progress_callback
    from ecacli.profiling import ProfileConfig, profile_paired
    from ecacli.profiling.device import default_device
    from ecacli.reports.compare import measured_figures

    config = ProfileConfig(
        device=default_device() if device == "auto" else device, batch=batch, input_size=input_size, warmup=warmup, iters=iters, threads=threads
    )
    labels = [f"{i}:{spec.name}" for i, spec in enumerate(specs)]
    with progress_callback(enabled=show_progress) as progress:
        report = profile_paired(list(zip(labels, specs)), config, progress)
    if report.interrupted:
        typer.echo("stopped before every spec was timed; nothing is reported as measured from a partial run.", err=True)
        raise Interrupted()
    for row, label in zip(rows, labels):
        row.measured = measured_figures(report, label, labels[0])
