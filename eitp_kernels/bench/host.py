"""``eitp-bench --host``: the host time of one call, per op and backend.

On tiny tensors (64 elements) a kernel costs next to nothing, so the time of
a call is what the host spends around it: argument checks, backend choice,
dispatch, allocation, the launch. ``torch.histc`` on the same tensor is the
yardstick (one aten op). Each figure is the median over rounds of
back-to-back calls (CPU: the thread's CPU time, :func:`host_clock`); the rounds of an op alternate with rounds of
``torch.histc``, and its ratio is the median of the per-pair ratios, so a
load that comes and goes (other processes on a shared machine) moves both
sides of a ratio alike.

Rows, by device:
* CPU: ``cpp`` (the extension's CPU kernels: host work plus a kernel on 64
  elements) and ``triton`` with every launch taken over by a launch observer
  (nothing runs: the host path alone, as on a GPU machine, minus the driver's
  launch);
* CUDA: ``cuda`` and ``triton`` on CUDA tensors, the calls queued back to
  back with one sync per round (the host's time per call while the device keeps
  up).
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

HOST_TARGETS = {"cpp": 3.0, "cuda": 3.0, "triton": 6.0}  # at most this many torch.histc calls' time
COHERENCE_TARGET = 5.0


def tiny_calls(device: torch.device) -> dict[str, Callable[[], object]]:
    """op label -> a call on tiny tensors on ``device``."""
    import eitp_kernels as ek

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, generator=g).to(device)
    rows = x.reshape(8, 8)
    q, s, _ = ek.quantize_int8(rows, granularity="channel")
    return {
        "histogram_entropy": lambda: ek.histogram_entropy(x),
        "histogram_entropy_many": lambda: ek.histogram_entropy_many([x, rows]),
        "finite_minmax": lambda: ek.finite_minmax(x),
        "quantize_int8": lambda: ek.quantize_int8(x),
        "fake_quant_int8": lambda: ek.fake_quant_int8(x),
        "fake_quant_int8 channel": lambda: ek.fake_quant_int8(rows, granularity="channel"),
        "dequantize_int8": lambda: ek.dequantize_int8(q, s, granularity="channel"),
        "coherence_loss": lambda: ek.coherence_loss(rows),
    }


def per_call_seconds(fn: Callable[[], object], device: torch.device, calls: int = 200, rounds: int = 15) -> float:
    """Median over ``rounds`` of the time (:func:`host_clock`) of ``calls`` back-to-back calls, per call."""
    sync, clock = _sync(device), host_clock(device)
    _warm_up(fn, sync)
    return statistics.median(_round_seconds(fn, sync, calls, clock) for _ in range(rounds))


def host_clock(device: torch.device) -> Callable[[], float]:
    """The clock of a round: on CPU the calling thread's CPU time (``time.thread_time``: the
    calls on 64 elements run on this thread alone, and time spent descheduled while other
    processes run does not count: on this 2-core machine shared by several workers, wall-clock
    rounds of the same call varied 10x within one run, CPU-time rounds 1.5x); on CUDA the
    wall clock (the host's time per call while the device keeps up, one sync per round)."""
    return time.perf_counter if device.type == "cuda" else time.thread_time


def paired_seconds(fn: Callable[[], object], yardstick: Callable[[], object], device: torch.device,
                   calls: int = 200, rounds: int = 15) -> tuple[float, float, float]:
    """(fn's seconds per call, yardstick's, the median of fn / yardstick per pair of rounds):
    rounds of ``calls`` back-to-back calls of each, alternating, in turns which goes first."""
    sync, clock = _sync(device), host_clock(device)
    _warm_up(fn, sync)
    _warm_up(yardstick, sync)
    mine, theirs, ratios = [], [], []
    for i in range(rounds):
        if i % 2:
            a = _round_seconds(fn, sync, calls, clock)
            b = _round_seconds(yardstick, sync, calls, clock)
        else:
            b = _round_seconds(yardstick, sync, calls, clock)
            a = _round_seconds(fn, sync, calls, clock)
        mine.append(a)
        theirs.append(b)
        ratios.append(a / b)
    return statistics.median(mine), statistics.median(theirs), statistics.median(ratios)


def _sync(device: torch.device) -> Callable[[], object]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def _warm_up(fn: Callable[[], object], sync: Callable[[], object]) -> None:
    for _ in range(20):
        fn()
    sync()


def _round_seconds(fn: Callable[[], object], sync: Callable[[], object], calls: int, clock=time.perf_counter) -> float:
    start = clock()
    for _ in range(calls):
        fn()
    sync()
    return (clock() - start) / calls


def host_rows(device: torch.device, calls: int = 200, rounds: int = 15) -> list[tuple[str, str, float, float]]:
    """(op, backend, microseconds per call, x torch.histc) for every op and backend of ``device``;
    the first row is torch.histc itself (the median of the rounds paired with every op)."""
    import eitp_kernels as ek
    from eitp_kernels import _triton

    x = torch.randn(64, device=device)

    def histc():
        return torch.histc(x, bins=256)

    rows = []
    histc_seconds = []
    backends = ("cpp", "triton") if device.type == "cpu" else ("cuda", "triton")
    available = ek.backends()
    for backend in backends:
        if device.type == "cpu" and backend == "triton":
            if _triton.triton is None:
                continue
            context = _taken_over_triton
        else:
            if not available[backend].available:
                continue
            context = lambda b=backend: ek.use_backend(b)  # noqa: E731
        for op, fn in tiny_calls(device).items():
            with context():
                seconds, yardstick, ratio = paired_seconds(fn, histc, device, calls, rounds)
            histc_seconds.append(yardstick)
            rows.append((op, backend, seconds * 1e6, ratio))
    if not histc_seconds:
        histc_seconds.append(per_call_seconds(histc, device, calls, rounds))
    return [("torch.histc", "torch", statistics.median(histc_seconds) * 1e6, 1.0)] + rows


class _taken_over_triton:
    """The triton backend forced for CPU tensors, every launch taken over (nothing runs)."""

    def __enter__(self):
        from eitp_kernels import _triton
        from eitp_kernels.bench import launches

        self._forced = launches.forced_backend("triton")
        self._forced.__enter__()
        self._observer = lambda kernel, grid, args, meta: True
        _triton.launch_observers.append(self._observer)
        return self

    def __exit__(self, *exc):
        from eitp_kernels import _triton

        _triton.launch_observers.remove(self._observer)
        return self._forced.__exit__(*exc)


def format_host(rows: list[tuple[str, str, float, float]], device: torch.device) -> str:
    lines = [f"host time per call on 64-element tensors ({device.type}; median of rounds of back-to-back calls, "
             "each op's rounds alternating with torch.histc's: x histc is the median of the paired ratios)"]
    if device.type == "cpu":
        lines.append("triton: launches taken over on a machine without a GPU (the host path alone, no driver "
                     "launch); cpp: host work plus a CPU kernel on 64 elements")
    lines.append(f"{'op':<26} {'backend':<8} {'us/call':>8} {'x histc':>8}  target")
    for op, backend, us, ratio in rows:
        limit = COHERENCE_TARGET if op.startswith("coherence") and backend != "triton" else HOST_TARGETS.get(backend)
        verdict = "" if limit is None else f"<= {limit:.0f}x {'met' if ratio <= limit else 'MISSED'}"
        lines.append(f"{op:<26} {backend:<8} {us:8.1f} {ratio:7.2f}x  {verdict}")
    return "\n".join(lines)
