"""Errors that separate a user's mistake (exit 2) from an internal failure (exit 1), and a stop (130, 143).

Every access to a path the user named goes through `user_path`, so a failing file system
(missing folder, permission, name too long, I/O error, full disk) ends as one `PathError` line
naming the path, never as a raw `OSError`.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SHOWN_CHARS = 60


class UserError(Exception):
    """A mistake in what the user asked for: reported as one paragraph, exit code 2."""

    exit_code = 2


class SpecError(UserError):
    """A spec file or preset that cannot be read or does not validate."""


class OptionError(UserError, ValueError):
    """A library argument (or command option) outside what the model allows; the message names the argument."""


class PathError(UserError):
    """A path the user named that the file system refuses (missing, not permitted, too long, I/O error, full)."""


class OutOfMemory(UserError):
    """The device ran out of memory: exit 1 (a resource limit, not a malformed request); the message says what to lower."""

    exit_code = 1


def is_out_of_memory(exc: BaseException) -> bool:
    """Python's MemoryError, or the RuntimeError torch's allocators raise (CUDA's OutOfMemoryError is one)."""
    text = str(exc)
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower()))


class Interrupted(Exception):
    """Ctrl-C stopped a command (after it reported what it had): one line on stderr, exit code 130."""

    exit_code = 130


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like Ctrl-C (temporary files are removed), exit code 143."""

    exit_code = 143


_REASONS = {
    errno.ENAMETOOLONG: "the name is too long for the file system",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ELOOP: "too many symbolic links",
    errno.EIO: "input/output error",
}


def os_reason(exc: OSError) -> str:
    """A short, lower-case reason for an OSError, without Python's '[Errno N]' decoration."""
    if exc.errno in _REASONS:
        return _REASONS[exc.errno]
    text = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__)
    return text[:1].lower() + text[1:]


def describe_path(path: str | Path) -> str:
    """The path as the user gave it, cut in the middle when it is too long to read in a message."""
    text = str(path)
    if len(text) <= 2 * SHOWN_CHARS:
        return text
    return f"{text[:SHOWN_CHARS]}...{text[-SHOWN_CHARS:]} ({len(text):,} characters)"


def file_kind(mode: int) -> str:
    """What a file system entry is, from its st_mode: 'a regular file', 'a folder', 'a named pipe (FIFO)', ..."""
    kinds = (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "a special file")


@contextmanager
def user_path(path: str | Path, action: str, error: type[UserError] = PathError) -> Iterator[None]:
    """Turn any OSError raised inside into `error`: '<path>: cannot <action>: <reason>.'"""
    try:
        yield
    except OSError as exc:
        raise error(f"{describe_path(path)}: cannot {action}: {os_reason(exc)}.") from None


def printable(text: str) -> str:
    """`text` with every character a terminal would act on (control characters, escapes, bidi overrides, lone surrogates) written as a visible escape, `\\x1b`."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() or char == " " else char.encode("unicode_escape", "backslashreplace").decode("ascii") for char in text)


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")

FIRST_LINE_CHARS = 200


MAX_SEED = 2**64 - 1
"""The largest seed torch's generators take."""


def check_seed(seed: Any, name: str = "seed") -> None:
    """Refuse a seed (None is none) that is not an integer from 0 to MAX_SEED with an OptionError naming it as `name` (`--seed` for the command line)."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
        raise OptionError(f"{name} must be an integer from 0 to 2**64 - 1, got {shown(seed)}.")


def first_line(exc: BaseException, limit: int = FIRST_LINE_CHARS) -> str:
    """The first line of an exception's message for a one-paragraph report: terminal colour codes removed, cut to `limit` characters."""
    lines = ANSI_ESCAPE.sub("", str(exc)).strip().splitlines()
    return cut(lines[0], limit) if lines else type(exc).__name__


def cut(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text` as it is when short, else its start and its full length: 'xxxx... (202 characters)'."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """repr(value) for a message, cut to about `limit` characters with the full length noted."""
    if isinstance(value, (list, tuple, dict, set)) and len(value) > 20:
        kind = type(value).__name__
        return f"a {kind} of {len(value):,} items"
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value):,} characters)"
    try:
        text = repr(value)
    except ValueError:  # an int too long for str() (over 4,300 digits)
        return f"an integer of about {int(value.bit_length() * 0.30103):,} digits"
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters)"
