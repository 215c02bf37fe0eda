"""ecacli's fast ECA-ResNet-50 against timm's (`attn_layer='eca'`), each against its own plain ResNet-50.

All four models run interleaved in one process (rotated order, CPU-time clock, one thread), as
`python -m ecacli.benchmarks.eca_overhead` times ecacli's own variants. timm is not a dependency
of ecacli: run this in a throwaway environment, e.g.
`python3 -m venv /tmp/tvenv && /tmp/tvenv/bin/pip install torch torchvision timm && /tmp/tvenv/bin/pip install -e .`,
then `/tmp/tvenv/bin/python benchmarks/eca_vs_timm.py --repeats 15`.
"""

from __future__ import annotations

import argparse
import sys

import torch

from ecacli.benchmarks.eca_overhead import Row, interleaved_times, keep_heap, make_step, saved_tensor_bytes, spread, variant_spec
from ecacli.models import build_model
from ecacli.spec import ResNetSpec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=160)
    args = parser.parse_args(argv)
    try:
        import timm
        from timm.models.resnet import Bottleneck, ResNet
    except ImportError:
        print("error: this comparison needs timm, which ecacli does not depend on; install it in a throwaway environment (see this file's docstring).", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    heap = "kept" if keep_heap() else "not kept"
    print(f"ResNet-50, batch {args.batch}, {args.size} px, 1 thread, cpu clock, heap {heap}, torch {torch.__version__}, timm {timm.__version__}")
    print(f"per-round time ratios, median [p25-p75] of {args.repeats} rounds; saved = activation bytes kept for backward, ECA / plain")
    spec = ResNetSpec(name="r50", depth=50, input_size=args.size)
    for mode in ("train", "infer"):
        for dtype in ("float32", "bfloat16"):
            for layout in ("nchw", "channels_last"):
                row = Row(mode, dtype, layout)
                memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
                torch.manual_seed(0)
                x = torch.randn(args.batch, 3, args.size, args.size).to(memory_format=memory_format)
                models = {
                    "ours_plain": build_model(variant_spec(spec, "plain")),
                    "ours_fast": build_model(variant_spec(spec, "fast")),
                    "timm_plain": ResNet(block=Bottleneck, layers=[3, 4, 6, 3]),
                    "timm_eca": ResNet(block=Bottleneck, layers=[3, 4, 6, 3], block_args={"attn_layer": "eca"}),
                }
                models = {name: model.to(memory_format=memory_format).train(mode == "train") for name, model in models.items()}
                steps = {name: make_step(model, x, row) for name, model in models.items()}
                times = interleaved_times(steps, args.repeats, 2, "cpu", "cpu")

                def ratio(a: str, b: str) -> str:
                    return spread([x / y for x, y in zip(times[a], times[b])])

                line = f"{row.label:<30} ours fast/plain {ratio('ours_fast', 'ours_plain')}  timm eca/plain {ratio('timm_eca', 'timm_plain')}"
                line += f"  ours fast/timm eca {ratio('ours_fast', 'timm_eca')}  ours plain/timm plain {ratio('ours_plain', 'timm_plain')}"
                if mode == "train":
                    saved = {name: saved_tensor_bytes(steps[name], models[name].parameters()) for name in models}
                    line += f"  saved: ours {saved['ours_fast'] / saved['ours_plain']:.3f}, timm {saved['timm_eca'] / saved['timm_plain']:.3f}"
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
