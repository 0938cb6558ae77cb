"""Barlow Twins on the CPU: coherence_loss against lightly's BarlowTwinsLoss and
the plain formula, interleaved in one process (issue 16, item 1).

    .venv/bin/python benchmarks/native/barlow_twins_ab.py --threads 2
    .venv/bin/python benchmarks/native/barlow_twins_ab.py --threads 1 --cpu-time --shapes 2048x1024

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
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def plain(a, b, lam):
    bn = torch.nn.functional.batch_norm
    c = bn(a, None, None, training=True).T @ bn(b, None, None, training=True) / a.shape[0]
    diag = torch.diagonal(c)
    return (diag - 1).pow(2).sum() + lam * (c.pow(2).sum() - diag.pow(2).sum())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", default="2048x1024,4096x2048,512x2048", help="NxD,... (D' = D)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--cpu-time", action="store_true", help="time.thread_time instead of perf_counter")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from lightly.loss import BarlowTwinsLoss

    from eitp_kernels import coherence_loss, use_backend

    lam = 0.0051
    clock = time.thread_time if args.cpu_time else time.perf_counter
    lightly_loss = BarlowTwinsLoss(lambda_param=lam)

    def ours(a, b):
        with use_backend("cpp"):
            return coherence_loss(a, b, diag_weight=1.0, offdiag_weight=lam, squared=True)

    fns = {"ours": ours, "lightly": lightly_loss, "plain": lambda a, b: plain(a, b, lam)}
    print(f"threads {args.threads}, {'thread CPU' if args.cpu_time else 'wall'} time, medians of {args.repeats}")
    for shape in args.shapes.split(","):
        n, d = (int(v) for v in shape.split("x"))
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, d, generator=g)
        y = x + 0.5 * torch.randn(n, d, generator=g)
        for mode in ("fwd", "fwd+bwd"):
            xs, ys = x.clone().requires_grad_(mode != "fwd"), y.clone().requires_grad_(mode != "fwd")
            values = {k: f(xs, ys).item() for k, f in fns.items()}
            ref = values["lightly"]
            assert all(abs(v - ref) <= 1e-4 * abs(ref) for v in values.values()), values

            def run(f):
                if mode == "fwd":
                    with torch.no_grad():
                        f(xs, ys)
                else:
                    xs.grad = ys.grad = None
                    f(xs, ys).backward()

            for f in fns.values():
                run(f)
            fns_and_floor = dict(fns, products=None)
            times = {k: [] for k in fns_and_floor}
            p = torch.randn(d, d, generator=g)

            def products():
                torch.mm(x.t(), y)
                if mode != "fwd":
                    torch.mm(y, p.t())
                    torch.mm(x, p)

            for r in range(args.repeats):
                for k in list(fns_and_floor) if r % 2 == 0 else list(fns_and_floor)[::-1]:
                    t0 = clock()
                    products() if k == "products" else run(fns[k])
                    times[k].append(clock() - t0)
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            paired = {k: statistics.median(a / b for a, b in zip(times[k], times["ours"])) for k in ("lightly", "plain")}
            print(f"{shape:>10} {mode:8s} ours {med['ours']:8.2f} ms  lightly {med['lightly']:8.2f}  "
                  f"plain {med['plain']:8.2f}  products {med['products']:8.2f}   lightly/ours {paired['lightly']:.3f}  "
                  f"plain/ours {paired['plain']:.3f}  ours/products {med['ours'] / med['products']:.3f}", flush=True)


if __name__ == "__main__":
    main()
