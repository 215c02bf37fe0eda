"""The one decision a residual block makes about its tail (`ecacli.layers.tail`): every rule, and what the paths guarantee.

Whatever path runs, the block computes what the module path (the reference form) computes:
under any norm layer or activation, with hooks on the attention module, and with BatchNorm
synchronised across processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.multiprocessing as mp
from torch import nn
from torch.autograd import forward_ad

from ecacli.layers import tail
from ecacli.layers.eca import EcaModule
from ecacli.arch.attention import EcaAttention
from ecacli.models import Bottleneck, build_model
from ecacli.spec import ResNetSpec
from conftest import randomise_batch_norms

DESIGN = Path(__file__).resolve().parents[1] / "docs" / "design.md"
Path_ = tail.TailPath


def block(impl: str = "fast") -> Bottleneck:
    """A small bottleneck with a projection shortcut: 16 -> 32 channels, stride 2."""
    torch.manual_seed(0)
    return randomise_batch_norms(Bottleneck(16, 8, 2, "conv", EcaAttention(impl=impl).node(32, 3)), torch.Generator().manual_seed(0))


@pytest.fixture
def rules(monkeypatch: pytest.MonkeyPatch) -> list[tail.TailRule]:
    """The rule every block call matched, in order (recorded around `tail_rule`)."""
    matched: list[tail.TailRule] = []
    find = tail.tail_rule

    def record(call: tail.TailCall) -> tail.TailRule:
        matched.append(find(call))
        return matched[-1]

    monkeypatch.setattr(tail, "tail_rule", record)
    return matched


def rule_where(applies: Callable[[tail.TailCall], bool]) -> tail.TailRule:
    return next(rule for rule in tail.TAIL_RULES if rule.applies is applies)


class StrictBatchNorm(nn.BatchNorm2d):
    """A user's BatchNorm2d subclass: the fused math cannot know what its forward adds."""


def replace_norm(model: nn.Module, make: Callable[[nn.BatchNorm2d], nn.Module]) -> None:
    for name, child in model.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(model, name, make(child))
        else:
            replace_norm(child, make)


def frozen(bn: nn.BatchNorm2d) -> nn.Module:
    from torchvision.ops.misc import FrozenBatchNorm2d

    module = FrozenBatchNorm2d(bn.num_features)
    module.load_state_dict({k: v for k, v in bn.state_dict().items() if k != "num_batches_tracked"})
    return module


def no_grad_eval(model: nn.Module) -> nn.Module:
    return model.eval()


# Each scenario: the rule it must reach, how to prepare (fast, reference) block copies, and the grad mode of the call.
# Inputs are 2 x 16 x 20 x 20: the block output has 2 x 32 x 10 x 10 = 6,400 values.
SCENARIOS: dict[str, tuple[Callable[[tail.TailCall], bool], Callable[[nn.Module], nn.Module], bool]] = {
    "reference impl": (tail._no_fused_form, lambda m: m.train(), True),
    "trace": (tail._recorded, lambda m: m.eval(), False),
    "SyncBatchNorm": (tail._other_norm_or_activation, lambda m: nn.SyncBatchNorm.convert_sync_batchnorm(m).train(), True),
    "FrozenBatchNorm2d": (tail._other_norm_or_activation, lambda m: (replace_norm(m, frozen), m.eval())[1], False),
    "GroupNorm": (tail._other_norm_or_activation, lambda m: (replace_norm(m, lambda bn: nn.GroupNorm(4, bn.num_features)), m.train())[1], True),
    "BatchNorm2d subclass": (tail._other_norm_or_activation, lambda m: (replace_norm(m, lambda bn: StrictBatchNorm(bn.num_features)), m.train())[1], True),
    "no affine": (tail._other_norm_or_activation, lambda m: (setattr(m, "bn3", nn.BatchNorm2d(32, affine=False)), m.train())[1], True),
    "SiLU": (tail._other_norm_or_activation, lambda m: (setattr(m, "relu", nn.SiLU()), m.train())[1], True),
    "hook on bn3": (tail._observed, lambda m: (m.bn3.register_forward_hook(lambda *a: None), m.train())[1], True),
    "hook on eca": (tail._observed, lambda m: (m.eca.register_forward_pre_hook(lambda *a: None), m.eval())[1], False),
    "hook replacing relu's output": (tail._observed, lambda m: (m.relu.register_forward_hook(lambda mod, args, out: out * 0.5), m.eval())[1], False),
    "backward hook on eca.conv": (tail._observed, lambda m: (m.eca.conv.register_full_backward_hook(lambda *a: None), m.train())[1], True),
    "compiling": (tail._compiling, lambda m: m.train(), True),
    "forward-mode AD": (tail._transformed, lambda m: m.train(), False),
    "torch.func.vmap": (tail._transformed, lambda m: m.eval(), False),
    "training": (tail._autograd_or_training, lambda m: m.train(), False),
    "eval with grad": (tail._autograd_or_training, lambda m: m.eval(), True),
    "small inference": (tail._small, no_grad_eval, False),
    "inference": (tail._foldable, no_grad_eval, False),
    "inference, zero BN scale": (tail._foldable, lambda m: (m.bn3.weight.data.__setitem__(0, 0.0), m.eval())[1], False),
    "inference, BatchNorm without running statistics": (tail._always, lambda m: (setattr(m, "bn3", nn.BatchNorm2d(32, track_running_stats=False)), m.eval())[1], False),
    "inference, hook on conv3": (tail._always, lambda m: (m.conv3.register_forward_hook(lambda *a: None), m.eval())[1], False),
}


def plain_call(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def dual_call(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Output and its forward-mode tangent along a fixed direction, stacked."""
    with forward_ad.dual_level():
        out = forward_ad.unpack_dual(model(forward_ad.make_dual(x, torch.ones_like(x))))
        return torch.stack([out.primal, out.tangent])


CALLS: dict[str, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {
    "trace": lambda model, x: torch.jit.trace(model, x, check_trace=False)(x),
    "forward-mode AD": dual_call,
    "torch.func.vmap": lambda model, x: torch.func.vmap(model)(x[None])[0],
}
"""How a scenario calls the block, where not as `model(x)`."""


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_rule_gives_its_path_and_the_reference_numbers(scenario: str, rules: list[tail.TailRule], monkeypatch: pytest.MonkeyPatch) -> None:
    """Each row of TAIL_RULES is reached by its scenario, and the path it gives computes what the reference computes (float64)."""
    applies, prepare, grad = SCENARIOS[scenario]
    fast = prepare(block("reference" if scenario == "reference impl" else "fast")).double()
    reference = prepare(block("reference")).double()  # same seed, same weights; prepared alike
    if scenario != "small inference":
        monkeypatch.setattr(tail, "FOLD_MIN_ELEMENTS", 0)
    if scenario == "compiling":
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    x = torch.randn(2, 16, 20, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=grad)
    with torch.set_grad_enabled(grad):
        expected = CALLS.get(scenario, plain_call)(reference, x)
        rules.clear()
        actual = CALLS.get(scenario, plain_call)(fast, x)
    assert [rule.applies for rule in rules] == [applies]
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def test_every_rule_has_a_scenario() -> None:
    assert {rule.applies for rule in tail.TAIL_RULES} == {applies for applies, _, _ in SCENARIOS.values()} | {tail._off_cpu}


def test_other_devices_take_the_module_path(rules: list[tail.TailRule]) -> None:
    """Off the CPU (here the meta device; CUDA alike) eager blocks run module by module, in training and in inference."""
    fast = block().to("meta")
    for training in (True, False):
        with torch.set_grad_enabled(training):
            out = fast.train(training)(torch.empty(2, 16, 20, 20, device="meta"))
        assert out.shape == (2, 32, 10, 10)
    assert [rule.applies for rule in rules] == [tail._off_cpu, tail._off_cpu]


def test_recorded_paths_name_each_block_call() -> None:
    fast = block()
    with tail.recording_paths() as paths:
        fast.train()(torch.randn(2, 16, 20, 20))
        with torch.no_grad():
            fast.eval()(torch.randn(2, 16, 20, 20))
    assert paths == [tail.TailPath.FUSED, tail.TailPath.MODULE]  # a 6,400-value inference block is under FOLD_MIN_ELEMENTS


def test_design_doc_shows_the_decision_table() -> None:
    """docs/design.md's table of tail paths is TAIL_RULES, row for row."""
    text = DESIGN.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and any(f"| `{p.value}` |" in line for p in tail.TailPath)]
    expected = [f"| {rule.when} | `{rule.path.value}` | {rule.why} |" for rule in tail.TAIL_RULES]
    assert rows == expected


def test_passive_hooks_leave_the_path_alone(rules: list[tail.TailRule]) -> None:
    fast = block().eval()

    def hook(*args: object) -> None:
        pass

    setattr(hook, tail.PASSIVE_HOOK, True)
    fast.eca.register_forward_hook(hook)
    with torch.no_grad():
        fast(torch.randn(2, 16, 20, 20))
    assert [rule.path for rule in rules] == [Path_.MODULE]  # small: under FOLD_MIN_ELEMENTS
    assert rules[0].applies is tail._small


def test_global_hooks_observe_every_module(rules: list[tail.TailRule]) -> None:
    fast = block().train()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *a: None)
    try:
        fast(torch.randn(2, 16, 20, 20))
    finally:
        handle.remove()
    assert [rule.applies for rule in rules] == [tail._observed]


# --- hooks on the ECA module see the paper's contract --------------------------------------------


def eca_resnet(impl: str) -> nn.Module:
    torch.manual_seed(3)
    spec = ResNetSpec(name="r", layers=[1, 2, 1, 1], block="bottleneck", width=8, num_classes=7, attention={"impl": impl})
    return randomise_batch_norms(build_model(spec), torch.Generator().manual_seed(4))


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_eca_hooks_see_input_and_gated_output(training: bool) -> None:
    """A forward hook on `layerN.M.eca` gets the BN output as its input and input * gate as its output, on every impl."""
    seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    outputs = {}
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    for impl in ("fast", "reference"):
        model = eca_resnet(impl).train(training)
        records: list[tuple[torch.Tensor, torch.Tensor]] = []
        for module in model.modules():
            if isinstance(module, EcaModule):
                module.register_forward_hook(lambda m, args, out, records=records: records.append((args[0].detach().clone(), out.detach().clone())))
        with torch.set_grad_enabled(training):
            outputs[impl] = model(x)
        seen[impl] = records
    assert len(seen["fast"]) == len(seen["reference"]) == 5
    for (inp_f, out_f), (inp_r, out_r) in zip(seen["fast"], seen["reference"]):
        torch.testing.assert_close(inp_f, inp_r)
        torch.testing.assert_close(out_f, out_r)
        gate = out_r / inp_r
        assert torch.allclose(gate.amax(dim=(2, 3)), gate.amin(dim=(2, 3)), rtol=1e-4) and ((gate > 0) & (gate < 1)).all()
    torch.testing.assert_close(outputs["fast"], outputs["reference"])


def test_a_hook_that_switches_the_gates_off_acts_as_on_the_reference() -> None:
    """The ablation 'return the input from the ECA hook' drops the gate and keeps the shortcut, on every impl."""
    x = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(6))
    logits = {}
    for impl in ("fast", "reference"):
        model = eca_resnet(impl).eval()
        for module in model.modules():
            if isinstance(module, EcaModule):
                module.register_forward_hook(lambda m, args, out: args[0])
        with torch.no_grad():
            logits[impl] = model(x)
    plain = eca_resnet("reference").eval()
    for module in plain.modules():
        if isinstance(module, Bottleneck):
            module.attention_name = ""  # the same network without its gates
    with torch.no_grad():
        expected = plain(x)
    torch.testing.assert_close(logits["fast"], logits["reference"])
    torch.testing.assert_close(logits["fast"], expected)


# --- norm layers ----------------------------------------------------------------------------------


def test_sync_batch_norm_runs_for_every_norm_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    """After convert_sync_batchnorm every SyncBatchNorm runs its own forward in a training step, as on the reference."""
    calls = []
    forward = nn.SyncBatchNorm.forward
    monkeypatch.setattr(nn.SyncBatchNorm, "forward", lambda self, x: calls.append(self) or forward(self, x))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    results = {}
    for impl in ("fast", "reference"):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(eca_resnet(impl)).train()
        calls.clear()
        out = model(x)
        out.square().mean().backward()
        norms = [m for m in model.modules() if isinstance(m, nn.SyncBatchNorm)]
        assert len(calls) == len(norms) and set(map(id, calls)) == set(map(id, norms))
        results[impl] = (out, {n: p.grad for n, p in model.named_parameters()}, model.state_dict())
    torch.testing.assert_close(results["fast"][0], results["reference"][0], rtol=0, atol=0)
    for name, grad in results["reference"][1].items():
        torch.testing.assert_close(results["fast"][1][name], grad, rtol=0, atol=0)
    for name, value in results["reference"][2].items():
        torch.testing.assert_close(results["fast"][2][name], value, rtol=0, atol=0)


class CrossRankBatchNorm(nn.BatchNorm2d):
    """Batch statistics summed over all ranks (what SyncBatchNorm computes on GPUs), for a gloo group on CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        count = x.numel() // x.shape[1] * dist.get_world_size()
        total = dist_nn.all_reduce(x.sum(dim=(0, 2, 3)))
        squares = dist_nn.all_reduce(x.square().sum(dim=(0, 2, 3)))
        mean = total / count
        var = squares / count - mean.square()
        with torch.no_grad():
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * count / (count - 1), self.momentum)
            self.num_batches_tracked.add_(1)
        scale = self.weight * torch.rsqrt(var + self.eps)
        return x * scale[:, None, None] + (self.bias - mean * scale)[:, None, None]


def cross_rank_worker(rank: int, world: int, init: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(100 + rank))  # each rank its own batch
        results = {}
        for impl in ("fast", "reference"):
            model = eca_resnet(impl).train()
            replace_norm(model, _copy_norm)
            out = model(x)
            out.square().mean().backward()
            results[impl] = (out.detach(), {n: p.grad for n, p in model.named_parameters()}, model.state_dict())
        torch.testing.assert_close(results["fast"][0], results["reference"][0], rtol=0, atol=0)
        for name, grad in results["reference"][1].items():
            torch.testing.assert_close(results["fast"][1][name], grad, rtol=0, atol=0)
        state = results["fast"][2]
        for name, value in results["reference"][2].items():
            torch.testing.assert_close(state[name], value, rtol=0, atol=0)
        gathered = [torch.empty_like(state["layer4.0.bn3.running_mean"]) for _ in range(world)]
        dist.all_gather(gathered, state["layer4.0.bn3.running_mean"])
        torch.testing.assert_close(gathered[0], gathered[1], rtol=0, atol=0)  # the statistics were shared across ranks
    finally:
        dist.destroy_process_group()


def _copy_norm(bn: nn.BatchNorm2d) -> CrossRankBatchNorm:
    norm = CrossRankBatchNorm(bn.num_features)
    norm.load_state_dict(bn.state_dict())
    return norm


@pytest.mark.ddp
def test_cross_rank_batch_norm_in_a_gloo_group(tmp_path: Path) -> None:
    """Two ranks with BatchNorm synchronised over gloo: outputs, gradients and running statistics equal the reference impl's."""
    mp.spawn(cross_rank_worker, args=(2, f"file://{tmp_path / 'rendezvous'}"), nprocs=2, join=True)


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_frozen_batch_norm_model(grad: bool) -> None:
    """torchvision's FrozenBatchNorm2d in every norm slot (detection fine-tuning): the fast impl runs and equals the reference."""
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(8))
    outputs = {}
    for impl in ("fast", "reference"):
        model = eca_resnet(impl)
        replace_norm(model, frozen)
        with torch.set_grad_enabled(grad):
            outputs[impl] = model.eval()(x)
    torch.testing.assert_close(outputs["fast"], outputs["reference"], rtol=0, atol=0)
