"""`ecacli specs`: the preset specs that ship with ecacli, with one-line descriptions (no torch)."""

from __future__ import annotations

from ecacli.cli.common import JsonOption, console, print_json


def specs(as_json: JsonOption = False) -> None:
    """List the preset specs; any of their names works wherever a spec path does."""
    from ecacli.spec_loader import preset_descriptions, presets_dir

    rows = preset_descriptions()
    if as_json:
        print_json([{"name": name, "description": text} for name, text in rows])
        return
    from rich.table import Table

    table = Table(title="Preset specs", caption=f"in {presets_dir()}")
    table.add_column("name")
    table.add_column("description")
    for name, text in rows:
        table.add_row(name, text)
    console().print(table)
