"""The fused ECA tail (`attention.impl: fast`) against the reference formulation, its oracle."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import copy

import pytest
import torch
import torchinfo
from torch import nn

from ecacli.benchmarks.eca_overhead import main as bench_main
from ecacli.benchmarks.eca_overhead import rows_for, saved_tensor_bytes, variant_spec
from ecacli.errors import SpecError
from ecacli.layers import tail
from ecacli.layers import EcaModule
from ecacli.layers.channel_conv import channel_correlation, conv1d_backward
from ecacli.layers.fused_eca import gated_residual, plane_means
from ecacli.arch.attention import CecaAttention, EcaAttention
from ecacli.models import BasicBlock, Bottleneck, build_model
from ecacli.spec import ResNetSpec
from ecacli.spec_loader import load_spec
from conftest import randomise_batch_norms

BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


@pytest.fixture(autouse=True)
def fold_every_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test-sized blocks take the inference fold too (by default, outputs under `tail.FOLD_MIN_ELEMENTS` values take the module path)."""
    monkeypatch.setattr(tail, "FOLD_MIN_ELEMENTS", 0)


@pytest.fixture
def paths(monkeypatch: pytest.MonkeyPatch) -> list[tail.TailPath]:
    """The path every call of a block with the fast ECA takes, in order (recorded around `choose_tail_path`)."""
    taken: list[tail.TailPath] = []
    choose = tail.choose_tail_path

    def record(call: tail.TailCall) -> tail.TailPath:
        path = choose(call)
        if getattr(call.attention, "impl", None) == "fast":
            taken.append(path)
        return path

    monkeypatch.setattr(tail, "choose_tail_path", record)
    return taken


def eca(k: int, circular: bool = False, impl: str = "fast"):
    """The node of an ECA module with kernel size k, as a block's `attention` argument."""
    settings = (CecaAttention if circular else EcaAttention)(impl=impl)
    return settings.node(0, k)


def block_pair(kind: str, downsample: str | None, circular: bool, dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
    """The same block (same weights) with the reference and the fast ECA."""
    cls = BLOCKS[kind]
    planes = 8
    out = planes * cls.expansion
    in_ch = 16 if downsample else out
    stride = 2 if downsample else 1

    def make(impl: str) -> nn.Module:
        return cls(in_ch, planes, stride, downsample, eca(3, circular, impl))

    generator = torch.Generator().manual_seed(0)
    reference = make("reference")
    randomise_batch_norms(reference, generator)
    fast = make("fast")
    fast.load_state_dict(reference.state_dict())
    return reference.to(dtype), fast.to(dtype)


def run(model: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Output, and gradients of the input and every parameter for the loss sum(out * grad)."""
    x = x.clone().requires_grad_()
    out = model(x)
    (out * grad).sum().backward()
    grads = {"input": x.grad} | {name: p.grad for name, p in model.named_parameters()}
    return out, grads


def assert_half_as_exact_as_reference(fast: torch.Tensor, reference: torch.Tensor, exact: torch.Tensor, what: str) -> None:
    """A half-precision result against the float64 one: no further than 1.5x the reference's own error + 2**-8 of scale."""
    scale = exact.abs().max()
    fast_error, reference_error = ((t.double() - exact).abs().max() for t in (fast, reference))
    assert fast_error <= 1.5 * reference_error + 2**-8 * scale, f"{what}: error {fast_error:.3e}, reference's {reference_error:.3e}, scale {scale:.3e}"


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rel: float, what: str) -> None:
    """|actual - expected| <= rel * max|expected| elementwise (scale-aware: sums of many terms)."""
    scale = expected.abs().max().clamp_min(1e-30)
    err = (actual - expected).abs().max()
    assert err <= rel * scale, f"{what}: max error {err.item():.3e} > {rel:g} x {scale.item():.3e}"


def compare_models(reference: nn.Module, fast: nn.Module, x: torch.Tensor, out_rel: float, grad_rel: float | None) -> None:
    """Outputs, running statistics and (unless grad_rel is None) all gradients of `fast` against `reference`."""
    grad = torch.randn(reference(x).shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    # The probe forward above moved the reference's running stats once: give the fast model the same start.
    fast.load_state_dict(copy.deepcopy(reference.state_dict()))
    out_ref, grads_ref = run(reference, x, grad)
    out_fast, grads_fast = run(fast, x, grad)
    assert out_fast.shape == out_ref.shape
    assert out_fast.is_contiguous(memory_format=torch.channels_last) == out_ref.is_contiguous(memory_format=torch.channels_last)
    assert_close(out_fast, out_ref, out_rel, "output")
    for name, expected in grads_ref.items() if grad_rel is not None else ():
        assert_close(grads_fast[name], expected, grad_rel, f"grad of {name}")
    for (name, expected), (_, actual) in zip(reference.state_dict().items(), fast.state_dict().items()):
        assert_close(actual.double(), expected.double(), out_rel, f"state {name}")  # running stats, num_batches_tracked
    with torch.no_grad():
        assert_close(fast(x), reference(x), out_rel, "output without autograd")


@pytest.mark.parametrize("kind", ["basic", "bottleneck"])
@pytest.mark.parametrize("downsample", [None, "conv", "avg"])
@pytest.mark.parametrize("circular", [False, True], ids=["eca", "ceca"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_block_matches_reference_float64(kind: str, downsample: str | None, circular: bool, channels_last: bool, training: bool) -> None:
    """In float64 the fused tail is the reference to rounding: outputs, all gradients, running stats."""
    reference, fast = block_pair(kind, downsample, circular, torch.float64)
    reference.train(training)
    fast.train(training)
    x = torch.randn(4, reference.conv1.in_channels, 10, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    if channels_last:
        reference, fast, x = (t.to(memory_format=torch.channels_last) for t in (reference, fast, x))
    compare_models(reference, fast, x, out_rel=1e-12, grad_rel=1e-11)


@pytest.mark.parametrize("kind", ["basic", "bottleneck"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_block_matches_reference_float32(kind: str, channels_last: bool, training: bool) -> None:
    """float32: outputs and running stats to 1e-6 of the reference's; gradients as exact as the reference's own.

    Two float32 computations of a gradient (sums over every pixel, taken in different orders)
    each sit ~1e-6 of scale from the exact value, so gradients are held against the float64
    result: within 1e-6 of scale, or no further than 1.5x the float32 reference's own error.
    """
    reference, fast = block_pair(kind, "conv", False, torch.float32)
    exact, _ = block_pair(kind, "conv", False, torch.float64)
    for model in (reference, fast, exact):
        model.train(training)
    x = torch.randn(4, 16, 12, 12, generator=torch.Generator().manual_seed(3))
    if channels_last:
        reference, fast, exact, x = (t.to(memory_format=torch.channels_last) for t in (reference, fast, exact, x))
    compare_models(reference, fast, x, out_rel=1e-6, grad_rel=None)
    grad = torch.randn(reference(x).shape, generator=torch.Generator().manual_seed(1))
    state = copy.deepcopy(reference.state_dict())
    for model in (fast, exact):
        model.load_state_dict(state)
    grads = {name: run(model, x.to(dtype), grad.to(dtype))[1] for name, model, dtype in (("reference", reference, torch.float32), ("fast", fast, torch.float32), ("exact", exact, torch.float64))}
    for name, expected in grads["exact"].items():
        scale = expected.abs().max()
        fast_error = (grads["fast"][name].double() - expected).abs().max()
        reference_error = (grads["reference"][name].double() - expected).abs().max()
        assert fast_error <= max(1e-6 * scale, 1.5 * reference_error), f"grad of {name}: error {fast_error:.3e}, reference's {reference_error:.3e}, scale {scale:.3e}"


@pytest.mark.parametrize("stem", ["imagenet", "cifar", "deep", "deep_tiered"])
@pytest.mark.parametrize("kind", ["basic", "bottleneck"])
def test_model_matches_reference(stem: str, kind: str) -> None:
    """Whole models, every stem and block type, training mode, float64."""
    base = {"name": "t", "layers": [1, 2, 1, 1], "block": kind, "width": 8, "num_classes": 5, "stem": stem, "downsample": "avg"}
    torch.manual_seed(0)
    reference = build_model(ResNetSpec(**base, attention={"impl": "reference"})).double()
    randomise_batch_norms(reference, torch.Generator().manual_seed(4))
    fast = build_model(ResNetSpec(**base, attention={"impl": "fast"})).double()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    compare_models(reference, fast, x, out_rel=1e-10, grad_rel=1e-10)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("padding_mode", ["zeros", "circular"])
def test_gradcheck_fused_function(training: bool, padding_mode: str) -> None:
    """Analytic gradients of the custom Function (input, shortcut, BN affine, gate conv) against finite differences."""
    generator = torch.Generator().manual_seed(6)
    bn = nn.BatchNorm2d(6).double().train(training)
    randomise_batch_norms(bn, generator)
    conv = gate_conv(3, padding_mode).double()
    z = torch.randn(3, 6, 3, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    identity = torch.randn(3, 6, 3, 4, dtype=torch.float64, generator=generator, requires_grad=True)

    def tail(z: torch.Tensor, identity: torch.Tensor, *module_params: torch.Tensor) -> torch.Tensor:
        return gated_residual(bn, conv, z, identity)  # gradcheck perturbs the modules' own parameters in place

    params = [bn.weight, bn.bias, conv.weight]
    assert torch.autograd.gradcheck(tail, (z, identity, *params), eps=1e-6, atol=1e-8)


def test_saved_activations_no_more_than_plain() -> None:
    """Training saves what the plain ResNet saves plus per-sample gates (<= 2%); the reference saves far more."""
    spec = ResNetSpec(name="small", layers=[1, 1, 1, 1], block="bottleneck", width=16, num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    sizes = {}
    for variant in ("plain", "fast", "reference"):
        model = build_model(variant_spec(spec, variant))
        sizes[variant] = saved_tensor_bytes(lambda: model(x).sum().backward(), model.parameters())
    assert sizes["fast"] <= 1.02 * sizes["plain"]
    assert sizes["reference"] > 1.1 * sizes["plain"]


def test_state_dict_and_summary_do_not_depend_on_impl() -> None:
    """Same keys, shapes and torchinfo rows (names, order, params, mult-adds) for both implementations."""
    specs = {impl: ResNetSpec(name="r50", depth=50, input_size=64, attention={"impl": impl}) for impl in ("fast", "reference")}
    with torch.device("meta"):
        models = {impl: build_model(spec) for impl, spec in specs.items()}
    shapes = {impl: [(k, tuple(v.shape)) for k, v in m.state_dict().items()] for impl, m in models.items()}
    assert shapes["fast"] == shapes["reference"]
    assert ("layer4.2.eca.conv.weight", (1, 1, 7)) in shapes["fast"]
    rows = {}
    for impl, model in models.items():
        stats = torchinfo.summary(model, input_size=(1, 3, 64, 64), device="meta", depth=4, verbose=0)
        rows[impl] = [(layer.get_layer_name(False, True), layer.num_params, layer.macs, layer.output_size) for layer in stats.summary_list]
        rows[impl + " totals"] = (stats.total_params, stats.total_mult_adds)
    assert rows["fast"] == rows["reference"]
    assert rows["fast totals"] == rows["reference totals"]
    assert any(name.startswith("EcaModule") and macs > 0 for name, _, macs, _ in rows["fast"])


def test_impl_in_spec() -> None:
    assert ResNetSpec(name="a", depth=18).attention.impl == "fast"  # type: ignore[union-attr]
    model = build_model(ResNetSpec(name="a", depth=18, attention={"impl": "reference"}))
    assert model.layer1[0].eca.impl == "reference"
    with pytest.raises(SpecError, match="impl"):
        load_spec("r50_k3557", ["attention.impl=fastest"])


@pytest.mark.parametrize("training", [True, False], ids=["train", "inference"])
def test_no_graph_breaks_under_compile(training: bool) -> None:
    """The block traces as one graph: training (BN statistics update inside it) and inference without autograd."""
    block = Bottleneck(16, 4, 2, "conv", eca(3)).train(training)
    with torch.set_grad_enabled(training):
        explanation = torch._dynamo.explain(block)(torch.randn(2, 16, 8, 8, requires_grad=training))
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0)


@pytest.mark.parametrize("kind", ["basic", "bottleneck"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_bfloat16_autocast_as_exact_as_reference(kind: str, channels_last: bool) -> None:
    """Under bfloat16 autocast the fused tail is as exact as the reference: against the float64 result, no worse than 1.5x its error + 2**-8.

    The shortcut is kept well above zero so that no output sits at the ReLU's kink, where
    bfloat16 rounding flips the mask at random and either implementation's gradient with it.
    """
    torch.manual_seed(12)
    reference, fast = block_pair(kind, None, False, torch.float32)
    exact = copy.deepcopy(reference).double()
    channels = reference.conv1.in_channels
    x = torch.randn(4, channels, 12, 12, generator=torch.Generator().manual_seed(7)).abs() + 8
    grad = torch.randn(4, channels, 12, 12, generator=torch.Generator().manual_seed(8))
    if channels_last:
        reference, fast, exact, x = (t.to(memory_format=torch.channels_last) for t in (reference, fast, exact, x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_ref, grads_ref = run(reference, x, grad)
        out_fast, grads_fast = run(fast, x, grad)
    out_exact, grads_exact = run(exact, x.double(), grad.double())
    assert out_fast.dtype == out_ref.dtype == torch.bfloat16 and (out_exact > 0).all()
    assert_half_as_exact_as_reference(out_fast, out_ref, out_exact, "output")
    for name, expected in grads_exact.items():
        assert_half_as_exact_as_reference(grads_fast[name], grads_ref[name], expected, f"grad of {name}")


def test_benchmark_prints_ratio_rows(capsys: pytest.CaptureFixture[str]) -> None:
    bench_main(["--depth", "18", "--batch", "2", "--size", "32", "--repeats", "2", "--warmup", "1", "--dtypes", "float32", "--layouts", "nchw", "--no-keep-heap", "--threads", "1"])
    lines = capsys.readouterr().out.splitlines()
    train = next(line for line in lines if line.startswith("train float32 nchw"))
    infer = next(line for line in lines if line.startswith("eval float32 nchw"))
    assert "MiB" in train and "MiB" not in infer
    assert re.search(r"\d\.\d{3} \[\d\.\d{3}-\d\.\d{3}\]", train)
    assert "heap not kept" in lines[0]


def test_benchmark_help_shows_defaults() -> None:
    result = subprocess.run([sys.executable, "-m", "ecacli.benchmarks.eca_overhead", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "(default: 160)" in result.stdout and "(default: 8)" in result.stdout


def test_one_value_per_channel_refused_in_training_as_batch_norm_does() -> None:
    for impl in ("fast", "reference"):
        block = Bottleneck(16, 4, 1, None, eca(3, impl=impl))
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            block(torch.randn(1, 16, 1, 1))


def test_gate_conv_runs_as_a_module_in_the_fused_tail() -> None:
    """Hooks on `eca.conv` (profilers, torchinfo) see the gate's conv with autograd on and off."""
    block = Bottleneck(16, 4, 1, None, eca(3))
    shapes: list[tuple[int, ...]] = []
    block.eca.conv.register_forward_hook(lambda module, args, out: shapes.append(tuple(out.shape)))
    x = torch.randn(2, 16, 5, 5)
    block(x.requires_grad_()).sum().backward()
    with torch.no_grad():
        block(x)
    assert shapes == [(2, 1, 16), (2, 1, 16)]


def gate_conv(k: int, padding_mode: str) -> nn.Conv1d:
    """ECA's gate conv as a model builds it."""
    return EcaModule(k, circular=padding_mode == "circular").conv


@pytest.mark.parametrize("padding_mode", ["zeros", "circular"])
@pytest.mark.parametrize("k", [1, 3, 7])
def test_gate_conv_forms_are_the_library_conv(padding_mode: str, k: int) -> None:
    """The gate conv is exactly nn.Conv1d; its forms in the fused tail (compiled correlation, fused backward) equal it, values and gradients."""
    conv = gate_conv(k, padding_mode).double()
    assert type(conv) is nn.Conv1d and conv.bias is None and conv.padding_mode == padding_mode
    generator = torch.Generator().manual_seed(9)
    nn.init.normal_(conv.weight, generator=generator)
    pooled = torch.randn(3, 1, 12, dtype=torch.float64, generator=generator, requires_grad=True)
    grad = torch.randn(3, 1, 12, dtype=torch.float64, generator=generator)
    expected = conv(pooled)
    expected_input, expected_weight = torch.autograd.grad(expected, (pooled, conv.weight), grad)
    assert_close(channel_correlation(pooled[:, 0], conv)[:, None], expected, 1e-14, "correlation")
    fused_input, fused_weight = conv1d_backward(conv, pooled.detach(), conv.weight.detach(), grad)
    assert_close(fused_input, expected_input, 1e-14, "fused backward, input gradient")
    assert_close(fused_weight, expected_weight, 1e-14, "fused backward, weight gradient")


@pytest.mark.parametrize("grad", [True, False], ids=["autograd", "no_grad"])
def test_hooks_on_the_last_bn_see_it_run_as_a_module(grad: bool) -> None:
    """A hook on bn3 (torchinfo, a feature extractor) gets the module-by-module tail, with the same result."""
    reference, fast = block_pair("bottleneck", "conv", False, torch.float64)
    fast.eval()
    x = torch.randn(2, 16, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(10), requires_grad=grad)
    with torch.set_grad_enabled(grad):
        unobserved = fast(x)
        seen: list[torch.Tensor] = []
        handle = fast.bn3.register_forward_hook(lambda module, args, out: seen.append(out.detach().clone()))
        observed = fast(x)
        handle.remove()
    assert len(seen) == 1 and seen[0].shape == (2, 32, 3, 3)
    assert_close(observed, unobserved, 1e-12, "output with a hook on bn3")


def test_plain_block_adds_the_shortcut_in_place_as_torchvision() -> None:
    """The plain tail allocates one tensor (BN's output) and adds and rectifies over it."""
    block = Bottleneck(16, 4, 1, None, None)
    x = torch.randn(2, 16, 5, 5)
    seen: list[int] = []
    block.bn3.register_forward_hook(lambda module, args, out: seen.append(out.data_ptr()))
    with torch.no_grad():
        out = block(x)
    assert seen == [out.data_ptr()]


@pytest.mark.parametrize("padding_mode", ["zeros", "circular"])
def test_gate_conv_backward_off_cpu(padding_mode: str) -> None:
    """Off the CPU (here the meta device, as FLOP counting runs it) the fused backward's gate-conv gradients have the right shapes."""
    conv = gate_conv(5, padding_mode).to("meta")
    pooled, grad = torch.empty(3, 1, 12, device="meta"), torch.empty(3, 1, 12, device="meta")
    grad_input, grad_weight = conv1d_backward(conv, pooled, conv.weight, grad)
    assert (grad_input.shape, grad_weight.shape) == ((3, 1, 12), (1, 1, 5))


def test_benchmark_compile_option_selects_rows() -> None:
    args = argparse.Namespace(modes=["train", "eval"], dtypes=["float32"], layouts=["nchw"])
    labels = {mode: [row.label for row in rows_for(argparse.Namespace(**vars(args), compile=mode))] for mode in ("no", "also", "only")}
    assert labels["no"] == ["train float32 nchw", "eval float32 nchw"]
    assert labels["only"] == ["train float32 nchw compiled", "eval float32 nchw compiled"]
    assert labels["also"] == labels["no"] + labels["only"]


def test_float16_plane_means_do_not_overflow() -> None:
    """A 56x56 float16 plane of mean 30 sums past float16's 65504; its mean must not."""
    x = torch.full((1, 2, 56, 56), 30.0, dtype=torch.float16)
    assert plane_means(x).tolist() == [[30.0, 30.0]]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_model_trains_like_reference(dtype: torch.dtype) -> None:
    """A model cast to half precision (no autocast), small planes included: no dtype clash, gradients as exact as the reference's."""
    torch.manual_seed(13)
    reference, fast = block_pair("bottleneck", None, False, torch.float32)
    exact = copy.deepcopy(reference).double()
    reference, fast = reference.to(dtype), fast.to(dtype)
    x = torch.randn(4, 32, 6, 6, generator=torch.Generator().manual_seed(14)).abs() + 8
    grad = torch.randn(4, 32, 6, 6, generator=torch.Generator().manual_seed(15))
    _, grads_ref = run(reference, x.to(dtype), grad.to(dtype))
    _, grads_fast = run(fast, x.to(dtype), grad.to(dtype))
    _, grads_exact = run(exact, x.double(), grad.double())
    for name, expected in grads_exact.items():
        assert_half_as_exact_as_reference(grads_fast[name], grads_ref[name], expected, f"grad of {name}")


def test_hooks_on_the_gate_conv_select_the_module_path() -> None:
    """Backward hooks on eca.conv fire, and a forward hook that changes its output changes gradients as it does in the reference."""
    reference, fast = block_pair("bottleneck", "conv", False, torch.float64)
    fired: list[str] = []
    for name, model in (("reference", reference), ("fast", fast)):
        model.eca.conv.register_forward_hook(lambda module, args, out: 2 * out)
        model.eca.conv.register_full_backward_hook(lambda module, grad_in, grad_out, name=name: fired.append(name))
    compare_models(reference, fast, torch.randn(2, 16, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(16)), out_rel=1e-12, grad_rel=1e-11)
    assert fired.count("fast") == fired.count("reference") > 0


def test_batch_norm_without_affine_parameters() -> None:
    reference, fast = block_pair("bottleneck", "conv", False, torch.float64)
    for model in (reference, fast):
        model.bn3 = nn.BatchNorm2d(32, affine=False).double()
    compare_models(reference, fast, torch.randn(2, 16, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(17)), out_rel=1e-12, grad_rel=1e-11)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("circular", [False, True], ids=["eca", "ceca"])
def test_double_backward_gives_the_reference_gradients(training: bool, circular: bool, paths: list[tail.TailPath]) -> None:
    """A gradient penalty (create_graph=True, then backward through the gradient) through the fused tail equals the module path's, input and every parameter."""
    reference, fast = block_pair("bottleneck", "conv", circular, torch.float64)
    generator = torch.Generator().manual_seed(31)
    x = torch.randn(2, 16, 6, 6, dtype=torch.float64, generator=generator)
    weights = torch.randn(2, 32, 3, 3, dtype=torch.float64, generator=generator)
    results = []
    for model in (reference, fast):
        model.train(training)
        inputs = x.clone().requires_grad_()
        (grad_x,) = torch.autograd.grad((model(inputs) * weights).sum(), inputs, create_graph=True)
        penalty = grad_x.square().sum() + (grad_x * x).sum()
        tensors = (inputs, *model.parameters())
        grads = torch.autograd.grad(penalty, tensors, allow_unused=True)  # a shortcut BN's bias, say, does not reach grad_x
        results.append([torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads)])
    assert paths == [tail.TailPath.FUSED]
    for name, got, expected in zip(("input", *(n for n, _ in fast.named_parameters())), results[1], results[0]):
        assert_close(got, expected, 1e-10, f"second-order gradient of {name}")


def test_timm_comparison_explains_its_missing_dependency() -> None:
    """Run as `python -m` in an interpreter where timm cannot be imported (the test extra installs it)."""
    without_timm = "import runpy, sys; sys.modules['timm'] = None; runpy.run_module('ecacli.benchmarks.eca_vs_timm', run_name='__main__')"
    result = subprocess.run([sys.executable, "-c", without_timm], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "needs timm" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("kind", ["basic", "bottleneck"])
def test_eval_tail_folds_batch_norm_into_the_last_conv(kind: str, paths: list[tail.TailPath]) -> None:
    """Inference on CPU folds BN into the last conv; autograd or training mode take the fused Function."""
    reference, fast = block_pair(kind, "conv", False, torch.float64)
    reference.eval()
    fast.eval()
    x = torch.randn(2, 16, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(18))
    with torch.inference_mode():
        assert_close(fast(x), reference(x), 1e-12, "folded output")
    fast(x.requires_grad_())
    fast.train()(x)
    assert paths == [tail.TailPath.FOLDED, tail.TailPath.FUSED, tail.TailPath.FUSED]


@pytest.mark.parametrize("case", ["zero scale", "float16 autocast"])
def test_eval_fold_where_batch_norm_has_no_exact_form(case: str, paths: list[tail.TailPath]) -> None:
    """A zero BN scale (a pruned channel) folds with its scale raised to a floor, same numbers; float16 (no room for a shift: 100 / 1e-3 is past 65504) runs conv and BN as they are."""
    dtype = torch.float64 if case == "zero scale" else torch.float32
    reference, fast = block_pair("bottleneck", None, False, dtype)
    exact = copy.deepcopy(reference).double()
    for model in (reference, fast, exact):
        model.eval()
        with torch.no_grad():
            model.bn3.weight[0] = 0.0 if case == "zero scale" else 1e-3
            model.bn3.bias[0] = 0.5 if case == "zero scale" else 100.0  # 100 / 1e-3 is past float16's 65504
    x = torch.randn(2, 32, 6, 6, generator=torch.Generator().manual_seed(19)).abs() + 8
    with torch.no_grad():
        out_exact = exact(x.double())
        with torch.autocast("cpu", dtype=torch.float16, enabled=case != "zero scale"):
            out_fast, out_ref = fast(x.to(dtype)), reference(x.to(dtype))
    assert paths == [tail.TailPath.FOLDED if case == "zero scale" else tail.TailPath.FUSED] and torch.isfinite(out_fast).all()
    if case == "zero scale":
        assert_close(out_fast, out_ref, 1e-12, "output")
    else:
        assert out_fast.dtype == torch.float16
        assert_half_as_exact_as_reference(out_fast, out_ref, out_exact, "output")


@pytest.mark.parametrize("kind", ["basic", "bottleneck"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("size", [12, 4], ids=["planes of 144", "planes of 16"])
def test_bfloat16_inference_as_exact_as_reference(kind: str, channels_last: bool, size: int, paths: list[tail.TailPath]) -> None:
    """bfloat16 autocast inference through the fold, large and small planes: no worse than 1.5x the reference's error + 2**-8."""
    reference, fast = block_pair(kind, None, False, torch.float32)
    exact = copy.deepcopy(reference).double()
    for model in (reference, fast, exact):
        model.eval()
    x = torch.randn(4, reference.conv1.in_channels, size, size, generator=torch.Generator().manual_seed(20)).abs() + 8
    if channels_last:
        reference, fast, exact, x = (t.to(memory_format=torch.channels_last) for t in (reference, fast, exact, x))
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_fast, out_ref = fast(x), reference(x)
        out_exact = exact(x.double())
    assert paths == [tail.TailPath.FOLDED] and out_fast.dtype == torch.bfloat16
    assert out_fast.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert_half_as_exact_as_reference(out_fast, out_ref, out_exact, "output")


def test_hooks_on_the_last_conv_see_its_own_output() -> None:
    """A hook on conv3 sees conv3's output, not the eval fold's biased one, and the result is unchanged."""
    reference, fast = block_pair("bottleneck", "conv", False, torch.float64)
    reference.eval()
    fast.eval()
    x = torch.randn(2, 16, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(21))
    seen: list[torch.Tensor] = []
    fast.conv3.register_forward_hook(lambda module, args, out: seen.append(out.clone()))
    with torch.no_grad():
        out = fast(x)
        expected_conv3 = reference.conv3(reference.relu(reference.bn2(reference.conv2(reference.relu(reference.bn1(reference.conv1(x)))))))
        assert_close(out, reference(x), 1e-12, "output")
    assert len(seen) == 1
    assert_close(seen[0], expected_conv3, 1e-12, "conv3 output seen by the hook")


@pytest.mark.parametrize("kind", ["basic", "bottleneck"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_traced_tail_matches_reference(kind: str, channels_last: bool, training: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tail torch.compile traces (run here eagerly, as if compiling): outputs, all gradients, running stats, float64."""
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    reference, fast = block_pair(kind, "conv", False, torch.float64)
    reference.train(training)
    fast.train(training)
    x = torch.randn(4, 16, 10, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(22))
    if channels_last:
        reference, fast, x = (t.to(memory_format=torch.channels_last) for t in (reference, fast, x))
    compare_models(reference, fast, x, out_rel=1e-12, grad_rel=1e-11)


def test_compiled_block_trains_like_reference() -> None:
    """Through AOTAutograd (functionalised running-stat updates, its own backward): two training steps' outputs, gradients and running stats."""
    reference, fast = block_pair("bottleneck", "conv", False, torch.float64)
    compiled = torch.compile(fast, backend="aot_eager", fullgraph=True)
    x = torch.randn(3, 16, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(23))
    grad = torch.randn(3, 32, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(24))
    for _ in range(2):
        out_ref, grads_ref = run(reference, x, grad)
        out_fast, grads_fast = run(compiled, x, grad)
        assert_close(out_fast, out_ref, 1e-12, "output")
        for name, expected in grads_ref.items():
            assert_close(grads_fast[name if name == "input" else "_orig_mod." + name], expected, 1e-11, f"grad of {name}")
    for (name, expected), actual in zip(reference.state_dict().items(), fast.state_dict().values()):
        assert_close(actual.double(), expected.double(), 1e-12, f"state {name}")


class StandardisedConv2d(nn.Conv2d):
    """A conv whose forward standardises its weight (as timm's StdConv2d): what it computes is not nn.Conv2d's arithmetic on its weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.weight.mean(dim=(1, 2, 3), keepdim=True), self.weight.std(dim=(1, 2, 3), keepdim=True)
        return self._conv_forward(x, (self.weight - mean) / (std + 1e-5), self.bias)


@pytest.mark.parametrize("kind", ["basic", "bottleneck"])
@pytest.mark.parametrize("grad", [True, False], ids=["autograd", "no_grad"])
def test_a_conv_subclass_runs_its_own_forward(kind: str, grad: bool) -> None:
    """The fused tail neither folds BN into a conv subclass nor takes its means from its input: it calls the conv."""
    reference, fast = block_pair(kind, None, False, torch.float64)
    name = "conv3" if kind == "bottleneck" else "conv2"
    for model in (reference, fast):
        conv = getattr(model, name)
        standardised = StandardisedConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False).double()
        standardised.load_state_dict(conv.state_dict())
        setattr(model, name, standardised)
        model.eval()
    x = torch.randn(2, reference.conv1.in_channels, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(25))
    with torch.set_grad_enabled(grad):
        assert_close(fast(x), reference(x), 1e-12, "output")


def test_half_precision_convs_beside_float32_batch_norm(paths: list[tail.TailPath]) -> None:
    """Convs cast to bfloat16 with BN kept in float32 (no autocast): the fold gives the conv a bias of its own dtype, as exact as the reference."""
    reference, fast = block_pair("bottleneck", None, False, torch.float32)
    exact = copy.deepcopy(reference).double().eval()
    for model in (reference, fast):
        model.eval()
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Conv1d)):
                module.bfloat16()
    x = torch.randn(2, 32, 6, 6, generator=torch.Generator().manual_seed(26)).abs() + 8
    with torch.no_grad():
        out_fast, out_ref, out_exact = fast(x.bfloat16()), reference(x.bfloat16()), exact(x.double())
    assert paths == [tail.TailPath.FOLDED] and out_fast.dtype == out_ref.dtype == torch.bfloat16
    assert_half_as_exact_as_reference(out_fast, out_ref, out_exact, "output")


def test_small_blocks_infer_module_by_module(monkeypatch: pytest.MonkeyPatch, paths: list[tail.TailPath]) -> None:
    """By default a block output under 2**18 values takes the module tail in inference, a larger one the fold; same results."""
    monkeypatch.setattr(tail, "FOLD_MIN_ELEMENTS", 1 << 18)
    reference, fast = block_pair("bottleneck", None, False, torch.float64)
    reference.eval()
    fast.eval()
    generator = torch.Generator().manual_seed(27)
    small = torch.randn(2, 32, 8, 8, dtype=torch.float64, generator=generator)  # 2 x 32 x 8 x 8 = 4096 values out
    large = torch.randn(2, 32, 91, 91, dtype=torch.float64, generator=generator)  # 529,984 values out
    with torch.no_grad():
        for x in (small, large):
            assert_close(fast(x), reference(x), 1e-12, f"output for {tuple(x.shape)}")
    assert paths == [tail.TailPath.MODULE, tail.TailPath.FOLDED]
