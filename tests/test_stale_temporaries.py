"""Temporaries a killed process left beside an output are removed the next time ecacli writes there; nothing else is."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ecacli.atomic import STALE_AFTER_S, TEMPORARY_NAME, atomic_write


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _aged(path, seconds: float):
    path.write_bytes(b"partial")
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def test_a_dead_processes_old_temporary_goes_and_everything_else_stays(tmp_path):
    dead = _dead_pid()
    stale = _aged(tmp_path / f".ecacli-{dead}-abcd1234.tmp", STALE_AFTER_S + 60)
    fresh = _aged(tmp_path / f".ecacli-{dead}-efgh5678.tmp", 0)  # perhaps a writer on another machine, still at work
    alive = _aged(tmp_path / f".ecacli-{os.getppid()}-ijkl9012.tmp", STALE_AFTER_S + 60)
    foreign = [_aged(tmp_path / name, STALE_AFTER_S + 60) for name in (".ecacli-notes.tmp", f".ecacli-{dead}-abcd1234.tmp.bak", f"ecacli-{dead}-abcd1234.tmp")]
    atomic_write({tmp_path / "out.bin": lambda handle: handle.write(b"done")})
    assert not stale.exists()
    assert fresh.exists() and alive.exists() and all(path.exists() for path in foreign)
    assert (tmp_path / "out.bin").read_bytes() == b"done"


def test_a_temporary_is_named_after_its_process(tmp_path):
    seen = []

    def write(handle):
        seen.extend(path.name for path in tmp_path.iterdir())
        handle.write(b"x")

    atomic_write({tmp_path / "out.bin": write})
    assert len(seen) == 1 and TEMPORARY_NAME.fullmatch(seen[0]) and TEMPORARY_NAME.fullmatch(seen[0])[1] == str(os.getpid())
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.bin"]


KILLED_WHILE_WRITING = textwrap.dedent(
    """
    import sys
    from ecacli.atomic import atomic_write
    from pathlib import Path

    def write(handle):
        handle.write(b"partial")
        handle.flush()
        print("writing", flush=True)
        sys.stdin.readline()

    atomic_write({Path(sys.argv[1]): write})
    """
)


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_temporary_of_a_killed_export_is_removed_by_the_next_write(tmp_path, monkeypatch):
    process = subprocess.Popen([sys.executable, "-c", KILLED_WHILE_WRITING, str(tmp_path / "a.bin")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "writing\n"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    left = [path for path in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].name.startswith(f".ecacli-{process.pid}-")
    monkeypatch.setattr("ecacli.atomic.STALE_AFTER_S", 0.0)
    atomic_write({tmp_path / "b.bin": lambda handle: handle.write(b"b")})
    assert sorted(path.name for path in tmp_path.iterdir()) == ["b.bin"]
