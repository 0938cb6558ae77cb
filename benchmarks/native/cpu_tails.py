"""Steadiness of the CPU ops at 2 threads: per-call wall time, process CPU
time (all threads) and page faults, 60 calls per op in each of several fresh
processes, variants interleaved process by process (docs/design.md §3.4).

    .venv/bin/python benchmarks/native/cpu_tails.py --processes 3
    .venv/bin/python benchmarks/native/cpu_tails.py --variant main=/work/main --variant new=.

A variant is NAME=PATH (the tree whose eitp_kernels is imported; PATH:passive
also sets OMP_WAIT_POLICY=PASSIVE for it). Per op and variant the table gives
each process's median and p95 (ms), the target check (every process's p95 and
median within 1.5x of the best median of that variant), the largest p95 /
median of one process (steadiness within a process, which load changes
between processes do not enter), the process CPU time
per call over the wall time (2.0: both threads busy or spinning for the whole
call) and the minor page faults per call; the load average is printed with
each process.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SHAPE = (3000, 5000)
CALLS = 60


def _cases():
    import torch

    import eitp_kernels as ek

    g = torch.Generator().manual_seed(0)
    x = torch.randn(*SHAPE, generator=g)
    q, s, _ = ek.quantize_int8(x, granularity="channel")
    c = torch.randn(2048, 1024, generator=g)
    return {
        "fake_quant channel": lambda: ek.fake_quant_int8(x, granularity="channel"),
        "fake_quant tensor": lambda: ek.fake_quant_int8(x, granularity="tensor"),
        "quantize channel": lambda: ek.quantize_int8(x, granularity="channel"),
        "dequantize channel": lambda: ek.dequantize_int8(q, s, granularity="channel"),
        "histogram_entropy": lambda: ek.histogram_entropy(x),
        "finite_minmax": lambda: ek.finite_minmax(x),
        "coherence 2048x1024": lambda: ek.coherence_loss(c),
        "torch.mul (scale)": lambda: torch.mul(x, 1.5),
    }


def _child(threads: int) -> None:
    import resource

    import torch

    torch.set_num_threads(threads)
    out = {"load": os.getloadavg()[0], "ops": {}}
    for name, fn in _cases().items():
        for _ in range(3):
            fn()
        wall, cpu, faults = [], [], []
        for _ in range(CALLS):
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            c0, w0 = time.process_time(), time.perf_counter()
            fn()
            w1, c1 = time.perf_counter(), time.process_time()
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
            wall.append(w1 - w0)
            cpu.append(c1 - c0)
        out["ops"][name] = {"wall": wall, "cpu": cpu, "faults": faults}
    out["load_end"] = os.getloadavg()[0]
    print(json.dumps(out))


def _p95(v):
    s = sorted(v)
    return s[min(len(s) - 1, int(round(0.95 * (len(s) - 1))))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variant", action="append", default=[], help="NAME=PATH[:passive] (default: this tree)")
    parser.add_argument("--child", action="store_true")
    args = parser.parse_args()
    if args.child:
        _child(args.threads)
        return
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    variants = [v.split("=", 1) for v in args.variant] or [["this", here]]
    runs = {name: [] for name, _ in variants}
    for p in range(args.processes):
        for name, spec in variants:
            path, _, flag = spec.partition(":")
            env = dict(os.environ, PYTHONPATH=os.path.abspath(path))
            env.pop("OMP_WAIT_POLICY", None)
            if flag == "passive":
                env["OMP_WAIT_POLICY"] = "PASSIVE"
            res = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "--threads", str(args.threads)],
                                 env=env, capture_output=True, text=True, cwd="/")
            if res.returncode != 0:
                raise SystemExit(res.stderr)
            run = json.loads(res.stdout.strip().splitlines()[-1])
            runs[name].append(run)
            print(f"process {p + 1} {name}: load average {run['load']:.1f} -> {run['load_end']:.1f}", flush=True)
    ops = list(next(iter(runs.values()))[0]["ops"])
    print(f"\n{args.threads} threads, {CALLS} calls per process; ms: median/p95 per process; cpu/wall; faults/call")
    for op in ops:
        for name, rs in runs.items():
            meds = [statistics.median(r["ops"][op]["wall"]) * 1e3 for r in rs]
            p95s = [_p95(r["ops"][op]["wall"]) * 1e3 for r in rs]
            best = min(meds)
            ok = all(m <= 1.5 * best and q <= 1.5 * best for m, q in zip(meds, p95s))
            ratio = statistics.median([sum(r["ops"][op]["cpu"]) / sum(r["ops"][op]["wall"]) for r in rs])
            faults = statistics.median([statistics.median(r["ops"][op]["faults"]) for r in rs])
            cells = " ".join(f"{m:7.1f}/{q:7.1f}" for m, q in zip(meds, p95s))
            tail = max(q / m for m, q in zip(meds, p95s))
            print(f"{op:20s} {name:8s} {cells}  {'meets' if ok else 'MISSES'}  p95/median <= {tail:4.2f}  "
                  f"cpu/wall {ratio:4.2f}  faults {faults:6.0f}", flush=True)


if __name__ == "__main__":
    main()
