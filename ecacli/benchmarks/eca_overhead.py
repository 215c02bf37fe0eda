"""What ECA costs on top of a plain ResNet: plain vs fast ECA vs reference ECA, measured side by side.

Run: `python -m ecacli.benchmarks.eca_overhead` (see `--help`). All three models come from the
same builder and run interleaved in one process, each repetition in a rotated order, so load
from other processes hits all of them alike; ratios are reported as the median over
repetitions with their interquartile range. Saved-activation bytes are exact (no timing involved).

By default glibc is asked to keep freed memory in the process (`--no-keep-heap` leaves its
defaults): otherwise its trimming heuristics hand big blocks back to the kernel at moments that
depend on the heap's layout, and each step pays anywhere from none to ~15,000 page faults
(seen here from run to run for the same model), noise larger than the effects measured. Blocks
of 32 MiB or more (glibc's limit for heap blocks) are still mapped and unmapped every step.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from ecacli.models import build_model
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

    mode: str  # "train" | "infer"
    dtype: str  # "float32" | "bfloat16"
    layout: str  # "nchw" | "channels_last"
    compiled: bool = False

    @property
    def label(self) -> str:
        return f"{self.mode} {self.dtype} {self.layout}{' compiled' if self.compiled else ''}"


def make_step(model: nn.Module, x: torch.Tensor, row: Row) -> Callable[[], torch.Tensor]:
    """One training step without optimizer (forward + backward), or one inference forward."""
    autocast = torch.autocast("cpu" if x.device.type == "cpu" else x.device.type, dtype=torch.bfloat16) if row.dtype == "bfloat16" else nullcontext()
    run = torch.compile(model) if row.compiled else model

    def train_step() -> torch.Tensor:
        for p in model.parameters():
            p.grad = None
        with autocast:
            loss = run(x).float().square().mean()
        loss.backward()
        return loss

    def infer_step() -> torch.Tensor:
        with torch.inference_mode(), autocast:
            return run(x)

    return train_step if row.mode == "train" else infer_step


def build_variants(spec: ResNetSpec, row: Row, batch: int, size: int, device: str) -> tuple[dict[str, Callable[[], torch.Tensor]], dict[str, nn.Module], torch.Tensor]:
    torch.manual_seed(0)
    fmt = torch.channels_last if row.layout == "channels_last" else torch.contiguous_format
    x = torch.randn(batch, spec.in_chans, size, size, device=device).to(memory_format=fmt)
    models = {v: build_model(variant_spec(spec, v)).to(device=device, memory_format=fmt).train(row.mode == "train") for v in VARIANTS}
    return {v: make_step(m, x, row) for v, m in models.items()}, models, x


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}


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


def interleaved_times(steps: dict[str, Callable[[], torch.Tensor]], repeats: int, warmup: int, device: str, clock: str = "wall") -> dict[str, list[float]]:
    """Seconds per step of each variant, `repeats` rounds, the order rotated every round.

    clock "cpu" counts this thread's CPU time: with one intra-op thread on CPU all the work runs
    here, and time spent descheduled by other processes on the machine is not counted.
    """
    now = CLOCKS[clock]
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {v: [] for v in steps}
    names = list(steps)
    for r in range(repeats):
        for v in names[r % len(names) :] + names[: r % len(names)]:
            sync(device)
            start = now()
            steps[v]()
            sync(device)
            times[v].append(now() - start)
    return times


def ratios(times: dict[str, list[float]], variant: str) -> list[float]:
    """Per-round time ratio of `variant` to plain (rounds pair the variants run back to back)."""
    return [t / p for t, p in zip(times[variant], times["plain"])]


def spread(values: list[float]) -> str:
    """Median and interquartile range: on a shared machine the extremes are other processes, not the code."""
    p25, _, p75 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return f"{statistics.median(values):.3f} [{p25:.3f}-{p75:.3f}]"


def rows_for(args: argparse.Namespace) -> Iterator[Row]:
    for compiled in {"no": (False,), "also": (False, True), "only": (True,)}[args.compile]:
        for mode in args.modes:
            for dtype in args.dtypes:
                for layout in args.layouts:
                    yield Row(mode, dtype, layout, compiled)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clock", default="wall", choices=list(CLOCKS), help="wall time, or this thread's CPU time (use with --threads 1 on a shared CPU)")
    parser.add_argument("--modes", nargs="+", default=["train", "infer"], choices=["train", "infer"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--layouts", nargs="+", default=["nchw", "channels_last"], choices=["nchw", "channels_last"])
    parser.add_argument("--compile", nargs="?", const="also", default="no", choices=["no", "also", "only"], help="time every row under torch.compile too (also, the default with no value) or only")
    parser.add_argument("--keep-heap", action=argparse.BooleanOptionalAction, default=True, help="keep freed memory in the process (glibc), so steps pay no page faults that vary with the heap's layout")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    heap = "kept" if args.keep_heap and keep_heap() else "not kept"
    spec = ResNetSpec(name=f"resnet{args.depth}", depth=args.depth, input_size=args.size)
    print(f"ResNet-{args.depth}, batch {args.batch}, {args.size}x{args.size}, {args.device}, {torch.get_num_threads()} threads, {args.clock} clock, heap {heap}, torch {torch.__version__}")
    print(f"time ratio to plain: median [p25-p75] of {args.repeats} interleaved rounds; best-of = fastest fast / fastest plain; saved = activation bytes autograd keeps for backward (parameters excluded)")
    print(f"{'row':<36} {'plain ms':>9} {'fast/plain':>22} {'best-of':>9} {'reference/plain':>22} {'fast/reference':>22} {'saved fast/plain':>17} {'saved ref/plain':>16}")
    for row in rows_for(args):
        if row.compiled:
            torch.compiler.reset()  # each row's three models get the compiler's whole recompilation budget
        steps, models, _ = build_variants(spec, row, args.batch, args.size, args.device)
        times = interleaved_times(steps, args.repeats, args.warmup, args.device, args.clock)
        fast_ref = [f / r for f, r in zip(times["fast"], times["reference"])]
        saved = ""
        if row.mode == "train":
            sizes = {v: saved_tensor_bytes(steps[v], models[v].parameters()) for v in VARIANTS}
            saved = f"{sizes['fast'] / sizes['plain']:>17.4f} {sizes['reference'] / sizes['plain']:>16.4f}"
            saved += f"   ({sizes['plain'] / 2**20:.0f} / {sizes['fast'] / 2**20:.0f} / {sizes['reference'] / 2**20:.0f} MiB)"
        plain_ms = 1000 * statistics.median(times["plain"])
        best = min(times["fast"]) / min(times["plain"])
        print(f"{row.label:<36} {plain_ms:>9.0f} {spread(ratios(times, 'fast')):>22} {best:>9.3f} {spread(ratios(times, 'reference')):>22} {spread(fast_ref):>22} {saved}", flush=True)
        del steps, models


if __name__ == "__main__":
    main()
