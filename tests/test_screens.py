"""Every screen fits an 80-column terminal and shows every number whole (also at 120 columns).

Commands run through `main()` in this process with COLUMNS set, as a terminal of that width
would; the profile and data-parallel tables are rendered from reports built here.
"""

from __future__ import annotations

import re

import pytest
from rich.cells import cell_len

from conftest import run_main
from ecacli.cli.common import fmt_bytes, fmt_int
from ecacli.profiling import ModelProfile, ProfileReport, Stats
from ecacli.profiling.breakdown import Breakdown, GroupRow, OpRow
from ecacli.profiling.distributed import DataParallelProfile, DataParallelReport, RankFigures
from ecacli.reports.compare import compare_specs
from ecacli.reports.summary import summarize
from ecacli.spec_loader import load_spec

WIDTHS = [80, 120]
COMPARED = ["resnet50", "r50_k3557", "ceca_r50", "se_r50", "cbam_r50"]


def assert_fits(text: str, width: int, numbers: list[str]) -> None:
    """No line wider than `width`, nothing cut with an ellipsis, and every number present whole."""
    wide = [(i, cell_len(line)) for i, line in enumerate(text.splitlines(), 1) if cell_len(line) > width]
    assert not wide, f"lines wider than {width}: {wide[:5]}\n{text}"
    assert "…" not in text
    tokens = set(re.split(r"[\s│┃]+", text))
    missing = [n for n in numbers if n not in tokens]
    assert not missing, f"numbers not shown whole: {missing[:10]}\n{text}"


def screen(monkeypatch, width: int, *argv: str) -> str:
    monkeypatch.setenv("COLUMNS", str(width))
    code, out, err = run_main(*argv)
    assert code == 0, err
    return out


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize(("spec", "options"), [("r50", ["--depth", "3"]), ("seed_r50", ["--depth", "2"]), ("r152", ["--depth", "2", "--batch", "65536", "--input-size", "2048"])])
def test_summary(monkeypatch, width, spec, options):
    out = screen(monkeypatch, width, "summary", spec, *options)
    batch = int(options[options.index("--batch") + 1]) if "--batch" in options else 1
    size = int(options[options.index("--input-size") + 1]) if "--input-size" in options else None
    report = summarize(load_spec(spec), batch, size, int(options[1]))
    numbers = [fmt_int(report.total_params), fmt_int(report.mult_adds)]
    for row in report.layers:
        numbers.append("x".join(map(str, row.output_shape)))
        numbers += [fmt_int(value) for value in (row.params, row.mult_adds) if value]
    assert_fits(out, width, numbers)
    if width == 120 and spec == "r50":
        assert "ECA k" in out and "BatchNorm2d" in out  # full labels where they fit


@pytest.mark.parametrize("width", WIDTHS)
def test_compare(monkeypatch, width):
    out = screen(monkeypatch, width, "compare", *COMPARED)
    rows = compare_specs([load_spec(name) for name in COMPARED])
    numbers = [n for r in rows for n in (f"{r.total_params:,}", f"{r.delta_params:+,}", f"{r.attention_params:,}", f"{r.mult_adds_per_image / 1e9:.3f}", f"{r.delta_mult_adds_pct:+.4f}")]
    assert_fits(out, width, numbers + ["77.48"])


@pytest.mark.parametrize("width", WIDTHS)
def test_compare_with_measured_timings(monkeypatch, capsys, width):
    from ecacli.cli.compare import _render

    rows = compare_specs([load_spec(name) for name in COMPARED])
    for i, row in enumerate(rows):
        row.measured = {"device": "cuda:0", "batch": 256, "forward_ms": 123.4 + i, "step_ms": 1234.5 + i, "step_ratio_to_first": 1.0 + i / 100,
                        "step_ratio_p10": 0.99, "step_ratio_p90": 1.125, "images_per_s": 12345.6, "peak_memory_bytes": 23_456_789_012}
    monkeypatch.setenv("COLUMNS", str(width))
    _render(rows, time=True, overrides=[])
    out = capsys.readouterr().out
    assert_fits(out, width, ["25,557,032", "28,088,024", "+2,530,992", "1234.5", "1238.5", "1.040", "(0.990-1.125)", "12,345.6", "23,456.8"])


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("argv", [["ksize"], ["ksize", "--channels", "1", "4294967296"], ["ksize", "4294967296", "--gamma", "0.05", "--b", "64"], ["ksize", "--spec", "r152_k3357"], ["specs"]], ids=" ".join)
def test_ksize_and_specs(monkeypatch, width, argv):
    out = screen(monkeypatch, width, *argv)
    numbers = {"ksize": ["2,048", "526,464", "127"], "specs": []}[argv[0]] if len(argv) == 1 else []
    if "4294967296" in argv and "--channels" not in argv:
        numbers = ["4,294,967,296", "2,305,843,013,777,096,704", "1921"]
    if "--spec" in argv:
        numbers = ["2,048", "512"]
    assert_fits(out, width, numbers)


def _stats(median: float) -> Stats:
    return Stats(median=median, p10=median * 0.9, p90=median * 1.25, min=median * 0.8, max=median * 1.5, n=20)


def _model(label: str, attention: str) -> ModelProfile:
    return ModelProfile(
        label=label, spec="r152_k3357", attention=attention, input_shape=[256, 3, 224, 224], forward_ms=_stats(1234.56), backward_ms=_stats(2345.67),
        optimizer_ms=_stats(45.67), step_ms=_stats(3625.9), images_per_s=70.6, flops_per_image=34_567_890_123, forward_flops_per_image=11_522_630_041,
        achieved_flops_per_s=2.44e12, peak_memory_bytes=123_456_789_012, state_bytes=1_234_567_890, step_peak_bytes=122_222_221_122, compile_s=None,
        warmup_steps=5, samples=[{"forward": 1234.56, "backward": 2345.67, "optimizer": 45.67, "step": 3625.9}] * 3,
    )


HEADER = {
    "device": "cuda:0", "device_name": "NVIDIA H200", "threads": 16, "torch_version": "2.14.1+cu130", "cuda_version": "13.0", "cudnn_version": 91000,
    "python_version": "3.11.7", "platform": "Linux-6.8.0-x86_64-with-glibc2.39", "spec": "r152_k3357", "input_shape": [256, 3, 224, 224], "dtype": "bfloat16",
    "autocast": True, "memory_format": "channels_last", "compile": True, "cudnn_benchmark": True, "tf32_matmul": True, "tf32_cudnn": True, "mode": "train",
    "step": "forward + cross-entropy, backward, SGD step (momentum 0.9)", "timer": "CUDA events", "warmup": 5, "iters": 20, "seconds": 30.0, "seed": 0,
    "memory_measure": "torch.cuda.max_memory_allocated after a reset",
}
STEP_NUMBERS = ["1234.56", "(1111.10", "1543.20)", "3625.90", "123.46", "70.6"]


@pytest.mark.parametrize("width", WIDTHS)
def test_profile_tables(monkeypatch, capsys, width):
    from ecacli.cli.profile import _render

    breakdown = Breakdown(
        spec="r152_k3357", steps=3, clock="CUDA time per kernel", total_ms_per_step=3625.9,
        groups=[GroupRow("forward", "attention", 123.45, 0.034), GroupRow("outside the phases", "other", 3502.45, 0.966)],
        ops=[OpRow("aten::cudnn_convolution_backward_weight_with_a_very_long_name", 1234.56, 0.34, 12.34), OpRow("aten::mm", 2.5, 0.001, 0.0)],
    )
    report = ProfileReport(HEADER, [_model("model", "eca"), _model("plain", "none")], breakdown=breakdown)
    report.models[0].tail_paths = {"fused": 13, "module": 3}
    monkeypatch.setenv("COLUMNS", str(width))
    _render(report, baseline=True)
    out = capsys.readouterr().out
    assert "fused 13, module 3 (16 blocks)" in " ".join(out.replace("│", " ").split())
    assert_fits(out, width, STEP_NUMBERS + ["123.46", "1.000x", "123.45", "3502.45", "1234.56", "34.0%", "12.34", fmt_bytes(123_456_789_012).split()[0]])


@pytest.mark.parametrize("width", WIDTHS)
def test_data_parallel_tables(monkeypatch, capsys, width):
    from ecacli.cli.profile import _render_ddp

    ranks = [RankFigures(rank, "gpu-node-0017.cluster.example", f"cuda:{rank}", _stats(3625.9), _stats(3100.25), 0.145, 70.6, 123_456_789_012) for rank in range(8)]
    profiles = [
        DataParallelProfile(label, 8, _model(label, attention), _stats(3625.9), 564.8, 1.95e13, _stats(0.135), _model(label, attention), 0.9876, 102_345_678, ranks, [3625.9] * 3)
        for label, attention in (("model", "eca"), ("plain", "none"))
    ]
    header = {**HEADER, "world_size": 8, "nodes": 1, "ranks_per_node": 8, "backend": "nccl",
              "ddp": {"bucket_cap_mb": 25.0, "static_graph": True, "gradient_as_bucket_view": True, "sync_bn": True, "timeout_s": 300.0},
              **{f"{key}_definition": "defined" for key in ("data_parallel_step", "single_process", "communication_share", "sync_share", "peak_memory")}}
    monkeypatch.setenv("COLUMNS", str(width))
    _render_ddp(DataParallelReport(header, profiles), baseline=True)
    out = capsys.readouterr().out
    assert_fits(out, width, ["3625.90", "(3263.31", "4532.38)", "564.8", "98.8%", "13.5%", "14.5%", "3100.25", "70.6", "7"])
