"""The README's setup commands are exactly what CI runs (`.ci/run`), so a new user's path is the tested one."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_setup_commands_are_the_ci_commands():
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"```bash\n(python3 -m venv .venv && .*)\n```", readme)
    assert len(commands) == 2 and "pip install torch==2.14.1 torchvision==0.29.1" in commands[1]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert [line for line in ci if line.startswith("python3 -m venv")] == commands
