"""`ecacli.attach`: attention in torchvision, timm and hand-written networks, exact against ecacli's and timm's own ECA models (float64), and through every tool a model goes through."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import randomise_batch_norms
from ecacli import attach, build_model, load_spec
from ecacli.attachment import InsertionPoint, insertion_points
from ecacli.errors import OptionError
from ecacli.layers.eca import EcaModule

torchvision = pytest.importorskip("torchvision")


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def snapshot(model: nn.Module) -> tuple:
    """What a failed attach must leave as it was: every module's name and class, and the state_dict's names."""
    return [(name, type(module)) for name, module in model.named_modules()], list(model.state_dict())


def assert_same_model(attached: nn.Module, reference: nn.Module, shape: list[int]) -> None:
    """The reference's state_dict loads strictly into the attached model, and both compute the same in float64 (eval mode, randomised BN statistics)."""
    randomise_batch_norms(reference, seeded(1))
    attached.load_state_dict(reference.state_dict(), strict=True)
    attached.double().eval()
    reference.double().eval()
    x = torch.randn(shape, generator=seeded(2), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(attached(x), reference(x), rtol=1e-12, atol=1e-12)


# --- exact against ecacli's and timm's ECA networks ------------------------------------------------


@pytest.mark.slow
def test_torchvision_resnet18_with_eca_after_bn2_is_r18():
    model = attach(torchvision.models.resnet18(), "eca", after="layer*.*.bn2")
    assert [name for name, _ in model.named_modules() if name.endswith("eca")][:2] == ["layer1.0.eca", "layer1.1.eca"]
    assert_same_model(model, build_model(load_spec("r18")), [2, 3, 32, 32])


@pytest.mark.slow
def test_torchvision_resnet50_with_eca_after_bn3_is_r50():
    model = attach(torchvision.models.resnet50(), "eca", after="layer*.*.bn3")
    assert sum(p.numel() for p in model.parameters()) == 25_557_118
    assert_same_model(model, build_model(load_spec("r50")), [2, 3, 32, 32])


@pytest.mark.slow
def test_timm_seresnet50_with_se_replaced_is_timms_eca_resnet50():
    timm = pytest.importorskip("timm")
    model = attach(timm.create_model("seresnet50"), "eca", replace="se")
    reference = timm.create_model("resnet50", block_args=dict(attn_layer="eca"))
    assert_same_model(model, reference, [2, 3, 32, 32])


def test_torchvision_efficientnet_b0_with_se_replaced_counts_exactly():
    model = torchvision.models.efficientnet_b0()
    se = [m for m in model.modules() if type(m).__name__ == "SqueezeExcitation"]
    before = sum(p.numel() for p in model.parameters())
    se_params = sum(p.numel() for m in se for p in m.parameters())
    points = insertion_points(model, "eca", replace="se")
    assert len(points) == len(se) == 16
    assert points[0] == InsertionPoint("features.1.0.block.1", "features.1.0.block.1", 32, 3)
    attach(model, "eca", replace="se")
    assert sum(p.numel() for p in model.parameters()) == before - se_params + sum(p.k for p in points)
    assert not any(type(m).__name__ == "SqueezeExcitation" for m in model.modules())
    assert isinstance(model.features[1][0].block[1], EcaModule)


# --- 1D and 3D networks against a hand-written ECA -------------------------------------------------


def hand_written_eca(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The paper's ECA written out: mean over every axis after the channels, a k-tap conv across channels (zero padding), sigmoid, scale."""
    pooled = x.flatten(2).mean(-1)  # [N, C]
    k = weight.shape[-1]
    padded = F.pad(pooled, ((k - 1) // 2, (k - 1) // 2))
    logits = torch.stack([(padded[:, c : c + k] * weight.view(-1)).sum(-1) for c in range(pooled.shape[1])], dim=1)
    return x * torch.sigmoid(logits).view(*pooled.shape, *[1] * (x.dim() - 2))


class Toy(nn.Module):
    """conv-bn-relu, twice, in 1D or 3D; a plain nn.Module parent (so matches are class-swapped)."""

    def __init__(self, conv: type[nn.Module], norm: type[nn.Module]) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv(2, 16, 3, padding=1, bias=False), norm(16)
        self.conv2, self.bn2 = conv(16, 300, 3, padding=1, bias=False), norm(300)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


@pytest.mark.parametrize("conv, norm, shape", [(nn.Conv1d, nn.BatchNorm1d, [2, 2, 40]), (nn.Conv3d, nn.BatchNorm3d, [2, 2, 3, 5, 4])])
def test_one_and_three_dimensional_networks_against_hand_written_eca(conv, norm, shape):
    torch.manual_seed(0)
    model = Toy(conv, norm).double()
    points = insertion_points(model, "eca", after="bn*")
    assert [(p.name, p.attention, p.channels, p.k) for p in points] == [("bn1", "eca_bn1", 16, 3), ("bn2", "eca_bn2", 300, 5)]
    attach(model, "eca", after="bn*")
    generator = seeded(3)
    for module in (model.eca_bn1, model.eca_bn2):
        module.conv.weight.data.uniform_(-1, 1, generator=generator)
    for bn in (model.bn1, model.bn2):
        bn.weight.data.uniform_(0.5, 1.5, generator=generator)
        bn.bias.data.uniform_(-0.5, 0.5, generator=generator)
        bn.running_mean.uniform_(-0.2, 0.2, generator=generator)
        bn.running_var.uniform_(0.5, 1.5, generator=generator)
    model.eval()

    def batch_norm(h: torch.Tensor, bn: nn.Module) -> torch.Tensor:
        return F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)

    x = torch.randn(shape, generator=seeded(4), dtype=torch.float64)
    with torch.no_grad():
        h = F.relu(hand_written_eca(batch_norm(model.conv1(x), model.bn1), model.eca_bn1.conv.weight))
        expected = F.relu(hand_written_eca(batch_norm(model.conv2(h), model.bn2), model.eca_bn2.conv.weight))
        torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)
    assert expected.shape == torch.Size(shape[:1] + [300] + shape[2:])


# --- naming, placement and refusals ----------------------------------------------------------------


def test_in_a_sequential_the_attention_is_inserted_after_the_match_and_other_names_stay():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.BatchNorm2d(16))
    keys = list(model.state_dict())
    attach(model, {"type": "eca", "k_size": 3}, after="[14]")
    assert list(model._modules) == ["0", "1", "eca_1", "2", "3", "4", "eca_4"]
    assert [k for k in model.state_dict() if "eca" not in k] == keys
    x = torch.randn(2, 3, 9, 9)
    assert torch.equal(model(x), model.eca_4(model[5](model[4](model[3](model[2](model[1](model[0](x))))))))
    scripted = torch.jit.script(model.eval())
    torch.testing.assert_close(scripted(x), model(x))


def test_one_match_per_parent_takes_the_type_name_and_a_taken_name_is_avoided():
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet18", num_classes=10)  # timm's blocks keep `se = None`, which their forward would call if set
    attach(model, "se", after="layer1.*.bn2")
    assert model.layer1[0].se is None and type(model.layer1[0].se_bn2).__name__ == "SeModule"
    model = torchvision.models.resnet18()
    model.layer1[0].add_module("eca", nn.Identity())
    attach(model, "eca", after="layer1.*.bn2")
    assert isinstance(model.layer1[0].eca_bn2, EcaModule) and isinstance(model.layer1[1].eca, EcaModule)


def test_new_attention_joins_the_models_dtype():
    model = torchvision.models.resnet18().to(torch.float64)
    attach(model, "eca", after="layer4.*.bn2")
    assert model.layer4[0].eca.conv.weight.dtype == torch.float64
    assert model.eval()(torch.randn(1, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"after": "layer*.bn9"}, "matches no module of ResNet"),
        ({"after": "layer" * 100}, "... (500 characters) matches no module of ResNet"),
        ({"after": "fc"}, "linear layer's output is [N, features]"),
        ({"after": "fc", "input_shape": [1, 3, 32, 32]}, "returns a tensor of shape [1, 1000], not a channel-first feature map"),
        ({"after": "avgpool"}, "give input_shape"),
        ({"replace": "se"}, "holds no squeeze-and-excitation module"),
        ({"replace": "cbam"}, "replace must be one of se"),
        ({}, "give one of after="),
        ({"after": "layer1.*.bn2", "replace": "se"}, "give one of after="),
        ({"after": "layer*.*.bn2", "attention": {"k_size": [3, 5]}}, "gives 2 kernel sizes for 8 insertion points"),
        ({"after": "bn1", "attention": "squeeze"}, "unknown attention type 'squeeze'"),
        ({"after": "bn1", "attention": {"k_size": 4}}, "k_size"),
    ],
)
def test_every_mistake_is_one_option_error_and_the_model_is_unchanged(kwargs, message):
    model = torchvision.models.resnet18()
    before = snapshot(model)
    attention = kwargs.pop("attention", "eca")
    with pytest.raises(OptionError) as caught:
        attach(model, attention, **kwargs)
    assert message in str(caught.value)
    assert snapshot(model) == before


def test_planar_attention_on_one_or_three_dimensional_features_is_refused():
    for attention in ("se", "cbam"):
        with pytest.raises(OptionError, match=rf"'bn1' gives \[N, C, D, H, W\] features; {attention} takes \[N, C, H, W\] only"):
            attach(Toy(nn.Conv3d, nn.BatchNorm3d), attention, after="bn*")
        with pytest.raises(OptionError, match=r"'conv1' gives \[N, C, L\] features"):
            attach(Toy(nn.Conv1d, nn.BatchNorm1d), attention, after="conv*")


def test_a_kernel_wider_than_the_channels_is_refused():
    model = nn.Sequential(nn.Conv1d(1, 8, 3), nn.BatchNorm1d(8))
    with pytest.raises(OptionError, match="k = 9 at '1' is wider than the 8 channels it slides over; use an odd k of at most 7"):
        attach(model, {"k_size": 9}, after="1")
    assert list(model._modules) == ["0", "1"]


def test_a_spec_attention_mapping_carries_its_own_placement():
    model = attach(torchvision.models.resnet18(), {"type": "eca", "k_size": 3, "after": "layer4.*.bn2"})
    assert [name for name, _ in model.named_modules() if name.endswith(".eca")] == ["layer4.0.eca", "layer4.1.eca"]
    with pytest.raises(OptionError, match="after='layer1.*.bn2' contradicts the attention's own after: 'layer4.*.bn2'"):
        insertion_points(torchvision.models.resnet18(), {"after": "layer4.*.bn2"}, after="layer1.*.bn2")


@pytest.mark.slow
def test_matches_inside_containers_register_their_attention_where_it_runs_once():
    model = torchvision.models.densenet121(num_classes=3)
    points = insertion_points(model, "eca", after="features.denseblock1.denselayer[12]", input_shape=[1, 3, 32, 32])
    assert [p.attention for p in points] == ["eca_features_denseblock1_denselayer1", "eca_features_denseblock1_denselayer2"]
    attach(model, "eca", after="features.denseblock1.denselayer[12]", input_shape=[1, 3, 32, 32])
    calls = []
    for point in points:
        model.get_submodule(point.attention).register_forward_hook(lambda *_, name=point.attention: calls.append(name))
    model.eval()(torch.randn(1, 3, 32, 32))
    assert calls == [p.attention for p in points]
    with pytest.raises(OptionError, match="sits in containers up to the model"):
        attach(nn.Sequential(nn.ModuleList([nn.Conv2d(3, 8, 1)])), "eca", after="0.0")


def test_attaching_twice_after_one_module_is_refused():
    model = attach(torchvision.models.resnet18(), "eca", after="layer1.0.bn2")
    with pytest.raises(OptionError, match="already has attention attached"):
        attach(model, "eca", after="layer1.0.bn2")


def test_replace_with_none_removes_the_se_modules():
    model = torchvision.models.efficientnet_b0()
    attach(model, "none", replace="se")
    assert isinstance(model.features[1][0].block[1], nn.Identity)


@pytest.mark.slow
def test_every_attention_type_attaches_to_a_2d_network():
    for attention in ("eca", "ceca", "eca_ns", "se", "cbam"):
        model = attach(torchvision.models.resnet18(num_classes=4), attention, after="layer*.*.bn2").eval()
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 4)


# --- every tool a model goes through ---------------------------------------------------------------


@pytest.fixture(scope="module")
def attached_r18():
    torch.manual_seed(0)
    model = attach(torchvision.models.resnet18(num_classes=10), "eca", after="layer*.*.bn2").eval()
    randomise_batch_norms(model, seeded(5))
    return model, torch.randn(2, 3, 32, 32, generator=seeded(6))


def test_fx_symbolic_trace_keeps_the_attention(attached_r18):
    model, x = attached_r18
    traced = torch.fx.symbolic_trace(model)
    assert "layer1.0.eca.conv" in {str(node.target) for node in traced.graph.nodes}
    torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)


@pytest.mark.slow
def test_torch_export_and_jit_trace(attached_r18):
    model, x = attached_r18
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), model(x))
    traced = torch.jit.trace(model, x)
    torch.testing.assert_close(traced(x), model(x))


def test_torch_func_grad_reaches_the_attention(attached_r18):
    model, x = attached_r18
    params = dict(model.named_parameters())
    grads = torch.func.grad(lambda p: torch.func.functional_call(model, p, (x,)).square().sum())(params)
    assert grads["layer1.0.eca.conv.weight"].abs().sum() > 0


def test_torchscript_of_a_class_swapped_match_is_one_clear_error(attached_r18):
    model, _ = attached_r18
    with pytest.raises(OptionError, match="TorchScript cannot script a GatedBatchNorm2d"):
        torch.jit.script(model)


@pytest.mark.slow
def test_torch_compile_of_an_attached_network():
    model = attach(Toy(nn.Conv1d, nn.BatchNorm1d), "eca", after="bn*").eval()
    x = torch.randn(2, 2, 40, generator=seeded(8))
    torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_torchscript_of_replaced_se_modules_runs_as_eager():
    model = attach(torchvision.models.efficientnet_b0(num_classes=5), "eca", replace="se").eval()
    x = torch.randn(1, 3, 32, 32, generator=seeded(7))
    torch.testing.assert_close(torch.jit.script(model)(x), model(x))


@pytest.mark.slow
@pytest.mark.parametrize("dynamo", [False, True])
def test_onnx_exporters_run_in_onnxruntime(attached_r18, dynamo, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model, x = attached_r18
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=dynamo, input_names=["x"])
    session = ort.InferenceSession(str(path))
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), model(x).detach(), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_deepcopy_and_state_dict_round_trip(attached_r18):
    import copy

    model, x = attached_r18
    twin = copy.deepcopy(model)
    assert twin.layer1[0].bn2.attached_attention is twin.layer1[0].eca
    twin.layer1[0].eca.conv.weight.data.add_(1.0)
    assert not torch.equal(twin(x), model(x))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    twin.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())), strict=True)
    assert torch.equal(twin(x), model(x))
    buffer = io.BytesIO()
    torch.save(model, buffer)  # the whole module, pickled
    whole = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
    assert type(whole.layer1[0].bn2) is type(model.layer1[0].bn2) and whole.layer1[0].bn2.attached_attention is whole.layer1[0].eca
    assert torch.equal(whole(x), model(x))
