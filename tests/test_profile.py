"""`ecacli profile`: consistent fields and units, interleaving, FLOPs, memory, faults and exit codes.

Everything runs on CPU with a tiny network (batch 2, 32-64 px, a few steps); nothing asserts
a duration. A CUDA test runs only where CUDA exists.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from conftest import run_main
from ecacli.errors import UserError
from ecacli.models import build_model
from ecacli.profiling import OutOfMemory, ProfileConfig, Stats, count_flops, profile, runner, without_attention
from ecacli.layers import tail
from ecacli.profiling.breakdown import ATTENTION, FUSED, FUSED_PLAIN, PART_NAMES, PLAIN_BLOCK_OPS, attention_ranges, breakdown
from ecacli.profiling.device import CudaEventTimer, resolve_device
from ecacli.profiling.precision import MAX_SPREAD, MIN_SAMPLES, assess
from ecacli.profiling.report import prepare
from ecacli.spec import ResNetSpec

TINY = ResNetSpec(name="tiny", layers=[1, 1, 1, 1], block="basic", width=8, num_classes=10, input_size=32)
TINY_YAML = "name: tiny\nlayers: [1, 1, 1, 1]\nblock: basic\nwidth: 8\nnum_classes: 10\ninput_size: 32\n"
FAST = {"device": "cpu", "batch": 2, "warmup": 1, "iters": 3}


def tiny_report(**options):
    config = ProfileConfig(**{**FAST, **options})
    return profile([("model", TINY), ("plain", without_attention(TINY))], config), config


@pytest.fixture(scope="module")
def train_report():
    return tiny_report()


@pytest.fixture
def tiny_yaml(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_YAML)
    return path


# --- statistics -------------------------------------------------------------------------------


def test_stats_known_values():
    stats = Stats.of([5.0, 1.0, 4.0, 2.0, 3.0])
    assert stats == Stats(median=3.0, p10=1.4, p90=4.6, min=1.0, max=5.0, n=5)
    assert Stats.of([]) is None


@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1, max_size=50))
def test_stats_order(values):
    s = Stats.of(values)
    assert s.min <= s.p10 <= s.median <= s.p90 <= s.max and s.n == len(values)
    assert s.min == min(values) and s.max == max(values)


# --- precision ------------------------------------------------------------------------------


def test_a_tight_figure_over_enough_samples_is_trusted():
    verdict = assess("step time", Stats.of([100.0 + i * 0.1 for i in range(20)]))
    assert verdict.trusted and verdict.problems == () and verdict.advice is None
    assert verdict.note().startswith("step time: precise enough (20 samples, p10-p90 span 1.5% of the median")


def test_a_small_or_wide_sample_is_flagged_with_what_to_change():
    few = assess("step ratio", Stats.of([1.0, 1.01, 1.02]), more_samples="--iters")
    assert not few.trusted and few.problems == ("3 samples, under 10",) and few.advice == "Try more samples (a larger --iters)."
    wide = assess("step ratio", Stats.of([0.75, 1.25] * 10), more_samples="--seconds")
    assert wide.problems == ("p10-p90 span 50% of the median, over 10%",)
    assert wide.advice == "Try more samples (a larger --seconds), fewer threads (--threads 1 or 2) or an idle machine."
    assert "--threads" not in assess("step ratio", Stats.of([0.75, 1.25] * 10), cpu=False).advice
    assert wide.to_dict() | {"spread": 0.5} == {
        "figure": "step ratio", "samples": 20, "spread": 0.5, "trusted": False, "problems": ["p10-p90 span 50% of the median, over 10%"],
        "advice": wide.advice, "min_samples": MIN_SAMPLES, "max_spread": MAX_SPREAD,
    }


@given(st.lists(st.floats(min_value=1e-3, max_value=1e3), min_size=1, max_size=40))
def test_the_rule_trusts_exactly_enough_samples_with_a_narrow_span(values):
    stats = Stats.of(values)
    verdict = assess("x", stats)
    assert verdict.trusted == (stats.n >= MIN_SAMPLES and (stats.p90 - stats.p10) <= MAX_SPREAD * stats.median)
    assert verdict.trusted == (verdict.advice is None)


def test_a_report_states_the_precision_of_its_step_time_and_ratio(train_report):
    report, config = train_report
    verdicts = report.precision("model", "plain")
    assert set(verdicts) == {"step", "ratio"} and verdicts["ratio"].samples == config.iters
    assert not verdicts["ratio"].trusted and "a larger --iters" in verdicts["ratio"].advice  # 3 rounds, no budget
    assert set(report.precision("model")) == {"step"}


def test_the_first_warm_up_step_records_each_tail_path(train_report):
    report, _ = train_report
    assert report.model("model").tail_paths == {"fused": 4} and report.model("plain").tail_paths == {"module": 4}
    eval_report, _ = tiny_report(mode="eval")
    assert eval_report.model("model").tail_paths == {"module": 4}  # inference blocks this small take the module path


# --- what a report holds ----------------------------------------------------------------------


def test_phases_add_up_and_units_agree(train_report):
    report, config = train_report
    for m in report.models:
        assert m.step_ms.n == m.forward_ms.n == m.backward_ms.n == m.optimizer_ms.n == config.iters
        for sample in m.samples:
            assert math.isclose(sample["forward"] + sample["backward"] + sample["optimizer"], sample["step"], rel_tol=1e-9)
            assert sample["step"] >= sample["forward"] > 0
        assert m.step_ms.median >= m.forward_ms.median
        assert m.images_per_s == pytest.approx(config.batch / (m.step_ms.median / 1e3))
        assert m.achieved_flops_per_s == pytest.approx(m.flops_per_image * config.batch / (m.step_ms.median / 1e3))
        assert m.input_shape == [2, 3, 32, 32]
    assert [m.attention for m in report.models] == ["eca", "none"]
    assert not report.interrupted


def test_overhead_is_the_per_round_ratio(train_report):
    report, config = train_report
    eca, plain = report.model("model"), report.model("plain")
    ratio = report.ratio("model", "plain")
    expected = sorted(a["step"] / b["step"] for a, b in zip(eca.samples, plain.samples))
    assert ratio.n == config.iters and ratio.median == pytest.approx(expected[1])
    assert ratio.min == pytest.approx(expected[0]) and ratio.max == pytest.approx(expected[-1])


def _conv_linear_flops(model: nn.Module, inputs: torch.Tensor, kinds: tuple[type, ...] = (nn.Conv1d, nn.Conv2d, nn.Linear)) -> int:
    """2 x multiply-adds of every conv and linear layer, from the output shapes (independent of FlopCounterMode)."""
    total = 0

    def count(module, args, output):
        nonlocal total
        total += 2 * output.numel() * module.weight[0].numel()

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, kinds)]
    with torch.no_grad():
        model.eval()(inputs)
    for handle in handles:
        handle.remove()
    return total


@pytest.mark.parametrize("spec", [TINY, without_attention(TINY)], ids=["eca", "none"])
def test_forward_flops_match_layer_shapes(spec):
    config = ProfileConfig(batch=2, input_size=40)
    step, forward = count_flops(spec, config)
    model = build_model(spec)
    assert forward == _conv_linear_flops(model, torch.zeros(2, 3, 40, 40))
    # backward: input and weight gradients of every layer (each as costly as its forward),
    # except the input gradient of the stem conv, whose input needs none
    stem = _conv_linear_flops(model.conv1, torch.zeros(2, 3, 40, 40))
    plain_rule = 3 * forward - stem
    # ECA's 1-D convs: their backward (twice their forward) counts only where it runs as a convolution op
    gates = _conv_linear_flops(model, torch.zeros(2, 3, 40, 40), kinds=(nn.Conv1d,))
    assert plain_rule - 2 * gates <= step <= plain_rule
    if spec.attention.type == "none":
        assert gates == 0 and step == plain_rule
    assert count_flops(spec, ProfileConfig(batch=2, input_size=40, mode="eval")) == (forward, forward)


def test_memory_fields(train_report):
    report, _ = train_report
    for m in report.models:
        model = build_model(TINY if m.attention == "eca" else without_attention(TINY))
        param_bytes = sum(p.numel() * 4 for p in model.parameters())
        buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers())
        batch_bytes = 2 * 3 * 32 * 32 * 4 + 2 * 8
        # weights + SGD momentum + buffers + input + labels
        assert m.state_bytes == 2 * param_bytes + buffer_bytes + batch_bytes
        assert m.step_peak_bytes >= param_bytes  # the step allocates every gradient
        assert m.peak_memory_bytes == m.state_bytes + m.step_peak_bytes
    assert "CPU allocator" in report.header["memory_measure"]


def test_eval_mode_has_forward_only():
    report, config = tiny_report(mode="eval", dtype="bfloat16", channels_last=True)
    m = report.model("model")
    assert m.backward_ms is None and m.optimizer_ms is None
    assert [s["step"] for s in m.samples] == [s["forward"] for s in m.samples]
    assert m.flops_per_image == m.forward_flops_per_image
    assert report.header["memory_format"] == "channels_last" and report.header["autocast"] is True
    assert report.header["step"] == "forward under torch.inference_mode"


def test_interleaving_rotates_and_reports_progress():
    calls = []
    report = profile([("a", TINY), ("b", TINY)], ProfileConfig(**FAST), progress=lambda *args: calls.append(args))
    assert calls[-1] == ("timing", 6, 6) and ("warm-up", 2, 2) in calls
    assert runner.rotated([1, 2, 3], 1) == [2, 3, 1]
    assert report.header["warmup"] == 1 and report.header["order"].startswith("interleaved")


# --- faults -----------------------------------------------------------------------------------


def _failing_step(monkeypatch, fail_at: int, error: BaseException) -> None:
    real_step = runner.run_step
    calls = {"n": 0}

    def step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise error
        return real_step(*args, **kwargs)

    monkeypatch.setattr(runner, "run_step", step)


def test_ctrl_c_keeps_the_whole_steps_measured_so_far(monkeypatch):
    # 2 warm-up + 2 memory steps, then rounds (a b) (b a) (a ...: Ctrl-C on the 5th timed step
    _failing_step(monkeypatch, 4 + 5, KeyboardInterrupt())
    report, _ = tiny_report()
    assert report.interrupted
    assert report.model("model").step_ms.n == 2 and report.model("plain").step_ms.n == 2
    assert report.ratio("model", "plain").n == 2


def test_out_of_memory_names_the_batch(monkeypatch):
    _failing_step(monkeypatch, 1, torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    with pytest.raises(OutOfMemory, match=r"out of memory on cpu at --batch 2 .*Try --batch 1") as caught:
        tiny_report()
    assert caught.value.exit_code == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch": 0}, "--batch must be a positive integer, got 0"),
        ({"iters": -1}, "--iters must be a positive integer"),
        ({"warmup": 0}, "--warmup must be a positive integer"),
        ({"input_size": 4}, "--input-size must be between 8 and 2048"),
        ({"dtype": "float64"}, "--dtype 'float64' is not supported"),
        ({"mode": "test"}, "--mode 'test' is not supported"),
        ({"device": "gpu"}, "--device 'gpu' is not a device"),
        ({"device": "meta"}, "device type 'meta' is not supported"),
        ({"device": "cpu:1"}, "only one CPU device"),
        ({"batch": 1, "input_size": 8}, "cannot take input [1, 3, 8, 8]"),
    ],
)
def test_bad_requests_are_user_errors(options, message):
    with pytest.raises(UserError) as caught:
        prepare([("model", TINY)], ProfileConfig(**{**FAST, **options}))
    assert message in str(caught.value) and caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("cuda_build", "available", "count", "reason"),
    [
        (None, False, 0, "has no CUDA support; a GPU needs a CUDA build of torch"),
        ("12.4", False, 0, "(CUDA 12.4) supports CUDA but finds no GPU (torch.cuda.is_available() is False)"),
        ("12.4", True, 0, "(CUDA 12.4) supports CUDA but finds no GPU"),
    ],
    ids=["cpu-only build", "cuda build, no driver", "cuda build, no device"],
)
def test_cuda_missing_says_whether_torch_or_the_gpu_is_missing(monkeypatch, cuda_build, available, count, reason):
    monkeypatch.setattr(torch.version, "cuda", cuda_build)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    with pytest.raises(UserError) as caught:
        resolve_device("cuda")
    assert str(caught.value).startswith(f"--device 'cuda': the installed torch {torch.__version__}")
    assert reason in str(caught.value) and str(caught.value).endswith(" Use --device cpu.")


def test_cuda_event_timer_phases(monkeypatch):
    """The event timer's arithmetic, with events that tick 1.5 ms per record (no GPU needed)."""
    synced = []

    class FakeEvent:
        clock = 0.0

        def __init__(self, enable_timing: bool) -> None:
            assert enable_timing

        def record(self, stream) -> None:
            FakeEvent.clock += 1.5
            self.time = FakeEvent.clock

        def synchronize(self) -> None:
            synced.append(self)

        def elapsed_time(self, end: FakeEvent) -> float:
            return end.time - self.time

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: None)
    timer = CudaEventTimer(torch.device("cuda"))
    timer.begin()
    timer.mark("forward")
    timer.mark("backward")
    timer.mark("optimizer")
    assert timer.finish() == {"forward": 1.5, "backward": 1.5, "optimizer": 1.5, "step": 4.5}
    assert len(synced) == 1 and synced[0].time == 6.0  # one wait, on the last event


# --- breakdown --------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_breakdown_separates_attention(impl, monkeypatch):
    monkeypatch.setattr(tail, "FOLD_MIN_ELEMENTS", 0)  # the tiny model's blocks take the fused paths
    spec = ResNetSpec.model_validate({**TINY.model_dump(), "attention": {"type": "eca", "impl": impl}})
    config = ProfileConfig(**FAST)
    _, workloads, _ = prepare([("model", spec), ("plain", without_attention(spec))], config)
    mine, plain = breakdown(workloads[0], config, steps=1), breakdown(workloads[1], config, steps=1)
    assert sum(g.share for g in mine.groups) == pytest.approx(1.0)
    part = PART_NAMES[FUSED if impl == "fast" else ATTENTION]
    phases = {(g.phase, g.part) for g in mine.groups}
    assert {("forward", part), ("backward", part), ("optimizer", "other")} <= phases
    assert not {g.part for g in mine.groups} & {PART_NAMES[FUSED if impl == "reference" else ATTENTION]}
    assert 0 < mine.attention_share < 1 and plain.attention_share == 0
    if impl == "fast":  # the fused tails' BN, add and ReLU are a plain block's work: apart from ECA's
        assert {("forward", PART_NAMES[FUSED_PLAIN]), ("backward", PART_NAMES[FUSED_PLAIN])} <= phases and 0 < mine.plain_tail_share < 1
    else:
        assert mine.plain_tail_share == 0
    eca_ops = {name for name, share in ((o.name, o.attention_ms_per_step) for o in mine.ops) if share > 0}
    assert not eca_ops & PLAIN_BLOCK_OPS - {"aten::add", "aten::add_"}, eca_ops  # no BN or ReLU counted as ECA's (the module path's gate may add)
    assert mine.spec == spec.name


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_breakdown_ranges_leave_the_fast_path_and_the_last_conv_alone(training, monkeypatch):
    """The passive hooks keep fused tails fused; each fused tail marks its own ranges, its conv and shortcut outside them."""
    monkeypatch.setattr(tail, "FOLD_MIN_ELEMENTS", 0)
    model = build_model(TINY).train(training)
    paths = []
    choose = tail.choose_tail_path
    monkeypatch.setattr(tail, "choose_tail_path", lambda call: paths.append(choose(call)) or paths[-1])
    with attention_ranges(model), torch.profiler.profile() as prof, torch.set_grad_enabled(training):
        model(torch.zeros(2, 3, 32, 32))
    events = prof.events()
    names = [e.name for e in events]
    assert paths == [tail.TailPath.FUSED if training else tail.TailPath.FOLDED] * 4
    assert names.count("ecacli.attention") == 0 and names.count(tail.FUSED_RANGE) == 4  # one range a block, after its conv
    fused = [(e.time_range.start, e.time_range.end) for e in events if e.name == tail.FUSED_RANGE]
    convs = [e for e in events if e.name == "aten::conv2d"]  # the gate's conv1d runs inside the range
    assert convs and not any(low <= c.time_range.start < high for c in convs for low, high in fused)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_breakdown_ranges_mark_attention_called_as_a_module():
    spec = ResNetSpec.model_validate({**TINY.model_dump(), "attention": {"type": "se"}})
    model = build_model(spec)
    with attention_ranges(model), torch.profiler.profile() as prof:
        model(torch.zeros(2, 3, 32, 32))
    assert [e.name for e in prof.events()].count("ecacli.attention") == 4
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


# --- the command ------------------------------------------------------------------------------


def test_cli_json_with_baseline(cli, tiny_yaml):
    result = cli("profile", str(tiny_yaml), "--device", "cpu", "--batch", "2", "--warmup", "1", "--iters", "2", "--baseline", "--breakdown", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    for key in ("device_name", "torch_version", "cuda_version", "cudnn_version", "dtype", "memory_format", "threads", "spec", "input_shape"):
        assert key in data
    assert data["input_shape"] == [2, 3, 32, 32] and data["interrupted"] is False
    assert data["step_ms"]["median"] >= data["forward_ms"]["median"] and data["step_ms"]["n"] == 2
    assert data["images_per_s"] == pytest.approx(2 / (data["step_ms"]["median"] / 1e3))
    assert data["peak_memory_bytes"] > 0 and data["flops_per_image"] > data["forward_flops_per_image"] > 0
    assert data["baseline"]["attention"] == "none" and data["overhead"]["n"] == 2
    assert data["overhead"]["min"] <= data["overhead"]["median"] <= data["overhead"]["max"]
    assert 0 < data["breakdown"]["attention_share"] < 1 and 0 < data["breakdown"]["plain_tail_share"] < 1
    assert data["tail_paths"] == {"fused": 4} and data["baseline"]["tail_paths"] == {"module": 4}
    assert data["precision"]["ratio"]["samples"] == 2 and data["precision"]["ratio"]["trusted"] is False
    assert data["precision"]["ratio"]["problems"][0] == "2 samples, under 10" and "--iters" in data["precision"]["ratio"]["advice"]
    assert result.stderr == ""


def test_python_m_table(tiny_yaml):
    result = subprocess.run(
        [sys.executable, "-m", "ecacli", "profile", str(tiny_yaml), "--device", "cpu", "--batch", "2", "--warmup", "1", "--iters", "2", "--mode", "eval", "--threads", "1"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "forward" in result.stdout and "images/s" in result.stdout and "backward" not in result.stdout
    assert "1 CPU threads" in result.stdout and "torch " + torch.__version__ in result.stdout
    assert "tail          module (4 blocks), in the first warm-up step" in result.stdout
    assert "Precision, step time: not precise (2 samples, under 10" in result.stdout and "a larger --iters" in result.stdout
    assert "\x1b[" not in result.stderr  # no progress bar when stderr is not a terminal


@pytest.mark.parametrize(
    ("args", "batch", "warmup", "iters", "seconds"),
    [
        (["--device", "cpu"], 8, 5, 20, 50.0),  # about a minute for R-50 on a CPU
        (["--device", "cpu", "--iters", "7"], 8, 5, 7, None),  # steps asked for: no budget cuts them
        (["--device", "cpu", "--seconds", "9", "--batch", "4"], 4, 5, 20, 9.0),
    ],
)
def test_cpu_defaults_are_smaller_unless_given(monkeypatch, args, batch, warmup, iters, seconds):
    import ecacli.profiling

    seen = []

    def stop(entries, config, progress=None, with_breakdown=False):
        seen.append(config)
        raise UserError("measured nothing")

    monkeypatch.setattr(ecacli.profiling, "profile", stop)
    assert run_main("profile", "r50", *args)[0] == 2
    assert (seen[0].batch, seen[0].warmup, seen[0].iters, seen[0].seconds) == (batch, warmup, iters, seconds)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--device", "cuda"], "--device 'cuda': the installed torch", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA exists")),
        (["--device", "cpu", "--baseline", "--set", "attention.type=none"], "has no attention already"),
        (["--device", "tpu"], "is not a device"),
        (["--batch", "0"], "--batch must be a positive integer"),
        (["--batch", "1", "--input-size", "8", "--device", "cpu"], "cannot take input"),
    ],
)
def test_cli_bad_input_exits_2(cli, args, message):
    result = cli("profile", "r18", *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_cli_ctrl_c_prints_partial_and_exits_130(monkeypatch, capsys, tiny_yaml):
    from ecacli.cli import main

    _failing_step(monkeypatch, 2 + 3, KeyboardInterrupt())  # 1 warm-up + 1 memory step, then the 3rd timed step
    monkeypatch.setattr(sys, "argv", ["ecacli", "profile", str(tiny_yaml), "--device", "cpu", "--batch", "2", "--warmup", "1", "--iters", "5", "--json"])
    with pytest.raises(SystemExit) as caught:
        main()
    assert caught.value.code == 130
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert data["interrupted"] is True and data["step_ms"]["n"] == 2
    assert err == "interrupted\n"


def test_cli_out_of_memory_exits_1(monkeypatch, capsys, tiny_yaml):
    from ecacli.cli import main

    _failing_step(monkeypatch, 1, torch.cuda.OutOfMemoryError("CUDA out of memory."))
    monkeypatch.setattr(sys, "argv", ["ecacli", "profile", str(tiny_yaml), "--device", "cpu", "--batch", "4"])
    with pytest.raises(SystemExit) as caught:
        main()
    assert caught.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory on cpu at --batch 4") and "--batch 2" in err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_profile_uses_events_and_allocator_peak():
    report, _ = tiny_report(device="cuda")
    assert report.header["timer"].startswith("CUDA events") and report.header["cudnn_version"]
    for m in report.models:
        assert m.step_ms.n == 3 and m.step_peak_bytes > 0 and m.peak_memory_bytes > m.state_bytes
