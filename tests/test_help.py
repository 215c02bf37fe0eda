"""Every `--help` fits 80 columns: no line longer, no word cut short, no metavar split across lines, no metavar on a flag."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
import typer

from conftest import ECACLI
from ecacli.cli import app

WIDTH = 80
ROOT = typer.main.get_command(app)
COMMANDS = sorted(ROOT.commands)
METAVAR = re.compile(r"^[A-Z][A-Z0-9_]*(\.\.\.)?$|^[A-Z][A-Z0-9_]* [A-Z][A-Z0-9_]*$|^KEY=VALUE$")
"""An option's or argument's metavar: one upper-case word (FORMAT, N, PATH, SPEC...), a pair (LOW HIGH) or KEY=VALUE."""
MAX_OPTION_HELP_LINES = 3
MAX_EXPORT_LINES = 40


@pytest.fixture(autouse=True)
def terminal_of_80_columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", str(WIDTH))


def context(name: str | None):
    """The context `ecacli NAME` (or `ecacli`) runs in; its terminal's width is COLUMNS."""
    parent = ROOT.make_context("ecacli", [], resilient_parsing=True)
    return parent if name is None else ROOT.commands[name].make_context(name, [], parent=parent, resilient_parsing=True)


def rendered(name: str | None) -> str:
    """The help screen of `ecacli NAME` (or of `ecacli`) as such a terminal shows it."""
    ctx = context(name)
    return ctx.command.get_help(ctx)


def params(name: str) -> list:
    """The command's parameters and its --help option."""
    ctx = context(name)
    return ctx.command.get_params(ctx)


@pytest.mark.parametrize("name", [None, *COMMANDS])
def test_help_fits_80_columns_with_nothing_cut(name):
    text = rendered(name)
    for line in text.splitlines():
        assert len(line) <= WIDTH, line
        assert "…" not in line, f"a word cut short: {line!r}"
        assert line.count("[") == line.count("]") and line.count("{") == line.count("}"), f"a metavar or default split across lines: {line!r}"
        assert not re.search(r"<[a-z]", line), f"a type shown as a metavar: {line!r}"


def test_every_command_has_a_one_line_summary():
    summaries = {name: ROOT.commands[name].get_short_help_str(limit=WIDTH - 6 - max(map(len, COMMANDS))) for name in COMMANDS}
    assert all(s.endswith(".") and not s.endswith("...") for s in summaries.values()), summaries


@pytest.mark.parametrize("name", COMMANDS)
def test_flags_have_no_metavar_and_values_a_short_one(name):
    ctx = context(name)
    for param in params(name):
        if param.param_type_name == "option" and param.is_flag:
            names = param.get_help_record(ctx)[0]
            assert re.fullmatch(r"[-\w/, ]+", names) and "<" not in names, f"{name} {param.name}: {names!r}"
        else:
            metavar = param.metavar or ""
            assert METAVAR.match(metavar), f"{name} {param.name}: metavar {metavar!r}"


@pytest.mark.parametrize("name", COMMANDS)
def test_option_help_is_concise(name):
    """Each option's help takes at most three lines beside its names, so a screen can be read at a glance."""
    ctx = context(name)
    for param in params(name):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        formatter = ctx.make_formatter()
        formatter.write_dl([record])
        lines = formatter.getvalue().splitlines()
        assert len(lines) <= MAX_OPTION_HELP_LINES + (len(record[0]) > 30), f"{name} {record[0]}: {len(lines)} lines"


def test_export_help_is_short():
    assert len(rendered("export").splitlines()) <= MAX_EXPORT_LINES


@pytest.mark.slow
@pytest.mark.subprocess
def test_installed_help_screens_fit_80_columns():
    env = {**os.environ, "COLUMNS": str(WIDTH), "NO_COLOR": "1"}
    for name in [None, *COMMANDS]:
        argv = [str(ECACLI)] + ([name] if name else []) + ["--help"]
        result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == rendered(name).strip()
        assert max(map(len, result.stdout.splitlines())) <= WIDTH
