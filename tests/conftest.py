"""Shared fixtures: run the installed `ecacli` entry point as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ECACLI = Path(sys.executable).parent / "ecacli"
REPO = Path(__file__).resolve().parent.parent


def run_ecacli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the installed console script in a subprocess; returns the completed process (text mode)."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    env.pop("ECACLI_DEBUG", None)
    return subprocess.run([str(ECACLI), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)


@pytest.fixture
def cli():
    """The `run_ecacli` function, for tests that call the entry point."""
    assert ECACLI.exists(), f"ecacli entry point not installed at {ECACLI}"
    return run_ecacli
