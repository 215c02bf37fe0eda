"""The `ecacli` command line: thin typer commands over the library, one module per command.

`main` maps outcomes to exit codes: 0 success, 2 a user mistake (one paragraph, no traceback;
also a standard output that cannot be written: closed, or on a full disk), 1 an internal
failure, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM), 141 quietly when the reader of
stdout went away (a broken pipe, as for other unix tools); 130 and 143 print one line saying so
on stderr, and unwind first, so no temporary file is left behind.

A stop wins over whatever error it causes on the way out (`ecacli.stops`): once SIGINT or SIGTERM
has arrived, the exit is 130 or 143, even where the main thread is held in native code.
"""

from __future__ import annotations

import errno
import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import typer

from ecacli.cli.common import PlainHelpCommand
from ecacli.cli.compare import compare
from ecacli.cli.convert import convert
from ecacli.cli.export import export
from ecacli.cli.inspect import inspect
from ecacli.cli.ksize import ksize
from ecacli.cli.profile import profile
from ecacli.cli.schema import schema
from ecacli.cli.specs import specs
from ecacli.cli.summary import summary
from ecacli.cli.validate import validate
from ecacli.errors import Interrupted, Terminated, UserError, describe_path, os_reason, printable
from ecacli.stops import exit_if_stopped, watching_stops

app = typer.Typer(
    name="ecacli",
    help="ECA-Net toolkit (ResNets, MobileNetV2): specs, kernel sizes, summaries, profiles, checkpoints and exports.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _reporting_interrupts(command: Callable[..., Any]) -> Callable[..., Any]:
    """The command, with Ctrl-C raised as `Interrupted` (typer would turn it into a silent exit 130) and a broken pipe ending it quietly with 141 (click would exit 1)."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            raise Interrupted() from None
        except BrokenPipeError:
            _silence_stdout()
            raise SystemExit(BROKEN_PIPE) from None

    return run


for command in (summary, ksize, specs, validate, schema, compare, export, inspect, convert, profile):
    app.command(cls=PlainHelpCommand)(_reporting_interrupts(command))


def _version_callback(value: bool) -> None:
    if value:
        from ecacli import __version__

        typer.echo(f"ecacli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
) -> None:
    """ECA-Net toolkit (ResNets, MobileNetV2): specs, kernel sizes, summaries,
    profiles, checkpoints and exports.
    """


BROKEN_PIPE = 128 + signal.SIGPIPE
"""Exit status when the reader of stdout went away (`ecacli schema | head`): as a unix tool killed by SIGPIPE, and quietly."""


STDOUT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EBADF, errno.EIO)


def _stdout_failing() -> OSError | None:
    """The error writing what is left of stdout's buffer raises, if it fails (a full disk, a closed pipe, a closed descriptor)."""
    try:
        sys.stdout.flush()
    except OSError as exc:
        return exc
    return None


def _silence_stdout() -> None:
    """Point stdout at the null device, so the interpreter's last flush cannot fail again on the way out."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


def _stdout_exit(exc: OSError) -> None:
    _silence_stdout()
    if isinstance(exc, BrokenPipeError):
        sys.exit(BROKEN_PIPE)
    sys.stderr.write(f"error: cannot write to standard output: {os_reason(exc)}.\n")
    sys.exit(2)


def main() -> None:
    """Console-script entry point."""
    if sys.stdout is None:  # started with stdout closed (`ecacli ... >&-`)
        sys.stderr.write("error: standard output is closed; ecacli writes its results there (redirect it to a file or /dev/null instead).\n")
        sys.exit(2)
    with watching_stops():
        _run()


def _run() -> None:
    """Run the app and map its outcome to an exit status (see the module's docstring)."""
    try:
        try:
            app()
        finally:
            failing = _stdout_failing()
            if failing is not None:
                _stdout_exit(failing)
    except UserError as exc:
        exit_if_stopped()
        sys.stderr.write("error: " + "\n".join(printable(line) for line in str(exc).splitlines()) + "\n")
        sys.exit(exc.exit_code)
    except (Interrupted, KeyboardInterrupt):
        sys.stderr.write("interrupted\n")
        sys.exit(Interrupted.exit_code)
    except Terminated:
        sys.stderr.write("terminated\n")
        sys.exit(Terminated.exit_code)
    except Exception as exc:
        exit_if_stopped()
        if os.environ.get("ECACLI_DEBUG"):
            raise
        if isinstance(exc, OSError) and exc.filename is None and (isinstance(exc, BrokenPipeError) or exc.errno in STDOUT_ERRNOS):
            _stdout_exit(exc)  # every file ecacli reads or writes is named in its errors: one without a name is the output stream
        if isinstance(exc, OSError) and exc.filename is not None:
            sys.stderr.write(f"error: {describe_path(exc.filename)}: {os_reason(exc)}.\n")
            sys.exit(2)
        sys.stderr.write(f"internal error: {type(exc).__name__}: {exc}\n(set ECACLI_DEBUG=1 for the traceback; please report it)\n")
        sys.exit(1)
