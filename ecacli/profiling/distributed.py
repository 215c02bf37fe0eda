"""Data-parallel training steps under torch.distributed: DDP on ranks started by torchrun or by `launch`.

Every rank builds the same models (same spec, same seed) with the profiling runner, wraps each in
DistributedDataParallel (NCCL with one GPU per local rank on CUDA, gloo on CPU) and times them in
interleaved rounds, rotated as `ecacli.profiling.runner` does. A round runs, for every model:

- a DDP step: forward, backward with the gradient all-reduce, SGD step;
- the same step under `no_sync()`, without the all-reduce (it applies each rank's own gradients,
  so the replicas drift apart, which changes no timing of a synthetic batch);
- on rank 0 only, the same step of an unwrapped copy while the other ranks wait at a barrier:
  the single-process reference at the same per-rank batch.

A barrier precedes every timed step, so ranks start together. A round's data-parallel step time
is the slowest rank's; aggregate images/s = world size x batch / its median; scaling efficiency =
aggregate images/s / (world size x single-process images/s). Two shares of the step are reported,
under two names because they measure different things:

- communication share (the job's): 1 - no-sync step / DDP step of the slowest rank, per round:
  the time the gradient all-reduce adds to the job's step (the part backward hides is not counted);
- sync share (each rank's): 1 - that rank's median no-sync step / its median DDP step: the
  all-reduce plus the time the rank waits in it for slower ranks, so it is larger on fast ranks.

Peak memory per rank adds DDP's gradient buckets to the runner's figure (resident tensors + the
step's peak). With a time budget (`ProfileConfig.seconds`) every rank stops after the same round:
they agree on it with one small all-reduce after each round.

Faults: a rank's failure is raised as `RankFailed`, naming the rank, host, device and cause; the
launcher (torchrun, or `start_ranks` here) then stops the other ranks, and `start_ranks` reports
the failing rank's own error rather than the peers that lost it. The rendezvous and every
collective give up after `DDPOptions.timeout_s`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import socket
import sys
import threading
import uuid
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Iterator, NoReturn, Sequence

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ecacli.errors import Terminated, UserError
from ecacli.profiling.device import make_timer, resolve_device, step_peak_bytes
from ecacli.profiling.report import header, out_of_memory_as_error, prepare
from ecacli.profiling.runner import (
    Budget,
    ModelProfile,
    ProfileConfig,
    ProgressCallback,
    Workload,
    count_flops,
    make_workload,
    rotated,
    run_step,
    summarize,
    usable_cores,
)
from ecacli.profiling.stats import Stats
from ecacli.spec import NetworkSpec

if TYPE_CHECKING:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT_S = 300.0
MAX_TIMEOUT_S = 24 * 3600.0
INTERRUPTED = 130
DEFAULT_BUCKET_CAP_MB = 25.0
MAX_BUCKET_CAP_MB = 65536.0
LAUNCHER_LOGGERS = ("torch.distributed.elastic", "torch.multiprocessing")


class RankFailed(UserError):
    """A rank of a data-parallel run failed: exit 1, with the rank and the cause in one paragraph."""

    exit_code = 1


class PeerLost(RankFailed):
    """A rank failed because another one did (a collective lost its peer); never the root cause."""


@dataclass(frozen=True)
class DDPOptions:
    """How DistributedDataParallel is set up, and how long a rendezvous or a collective may wait."""

    bucket_cap_mb: float = DEFAULT_BUCKET_CAP_MB
    static_graph: bool = False
    gradient_as_bucket_view: bool = False
    sync_bn: bool = False
    timeout_s: float = DEFAULT_TIMEOUT_S

    def validate(self) -> None:
        if not (math.isfinite(self.bucket_cap_mb) and 0 < self.bucket_cap_mb <= MAX_BUCKET_CAP_MB):
            raise UserError(f"--bucket-cap-mb must be positive and at most {MAX_BUCKET_CAP_MB:,.0f} MB, got {self.bucket_cap_mb}.")
        if not (math.isfinite(self.timeout_s) and 0 < self.timeout_s <= MAX_TIMEOUT_S):
            raise UserError(f"--timeout must be a positive number of seconds up to {MAX_TIMEOUT_S:,.0f} (a day), got {self.timeout_s}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def changed_flags(self) -> list[str]:
        """The command-line flags of the options that differ from their defaults."""
        return [FLAGS[name] for name, value in self.to_dict().items() if value != DDPOptions.__dataclass_fields__[name].default]


FLAGS = {"bucket_cap_mb": "--bucket-cap-mb", "static_graph": "--static-graph", "gradient_as_bucket_view": "--gradient-as-bucket-view", "sync_bn": "--sync-bn", "timeout_s": "--timeout"}


@dataclass(frozen=True)
class RankFigures:
    """One rank's DDP step of one model: its own step times, sync share and peak memory.

    `sync_share` = 1 - median no_sync() step / median DDP step of this rank: the all-reduce plus
    the time this rank waits in it for slower ranks (the job's `communication_share` counts only
    what the slowest rank pays).
    """

    rank: int
    host: str
    device: str
    step_ms: Stats
    no_sync_step_ms: Stats
    sync_share: float
    images_per_s: float
    peak_memory_bytes: int | None

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "step_ms": self.step_ms.to_dict(), "no_sync_step_ms": self.no_sync_step_ms.to_dict()}


@dataclass
class DataParallelProfile:
    """One model in data-parallel training: rank 0's full profile with the job's figures beside it.

    `model` is rank 0's `ModelProfile` (phases, FLOPs, memory including DDP's gradient buckets);
    `step_ms` is the data-parallel step (the slowest rank's per round) and `images_per_s` the
    aggregate over all ranks.
    """

    label: str
    world_size: int
    model: ModelProfile
    step_ms: Stats
    images_per_s: float
    achieved_flops_per_s: float
    communication_share: Stats
    single_process: ModelProfile
    scaling_efficiency: float
    bucket_bytes: int
    ranks: list[RankFigures]
    round_step_ms: list[float] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.model.to_dict(),
            "world_size": self.world_size,
            "step_ms": self.step_ms.to_dict(),
            "images_per_s": self.images_per_s,
            "achieved_flops_per_s": self.achieved_flops_per_s,
            "scaling_efficiency": self.scaling_efficiency,
            "communication_share": self.communication_share.to_dict(),
            "bucket_bytes": self.bucket_bytes,
            "single_process": self.single_process.to_dict(),
            "ranks": [r.to_dict() for r in self.ranks],
        }


@dataclass
class DataParallelReport:
    """Header (environment, settings, world) and one data-parallel profile per model."""

    header: dict[str, Any]
    profiles: list[DataParallelProfile]

    def profile(self, label: str) -> DataParallelProfile:
        return next(p for p in self.profiles if p.label == label)

    def ratio(self, label: str, reference: str) -> Stats | None:
        """Per-round ratio of `label`'s data-parallel step to `reference`'s."""
        mine, theirs = self.profile(label).round_step_ms, self.profile(reference).round_step_ms
        return Stats.of(a / b for a, b in zip(mine, theirs))


@dataclass(frozen=True)
class World:
    """Where this process sits in the job, as torchrun's environment variables say."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @classmethod
    def from_environment(cls) -> World:
        missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
        if missing:
            raise UserError(
                f"--ddp runs as one rank of a job started by torchrun, but {', '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not set. Start it with "
                "`torchrun --nproc-per-node N -m ecacli profile SPEC --ddp`, or use `ecacli profile SPEC --nproc N` on this machine."
            )
        env = {name: int(os.environ[name]) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
        return cls(env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"])


def under_torchrun() -> bool:
    """Whether this process is a worker that torchrun (or another elastic agent) started."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def check_request(entries: Sequence[tuple[str, NetworkSpec]], config: ProfileConfig, options: DDPOptions, local_world_size: int) -> None:
    """Raise a UserError for anything that cannot work, before any rank starts."""
    config.validate()
    options.validate()
    if not config.train:
        raise UserError("--mode eval: data-parallel profiling times training steps (DDP only acts in backward); use --mode train.")
    if local_world_size <= 0:
        raise UserError(f"--nproc must be a positive integer, got {local_world_size}.")
    kind = device_type(config.device)
    if kind == "mps":
        raise UserError("--device mps: torch.distributed has no backend for Apple's MPS; use --device cpu (gloo) or CUDA GPUs (NCCL).")
    if kind == "cuda":
        if config.device != "cuda":
            raise UserError(f"--device '{config.device}': each rank uses the GPU of its local rank (cuda:LOCAL_RANK); use --device cuda.")
        if not dist.is_nccl_available():
            raise UserError("--device cuda: this torch build has no NCCL backend for torch.distributed; use --device cpu (gloo).")
        if torch.cuda.device_count() < local_world_size:
            raise UserError(f"{local_world_size} ranks on this machine need {local_world_size} GPUs, but CUDA sees {torch.cuda.device_count()}.")
    elif options.sync_bn:
        raise UserError("--sync-bn: torch's SyncBatchNorm runs only on GPUs; drop --sync-bn on CPU.")
    for _, spec in entries:
        count_flops(spec, config)


def device_type(text: str) -> str:
    """The type of `--device` (cpu, cuda, mps), checked as `resolve_device` does, without selecting a GPU.

    A rank must touch no GPU but its own, and the launching process none at all.
    """
    try:
        kind = torch.device(text).type
    except RuntimeError:
        kind = None
    if kind == "cuda" and torch.cuda.is_available():
        return kind
    return resolve_device(text).type


def rank_device(config: ProfileConfig, local_rank: int) -> torch.device:
    """cuda:LOCAL_RANK for CUDA runs (one GPU per local rank), else the CPU."""
    return torch.device("cuda", local_rank) if device_type(config.device) == "cuda" else torch.device("cpu")


def bucket_bytes(model: torch.nn.Module) -> int:
    """Bytes of DDP's gradient buckets: one flat buffer holding every trainable parameter's gradient."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


@dataclass
class _Runs:
    """One model's three kinds of step on this rank: DDP, DDP without all-reduce, unwrapped (rank 0)."""

    ddp: DistributedDataParallel
    synced: Workload
    unsynced: Workload
    single: Workload | None

    def kinds(self) -> list[tuple[Workload | None, Any]]:
        return [(self.synced, nullcontext), (self.unsynced, self.ddp.no_sync), (self.single, nullcontext)]


def _barrier(device: torch.device) -> None:
    dist.barrier(device_ids=[device.index]) if device.type == "cuda" else dist.barrier()


def _wrap(w: Workload, config: ProfileConfig, options: DDPOptions, device: torch.device) -> _Runs:
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(w.model) if options.sync_bn else w.model
    ddp = DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        bucket_cap_mb=options.bucket_cap_mb,
        static_graph=options.static_graph,
        gradient_as_bucket_view=options.gradient_as_bucket_view,
    )
    runner = torch.compile(ddp) if config.compile else ddp
    synced = dataclasses.replace(w, model=model, runner=runner)
    return _Runs(ddp, synced, dataclasses.replace(synced, samples=[]), None)


def _agreed(stop: bool, device: torch.device) -> bool:
    """True on every rank when any rank says stop (a one-element all-reduce), so all run the same rounds."""
    flag = torch.tensor([int(stop)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _rounds(
    runs: list[_Runs], config: ProfileConfig, device: torch.device, count: int, record: bool,
    stop: Callable[[int], bool], progress: ProgressCallback | None,
) -> None:
    """Up to `count` rounds of every model's step kinds, a barrier before each step; ends early
    when the ranks agree that `stop(rounds done)` (the time budget, with `config.seconds`).
    """
    timer = make_timer(device)
    phase = "timing" if record else "warm-up"
    for i in range(count):
        if config.seconds is not None and _agreed(stop(i), device):
            return
        for r in rotated(runs, i):
            for w, context in r.kinds():
                _barrier(device)
                if w is None:
                    continue
                with context():
                    sample = run_step(w, config, timer)
                if record:
                    w.samples.append(sample)
                else:
                    w.warmup_steps += 1
        if progress is not None:
            progress(phase, i + 1, count)


def _peaks(runs: list[_Runs], config: ProfileConfig, device: torch.device) -> None:
    timer = make_timer(device)
    for r in runs:
        for w in (r.synced, r.single):
            _barrier(device)
            if w is not None:
                w.step_peak = step_peak_bytes(device, partial(run_step, w, config, timer))


def _with_buckets(profile: ModelProfile, buckets: int) -> ModelProfile:
    resident = profile.state_bytes + buckets
    peak = resident + profile.step_peak_bytes if profile.step_peak_bytes is not None else None
    return dataclasses.replace(profile, state_bytes=resident, peak_memory_bytes=peak)


@dataclass
class _RankResult:
    """What one rank sends to rank 0: per model, its DDP profile and both kinds of step per round."""

    rank: int
    host: str
    device: str
    profiles: dict[str, ModelProfile]
    synced_ms: dict[str, list[float]]
    unsynced_ms: dict[str, list[float]]
    buckets: dict[str, int]
    single: dict[str, ModelProfile]


def _measure_rank(
    entries: Sequence[tuple[str, NetworkSpec]], config: ProfileConfig, options: DDPOptions, world: World, device: torch.device,
    progress: ProgressCallback | None,
) -> _RankResult:
    rank_config = dataclasses.replace(config, device=str(device))
    _, workloads, flops = prepare(entries, rank_config)
    root = world.rank == 0
    shown = progress if root else None
    with out_of_memory_as_error(rank_config, device, len(workloads) * (2 if root else 1)):
        runs = [_wrap(w, rank_config, options, device) for w in workloads]
        for r in runs:
            r.single = make_workload(r.synced.label, r.synced.spec, rank_config, device) if root else None
        budget = Budget(config.seconds)
        _rounds(runs, rank_config, device, config.warmup, False, budget.stop_warmup, shown)
        _peaks(runs, rank_config, device)
        _rounds(runs, rank_config, device, config.iters, True, budget.stop_timing, shown)
    buckets = {r.synced.label: bucket_bytes(r.synced.model) for r in runs}
    return _RankResult(
        rank=world.rank,
        host=socket.gethostname(),
        device=str(device),
        profiles={r.synced.label: _with_buckets(summarize(r.synced, rank_config, flops[r.synced.label]), buckets[r.synced.label]) for r in runs},
        synced_ms={r.synced.label: [s["step"] for s in r.synced.samples] for r in runs},
        unsynced_ms={r.synced.label: [s["step"] for s in r.unsynced.samples] for r in runs},
        buckets=buckets,
        single={r.single.label: summarize(r.single, rank_config, flops[r.single.label]) for r in runs if r.single is not None},
    )


def _combine(label: str, results: list[_RankResult], config: ProfileConfig) -> DataParallelProfile:
    """The job's figures for one model from every rank's results (on rank 0)."""
    world_size = len(results)
    synced = [max(steps) for steps in zip(*(r.synced_ms[label] for r in results))]
    unsynced = [max(steps) for steps in zip(*(r.unsynced_ms[label] for r in results))]
    step = Stats.of(synced)
    images_per_s = world_size * config.batch / (step.median / 1e3)
    single = results[0].single[label]
    model = results[0].profiles[label]
    ranks = [
        RankFigures(
            rank=r.rank,
            host=r.host,
            device=r.device,
            step_ms=Stats.of(r.synced_ms[label]),
            no_sync_step_ms=Stats.of(r.unsynced_ms[label]),
            sync_share=1 - Stats.of(r.unsynced_ms[label]).median / Stats.of(r.synced_ms[label]).median,
            images_per_s=config.batch / (Stats.of(r.synced_ms[label]).median / 1e3),
            peak_memory_bytes=r.profiles[label].peak_memory_bytes,
        )
        for r in results
    ]
    return DataParallelProfile(
        label=label,
        world_size=world_size,
        model=model,
        step_ms=step,
        images_per_s=images_per_s,
        achieved_flops_per_s=world_size * model.flops_per_image * config.batch / (step.median / 1e3),
        communication_share=Stats.of(1 - u / s for u, s in zip(unsynced, synced)),
        single_process=single,
        scaling_efficiency=images_per_s / (world_size * single.images_per_s),
        bucket_bytes=results[0].buckets[label],
        ranks=ranks,
        round_step_ms=synced,
    )


def _header(entries: Sequence[tuple[str, NetworkSpec]], config: ProfileConfig, options: DDPOptions, world: World, device: torch.device, backend: str) -> dict[str, Any]:
    return {
        **header(dataclasses.replace(config, device=str(device)), device, entries[0][1]),
        "world_size": world.world_size,
        "nodes": world.world_size // world.local_world_size,
        "ranks_per_node": world.local_world_size,
        "backend": backend,
        "ddp": options.to_dict(),
        "order": "interleaved rounds, a barrier before every step: per model a DDP step, a no_sync() step, and on rank 0 an unwrapped single-process step",
        "data_parallel_step_definition": "the slowest rank's DDP step in each round",
        "communication_share_definition": "1 - no_sync() step / DDP step of the slowest rank, per round: the time the gradient all-reduce adds to the job's step",
        "sync_share_definition": "per rank, 1 - its median no_sync() step / its median DDP step: the all-reduce plus the wait in it for slower ranks",
        "single_process_definition": "rank 0 alone, the same model unwrapped at the same per-rank batch, while the other ranks wait at a barrier",
        "peak_memory_definition": "per rank: resident tensors + DDP gradient buckets (one copy of the trainable parameters' gradients) + the step's peak",
    }


def _cause(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}".rstrip(": ")


def _leave_interrupted() -> NoReturn:
    """End an interrupted rank at once: the launcher stops the whole job (and passes the same Ctrl-C
    on), so exit handlers and the destructors of a process group cut off mid-collective must not run.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(INTERRUPTED)


def run_rank(
    entries: Sequence[tuple[str, NetworkSpec]], config: ProfileConfig, options: DDPOptions, progress: ProgressCallback | None = None
) -> DataParallelReport | None:
    """Run this process's rank of the job (torchrun's environment says which); rank 0 returns the report
    and calls `progress(phase, round, rounds)` after each round.

    Any failure is raised as `RankFailed` naming the rank, host, device and cause (`PeerLost` when
    a collective failed because another rank did). Collectives wait at most `options.timeout_s`.
    """
    world = World.from_environment()
    device = rank_device(config, world.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    check_request(entries, config, options, world.local_world_size)
    backend = "nccl" if device.type == "cuda" else "gloo"
    where = f"rank {world.rank} of {world.world_size} on {socket.gethostname()} ({device})"
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=options.timeout_s), device_id=device if device.type == "cuda" else None)
        result = _measure_rank(entries, config, options, world, device, progress)
        gathered: list[_RankResult] | None = [None] * world.world_size if world.rank == 0 else None  # type: ignore[list-item]
        dist.gather_object(result, gathered, dst=0)
        dist.destroy_process_group()
    except (KeyboardInterrupt, Terminated):
        _leave_interrupted()
    except dist.DistError as exc:
        raise PeerLost(f"{where} failed: {_cause(exc)}") from exc
    except Exception as exc:
        raise RankFailed(f"{where} failed: {_cause(exc)}") from exc
    if gathered is None:
        return None
    profiles = [_combine(label, gathered, config) for label, _ in entries]
    return DataParallelReport(_header(entries, config, options, world, device, backend), profiles)


def profile_data_parallel(
    entries: Sequence[tuple[str, NetworkSpec]], config: ProfileConfig, options: DDPOptions, ddp: bool, nproc: int | None,
    progress: ProgressCallback | None = None,
) -> DataParallelReport | None:
    """`run_rank` under torchrun (`ddp`), or `launch` of `nproc` ranks here; the report, or None on ranks but 0.

    `progress` is called by rank 0 after every round; with `launch` it must be picklable (the ranks are spawned).
    """
    if ddp and nproc is not None:
        raise UserError("--ddp and --nproc: use --ddp when torchrun starts the ranks, --nproc N to start N ranks here; not both.")
    if ddp:
        return run_rank(entries, config, options, progress)
    assert nproc is not None, "profile_data_parallel needs ddp or nproc"
    return launch(entries, config, options, nproc, progress)


def _cpu_threads(config: ProfileConfig, nproc: int) -> ProfileConfig:
    """On CPU without --threads, split the cores this process may use evenly between the ranks."""
    if config.threads is not None or device_type(config.device) != "cpu":
        return config
    return dataclasses.replace(config, threads=max(1, usable_cores() // nproc))


@contextmanager
def _quiet_launcher_logs() -> Iterator[None]:
    """Keep the launcher's logs off the console: a failure is reported as one message.

    Its modules set their loggers' levels one by one, so each is raised for the while.
    """
    names = [name for name in logging.Logger.manager.loggerDict if name.startswith(LAUNCHER_LOGGERS)]
    loggers = [logging.getLogger(name) for name in names]
    saved = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, saved):
            logger.setLevel(level)


def _launch_failure(exc: ChildFailedError, nproc: int) -> RankFailed:
    """One message for a failed job: the failing rank's own cause, not the ranks that lost it as a peer."""

    def recorded(failure: Any) -> str | None:
        """The exception the rank recorded in its error file, or None when it left none."""
        return failure.message["message"] if isinstance(failure.message, dict) else None

    def collateral(item: tuple[int, Any]) -> tuple[bool, int, int]:
        rank, failure = item
        lost = (recorded(failure) or "").startswith(PeerLost.__name__ + ":") or failure.exitcode < 0
        return lost, failure.timestamp, rank

    rank, failure = min(exc.failures.items(), key=collateral)
    message = recorded(failure)
    if message is None:
        message = failure.message if failure.exitcode < 0 else "interrupted" if failure.exitcode == INTERRUPTED else "it left no error report"
    for kind in (PeerLost, RankFailed):
        message = message.removeprefix(kind.__name__ + ": ")
    if not message.startswith(f"rank {rank} "):
        message = f"rank {rank} of {nproc} failed (exit code {failure.exitcode}): {message}"
    return RankFailed(message)


def launch(
    entries: Sequence[tuple[str, NetworkSpec]], config: ProfileConfig, options: DDPOptions, nproc: int, progress: ProgressCallback | None = None
) -> DataParallelReport:
    """Profile on `nproc` ranks on this machine (`start_ranks` running `run_rank`); returns rank 0's report.

    Requests that cannot work are refused before any rank starts (UserError, exit 2).
    """
    if under_torchrun():
        raise UserError("--nproc starts its own ranks; under torchrun use --ddp instead.")
    cores = usable_cores()
    if nproc > cores and device_type(config.device) == "cpu":
        raise UserError(f"--nproc {nproc}: this process may use {cores} CPU core{'s' if cores > 1 else ''}; CPU ranks need one each, so use --nproc {cores} or fewer.")
    check_request(entries, config, options, nproc)
    return start_ranks(run_rank, (list(entries), _cpu_threads(config, nproc), options, progress), nproc, options.timeout_s)


def _rank_entry(worker: Callable[..., Any], *args: Any) -> Any:
    """What a spawned rank runs: `worker(*args)` once the rank may be interrupted.

    A rank starts with SIGINT blocked (see `start_ranks`), so a Ctrl-C while it still imports torch
    waits instead of printing a traceback from the middle of an import; unblocked here, a pending
    one ends the rank quietly (the launcher stops the job and reports it).
    """
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        return worker(*args)
    except KeyboardInterrupt:
        _leave_interrupted()


@contextmanager
def _ranks_start_uninterruptible() -> Iterator[None]:
    """Block SIGINT in this (the main) thread while the launcher spawns ranks, which inherit the mask.

    A helper thread that leaves SIGINT unblocked is started first, so a Ctrl-C still reaches this
    process: the kernel hands it to that thread, and Python runs the handler (the launcher's) in
    the main thread as usual. multiprocessing's resource tracker is started first too: starting it
    unblocks SIGINT in the calling thread.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    done = threading.Event()
    receiver = threading.Thread(target=done.wait, name="ecacli-sigint-receiver", daemon=True)
    receiver.start()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        done.set()


def start_ranks(worker: Callable[..., Any], args: tuple[Any, ...], nproc: int, timeout_s: float) -> Any:
    """Run `worker(*args)` on `nproc` ranks with torch.distributed's launcher (as `torchrun --standalone`
    does: c10d rendezvous on a free local port, no restarts) and return rank 0's return value.

    A failing rank ends the job: the launcher stops the others and `RankFailed` names the rank and
    its cause; Ctrl-C (or SIGTERM) stops every rank, at any moment (ranks that are still starting
    included), and raises KeyboardInterrupt (or `Terminated`).
    """
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    launch_config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        rdzv_configs={"timeout": math.ceil(timeout_s)},
        max_restarts=0,
        start_method="spawn",
    )
    try:
        with _quiet_launcher_logs(), _ranks_start_uninterruptible():
            results = elastic_launch(launch_config, _rank_entry)(worker, *args)
    except ChildFailedError as exc:
        raise _launch_failure(exc, nproc) from None
    except SignalException as exc:
        if exc.sigval == signal.SIGTERM:
            raise Terminated() from None
        if exc.sigval == signal.SIGINT:
            raise KeyboardInterrupt from None
        raise
    return results[0]
