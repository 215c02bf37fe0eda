"""The builder: exact parameter counts, torchvision's state-dict layout, the ECA module, initialisation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ecacli import build_model, load_spec
from ecacli.layers import EcaModule

TORCHVISION = json.loads((Path(__file__).parent / "data" / "torchvision_state_dict_shapes.json").read_text())
TORCHVISION_PARAMS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_model(name: str, *overrides: str) -> torch.nn.Module:
    with torch.device("meta"):
        return build_model(load_spec(name, overrides))


@pytest.mark.parametrize("depth", sorted(TORCHVISION_PARAMS))
def test_plain_resnet_has_torchvision_parameter_count(depth):
    assert n_params(meta_model("r50", "attention.type=none", f"depth={depth}")) == TORCHVISION_PARAMS[depth]


@pytest.mark.parametrize(
    ("name", "params"),
    [("r50", 25_557_118), ("r50_k3557", 25_557_112), ("seed_r50", 25_549_438), ("resnet50", 25_557_032)],
)
def test_exact_parameter_counts(name, params):
    assert n_params(meta_model(name)) == params


@pytest.mark.parametrize("depth", [18, 50])
def test_plain_state_dict_equals_torchvision(depth):
    model = meta_model("r50", "attention.type=none", f"depth={depth}")
    ours = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert ours == TORCHVISION[f"resnet{depth}"]


def test_eca_state_dict_is_torchvision_plus_the_release_kernels():
    model = meta_model("r50_k3557")
    extra = {k: list(v.shape) for k, v in model.state_dict().items() if k not in dict(TORCHVISION["resnet50"])}
    expected_k = {"layer1": 3, "layer2": 5, "layer3": 5, "layer4": 7}
    assert len(extra) == 16
    for key, shape in extra.items():
        assert key.endswith(".eca.conv.weight")
        assert shape == [1, 1, expected_k[key.split(".")[0]]]


def test_eca_module_matches_hand_computation():
    torch.manual_seed(0)
    eca = EcaModule(3)
    x = torch.randn(2, 5, 4, 3)
    w = eca.conv.weight.detach().flatten()
    pooled = x.mean(dim=(2, 3))
    padded = torch.nn.functional.pad(pooled, (1, 1))
    logits = torch.stack([sum(w[j] * padded[:, c + j] for j in range(3)) for c in range(5)], dim=1)
    expected = x * torch.sigmoid(logits)[:, :, None, None]
    torch.testing.assert_close(eca(x), expected, rtol=0, atol=1e-6)


def test_eca_gates_are_equal_for_interior_channels_of_a_constant_input():
    eca = EcaModule(5)
    gate = eca.gate(torch.ones(1, 16, 3, 3)).flatten()
    assert torch.allclose(gate[2:-2], gate[2].expand(12))
    assert not torch.allclose(gate[0], gate[2])  # zero padding at the ends changes the edge gates


@pytest.mark.parametrize("k", [0, 2, -1])
def test_eca_rejects_even_or_non_positive_k(k):
    with pytest.raises(ValueError, match="odd"):
        EcaModule(k)


@pytest.mark.parametrize(
    ("stem", "side", "out_side"),
    [("imagenet", 64, 2), ("cifar", 32, 4), ("deep", 64, 2), ("deep_tiered", 64, 2)],
)
@pytest.mark.parametrize("downsample", ["conv", "avg"])
def test_forward_shapes_for_every_stem(stem, side, out_side, downsample):
    spec = load_spec("r50", ["depth=null", "layers=[1, 1, 1, 1]", "block=bottleneck", "width=8", f"stem={stem}", f"downsample={downsample}", "num_classes=7"])
    model = build_model(spec).eval()
    x = torch.randn(2, 3, side, side)
    assert model(x).shape == (2, 7)
    assert model.forward_features(x).shape == (2, 8 * 8 * 4, out_side, out_side)


def test_initialisation_follows_torchvision():
    torch.manual_seed(0)
    model = build_model(load_spec("r50"))
    conv = model.layer3[0].conv2
    fan_out = conv.out_channels * 9
    assert abs(conv.weight.std().item() - (2 / fan_out) ** 0.5) < 0.02 * (2 / fan_out) ** 0.5
    assert torch.all(model.layer1[0].bn3.weight == 1) and torch.all(model.layer1[0].bn3.bias == 0)


def test_zero_init_residual_zeroes_each_blocks_last_bn():
    model = build_model(load_spec("r18", ["zero_init_residual=true"]))
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in stage:
            assert torch.all(block.bn2.weight == 0)
            assert torch.all(block.bn1.weight == 1)
