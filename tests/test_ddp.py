"""Data-parallel profiling: DDP ranks on CPU with gloo through torch.distributed's own launcher.

The ranks are real processes started by the elastic launcher (spawn, c10d rendezvous on a free
local port); networks are tiny and steps few. Nothing asserts a duration: the figures are checked
for consistency with one another. Signals are sent on readiness (a progress line, the ranks'
processes existing), never after a fixed sleep.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ecacli.errors import UserError
from ecacli.profiling import ProfileConfig
from ecacli.profiling import distributed
from ecacli.profiling.distributed import DDPOptions, RankFailed, World, launch, run_rank, start_ranks
from ecacli.profiling.runner import usable_cores
from ecacli.spec import ResNetSpec

from conftest import ECACLI


TINY = ResNetSpec(name="tiny", layers=[1, 1, 1, 1], block="basic", width=8, num_classes=10, input_size=32)
TINY_YAML = "name: tiny\nlayers: [1, 1, 1, 1]\nblock: basic\nwidth: 8\nnum_classes: 10\ninput_size: 32\n"
STEPS = ("--batch", "2", "--warmup", "1", "--iters", "3", "--device", "cpu")
FAST = ProfileConfig(device="cpu", batch=2, warmup=1, iters=3, threads=1)
R18_ECA_PARAMS = 11_689_548
FAILING_RANK, FAILING_STEP = 1, 4


def failing_rank(entries, config, options):
    """`run_rank`, except that rank FAILING_RANK raises in its FAILING_STEP-th step (the others are then mid-job)."""
    if int(os.environ["RANK"]) == FAILING_RANK:
        real_step, calls = distributed.run_step, []

        def broken_step(*args, **kwargs):
            calls.append(None)
            if len(calls) == FAILING_STEP:
                raise RuntimeError(f"injected failure in rank {FAILING_RANK}")
            return real_step(*args, **kwargs)

        distributed.run_step = broken_step
    return run_rank(entries, config, options)


def crashing_rank(exit_code):
    """Rank 1 ends without a word (as a crash would); rank 0 would wait for a minute."""
    if int(os.environ["RANK"]) == 1:
        os._exit(exit_code)
    time.sleep(60)


@pytest.mark.ddp
@pytest.mark.slow
def test_two_ranks_through_the_launcher_report_consistent_figures(cli):
    result = cli("profile", "r18", "--input-size", "32", "--batch", "2", "--warmup", "1", "--iters", "3", "--device", "cpu", "--nproc", "2", "--baseline", "--json",
                 "--seconds", "3600", timeout=240)  # a budget never reached: the ranks agree after every round to go on
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["world_size"], data["nodes"], data["ranks_per_node"], data["backend"]) == (2, 1, 2, "gloo")
    assert data["threads"] == max(1, usable_cores() // 2)
    for figures in (data, data["baseline"]):
        assert [r["rank"] for r in figures["ranks"]] == [0, 1]
        step = figures["step_ms"]
        assert step["n"] == figures["communication_share"]["n"] == 3
        assert figures["images_per_s"] == pytest.approx(2 * 2 / (step["median"] / 1e3))
        assert figures["scaling_efficiency"] == pytest.approx(figures["images_per_s"] / (2 * figures["single_process"]["images_per_s"]))
        assert figures["single_process"]["step_ms"]["n"] == 3
        for rank in figures["ranks"]:
            assert rank["step_ms"]["median"] <= step["median"]
            assert rank["images_per_s"] == pytest.approx(2 / (rank["step_ms"]["median"] / 1e3))
            assert rank["sync_share"] == pytest.approx(1 - rank["no_sync_step_ms"]["median"] / rank["step_ms"]["median"])
            assert rank["peak_memory_bytes"] > figures["bucket_bytes"]
    assert data["bucket_bytes"] == 4 * R18_ECA_PARAMS
    assert data["peak_memory_bytes"] == data["state_bytes"] + data["step_peak_bytes"]
    assert data["baseline"]["attention"] == "none" and data["attention"] == "eca"
    assert data["overhead"]["n"] == 3
    assert "slowest rank" in data["communication_share_definition"] and "slower ranks" in data["sync_share_definition"]


@pytest.mark.ddp
@pytest.mark.slow
def test_a_failing_rank_ends_the_job_with_its_own_error():
    started = time.monotonic()
    with pytest.raises(RankFailed) as caught:
        start_ranks(failing_rank, ([("tiny", TINY)], FAST, DDPOptions(timeout_s=60)), 2, timeout_s=60)
    assert str(caught.value) == f"rank 1 of 2 on {socket.gethostname()} (cpu) failed: RuntimeError: injected failure in rank 1"
    assert caught.value.exit_code == 1
    assert time.monotonic() - started < 60, "the job waited for a timeout instead of ending with the failure"


@pytest.mark.ddp
@pytest.mark.slow
@pytest.mark.parametrize(("exit_code", "cause"), [(3, "it left no error report"), (130, "interrupted")])
def test_a_rank_that_exits_without_a_report_is_named(exit_code, cause):
    started = time.monotonic()
    with pytest.raises(RankFailed, match=f"^rank 1 of 2 failed \\(exit code {exit_code}\\): {cause}$"):
        start_ranks(crashing_rank, (exit_code,), 2, timeout_s=60)
    assert time.monotonic() - started < 50


@pytest.mark.parametrize(
    ("config", "options", "message"),
    [
        (ProfileConfig(device="cpu", mode="eval"), DDPOptions(), "--mode eval"),
        (ProfileConfig(device="cpu"), DDPOptions(sync_bn=True), "--sync-bn"),
        (ProfileConfig(device="cpu"), DDPOptions(bucket_cap_mb=0), "--bucket-cap-mb must be positive"),
        (ProfileConfig(device="cpu"), DDPOptions(timeout_s=-1), "--timeout must be"),
        (ProfileConfig(device="cpu", batch=0), DDPOptions(), "--batch must be"),
        pytest.param(ProfileConfig(device="cuda"), DDPOptions(), "finds no GPU|no CUDA support", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available")),
    ],
)
def test_requests_that_cannot_work_are_refused_before_any_rank_starts(config, options, message):
    with pytest.raises(UserError, match=message) as caught:
        launch([("tiny", TINY)], config, options, nproc=2)
    assert caught.value.exit_code == 2


def test_ddp_needs_torchrun_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UserError, match="torchrun"):
        World.from_environment()
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    with pytest.raises(UserError, match="under torchrun use --ddp"):
        launch([("tiny", TINY)], FAST, DDPOptions(), nproc=2)


@pytest.mark.ddp
@pytest.mark.slow
@pytest.mark.subprocess
def test_torchrun_ranks_print_one_report_from_rank_0(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_YAML)
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    result = subprocess.run([*torchrun, "-m", "ecacli", "profile", str(spec), "--ddp", *STEPS, "--static-graph", "--bucket-cap-mb", "1"], capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("ecacli profile --ddp") == 1
    assert "world         2 ranks (1 node x 2), gloo, DDP buckets 1 MB, static graph, timeout 300 s" in out
    for row in ("step (slowest rank)", "images/s, all ranks", "images/s, one process", "scaling efficiency", "communication share", "sync share"):
        assert row in out
    assert result.stderr.startswith("rank 0: warm-up 1/1\n") and "rank 0: timing 3/3\n" in result.stderr
    cells = [[cell.strip() for cell in line.strip("│").split("│")] for line in out.splitlines() if line.startswith("│")]
    assert [(row[1], row[3]) for row in cells if row[0] == "eca"] == [("0", "cpu"), ("1", "cpu")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--nproc", "2", "--mode", "eval"), "error: --mode eval: data-parallel profiling times training steps"),
        (("--bucket-cap-mb", "10", "--static-graph"), "error: --bucket-cap-mb, --static-graph apply only to data-parallel runs"),
        (("--ddp",), "error: --ddp runs as one rank of a job started by torchrun"),
        (("--ddp", "--nproc", "2"), "error: --ddp and --nproc"),
        (("--nproc", "0"), "error: --nproc must be a positive integer, got 0."),
        (("--nproc", "2", "--breakdown"), "error: --breakdown"),
    ],
)
def test_cli_refuses_bad_data_parallel_requests(cli, args, message):
    result = cli("profile", "r18", "--device", "cpu", *args)
    assert result.returncode == 2
    assert result.stderr.startswith(message), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def _session_processes(session: int) -> list[int]:
    """Processes of a session (Linux /proc): the launcher and every rank it started."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and int(fields[3]) == session:
            found.append(int(entry.name))
    return found


def _start_profile(tmp_path: Path, *options: str) -> subprocess.Popen:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_YAML)
    command = [str(ECACLI), "profile", str(spec), "--nproc", "2", "--batch", "2", "--iters", "100000", "--device", "cpu", *options]
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)


def _rank_processes(session: int) -> list[int]:
    """The ranks the launcher spawned in a session (multiprocessing's spawn_main processes)."""
    ranks = []
    for pid in _session_processes(session):
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                ranks.append(pid)
        except OSError:
            continue
    return ranks


def _wait_until_the_session_ends(session: int, limit_s: float = 30) -> None:
    """Wait for every process of `session` to exit, woken by each one's exit (a pidfd, not polling); fails naming one still running after `limit_s` seconds in all.

    A process listed after its exit is a zombie its parent has yet to reap: it runs nothing, so it counts as ended.
    """
    deadline = time.monotonic() + limit_s
    exited: set[int] = set()
    while running := [pid for pid in _session_processes(session) if pid not in exited]:
        for pid in running:
            try:
                handle = os.pidfd_open(pid)
            except ProcessLookupError:  # gone since it was listed
                exited.add(pid)
                continue
            try:
                readable, _, _ = select.select([handle], [], [], max(0.0, deadline - time.monotonic()))
            finally:
                os.close(handle)
            assert readable, f"process {pid} of the session still runs {limit_s:g} s after the job ended"
            exited.add(pid)


def _interrupt_and_check(launcher: subprocess.Popen, err_so_far: str = "") -> None:
    """Ctrl-C the whole session (as a terminal does); the job ends with one 'interrupted' line, exit 130, no process left."""
    os.killpg(launcher.pid, signal.SIGINT)
    _, err = launcher.communicate(timeout=120)
    err = err_so_far + err
    assert launcher.returncode == 130, err
    assert "Traceback" not in err and "Error" not in err, err
    assert err.splitlines()[-1] == "interrupted", err
    _wait_until_the_session_ends(launcher.pid)


def _first_round(launcher) -> list[str]:
    """The launcher's stderr lines up to rank 0's first timed round (the readiness signal)."""
    seen = []
    for line in launcher.stderr:
        seen.append(line)
        if line.startswith("rank 0: timing"):
            break
    assert seen and seen[-1].startswith("rank 0: timing"), "".join(seen)
    return seen


@pytest.mark.ddp
@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.skipif(not (Path("/proc/self/stat").exists() and hasattr(os, "pidfd_open")), reason="reads /proc, waits on pidfds")
def test_ctrl_c_tears_every_rank_down(tmp_path):
    launcher = _start_profile(tmp_path)
    seen = _first_round(launcher)
    _interrupt_and_check(launcher, "".join(seen))


@pytest.mark.ddp
@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.skipif(not (Path("/proc/self/stat").exists() and hasattr(os, "pidfd_open")), reason="reads /proc, waits on pidfds")
def test_sigterm_to_the_launcher_alone_stops_every_rank_with_143(tmp_path):
    launcher = _start_profile(tmp_path)
    seen = _first_round(launcher)
    launcher.send_signal(signal.SIGTERM)  # as a process manager does: to the launcher only, not its ranks
    _, err = launcher.communicate(timeout=120)
    err = "".join(seen) + err
    assert launcher.returncode == 143, err
    assert "Traceback" not in err and err.splitlines()[-1] == "terminated", err
    _wait_until_the_session_ends(launcher.pid)


@pytest.mark.ddp
@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.skipif(not (Path("/proc/self/stat").exists() and hasattr(os, "pidfd_open")), reason="reads /proc, waits on pidfds")
def test_ctrl_c_while_the_ranks_start_prints_no_traceback(tmp_path):
    launcher = _start_profile(tmp_path)
    deadline = time.monotonic() + 120
    while len(_rank_processes(launcher.pid)) < 2 and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # readiness: both ranks exist; they are still importing torch
    assert len(_rank_processes(launcher.pid)) == 2, "the ranks did not start"
    _interrupt_and_check(launcher)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--timeout", "nan"), "error: --timeout must be a positive number of seconds up to 86,400 (a day), got nan."),
        (("--timeout", "inf"), "error: --timeout must be a positive number of seconds up to 86,400 (a day), got inf."),
        (("--bucket-cap-mb", "nan"), "error: --bucket-cap-mb must be positive and at most 65,536 MB, got nan."),
        (("--batch", str(2**64)), "error: --batch must be a positive integer, got 18446744073709551616 (at most 65,536)."),
        (("--seconds", "nan"), "error: --seconds must be a positive number of seconds"),
    ],
)
def test_numbers_at_the_edges_are_refused_before_any_rank_starts(args, message, monkeypatch, capsys):
    from ecacli.cli import main

    monkeypatch.setattr(sys, "argv", ["ecacli", "profile", "r18", "--device", "cpu", "--nproc", "2", *args])
    with pytest.raises(SystemExit) as caught:
        main()
    assert caught.value.code == 2
    out, err = capsys.readouterr()
    assert err.startswith(message) and err.count("\n") == 1, err
    assert out == ""


def test_more_cpu_ranks_than_cores_are_refused():
    cores = usable_cores()
    with pytest.raises(UserError, match=f"this process may use {cores} CPU core"):
        launch([("tiny", TINY)], FAST, DDPOptions(), nproc=cores + 1)
