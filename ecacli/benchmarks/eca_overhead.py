"""What ECA costs on top of a plain ResNet: plain vs fast ECA vs reference ECA, measured side by side.

Run: `python -m ecacli.benchmarks.eca_overhead` (see `--help`). The three models come from the
same builder and are measured by `ecacli.profiling` in one process: steps interleaved, the
order rotated every round, so load from other processes hits all of them alike. A row reports
the per-round step-time ratio to plain (median and p10-p90, as `ecacli profile --baseline`)
and, for training, the bytes autograd saves for backward (exact, no timing involved).

By default glibc is asked to keep freed memory in the process (`--no-keep-heap` leaves its
defaults): otherwise its trimming heuristics hand big blocks back to the kernel at moments that
depend on the heap's layout, and each step pays anywhere from none to ~15,000 page faults
(seen from run to run for the same model), noise larger than the effects measured. Blocks of
32 MiB or more (glibc's limit for heap blocks) are still mapped and unmapped every step.
"""

from __future__ import annotations

import argparse
import ctypes
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ecacli.profiling import ProfileConfig, ProfileReport
from ecacli.profiling.device import make_timer
from ecacli.profiling.report import header, prepare
from ecacli.profiling.runner import Workload, measure, run_step, summarize
from ecacli.spec import ResNetSpec

VARIANTS = ("plain", "fast", "reference")


def saved_tensor_bytes(step: Callable[[], object], ignore: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the distinct storages autograd saves for backward while `step()` runs its forward.

    Storages of the `ignore` tensors (a model's parameters, say) are left out of the count.
    """
    ignored = {t.untyped_storage().data_ptr() for t in ignore}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in ignored:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step()
    return sum(storages.values())


def variant_spec(base: ResNetSpec, variant: str) -> ResNetSpec:
    """The spec with no attention (plain), or ECA in its fast or reference implementation."""
    attention = {"type": "none"} if variant == "plain" else {"type": "eca", "impl": variant}
    return ResNetSpec.model_validate({**base.model_dump(exclude={"attention"}), "attention": attention})


@dataclass(frozen=True)
class Row:
    """One benchmark row: training step or inference, dtype, memory layout, eager or compiled."""

    mode: str  # "train" | "eval"
    dtype: str  # "float32" | "bfloat16"
    layout: str  # "nchw" | "channels_last"
    compiled: bool = False

    @property
    def label(self) -> str:
        return f"{self.mode} {self.dtype} {self.layout}{' compiled' if self.compiled else ''}"

    def config(self, args: argparse.Namespace) -> ProfileConfig:
        return ProfileConfig(
            device=args.device,
            batch=args.batch,
            input_size=args.size,
            dtype=self.dtype,
            channels_last=self.layout == "channels_last",
            compile=self.compiled,
            mode=self.mode,  # type: ignore[arg-type]
            warmup=args.warmup,
            iters=args.repeats,
            threads=args.threads,
            clock=args.clock,
        )


def measure_row(entries: list[tuple[str, ResNetSpec]], config: ProfileConfig, models: dict[str, nn.Module] | None = None) -> tuple[ProfileReport, dict[str, int]]:
    """Time the entries interleaved with the profiler (`models` as in `prepare`); for training rows also the bytes each saves for backward."""
    device, workloads, flops = prepare(entries, config, models)
    measure(workloads, config, device)
    saved = {w.label: saved_bytes(w, config) for w in workloads} if config.train else {}
    report = ProfileReport(header(config, device, entries[0][1]), [summarize(w, config, flops[w.label]) for w in workloads])
    return report, saved


def saved_bytes(w: Workload, config: ProfileConfig) -> int:
    timer = make_timer(w.inputs.device)
    return saved_tensor_bytes(lambda: run_step(w, config, timer), w.model.parameters())


def keep_heap() -> bool:
    """Ask glibc not to return freed memory to the kernel (no trimming; blocks under 32 MiB from the heap).

    False where that is not glibc or a setting was refused (32-bit glibc caps the second).
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # malloc.h
    settings = ((m_trim_threshold, 2**31 - 1), (m_mmap_threshold, 32 << 20), (m_top_pad, 256 << 20))
    accepted = [mallopt(option, value) == 1 for option, value in settings]
    return all(accepted)


def ratio_text(report: ProfileReport, label: str, reference: str) -> str:
    """'median [p10-p90]' of the per-round step-time ratio of two entries."""
    stats = report.ratio(label, reference)
    return "-" if stats is None else f"{stats.median:.3f} [{stats.p10:.3f}-{stats.p90:.3f}]"


def rows_for(args: argparse.Namespace) -> Iterator[Row]:
    for compiled in {"no": (False,), "also": (False, True), "only": (True,)}[args.compile]:
        for mode in args.modes:
            for dtype in args.dtypes:
                for layout in args.layouts:
                    yield Row(mode, dtype, layout, compiled)


def common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by the benchmarks: size, repetitions, threads, clock and heap."""
    parser.add_argument("--batch", type=int, default=8, help="images per step")
    parser.add_argument("--size", type=int, default=160, help="square input side in pixels")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds (timed steps per model)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"], help="wall time, or this thread's CPU time (use with --threads 1 on a shared CPU)")
    parser.add_argument("--keep-heap", action=argparse.BooleanOptionalAction, default=True, help="keep freed memory in the process (glibc), so steps pay no page faults that vary with the heap's layout")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--depth", type=int, default=50, choices=[18, 34, 50, 101, 152], help="ResNet depth")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    common_arguments(parser)
    parser.add_argument("--modes", nargs="+", default=["train", "eval"], choices=["train", "eval"], help="training steps (forward, backward, SGD) and/or inference")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"], help="bfloat16 runs under autocast")
    parser.add_argument("--layouts", nargs="+", default=["nchw", "channels_last"], choices=["nchw", "channels_last"], help="memory formats")
    parser.add_argument("--compile", nargs="?", const="also", default="no", choices=["no", "also", "only"], help="time every row under torch.compile too (also, the default with no value) or only")
    args = parser.parse_args(argv)
    heap = "kept" if args.keep_heap and keep_heap() else "not kept"
    spec = ResNetSpec(name=f"resnet{args.depth}", depth=args.depth, input_size=args.size)
    print(f"ResNet-{args.depth}, batch {args.batch}, {args.size}x{args.size}, {args.device}, {args.threads} threads, {args.clock} clock, heap {heap}, torch {torch.__version__}")
    print(f"step-time ratio: median [p10-p90] over {args.repeats} interleaved rounds (ecacli.profiling); saved = activation bytes autograd keeps for backward (parameters excluded)")
    print(f"{'row':<32} {'plain ms':>9} {'fast/plain':>22} {'reference/plain':>22} {'fast/reference':>22} {'saved fast/plain':>17} {'saved ref/plain':>16}")
    for row in rows_for(args):
        if row.compiled:
            torch.compiler.reset()  # each row's three models get the compiler's whole recompilation budget
        report, saved = measure_row([(v, variant_spec(spec, v)) for v in VARIANTS], row.config(args))
        plain = report.model("plain").step_ms
        line = f"{row.label:<32} {plain.median if plain else float('nan'):>9.0f} {ratio_text(report, 'fast', 'plain'):>22} {ratio_text(report, 'reference', 'plain'):>22} {ratio_text(report, 'fast', 'reference'):>22}"
        if saved:
            line += f" {saved['fast'] / saved['plain']:>17.4f} {saved['reference'] / saved['plain']:>16.4f}"
            line += f"   ({saved['plain'] / 2**20:.0f} / {saved['fast'] / 2**20:.0f} / {saved['reference'] / 2**20:.0f} MiB)"
        print(line, flush=True)


if __name__ == "__main__":
    main()
