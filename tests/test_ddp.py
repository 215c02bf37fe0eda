"""Data-parallel profiling: DDP ranks on CPU with gloo through torch.distributed's own launcher.

The ranks are real processes started by the elastic launcher (spawn, c10d rendezvous on a free
local port); networks are tiny and steps few. Nothing asserts a duration: the figures are checked
for consistency with one another.
"""

from __future__ import annotations

import json
import os
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


def test_two_ranks_through_the_launcher_report_consistent_figures(cli):
    result = cli("profile", "r18", "--input-size", "32", "--batch", "2", "--warmup", "1", "--iters", "3", "--device", "cpu", "--nproc", "2", "--baseline", "--json", timeout=240)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["world_size"], data["nodes"], data["ranks_per_node"], data["backend"]) == (2, 1, 2, "gloo")
    assert data["threads"] == max(1, (os.cpu_count() or 1) // 2)
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
            assert rank["communication_share"] == pytest.approx(1 - rank["no_sync_step_ms"]["median"] / rank["step_ms"]["median"])
            assert rank["peak_memory_bytes"] > figures["bucket_bytes"]
    assert data["bucket_bytes"] == 4 * R18_ECA_PARAMS
    assert data["peak_memory_bytes"] == data["state_bytes"] + data["step_peak_bytes"]
    assert data["baseline"]["attention"] == "none" and data["attention"] == "eca"
    assert data["overhead"]["n"] == 3


def test_a_failing_rank_ends_the_job_with_its_own_error():
    started = time.monotonic()
    with pytest.raises(RankFailed) as caught:
        start_ranks(failing_rank, ([("tiny", TINY)], FAST, DDPOptions(timeout_s=60)), 2, timeout_s=60)
    assert str(caught.value) == f"rank 1 of 2 on {socket.gethostname()} (cpu) failed: RuntimeError: injected failure in rank 1"
    assert caught.value.exit_code == 1
    assert time.monotonic() - started < 60, "the job waited for a timeout instead of ending with the failure"


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
        pytest.param(ProfileConfig(device="cuda"), DDPOptions(), "CUDA is not available", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available")),
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
    for row in ("step (slowest rank)", "images/s, all ranks", "images/s, one process", "scaling efficiency", "communication share"):
        assert row in out
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


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_ctrl_c_tears_every_rank_down(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_YAML)
    launcher = subprocess.Popen([str(ECACLI), "profile", str(spec), "--nproc", "2", "--batch", "2", "--iters", "100000", "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while len(_session_processes(launcher.pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(_session_processes(launcher.pid)) >= 3, "the ranks did not start"
    time.sleep(3)
    os.killpg(launcher.pid, signal.SIGINT)
    _, err = launcher.communicate(timeout=60)
    assert launcher.returncode == 130, err
    assert "Traceback" not in err, err
    deadline = time.monotonic() + 10
    while _session_processes(launcher.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _session_processes(launcher.pid) == []
