"""Options and output helpers shared by the commands (no torch here)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ecacli.errors import UserError, describe_path

if TYPE_CHECKING:
    from rich.console import Console

    from ecacli.spec import ResNetSpec

SpecArgument = Annotated[str, typer.Argument(help="Spec YAML file or preset name (see `ecacli specs`).", show_default=False)]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a spec value, KEY.PATH=VALUE (YAML value); repeatable, e.g. --set attention.k_size=3.", show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]


def input_path(text: str, what: str) -> Path:
    """A path the user gave to read from; an empty one is refused (Path('') would mean the current folder)."""
    if not text:
        raise UserError(f"an empty path was given; give the path of {what}.")
    return Path(text)


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


def load_spec_arg(spec: str, overrides: list[str] | None) -> ResNetSpec:
    from ecacli.spec_loader import load_spec

    return load_spec(spec, overrides or ())


def load_optional_spec_arg(spec: str | None, overrides: list[str] | None) -> ResNetSpec | None:
    """The spec of an optional `--spec` option, or None; `--set` without `--spec` is a mistake."""
    if spec is None:
        if overrides:
            raise UserError("--set changes a spec; it needs --spec.")
        return None
    return load_spec_arg(spec, overrides)


def print_json(data: Any) -> None:
    """JSON to stdout, unwrapped and unstyled, for pipes and scripts."""
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def console() -> Console:
    """A rich console; when output is not a terminal, wide enough that tables are never cut."""
    from rich.console import Console

    out = Console(highlight=False)
    if not out.is_terminal:
        out.width = max(out.width, 200)
    return out


@contextmanager
def progress_callback(enabled: bool = True) -> Iterator[Callable[[str, int, int], None] | None]:
    """A rich progress bar on stderr as a `progress(phase, done, total)` callback; None when disabled or stderr is no terminal."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    err = Console(stderr=True)
    if not enabled or not err.is_terminal:
        yield None
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
