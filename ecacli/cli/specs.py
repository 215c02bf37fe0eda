"""`ecacli specs`: the preset specs that ship with ecacli, with one-line descriptions (no torch)."""

from __future__ import annotations

from ecacli.cli.common import JsonOption, TableSpec, console, print_json, print_table


def specs(as_json: JsonOption = False) -> None:
    """List the preset specs.

    Any of their names works wherever a spec path does.
    """
    from ecacli.spec_loader import preset_descriptions, presets_dir

    rows = preset_descriptions()
    if as_json:
        print_json([{"name": name, "description": text} for name, text in rows])
        return
    print_table(console(), TableSpec("Preset specs", ["name", "description"], [list(row) for row in rows], [False, False], caption=f"in {presets_dir()}"))
