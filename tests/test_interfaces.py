"""Every route out of eager PyTorch against eager PyTorch: TorchScript, tracing, FX, torch.export, ONNX, torch.compile;
and every tool that looks inside a model (torch.func, forward AD, double backward, FLOP counters) against the reference.

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
from torch.autograd import forward_ad

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
HEAVY = ("export", "onnx-dynamo")
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


# --- functional transforms and counting tools --------------------------------------------------
# Each tool runs on the default model (impl: fast) and on the reference (impl: reference: every
# module called in turn, the gate a plain nn.Conv1d) in float64; results agree to 1e-9 of the
# largest magnitude. ECA-NS, which has one implementation, is held to plain autograd where a tool
# computes gradients.

EXACT = 1e-9
FAMILIES = {"resnet": MAIN, "mobilenetv2": "mobilenetv2"}
REFERENCE_OF = {"eca-fast": "eca-reference", "ceca-fast": "ceca-reference", "eca_ns": "eca_ns"}


def float64_pair(attention: str, family: str, training: bool) -> tuple[nn.Module, nn.Module]:
    """(model, reference): the same weights and statistics, float64, in the given mode."""
    model = matrix_model(attention, FAMILIES[family]).double().train(training)
    reference = matrix_model(REFERENCE_OF[attention], FAMILIES[family]).double().train(training)
    reference.load_state_dict(model.state_dict())
    return model, reference


def assert_exact(got, expected, what: str) -> None:
    got, expected = (list(v) if isinstance(v, (list, tuple)) else [v] for v in (got, expected))
    assert len(got) == len(expected), what
    for i, (g, e) in enumerate(zip(got, expected)):
        scale = e.detach().abs().max().clamp_min(1e-30)
        diff = (g.detach() - e.detach()).abs().max()
        assert diff <= EXACT * scale, f"{what} [{i}]: max abs difference {diff:.3e}, largest magnitude {scale:.3e}"


def loss_of(model: nn.Module):
    """loss(params, buffers, x): a functional loss over the model's parameters; the buffers are passed in, as torch.func wants what BatchNorm updates."""
    def loss(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, (params, buffers), (x,)).square().mean()
    return loss


def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in model.named_parameters()}


def buffers_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.named_buffers())


def tool_func_grad(model: nn.Module, x: torch.Tensor):
    grads = torch.func.grad(loss_of(model))(params_of(model), buffers_of(model), x)
    return [grads[name] for name, _ in model.named_parameters()]


def tool_vmap_grad(model: nn.Module, x: torch.Tensor):
    loss = loss_of(model)
    per_sample = torch.func.vmap(torch.func.grad(lambda p, b, xi: loss(p, b, xi[None])), in_dims=(None, None, 0))(params_of(model), buffers_of(model), x)
    return [per_sample[name] for name, _ in model.named_parameters()]


def tool_jvp(model: nn.Module, x: torch.Tensor):
    params, buffers = params_of(model), buffers_of(model)
    directions = {name: torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(7)) for name, p in params.items()}
    run = lambda p, xi: torch.func.functional_call(model, (p, buffers), (xi,))  # noqa: E731
    return torch.func.jvp(run, (params, x), (directions, torch.ones_like(x)))


def tool_jacrev(model: nn.Module, x: torch.Tensor):
    return torch.func.jacrev(lambda xi: model(xi).sum(0))(x[:1])


def tool_forward_ad(model: nn.Module, x: torch.Tensor):
    with forward_ad.dual_level():
        out = forward_ad.unpack_dual(model(forward_ad.make_dual(x, torch.cos(x))))
        return [out.primal, out.tangent]


def tool_double_backward(model: nn.Module, x: torch.Tensor):
    inputs = x.clone().requires_grad_()
    (grad_x,) = torch.autograd.grad(model(inputs).square().mean(), inputs, create_graph=True)
    tensors = (inputs, *model.parameters())
    grads = torch.autograd.grad(grad_x.square().sum(), tensors, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads)]


def tool_ensemble(model: nn.Module, x: torch.Tensor):
    members = [model, copy.deepcopy(model)]
    with torch.no_grad():
        for p in members[1].parameters():
            p.mul_(0.9)
        params, buffers = torch.func.stack_module_state(members)
        base = copy.deepcopy(model).to("meta")
        run = lambda p, b, xi: torch.func.functional_call(base, (p, b), (xi,))  # noqa: E731
        together = torch.func.vmap(run, in_dims=(0, 0, None))(params, buffers, x)
        assert_exact(together, torch.stack([member(x) for member in members]), "ensemble against its members")
        return together


def tool_flop_counter(model: nn.Module, x: torch.Tensor):
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = model(x)
        if model.training:
            out.square().mean().backward()
    return torch.tensor([float(counter.get_total_flops())], dtype=torch.float64)


TOOLS: dict[str, tuple[Callable, tuple[bool, ...], bool]] = {
    "func-grad": (tool_func_grad, (True, False), True),
    "vmap-grad": (tool_vmap_grad, (False,), True),
    "jvp": (tool_jvp, (False,), False),  # training mutates captured BN buffers, which torch.func refuses for any model
    "jacrev": (tool_jacrev, (False,), False),
    "forward-ad": (tool_forward_ad, (True, False), False),
    "double-backward": (tool_double_backward, (True, False), True),
    "ensemble": (tool_ensemble, (False,), False),
    "flop-counter": (tool_flop_counter, (True, False), False),
}
"""Each tool: how it runs a model on an input, the modes it runs in (training?), and whether its results are parameter gradients that plain autograd also gives."""

TOOL_CELLS = [
    pytest.param(tool, attention, family, training, id=f"{tool}-{attention}-{family}-{'train' if training else 'eval'}",
                 marks=[pytest.mark.slow] if (family != "resnet" or attention != "eca-fast") and tool in ("jacrev", "vmap-grad", "ensemble") else [])
    for tool, (_, modes, _) in TOOLS.items()
    for attention in REFERENCE_OF
    for family in FAMILIES
    for training in modes
]


def plain_gradients(model: nn.Module, x: torch.Tensor, tool: str):
    """What plain autograd gives for a gradient tool, on an eval-mode copy where the tool is per-sample."""
    model = copy.deepcopy(model)
    if tool == "vmap-grad":
        rows = []
        for i in range(x.shape[0]):
            model.zero_grad()
            model(x[i : i + 1]).square().mean().backward()
            rows.append([p.grad.clone() for p in model.parameters()])
        return [torch.stack(column) for column in zip(*rows)]
    if tool == "func-grad":
        model(x).square().mean().backward()
        return [p.grad for p in model.parameters()]
    return None


@pytest.mark.parametrize(("tool", "attention", "family", "training"), TOOL_CELLS)
def test_functional_tools_give_the_reference_results(tool: str, attention: str, family: str, training: bool) -> None:
    """torch.func transforms, forward AD, double backward, ensembling and FlopCounterMode on the default model give the reference's numbers (float64, 1e-9)."""
    model, reference = float64_pair(attention, family, training)
    x = batch(model, 2, seed=5).double()
    run, _, gradient_tool = TOOLS[tool]
    expected_plain = plain_gradients(model, x, tool) if gradient_tool else None
    got, expected = run(copy.deepcopy(model), x), run(copy.deepcopy(reference), x)
    assert_exact(got, expected, f"{tool} against impl: reference")
    if expected_plain is not None:
        assert_exact(got, expected_plain, f"{tool} against plain autograd")


R50_ECA_MACS = 3 * 256 * 5 + 4 * 512 * 5 + 6 * 1024 * 5 + 3 * 2048 * 7
"""ECA's multiply-adds in R-50 at 224 px, batch 1: k x C per block (87,808), one output per channel."""


def model_counts(tool: str, model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(MACs, parameters) a counting library gives a whole model, as a paper would report them."""
    if tool == "thop":
        thop = pytest.importorskip("thop")
        macs, params = thop.profile(model, inputs=(x,), verbose=False)
        return int(macs), int(params)
    if tool == "ptflops":
        ptflops = pytest.importorskip("ptflops")
        macs, params = ptflops.get_model_complexity_info(model, tuple(x.shape[1:]), as_strings=False, print_per_layer_stat=False, backend="pytorch")
        return int(macs), int(params)
    fvcore = pytest.importorskip("fvcore.nn")
    analysis = fvcore.FlopCountAnalysis(model, (x,)).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return int(analysis.total()), int(fvcore.parameter_count(model)[""])


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["thop", "ptflops", "fvcore"])
@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_counting_libraries_count_eca(tool: str, impl: str) -> None:
    """thop, ptflops and fvcore count R-50's ECA as the write-up's nn.Conv1d: 87,808 MACs and 86 parameters over plain R-50 at 224 px."""
    from ecacli.models import build_model
    from ecacli.spec_loader import load_spec

    eca = spec_from_data({**load_spec("r50").to_yaml_dict(), "attention": {"type": "eca", "impl": impl}}, "r50")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        with_eca, plain = (model_counts(tool, build_model(spec).eval(), x) for spec in (eca, load_spec("resnet50")))
    assert (with_eca[0] - plain[0], with_eca[1] - plain[1]) == (R50_ECA_MACS, 86)
