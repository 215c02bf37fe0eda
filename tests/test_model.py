"""The builder: exact parameter counts, torchvision's state-dict layout, the ECA module, initialisation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from ecacli import build_model, load_spec
from ecacli.layers import EcaModule
from conftest import randomise_batch_norms

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


# --- ECA-MobileNetV2 and ECA-NS against straightforward reference formulations --------------------


class ReferenceEca(nn.Module):
    """The paper's layer as written: average pool, conv1d over the channel axis, sigmoid, scale."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.adaptive_avg_pool2d(x, 1)
        y = self.conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
        return x * torch.sigmoid(y).expand_as(x)


def conv_bn_relu6(inp: int, out: int, kernel: int, stride: int, groups: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(out), nn.ReLU6(inplace=True))


class ReferenceInvertedResidual(nn.Module):
    def __init__(self, inp: int, out: int, stride: int, t: int, k: int) -> None:
        super().__init__()
        hidden = inp * t
        layers = [] if t == 1 else [conv_bn_relu6(inp, hidden, 1, 1, 1)]
        layers += [conv_bn_relu6(hidden, hidden, 3, stride, hidden), nn.Conv2d(hidden, out, 1, bias=False), nn.BatchNorm2d(out), ReferenceEca(k)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and inp == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class ReferenceEcaMobileNetV2(nn.Module):
    """The release's ECA-MobileNetV2, written out: k = 1 for rows with c <= 96, 3 above."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        table = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
        features: list[nn.Module] = [conv_bn_relu6(3, 32, 3, 2, 1)]
        inp = 32
        for t, c, n, s in table:
            for i in range(n):
                features.append(ReferenceInvertedResidual(inp, c, s if i == 0 else 1, t, 1 if c <= 96 else 3))
                inp = c
        features.append(conv_bn_relu6(inp, 1280, 1, 1, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.25), nn.Linear(1280, num_classes))  # the release's; torchvision's mobilenet_v2 has 0.2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_eca_mobilenetv2_equals_the_release_formulation(training):
    """Same weights, float64: outputs to 1e-10 of the straightforward model, in training (the release's Dropout(0.25), same mask from the same seed) and eval mode."""
    torch.manual_seed(0)
    model = build_model(load_spec("eca_mobilenetv2_k13", ["attention.impl=fast"])).double()
    randomise_batch_norms(model, torch.Generator().manual_seed(1))
    reference = ReferenceEcaMobileNetV2().double()
    reference.load_state_dict(model.state_dict())  # strict: the release's names, key for key
    x = torch.randn(2, 3, 96, 96, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    outputs = []
    for m in (reference, model):
        m.train(training)
        torch.manual_seed(3)
        outputs.append(m(x))
    expected, actual = outputs
    assert model.classifier[0].p == 0.25 and load_spec("mobilenetv2").dropout == 0.2
    assert (actual - expected).abs().max() <= 1e-10 * expected.abs().max()
    if training:
        for name, buffer in reference.state_dict().items():
            torch.testing.assert_close(model.state_dict()[name], buffer, rtol=1e-10, atol=1e-12)


def test_eca_ns_gate_is_each_channels_own_window():
    """ECA-NS against a direct unfold-based formulation: gate_c = sigmoid(sum_j w[c, j] * mean[c - (k-1)/2 + j]), zero padding at the ends."""
    from ecacli.layers.eca_ns import EcaNsModule

    torch.manual_seed(3)
    channels, k = 12, 5
    module = EcaNsModule(channels, k).double()
    assert tuple(module.conv.weight.shape) == (channels, 1, k)
    x = torch.randn(3, channels, 4, 5, dtype=torch.float64)
    means = x.mean(dim=(2, 3))
    windows = nn.functional.pad(means, ((k - 1) // 2, (k - 1) // 2)).unfold(1, k, 1)  # [N, C, k]
    gate = torch.sigmoid((windows * module.conv.weight[:, 0, :]).sum(-1))
    torch.testing.assert_close(module(x), x * gate[:, :, None, None], rtol=1e-12, atol=1e-12)
    edge = torch.zeros(1, channels, 1, 1, dtype=torch.float64)
    edge[0, 0] = 1.0  # a window past the first channel reads zeros: only channels 0..2 see the 1
    seen = module.gate(edge)[0, :, 0, 0] != 0.5
    assert seen.tolist() == [True, True, True] + [False] * (channels - 3)


def test_eca_ns_r50_parameters():
    """ECA-NS adds k x C weights per block: r50's widths 256/512/1024/2048 with adaptive k 5, 5, 5, 7."""
    with torch.device("meta"):
        model = build_model(load_spec("eca_ns_r50"))
    extra = sum(p.numel() for name, p in model.named_parameters() if ".eca." in name)
    assert extra == 3 * 5 * 256 + 4 * 5 * 512 + 6 * 5 * 1024 + 3 * 7 * 2048
    assert sum(p.numel() for p in model.parameters()) == 25_557_032 + extra
