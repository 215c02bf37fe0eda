"""The device side of profiling: which device to use, how to time work on it and how to read its memory.

On CUDA, time is read from CUDA events recorded on the stream between the phases of a step,
so host launch overhead and asynchronous execution are both accounted for; elsewhere the host
clock is read after synchronising the device. (torch.utils.benchmark.Timer times one statement
on its own; a step here is split into phases and interleaved across models, so the timers are
built from torch.cuda.Event and torch's synchronize instead.) Peak memory is what torch's allocator hands
out: CUDA's peak after a reset, or on CPU the running total of the profiler's allocation events.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Callable

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from ecacli.errors import UserError
from ecacli.quiet import native_output_silenced

SUPPORTED_DEVICES = "cpu, cuda, cuda:N or mps"


def torch_build() -> str:
    """'torch 2.13.0+cpu (CPU-only build)' or 'torch 2.x (CUDA 12.4)', for error messages and headers."""
    if torch.version.cuda:
        return f"torch {torch.__version__} (CUDA {torch.version.cuda})"
    if getattr(torch.version, "hip", None):
        return f"torch {torch.__version__} (ROCm {torch.version.hip})"
    return f"torch {torch.__version__} (CPU-only build)"


def no_cuda_reason() -> str:
    """Why CUDA cannot be used here: a torch built without CUDA, or a CUDA build that sees no GPU."""
    if not torch.version.cuda and not getattr(torch.version, "hip", None):
        return f"the installed {torch_build()} has no CUDA support; a GPU needs a CUDA build of torch (see pytorch.org's install selector)."
    return (
        f"the installed {torch_build()} supports CUDA but finds no GPU (torch.cuda.is_available() is False): "
        "check that a GPU and its driver are present (nvidia-smi) and that CUDA_VISIBLE_DEVICES does not hide it."
    )


def resolve_device(text: str) -> torch.device:
    """The torch device for `--device`, or a UserError saying why it cannot be used here."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise UserError(f"--device '{text}' is not a device; use {SUPPORTED_DEVICES}.") from None
    if device.type == "cpu":
        if device.index not in (None, 0):
            raise UserError(f"--device '{text}': there is only one CPU device; use 'cpu'.")
        return torch.device("cpu")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"--device '{text}': {no_cuda_reason()} Use --device cpu.")
        index = 0 if device.index is None else device.index
        if index >= count:
            raise UserError(f"--device '{text}': there {'is' if count == 1 else 'are'} only {count} CUDA device{'' if count == 1 else 's'} (cuda:0 .. cuda:{count - 1}).")
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise UserError(f"--device '{text}': MPS (Apple GPU) is not available with the installed {torch_build()} on this machine. Use --device cpu.")
        return torch.device("mps")
    raise UserError(f"--device '{text}': device type '{device.type}' is not supported; use {SUPPORTED_DEVICES}.")


def synchronize(device: torch.device) -> None:
    """Wait for all work queued on `device` (a no-op on CPU, where work is synchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    return _cpu_model() or platform.processor() or platform.machine() or "cpu"


def _cpu_model() -> str | None:
    """The CPU's marketing name from /proc/cpuinfo (Linux), or None."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)


def environment(device: torch.device) -> dict[str, str | int | None]:
    """Versions and settings a reader needs to reproduce a measurement."""
    cuda = device.type == "cuda"
    return {
        "device": str(device),
        "device_name": device_name(device),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if cuda else None,
        "cudnn_benchmark": torch.backends.cudnn.benchmark if cuda else None,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32 if cuda else None,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32 if cuda else None,
        "threads": torch.get_num_threads(),
        "python_version": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


CLOCKS: dict[str, tuple[Callable[[], float], str]] = {
    "wall": (time.perf_counter, "host clock (time.perf_counter) with device synchronisation"),
    "cpu": (time.thread_time, "this thread's CPU time (time.thread_time): with one intra-op thread on CPU, time spent descheduled by other processes is not counted"),
}


class HostTimer:
    """Phase times from a host clock (`CLOCKS`), read after synchronising the device at every mark."""

    def __init__(self, device: torch.device, clock: str = "wall") -> None:
        self.device = device
        self.now, self.name = CLOCKS[clock]
        self._marks: list[tuple[str, float]] = []

    def begin(self) -> None:
        synchronize(self.device)
        self._marks = [("begin", self.now())]

    def mark(self, phase: str) -> None:
        synchronize(self.device)
        self._marks.append((phase, self.now()))

    def finish(self) -> dict[str, float]:
        """Milliseconds per phase since the previous mark, and 'step' from begin to the last mark."""
        times = {phase: (t - prev) * 1e3 for (_, prev), (phase, t) in zip(self._marks, self._marks[1:])}
        times["step"] = (self._marks[-1][1] - self._marks[0][1]) * 1e3
        return times


class CudaEventTimer:
    """Phase times from CUDA events recorded on the current stream; one synchronisation per step."""

    name = "CUDA events (torch.cuda.Event, elapsed_time)"

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._marks: list[tuple[str, torch.cuda.Event]] = []

    def _record(self, phase: str) -> None:
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        self._marks.append((phase, event))

    def begin(self) -> None:
        self._marks = []
        self._record("begin")

    def mark(self, phase: str) -> None:
        self._record(phase)

    def finish(self) -> dict[str, float]:
        self._marks[-1][1].synchronize()
        times = {phase: prev.elapsed_time(event) for (_, prev), (phase, event) in zip(self._marks, self._marks[1:])}
        times["step"] = self._marks[0][1].elapsed_time(self._marks[-1][1])
        return times


def make_timer(device: torch.device, clock: str = "wall") -> HostTimer | CudaEventTimer:
    """CUDA events on CUDA (wall time); elsewhere the host `clock`, "wall" or "cpu"."""
    return CudaEventTimer(device) if device.type == "cuda" else HostTimer(device, clock)


def memory_measure(device: torch.device) -> str | None:
    """What `step_peak_bytes` reads on this device, in words (None where it reads nothing)."""
    return MEMORY_MEASURES.get(device.type)


MEMORY_MEASURES = {
    "cuda": "torch.cuda.max_memory_allocated after reset_peak_memory_stats, over one step after warm-up",
    "cpu": "bytes allocated by torch's CPU allocator over one step after warm-up (allocation events of torch.profiler, profile_memory=True); the process RSS is higher (interpreter, libraries, allocator caches)",
}


def step_peak_bytes(device: torch.device, run: Callable[[], object]) -> int | None:
    """Peak bytes allocated on `device` while `run()` executes, above what was allocated when it started.

    None on devices with no allocator statistics (MPS).
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        run()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    if device.type != "cpu":
        return None
    with native_output_silenced(2), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    allocations = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.device_type() == DeviceType.CPU]
    current = peak = 0
    for event in sorted(allocations, key=lambda e: e.start_ns()):
        current += event.nbytes()
        peak = max(peak, current)
    return peak


def default_device() -> str:
    """What `--device auto` picks: the first CUDA GPU, else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"
