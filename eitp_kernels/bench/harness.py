"""Measurement primitives of the benchmark runner: time, bandwidth, memory.

* :func:`time_fn` times a zero-argument callable and returns the median and
  every sample, in seconds. CPU: ``time.perf_counter`` around each call after
  ``warmup`` untimed calls. CUDA: a pair of CUDA events around each call, the
  L2 cache flushed (a 256 MiB buffer zeroed) before each timed call, outside
  the timed region, as ``triton.testing.do_bench`` does.
* :func:`measure_copy_bandwidth` is the device's ``dst.copy_(src)`` rate,
  counting the bytes read plus the bytes written: the yardstick of the "% of
  copy bandwidth" column.
* :func:`peak_memory` is the peak of the bytes allocated by one call and live
  at the same time (outputs included, inputs and earlier allocations not).
  CUDA: the caching allocator's peak statistics. CPU: torch.profiler's
  allocation and free events, walked in time order.
* :func:`compile_reference` wraps a reference in ``torch.compile``.

Nothing here knows about ops; see ``cases.py`` and ``runner.py``.
"""
from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from typing import Any, Callable, Iterator

import torch

# Per buffer (the copy moves twice this). Quick mode keeps these sizes and
# takes fewer samples: buffers that fit in the last-level cache would measure
# the cache, not the memory.
COPY_BYTES = {"cuda": 256 << 20, "cpu": 64 << 20}
L2_FLUSH_BYTES = 256 << 20


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(
    fn: Callable[[], Any],
    device: torch.device | str,
    warmup: int = 3,
    reps: int = 10,
    min_time: float = 0.2,
    max_reps: int = 10_000,
) -> tuple[float, list[float]]:
    """Median and samples (seconds) of ``fn()`` on ``device``.

    ``warmup`` untimed calls first; then at least ``reps`` timed calls and
    more until the samples add up to ``min_time`` seconds, at most ``max_reps``.
    """
    device = torch.device(device)
    if warmup < 0 or reps < 1 or max_reps < reps:
        raise ValueError(f"time_fn: need warmup >= 0 and 1 <= reps <= max_reps, got {warmup}, {reps}, {max_reps}")
    timer = _time_cuda if device.type == "cuda" else _time_cpu
    times = timer(fn, device, warmup, reps, min_time, max_reps)
    return statistics.median(times), times


def _time_cpu(fn, device, warmup, reps, min_time, max_reps) -> list[float]:
    for _ in range(warmup):
        fn()
    times: list[float] = []
    total = 0.0
    while len(times) < max_reps and (len(times) < reps or total < min_time):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        total += times[-1]
    return times


def _time_cuda(fn, device, warmup, reps, min_time, max_reps) -> list[float]:
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device=device)
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    batch = reps
    while batch > 0:
        times += _cuda_batch(fn, device, flush, batch)
        missing = min_time - sum(times)
        per_call = sum(times) / len(times)
        wanted = math.ceil(missing / per_call) if missing > 0 and per_call > 0 else 0
        batch = min(wanted, max_reps - len(times))
    return times


def _cuda_batch(fn, device, flush: torch.Tensor, count: int) -> list[float]:
    """``count`` calls, each between its own CUDA events; one sync at the end."""
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(count)]
    with torch.cuda.device(device):
        for start, end in events:
            flush.zero_()
            start.record()
            fn()
            end.record()
    synchronize(device)
    return [start.elapsed_time(end) / 1e3 for start, end in events]


def measure_copy_bandwidth(device: torch.device | str, quick: bool = False, nbytes: int | None = None) -> float:
    """GB/s (1e9 bytes) of ``dst.copy_(src)``, counting read + written bytes.

    ``nbytes`` per buffer defaults to ``COPY_BYTES[device.type]``; ``quick``
    takes fewer samples.
    """
    device = torch.device(device)
    nbytes = COPY_BYTES[device.type] if nbytes is None else nbytes
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    median, _ = time_fn(lambda: dst.copy_(src), device, warmup=2, reps=5 if quick else 20, min_time=0.05 if quick else 0.2)
    return 2 * src.nbytes / median / 1e9


def peak_memory(fn: Callable[[], Any], device: torch.device | str) -> int | None:
    """Peak bytes allocated by one ``fn()`` call and live at once; None if unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return _cuda_peak_bytes(fn, device)
    if device.type == "cpu":
        return _cpu_peak_bytes(fn)
    return None


def _cuda_peak_bytes(fn, device) -> int:
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device)
    result = fn()
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - baseline
    del result
    return max(peak, 0)


def _cpu_peak_bytes(fn) -> int | None:
    """Walk the profiler's CPU allocation (+) and free (-) events in time order."""
    from torch.profiler import ProfilerActivity, profile

    with _native_stderr_silenced():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            result = fn()
        del result  # freed after the profile: the output counts as live
        results = getattr(prof.profiler, "kineto_results", None)
        events = list(results.events()) if results is not None else []
    if not events:
        return None  # the profiler recorded nothing at all: memory unknown
    changes = [
        (event.start_ns(), event.nbytes())
        for event in events
        if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU
    ]
    changes.sort(key=lambda change: change[0])  # stable: simultaneous events keep their order
    live = peak = 0
    for _, nbytes in changes:
        live += nbytes
        peak = max(peak, live)
    return peak


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null: the profiler's C++ layer (kineto)
    prints start/stop banners there on every run."""
    try:
        saved = os.dup(2)
    except OSError:  # no usable fd 2: nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def compile_reference(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.compile(fn)`` with static shapes and fresh Dynamo caches.

    The caches are reset so that one case's compilation never turns the next
    case's into a dynamic-shape (or, past the recompile limit, eager) one.
    Compilation itself happens on the first call, which may raise.
    """
    torch._dynamo.reset()
    return torch.compile(fn, dynamic=False)
