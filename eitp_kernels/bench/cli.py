"""``eitp-bench`` (also ``python -m eitp_kernels.bench``): every op over a few
sizes and dtypes on one device, printed as one table and saved.

Printed (stdout, at most 120 columns): the header (device, versions, the copy
and read rates measured in the same run, the peer libraries timed or
missing), a legend, the table (per op a section line, per (case, backend) a
row: median time, GB/s or GFLOP/s, % of the copy rate, speed-ups, peak
memory, the check against the reference, a busy flag), the alternatives'
conventions, and a summary (targets met or missed with their ratios, ours
against each peer). Progress goes to stderr; what third-party code prints
(torch.compile's warnings and graph-break dumps, peer imports) is captured
into a log file instead. Files (``--out DIR``, default ``bench-results/``):
``<device>-<quick|full>[-<ops>].{txt,json,png,log}``: the printed text, the
JSON of header, rows and targets, the speed-up plot, the captured output.
Exit status 1 when a row is MISMATCH or error ("compile failed", and an
alternative that disagrees or raises, are flagged, not failures).
``--host`` prints only the host time per call of every op and backend on
tiny tensors against ``torch.histc`` (:mod:`eitp_kernels.bench.host`).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import io
import os
import platform
import sys
import time
from typing import Callable, Sequence

import torch

import eitp_kernels
from eitp_kernels.bench import harness, report, runner
from eitp_kernels.bench.cases import build_cases, load_suites
from eitp_kernels.bench.report import format_header, format_table
from eitp_kernels.bench.runner import Row

DEFAULT_OUT = "bench-results"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.host:
        from eitp_kernels.bench import host

        print(host.format_host(host.host_rows(device, rounds=5 if args.quick else 15), device), flush=True)
        return 0
    busy = _busy_cores() if args.device == "cpu" else None
    load = _loadavg()
    started = time.perf_counter()
    cases = build_cases(args.ops, device, args.quick)
    copy_gbps = harness.measure_copy_bandwidth(device, quick=args.quick)
    read_gbps = harness.measure_read_bandwidth(device, quick=args.quick)
    header = describe(device, copy_gbps, busy, args)
    header.update(read_gbps=round(read_gbps, 2), loadavg_before=load,
                  alternatives=report.peer_status(cases, device, args.quick))
    text = io.StringIO()

    def emit(block: str) -> None:
        if block:
            print(block, flush=True)
            text.write(block + "\n")

    emit(format_header(header))
    emit(report.format_legend())
    rows = _run(cases, device, copy_gbps, args)
    header["seconds"] = round(time.perf_counter() - started, 1)
    header["loadavg_after"] = _loadavg()
    emit(format_table(rows))
    emit(report.format_notes(cases, rows))
    _report_problems(rows)
    targets = report.check_targets(cases, rows, copy_gbps)
    files = _output_files(args, rows)
    emit(report.format_summary(targets, rows, args.quick, list(files.values()), header["seconds"]))
    _write_files(files, header, rows, targets, text.getvalue())
    return 1 if any(row.failed for row in rows) else 0


def _output_files(args: argparse.Namespace, rows: Sequence[Row] | None = None) -> dict[str, str]:
    """kind -> path of the files this run writes (none with --no-save, except
    --json). Given the rows: without a speed-up to plot or captured output to
    log, no plot or log, and an earlier run's one at that path is removed."""
    files = {}
    if args.save:
        stem = f"{args.device}-{'quick' if args.quick else 'full'}"
        if args.ops:
            stem += "-" + "+".join(args.ops)
        for kind in ("txt", "json", "png", "log"):
            files[kind] = os.path.join(args.out, f"{stem}.{kind}")
    if args.json:
        files["json"] = args.json
    if rows is not None:
        for kind, needed in (("png", any(row.ours_x for row in rows)), ("log", any(row.output for row in rows))):
            if not needed and kind in files:
                stale = files.pop(kind)
                if os.path.exists(stale):
                    os.remove(stale)
    return files


def _write_files(files: dict[str, str], header: dict, rows: list[Row], targets, text: str) -> None:
    for path in files.values():
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if "json" in files:
        report.write_json(files["json"], header, rows, targets)
    if "txt" in files:
        with open(files["txt"], "w") as file:
            file.write(text)
    title = (f"eitp-bench {'--quick ' if header['quick'] else ''}on {header['device']}: {header['device_name']}, "
             f"{header['torch_threads']} threads, {time.strftime('%Y-%m-%d %H:%M', time.localtime())}")
    if "png" in files:
        report.plot_speedups(files["png"], rows, title)
    if "log" in files:
        report.write_output_log(files["log"], rows)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="eitp-bench",
        description="Benchmark eitp_kernels' ops on one device against eager PyTorch and torch.compile.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes and few samples (CI smoke run)")
    parser.add_argument("--ops", type=_op_list, default=None, help="comma-separated ops (default: all)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu",
                        help="default: cuda if available, else cpu")
    parser.add_argument("--out", metavar="DIR", default=DEFAULT_OUT,
                        help=f"directory of the result files (default: {DEFAULT_OUT}/)")
    parser.add_argument("--no-save", dest="save", action="store_false", help="write no result files")
    parser.add_argument("--json", metavar="PATH", help="write the JSON here instead of in --out")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile baseline")
    parser.add_argument("--threads", type=_positive_int, default=None, help="torch.set_num_threads(N) first")
    parser.add_argument("--host", action="store_true",
                        help="only the host time per call of each op and backend on tiny tensors, against torch.histc "
                             "(on a machine without a GPU the Triton launches are taken over: host path alone)")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
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
    total = sum(len(runner.backends_to_run(case, device, args.compile))
                + len(runner.alternatives_to_run(case, device, args.quick)) for case in cases)
    progress = Progress(total)
    rows: list[Row] = []
    for case in cases:
        rows += runner.run_case(case, device, settings, copy_gbps, args.compile, on_backend=progress.start,
                                quick=args.quick)
    return rows


class Progress:
    """``[3/12 0:42] finite_minmax 16M fp32 cpp ... 1.234 ms`` lines on stderr
    (the elapsed minutes:seconds since the first row)."""

    def __init__(self, total: int, stream=None):
        self.total, self.count = total, 0
        self.stream = stream or sys.stderr
        self.started = time.perf_counter()

    def start(self, case, backend: str) -> Callable[[Row], None]:
        self.count += 1
        elapsed = int(time.perf_counter() - self.started)
        self.stream.write(f"[{self.count}/{self.total} {elapsed // 60}:{elapsed % 60:02d}] {case.name} {backend} ... ")
        self.stream.flush()
        return self.finish

    def finish(self, row: Row) -> None:
        parts = [] if row.median_ms is None else [f"{row.median_ms:.3f} ms"]
        if row.check != "ok":
            parts.append(f"({row.check})" if parts else row.check)
        if row.busy:
            parts.append(f"[busy: {row.others_busy:.1f} cores]")
        self.stream.write(" ".join(parts) + "\n")
        self.stream.flush()


def describe(device: torch.device, copy_gbps: float, busy: float | None, args: argparse.Namespace) -> dict:
    """The run's header: device, versions, copy bandwidth, options."""
    return {
        "device": device.type,
        "device_name": _device_name(device),
        "gpu": _gpu_properties(device),
        "platform": platform.platform(),
        "memory_gib": _memory_gib(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["eitp-bench"] + list(args.argv)),
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


def _memory_gib() -> float | None:
    """The machine's total memory (/proc/meminfo), or None."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gpu_properties(device: torch.device) -> dict | None:
    """A CUDA device's compute capability, multiprocessor count and memory
    (grid sizes are judged against the multiprocessors); None on a CPU."""
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    return {"capability": f"sm_{props.major}{props.minor}", "multiprocessors": props.multi_processor_count,
            "memory_mib": props.total_memory >> 20}


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


def _loadavg() -> str | None:
    """The 1, 5 and 15 minute load averages (/proc/loadavg), or None."""
    try:
        with open("/proc/loadavg") as file:
            return " ".join(file.read().split()[:3])
    except OSError:
        return None


def _report_problems(rows: list[Row]) -> None:
    for row in rows:
        if row.error:
            print(f"{row.op} {row.shape} {row.dtype} {row.backend}: {row.check}: {row.error}", file=sys.stderr)
