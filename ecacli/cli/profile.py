"""`ecacli profile`: time a spec's model on a device (optionally against its plain twin) and render the result."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from ecacli.cli.common import (
    JsonOption,
    ProgressLines,
    SetOption,
    TableSpec,
    console,
    fmt_bytes,
    load_spec_arg,
    only_with,
    print_json,
    print_table,
    progress_callback,
)
from ecacli.errors import Interrupted, UserError
from ecacli.reports.compare import IMPRECISE_MARK

if TYPE_CHECKING:
    from ecacli.profiling import ModelProfile, ProfileReport, Stats
    from ecacli.profiling.breakdown import Breakdown
    from ecacli.profiling.distributed import DataParallelReport
    from ecacli.profiling.precision import Precision

DEFAULT_SPEC = "r50"
BATCH, WARMUP, ITERS = 32, 5, 20
CPU_BATCH, CPU_SECONDS = 8, 50.0
"""On a CPU, `ecacli profile` with no --batch, --seconds, --warmup or --iters takes about a minute for R-50."""
MODEL_LABEL, BASELINE_LABEL = "model", "plain"
PHASES = ("forward", "backward", "optimizer", "step")


def profile(
    spec: Annotated[str, typer.Argument(metavar="SPEC", help="Spec YAML file or preset name (see `ecacli specs`).")] = DEFAULT_SPEC,
    device: Annotated[str, typer.Option(metavar="DEVICE", help="cpu, cuda, cuda:N, mps, or auto (CUDA, MPS, CPU).")] = "auto",
    batch: Annotated[int | None, typer.Option(metavar="N", help=f"Images per step (default {BATCH}; {CPU_BATCH} on CPU).", show_default=False)] = None,
    input_size: Annotated[int | None, typer.Option(metavar="PX", help="Input side in pixels (default: the spec's).", show_default=False)] = None,
    dtype: Annotated[str, typer.Option(metavar="DTYPE", help="float32, or bfloat16 / float16 under autocast.")] = "float32",
    channels_last: Annotated[bool, typer.Option("--channels-last", help="Model and input in channels_last.")] = False,
    compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile the model (compile time apart).")] = False,
    mode: Annotated[str, typer.Option(metavar="MODE", help="train (forward, backward, SGD step) or eval.")] = "train",
    warmup: Annotated[int | None, typer.Option(metavar="N", help=f"Untimed steps per model, at most (default {WARMUP}).", show_default=False)] = None,
    iters: Annotated[int | None, typer.Option(metavar="N", help=f"Timed steps per model, at most (default {ITERS}).", show_default=False)] = None,
    seconds: Annotated[float | None, typer.Option(metavar="S", help=f"Time budget (default: none; on CPU {CPU_SECONDS:g} s unless --warmup or --iters is given).", show_default=False)] = None,
    seed: Annotated[int, typer.Option(metavar="N", help="Seed for weights, input and labels.")] = 0,
    threads: Annotated[int | None, typer.Option(metavar="N", help="CPU threads (default: torch's choice).", show_default=False)] = None,
    cudnn_benchmark: Annotated[bool, typer.Option("--cudnn-benchmark", help="CUDA: torch.backends.cudnn.benchmark.")] = False,
    baseline: Annotated[bool, typer.Option("--baseline", help="Also time the plain twin (no attention), interleaved.")] = False,
    show_breakdown: Annotated[bool, typer.Option("--breakdown", help="Then show where the step's time goes.")] = False,
    ddp: Annotated[bool, typer.Option("--ddp", help="Run as one rank of a torchrun job (DDP steps).")] = False,
    nproc: Annotated[int | None, typer.Option(metavar="N", help="Start N DDP ranks on this machine.", show_default=False)] = None,
    bucket_cap_mb: Annotated[float | None, typer.Option(metavar="MB", help="DDP gradient bucket size (default 25).", show_default=False)] = None,
    static_graph: Annotated[bool, typer.Option("--static-graph", help="DDP static_graph=True.")] = False,
    gradient_as_bucket_view: Annotated[bool, typer.Option("--gradient-as-bucket-view", help="DDP gradient_as_bucket_view=True.")] = False,
    sync_bn: Annotated[bool, typer.Option("--sync-bn", help="DDP: SyncBatchNorm (GPUs only).")] = False,
    timeout: Annotated[float | None, typer.Option(metavar="S", help="DDP: seconds a collective may wait (default 300).", show_default=False)] = None,
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Time a spec's model: step times, images/s, FLOPs, peak memory.

    Forward, backward and optimizer step are timed separately, interleaved with the plain twin
    under --baseline (the ECA overhead). Every figure is a median with its p10-p90 spread; one
    measured over too few steps or with too wide a spread is flagged with what to change. On a
    CPU the defaults are smaller (see --batch and --seconds), so a run takes about a minute.
    """
    model_spec = load_spec_arg(spec, overrides)
    from ecacli.profiling import ProfileConfig, without_attention
    from ecacli.profiling import profile as run_profile
    from ecacli.profiling.device import default_device

    device = default_device() if device == "auto" else device
    on_cpu = device.partition(":")[0] == "cpu"
    if on_cpu and seconds is None and warmup is None and iters is None:
        seconds = CPU_SECONDS
    config = ProfileConfig(
        device=device,
        batch=batch if batch is not None else CPU_BATCH if on_cpu else BATCH,
        input_size=input_size,
        dtype=dtype,
        channels_last=channels_last,
        compile=compile_model,
        mode=mode,  # type: ignore[arg-type]
        warmup=WARMUP if warmup is None else warmup,
        iters=ITERS if iters is None else iters,
        seed=seed,
        threads=threads,
        cudnn_benchmark=cudnn_benchmark,
        seconds=seconds,
    )
    entries = [(MODEL_LABEL, model_spec)]
    if baseline:
        if model_spec.attention.type == "none":
            raise UserError(f"--baseline times the spec again with attention.type none, but '{model_spec.name}' has no attention already; drop --baseline.")
        entries.append((BASELINE_LABEL, without_attention(model_spec)))
    from ecacli.profiling.distributed import DDPOptions, profile_data_parallel

    given = {"bucket_cap_mb": bucket_cap_mb, "timeout_s": timeout}
    options = DDPOptions(static_graph=static_graph, gradient_as_bucket_view=gradient_as_bucket_view, sync_bn=sync_bn, **{k: v for k, v in given.items() if v is not None})
    if ddp or nproc is not None:
        if show_breakdown:
            raise UserError("--breakdown profiles one process; drop it with --ddp or --nproc.")
        progress = None if as_json else ProgressLines(prefix="rank 0: ")
        ddp_report = profile_data_parallel(entries, config, options, ddp, nproc, progress)
        if ddp_report is not None:
            print_json(ddp_json_report(ddp_report, baseline)) if as_json else _render_ddp(ddp_report, baseline)
        return
    if options.changed_flags():
        raise UserError(f"{only_with(options.changed_flags(), 'data-parallel runs')}; add --nproc N, or --ddp under torchrun.")
    with progress_callback(enabled=not as_json) as progress:
        report = run_profile(entries, config, progress, with_breakdown=show_breakdown)
    if as_json:
        print_json(json_report(report, baseline))
    else:
        _render(report, baseline)
    if report.interrupted:
        raise Interrupted()


def json_report(report: ProfileReport, baseline: bool) -> dict[str, Any]:
    """The profiled model's figures at the top level beside the header; the plain twin and overhead with --baseline."""
    data: dict[str, Any] = {**report.header, "interrupted": report.interrupted, **report.model(MODEL_LABEL).to_dict()}
    if baseline:
        data["baseline"] = report.model(BASELINE_LABEL).to_dict()
        for phase, key in (("step", "overhead"), ("forward", "overhead_forward"), ("backward", "overhead_backward")):
            ratio = report.ratio(MODEL_LABEL, BASELINE_LABEL, phase)
            data[key] = ratio.to_dict() if ratio else None
    if report.breakdown is not None:
        data["breakdown"] = report.breakdown.to_dict()
    data["precision"] = {key: p.to_dict() for key, p in _precision(report, baseline).items()}
    return data


def _precision(report: ProfileReport, baseline: bool) -> dict[str, Precision]:
    """The rule's verdict on the figures a reader takes away: the step time and, with --baseline, the ECA / plain ratio."""
    return report.precision(MODEL_LABEL, BASELINE_LABEL if baseline else None)


def _fmt_ms(stats: Stats | None, stacked: bool = False) -> str:
    if stats is None:
        return "-"
    return f"{stats.median:.2f} ms" + ("\n" if stacked else "  ") + f"({stats.p10:.2f} - {stats.p90:.2f})"


def _fmt_ratio(stats: Stats | None, stacked: bool = False) -> str:
    if stats is None:
        return "-"
    return f"{stats.median:.3f}x" + ("\n" if stacked else "  ") + f"({stats.p10:.3f} - {stats.p90:.3f})"


def _fmt_share(stats: Stats, stacked: bool = False) -> str:
    return f"{stats.median:.1%}" + ("\n" if stacked else "  ") + f"({stats.p10:.1%} - {stats.p90:.1%})"


def _fmt_rate(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.2f} {unit}"


def tail_text(paths: dict[str, int]) -> str:
    """'fused (16 blocks)', or 'fused 13, module 3 (16 blocks)': block calls per tail path."""
    total = sum(paths.values())
    counts = next(iter(paths)) if len(paths) == 1 else ", ".join(f"{path} {n}" for path, n in sorted(paths.items(), key=lambda item: -item[1]))
    return f"{counts} ({total} block{'s' if total != 1 else ''})"


def _header_rows(report: ProfileReport | DataParallelReport, warmup_steps: int, timed_steps: int, tail_paths: dict[str, int] | None = None) -> list[tuple[str, str]]:
    h = report.header
    versions = f"torch {h['torch_version']}" + (f", CUDA {h['cuda_version']}" if h["cuda_version"] else "") + (f", cuDNN {h['cudnn_version']}" if h["cudnn_version"] else "")
    cuda = f"; cudnn.benchmark {h['cudnn_benchmark']}, TF32 matmul {h['tf32_matmul']}, TF32 cuDNN {h['tf32_cudnn']}" if h["cudnn_version"] else ""
    budget = f" (time budget {h['seconds']:g} s)" if h.get("seconds") else ""
    return [
        ("device", f"{h['device']} ({h['device_name']}), {h['threads']} CPU threads"),
        ("versions", f"{versions}, Python {h['python_version']}, {h['platform']}"),
        ("spec", f"{h['spec']}, input {h['input_shape']}, {h['dtype']}{' (autocast)' if h['autocast'] else ''}, {h['memory_format']}{', torch.compile' if h['compile'] else ''}{cuda}"),
        ("step", f"{h['mode']}: {h['step']}"),
        ("timing", f"{h['timer']}; {warmup_steps} warm-up + {timed_steps} timed steps per model{budget}, seed {h['seed']}"),
    ] + ([("tail", f"{tail_text(tail_paths)}, in the first warm-up step")] if tail_paths is not None else [])


def _header_panel(rows: list[tuple[str, str]], title: str) -> Any:
    """The header as a two-column grid in a panel: a long value wraps under itself, not under the keys."""
    from rich.panel import Panel
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(no_wrap=True, min_width=12)
    grid.add_column(overflow="fold")
    for key, value in rows:
        grid.add_row(key, value)
    return Panel(grid, title=title, expand=False)


def _model_rows(m: ModelProfile, stacked: bool) -> list[tuple[str, str]]:
    rows = [(phase, _fmt_ms(getattr(m, f"{phase}_ms"), stacked)) for phase in PHASES if getattr(m, f"{phase}_ms") is not None]
    rows += [
        ("timed steps", str(m.step_ms.n if m.step_ms else 0)),
        ("images/s", f"{m.images_per_s:,.1f}" if m.images_per_s else "-"),
        ("FLOPs/image", _fmt_rate(m.flops_per_image, "FLOP")),
        ("achieved", _fmt_rate(m.achieved_flops_per_s, "FLOP/s")),
        ("peak memory", fmt_bytes(m.peak_memory_bytes) if m.peak_memory_bytes is not None else "not measured"),
        ("  resident", fmt_bytes(m.state_bytes)),
        ("  step peak", fmt_bytes(m.step_peak_bytes) if m.step_peak_bytes is not None else "not measured"),
    ]
    if m.compile_s is not None:
        rows.append(("compile (1st step)", f"{m.compile_s:.1f} s"))
    return rows


def _steps_table(report: ProfileReport, baseline: bool, stacked: bool) -> TableSpec:
    labels = [MODEL_LABEL] + ([BASELINE_LABEL] if baseline else [])
    headers = [""] + [f"{report.model(label).spec} ({report.model(label).attention})" for label in labels]
    if baseline:
        headers.append(f"{report.model(MODEL_LABEL).attention} / none,{chr(10) if stacked else ' '}per round")
    columns = [_model_rows(report.model(label), stacked) for label in labels]
    imprecise = {key: not p.trusted for key, p in _precision(report, baseline).items()}
    rows = []
    for i, (name, _) in enumerate(columns[0]):
        cells = [name] + [rows_of[i][1] for rows_of in columns]
        if baseline:
            ratio = _fmt_ratio(report.ratio(MODEL_LABEL, BASELINE_LABEL, name), stacked) if name in PHASES else ""
            cells.append(ratio.replace("x", "x" + IMPRECISE_MARK, 1) if name == "step" and imprecise.get("ratio") else ratio)
        rows.append(cells)
    return TableSpec("median (p10 - p90) per step", headers, rows, [False] + [True] * (len(headers) - 1))


def _render(report: ProfileReport, baseline: bool) -> None:
    from rich.text import Text

    out = console()
    first = report.models[0]
    out.print(_header_panel(_header_rows(report, first.warmup_steps, first.step_ms.n if first.step_ms else 0, first.tail_paths or None), "ecacli profile"))
    print_table(out, _steps_table(report, baseline, stacked=False), _steps_table(report, baseline, stacked=True))
    out.print("FLOPs: torch.utils.flop_counter (2 per multiply-add, convolutions and matmuls only); achieved = FLOPs per step / median step time.")
    out.print(f"Peak memory: resident tensors (weights, buffers, optimizer state, batch) + the step's peak: {report.header['memory_measure']}.")
    for key, precision in _precision(report, baseline).items():
        mark = f"{IMPRECISE_MARK} " if key == "ratio" and not precision.trusted else ""
        out.print(Text(f"{mark}Precision, {precision.note()}", style="" if precision.trusted else "bold"))
    if report.breakdown is not None:
        _render_breakdown(report.breakdown)
    if report.interrupted:
        done = first.step_ms.n if first.step_ms else 0
        out.print(f"[bold]Interrupted[/] after {done} of {report.header['iters']} timed steps: the figures above cover only those.")


def _render_breakdown(b: Breakdown) -> None:
    out = console()
    groups = [[g.phase, g.part, f"{g.ms_per_step:.2f}", f"{g.share:.1%}"] for g in b.groups]
    styles: list[str | None] = [None] * len(groups)
    groups.append(["whole step", "what ECA adds", f"{b.attention_share * b.total_ms_per_step:.2f}", f"{b.attention_share:.1%}"])
    styles.append("bold")
    if b.plain_tail_share:
        groups.append(["whole step", "BN, add, ReLU in fused tails", f"{b.plain_tail_share * b.total_ms_per_step:.2f}", f"{b.plain_tail_share:.1%}"])
        styles.append(None)
    title = f"Where the step's time goes ({b.clock}, {b.steps} profiled eager steps of {b.spec})"
    print_table(out, TableSpec(title, ["phase", "part", "ms/step", "share"], groups, [False, False, True, True], row_styles=styles))
    ops = [[o.name, f"{o.ms_per_step:.2f}", f"{o.share:.1%}", f"{o.attention_ms_per_step:.2f}"] for o in b.ops]
    wide = TableSpec("Top operators by self time", ["operator", "ms/step", "share", "ECA's ms/step"], ops, [False, True, True, True])
    narrow = TableSpec("Top operators by self time", ["operator", "ms/step", "share", "ECA's\nms/step"], ops, [False, True, True, True])
    print_table(out, wide, narrow)
    out.print(
        "What ECA adds: attention modules (pool, gate conv, sigmoid, multiply) and ECA's share of fused tails. "
        "A fused tail runs a block's BN, gate, residual add and ReLU in one step; its BN, add and ReLU, "
        "which a plain block runs too, are shown apart. Profiler overhead inflates these times; read the shares."
    )


def ddp_json_report(report: DataParallelReport, baseline: bool) -> dict[str, Any]:
    """Like `json_report`: header and the profiled model's figures at the top level, the data-parallel fields beside them."""
    data: dict[str, Any] = {**report.header, "interrupted": False, **report.profile(MODEL_LABEL).to_dict()}
    if baseline:
        data["baseline"] = report.profile(BASELINE_LABEL).to_dict()
        ratio = report.ratio(MODEL_LABEL, BASELINE_LABEL)
        data["overhead"] = ratio.to_dict() if ratio else None
    return data


def _ddp_table(report: DataParallelReport, profiles: list, baseline: bool, stacked: bool) -> TableSpec:
    rows = {
        "step (slowest rank)": lambda p: _fmt_ms(p.step_ms, stacked),
        "images/s, all ranks": lambda p: f"{p.images_per_s:,.1f}",
        "images/s, one process": lambda p: f"{p.single_process.images_per_s:,.1f}",
        "scaling efficiency": lambda p: f"{p.scaling_efficiency:.1%}",
        "communication share": lambda p: _fmt_share(p.communication_share, stacked),
        "FLOPs/image": lambda p: _fmt_rate(p.model.flops_per_image, "FLOP"),
        "achieved, all ranks": lambda p: _fmt_rate(p.achieved_flops_per_s, "FLOP/s"),
        "peak memory, max rank": lambda p: _fmt_bytes_or_none(max((r.peak_memory_bytes for r in p.ranks), key=lambda b: b or 0)),
    }
    cells = [[name, *(cell(p) for p in profiles)] for name, cell in rows.items()]
    styles: list[str | None] = [None] * len(cells)
    if baseline:
        cells.append(["ECA / plain step, per round", _fmt_ratio(report.ratio(MODEL_LABEL, BASELINE_LABEL), stacked), ""])
        styles.append("bold")
    headers = [""] + [f"{p.model.spec} ({p.model.attention})" for p in profiles]
    return TableSpec("data-parallel training step, median (p10 - p90)", headers, cells, [False] + [True] * len(profiles), row_styles=styles)


def _ranks_table(profiles: list, stacked: bool) -> TableSpec:
    headers = ["model", "rank", "host", "device", "DDP step", "no_sync() step", "sync share", "images/s", "peak memory"]
    if stacked:
        headers = ["model", "rank", "host", "device", "DDP step", "no_sync()\nstep", "sync\nshare", "images/s", "peak\nmemory"]
    rows = [
        [p.model.attention, str(r.rank), r.host, r.device, _fmt_ms(r.step_ms, stacked), _fmt_ms(r.no_sync_step_ms, stacked),
         f"{r.sync_share:.1%}", f"{r.images_per_s:,.1f}", _fmt_bytes_or_none(r.peak_memory_bytes)]
        for p in profiles
        for r in p.ranks
    ]
    numeric = [False, True, False, False, True, True, True, True, True]
    return TableSpec("per rank, median (p10 - p90)", headers, rows, numeric, keep=2)


def _render_ddp(report: DataParallelReport, baseline: bool) -> None:
    out = console()
    h, ddp = report.header, report.header["ddp"]
    switches = [name for name, on in (("static graph", ddp["static_graph"]), ("gradient as bucket view", ddp["gradient_as_bucket_view"]), ("SyncBatchNorm", ddp["sync_bn"])) if on]
    world = (
        f"{h['world_size']} ranks ({h['nodes']} node{'s' if h['nodes'] > 1 else ''} x {h['ranks_per_node']}), {h['backend']}, "
        + ", ".join([f"DDP buckets {ddp['bucket_cap_mb']:g} MB", *switches, f"timeout {ddp['timeout_s']:g} s"])
    )
    profiles = [report.profile(label) for label in [MODEL_LABEL] + ([BASELINE_LABEL] if baseline else [])]
    first = profiles[0].model
    out.print(_header_panel(_header_rows(report, first.warmup_steps, profiles[0].step_ms.n) + [("world", world)], "ecacli profile --ddp"))
    print_table(out, _ddp_table(report, profiles, baseline, stacked=False), _ddp_table(report, profiles, baseline, stacked=True))
    print_table(out, _ranks_table(profiles, stacked=False), _ranks_table(profiles, stacked=True))
    for key in ("data_parallel_step", "single_process", "communication_share", "sync_share", "peak_memory"):
        out.print(f"{key.replace('_', ' ').capitalize()}: {h[key + '_definition']}.")
    out.print("Scaling efficiency = images/s of all ranks / (world size x images/s of one process).")


def _fmt_bytes_or_none(value: int | None) -> str:
    return "not measured" if value is None else fmt_bytes(value)
