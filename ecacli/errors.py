"""Errors that separate a user's mistake (exit 2) from an internal failure (exit 1)."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user asked for: reported as one paragraph, exit code 2."""

    exit_code = 2


class SpecError(UserError):
    """A spec file or preset that cannot be read or does not validate."""
