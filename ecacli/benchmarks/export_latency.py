"""Inference latency of one model in eager PyTorch, TorchScript and ONNX Runtime, measured side by side.

Run: `python -m ecacli.benchmarks.export_latency` (see `--help`; needs the onnx extra). The
model (r50 with seeded weights by default) is written by `ecacli.export_model` as a TorchScript
and an ONNX file in a temporary folder, each checked against eager PyTorch there, and loaded back
as a deployment would load it (`torch.jit.load`, an ONNX Runtime CPU session with as many
intra-op threads as torch). `ecacli.profiling` then times inference forwards of the three in one
process for each batch size: one forward of each per round, the order rotated every round, so
load from other processes hits all of them alike. A row reports the forward time (median and
p10-p90) and its per-round ratio to eager PyTorch.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from ecacli.benchmarks.eca_overhead import keep_heap, measure_row, ratio_text
from ecacli.checkpoints import new_model
from ecacli.cli.common import fmt_bytes
from ecacli.deploy import export_model
from ecacli.extras import EXTRA_MODULES, require
from ecacli.errors import UserError
from ecacli.profiling import ProfileConfig
from ecacli.spec_loader import load_spec

RUNTIMES = ("eager", "torchscript", "onnxruntime")


class OnnxRuntimeModel(nn.Module):
    """An ONNX Runtime CPU session behind a module's call, so the profiler times it as it times the others."""

    def __init__(self, path: Path, threads: int) -> None:
        super().__init__()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input_name: x.numpy()})[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--spec", default="r50", help="spec or preset to build")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a spec value, as `ecacli --set`; repeatable")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes, one table row group each")
    parser.add_argument("--size", type=int, default=224, help="square input side in pixels")
    parser.add_argument("--repeats", type=int, default=21, help="interleaved rounds (timed forwards per runtime)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed forwards per runtime (TorchScript optimises during its first calls)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads, for torch and for ONNX Runtime's intra-op pool")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"], help="wall time, or this thread's CPU time (only with --threads 1: ONNX Runtime's pool threads are not this thread)")
    parser.add_argument("--keep-heap", action=argparse.BooleanOptionalAction, default=True, help="keep freed memory in the process (glibc), as the other benchmarks do")
    args = parser.parse_args(argv)
    try:
        require(EXTRA_MODULES["onnx"], "this benchmark", "onnx")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    heap = "kept" if args.keep_heap and keep_heap() else "not kept"
    torch.set_num_threads(args.threads)
    spec = load_spec(args.spec, args.overrides)
    model = new_model(spec, seed=0).eval()
    import onnxruntime

    print(f"{spec.name}, {args.size} px, CPU, {args.threads} threads, {args.clock} clock, heap {heap}")
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")
    with tempfile.TemporaryDirectory() as folder:
        files = {fmt: export_model(model, Path(folder) / f"{spec.name}{suffix}", input_size=args.size) for fmt, suffix in (("torchscript", ".ts"), ("onnx", ".onnx"))}
        for exported in files.values():
            check = exported.verification
            print(f"{exported.path.name}: {fmt_bytes(exported.size)}, max |diff| {check.max_abs_diff:.1e} of {check.max_abs_output:.3g} ({check.runtime})")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
            scripted = torch.jit.load(str(files["torchscript"].path))
        models = {"eager": model, "torchscript": scripted, "onnxruntime": OnnxRuntimeModel(files["onnx"].path, args.threads)}
        print(f"forward ms, median [p10-p90] of {args.repeats} interleaved rounds; ratio to eager per round")
        print(f"{'batch':>5}  {'runtime':<12} {'ms':>22} {'/ eager':>22} {'images/s':>9}")
        for batch in args.batches:
            config = ProfileConfig(device="cpu", batch=batch, input_size=args.size, mode="eval", warmup=args.warmup, iters=args.repeats, threads=args.threads, clock=args.clock)
            report, _ = measure_row([(runtime, spec) for runtime in RUNTIMES], config, models)
            for runtime in RUNTIMES:
                step = report.model(runtime).step_ms
                ms = f"{step.median:.1f} [{step.p10:.1f}-{step.p90:.1f}]"
                print(f"{batch:>5}  {runtime:<12} {ms:>22} {ratio_text(report, runtime, 'eager'):>22} {batch / step.median * 1e3:>9.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
