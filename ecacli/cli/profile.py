"""`ecacli profile`: time a spec's model on a device (optionally against its plain twin) and render the result."""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ecacli.cli.common import JsonOption, SetOption, console, fmt_bytes, load_spec_arg, print_json
from ecacli.errors import UserError

if TYPE_CHECKING:
    from ecacli.profiling import ModelProfile, ProfileReport, Stats
    from ecacli.profiling.breakdown import Breakdown

DEFAULT_SPEC = "r50"
MODEL_LABEL, BASELINE_LABEL = "model", "plain"
PHASES = ("forward", "backward", "optimizer", "step")
INTERRUPTED = 130


def profile(
    spec: Annotated[str, typer.Argument(help="Spec YAML file or preset name (see `ecacli specs`).")] = DEFAULT_SPEC,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N, mps, or auto (CUDA, else MPS, else CPU).")] = "auto",
    batch: Annotated[int, typer.Option(help="Images per step.")] = 32,
    input_size: Annotated[int | None, typer.Option(help="Square input side in pixels (default: the spec's).", show_default=False)] = None,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16 (half types through autocast, weights stay float32).")] = "float32",
    channels_last: Annotated[bool, typer.Option("--channels-last", help="Model and input in channels_last memory format.")] = False,
    compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile the model; compile time is reported separately.")] = False,
    mode: Annotated[str, typer.Option(help="train: forward + backward + SGD step; eval: forward under inference_mode.")] = "train",
    warmup: Annotated[int, typer.Option(help="Untimed steps per model before timing.")] = 5,
    iters: Annotated[int, typer.Option(help="Timed steps per model.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed for weights, input and labels.")] = 0,
    threads: Annotated[int | None, typer.Option(help="CPU threads, torch.set_num_threads (default: torch's choice).", show_default=False)] = None,
    cudnn_benchmark: Annotated[bool, typer.Option("--cudnn-benchmark", help="CUDA: let cuDNN pick the fastest conv algorithms (torch.backends.cudnn.benchmark).")] = False,
    baseline: Annotated[bool, typer.Option("--baseline", help="Also time the same spec with attention.type none, interleaved, and report the ECA overhead.")] = False,
    show_breakdown: Annotated[bool, typer.Option("--breakdown", help="After timing, a torch.profiler table of where the step's time goes (attention modules apart).")] = False,
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Time forward, backward and whole steps of a spec's model; images/s, FLOPs, peak memory, ECA overhead."""
    model_spec = load_spec_arg(spec, overrides)
    from ecacli.profiling import ProfileConfig, without_attention
    from ecacli.profiling import profile as run_profile
    from ecacli.profiling.device import default_device

    config = ProfileConfig(
        device=default_device() if device == "auto" else device,
        batch=batch,
        input_size=input_size,
        dtype=dtype,
        channels_last=channels_last,
        compile=compile_model,
        mode=mode,  # type: ignore[arg-type]
        warmup=warmup,
        iters=iters,
        seed=seed,
        threads=threads,
        cudnn_benchmark=cudnn_benchmark,
    )
    entries = [(MODEL_LABEL, model_spec)]
    if baseline:
        if model_spec.attention.type == "none":
            raise UserError(f"--baseline times the spec again with attention.type none, but '{model_spec.name}' has no attention already; drop --baseline.")
        entries.append((BASELINE_LABEL, without_attention(model_spec)))
    progress = None if as_json else _progress_bar()
    with progress or nullcontext():
        report = run_profile(entries, config, _advance(progress) if progress else None, with_breakdown=show_breakdown)
    if as_json:
        print_json(json_report(report, baseline))
    else:
        _render(report, baseline)
    if report.interrupted:
        raise typer.Exit(INTERRUPTED)


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
    return data


def _progress_bar():
    """A rich progress bar on stderr, or None when stderr is not a terminal."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    err = Console(stderr=True)
    if not err.is_terminal:
        return None
    return Progress(TextColumn("{task.description:<8}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err, transient=True)


def _advance(progress):
    tasks: dict[str, Any] = {}

    def update(phase: str, done: int, total: int) -> None:
        if phase not in tasks:
            tasks[phase] = progress.add_task(phase, total=total)
        progress.update(tasks[phase], completed=done)

    return update


def _fmt_ms(stats: Stats | None) -> str:
    if stats is None:
        return "-"
    return f"{stats.median:.2f} ms  ({stats.p10:.2f} - {stats.p90:.2f})"


def _fmt_ratio(stats: Stats | None) -> str:
    return "-" if stats is None else f"{stats.median:.3f}x  ({stats.p10:.3f} - {stats.p90:.3f})"


def _fmt_rate(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.2f} {unit}"


def _header_text(report: ProfileReport) -> str:
    h = report.header
    versions = f"torch {h['torch_version']}" + (f", CUDA {h['cuda_version']}" if h["cuda_version"] else "") + (f", cuDNN {h['cudnn_version']}" if h["cudnn_version"] else "")
    cuda = f"; cudnn.benchmark {h['cudnn_benchmark']}, TF32 matmul {h['tf32_matmul']}, TF32 cuDNN {h['tf32_cudnn']}" if h["cudnn_version"] else ""
    return "\n".join(
        [
            f"device        {h['device']} ({h['device_name']}), {h['threads']} CPU threads",
            f"versions      {versions}, Python {h['python_version']}, {h['platform']}",
            f"spec          {h['spec']}, input {h['input_shape']}, {h['dtype']}{' (autocast)' if h['autocast'] else ''}, {h['memory_format']}{', torch.compile' if h['compile'] else ''}{cuda}",
            f"step          {h['mode']}: {h['step']}",
            f"timing        {h['timer']}; {h['warmup']} warm-up + {h['iters']} timed steps per model, seed {h['seed']}",
        ]
    )


def _model_rows(m: ModelProfile) -> list[tuple[str, str]]:
    rows = [(phase, _fmt_ms(getattr(m, f"{phase}_ms"))) for phase in PHASES if getattr(m, f"{phase}_ms") is not None]
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


def _render(report: ProfileReport, baseline: bool) -> None:
    from rich.panel import Panel
    from rich.table import Table

    out = console()
    out.print(Panel(_header_text(report), title="ecacli profile", expand=False))
    labels = [MODEL_LABEL] + ([BASELINE_LABEL] if baseline else [])
    table = Table(title="median (p10 - p90) per step", title_justify="left")
    table.add_column("")
    for label in labels:
        m = report.model(label)
        table.add_column(f"{m.spec} ({m.attention})", justify="right")
    if baseline:
        table.add_column(f"{report.model(MODEL_LABEL).attention} / none, per round", justify="right")
    columns = [_model_rows(report.model(label)) for label in labels]
    for i, (name, _) in enumerate(columns[0]):
        cells = [rows[i][1] for rows in columns]
        if baseline:
            cells.append(_fmt_ratio(report.ratio(MODEL_LABEL, BASELINE_LABEL, name)) if name in PHASES else "")
        table.add_row(name, *cells)
    out.print(table)
    out.print("FLOPs: torch.utils.flop_counter (2 per multiply-add, convolutions and matmuls only); achieved = FLOPs per step / median step time.")
    out.print(f"Peak memory: resident tensors (weights, buffers, optimizer state, batch) + the step's peak: {report.header['memory_measure']}.")
    if report.breakdown is not None:
        _render_breakdown(report.breakdown)
    if report.interrupted:
        done = report.models[0].step_ms.n if report.models[0].step_ms else 0
        out.print(f"[bold]Interrupted[/] after {done} of {report.header['iters']} timed steps: the figures above cover only those.")


def _render_breakdown(b: Breakdown) -> None:
    from rich.table import Table

    out = console()
    groups = Table(title=f"Where the step's time goes ({b.clock}, {b.steps} profiled eager steps of '{b.label}')", title_justify="left")
    for name in ("phase", "part", "ms/step", "share"):
        groups.add_column(name, justify="left" if name in ("phase", "part") else "right")
    for g in b.groups:
        groups.add_row(g.phase, g.part, f"{g.ms_per_step:.2f}", f"{g.share:.1%}")
    groups.add_row("whole step", "attention", f"{b.attention_share * b.total_ms_per_step:.2f}", f"{b.attention_share:.1%}", style="bold")
    out.print(groups)
    ops = Table(title="Top operators by self time", title_justify="left")
    for name in ("operator", "ms/step", "share", "in attention ms/step"):
        ops.add_column(name, justify="left" if name == "operator" else "right")
    for o in b.ops:
        ops.add_row(o.name, f"{o.ms_per_step:.2f}", f"{o.share:.1%}", f"{o.attention_ms_per_step:.2f}")
    out.print(ops)
    out.print(f"attention = {b.attention_scope}. Profiler overhead inflates these times; read the shares.")
