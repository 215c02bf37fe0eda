"""Every route out of eager PyTorch against eager PyTorch: TorchScript, tracing, FX, torch.export, ONNX, torch.compile.

A covering set of the product interfaces x attention types x impls x models: every interface
for every attention type and impl on ResNet bottlenecks with the ImageNet stem; every other
ResNet block type x stem, the other norm layers and MobileNetV2 on fast ECA for the interfaces
whose result depends on the module structure (scripting, tracing, FX, the TorchScript-based
ONNX exporter); torch.compile on few cells. Cells that take a second or more (torch.export, the
dynamo ONNX exporter, torch.compile) are marked slow. Each cell compares with the eager model: float32
outputs (and, for training, gradients and BN running statistics) within 1e-4 of the largest
magnitude. Norm statistics are random and every block takes the fused tail's paths (see
`fused_paths_at_test_sizes`), so a path that differs shows.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn

from ecacli.checkpoints import new_model
from ecacli.layers import tail
from ecacli.spec_loader import spec_from_data
from conftest import randomise_batch_norms

ATTENTION = {
    "none": {"type": "none"},
    "eca-fast": {"type": "eca", "impl": "fast"},
    "eca-reference": {"type": "eca", "impl": "reference"},
    "ceca-fast": {"type": "ceca", "impl": "fast"},
    "ceca-reference": {"type": "ceca", "impl": "reference"},
    "eca_ns": {"type": "eca_ns"},
    "se": {"type": "se"},
    "cbam": {"type": "cbam"},
}
STEMS = ("imagenet", "cifar", "deep", "deep_tiered")
BLOCKS = ("basic", "bottleneck")
MAIN = "bottleneck-imagenet"
"""The model every interface x attention type runs on; two blocks in layer1 give it an identity shortcut (basic blocks have one in any layer1)."""
NARROW_RESNET = {"name": "matrix", "width": 8, "num_classes": 10}
MODELS: dict[str, dict] = {
    **{
        f"{block}-{stem}": {**NARROW_RESNET, "block": block, "stem": stem, "layers": [2, 1, 1, 1] if f"{block}-{stem}" == MAIN else [1, 1, 1, 1]}
        for block in BLOCKS
        for stem in STEMS
    },
    "bottleneck-imagenet-group-norm": {**NARROW_RESNET, "block": "bottleneck", "layers": [1, 1, 1, 1], "norm": "group"},
    "bottleneck-imagenet-frozen-batch-norm": {**NARROW_RESNET, "block": "bottleneck", "layers": [1, 1, 1, 1], "norm": "frozen_batch"},
    "mobilenetv2": {
        "arch": "mobilenetv2", "name": "matrix", "width_mult": 0.5, "num_classes": 10, "last_channel": 64, "dropout": 0.0,
        "inverted_residual_setting": [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 2, 2]],
    },
}
"""Spec data (all but the attention) of every model in the matrix, narrow to keep it fast."""
RELATIVE_TOLERANCE = 1e-4

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning", "ignore::UserWarning", "ignore::torch.jit.TracerWarning"),
]


@pytest.fixture(autouse=True)
def fused_paths_at_test_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test-sized blocks take the fused inference path in eager mode too (by default, outputs under `FOLD_MIN_ELEMENTS` take the module path)."""
    monkeypatch.setattr(tail, "FOLD_MIN_ELEMENTS", 0)


def randomise_norms(model: nn.Module, generator: torch.Generator) -> None:
    """`randomise_batch_norms`, and the same ranges for FrozenBatchNorm2d's buffers and GroupNorm's affine parameters."""
    randomise_batch_norms(model, generator)
    for module in model.modules():
        frozen = type(module).__name__ == "FrozenBatchNorm2d"  # torchvision's: an optional extra
        if frozen:
            module.running_mean.uniform_(-0.2, 0.2, generator=generator)
            module.running_var.uniform_(0.5, 1.5, generator=generator)
        if frozen or isinstance(module, nn.GroupNorm):
            module.weight.data.uniform_(0.5, 1.5, generator=generator)
            module.bias.data.uniform_(-0.5, 0.5, generator=generator)


def matrix_model(attention: str, model: str = MAIN) -> nn.Module:
    """The named model with the named attention, in eval mode, with random norm statistics."""
    data = MODELS[model]
    if data.get("norm") == "frozen_batch":
        pytest.importorskip("torchvision")
    built = new_model(spec_from_data({**data, "attention": ATTENTION[attention]}, f"matrix model {model}"), seed=0)
    randomise_norms(built, torch.Generator().manual_seed(1))
    return built.eval()


def batch(model: nn.Module, n: int, seed: int) -> torch.Tensor:
    """Inputs that leave ResNet's layer4 2x2 pixels (4x4 with the cifar stem) and MobileNetV2's last row 8x8."""
    side = 32 if getattr(model.spec, "stem", None) == "cifar" else 64
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


def assert_matches(got: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    scale = expected.detach().abs().max()
    diff = (got.detach() - expected.detach()).abs().max()
    assert diff <= RELATIVE_TOLERANCE * scale, f"{what}: max abs difference {diff:.3e}, largest magnitude {scale:.3e}"


def eager(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def training_step(run: Callable[[torch.Tensor], torch.Tensor], model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Output, all parameter gradients and all BN running statistics (flattened) after forward and backward of a training step."""
    out = run(x)
    out.square().mean().backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    stats = torch.cat([b.flatten().float() for name, b in model.named_buffers() if "running" in name])
    return out, grads, stats


def assert_same_training_step(run: Callable[[torch.Tensor], torch.Tensor], model: nn.Module, reference: nn.Module, x: torch.Tensor) -> None:
    for name, got, expected in zip(("output", "gradients", "running statistics"), training_step(run, model, x), training_step(reference, reference, x)):
        assert_matches(got, expected, name)


def check_script(model: nn.Module) -> None:
    scripted = torch.jit.script(model)
    x = batch(model, 2, seed=2)
    assert_matches(eager(scripted, x), eager(model, x), "scripted output")


def check_trace_eval(model: nn.Module) -> None:
    traced = torch.jit.trace(model, batch(model, 2, seed=2), check_trace=False)  # the check below runs it at another batch
    x = batch(model, 3, seed=3)
    assert_matches(eager(traced, x), eager(model, x), "traced output at another batch size")


def check_trace_train(model: nn.Module) -> None:
    model.train()
    reference = copy.deepcopy(model)
    traced = torch.jit.trace(model, batch(model, 2, seed=2), check_trace=False)
    reference(batch(model, 2, seed=2))  # tracing ran one forward: so does the reference, for the running statistics
    assert_same_training_step(traced, traced, reference, batch(model, 2, seed=3))


def check_fx(model: nn.Module) -> None:
    graph_module = torch.fx.symbolic_trace(model)
    x = batch(model, 2, seed=2)
    assert_matches(eager(graph_module, x), eager(model, x), "FX output")


FEATURE_NODES = {
    "resnet": {"layer2": "mid", "layer4": "features", "fc": "logits"},
    "mobilenetv2": {"features.2": "mid", "features": "features", "classifier": "logits"},
}
"""Modules whose outputs a feature extractor returns, by family (compared with forward hooks on eager's modules)."""


def check_feature_extractor(model: nn.Module) -> None:
    feature_extraction = pytest.importorskip("torchvision.models.feature_extraction")
    nodes = FEATURE_NODES[model.spec.arch]
    extractor = feature_extraction.create_feature_extractor(model, return_nodes=nodes)
    x = batch(model, 2, seed=2)
    expected: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(name).register_forward_hook(lambda m, i, out, key=key: expected.__setitem__(key, out.clone())) for name, key in nodes.items()]
    eager(model, x)
    for hook in hooks:
        hook.remove()
    with torch.no_grad():
        got = extractor(x)
    for key in nodes.values():
        assert_matches(got[key], expected[key], f"feature '{key}'")


def check_export(model: nn.Module) -> None:
    program = torch.export.export(model, (batch(model, 2, seed=2),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    x = batch(model, 3, seed=3)
    assert_matches(eager(program.module(), x), eager(model, x), "torch.export output at another batch size")


def onnx_runs_like_eager(model: nn.Module, dynamo: bool) -> None:
    """Export with a dynamic batch axis at batch 2, run batch 3 in ONNX Runtime."""
    pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    example = batch(model, 2, seed=2)
    names = {"input_names": ["input"], "output_names": ["logits"]}
    if dynamo:
        pytest.importorskip("onnxscript")
        data = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=({0: "batch"},), verbose=False, **names).model_proto.SerializeToString()
    else:
        buffer = io.BytesIO()
        torch.onnx.export(model, (example,), buffer, dynamo=False, dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **names)
        data = buffer.getvalue()
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"
    x = batch(model, 3, seed=3)
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    assert_matches(got, eager(model, x), f"ONNX Runtime output (dynamo={dynamo}) at another batch size")


def check_onnx_dynamo(model: nn.Module) -> None:
    onnx_runs_like_eager(model, dynamo=True)


def check_onnx_legacy(model: nn.Module) -> None:
    onnx_runs_like_eager(model, dynamo=False)


def check_compile_eval(model: nn.Module) -> None:
    torch.compiler.reset()
    compiled = torch.compile(model, fullgraph=True)
    x = batch(model, 2, seed=2)
    assert_matches(eager(compiled, x), eager(model, x), "compiled output")


def check_compile_train(model: nn.Module) -> None:
    torch.compiler.reset()
    model.train()
    reference = copy.deepcopy(model)
    assert_same_training_step(torch.compile(model, fullgraph=True), model, reference, batch(model, 2, seed=2))


INTERFACES: dict[str, Callable[[nn.Module], None]] = {
    "script": check_script,
    "trace-eval": check_trace_eval,
    "trace-train": check_trace_train,
    "fx": check_fx,
    "feature-extractor": check_feature_extractor,
    "export": check_export,
    "onnx-dynamo": check_onnx_dynamo,
    "onnx-legacy": check_onnx_legacy,
}
STRUCTURAL = ("script", "trace-eval", "fx", "onnx-legacy")
"""The interfaces that follow the module structure, whose outcome can change with the model's layout."""
HEAVY = {"export", "onnx-dynamo"}
"""A second or more per cell: marked slow (the fast loop, `-m "not slow"`, keeps the others)."""


def cell(interface: str, attention: str, model: str = MAIN, slow: bool = False):
    return pytest.param(interface, attention, model, id=f"{interface}-{attention}-{model}", marks=[pytest.mark.slow] if slow else [])


COVERING = [cell(interface, attention, slow=interface in HEAVY) for interface in INTERFACES for attention in ATTENTION]
COVERING += [cell(interface, "eca-fast", model) for interface in STRUCTURAL for model in MODELS if model != MAIN]
COVERING += [cell(interface, "eca-fast", model, slow=interface in HEAVY) for interface in ("feature-extractor", *HEAVY) for model in ("mobilenetv2", "bottleneck-imagenet-frozen-batch-norm")]


@pytest.mark.parametrize(("interface", "attention", "model"), COVERING)
def test_interface_gives_eager_outputs(interface: str, attention: str, model: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        INTERFACES[interface](matrix_model(attention, model))


COMPILED = [
    pytest.param("eval", "eca-fast", id="compile-eval-eca-fast"),
    pytest.param("train", "eca-fast", id="compile-train-eca-fast"),
    pytest.param("train", "eca-reference", id="compile-train-eca-reference"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "attention"), COMPILED)
def test_compiled_fullgraph_gives_eager_results(mode: str, attention: str) -> None:
    """torch.compile(fullgraph=True) on basic blocks, one per stage: the fast tail's traced path, eval and training, and the module path in training (a cold compilation costs 20-60 s here)."""
    (check_compile_train if mode == "train" else check_compile_eval)(matrix_model(attention, "basic-imagenet"))
