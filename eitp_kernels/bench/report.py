"""What ``eitp-bench`` prints and writes: header, legend, table, notes,
summary (targets met or missed), the JSON document and the speed-up plot.

Everything printed fits :data:`WIDTH` columns.
"""
from __future__ import annotations

import dataclasses
import json
import textwrap
from typing import Callable, Sequence

from eitp_kernels.bench import peers, runner
from eitp_kernels.bench.cases import Case
from eitp_kernels.bench.runner import Row

WIDTH = 120
INDENT = 9  # header / legend labels are 8 characters and a space


def _ms(value: float) -> str:
    if value >= 1000:
        return f"{value:.0f}"
    if value >= 100:
        return f"{value:.1f}"
    return f"{value:.2f}" if value >= 10 else f"{value:.3f}"


def _times(value: float) -> str:
    return f"{value:.1f}x" if value >= 10 else f"{value:.2f}x"


def _opt(value: float | None, fmt: Callable[[float], str], missing: str = "") -> str:
    return missing if value is None else fmt(value)


COLUMNS: tuple[tuple[str, Callable[[Row], str]], ...] = (
    ("backend", lambda r: r.backend),
    ("ms", lambda r: _opt(r.median_ms, _ms, "-")),
    ("p95", lambda r: _opt(r.p95_ms, _ms)),
    ("dev ms", lambda r: _opt(r.device_ms, _ms)),
    ("call ms", lambda r: _opt(r.call_ms, _ms)),
    ("launch", lambda r: _opt(r.launches, lambda v: f"{v:.0f}" if v == round(v) else f"{v:.1f}")),
    ("rate", lambda r: _opt(r.rate, lambda v: f"{v:.1f}")),
    ("% copy", lambda r: _opt(r.pct_copy_bw, lambda v: f"{v:.0f}%")),
    ("x eager", lambda r: _opt(r.x_eager, _times)),
    ("x comp", lambda r: _opt(r.x_compile, _times)),
    ("ours x", lambda r: _opt(r.ours_x, _times)),
    ("MiB", lambda r: _opt(r.peak_mib, lambda v: f"{v:.1f}", "n/a" if r.median_ms else "")),
    ("check", lambda r: r.check),
    ("busy", lambda r: f"{r.others_busy:.1f}!" if r.busy else ""),
)
LEFT_ALIGNED = {"case", "backend", "check"}
# Columns left out of a table where no row has a value (the GPU-only ones on a CPU run).
OPTIONAL = {"dev ms", "call ms", "launch"}

LEGEND = """\
case     shape and dtype; "BT": Barlow Twins, two inputs x and y (coherence_loss(x, y, offdiag_weight=0.005,
         squared=True)); fwd+bwd: the loss and its gradient(s); each op's section line names its rate unit
backend  cpp / cuda / triton: this library's kernels; eager: eitp_kernels.reference in eager PyTorch; compile:
         torch.compile of that reference; any other name: another library or formulation (see "alternatives")
ms       median time of one call after warm-up (CPU: perf_counter; CUDA: events, L2 flushed before each call);
         p95: the 95th percentile of the same samples
dev ms   (GPU) the device's own time per call: the kernels, copies and fills torch.profiler records, summed (no host
         time); call ms: wall time per call of back-to-back calls, one sync at the end (what a training loop sees:
         above dev ms when the host is the bottleneck); launch: device launches per call
rate     GB/s of the op's minimum memory traffic (inputs read once, outputs written once; the same bytes for every
         backend), or GFLOP/s of the standard product count where the section says so
% copy   that GB/s as a percentage of the header's copy rate. It passes 100% when the data sits in the cache
         (--quick sizes, small cases), and for ops that mostly read: a copy's stores first read each destination
         line (read-for-ownership), bytes the copy rate does not count, so a pure read can beat it (by up to 1.5x
         when memory-bound); the header's read rate (src.sum()) is the ceiling for those
x eager  eager's median / this row's (higher: faster); x comp: the same against torch.compile
ours x   this row's median / the fastest of this library's kernels on the case (higher: ours is faster)
MiB      peak memory allocated by one call and live at once (outputs included, inputs not); n/a: unknown
         (allocations outside torch's allocator, e.g. numpy's)
check    ok: the output agrees with the reference; MISMATCH, error: a kernel or baseline is wrong (run fails);
         disagrees, peer error: an alternative computed something else or raised (not timed; flagged only)
busy     cores other processes kept busy while the row ran, shown when >= 0.5: do not quote that row"""


def wrap(label: str, text: str, width: int = WIDTH) -> list[str]:
    """``label`` padded to 8 characters (or more for a longer one), then
    ``text`` wrapped under itself, every line within ``width``."""
    indent = max(INDENT, len(label) + 1)
    lines = textwrap.wrap(text, width - indent, break_on_hyphens=False) or [""]
    return [f"{label:<{indent - 1}} {lines[0]}"] + [" " * indent + line for line in lines[1:]]


# --------------------------------------------------------------------------
# header
# --------------------------------------------------------------------------


def peer_status(cases: Sequence[Case], device, quick: bool) -> dict[str, list[str]]:
    """Alternatives of the selected cases by status: "run" (peers timed),
    "other" (other formulations timed), "missing" (not installed: what to
    install), "quick" (left out of --quick), "device" (not for this device)."""
    status: dict[str, list[str]] = {"run": [], "other": [], "missing": [], "quick": [], "device": []}
    for case in cases:
        for alt in case.alternatives:
            state = runner.alt_status(alt, device, quick)
            label = peers.missing_label(alt) if state == "missing" else peers.package_label(alt)
            if state == "run" and not alt.is_peer:
                state = "other"
            if label not in status[state]:
                status[state].append(label)
    return status


def format_header(header: dict) -> str:
    cores = f"{header['cpu_cores']} CPU cores, {header['torch_threads']} torch threads"
    gpu = header.get("gpu")
    if gpu:
        cores = (f"{gpu['capability']}, {gpu['multiprocessors']} multiprocessors, {gpu['memory_mib']} MiB; "
                 + cores)
    lines = wrap("device", f"{header['device']}: {header['device_name']} ({cores})")
    lines += wrap("versions", f"torch {header['torch']}, triton {header['triton']}, "
                              f"eitp_kernels {header['eitp_kernels']}, python {header['python']}")
    lines += wrap("memory", f"copy {header['copy_gbps']:.1f} GB/s (dst.copy_(src), read + written bytes), "
                            f"read {header['read_gbps']:.1f} GB/s (src.sum()), "
                            f"{header['copy_buffer_bytes'] >> 20} MiB buffers, measured at the start")
    if header.get("command"):
        lines += wrap("command", f"{header['command']}  ({header.get('started', '')})")
    mode = "quick (small sizes, few samples; targets apply to the full sizes)" if header["quick"] else "full"
    lines += wrap("mode", mode + ("" if header["compile"] else "; no torch.compile baseline"))
    busy = header.get("busy_cores_before")
    load = header.get("loadavg_before")
    if busy is not None or load is not None:
        text = []
        if busy is not None:
            text.append(f"{busy:.1f} of {header['cpu_cores']} cores in use just before the run")
        if load is not None:
            text.append(f"load average {load}")
        lines += wrap("busy", "; ".join(text))
        if busy is not None and busy >= runner.BUSY_CORES:
            lines += wrap("WARNING", "other work is using the CPU: the threads of a parallel loop wait for each "
                                     "other's time slices (and OpenMP's spinning waits take the cores from the "
                                     "working thread); time on an idle machine, with --threads 1, or with "
                                     "OMP_WAIT_POLICY=PASSIVE set before Python starts")
    status = header.get("alternatives", {})
    if status.get("run"):
        lines += wrap("peers", "other libraries timed beside ours: " + ", ".join(status["run"]))
    if status.get("other"):
        lines += wrap("also", "other formulations timed: " + ", ".join(status["other"]))
    if status.get("missing"):
        lines += wrap("missing", "not installed, so not compared: " + ", ".join(status["missing"])
                      + " (pip install 'eitp-kernels[peers]')")
    if status.get("quick"):
        lines += wrap("skipped", "slow to import, left out of --quick: " + ", ".join(status["quick"]))
    return "\n".join(lines)


def format_legend() -> str:
    return "\n".join(["legend"] + [" " * 2 + line for line in LEGEND.splitlines()])


# --------------------------------------------------------------------------
# table
# --------------------------------------------------------------------------


CASE_WIDTH = 26  # a longer case label gets a line of its own above its rows


def format_table(rows: Sequence[Row], width: int = WIDTH) -> str:
    """One section line per op (with its rate unit), then one line per row;
    the case (shape and dtype) is named on its first row, or on a line of its
    own when it is longer than :data:`CASE_WIDTH` or when the rows would not
    fit ``width`` otherwise (a GPU run's extra columns)."""
    table = _format_table(rows, width, CASE_WIDTH)
    if max(map(len, table.splitlines())) > width:
        table = _format_table(rows, width, 0)
    return table


def _format_table(rows: Sequence[Row], width: int, case_width: int) -> str:
    lines_spec = []  # ("section", text) | ("label", text) | ("row", cells)
    previous_case = previous_op = None
    for row in rows:
        if row.op != previous_op:
            rated = any(r.rate is not None for r in rows if r.op == row.op)
            unit = f"rate in {row.rate_unit}" if rated else "no rate: no byte count"
            lines_spec.append(("section", f"== {row.op}  ({unit})"))
            previous_op, previous_case = row.op, None
        case = f"{row.shape} {row.dtype}"
        label = case if case != previous_case else ""
        if len(label) > case_width:
            lines_spec.append(("label", label))
            label = ""
        lines_spec.append(("row", [label] + [get(row) for _, get in COLUMNS]))
        previous_case = case
    names = ["case"] + [name for name, _ in COLUMNS]
    cells = [spec for kind, spec in lines_spec if kind == "row"]
    keep = [i for i, name in enumerate(names) if name not in OPTIONAL or any(c[i] for c in cells)]
    names = [names[i] for i in keep]
    cells = [[c[i] for i in keep] for c in cells]
    lines_spec = [(kind, [spec[i] for i in keep] if kind == "row" else spec) for kind, spec in lines_spec]
    widths = [max([len(names[i])] + [len(c[i]) for c in cells]) for i in range(len(names))]
    gap = 2 if sum(widths) + 2 * (len(widths) - 1) <= width else 1

    def line(parts: list[str]) -> str:
        out = [text.ljust(w) if name in LEFT_ALIGNED else text.rjust(w) for name, text, w in zip(names, parts, widths)]
        return (" " * gap).join(out).rstrip()

    head = line(names)
    lines = [head, "-" * len(head)]
    for kind, spec in lines_spec:
        lines.append(line(spec) if kind == "row" else spec)
    return "\n".join(lines)


def format_notes(cases: Sequence[Case], rows: Sequence[Row]) -> str:
    """The alternatives that ran: what each runs and its stated conventions."""
    ran = {(row.op, row.shape, row.backend) for row in rows if row.kind in ("peer", "alternative")}
    seen, lines = set(), []
    for case in cases:
        for alt in case.alternatives:
            if (case.op, case.shape, alt.name) not in ran or alt.name in seen:
                continue
            seen.add(alt.name)
            text = f"{alt.name}: {alt.description}"
            if alt.convention:
                text += f". Convention: {alt.convention}"
            lines += wrap("", text)
    compiled = {(row.op, row.shape) for row in rows if row.backend == "compile" and row.check == "ok"}
    for case in cases:
        if case.compile_convention and (case.op, case.shape) in compiled and ("compile", case.op) not in seen:
            seen.add(("compile", case.op))
            lines += wrap("", f"compile ({case.op}): torch.compile of the reference. Convention: "
                              f"{case.compile_convention}")
    if not lines:
        return ""
    return "\n".join(["alternatives (checked against the reference like ours, allowing only the stated conventions)"]
                     + lines)


# --------------------------------------------------------------------------
# targets and summary
# --------------------------------------------------------------------------


@dataclasses.dataclass
class TargetResult:
    case: str
    goal: str
    value: float | None  # the measured ratio (None: not measured)
    met: bool | None
    detail: str  # "cpp 6.02 ms vs torch.histc 63.7 ms" or why not measured

    def line(self) -> str:
        if self.met is None:
            return f"{'n/a':<6} {self.case}: {self.goal}: {self.detail}"
        verdict = "met" if self.met else "MISSED"
        shown = f"{self.value:.0%}" if "peak" in self.goal else f"{self.value:.2f}x"
        return f"{verdict:<6} {self.case}: {self.goal}: {shown} ({self.detail})"


def check_targets(cases: Sequence[Case], rows: Sequence[Row], copy_gbps: float | None) -> list[TargetResult]:
    by_case: dict[tuple[str, str, str], list[Row]] = {}
    for row in rows:
        by_case.setdefault((row.op, row.shape, row.dtype), []).append(row)
    results = []
    for case in cases:
        case_rows = by_case.get((case.op, case.shape, case.dtype_label))
        if not case.targets or case_rows is None:
            continue
        ours = runner.best_kernel(case_rows)
        others = {row.backend: row for row in case_rows}
        for target in case.targets:
            results.append(_check_target(case, target, ours, others.get(target.against), copy_gbps))
    return results


def _check_target(case: Case, target, ours: Row | None, other: Row | None, copy_gbps) -> TargetResult:
    name, goal = f"{case.op} {case.shape} {case.dtype_label}", target.describe()
    if target.source:
        goal += f" [{target.source}]"
    if ours is None:
        return TargetResult(name, goal, None, None, "no kernel timed")
    if target.metric == "copy":
        if not copy_gbps:
            return TargetResult(name, goal, None, None, "no copy rate")
        copy_ms = target.copy_bytes / copy_gbps / 1e6
        value = ours.median_ms / copy_ms
        return TargetResult(name, goal, value, value <= target.ratio,
                            f"{ours.backend} {_ms(ours.median_ms)} ms vs copy {_ms(copy_ms)} ms")
    if other is None or other.median_ms is None:
        why = "not run" if other is None else other.check
        return TargetResult(name, goal, None, None, f"{target.against} {why}")
    if target.metric == "memory":
        if ours.peak_mib is None or not other.peak_mib:
            return TargetResult(name, goal, None, None, "peak memory unknown")
        value = ours.peak_mib / other.peak_mib
        return TargetResult(name, goal, value, value <= target.ratio,
                            f"{ours.backend} {ours.peak_mib:.1f} MiB vs {other.peak_mib:.1f} MiB")
    value = other.median_ms / ours.median_ms
    return TargetResult(name, goal, value, value >= target.ratio,
                        f"{ours.backend} {_ms(ours.median_ms)} ms vs {_ms(other.median_ms)} ms")


def peer_comparison(rows: Sequence[Row]) -> list[str]:
    """One line per case with peers: our best kernel against each peer."""
    lines, by_case = [], {}
    for row in rows:
        by_case.setdefault((row.op, row.shape, row.dtype), []).append(row)
    for (op, shape, dtype), case_rows in by_case.items():
        timed = [row for row in case_rows if row.kind == "peer" or (row.kind == "alternative" and row.ours_x)]
        if not timed:
            continue
        ours = runner.best_kernel(case_rows)
        parts = [f"{row.backend} {_times(row.ours_x)}" if row.ours_x else f"{row.backend} {row.check}"
                 for row in timed]
        lines += wrap("  ", f"{op} {shape} {dtype}, their median / {ours.backend if ours else 'ours'}'s: "
                          + ", ".join(parts))
    return lines


def format_summary(targets: Sequence[TargetResult], rows: Sequence[Row], quick: bool, files: Sequence[str],
                   seconds: float) -> str:
    lines = ["summary"]
    if targets:
        met = sum(1 for t in targets if t.met)
        missed = sum(1 for t in targets if t.met is False)
        lines.append(f"  targets: {met} met, {missed} missed, {len(targets) - met - missed} not measured")
        for result in targets:
            lines += ["    " + part for part in textwrap.wrap(result.line(), WIDTH - 4, subsequent_indent="  ")]
    elif quick:
        lines.append("  targets: defined for the full sizes; run without --quick to check them")
    comparison = peer_comparison(rows)
    if comparison:
        lines.append("  ours against the alternatives (> 1: our fastest kernel is faster):")
        lines += comparison
    failed = [row for row in rows if row.failed]
    flagged = [row for row in rows if row.check in ("disagrees", "peer error")]
    busy = [row for row in rows if row.busy]
    for label, chosen in (("FAILED", failed), ("flagged", flagged)):
        if chosen:
            names = "; ".join(f"{r.op} {r.shape} {r.dtype} {r.backend}: {r.check}"
                              + (f" ({r.error})" if r.error else "") for r in chosen)
            lines += wrap(f"  {label}", f"{len(chosen)} row(s): {names}")
    if busy:
        text = (f"{len(busy)} of {len(rows)} rows were timed while other processes kept >= {runner.BUSY_CORES} cores "
                "busy (busy column): re-run those on an idle machine before quoting them")
        if len(busy) <= 5:
            text += ": " + "; ".join(f"{r.op} {r.shape} {r.dtype} {r.backend}" for r in busy)
        lines += wrap("  busy", text)
    noisy = [row for row in rows if row.output_lines]
    if noisy:
        by_backend: dict[str, int] = {}
        for row in noisy:
            key = "torch.compile" if row.backend == "compile" else row.backend
            by_backend[key] = by_backend.get(key, 0) + row.output_lines
        log = next((f for f in files if f.endswith(".log")), None)
        parts = ", ".join(f"{name} {count}" for name, count in by_backend.items())
        lines += wrap("  output", f"third-party output kept out of the table: {_lines(sum(by_backend.values()))} "
                                  f"({parts})" + (f"; full text in {log}" if log else ""))
    if files:
        lines += wrap("  files", _files_label(files))
    lines.append(f"  {len(rows)} rows in {seconds:.1f} s")
    return "\n".join(lines)


def _lines(count: int) -> str:
    return f"{count} line" if count == 1 else f"{count} lines"


def _files_label(files: Sequence[str]) -> str:
    """``dir/stem.{txt,json,png}`` when the files share a stem, else a list."""
    stems = {f.rsplit(".", 1)[0] for f in files}
    if len(stems) == 1 and all("." in f for f in files):
        return f"{stems.pop()}.{{{','.join(f.rsplit('.', 1)[1] for f in files)}}}"
    return ", ".join(files)


# --------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------


def write_json(path: str, header: dict, rows: Sequence[Row], targets: Sequence[TargetResult] = ()) -> None:
    """``{"header": {...}, "rows": [{column: value}, ...], "targets": [...], "failed": bool}``."""
    document = {
        "header": header,
        "rows": [{k: v for k, v in dataclasses.asdict(row).items() if k != "output"} for row in rows],
        "targets": [dataclasses.asdict(result) for result in targets],
        "failed": any(row.failed for row in rows),
    }
    with open(path, "w") as file:
        json.dump(document, file, indent=2)
        file.write("\n")


def write_output_log(path: str, rows: Sequence[Row]) -> bool:
    """What third-party code printed, row by row; False when nothing was."""
    noisy = [row for row in rows if row.output]
    if not noisy:
        return False
    with open(path, "w") as file:
        for row in noisy:
            file.write(f"===== {row.op} {row.shape} {row.dtype} {row.backend} ({_lines(row.output_lines)})\n")
            file.write(row.output if row.output.endswith("\n") else row.output + "\n")
    return True


def plot_speedups(path: str, rows: Sequence[Row], title: str = "") -> bool:
    """One horizontal bar chart: per case, our fastest kernel's speed-up over
    each baseline and alternative (log scale; 1x marked). False without
    matplotlib or without any timed speed-up."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    bars = []  # (case label, against, speed-up)
    by_case: dict[tuple[str, str, str], list[Row]] = {}
    for row in rows:
        by_case.setdefault((row.op, row.shape, row.dtype), []).append(row)
    for (op, shape, dtype), case_rows in by_case.items():
        for row in case_rows:
            if row.kind != "kernel" and row.ours_x:
                bars.append((f"{op} {shape} {dtype}", row.backend, row.ours_x))
    if not bars:
        return False
    against = sorted({b[1] for b in bars}, key=lambda name: (name not in runner.BASELINES, name))
    colors = {name: plt.get_cmap("tab20")(i % 20) for i, name in enumerate(against)}
    fig, ax = plt.subplots(figsize=(11, max(3.0, 0.22 * len(bars) + 1.5)))
    labels, y = [], 0
    previous = None
    for case, name, value in bars:
        if case != previous and previous is not None:
            y += 0.6
        ax.barh(y, value, color=colors[name], label=name)
        ax.text(value * 1.04, y, _times(value), va="center", fontsize=6)
        labels.append((y, case if case != previous else ""))
        previous = case
        y += 1
    ax.set_yticks([pos for pos, _ in labels], [text for _, text in labels], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("speed-up of the fastest eitp_kernels backend (their median / ours; log scale, > 1: ours faster)")
    handles, names = ax.get_legend_handles_labels()
    unique = dict(zip(names, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=7, loc="lower right")
    ax.set_xlim(left=min(0.5, min(b[2] for b in bars) / 1.5), right=max(2.0, max(b[2] for b in bars) * 1.5))
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
