"""Atomic file output, torch-free: a temporary sibling, flushed and fsynced, then moved into place.

An interrupted or failed write (Ctrl-C, SIGTERM, a full disk) leaves no partial or temporary
file and the previous file intact; an existing file is replaced only with `force`, and only
when it is a regular file (never a FIFO, a device, a folder or a symbolic link).
Checkpoints, spec files and plots are all written this way.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import IO

from ecacli.errors import UserError, describe_path, file_kind, user_path


class OutputError(UserError):
    """An output path that cannot be written: exists without --force, is not a regular file, or its folder is missing or read-only."""


def _blocking_file(folder: Path) -> Path | None:
    """The first part of `folder` that exists and is not a folder (so nothing can be created below it), if any."""
    for part in reversed([folder, *folder.parents]):
        try:
            if not stat.S_ISDIR(os.stat(part).st_mode):
                return part
        except FileNotFoundError:
            return None
    return None


def _check_target(target: Path, force: bool) -> None:
    label = describe_path(target)
    folder = target.parent
    try:
        if not stat.S_ISDIR(os.stat(folder).st_mode):
            raise OutputError(f"{label}: {describe_path(folder)} is a file, not a folder.")
    except (FileNotFoundError, NotADirectoryError):
        blocking = _blocking_file(folder)
        if blocking is not None:
            raise OutputError(f"{label}: {describe_path(blocking)} is a file, not a folder.") from None
        raise OutputError(f"{label}: the folder {describe_path(folder)} does not exist.") from None
    try:
        existing = os.lstat(target).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(existing):
        raise OutputError(f"{label}: is a directory; give a file name to write.")
    if not force:
        raise OutputError(f"{label}: already exists; use --force to overwrite it.")
    if not stat.S_ISREG(existing):
        raise OutputError(
            f"{label}: is {file_kind(existing)}, not a regular file; --force replaces only regular files "
            "(remove it first, or choose another name)."
        )


def check_writable(targets: list[Path], force: bool) -> None:
    """Refuse before any work: a target that exists (without force), is not a regular file, or has no folder."""
    for target in targets:
        with user_path(target, "write it", OutputError):
            _check_target(Path(target), force)


def _publish(tmp: Path, target: Path, force: bool) -> None:
    """Move a finished temporary file into place: a rename when overwriting, a no-clobber link otherwise."""
    if force:
        os.replace(tmp, target)
        return
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise OutputError(f"{describe_path(target)}: already exists; use --force to overwrite it.") from None
    except OSError:
        if os.path.lexists(target):
            raise OutputError(f"{describe_path(target)}: already exists; use --force to overwrite it.") from None
        os.replace(tmp, target)
        return
    tmp.unlink()


TEMPORARY_PREFIX = ".ecacli-"
"""Temporary files are `.ecacli-XXXXXXXX.tmp` in the target's folder: short, so a 255-byte target name still has one."""


def _umask() -> int:
    """The process umask (read by setting and restoring it), so written files get the usual permissions."""
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write(writers: dict[Path, Callable[[IO[bytes]], None]], force: bool = False) -> None:
    """Write each target through a temporary sibling, then move all into place; on any failure none is touched.

    Every writer gets an open binary file; the data is flushed and fsynced before the rename.
    A file system error (a full disk, an I/O error) becomes an `OutputError` naming the target.
    """
    check_writable(list(writers), force)
    with ExitStack() as cleanup:
        temporaries: dict[Path, Path] = {}
        for target, write in writers.items():
            with user_path(target, f"write in {describe_path(target.parent)}", OutputError):
                fd, name = tempfile.mkstemp(dir=target.parent, prefix=TEMPORARY_PREFIX, suffix=".tmp")  # short: any valid target name works
            tmp = Path(name)
            cleanup.callback(tmp.unlink, missing_ok=True)
            with user_path(target, "write it", OutputError):
                os.chmod(fd, 0o666 & ~_umask())
                with os.fdopen(fd, "wb") as handle:
                    write(handle)
                    handle.flush()
                    os.fsync(handle.fileno())
            temporaries[target] = tmp
        for target, tmp in temporaries.items():
            with user_path(target, "write it", OutputError):
                _publish(tmp, target, force)
