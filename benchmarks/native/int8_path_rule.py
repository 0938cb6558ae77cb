"""The figures behind Int8Linear's CPU rule (eitp_kernels.nn.int8_matmul_supported):
the whole layer's forward on its int8 path against its dequantized path (the
cached fp32 weight: F.linear), per weight shape and row count.

    .venv/bin/python benchmarks/native/int8_path_rule.py --threads 2

Prints, per (k x n, m), the 10th percentile of each path's times (us, --repeats calls,
interleaved, after warm-up; a low percentile, as the machine may be shared) and
their ratio; int8 wins where the ratio is < 1.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", default="64x512,256x256,512x512,768x768,1024x1024,2048x2048")
    parser.add_argument("--rows", default="1,8,17,64")
    parser.add_argument("--repeats", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from eitp_kernels import nn as enn

    print(f"threads {args.threads}; 10th percentiles of {args.repeats} (us): int8 path, dequantized path, int8 / dequantized")
    for shape in args.shapes.split(","):
        k, n = (int(v) for v in shape.split("x"))
        torch.manual_seed(0)
        qat = enn.prepare_qat(nn.Sequential(nn.Linear(k, n)))
        layers = {matmul: enn.load_int8(enn.export_int8(qat), lambda: nn.Sequential(nn.Linear(k, n)))[0]
                  for matmul in ("int8", "dequantize")}
        for matmul, layer in layers.items():
            layer.matmul = matmul
        for m in (int(v) for v in args.rows.split(",")):
            x = torch.randn(m, k)
            times = {name: [] for name in layers}
            with torch.no_grad():
                for layer in layers.values():
                    layer(x), layer(x)
                for r in range(args.repeats):
                    for name in (layers if r % 2 == 0 else reversed(list(layers))):
                        t0 = time.perf_counter()
                        layers[name](x)
                        times[name].append(time.perf_counter() - t0)
            med = {name: sorted(v)[len(v) // 10] * 1e6 for name, v in times.items()}
            print(f"{k:5d} x {n:5d}  m {m:4d}  int8 {med['int8']:9.1f}  dequantized {med['dequantize']:9.1f}  "
                  f"ratio {med['int8'] / med['dequantize']:5.2f}", flush=True)


if __name__ == "__main__":
    main()
