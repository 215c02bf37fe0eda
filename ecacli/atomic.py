"""Atomic file output, torch-free: a temporary sibling, flushed and fsynced, then moved into place.

An interrupted or failed write leaves no partial file and the previous file intact; an existing
file is replaced only with `force`. Checkpoints, spec files and plots are all written this way.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import IO

from ecacli.errors import UserError


class OutputError(UserError):
    """An output path that cannot be written: exists without --force, is a folder, or its folder is missing or read-only."""


def check_writable(targets: list[Path], force: bool) -> None:
    """Refuse before any work: a target that exists (without force), is a folder, or has no folder."""
    for target in targets:
        if target.is_dir():
            raise OutputError(f"{target}: is a directory; give a file name to write.")
        if not target.parent.is_dir():
            raise OutputError(f"{target}: the folder {target.parent} does not exist.")
        if target.exists() and not force:
            raise OutputError(f"{target}: already exists; use --force to overwrite it.")


def _publish(tmp: Path, target: Path, force: bool) -> None:
    """Move a finished temporary file into place: a rename when overwriting, a no-clobber link otherwise."""
    if force:
        os.replace(tmp, target)
        return
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise OutputError(f"{target}: already exists; use --force to overwrite it.") from None
    except OSError:
        if target.exists():
            raise OutputError(f"{target}: already exists; use --force to overwrite it.") from None
        os.replace(tmp, target)
        return
    tmp.unlink()


def _umask() -> int:
    """The process umask (read by setting and restoring it), so written files get the usual permissions."""
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write(writers: dict[Path, Callable[[IO[bytes]], None]], force: bool = False) -> None:
    """Write each target through a temporary sibling, then move all into place; on any failure none is touched.

    Every writer gets an open binary file; the data is flushed and fsynced before the rename.
    """
    check_writable(list(writers), force)
    with ExitStack() as cleanup:
        temporaries: dict[Path, Path] = {}
        for target, write in writers.items():
            try:
                fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            except OSError as exc:
                raise OutputError(f"{target}: cannot write in {target.parent}: {exc.strerror}.") from None
            tmp = Path(name)
            cleanup.callback(tmp.unlink, missing_ok=True)
            os.chmod(fd, 0o666 & ~_umask())
            with os.fdopen(fd, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            temporaries[target] = tmp
        for target, tmp in temporaries.items():
            _publish(tmp, target, force)
