"""Keeping what native code (C++ in torch and its exporters) prints out of ecacli's own output."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def native_output_silenced(fd: int) -> Iterator[None]:
    """Send file descriptor `fd` (1: stdout, 2: stderr) to the null device meanwhile, after flushing Python's stream for it."""
    (sys.stdout if fd == 1 else sys.stderr).flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "wb") as sink:
            os.dup2(sink.fileno(), fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
