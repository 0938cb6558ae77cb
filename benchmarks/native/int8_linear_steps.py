"""Where Int8Linear's CPU int8 path spends its time, against torch.ao's quantize_dynamic.

    .venv/bin/python benchmarks/native/int8_linear_steps.py --threads 1

Per square layer (--sides) and row count (--rows): the whole layer's forward
(``layer``, matmul="auto") and quantize_dynamic's Linear on the same weight
(``qdyn``), then the layer's steps on their own: the activation quantization
(``quantize``), each exact product it can use with the weight scales applied
(``fbgemm``, ``oneDNN``, ``torch._int_mm``; ``eitp int8_linear_rows``, ours,
with the whole epilogue; the layer's choice marked *) and the others'
epilogue (``epilogue``: y * sx, + bias, in place). All interleaved (the
order reversed every other round), after warm-up; printed: the --percentile
of each one's times (us; a low percentile, as the machine may be shared) and
layer / qdyn per round pair (its median: > 1 means the layer is slower).
With one thread the times are the thread's CPU time (time.thread_time: what
other processes on a shared machine take is left out), else wall time
(--wall: wall time always).
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time
import warnings

import torch
from torch import nn

# This checkout's eitp_kernels (and its built extension), not the installed one: an editable
# install of another tree would otherwise be measured when run as a script from here.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", default="1,8,64,512")
    parser.add_argument("--sides", default="1024,4096")
    parser.add_argument("--repeats", type=int, default=100, help="rounds (fewer for the large products)")
    parser.add_argument("--percentile", type=float, default=10)
    parser.add_argument("--no-steps", action="store_true", help="only the layer and quantize_dynamic")
    parser.add_argument("--wall", action="store_true", help="wall time even with one thread")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from eitp_kernels import _fbgemm_int8, _int8_gemv, _onednn_int8
    from eitp_kernels import nn as enn
    from eitp_kernels.nn import int8
    from eitp_kernels.ops import quant

    wall = args.wall or args.threads > 1
    clock = time.perf_counter if wall else time.thread_time
    print(f"threads {args.threads}; {args.percentile:g}th percentiles of {'wall' if wall else 'thread CPU'} times (us); "
          "layer/qdyn: median of per-round ratios")
    for side in (int(v) for v in args.sides.split(",")):
        k = n = side
        torch.manual_seed(0)
        qat = enn.prepare_qat(nn.Sequential(nn.Linear(k, n)))
        layer = enn.load_int8(enn.export_int8(qat), lambda: nn.Sequential(nn.Linear(k, n)))[0]
        linear = nn.Linear(k, n)
        with torch.no_grad():
            linear.weight.copy_(layer.weight())
            linear.bias.copy_(layer.bias)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao's deprecation notices
            dynamic = torch.ao.quantization.quantize_dynamic(nn.Sequential(linear), {nn.Linear}, dtype=torch.qint8)
        w, scale = layer.weight_int8, layer.weight_scale
        fbgemm, onednn, own = _fbgemm_int8.PackedWeight(), _onednn_int8.PackedWeight(), _int8_gemv.PackedWeight()
        quantize_rows = quant._QUANTIZE_ROWS["cpp"]
        for m in (int(v) for v in args.rows.split(",")):
            x = torch.randn(m, k)
            qx, sx, _ = quantize_rows(x, None, None, True)
            sx = sx.unsqueeze(1)
            product = torch._int_mm(qx, w.t()).float() * scale
            chosen = int8.cpu_int8_product(m, k, n)
            calls = {"layer": lambda: layer(x), "qdyn": lambda: dynamic(x)}
            if not args.no_steps:
                calls["quantize"] = lambda: quantize_rows(x, None, None, True)
                if _int8_gemv.applies(k):
                    calls[int8.OWN] = lambda: _int8_gemv.product(qx, sx, own.of(w), scale, layer.bias)
                if _fbgemm_int8.applies(k):
                    calls[int8.FBGEMM] = lambda: _fbgemm_int8.product(qx, 0, fbgemm.of(w, scale))
                if _onednn_int8.applies(k):
                    calls[int8.ONEDNN] = lambda: _onednn_int8.product(qx, 0, onednn.of(w, scale))
                if m <= 64 or chosen == int8.INT_MM:  # it reorders the weight on every call: slow for many rows
                    calls[int8.INT_MM] = lambda: torch._int_mm(qx, w.t()).float().mul_(scale)
                calls["epilogue"] = lambda: product.mul_(sx).add_(layer.bias)
            rounds = max(5, min(args.repeats, int(args.repeats * 2**27 / (m * k * n))))
            times = {name: [] for name in calls}
            with torch.no_grad():
                for f in calls.values():
                    f(), f()
                for r in range(rounds):
                    for name in (calls if r % 2 == 0 else reversed(list(calls))):
                        t0 = clock()
                        calls[name]()
                        times[name].append(clock() - t0)
            ratio = statistics.median(a / b for a, b in zip(times["layer"], times["qdyn"]))
            low = {name: sorted(v)[int(len(v) * args.percentile / 100)] * 1e6 for name, v in times.items()}
            print(f"{side}x{side} m {m:4d}  layer/qdyn {ratio:5.2f}  " + "  ".join(
                f"{name}{'*' if name == chosen else ''} {v:.0f}" for name, v in low.items()), flush=True)


if __name__ == "__main__":
    main()
