"""Provenance of the timm fixtures (run by hand in a venv with timm; never in tests or CI).

Writes, under tests/data/:
- timm_tiny_ecaresnet.safetensors: two tiny timm ECA-ResNets' state_dicts, exactly as timm names them,
  under the prefixes `d.` (deep stem, avg-pool shortcut, bottleneck blocks: the layout of ecaresnet50d)
  and `t.` (deep-tiered stem, avg-pool shortcut, basic blocks: the stem of ecaresnet26t / 50t),
  each with `x` (an input) and `logits` (timm's eval-mode output for it);
- timm_ecaresnet_state_dict_shapes.json: every state_dict key and shape of timm's
  ecaresnet50d, ecaresnet26t and ecaresnet50t.
"""

import json
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

HERE = Path(__file__).parent
TINY = {
    "d": {"block": Bottleneck, "stem_type": "deep", "stem_width": 8, "num_classes": 5},
    "t": {"block": BasicBlock, "stem_type": "deep_tiered", "stem_width": 16, "num_classes": 7},
}


def randomise(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Non-trivial BN statistics and ECA weights, so equal logits mean equal computation."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0, 0.1, generator=generator)
        for name, param in model.named_parameters():
            if name.endswith("se.conv.weight"):
                param.normal_(0, 1, generator=generator)


def main() -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    tensors = {}
    for prefix, args in TINY.items():
        model = ResNet(
            layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), avg_down=True, block_args={"attn_layer": "eca"}, **args
        ).eval()
        randomise(model, generator)
        x = torch.randn(2, 3, 64, 64, generator=generator)
        with torch.no_grad():
            tensors[f"{prefix}.logits"] = model(x)
        tensors[f"{prefix}.x"] = x
        tensors.update({f"{prefix}.{key}": value.clone() for key, value in model.state_dict().items()})
    save_file(tensors, HERE / "timm_tiny_ecaresnet.safetensors")
    shapes = {
        name: [[key, list(value.shape)] for key, value in timm.create_model(name).state_dict().items()]
        for name in ("ecaresnet50d", "ecaresnet26t", "ecaresnet50t")
    }
    (HERE / "timm_ecaresnet_state_dict_shapes.json").write_text(json.dumps(shapes, separators=(",", ":")))


if __name__ == "__main__":
    main()
