"""Int8Linear's CPU int8 product: oneDNN's u8 x s8 kernel (eitp_kernels._onednn_int8)
against torch._int_mm, and the whole layer against torch.ao's quantize_dynamic.

    .venv/bin/python benchmarks/native/int8_matmul_ab.py --threads 2

Per row count m: the (m, k) x (k, n) product of random int8 codes both ways
(checked bit-equal first), then Int8Linear's forward on float inputs (int8
path) and quantize_dynamic's Linear on the same weight; medians of --repeats
calls after warm-up, interleaved.
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", default="1,7,64,512")
    parser.add_argument("--features", type=int, default=4096, help="k = n")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from eitp_kernels import _onednn_int8
    from eitp_kernels import nn as enn

    k = n = args.features
    g = torch.Generator().manual_seed(0)
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    qat = enn.prepare_qat(torch.nn.Sequential(torch.nn.Linear(k, n)))
    layer = enn.load_int8(enn.export_int8(qat), lambda: torch.nn.Sequential(torch.nn.Linear(k, n)))[0]
    linear = torch.nn.Linear(k, n)
    with torch.no_grad():
        linear.weight.copy_(layer.weight())
        linear.bias.copy_(layer.bias)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        dynamic = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(linear), {torch.nn.Linear},
                                                         dtype=torch.qint8)
    packed = _onednn_int8.PackedWeight()
    print(f"threads {args.threads}, k = n = {k}, medians of {args.repeats} (ms); oneDNN probe: "
          f"{_onednn_int8.available()}")
    for m in (int(v) for v in args.rows.split(",")):
        qx = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=g)
        x = torch.randn(m, k, generator=g)
        calls = {
            "onednn": lambda: _onednn_int8.product(qx, 0, packed.of(w)),
            "int_mm": lambda: torch._int_mm(qx, w.t()).to(torch.float32),
            "Int8Linear": lambda: layer(x),
            "quantize_dynamic": lambda: dynamic(x),
        }
        assert torch.equal(calls["onednn"](), calls["int_mm"]())
        times = {name: [] for name in calls}
        with torch.no_grad():
            for f in calls.values():
                f(), f()
            for r in range(args.repeats):
                for name in calls if r % 2 == 0 else reversed(list(calls)):
                    t0 = time.perf_counter()
                    calls[name]()
                    times[name].append(time.perf_counter() - t0)
        med = {name: statistics.median(v) * 1e3 for name, v in times.items()}
        print(f"m {m:5d}  product: onednn {med['onednn']:8.3f}  int_mm {med['int_mm']:8.3f}   layer: Int8Linear "
              f"{med['Int8Linear']:8.3f}  quantize_dynamic {med['quantize_dynamic']:8.3f}  "
              f"(Int8Linear's product: {enn.int8.cpu_int8_product(m, k, n)})", flush=True)


if __name__ == "__main__":
    main()
