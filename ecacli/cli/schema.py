"""`ecacli schema`: the JSON Schema of spec files, for editors' YAML language servers (no torch)."""

from __future__ import annotations

from ecacli.cli.common import print_json


def schema() -> None:
    """Print the JSON Schema of a spec (point yaml-language-server's `# yaml-language-server: $schema=` at it)."""
    from ecacli.spec import json_schema

    print_json(json_schema())
