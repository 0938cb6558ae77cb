"""Where a benchmark case's time goes, kernel by kernel (torch.profiler).

    python -m eitp_kernels.bench.profile --device cuda --ops coherence_loss --cases "BT 4096x2048"
    python -m eitp_kernels.bench.profile --device cpu --ops histogram_entropy --cases "16M fp32" --backends cpp

For each selected case of the benchmark suite (``--cases``: substrings of
"<shape> <dtype>" as the table prints it) and backend (``--backends``: the
library's kernel backends, ``eager``, or an alternative's name as the table
prints it; default: the kernel backends that run on the device, then the
case's alternatives that are installed): ``--warmup`` untimed calls, then
``--calls`` calls under ``torch.profiler``. The table lists, per call, the
device kernels (CUDA: each kernel's own GPU time) or the operators (CPU:
their self CPU time) that took the most time, with their share of the
total. Written to ``<out>/profile-<device>.txt`` and ``.json``; the timings
themselves stay with ``eitp-bench`` (the profiler adds its own overhead).
``scripts/gpu_check.py`` runs it on the cases the GPU results left short, so
that one run on a lent GPU says which kernel to work on.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from typing import Any, Callable

import torch

from eitp_kernels.bench import cases, cli, report, runner

NAME_WIDTH = 80  # the kernel / operator column; the table fits report.WIDTH


def select_cases(ops: list[str] | None, patterns: list[str], device: torch.device, quick: bool) -> list[cases.Case]:
    """The suite's cases of ``ops`` whose "<shape> <dtype>" contains any of ``patterns`` (all when empty)."""
    found = cases.build_cases(ops, device, quick)
    return [c for c in found if not patterns or any(p in f"{c.shape} {c.dtype_label}" for p in patterns)]


def backends_for(case: cases.Case, device: torch.device, requested: list[str] | None) -> list[str]:
    """``requested`` (those the case knows), else its kernel backends and runnable alternatives."""
    known = cases.kernel_backends(case, device) + ["eager"] + [a.name for a in runner.alternatives_to_run(case, device)]
    if requested:
        return [b for b in requested if b in known]
    return [b for b in known if b != "eager"]


def _self_time_us(event: Any, on_device: bool) -> float:
    if on_device:  # torch >= 2.4 names it device time; older releases cuda time
        return float(getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0)))
    return float(event.self_cpu_time_total)


def _is_device_kernel(event: Any) -> bool:
    device_type = getattr(event, "device_type", None)
    return device_type is not None and device_type != torch.autograd.DeviceType.CPU


def profile_call(fn: Callable[[], Any], device: torch.device, warmup: int, calls: int, top: int) -> dict:
    """Per-call time of the ``top`` kernels (CUDA) or operators (CPU) of ``fn``."""
    for _ in range(warmup):
        fn()
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    synchronize()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        synchronize()
    on_device = device.type == "cuda"
    events = [e for e in prof.key_averages() if _is_device_kernel(e) == on_device]
    timed = sorted(((e.key, e.count / calls, _self_time_us(e, on_device) / calls) for e in events),
                   key=lambda item: -item[2])
    timed = [item for item in timed if item[2] > 0]
    total = sum(us for _, _, us in timed)
    return {"unit": "device kernel self time" if on_device else "operator self CPU time",
            "total_us": total,
            "entries": [{"name": name, "calls": count, "us": us, "share": us / total if total else 0.0}
                        for name, count, us in timed[:top]]}


def format_profile(case: cases.Case, backend: str, result: dict) -> str:
    head = (f"{case.op} {case.shape} {case.dtype_label}, {backend}: {result['total_us']:.1f} us per call "
            f"({result['unit']})")
    lines = textwrap.wrap(head, report.WIDTH)
    lines.append(f"  {'us':>10} {'share':>6} {'calls':>6}  name")
    for e in result["entries"]:
        name = e["name"] if len(e["name"]) <= NAME_WIDTH else e["name"][:NAME_WIDTH - 3] + "..."
        lines.append(f"  {e['us']:10.1f} {e['share']:6.1%} {e['calls']:6.1f}  {name}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eitp_kernels.bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ops", default=None, help="comma-separated ops (default: all)")
    parser.add_argument("--cases", default="", help="comma-separated substrings of '<shape> <dtype>' (default: all)")
    parser.add_argument("--backends", default=None, help="comma-separated backends (default: kernels + alternatives)")
    parser.add_argument("--quick", action="store_true", help="the suite's small sizes")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--top", type=int, default=12, help="rows per table")
    parser.add_argument("--out", default=cli.DEFAULT_OUT, help="folder for profile-<device>.{txt,json}")
    args = parser.parse_args(argv)
    if args.warmup < 0 or args.calls < 1 or args.top < 1:
        parser.error("--warmup must be >= 0, --calls and --top >= 1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    ops = args.ops.split(",") if args.ops else None
    selected = select_cases(ops, [p for p in args.cases.split(",") if p], device, args.quick)
    if not selected:
        parser.error(f"no case of {args.ops or 'any op'} matches --cases {args.cases!r}")
    requested = args.backends.split(",") if args.backends else None
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"profile-{device.type}")
    results = []
    with open(stem + ".txt", "w") as text:  # written as it goes: a run stopped by a time limit keeps its tables
        for case in selected:
            inputs = case.make_inputs(device)
            for backend in backends_for(case, device, requested):
                try:
                    result = profile_call(runner.make_call(case, backend, inputs), device, args.warmup, args.calls,
                                          args.top)
                except Exception as error:  # one failing backend must not hide the others' tables
                    result = {"error": f"{type(error).__name__}: {error}"}
                    block = f"{case.op} {case.shape} {case.dtype_label}, {backend}: {result['error']}"
                else:
                    block = format_profile(case, backend, result)
                print(block + "\n", flush=True)
                text.write(block + "\n\n")
                text.flush()
                results.append({"op": case.op, "case": case.shape, "dtype": case.dtype_label, "backend": backend,
                                **result})
    with open(stem + ".json", "w") as f:
        json.dump({"device": device.type, "command": " ".join(sys.argv), "profiles": results}, f, indent=1)
    print(f"profiles: {stem}.txt, {stem}.json")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
