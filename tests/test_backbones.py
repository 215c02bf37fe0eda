"""Backbones: feature extractors, headless trunks, fine-tuning options, torchvision's FPN detectors, and detection checkpoints."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from ecacli import build_model, load_spec
from ecacli.checkpoints import converted_spec, load_model, new_model, open_checkpoint, spec_for
from ecacli.errors import OptionError, UserError
from ecacli.models import FeatureInfo
from conftest import randomise_batch_norms

from conftest import run_main

torchvision = pytest.importorskip("torchvision")

SMALL = ["width=16", "input_size=64"]


@pytest.mark.parametrize(
    ("name", "channels", "reductions"),
    [
        ("r50", [64, 256, 512, 1024, 2048], [2, 4, 8, 16, 32]),
        ("seed_r50", [64, 256, 512, 1024, 2048], [1, 1, 2, 4, 8]),
        ("r18", [64, 64, 128, 256, 512], [2, 4, 8, 16, 32]),
        ("eca_mobilenetv2_k13", [16, 24, 32, 96, 320], [2, 4, 8, 16, 32]),
    ],
)
def test_feature_info(name, channels, reductions):
    with torch.device("meta"):
        model = build_model(load_spec(name), features_only=True, out_indices=(0, 1, 2, 3, 4))
    assert isinstance(model.feature_info, FeatureInfo)
    assert model.feature_info.channels() == channels and model.feature_info.reduction() == reductions
    with torch.device("meta"):
        default = build_model(load_spec(name), features_only=True)
    assert default.feature_info.channels() == channels[1:]


@pytest.mark.parametrize("name", ["r50", "seed_r50", "eca_mobilenetv2_k13"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_features_are_the_classifiers_intermediate_outputs_bit_for_bit(name, training):
    spec = load_spec(name, ["input_size=64"])
    torch.manual_seed(0)
    full = randomise_batch_norms(build_model(spec), torch.Generator().manual_seed(0))
    features = build_model(spec, features_only=True, out_indices=(0, 1, 2, 3, 4))
    features.load_state_dict(full.state_dict(), strict=False)
    levels = features.feature_info.module_name()
    seen: dict[str, torch.Tensor] = {}
    for module_name, module in full.named_modules():
        if module_name in levels:
            module.register_forward_hook(lambda m, args, out, module_name=module_name: seen.__setitem__(module_name, out.detach().clone()))
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    full.train(training)
    features.train(training)
    with torch.set_grad_enabled(training):
        full(x)
        outputs = features(x)
    assert len(outputs) == 5
    for level, out in zip(levels, outputs):
        assert torch.equal(out.detach(), seen[level]), level


def test_headless_model_returns_pooled_features_and_takes_a_new_classifier():
    spec = load_spec("r50", ["num_classes=0", *SMALL])
    model = build_model(spec).eval()
    assert model.num_features == 512 and not any(key.startswith("fc.") for key in model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pooled = model(x)
        assert pooled.shape == (2, 512)
        assert torch.equal(model.forward_head(model.forward_features(x), pre_logits=True), pooled)
        model.reset_classifier(10)
        assert model(x).shape == (2, 10) and model.spec.num_classes == 10
        assert torch.equal(model.forward_head(model.forward_features(x), pre_logits=True), pooled)
    assert tuple(model.state_dict()["fc.weight"].shape) == (10, 512)
    model.reset_classifier(0)
    assert isinstance(model.fc, nn.Identity)
    with pytest.raises(OptionError, match="num_classes"):
        model.reset_classifier(-1)
    mobile = build_model(load_spec("mobilenetv2", ["num_classes=0"])).eval()
    assert mobile.num_features == 1280 and mobile(torch.randn(1, 3, 64, 64)).shape == (1, 1280)
    mobile.reset_classifier(10)
    assert mobile.spec.num_classes == 10 and "dropout" not in mobile.spec.model_fields_set  # the spec stays as written
    assert build_model(mobile.spec, features_only=True).feature_info.channels()[-1] == 320


def test_frozen_stages_and_norm_eval():
    spec = load_spec("r50", [*SMALL, "frozen_stages=1"])
    model = build_model(spec)
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {name for name, _ in model.named_parameters() if name.startswith(("conv1.", "bn1.", "layer1."))}
    assert model.training and not model.bn1.training and not model.layer1.training  # from construction on, as mmdetection's
    before = model.bn1.running_mean.clone()
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    assert torch.equal(model.bn1.running_mean, before)
    model.eval().train()
    assert not model.layer1.training and not model.bn1.training and model.layer2.training and model.layer2[0].bn1.training
    assert model.training
    keyword = build_model(load_spec("r50", SMALL), features_only=True, frozen_stages=0, norm_eval=True).train()
    assert not any(p.requires_grad for p in keyword.conv1.parameters()) and all(p.requires_grad for p in keyword.layer1.parameters())
    norms = [m for m in keyword.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms) and keyword.layer2[0].conv1.training
    x = torch.randn(2, 3, 64, 64)
    before = copy.deepcopy(keyword.state_dict())
    keyword(x)[-1].sum().backward()
    assert all(torch.equal(before[k], v) for k, v in keyword.state_dict().items() if "running" in k)  # statistics fixed
    mobile = build_model(load_spec("mobilenetv2"), frozen_stages=2)
    frozen = tuple(f"features.{i}." for i in range(7))  # the stem with the /2 level's block, then the /4 and /8 levels' blocks
    assert not any(p.requires_grad for name, p in mobile.named_parameters() if name.startswith(frozen))
    assert all(p.requires_grad for name, p in mobile.named_parameters() if not name.startswith(frozen))


@pytest.mark.parametrize(("norm", "kind"), [("frozen_batch", "FrozenBatchNorm2d"), ("group", "GroupNorm")])
def test_norm_layers(norm, kind):
    model = build_model(load_spec("r50", [*SMALL, f"norm={norm}"]))
    norms = {type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__}
    assert norms == {kind}
    reference = build_model(load_spec("r50", [*SMALL, f"norm={norm}", "attention.impl=reference"]))
    reference.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def parameters(module: nn.Module) -> tuple[int, int]:
    return sum(p.numel() for p in module.parameters()), sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_fpn_backbone_is_torchvisions():
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    from ecacli.backbones import fpn_backbone

    plain = fpn_backbone("resnet50")
    reference = resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=3)
    assert parameters(plain) == parameters(reference) == (26_799_296, 26_576_896)
    assert [(k, v.shape) for k, v in plain.state_dict().items()] == [(k, v.shape) for k, v in reference.state_dict().items()]
    eca = fpn_backbone("r50")
    assert parameters(eca) == (26_799_296 + 86, 26_576_896 + 86 - 15)  # layer1's three k = 5 kernels are frozen with it
    assert {type(m).__name__ for m in eca.body.modules() if "Norm" in type(m).__name__} == {"FrozenBatchNorm2d"}
    plain.load_state_dict(reference.state_dict())
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        for level, expected in reference.eval()(x).items():
            torch.testing.assert_close(plain.eval()(x)[level], expected, rtol=0, atol=0)


@pytest.mark.slow
def test_faster_rcnn_trains_and_detects_on_an_eca_backbone():
    from torchvision.models.detection import FasterRCNN

    from ecacli.backbones import fpn_backbone

    torch.manual_seed(0)
    detector = FasterRCNN(fpn_backbone("r50", trainable_layers=5), num_classes=91, min_size=96, max_size=128)
    images = [torch.rand(3, 96, 128), torch.rand(3, 96, 112)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0]]), "labels": torch.tensor([3])}, {"boxes": torch.tensor([[5.0, 5.0, 50.0, 40.0]]), "labels": torch.tensor([7])}]
    detector.train()
    losses = detector(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    eca_grads = [p.grad for n, p in detector.named_parameters() if ".eca." in n]
    assert eca_grads and all(g is not None and torch.isfinite(g).all() for g in eca_grads)
    detector.eval()
    with torch.no_grad():
        detections = detector(images)
    assert len(detections) == 2 and set(detections[0]) == {"boxes", "labels", "scores"}


# --- detection checkpoints --------------------------------------------------------------------------


def mmdetection_checkpoint(path, k=(3, 3, 7, 7)):
    """A Mask R-CNN ECA-Net50 checkpoint in mmdetection's layout: backbone, neck and heads under their own prefixes."""
    spec = load_spec("r50", [f"attention.k_size=[{', '.join(map(str, k))}]", "num_classes=0"])
    backbone = randomise_batch_norms(new_model(spec, seed=0), torch.Generator().manual_seed(3)).state_dict()
    state = {f"backbone.{key}": value for key, value in backbone.items()}
    state.update({
        "neck.lateral_convs.0.conv.weight": torch.zeros(256, 256, 1, 1), "neck.fpn_convs.0.conv.weight": torch.zeros(256, 256, 3, 3),
        "rpn_head.rpn_conv.weight": torch.zeros(256, 256, 3, 3), "roi_head.bbox_head.fc_cls.weight": torch.zeros(81, 1024),
        "roi_head.mask_head.conv_logits.weight": torch.zeros(80, 256, 1, 1),
    })
    torch.save({"meta": {"epoch": 12, "CLASSES": ["person"]}, "state_dict": state}, path)
    return backbone


def test_mmdetection_checkpoint_converts_to_a_headless_backbone(tmp_path, cli):
    backbone = mmdetection_checkpoint(tmp_path / "mask_rcnn_ecanet50_k3377.pth")
    checkpoint = open_checkpoint(tmp_path / "mask_rcnn_ecanet50_k3377.pth")
    assert checkpoint.state.details["detection"] == "mmdetection"
    assert checkpoint.state.details["dropped"] == {"neck": 2, "rpn_head": 1, "roi_head": 2}
    spec, _ = spec_for(checkpoint)
    assert (spec.num_classes, spec.depth, spec.stage_kernel_sizes) == (0, 50, [3, 3, 7, 7])
    result = cli("convert", str(tmp_path / "mask_rcnn_ecanet50_k3377.pth"), "-o", str(tmp_path / "backbone.safetensors"), "--json")
    assert result.returncode == 0, result.stderr
    written = json.loads(result.stdout)
    assert written["kernel_sizes"] == [3, 3, 7, 7] and any("neck (2), rpn_head (1), roi_head (2)" in note for note in written["notes"])
    features = load_model(tmp_path / "backbone.safetensors", features_only=True)
    by_hand = build_model(load_spec("r50", ["attention.k_size=[3, 3, 7, 7]", "num_classes=0"]), features_only=True).eval()
    by_hand.load_state_dict({key: value for key, value in backbone.items()})  # key by key, strict
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        for ours, theirs in zip(features(x), by_hand(x)):
            assert torch.equal(ours, theirs)
    shown = cli("inspect", str(tmp_path / "mask_rcnn_ecanet50_k3377.pth"))
    assert shown.returncode == 0
    assert "source:      mmdetection detection checkpoint, backbone: ECA-ResNet state_dict (the paper's names) (detection mmdetection)\n" in shown.stdout
    assert "dropped neck (2), rpn_head (1), roi_head (2)" in shown.stdout  # in the note, once


def test_torchvision_detection_checkpoint_gives_its_backbone(tmp_path):
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    detector = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    torch.save(detector.state_dict(), tmp_path / "frcnn.pth")
    checkpoint = open_checkpoint(tmp_path / "frcnn.pth")
    assert checkpoint.state.details["detection"] == "torchvision"
    assert set(checkpoint.state.details["dropped"]) == {"backbone.fpn", "rpn", "roi_heads"}
    plain, _ = spec_for(checkpoint)
    assert (plain.depth, plain.num_classes, plain.attention.type) == (50, 0, "none")
    assert converted_spec(checkpoint).attention.type == "eca"  # a warm start, as for a classifier


@pytest.mark.parametrize("name", ["r50", "eca_mobilenetv2_k13"])
def test_a_headless_state_dict_reads_as_a_headless_spec(tmp_path, name):
    model = randomise_batch_norms(build_model(load_spec(name, ["num_classes=0"])), torch.Generator().manual_seed(0))
    torch.save(model.state_dict(), tmp_path / "trunk.pth")
    spec, _ = spec_for(open_checkpoint(tmp_path / "trunk.pth"))
    assert spec.num_classes == 0 and spec.arch == model.spec.arch
    loaded = load_model(tmp_path / "trunk.pth", features_only=True).eval()
    x = torch.randn(1, 3, 64, 64)
    seen = []
    model.get_submodule(loaded.feature_info.module_name()[-1]).register_forward_hook(lambda m, args, out: seen.append(out))
    model.eval()(x)
    torch.testing.assert_close(loaded(x)[-1], seen[0], rtol=0, atol=0)


def test_a_classifier_with_a_backbone_and_a_head_is_no_detection_checkpoint(tmp_path):
    model = build_model(load_spec("r18", SMALL))
    state = {f"backbone.{key}": value for key, value in model.state_dict().items() if not key.startswith("fc.")}
    state.update({"head.fc.weight": model.fc.weight.detach(), "head.fc.bias": model.fc.bias.detach()})
    torch.save({"state_dict": state, "meta": {}}, tmp_path / "mmpretrain_r18.pth")  # mmpretrain's layout
    checkpoint = open_checkpoint(tmp_path / "mmpretrain_r18.pth")
    assert "detection" not in checkpoint.state.details and set(checkpoint.tensors) == set(state)  # nothing dropped
    assert "found a backbone under 'backbone.' beside head.* (2 tensors), which no mmdetection detector holds" in checkpoint.state.problem
    with pytest.raises(UserError, match=r"unsupported checkpoint: found a backbone under 'backbone.' beside head.\* \(2 tensors\)"):
        spec_for(checkpoint)
    code, _, err = run_main("convert", str(tmp_path / "mmpretrain_r18.pth"), "-o", str(tmp_path / "headless.safetensors"))
    assert code == 2 and err.startswith(f"error: {tmp_path / 'mmpretrain_r18.pth'}: unsupported checkpoint: found a backbone") and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mmpretrain_r18.pth"]


def test_a_detection_backbone_that_is_no_resnet_is_refused(tmp_path):
    state = {"backbone.patch_embed.proj.weight": torch.zeros(96, 3, 4, 4), "neck.lateral_convs.0.conv.weight": torch.zeros(256, 96, 1, 1)}
    torch.save({"meta": {}, "state_dict": state}, tmp_path / "swin.pth")
    with pytest.raises(UserError, match="patch_embed"):
        spec_for(open_checkpoint(tmp_path / "swin.pth"))


# --- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"features_only": True, "out_indices": (1, 5)}, "out_indices .* from 0 to 4"),
        ({"features_only": True, "out_indices": (3, 2)}, "out_indices .*increasing"),
        ({"features_only": True, "out_indices": ()}, "non-empty"),
        ({"out_indices": (1, 2)}, "features_only=True"),
        ({"frozen_stages": 5}, "frozen_stages.*beyond this network's 4 stages"),
    ],
)
def test_bad_backbone_options(kwargs, match):
    with pytest.raises(OptionError, match=match) as info:
        build_model(load_spec("r50"), **kwargs)
    assert isinstance(info.value, ValueError)


def test_features_only_ignores_classifier_options():
    """As timm's features_only: the classifier's keys (the release's dropout, say) shape nothing a trunk has."""
    trunk = build_model(load_spec("eca_mobilenetv2_k13", ["dropout=0.5", "last_channel=640"]), features_only=True)
    assert not any("classifier" in name or name.startswith("features.18") for name, _ in trunk.named_modules())


def test_fpn_backbone_refusals():
    from ecacli.backbones import fpn_backbone

    with pytest.raises(OptionError, match="ResNet trunk"):
        fpn_backbone("mobilenetv2")
    with pytest.raises(OptionError, match="trainable_layers"):
        fpn_backbone("r50", trainable_layers=6)
    for returned_layers in ([0, 1], [1, "2"], 3, [2, 1], [], [True]):
        with pytest.raises(OptionError, match="returned_layers"):
            fpn_backbone("r50", returned_layers=returned_layers)


def test_fpn_backbone_keeps_frozen_stages_and_norm_eval_in_eval():
    from ecacli.backbones import fpn_backbone

    backbone = fpn_backbone(load_spec("r50", [*SMALL, "norm_eval=true"]), trainable_layers=2, norm=None).train()
    body = backbone.body
    assert body.layer3.training and body.layer3[0].conv1.training
    assert not body.bn1.training and not body.layer2.training  # the stem and layers 1-2 are frozen
    assert not any(m.training for m in body.modules() if isinstance(m, nn.BatchNorm2d))  # norm_eval everywhere
    before = copy.deepcopy(body.state_dict())
    sum(level.sum() for level in backbone(torch.randn(2, 3, 64, 64)).values()).backward()
    assert all(torch.equal(before[k], v) for k, v in body.state_dict().items() if "running" in k)


def test_summary_features(cli):
    result = cli("summary", "r50", "--features", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["module"], r["channels"], r["stride"], r["output_shape"]) for r in rows][1:] == [
        ("layer1", 256, 4, [1, 256, 56, 56]), ("layer2", 512, 8, [1, 512, 28, 28]), ("layer3", 1024, 16, [1, 1024, 14, 14]), ("layer4", 2048, 32, [1, 2048, 7, 7])
    ]
    assert cli("summary", "r50", "--features", "--torchinfo").returncode == 2
