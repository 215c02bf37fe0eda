"""Options and output helpers shared by the commands (no torch here)."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import typer.core

from ecacli.errors import UserError, describe_path

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from ecacli.spec import NetworkSpec

class PlainHelpCommand(typer.core.TyperCommand):
    """A command whose help lists each argument by its metavar, as click does (typer adds its Python type, `SPEC <str>`)."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        arguments, options = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                arguments.append((param.display_name_raw + ("..." if param.nargs != 1 else ""), record[1]))
            else:
                options.append(record)
        for title, records in (("Arguments", arguments), ("Options", options)):
            if records:
                with formatter.section(title):
                    formatter.write_dl(records)


SpecArgument = Annotated[str, typer.Argument(metavar="SPEC", help="Spec YAML file or preset name (see `ecacli specs`).", show_default=False)]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", metavar="KEY=VALUE", help="Override a spec value (YAML), e.g. attention.k_size=3; repeatable.", show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def input_path(text: str, what: str) -> Path:
    """A path the user gave to read from; an empty one is refused (Path('') would mean the current folder)."""
    if not text:
        raise UserError(f"an empty path was given; give the path of {what}.")
    return Path(text)


def refuse_graph_file(text: str, expected: str) -> None:
    """Refuse a graph file (ONNX, TorchScript, pt2: told by its suffix) where `expected` (a checkpoint, a spec) is read."""
    from ecacli.deploy.formats import NAMED_BY_SUFFIX, WEIGHT_FORMATS

    fmt = NAMED_BY_SUFFIX.get(Path(text).suffix.lower())
    if fmt is not None and fmt not in WEIGHT_FORMATS:
        raise UserError(
            f"{describe_path(text)}: names a graph file ({fmt}), which runs in its runtime; this command reads {expected}. "
            f"`ecacli inspect {text}` shows the spec a graph from ecacli holds."
        )


def checkpoint_path(text: str) -> Path:
    """A checkpoint to read: a non-empty path that does not name a graph file."""
    path = input_path(text, "a checkpoint")
    refuse_graph_file(text, "a checkpoint (.safetensors, .pt, .pth, .pth.tar, .bin)")
    return path


def output_path(text: str, option: str, example: str) -> Path:
    """A path to write to; refuses an empty one and one ending in '/', which names a folder, not a file."""
    if not text:
        raise UserError(f"{option} '': an empty path; give a file name to write, e.g. {example}.")
    if text.endswith(("/", os.sep)):
        raise UserError(f"{option} {describe_path(text)}: ends with '/', so it names a folder; give a file name, e.g. {text}{example}.")
    return Path(text)


def only_with(flags: list[str], needed: str) -> str:
    """'--a, --b apply only to ...' with the verb agreeing with the number of flags."""
    return f"{', '.join(flags)} {'applies' if len(flags) == 1 else 'apply'} only to {needed}"


def load_spec_arg(spec: str, overrides: list[str] | None) -> NetworkSpec:
    from ecacli.spec_loader import load_spec

    return load_spec(spec, overrides or ())


def load_optional_spec_arg(spec: str | None, overrides: list[str] | None) -> NetworkSpec | None:
    """The spec of an optional `--spec` option, or None; `--set` without `--spec` is a mistake."""
    if spec is None:
        if overrides:
            raise UserError("--set changes a spec; it needs --spec.")
        return None
    return load_spec_arg(spec, overrides)


def print_json(data: Any) -> None:
    """Strict JSON to stdout, unwrapped and unstyled, for pipes and scripts: a non-finite number is the text "nan", "inf" or "-inf" (see `json_value`)."""
    sys.stdout.write(json.dumps(json_value(data), indent=2, allow_nan=False) + "\n")


def json_value(data: Any) -> Any:
    """`data` with each non-finite float, as a value or a key, replaced by the text "nan", "inf" or "-inf", for which JSON has no number."""
    if isinstance(data, float) and not math.isfinite(data):
        return "nan" if math.isnan(data) else ("inf" if data > 0 else "-inf")
    if isinstance(data, dict):
        return {json_value(key): json_value(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [json_value(value) for value in data]
    return data


def console() -> Console:
    """A rich console as wide as the terminal, or as COLUMNS says; 200 columns for a pipe or file without COLUMNS."""
    from rich.console import Console

    out = Console(highlight=False)
    if not out.is_terminal and not os.environ.get("COLUMNS"):
        out.width = max(out.width, 200)
    return out


class ProgressLines:
    """A `progress(phase, done, total)` callback that writes plain lines to stderr, for logs and pipes:
    the first and last step of each phase and at most one line per `interval` seconds in between.
    Picklable, so spawned ranks can report through it.
    """

    def __init__(self, prefix: str = "", interval: float = 1.0) -> None:
        self.prefix, self.interval = prefix, interval
        self.last: dict[str, float] = {}

    def __call__(self, phase: str, done: int, total: int) -> None:
        import time

        now = time.monotonic()
        if done in (1, total) or now - self.last.get(phase, 0.0) >= self.interval:
            self.last[phase] = now
            sys.stderr.write(f"{self.prefix}{phase} {done}/{total}\n")
            sys.stderr.flush()


@contextmanager
def progress_callback(enabled: bool = True) -> Iterator[Callable[[str, int, int], None] | None]:
    """A `progress(phase, done, total)` callback on stderr: a rich progress bar on a terminal, plain
    lines (`ProgressLines`) otherwise; None when disabled.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    err = Console(stderr=True)
    if not enabled:
        yield None
        return
    if not err.is_terminal:
        yield ProgressLines()
        return
    tasks: dict[str, Any] = {}
    with Progress(TextColumn("{task.description:<8}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err, transient=True) as bar:

        def update(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done)

        yield update


def fmt_int(value: int) -> str:
    return f"{value:,}"


def fmt_bytes(value: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


@dataclass
class TableSpec:
    """A table as plain strings, rendered by `print_table` to fit the console: numbers are never cut.

    `numeric[i]` marks a column of numbers (right-justified, never wrapped or cut); other columns
    are text that may fold. `keep` leading columns are repeated in every part when the table has
    to be split. A cell may hold several lines.
    """

    title: str
    headers: list[str]
    rows: list[list[str]]
    numeric: list[bool]
    caption: str | None = None
    keep: int = 1
    row_styles: list[str | None] | None = None


MIN_TEXT_WIDTH = 12


def _rich_table(spec: TableSpec, columns: list[int], plain: bool, probe: bool, part: str = "", caption: bool = True, width: int = 0) -> Table:
    """The rich Table of `columns`; `width` > 0 widens it to its title's length (up to `width`) so the title is not wrapped."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    title = Text(spec.title + part) if spec.title else None
    table = Table(
        min_width=min(len(title), width) if title and width else None,
        title=title,
        caption=Text(spec.caption) if spec.caption and caption else None,
        box=box.SIMPLE_HEAD if plain else box.HEAVY_HEAD,
        pad_edge=not plain,
        show_edge=not plain,
        title_justify="left",
        caption_justify="left",
    )
    for i in columns:
        if spec.numeric[i]:
            table.add_column(Text(spec.headers[i]), justify="right", no_wrap=True)
        else:
            table.add_column(Text(spec.headers[i]), overflow="fold", max_width=MIN_TEXT_WIDTH if probe else None)
    for r, row in enumerate(spec.rows):
        style = spec.row_styles[r] if spec.row_styles else None
        table.add_row(*(Text(row[i]) for i in columns), style=style)
    return table


def _fits(out: Console, spec: TableSpec, columns: list[int], plain: bool, fold: bool) -> bool:
    """Whether the table fits the console: as it is, or (`fold`) with text columns folded to MIN_TEXT_WIDTH."""
    from rich.measure import Measurement

    table = _rich_table(spec, columns, plain, probe=fold)
    return Measurement.get(out, out.options.update_width(100_000), table).maximum <= out.width


def print_table(out: Console, *variants: TableSpec) -> None:
    """Print the first variant that fits the console whole (boxed, else without box lines); else the
    last one with its text columns folded; else the last one split into parts of columns, each part
    repeating its `keep` leading columns. Numbers are never cut.
    """
    for spec in variants:
        everything = list(range(len(spec.headers)))
        for plain in (False, True):
            if _fits(out, spec, everything, plain, fold=False):
                out.print(_rich_table(spec, everything, plain, probe=False, width=out.width))
                return
    spec = variants[-1]
    everything = list(range(len(spec.headers)))
    if _fits(out, spec, everything, plain=True, fold=True):
        out.print(_rich_table(spec, everything, plain=True, probe=False, width=out.width))
        return
    kept = list(range(spec.keep))
    parts: list[list[int]] = []
    for i in range(spec.keep, len(spec.headers)):
        if parts and _fits(out, spec, parts[-1] + [i], plain=True, fold=True):
            parts[-1].append(i)
        else:
            parts.append(kept + [i])
    for n, columns in enumerate(parts, start=1):
        out.print(_rich_table(spec, columns, plain=True, probe=False, part=f" ({n} of {len(parts)})", caption=n == len(parts), width=out.width))
