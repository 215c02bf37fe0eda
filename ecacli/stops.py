"""Stopping a command promptly: SIGINT and SIGTERM unwind it, and a stop wins over the errors it causes.

Inside `watching_stops()`, SIGINT raises KeyboardInterrupt and SIGTERM `Terminated`; the signal
received is remembered, so `exit_if_stopped()` can exit 130 or 143 even where a library turned
the interruption into its own error (a half-initialised import). When the main thread cannot
unwind (held in a long native call), a watchdog thread, woken by the signal itself, removes this
process's temporaries, stops its child processes and exits with the same status after
`STOP_GRACE_S`.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ecacli.atomic import remove_live_temporaries
from ecacli.errors import Interrupted, Terminated

STOP_GRACE_S = 2.0
"""How long a stop may take to unwind before the watchdog ends the process itself."""

STOPS = {signal.SIGINT: (Interrupted.exit_code, "interrupted"), signal.SIGTERM: (Terminated.exit_code, "terminated")}


class _StopWatch:
    """The stop signal received while watching (if any), and a watchdog thread that ends the process when it cannot unwind.

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


def _on_stop(signum: int, frame: Any) -> None:
    """SIGINT and SIGTERM: remember which arrived, then unwind as KeyboardInterrupt or `Terminated`."""
    _stop_watch.received = signum
    _stop_watch.handled += 1
    if signum == signal.SIGTERM:
        raise Terminated()
    raise KeyboardInterrupt()


def exit_if_stopped() -> None:
    """If a stop signal arrived, exit with its status and line, whatever the error that brought us here."""
    if _stop_watch.received is not None:
        code, line = STOPS[signal.Signals(_stop_watch.received)]
        sys.stderr.write(line + "\n")
        sys.exit(code)



@contextmanager
def watching_stops() -> Iterator[None]:
    """SIGINT and SIGTERM handled as above while the block runs; the previous handlers restored and this process's temporaries removed after it."""
    previous = {signum: signal.signal(signum, _on_stop) for signum in STOPS}
    previous_wakeup = _stop_watch.arm()
    try:
        yield
    finally:
        _stop_watch.armed = False
        signal.set_wakeup_fd(previous_wakeup)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        remove_live_temporaries()
