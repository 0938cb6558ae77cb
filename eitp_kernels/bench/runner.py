"""Run cases on backends and turn the measurements into table rows.

Per case: make the inputs once, compute the eager reference output once, then
for each backend (the library's kernels, then the ``eager`` and ``compile``
baselines): one untimed first call whose output is checked against the
reference (for ``compile`` this call compiles), the timing, and one more call
under the memory probe. Used by the CLI and by the pytest-benchmark suites.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import torch

from eitp_kernels.bench import harness
from eitp_kernels.bench.cases import Case, kernel_backends

BASELINES = ("eager", "compile")
FAILED = ("MISMATCH", "error")  # checks that fail the run; "compile failed" does not


@dataclasses.dataclass(frozen=True)
class Settings:
    """Timing parameters (see harness.time_fn)."""

    warmup: int
    reps: int
    min_time: float  # seconds of timed calls per backend, at least

    @classmethod
    def for_run(cls, device: torch.device, quick: bool) -> "Settings":
        if device.type == "cuda":
            return cls(warmup=3, reps=10, min_time=0.02) if quick else cls(warmup=10, reps=50, min_time=0.2)
        return cls(warmup=1, reps=5, min_time=0.05) if quick else cls(warmup=2, reps=10, min_time=0.5)


@dataclasses.dataclass
class Row:
    """One (case, backend) measurement: a line of the table, an entry of the JSON."""

    op: str
    shape: str
    dtype: str
    backend: str
    median_ms: float | None = None
    min_ms: float | None = None
    reps: int = 0
    rate: float | None = None  # in rate_unit
    rate_unit: str = "GB/s"
    pct_copy_bw: float | None = None
    x_eager: float | None = None  # eager median / this median
    x_compile: float | None = None  # torch.compile median / this median
    peak_mib: float | None = None
    check: str = "not run"  # ok | MISMATCH | error | compile failed
    first_call_s: float | None = None  # the untimed first call (includes compilation)
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.check in FAILED


def backends_to_run(case: Case, device: torch.device, with_compile: bool = True) -> list[str]:
    """The library's backends for ``case`` on ``device``, then the baselines."""
    return kernel_backends(case, device) + [b for b in BASELINES if with_compile or b != "compile"]


def prepare(case: Case, device: torch.device) -> tuple[tuple, Any]:
    """The case's inputs on ``device`` and the eager reference output."""
    inputs = case.make_inputs(device)
    return inputs, case.reference(*inputs)


def make_call(case: Case, backend: str, inputs: tuple) -> Callable[[], Any]:
    """A zero-argument callable running ``case`` on ``backend``."""
    if backend == "compile":
        compiled = harness.compile_reference(case.reference)
        return lambda: compiled(*inputs)
    return lambda: case.run(backend, inputs)


def measure_backend(
    case: Case,
    backend: str,
    inputs: tuple,
    expected: Any,
    device: torch.device,
    settings: Settings,
    copy_gbps: float | None,
) -> Row:
    """Check, time and memory-probe ``case`` on ``backend``; errors become the row's check."""
    row = Row(case.op, case.shape, case.dtype_label, backend, rate_unit="GFLOP/s" if case.flops else "GB/s")
    try:
        call = make_call(case, backend, inputs)
        start = time.perf_counter()
        out = call()
        harness.synchronize(device)
        row.first_call_s = time.perf_counter() - start
    except Exception as error:  # noqa: BLE001 - reported in the table, not raised
        row.check = "compile failed" if backend == "compile" else "error"
        row.error = _one_line(error)
        return row
    row.check = "ok" if case.matches(out, expected) else "MISMATCH"
    del out
    try:
        median, times = harness.time_fn(call, device, settings.warmup, settings.reps, settings.min_time)
        peak = harness.peak_memory(call, device)
    except Exception as error:  # noqa: BLE001
        row.check, row.error = "error", _one_line(error)
        return row
    _fill_figures(row, case, median, times, peak, copy_gbps)
    return row


def _fill_figures(row: Row, case: Case, median: float, times: list[float], peak: int | None, copy_gbps) -> None:
    row.median_ms, row.min_ms, row.reps = median * 1e3, min(times) * 1e3, len(times)
    if case.flops:
        row.rate = case.flops / median / 1e9
    elif case.bytes:
        row.rate = case.bytes / median / 1e9
    if case.bytes and copy_gbps:
        row.pct_copy_bw = 100.0 * case.bytes / median / 1e9 / copy_gbps
    row.peak_mib = None if peak is None else peak / 2**20


def add_speedups(rows: list[Row]) -> None:
    """Fill x_eager and x_compile of one case's rows from its baseline rows."""
    medians = {row.backend: row.median_ms for row in rows}
    for row in rows:
        if row.median_ms:
            row.x_eager = _ratio(medians.get("eager"), row.median_ms)
            row.x_compile = _ratio(medians.get("compile"), row.median_ms)


def _ratio(baseline: float | None, value: float) -> float | None:
    return None if baseline is None else baseline / value


def run_case(
    case: Case,
    device: torch.device,
    settings: Settings,
    copy_gbps: float | None = None,
    with_compile: bool = True,
    on_backend: Callable[[Case, str], Callable[[Row], None]] | None = None,
) -> list[Row]:
    """Every backend of ``case``; ``on_backend(case, backend)`` is called before
    each measurement and the function it returns with the finished row."""
    inputs, expected = prepare(case, device)
    rows = []
    for backend in backends_to_run(case, device, with_compile):
        done = on_backend(case, backend) if on_backend else None
        rows.append(measure_backend(case, backend, inputs, expected, device, settings, copy_gbps))
        if done:
            done(rows[-1])
    add_speedups(rows)
    return rows


def pytest_benchmark_case(benchmark, case: Case, backend: str, device: torch.device, warmup: int = 3) -> None:
    """Time ``case`` on ``backend`` with pytest-benchmark's ``benchmark`` fixture,
    after checking its output against the reference and ``warmup`` calls."""
    inputs, expected = prepare(case, device)
    call = make_call(case, backend, inputs)
    assert case.matches(call(), expected), f"{case.name}: backend {backend!r} disagrees with the reference"
    for _ in range(warmup):
        call()
    harness.synchronize(device)

    def timed():
        call()
        harness.synchronize(device)

    benchmark.group = case.name
    benchmark.extra_info.update(backend=backend, bytes=case.bytes, flops=case.flops)
    benchmark(timed)
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is not None and stats.median > 0:
        work, unit = (case.flops, "GFLOP/s") if case.flops else (case.bytes, "GB/s")
        if work:
            benchmark.extra_info[unit] = round(work / stats.median / 1e9, 3)


def _one_line(error: BaseException, limit: int = 200) -> str:
    text = f"{type(error).__name__}: {error}".strip().splitlines()[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."
