"""ecacli's fast ECA-ResNet-50 against timm's (`attn_layer='eca'`), each against its own plain ResNet-50.

All four models are measured by `ecacli.profiling` in one process (steps interleaved, order
rotated), as `python -m ecacli.benchmarks.eca_overhead` measures ecacli's own variants. timm is
not a dependency of ecacli: run this in an environment that has it, e.g.
`python3 -m venv /tmp/tvenv && /tmp/tvenv/bin/pip install torch torchvision timm && /tmp/tvenv/bin/pip install -e .`,
then `/tmp/tvenv/bin/python -m ecacli.benchmarks.eca_vs_timm --repeats 15`.
"""

from __future__ import annotations

import argparse
import sys

import torch

from ecacli.benchmarks.eca_overhead import Row, common_arguments, keep_heap, measure_row, ratio_text, variant_spec
from ecacli.spec import ResNetSpec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    common_arguments(parser)
    parser.set_defaults(repeats=15, threads=1, clock="cpu")
    args = parser.parse_args(argv)
    args.device = "cpu"
    try:
        import timm
        from timm.models.resnet import Bottleneck, ResNet
    except ImportError:
        print("error: this comparison needs timm, which ecacli does not depend on; install it beside ecacli (see `python -m ecacli.benchmarks.eca_vs_timm --help`).", file=sys.stderr)
        return 2
    heap = "kept" if args.keep_heap and keep_heap() else "not kept"
    print(f"ResNet-50, batch {args.batch}, {args.size} px, {args.threads} threads, {args.clock} clock, heap {heap}, torch {torch.__version__}, timm {timm.__version__}")
    print(f"step-time ratios, median [p10-p90] over {args.repeats} interleaved rounds; saved = activation bytes kept for backward, ECA / plain")
    spec = ResNetSpec(name="r50", depth=50, input_size=args.size)
    plain, fast = variant_spec(spec, "plain"), variant_spec(spec, "fast")
    for mode in ("train", "eval"):
        for dtype in ("float32", "bfloat16"):
            for layout in ("nchw", "channels_last"):
                row = Row(mode, dtype, layout)
                torch.manual_seed(0)
                timm_models = {
                    "timm_plain": ResNet(block=Bottleneck, layers=[3, 4, 6, 3]),
                    "timm_eca": ResNet(block=Bottleneck, layers=[3, 4, 6, 3], block_args={"attn_layer": "eca"}),
                }
                entries = [("ours_plain", plain), ("ours_fast", fast), ("timm_plain", plain), ("timm_eca", fast)]
                report, saved = measure_row(entries, row.config(args), timm_models)
                line = f"{row.label:<24} ours fast/plain {ratio_text(report, 'ours_fast', 'ours_plain')}  timm eca/plain {ratio_text(report, 'timm_eca', 'timm_plain')}"
                line += f"  ours fast/timm eca {ratio_text(report, 'ours_fast', 'timm_eca')}  ours plain/timm plain {ratio_text(report, 'ours_plain', 'timm_plain')}"
                if saved:
                    line += f"  saved: ours {saved['ours_fast'] / saved['ours_plain']:.3f}, timm {saved['timm_eca'] / saved['timm_plain']:.3f}"
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
