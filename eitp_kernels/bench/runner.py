"""Run cases on backends and turn the measurements into table rows.

Per case: make the inputs once, compute the eager reference output once, then
for each backend (the library's kernels, the ``eager`` and ``compile``
baselines, then the case's alternatives: peer libraries and other
formulations): one untimed first call whose output is checked against the
reference (for ``compile`` this call compiles), the timing, and one more call
under the memory probe. Whatever third-party code prints meanwhile
(torch.compile's warnings and graph-break dumps, a peer's import messages) is
captured, not interleaved with the table. Each row also records how many
cores other processes kept busy while it was timed. Used by the CLI and by
the pytest-benchmark suites.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import torch

from eitp_kernels.bench import harness, peers
from eitp_kernels.bench.cases import Alternative, Case, kernel_backends

BASELINES = ("eager", "compile")
# Checks that fail the run. "compile failed" (torch.compile cannot run here),
# "disagrees" and "peer error" (an alternative's output or call) do not: they
# are flagged in the table and the summary.
FAILED = ("MISMATCH", "error")
# A row is flagged busy when other processes kept at least this many cores
# busy, on average, while it was measured.
BUSY_CORES = 0.5


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
    kind: str = "kernel"  # kernel | baseline | peer (another library) | alternative (another formulation)
    median_ms: float | None = None
    min_ms: float | None = None
    p95_ms: float | None = None  # 95th percentile of the samples
    device_ms: float | None = None  # CUDA: the GPU's own time per call (profiler), no host time
    call_ms: float | None = None  # CUDA: wall time per call, back-to-back calls (host and device overlapping)
    launches: float | None = None  # CUDA: device launches (kernels, copies, fills) per call
    reps: int = 0
    rate: float | None = None  # in rate_unit
    rate_unit: str = "GB/s"
    pct_copy_bw: float | None = None
    x_eager: float | None = None  # eager median / this median
    x_compile: float | None = None  # torch.compile median / this median
    ours_x: float | None = None  # non-kernel rows: this median / the case's fastest kernel median
    peak_mib: float | None = None
    check: str = "not run"  # ok | MISMATCH | error | compile failed | disagrees | peer error
    first_call_s: float | None = None  # the untimed first call (includes compilation)
    error: str | None = None
    others_busy: float | None = None  # cores other processes kept busy during the row (None: unknown)
    output_lines: int = 0  # lines third-party code printed during the row (kept out of the table)
    output: str = ""  # their text

    @property
    def busy(self) -> bool:
        return self.others_busy is not None and self.others_busy >= BUSY_CORES

    @property
    def failed(self) -> bool:
        return self.check in FAILED


def backends_to_run(case: Case, device: torch.device, with_compile: bool = True) -> list[str]:
    """The library's backends for ``case`` on ``device``, then the baselines."""
    return kernel_backends(case, device) + [b for b in BASELINES if with_compile or b != "compile"]


def alternatives_to_run(case: Case, device: torch.device, quick: bool = False) -> list[Alternative]:
    """The case's alternatives that run here: installed, for this device, and
    (with ``quick``) cheap to import."""
    return [alt for alt in case.alternatives if alt_status(alt, device, quick) == "run"]


def alt_status(alternative: Alternative, device: torch.device, quick: bool) -> str:
    """"run", "missing" (not installed), "quick" (slow import, left out of
    --quick) or "device" (not for this device)."""
    if device.type not in alternative.devices:
        return "device"
    if not peers.installed(alternative):
        return "missing"
    if quick and alternative.slow_import:
        return "quick"
    return "run"


def prepare(case: Case, device: torch.device) -> tuple[tuple, Any]:
    """The case's inputs on ``device`` and the eager reference output."""
    inputs = case.make_inputs(device)
    return inputs, case.reference(*inputs)


def make_call(case: Case, backend: str, inputs: tuple) -> Callable[[], Any]:
    """A zero-argument callable running ``case`` on ``backend`` (a kernel
    backend, a baseline, or the name of one of the case's alternatives)."""
    alternative = find_alternative(case, backend)
    if alternative is not None:
        return alternative.make(inputs)
    if backend == "compile":
        compiled = harness.compile_reference(case.reference)
        return lambda: compiled(*inputs)
    return lambda: case.run(backend, inputs)


def find_alternative(case: Case, backend: str) -> Alternative | None:
    return next((alt for alt in case.alternatives if alt.name == backend), None)


def output_agrees(case: Case, backend: str, out: Any, expected: Any) -> bool:
    """The row's check: the case's for kernels and baselines; an alternative's
    output is converted to the reference's form and checked by its own rule."""
    alternative = find_alternative(case, backend)
    if backend == "compile" and case.compile_agrees is not None:
        return case.compile_agrees(out, expected)
    if alternative is None:
        return case.matches(out, expected)
    if alternative.to_reference is not None:
        out = alternative.to_reference(out)
    if alternative.agrees is not None:
        return alternative.agrees(out, expected)
    return case.matches(out, expected)


def row_kind(case: Case, backend: str) -> str:
    alternative = find_alternative(case, backend)
    if alternative is not None:
        return "peer" if alternative.is_peer else "alternative"
    return "baseline" if backend in BASELINES else "kernel"


def measure_backend(
    case: Case,
    backend: str,
    inputs: tuple,
    expected: Any,
    device: torch.device,
    settings: Settings,
    copy_gbps: float | None,
) -> Row:
    """Check, time and memory-probe ``case`` on ``backend``; errors become the
    row's check. Output printed meanwhile goes to ``row.output``; the cores
    other processes used meanwhile to ``row.others_busy``."""
    row = Row(case.op, case.shape, case.dtype_label, backend, kind=row_kind(case, backend),
              rate_unit="GFLOP/s" if case.flops else "GB/s")
    load = harness.CpuLoad.start()
    with harness.captured_output() as captured:
        _measure(row, case, backend, inputs, expected, device, settings, copy_gbps)
    row.others_busy = load.others_busy()
    row.output = captured.text
    row.output_lines = len(captured.text.splitlines())
    return row


def _measure(row: Row, case: Case, backend: str, inputs, expected, device, settings, copy_gbps) -> None:
    try:
        call = make_call(case, backend, inputs)
        start = time.perf_counter()
        out = call()
        harness.synchronize(device)
        row.first_call_s = time.perf_counter() - start
    except Exception as error:  # noqa: BLE001 - reported in the table, not raised
        if backend == "compile":
            row.check = "compile failed"
        else:
            row.check = "peer error" if row.kind in ("peer", "alternative") else "error"
        row.error = _one_line(error)
        return
    try:
        agrees = output_agrees(case, backend, out, expected)
    except Exception as error:  # noqa: BLE001 - an output of an unexpected form
        agrees, row.error = False, _one_line(error)
    del out
    if not agrees and row.kind in ("peer", "alternative"):
        row.check = "disagrees"  # flagged and not timed: its time would not be for the same result
        return
    row.check = "ok" if agrees else "MISMATCH"
    try:
        median, times = harness.time_fn(call, device, settings.warmup, settings.reps, settings.min_time)
        peak = harness.peak_memory(call, device)
        if device.type == "cuda":
            device_s, call_s, row.launches = harness.device_and_call_time(call, device)
            row.device_ms, row.call_ms = device_s * 1e3, call_s * 1e3
    except Exception as error:  # noqa: BLE001
        row.check = "peer error" if row.kind in ("peer", "alternative") else "error"
        row.error = _one_line(error)
        return
    _fill_figures(row, case, median, times, peak, copy_gbps)


def _fill_figures(row: Row, case: Case, median: float, times: list[float], peak: int | None, copy_gbps) -> None:
    row.median_ms, row.min_ms, row.reps = median * 1e3, min(times) * 1e3, len(times)
    row.p95_ms = harness.percentile(times, 95) * 1e3
    if case.flops:
        row.rate = case.flops / median / 1e9
    elif case.bytes:
        row.rate = case.bytes / median / 1e9
    if case.bytes and copy_gbps:
        row.pct_copy_bw = 100.0 * case.bytes / median / 1e9 / copy_gbps
    row.peak_mib = None if peak is None else peak / 2**20


def add_speedups(rows: list[Row]) -> None:
    """Fill x_eager and x_compile of one case's rows from its baseline rows,
    and ours_x of its non-kernel rows from its fastest kernel."""
    medians = {row.backend: row.median_ms for row in rows}
    best = best_kernel(rows)
    for row in rows:
        if row.median_ms:
            row.x_eager = _ratio(medians.get("eager"), row.median_ms)
            row.x_compile = _ratio(medians.get("compile"), row.median_ms)
            if row.kind != "kernel" and best is not None:
                row.ours_x = row.median_ms / best.median_ms


def best_kernel(rows: list[Row]) -> Row | None:
    """The fastest of a case's kernel rows that agreed with the reference."""
    timed = [row for row in rows if row.kind == "kernel" and row.median_ms and row.check == "ok"]
    return min(timed, key=lambda row: row.median_ms) if timed else None


def _ratio(baseline: float | None, value: float) -> float | None:
    return None if baseline is None else baseline / value


def run_case(
    case: Case,
    device: torch.device,
    settings: Settings,
    copy_gbps: float | None = None,
    with_compile: bool = True,
    on_backend: Callable[[Case, str], Callable[[Row], None]] | None = None,
    quick: bool = False,
) -> list[Row]:
    """Every backend of ``case``, then its alternatives that run here;
    ``on_backend(case, backend)`` is called before each measurement and the
    function it returns with the finished row. What the inputs and the
    reference print while being made (a baseline's construction: torch.ao's
    deprecation notices) goes to the first row's captured output."""
    with harness.captured_output() as captured:
        inputs, expected = prepare(case, device)
    rows = []
    names = backends_to_run(case, device, with_compile) + [alt.name for alt in alternatives_to_run(case, device, quick)]
    for backend in names:
        done = on_backend(case, backend) if on_backend else None
        rows.append(measure_backend(case, backend, inputs, expected, device, settings, copy_gbps))
        if captured.text and len(rows) == 1:
            rows[0].output = captured.text + rows[0].output
            rows[0].output_lines = len(rows[0].output.splitlines())
        if done:
            done(rows[-1])
    add_speedups(rows)
    return rows


def pytest_benchmark_case(benchmark, case: Case, backend: str, device: torch.device, warmup: int = 3) -> None:
    """Time ``case`` on ``backend`` with pytest-benchmark's ``benchmark`` fixture,
    after checking its output against the reference and ``warmup`` calls."""
    inputs, expected = prepare(case, device)
    call = make_call(case, backend, inputs)
    assert output_agrees(case, backend, call(), expected), f"{case.name}: {backend!r} disagrees with the reference"
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
