"""Measurement primitives of the benchmark runner: time, bandwidth, memory.

* :func:`time_fn` times a zero-argument callable and returns the median and
  every sample, in seconds. CPU: ``time.perf_counter`` around each call after
  ``warmup`` untimed calls. CUDA: a pair of CUDA events around each call, the
  L2 cache flushed (a 256 MiB buffer zeroed) before each timed call, outside
  the timed region, as ``triton.testing.do_bench`` does.
* :func:`percentile` of the samples (the table's p95 beside the median).
* :func:`device_and_call_time` (CUDA): the device time of one call (the
  kernels, copies and fills torch.profiler records on the GPU, summed: no
  host time in it), the time of a call as a user makes it (back-to-back
  calls, wall clock, one sync at the end: host and device overlapping) and
  the device launches per call, so host overhead can neither pass for a slow
  kernel nor hide behind a fast one.
* :func:`measure_copy_bandwidth` is the device's ``dst.copy_(src)`` rate,
  counting the bytes read plus the bytes written: the yardstick of the "% of
  copy bandwidth" column.
* :func:`peak_memory` is the peak of the bytes allocated by one call and live
  at the same time (outputs included, inputs and earlier allocations not).
  CUDA: the caching allocator's peak statistics. CPU: torch.profiler's
  allocation and free events, walked in time order.
* :func:`measure_read_bandwidth` is the rate of ``x.sum()`` over the same
  buffer: reading alone. A copy's writes cost the CPU a read of each
  destination line first (read-for-ownership, not counted in the copy's
  bytes), so ops that mostly read can pass 100% of the copy bandwidth.
* :func:`compile_reference` wraps a reference in ``torch.compile``.
* :func:`captured_output` keeps what third-party code prints (file
  descriptors 1 and 2, Python warnings) out of the table.
* :class:`CpuLoad` measures the cores other processes keep busy meanwhile.

Nothing here knows about ops; see ``cases.py`` and ``runner.py``.
"""
from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
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


def percentile(samples: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``samples``, linear between order statistics."""
    if not samples or not 0 <= q <= 100:
        raise ValueError(f"percentile: need samples and 0 <= q <= 100, got {len(samples)} samples, q={q}")
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def device_and_call_time(fn: Callable[[], Any], device: torch.device | str, calls: int = 20
                         ) -> tuple[float, float, float]:
    """(device seconds per call, call seconds per call, device launches per call) of ``fn`` on a CUDA device.

    Call time: ``calls`` back-to-back calls timed by the host clock, one sync
    at the end (what a training loop sees). Device time and launches: the same
    number of calls under torch.profiler, from the GPU activities it records
    (:func:`device_activity`)."""
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(device)
    fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    call_s = (time.perf_counter() - start) / calls
    with _native_stderr_silenced():
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                fn()
            synchronize(device)
    device_us, launches = device_activity(prof.events())
    return device_us / 1e6 / calls, call_s, launches / calls


def device_activity(events) -> tuple[float, int]:
    """(microseconds, count) of the GPU activities among profiler ``events``:
    kernels, memcpys and memsets (each one launch)."""
    on_device = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    return sum(e.time_range.elapsed_us() for e in on_device), len(on_device)


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


def measure_read_bandwidth(device: torch.device | str, quick: bool = False, nbytes: int | None = None) -> float:
    """GB/s (1e9 bytes) of ``src.sum()`` over a buffer of ``nbytes``: reading only."""
    device = torch.device(device)
    nbytes = COPY_BYTES[device.type] if nbytes is None else nbytes
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    median, _ = time_fn(lambda: src.sum(), device, warmup=2, reps=5 if quick else 20, min_time=0.05 if quick else 0.2)
    return src.nbytes / median / 1e9


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


class Captured:
    """The text printed inside :func:`captured_output` (filled on exit)."""

    text: str = ""


@contextlib.contextmanager
def captured_output() -> Iterator[Captured]:
    """Send file descriptors 1 and 2 to a temporary file and record Python
    warnings; on exit ``.text`` holds both. torch.compile's warnings and
    graph-break dumps (logging to stderr), a peer library's import messages
    and C++ prints all end up there instead of between the table's rows."""
    captured = Captured()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = []
        try:
            for fd in (1, 2):
                saved.append((fd, os.dup(fd)))
                os.dup2(sink.fileno(), fd)
        except OSError:  # no usable descriptors (embedded interpreter): capture warnings only
            pass
        # Python-level writers too, for when sys.stdout / sys.stderr are not
        # the file descriptors (pytest's capture, notebooks).
        text_sink = open(sink.fileno(), "w", closefd=False, encoding="utf-8", errors="replace")
        streams = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = text_sink
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("default")
                yield captured
        finally:
            text_sink.flush()
            sys.stdout, sys.stderr = streams
            text_sink.close()
            for stream in streams:
                stream.flush()
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            text = sink.read().decode(errors="replace")
            lines = [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught]
            captured.text = text + "".join(line + "\n" for line in lines)


class CpuLoad:
    """Cores kept busy by other processes between :meth:`start` and
    :meth:`others_busy`: the machine's busy time (/proc/stat: user, nice,
    system, irq, softirq and steal, i.e. time the hypervisor gave elsewhere)
    minus this process's CPU time, over the wall time. Resolution: one clock
    tick (10 ms) per core, so rows shorter than about 0.1 s read noisy."""

    def __init__(self, busy_s: float | None, own_s: float, wall_s: float):
        self.busy_s, self.own_s, self.wall_s = busy_s, own_s, wall_s

    @classmethod
    def start(cls) -> "CpuLoad":
        return cls(_machine_busy_seconds(), time.process_time(), time.perf_counter())

    def others_busy(self) -> float | None:
        busy = _machine_busy_seconds()
        wall = time.perf_counter() - self.wall_s
        if busy is None or self.busy_s is None or wall <= 0:
            return None
        tick = 1 / _clock_ticks()
        others = (busy - self.busy_s) - (time.process_time() - self.own_s) - tick * (os.cpu_count() or 1)
        return round(max(others, 0.0) / wall, 2)


def _clock_ticks() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError, AttributeError):
        return 100


def _machine_busy_seconds() -> float | None:
    """Seconds all CPUs spent busy since boot (None where /proc/stat is missing)."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(v) for v in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    if len(ticks) < 8:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / _clock_ticks()
