"""SIGTERM and Ctrl-C end every long-running command promptly: exit 143 or 130, one line saying so on
stderr, and no temporary or partial file left beside the output.

Each test starts a command on a job that would run for minutes, waits for a sign that it is busy
(a progress line, or a line a wrapped exporter prints as it starts), sends the signal and waits
(with a generous bound, for a loaded machine) for the process to end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import ECACLI

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

SIGNALS = [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")]
ENDS_WITHIN_S = 60  # generous: the point is that it ends, not how fast on a shared 2-core machine
SMALL_JOB = ["--batch", "1", "--input-size", "64", "--device", "cpu", "--threads", "1"]


def _env() -> dict[str, str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    env.pop("ECACLI_DEBUG", None)
    return env


def _start(command: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=_env())


def _wait_for_line(stream, starts: tuple[str, ...]) -> list[str]:
    """Read `stream` until a line starting with one of `starts` (the readiness signal); the lines read."""
    seen = []
    for line in stream:
        seen.append(line)
        if line.startswith(starts):
            return seen
    raise AssertionError(f"the command ended before it was busy: {''.join(seen)}")


def _stop(process: subprocess.Popen, signum: int, err_so_far: str = "") -> tuple[str, str]:
    process.send_signal(signum)
    out, err = process.communicate(timeout=ENDS_WITHIN_S)
    return out, err_so_far + err


def _assert_stopped(process: subprocess.Popen, err: str, code: int, line: str) -> None:
    assert process.returncode == code, err
    assert "Traceback" not in err and "Error" not in err, err
    assert err.splitlines()[-1] == line, err


@pytest.mark.parametrize(("signum", "code", "line"), SIGNALS)
def test_a_signal_ends_a_profile_in_its_measuring_loop(tmp_path, signum, code, line):
    process = _start([str(ECACLI), "profile", "r18", "--seconds", "600", "--iters", "1000000", *SMALL_JOB], tmp_path)
    seen = _wait_for_line(process.stderr, ("warm-up", "timing"))
    _, err = _stop(process, signum, "".join(seen))
    _assert_stopped(process, err, code, line)


@pytest.mark.parametrize(("signum", "code", "line"), SIGNALS)
def test_a_signal_ends_compare_time(tmp_path, signum, code, line):
    process = _start([str(ECACLI), "compare", "r18", "r34", "--time", "--iters", "1000000", "--warmup", "1000000", *SMALL_JOB], tmp_path)
    seen = _wait_for_line(process.stderr, ("warm-up", "timing"))
    out, err = _stop(process, signum, "".join(seen))
    _assert_stopped(process, err, code, line)
    assert out == ""  # nothing is reported as measured from a partial run


WRAPPED_EXPORT = textwrap.dedent(
    """
    import sys
    from ecacli.deploy import export
    from ecacli.cli import main

    stage, target = sys.argv[1], sys.argv[2]

    def announcing(function):
        def run(*args, **kwargs):
            print("busy", file=sys.stderr, flush=True)  # stdout is silenced while an exporter runs
            return function(*args, **kwargs)
        return run

    if stage == "export":
        export.EXPORTERS["onnx"] = announcing(export.EXPORTERS["onnx"])
    else:
        export.RUNTIMES["onnx"] = announcing(export.RUNTIMES["onnx"])
    sys.argv = ["ecacli", "export", "r50", "-o", target]
    main()
    """
)


@pytest.mark.parametrize("stage", ["export", "verify"])
@pytest.mark.parametrize(("signum", "code", "line"), SIGNALS)
def test_a_signal_ends_an_onnx_export_and_writes_nothing(tmp_path, stage, signum, code, line):
    pytest.importorskip("onnxruntime")
    target = tmp_path / "m.onnx"
    process = subprocess.Popen(
        [sys.executable, "-c", WRAPPED_EXPORT, stage, str(target)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=_env()
    )
    assert process.stderr.readline() == "busy\n"  # readiness: torch.onnx.export (or the ONNX Runtime check) has begun
    _, err = _stop(process, signum)
    _assert_stopped(process, err, code, line)
    assert list(tmp_path.iterdir()) == []


HELD_IN_NATIVE_CODE = textwrap.dedent(
    """
    import signal, sys, time
    import ecacli.checkpoints as checkpoints
    from ecacli.cli import main

    real = checkpoints.atomic_write

    def held(writers, force=False):
        def wrap(write):
            def stuck(handle):
                write(handle)
                handle.flush()
                # as a long native call: the main thread runs no Python code (it does not even take the signal)
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
                print("writing", flush=True)
                time.sleep(600)
            return stuck
        real({target: wrap(write) for target, write in writers.items()}, force)

    checkpoints.atomic_write = held
    sys.argv = ["ecacli", "export", "r18", "-o", sys.argv[1]]
    main()
    """
)


@pytest.mark.parametrize(("signum", "code", "line"), SIGNALS)
def test_a_process_held_in_native_code_still_ends_and_removes_its_temporary(tmp_path, signum, code, line):
    target = tmp_path / "m.safetensors"
    process = subprocess.Popen([sys.executable, "-c", HELD_IN_NATIVE_CODE, str(target)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    assert process.stdout.readline() == "writing\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(f".ecacli-{process.pid}-")]
    _, err = _stop(process, signum)
    assert process.returncode == code and err == f"{line}\n", err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("signum", "code", "line"), SIGNALS)
def test_a_signal_ends_convert_held_in_native_code_and_writes_nothing(tmp_path, signum, code, line):
    source = tmp_path / "r18.pth"
    import torch

    from ecacli import build_model

    torch.save(build_model("r18").state_dict(), source)
    script = HELD_IN_NATIVE_CODE.replace('["ecacli", "export", "r18", "-o", sys.argv[1]]', '["ecacli", "convert", sys.argv[2], "-o", sys.argv[1]]')
    target = tmp_path / "out" / "m.safetensors"
    target.parent.mkdir()
    process = subprocess.Popen([sys.executable, "-c", script, str(target), str(source)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    assert process.stdout.readline() == "writing\n", process.communicate()[1]
    _, err = _stop(process, signum)
    assert process.returncode == code and err == f"{line}\n", err
    assert list(target.parent.iterdir()) == []


MASKED_BY_A_LIBRARY = textwrap.dedent(
    """
    import os, signal, sys
    import ecacli.checkpoints as checkpoints
    from ecacli.cli import main

    real = checkpoints.atomic_write
    signum = int(sys.argv[2])

    def masking(writers, force=False):
        def wrap(write):
            def library(handle):
                write(handle)
                try:
                    os.kill(os.getpid(), signum)
                    signal.pause()
                except BaseException as exc:  # as a native extension's initialisation does
                    raise ImportError("initialization failed") from exc
            return library
        real({target: wrap(write) for target, write in writers.items()}, force)

    checkpoints.atomic_write = masking
    sys.argv = ["ecacli", "export", "r18", "-o", sys.argv[1]]
    main()
    """
)


@pytest.mark.parametrize(("signum", "code", "line"), SIGNALS)
def test_a_stop_wins_over_the_error_a_library_turns_it_into(tmp_path, signum, code, line):
    target = tmp_path / "m.safetensors"
    process = subprocess.run([sys.executable, "-c", MASKED_BY_A_LIBRARY, str(target), str(int(signum))], capture_output=True, text=True, env=_env(), timeout=300)
    assert process.returncode == code and process.stderr == f"{line}\n", process.stderr
    assert list(tmp_path.iterdir()) == []
