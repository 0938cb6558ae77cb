"""Every coherence path on the CPU against the others, in one run: the evidence
behind eitp_kernels.ops.coherence.plan (GRAM, BLOCKS, PRODUCT; docs/design.md §2.2).

    .venv/bin/python benchmarks/native/coherence_paths.py --threads 1 --cpu-time

Each case runs torch.ops.eitp.coherence_forward (and, for fwd+bwd, its
coherence_backward) with the path forced, every path back to back per repeat
(order reversed every other repeat); the table gives the medians and which
path the planner picks. BLOCKS has no backward of its own (the planner never
takes a gradient through it), so fwd+bwd compares GRAM and PRODUCT. Inputs:
x ~ N(0, 1), y = 0.8 x + 0.6 N(0, 1) (two views), fp32, the Barlow Twins
weights (lambda = 0.0051, squared).

``--grid``: forward + backward only, self and cross, N in {128, 256, 512}
by D in {256, 512, 1024} (D' = D): the crossover of the planner's rule with
a gradient (the EIT-P regularizer's layers: self 256 x 512); ``--grid-fwd``:
the same cases forward alone too.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from eitp_kernels.ops import coherence

NAMES = {coherence.GRAM: "GRAM", coherence.BLOCKS: "BLOCKS", coherence.PRODUCT: "PRODUCT"}
# (label, N, D, cross)
CASES = [("self 2048x1024", 2048, 1024, False), ("self 512x4096", 512, 4096, False),
         ("BT 2048x1024", 2048, 1024, True), ("BT 512x2048", 512, 2048, True), ("BT 4096x2048", 4096, 2048, True)]
GRID = [(f"{'cross' if cross else 'self'} {n}x{d}", n, d, cross)
        for cross in (False, True) for n in (128, 256, 512) for d in (256, 512, 1024)]


def run(x, y, path, backward):
    out = torch.ops.eitp.coherence_forward(x, y, 1.0, 0.0051, True, 1e-5, path)
    if backward:
        torch.ops.eitp.coherence_backward(torch.ones(()), out[0], x, y, *out[1:], 1.0, 0.0051, True, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cpu-time", action="store_true", help="time.thread_time instead of perf_counter")
    parser.add_argument("--cases", default=",".join(c[0] for c in CASES))
    parser.add_argument("--grid", action="store_true", help="the fwd+bwd grid of the module docstring instead")
    parser.add_argument("--grid-fwd", action="store_true", help="the grid, forward alone too")
    args = parser.parse_args()
    args.grid = args.grid or args.grid_fwd
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.cpu_time else time.perf_counter
    cases = GRID if args.grid else [c for c in CASES if c[0] in set(args.cases.split(","))]
    print(f"threads {args.threads}, {'thread CPU' if args.cpu_time else 'wall'} time, medians of {args.repeats}")
    for label, n, d, cross in cases:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, d, generator=g)
        y = 0.8 * x + 0.6 * torch.randn(n, d, generator=g) if cross else None
        for backward in (False, True) if args.grid_fwd else (True,) if args.grid else (False, True):
            paths = [coherence.GRAM, coherence.PRODUCT] + ([] if backward else [coherence.BLOCKS])
            times = {p: [] for p in paths}
            for p in paths:
                run(x, y, p, backward)
            for r in range(args.repeats):
                for p in paths if r % 2 == 0 else paths[::-1]:
                    t0 = clock()
                    run(x, y, p, backward)
                    times[p].append(clock() - t0)
            med = {p: statistics.median(v) * 1e3 for p, v in times.items()}
            planned = coherence.plan(n, d, d if cross else None, "cpu", backward)
            best = min(med, key=med.get)
            cells = "  ".join(f"{NAMES[p]} {med[p]:9.2f} ms" for p in paths)
            print(f"{label:15s} {'fwd+bwd' if backward else 'fwd':8s} {cells}   planner {NAMES[planned]}"
                  f"{'' if planned == best else f' (fastest {NAMES[best]}, {med[planned] / med[best]:.2f}x)'}",
                  flush=True)


if __name__ == "__main__":
    main()
