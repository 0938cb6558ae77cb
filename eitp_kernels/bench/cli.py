"""``eitp-bench`` (also ``python -m eitp_kernels.bench``): every op over a few
sizes and dtypes on one device, printed as one table.

Header: the device, the versions, and the device's copy bandwidth measured in
the same run. Table, one row per (case, backend): median time, GB/s (GFLOP/s
for FLOP-bound ops), that bandwidth as a percentage of the copy bandwidth,
speed-up over the eager reference and over torch.compile of the reference,
peak memory of one call, and whether the output agrees with the reference.
Progress goes to stderr, the table to stdout, ``--json PATH`` writes both
header and rows for machines. Exit status 1 when a row is MISMATCH or error
("compile failed" only says torch.compile could not run here).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import platform
import sys
import time
from typing import Callable, Sequence

import torch

import eitp_kernels
from eitp_kernels.bench import harness, runner
from eitp_kernels.bench.cases import build_cases, load_suites
from eitp_kernels.bench.runner import Row

COLUMNS: tuple[tuple[str, Callable[[Row], str]], ...] = (
    ("op", lambda r: r.op),
    ("shape", lambda r: r.shape),
    ("dtype", lambda r: r.dtype),
    ("backend", lambda r: r.backend),
    ("median ms", lambda r: _number(r.median_ms, "{:.3f}")),
    ("GB/s|GFLOP/s", lambda r: _number(r.rate, "{:.1f} " + r.rate_unit)),
    ("% copy bw", lambda r: _number(r.pct_copy_bw, "{:.0f}%")),
    ("x eager", lambda r: _number(r.x_eager, "{:.2f}x")),
    ("x compile", lambda r: _number(r.x_compile, "{:.2f}x")),
    ("peak MiB", lambda r: _number(r.peak_mib, "{:.1f}", missing="n/a" if r.median_ms else "-")),
    ("check", lambda r: r.check),
)
LEFT_ALIGNED = {"op", "shape", "dtype", "backend", "check"}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    busy = _busy_cores() if args.device == "cpu" else None
    started = time.perf_counter()
    cases = build_cases(args.ops, device, args.quick)
    copy_gbps = harness.measure_copy_bandwidth(device, quick=args.quick)
    header = describe(device, copy_gbps, busy, args)
    print(format_header(header), flush=True)
    rows = _run(cases, device, copy_gbps, args)
    header["seconds"] = round(time.perf_counter() - started, 1)
    print(format_table(rows))
    _report_problems(rows)
    print(f"{len(rows)} rows in {header['seconds']:.1f} s", file=sys.stderr)
    if args.json:
        write_json(args.json, header, rows)
    return 1 if any(row.failed for row in rows) else 0


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="eitp-bench",
        description="Benchmark eitp_kernels' ops on one device against eager PyTorch and torch.compile.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes and few samples (CI smoke run)")
    parser.add_argument("--ops", type=_op_list, default=None, help="comma-separated ops (default: all)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu",
                        help="default: cuda if available, else cpu")
    parser.add_argument("--json", metavar="PATH", help="also write the header and rows as JSON to PATH")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile baseline")
    parser.add_argument("--threads", type=_positive_int, default=None, help="torch.set_num_threads(N) first")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    known = list(load_suites())
    unknown = [op for op in args.ops or () if op not in known]
    if unknown:
        parser.error(f"--ops: no benchmark suite for {', '.join(unknown)} (known: {', '.join(known)})")
    return args


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _op_list(text: str) -> list[str]:
    return [op.strip() for op in text.split(",") if op.strip()]


def _run(cases, device: torch.device, copy_gbps: float, args: argparse.Namespace) -> list[Row]:
    settings = runner.Settings.for_run(device, args.quick)
    total = sum(len(runner.backends_to_run(case, device, args.compile)) for case in cases)
    progress = Progress(total)
    rows: list[Row] = []
    for case in cases:
        rows += runner.run_case(case, device, settings, copy_gbps, args.compile, on_backend=progress.start)
    return rows


class Progress:
    """``[3/12] finite_minmax 16M fp32 cpp ... 1.234 ms`` lines on stderr."""

    def __init__(self, total: int, stream=None):
        self.total, self.count = total, 0
        self.stream = stream or sys.stderr

    def start(self, case, backend: str) -> Callable[[Row], None]:
        self.count += 1
        self.stream.write(f"[{self.count}/{self.total}] {case.name} {backend} ... ")
        self.stream.flush()
        return self.finish

    def finish(self, row: Row) -> None:
        parts = [] if row.median_ms is None else [f"{row.median_ms:.3f} ms"]
        if row.check != "ok":
            parts.append(f"({row.check})" if parts else row.check)
        self.stream.write(" ".join(parts) + "\n")
        self.stream.flush()


def describe(device: torch.device, copy_gbps: float, busy: float | None, args: argparse.Namespace) -> dict:
    """The run's header: device, versions, copy bandwidth, options."""
    return {
        "device": device.type,
        "device_name": _device_name(device),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "eitp_kernels": eitp_kernels.__version__,
        "python": platform.python_version(),
        "busy_cores_before": busy,  # CPU cores in use by anything in the 0.25 s before the run
        "copy_gbps": round(copy_gbps, 2),
        "copy_buffer_bytes": harness.COPY_BYTES[device.type],
        "quick": args.quick,
        "compile": args.compile,
        "backends": {name: str(status) for name, status in eitp_kernels.backends().items()},
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _busy_cores(interval: float = 0.25) -> float | None:
    """CPU cores kept busy by all processes over ``interval`` seconds (/proc/stat)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            ticks = [int(v) for v in stat.readline().split()[1:]]
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
        return sum(ticks[:8]), idle  # user..steal; guest time is already in user

    try:
        total0, idle0 = sample()
        time.sleep(interval)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return round((1 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1), 2)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def format_header(header: dict) -> str:
    cores = f"{header['cpu_cores']} CPU cores, {header['torch_threads']} torch threads"
    lines = [
        f"device   {header['device']}: {header['device_name']} ({cores})",
        f"versions torch {header['torch']}, triton {header['triton']}, eitp_kernels {header['eitp_kernels']}",
        f"copy     {header['copy_gbps']:.1f} GB/s (dst.copy_(src), {header['copy_buffer_bytes'] >> 20} MiB buffers,"
        " read + written bytes)",
        f"mode     {'quick' if header['quick'] else 'full'}"
        f"{'' if header['compile'] else ', no torch.compile baseline'}",
    ]
    busy = header["busy_cores_before"]
    if busy is not None:
        lines.append(f"busy     {busy:.1f} of {header['cpu_cores']} cores in use just before the run")
        if busy >= 0.5:
            lines.append("WARNING  other work is using the CPU: the threads of a parallel loop wait for each other's"
                         " time slices; time on an idle machine or with --threads 1")
    if header["quick"]:
        lines.append("note     quick inputs can sit in cache: % of copy bandwidth may pass 100%")
    return "\n".join(lines)


def format_table(rows: list[Row]) -> str:
    """The rows as an aligned text table, one header line."""
    cells = [[name for name, _ in COLUMNS]] + [[get(row) for _, get in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = []
    for line in cells:
        parts = [
            text.ljust(width) if name in LEFT_ALIGNED else text.rjust(width)
            for (name, _), text, width in zip(COLUMNS, line, widths)
        ]
        lines.append("  ".join(parts).rstrip())
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _number(value: float | None, fmt: str, missing: str = "-") -> str:
    return missing if value is None else fmt.format(value)


def _report_problems(rows: list[Row]) -> None:
    for row in rows:
        if row.error:
            print(f"{row.op} {row.shape} {row.dtype} {row.backend}: {row.check}: {row.error}", file=sys.stderr)


def write_json(path: str, header: dict, rows: list[Row]) -> None:
    """``{"header": {...}, "rows": [{column: value}, ...], "failed": bool}``."""
    document = {
        "header": header,
        "rows": [dataclasses.asdict(row) for row in rows],
        "failed": any(row.failed for row in rows),
    }
    with open(path, "w") as file:
        json.dump(document, file, indent=2)
        file.write("\n")
