"""Attention types side by side: exact parameter counts, hand-checked behaviour of each module."""

from __future__ import annotations

import pytest
import torch

from ecacli import build_model, load_spec
from ecacli.arch import KINDS
from ecacli.layers.build import build
from ecacli.layers.cbam import CbamModule
from ecacli.layers.eca import EcaModule
from ecacli.layers.se import SeModule
from ecacli.spec import ATTENTION_TYPES, reduced_channels

RESNET50 = 25_557_032
R50_BLOCK_WIDTHS = [256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 3


def params(name: str, *overrides: str) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(load_spec(name, overrides)).parameters())


@pytest.mark.parametrize("name", sorted(set(ATTENTION_TYPES) - {"none"}))
def test_every_attention_type_builds_the_module_its_description_names(name):
    """Each registered type's node builds a module whose children are the ones its kind describes, parameters included."""
    settings = ATTENTION_TYPES[name].model_validate({"type": name})
    node = settings.node(64, 3)
    module = build(node)
    assert type(module).__name__ == KINDS[node.kind].type_name and node.name == settings.module_name
    assert [child.name for child in node.children] == [name for name, _ in module.named_children()]
    assert ATTENTION_TYPES["none"].model_validate({"type": "none"}).node(64, 3) is None


def test_se_r50_equals_timm_seresnet50():
    assert params("se_r50") == 28_088_024


def test_ceca_r50_has_the_same_parameters_as_r50():
    assert params("ceca_r50") == params("r50") == 25_557_118


@pytest.mark.parametrize("mlp_bias", [False, True])
@pytest.mark.parametrize("spatial_kernel", [3, 7])
def test_cbam_r50_follows_its_formula(mlp_bias, spatial_kernel):
    # Per block: shared MLP C->h->C (biases optional), a 2->1 k x k conv without bias, and a 1-channel BN.
    expected = RESNET50
    for c in R50_BLOCK_WIDTHS:
        h = reduced_channels(c, 16, 8)
        expected += 2 * c * h + (h + c if mlp_bias else 0) + 2 * spatial_kernel**2 + 2
    got = params("cbam_r50", f"attention.mlp_bias={str(mlp_bias).lower()}", f"attention.spatial_kernel={spatial_kernel}")
    assert got == expected
    if not mlp_bias and spatial_kernel == 7:
        assert got == 28_073_576  # timm's CBAM-ResNet-50


def test_reduced_channels_rounds_to_the_divisor():
    assert [reduced_channels(c, 16, 8) for c in (64, 100, 256, 2048)] == [8, 8, 16, 128]
    assert reduced_channels(64, 16, 1) == 4


def test_ceca_gates_are_all_equal_for_a_constant_input():
    gate = EcaModule(5, circular=True).gate(torch.full((2, 12, 3, 3), 0.7))
    assert torch.allclose(gate, gate[0, 0].expand_as(gate))


def test_ceca_padding_wraps_around_the_channels():
    eca = EcaModule(3, circular=True)
    with torch.no_grad():
        eca.conv.weight.copy_(torch.tensor([[[1.0, 0.0, 0.0]]]))  # each gate sees its left neighbour only
    pooled = torch.arange(1.0, 6.0)  # channel means 1..5
    x = pooled[None, :, None, None].expand(1, 5, 2, 2)
    logits = torch.logit(eca.gate(x).flatten())
    torch.testing.assert_close(logits, torch.tensor([5.0, 1.0, 2.0, 3.0, 4.0]))


def test_se_matches_hand_computation():
    torch.manual_seed(0)
    se = SeModule(6, 3)
    x = torch.randn(2, 6, 4, 4)
    pooled = x.mean(dim=(2, 3))
    hidden = torch.relu(pooled @ se.fc1.weight[:, :, 0, 0].T + se.fc1.bias)
    gate = torch.sigmoid(hidden @ se.fc2.weight[:, :, 0, 0].T + se.fc2.bias)
    torch.testing.assert_close(se(x), x * gate[:, :, None, None])


def test_cbam_matches_hand_computation():
    torch.manual_seed(0)
    cbam = CbamModule(8, 4, spatial_kernel=3).eval()
    x = torch.randn(2, 8, 5, 5)
    w1, w2 = cbam.channel.fc1.weight[:, :, 0, 0], cbam.channel.fc2.weight[:, :, 0, 0]
    mlp = lambda v: torch.relu(v @ w1.T) @ w2.T  # noqa: E731
    y = x * torch.sigmoid(mlp(x.mean(dim=(2, 3))) + mlp(x.amax(dim=(2, 3))))[:, :, None, None]
    maps = torch.stack([y.mean(dim=1), y.amax(dim=1)], dim=1)
    spatial = torch.nn.functional.conv2d(maps, cbam.spatial.conv.weight, padding=1)
    bn = cbam.spatial.bn
    spatial = (spatial - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    torch.testing.assert_close(cbam(x), y * torch.sigmoid(spatial))


def test_cbam_channel_gate_is_equal_for_avg_and_max_of_a_constant_input():
    cbam = CbamModule(8, 4)
    x = torch.full((1, 8, 3, 3), 2.0)
    n = 1
    pooled = torch.cat([x.mean(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)])
    logits = cbam.channel.fc2(cbam.channel.relu(cbam.channel.fc1(pooled)))
    torch.testing.assert_close(logits[:n], logits[n:])


@pytest.mark.parametrize(("kind", "key"), [("se", "layer1.0.se.fc1.weight"), ("cbam", "layer1.0.cbam.spatial.conv.weight"), ("ceca", "layer1.0.eca.conv.weight")])
def test_attention_modules_are_named_by_type(kind, key):
    with torch.device("meta"):
        model = build_model(load_spec("r18", [f"attention.type={kind}"]))
    assert key in model.state_dict()


@pytest.mark.parametrize("kind", ["se", "cbam", "ceca"])
def test_every_type_trains_a_step(kind):
    torch.manual_seed(0)
    model = build_model(load_spec("r18", [f"attention.type={kind}", "depth=null", "layers=[1, 1, 1, 1]", "block=basic", "width=8", "num_classes=3"]))
    loss = model(torch.randn(2, 3, 32, 32)).logsumexp(dim=1).mean()
    loss.backward()
    attention = model.layer1[0].attention
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in attention.parameters())
