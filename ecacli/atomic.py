"""Atomic file output, torch-free: a temporary sibling, flushed and fsynced, then moved into place.

An interrupted or failed write (Ctrl-C, SIGTERM, a full disk) leaves no partial or temporary
file and the previous file intact; an existing file is replaced only with `force`, and only
when it is a regular file (never a FIFO, a device, a folder or a symbolic link).
Checkpoints, spec files and plots are all written this way.

A temporary is named `.ecacli-<pid>-XXXXXXXX.tmp` after the process writing it; one whose
process is gone (killed with SIGKILL, or the machine lost power) is removed the next time
ecacli writes into that folder.
"""

from __future__ import annotations

import os
import re
import stat
import time
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
"""Temporary files are `.ecacli-<pid>-XXXXXXXX.tmp` in the target's folder: short, so a 255-byte target name still has one."""

TEMPORARY_NAME = re.compile(r"\.ecacli-(\d{1,10})-[A-Za-z0-9_]{8}\.tmp")
STALE_AFTER_S = 60.0
"""A temporary whose process is gone is removed once it is this old, so a writer that shares the folder from another machine (whose process ids mean nothing here) has long finished."""

_live_temporaries: set[Path] = set()


def remove_live_temporaries() -> None:
    """Remove every temporary this process has opened and not yet moved into place or removed: the last resort of a stop that could not unwind."""
    for tmp in list(_live_temporaries):
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        _live_temporaries.discard(tmp)


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False
    return False


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporaries in `folder` that a process of this user left behind when it was killed; returns what was removed.

    Only names of ecacli's own pattern count, only regular files this user owns, and only when
    their process no longer exists and they are `STALE_AFTER_S` old; anything unexpected is left alone.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = TEMPORARY_NAME.fullmatch(entry.name)
        if match is None or int(match[1]) == os.getpid():
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid() and now - info.st_mtime >= STALE_AFTER_S and _process_gone(int(match[1])):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


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
    for folder in {target.parent for target in writers}:
        remove_stale_temporaries(folder)
    with ExitStack() as cleanup:
        temporaries: dict[Path, Path] = {}
        for target, write in writers.items():
            with user_path(target, f"write in {describe_path(target.parent)}", OutputError):
                fd, name = tempfile.mkstemp(dir=target.parent, prefix=f"{TEMPORARY_PREFIX}{os.getpid()}-", suffix=".tmp")  # short: any valid target name works
            tmp = Path(name)
            _live_temporaries.add(tmp)
            cleanup.callback(_live_temporaries.discard, tmp)
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
