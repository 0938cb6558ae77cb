"""Barlow Twins on the CPU: coherence_loss against lightly's BarlowTwinsLoss and
the plain formula, interleaved in one process or each alone (--solo).

    .venv/bin/python benchmarks/native/barlow_twins_ab.py --threads 2
    .venv/bin/python benchmarks/native/barlow_twins_ab.py --threads 1 --cpu-time --shapes 2048x1024
    .venv/bin/python benchmarks/native/barlow_twins_ab.py --threads 2 --solo --shapes 2048x1024,4096x2048
    .venv/bin/python benchmarks/native/barlow_twins_ab.py --threads 1 --cpu-time --solo --baseline ../before

--baseline DIR (with --solo) adds "before": ours as built in another checkout
DIR (its eitp_kernels, with its compiled extension), timed in the same rounds,
so a change is measured against the tree before it in one run.

Each repeat times ours, lightly and the plain formula back to back (order
reversed every other repeat), so a busy spell hits all three; the table gives
the medians and the median of the per-repeat ratios ("paired"). Wall time by
default; --cpu-time takes the calling thread's CPU time instead (meaningful
with --threads 1 only), which varies far less on a shared machine. Inputs:
x ~ N(0, 1) (N, D) and y = x + N(0, 0.25) (two views), fp32, lambda = 0.0051,
squared loss; lightly normalizes with batch_norm (biased variance, eps 1e-5)
and divides by N, the same convention, and the three values are checked to
agree (rel 1e-4) before timing.

Where the floor is: every implementation makes one N x D x D' product
forward and two backward (Zy S^T and Zx S); MKL runs them at its peak (about
160 GFLOP/s per core on the AVX-512 dev VM), so their time is a floor no
fusion moves. The "products" column times exactly those products (plain
torch.mm, same shapes), and "ours/products" says how close ours is to it:
what is left is our statistics pass over x and y, the correction of P, one
row and one column pass over P and one affine pass per gradient (the CPU
raw-product path, docs/design.md §2.2), page faults of the outputs, and the
Python and autograd glue. lightly pays the same products plus its batch-norm
passes, D x D' temporaries and their backward, so the ratio lightly/ours is
bounded by lightly/products.

--solo times each implementation alone, in a process of its own (a fresh
heap; `eitp-bench` also times each backend's repeats back to back, though
all in one process), one process per implementation and round, the order
rotated each round; the table gives the medians of the rounds' medians.
Interleaving shares one heap between the implementations, which changes
which allocations come as fresh (kernel-zeroed) pages. lightly's time moves
most, between the modes and between runs (benchmarks/RESULTS.md, "the
Barlow Twins ceiling").
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch


def plain(a, b, lam):
    bn = torch.nn.functional.batch_norm
    c = bn(a, None, None, training=True).T @ bn(b, None, None, training=True) / a.shape[0]
    diag = torch.diagonal(c)
    return (diag - 1).pow(2).sum() + lam * (c.pow(2).sum() - diag.pow(2).sum())


LAMBDA = 0.0051
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def inputs(n: int, d: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    return x, x + 0.5 * torch.randn(n, d, generator=g), torch.randn(d, d, generator=g)


def implementations():
    """name -> loss(a, b): ours (the cpp backend), lightly's, the plain formula."""
    from lightly.loss import BarlowTwinsLoss

    from eitp_kernels import coherence_loss, use_backend

    def ours(a, b):
        with use_backend("cpp"):
            return coherence_loss(a, b, diag_weight=1.0, offdiag_weight=LAMBDA, squared=True)

    return {"ours": ours, "lightly": BarlowTwinsLoss(lambda_param=LAMBDA), "plain": lambda a, b: plain(a, b, LAMBDA)}


def step(name: str, fns, mode: str, x, y, p):
    """One call of implementation ``name`` (or the bare "products") in ``mode``."""
    if name == "products":
        def run():
            torch.mm(x.t(), y)
            if mode != "fwd":
                torch.mm(y, p.t())
                torch.mm(x, p)
        return run
    xs, ys = x.clone().requires_grad_(mode != "fwd"), y.clone().requires_grad_(mode != "fwd")

    def run():
        if mode == "fwd":
            with torch.no_grad():
                fns[name](xs, ys)
        else:
            xs.grad = ys.grad = None
            fns[name](xs, ys).backward()
    return run


def check_agreement(fns, x, y):
    values = {k: f(x, y).item() for k, f in fns.items()}
    ref = values["lightly"]
    assert all(abs(v - ref) <= 1e-4 * abs(ref) for v in values.values()), values


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", default="2048x1024,4096x2048,512x2048", help="NxD,... (D' = D)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--cpu-time", action="store_true", help="time.thread_time instead of perf_counter")
    parser.add_argument("--solo", action="store_true", help="each implementation alone in its own process")
    parser.add_argument("--rounds", type=int, default=3, help="--solo: processes per implementation")
    parser.add_argument("--baseline", help="--solo: a checkout whose eitp_kernels is timed as 'before'")
    parser.add_argument("--worker", nargs=3, metavar=("NAME", "SHAPE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.cpu_time else time.perf_counter
    if args.worker:
        return worker(args, clock)
    if args.solo:
        return solo(args)
    fns = implementations()
    print(f"threads {args.threads}, {'thread CPU' if args.cpu_time else 'wall'} time, medians of {args.repeats}")
    for shape in args.shapes.split(","):
        n, d = (int(v) for v in shape.split("x"))
        x, y, p = inputs(n, d)
        check_agreement(fns, x, y)
        for mode in ("fwd", "fwd+bwd"):
            names = list(fns) + ["products"]
            runs = {k: step(k, fns, mode, x, y, p) for k in names}
            for run in runs.values():
                run()
            times = {k: [] for k in names}
            for r in range(args.repeats):
                for k in names if r % 2 == 0 else names[::-1]:
                    t0 = clock()
                    runs[k]()
                    times[k].append(clock() - t0)
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            paired = {k: statistics.median(a / b for a, b in zip(times[k], times["ours"])) for k in ("lightly", "plain")}
            report(shape, mode, med, paired)


def report(shape, mode, med, ratio):
    print(f"{shape:>10} {mode:8s} ours {med['ours']:9.3f} ms  lightly {med['lightly']:9.3f}  "
          f"plain {med['plain']:9.3f}  products {med['products']:9.3f}   lightly/ours {ratio['lightly']:.3f}  "
          f"plain/ours {ratio['plain']:.3f}  ours/products {med['ours'] / med['products']:.3f}", flush=True)


def worker(args, clock):
    """--solo's child: warm up, then print the repeats' times (s) as JSON."""
    name, shape, mode = args.worker
    n, d = (int(v) for v in shape.split("x"))
    x, y, p = inputs(n, d)
    fns = implementations()
    if name != "products":
        check_agreement({k: fns[k] for k in {name, "lightly"}}, x, y)
    run = step(name, fns, mode, x, y, p)
    for _ in range(3):
        run()
    times = []
    for _ in range(args.repeats):
        t0 = clock()
        run()
        times.append(clock() - t0)
    print(json.dumps(times))


def solo(args):
    names = ["ours"] + (["before"] if args.baseline else []) + ["lightly", "plain", "products"]
    print(f"threads {args.threads}, {'thread CPU' if args.cpu_time else 'wall'} time, each alone in its process: "
          f"medians of {args.rounds} processes' medians of {args.repeats}")
    for shape in args.shapes.split(","):
        for mode in ("fwd", "fwd+bwd"):
            medians = {k: [] for k in names}
            for r in range(args.rounds):
                for k in names[r % len(names):] + names[:r % len(names)]:
                    cmd = [sys.executable, __file__, "--worker", "ours" if k == "before" else k, shape, mode,
                           "--threads", str(args.threads), "--repeats", str(args.repeats)] + \
                        (["--cpu-time"] if args.cpu_time else [])
                    tree = args.baseline if k == "before" else ROOT
                    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
                    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=tree).stdout
                    medians[k].append(statistics.median(json.loads(out.splitlines()[-1])))
            med = {k: statistics.median(v) * 1e3 for k, v in medians.items()}
            report(shape, mode, med, {k: med[k] / med["ours"] for k in ("lightly", "plain")})
            if args.baseline:
                print(f"{'':>10} {mode:8s} before {med['before']:9.3f} ms  before/ours {med['before'] / med['ours']:.3f}"
                      f"  lightly/before {med['lightly'] / med['before']:.3f}  plain/before "
                      f"{med['plain'] / med['before']:.3f}", flush=True)


if __name__ == "__main__":
    main()
