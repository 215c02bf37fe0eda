"""The `ecacli` command line: thin typer commands over the library, one module per command.

`main` maps outcomes to exit codes: 0 success, 2 a user mistake (one paragraph, no traceback;
also a standard output that cannot be written: closed, or on a full disk), 1 an internal
failure, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM), 141 quietly when the reader of
stdout went away (a broken pipe, as for other unix tools); 130 and 143 print one line saying so
on stderr, and unwind first, so no temporary file is left behind.

A stop wins over whatever error it causes on the way out (a library that turns the interruption
into its own error, a half-initialised import): once SIGINT or SIGTERM has arrived, the exit is
130 or 143. When the main thread cannot unwind (held in a long native call), a watchdog thread,
woken by the signal itself, removes this process's temporaries, stops its child processes and
exits with the same status after `STOP_GRACE_S`.
"""

from __future__ import annotations

import errno
import functools
import os
import signal
import sys
import threading
import time
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


STOP_GRACE_S = 2.0
"""How long a stop may take to unwind before the watchdog ends the process itself."""

STOPS = {signal.SIGINT: (Interrupted.exit_code, "interrupted"), signal.SIGTERM: (Terminated.exit_code, "terminated")}


class _StopWatch:
    """The stop signal received during `main` (if any), and a watchdog thread that ends the process when it cannot unwind.

    The watchdog is woken by the signal itself (Python's wake-up descriptor), even while the main
    thread is held in native code; if the main thread has not run the signal's handler
    `STOP_GRACE_S` later, it never will in time, and the watchdog ends the process.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.handled = 0
        self.delivered = 0
        self.armed = False
        self._wakeup: int | None = None

    def arm(self) -> int:
        """Start watching (the watchdog thread is started once per process); returns the previous wake-up descriptor."""
        self.received, self.handled, self.delivered, self.armed = None, 0, 0, True
        if self._wakeup is None:
            read, write = os.pipe()
            os.set_blocking(write, False)
            self._wakeup = write
            threading.Thread(target=self._watch, args=(read,), name="ecacli-stop-watchdog", daemon=True).start()
        return signal.set_wakeup_fd(self._wakeup, warn_on_full_buffer=False)

    def _watch(self, read: int) -> None:
        while True:
            signum = os.read(read, 1)[0]
            if not (self.armed and signum in STOPS):
                continue
            self.delivered += 1
            time.sleep(STOP_GRACE_S)
            if self.armed and self.handled < self.delivered:
                _end_now(STOPS[signal.Signals(signum)])


_stop_watch = _StopWatch()


def _end_now(stop: tuple[int, str]) -> None:
    """The watchdog's last resort: remove this process's temporaries, kill its children, say why and exit."""
    from ecacli.atomic import remove_live_temporaries

    remove_live_temporaries()
    for child in _child_processes():
        try:
            os.kill(child, signal.SIGKILL)
        except OSError:
            pass
    code, line = stop
    os.write(2, f"{line}\n".encode())
    os._exit(code)


def _child_processes() -> list[int]:
    """This process's children (as /proc lists them; none where it is not mounted)."""
    children = []
    try:
        for task in os.scandir(f"/proc/{os.getpid()}/task"):
            with open(os.path.join(task.path, "children")) as listing:
                children += [int(pid) for pid in listing.read().split()]
    except OSError:
        pass
    return children


def _stop_signal(signum: int, frame: Any) -> None:
    """SIGINT and SIGTERM: remember which arrived, then unwind as KeyboardInterrupt or `Terminated`."""
    _stop_watch.received = signum
    _stop_watch.handled += 1
    if signum == signal.SIGTERM:
        raise Terminated()
    raise KeyboardInterrupt()


def _stopped_exit() -> None:
    """If a stop signal arrived, exit with its status and line, whatever the error that brought us here."""
    if _stop_watch.received is not None:
        code, line = STOPS[signal.Signals(_stop_watch.received)]
        sys.stderr.write(line + "\n")
        sys.exit(code)


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
    previous = {signum: signal.signal(signum, _stop_signal) for signum in STOPS}
    previous_wakeup = _stop_watch.arm()
    try:
        _run()
    finally:
        _stop_watch.armed = False
        signal.set_wakeup_fd(previous_wakeup)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        from ecacli.atomic import remove_live_temporaries

        remove_live_temporaries()


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
        _stopped_exit()
        sys.stderr.write("error: " + "\n".join(printable(line) for line in str(exc).splitlines()) + "\n")
        sys.exit(exc.exit_code)
    except (Interrupted, KeyboardInterrupt):
        sys.stderr.write("interrupted\n")
        sys.exit(Interrupted.exit_code)
    except Terminated:
        sys.stderr.write("terminated\n")
        sys.exit(Terminated.exit_code)
    except Exception as exc:
        _stopped_exit()
        if os.environ.get("ECACLI_DEBUG"):
            raise
        if isinstance(exc, OSError) and exc.filename is None and (isinstance(exc, BrokenPipeError) or exc.errno in STDOUT_ERRNOS):
            _stdout_exit(exc)  # every file ecacli reads or writes is named in its errors: one without a name is the output stream
        if isinstance(exc, OSError) and exc.filename is not None:
            sys.stderr.write(f"error: {describe_path(exc.filename)}: {os_reason(exc)}.\n")
            sys.exit(2)
        sys.stderr.write(f"internal error: {type(exc).__name__}: {exc}\n(set ECACLI_DEBUG=1 for the traceback; please report it)\n")
        sys.exit(1)
