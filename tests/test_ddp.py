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
import time

import pytest
import torch

from ecacli.errors import UserError
from ecacli.profiling import ProfileConfig
from ecacli.profiling import distributed
from ecacli.profiling.distributed import DDPOptions, RankFailed, World, launch, run_rank, start_ranks
from ecacli.spec import ResNetSpec


TINY = ResNetSpec(name="tiny", layers=[1, 1, 1, 1], block="basic", width=8, num_classes=10, input_size=32)
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
