"""Every route out of eager PyTorch against eager PyTorch: TorchScript, tracing, FX, torch.export, ONNX, torch.compile.

A covering set of the product interfaces x attention types x impls x block types x stems:
every interface for every attention type and impl on bottlenecks with the ImageNet stem; every
block type x stem on fast ECA for the interfaces whose result depends on the module structure
(scripting, tracing, FX, the TorchScript-based ONNX exporter); torch.compile on few cells. Each
cell compares with the eager model: float32 outputs (and, for training, gradients and BN running
statistics) within 1e-4 of the largest magnitude. BN statistics are random and every block
takes the fused tail's paths (see `fused_paths_at_test_sizes`), so a path that differs shows.
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
from ecacli.spec import ResNetSpec
from test_fast_eca import randomise_batch_norms

ATTENTION = {
    "none": {"type": "none"},
    "eca-fast": {"type": "eca", "impl": "fast"},
    "eca-reference": {"type": "eca", "impl": "reference"},
    "ceca-fast": {"type": "ceca", "impl": "fast"},
    "ceca-reference": {"type": "ceca", "impl": "reference"},
    "se": {"type": "se"},
    "cbam": {"type": "cbam"},
}
STEM_SIDES = {"imagenet": 64, "cifar": 32, "deep": 64, "deep_tiered": 64}
"""Input sides that leave layer4 2x2 (imagenet, deep stems) or 4x4 (cifar) pixels."""
BLOCKS = ("basic", "bottleneck")
RELATIVE_TOLERANCE = 1e-4

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning", "ignore::UserWarning", "ignore::torch.jit.TracerWarning"),
]


@pytest.fixture(autouse=True)
def fused_paths_at_test_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test-sized blocks take the fused inference path in eager mode too (by default, outputs under `FOLD_MIN_ELEMENTS` take the module path)."""
    monkeypatch.setattr(tail, "FOLD_MIN_ELEMENTS", 0)


def matrix_model(attention: str, block: str = "bottleneck", stem: str = "imagenet", layers: tuple[int, ...] = (2, 1, 1, 1)) -> nn.Module:
    """A narrow model (width 8) in eval mode with random BN statistics; with two blocks in layer1 both block types have an identity shortcut."""
    spec = ResNetSpec.model_validate(
        {"name": "matrix", "layers": list(layers), "block": block, "stem": stem, "width": 8, "num_classes": 10, "attention": ATTENTION[attention]}
    )
    model = new_model(spec, seed=0)
    randomise_batch_norms(model, torch.Generator().manual_seed(1))
    return model.eval()


def batch(model: nn.Module, n: int, seed: int) -> torch.Tensor:
    side = STEM_SIDES[model.spec.stem]
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


def check_feature_extractor(model: nn.Module) -> None:
    feature_extraction = pytest.importorskip("torchvision.models.feature_extraction")
    nodes = {"layer2": "mid", "layer4": "features", "fc": "logits"}
    extractor = feature_extraction.create_feature_extractor(model, return_nodes=nodes)
    x = batch(model, 2, seed=2)
    expected: dict[str, torch.Tensor] = {}
    hooks = [getattr(model, name).register_forward_hook(lambda m, i, out, key=key: expected.__setitem__(key, out.clone())) for name, key in nodes.items()]
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
"""The interfaces that follow the module structure, whose outcome can change with the block type and stem."""
HEAVY = {"export", "onnx-dynamo"}
"""Several seconds per cell: marked slow beyond the fast-ECA cells."""


def cell(interface: str, attention: str, block: str = "bottleneck", stem: str = "imagenet", slow: bool = False):
    return pytest.param(interface, attention, block, stem, id=f"{interface}-{attention}-{block}-{stem}", marks=[pytest.mark.slow] if slow else [])


COVERING = [cell(interface, attention, slow=interface in HEAVY and attention != "eca-fast") for interface in INTERFACES for attention in ATTENTION]
COVERING += [cell(interface, "eca-fast", block, stem) for interface in STRUCTURAL for block in BLOCKS for stem in STEM_SIDES if (block, stem) != ("bottleneck", "imagenet")]


@pytest.mark.parametrize(("interface", "attention", "block", "stem"), COVERING)
def test_interface_gives_eager_outputs(interface: str, attention: str, block: str, stem: str) -> None:
    layers = (2, 1, 1, 1) if (block, stem) == ("bottleneck", "imagenet") else (1, 1, 1, 1)  # basic blocks' first block has an identity shortcut anyway
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        INTERFACES[interface](matrix_model(attention, block, stem, layers))


COMPILED = [
    pytest.param("eval", "eca-fast", id="compile-eval-eca-fast"),
    pytest.param("train", "eca-fast", id="compile-train-eca-fast"),
    pytest.param("train", "eca-reference", id="compile-train-eca-reference", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("mode", "attention"), COMPILED)
def test_compiled_fullgraph_gives_eager_results(mode: str, attention: str) -> None:
    """torch.compile(fullgraph=True) on basic blocks, one per stage: the fast tail's traced path, eval and training, and the module path in training (a cold compilation costs 20-60 s here)."""
    model = matrix_model(attention, "basic", layers=(1, 1, 1, 1))
    (check_compile_train if mode == "train" else check_compile_eval)(model)
