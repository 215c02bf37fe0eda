"""`ecacli schema`: the JSON Schema of spec files, for editors' YAML language servers (no torch)."""

from __future__ import annotations

from ecacli.cli.common import print_json


def schema() -> None:
    """Print the JSON Schema of a spec.

    Point an editor at it with a `# yaml-language-server: $schema=PATH` line.
    """
    from ecacli.spec import json_schema

    print_json(json_schema())
