"""Int8Linear's GPU kernels (eitp_kernels/triton/int8_linear.py) through the
static SASS cost model (eitp_kernels.bench.cost_model), at 4096 x 4096: the
weight-only kernel at 1 and 16 rows, the rescale at 64 rows. No GPU needed.

    .venv/bin/python benchmarks/native/int8_linear_cost_model.py [--cc 90 86]

Prints the model's block per kernel and target (hot loop, instructions per
element against the memory-bound budget, the bytes / issue / latency bounds,
and any rule the kernel breaks). For the weight-only kernel an element is one
int8 code (1 byte; the activations it also loads stay in L1/L2, so the
"elem/iter" column counts them too and understates instructions per code).
"""
from __future__ import annotations

import argparse

import torch


def record(calls, cc):
    """[(call name, Launch, grid)] of each distinct specialisation, nothing run."""
    from eitp_kernels import _triton, _triton_aot

    seen, current = {}, [""]

    def observer(kernel, grid, args, meta):
        launch = _triton_aot.bind(kernel, args, meta, cc, current[0])
        seen.setdefault(launch.key, (current[0], launch, grid))
        return True

    _triton.launch_observers.append(observer)
    try:
        for name, thunk in calls:
            current[0] = name
            thunk()
    finally:
        _triton.launch_observers.remove(observer)
    return list(seen.values())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cc", type=int, nargs="+", default=[90, 86])
    args = parser.parse_args()
    from eitp_kernels.bench import cost_model
    from eitp_kernels.triton import int8_linear

    k = n = 4096
    codes = torch.empty(n, k, dtype=torch.int8)
    calls = [(f"weight-only m={m}", lambda m=m: int8_linear.int8_weight_only_linear(
        torch.empty(m, k), codes, torch.ones(n), torch.zeros(n))) for m in (1, 16)]
    calls.append(("rescale m=64", lambda: int8_linear.int8_linear_rescale(
        torch.empty(64, n, dtype=torch.int32), torch.ones(64), torch.ones(n), torch.zeros(n), None, None,
        torch.float32)))
    for cc in args.cc:
        for origin, launch, grid in record(calls, cc):
            result = cost_model.compile_sass(launch, cc)
            if "error" in result:
                print(f"[{origin}] sm_{cc}: {result['error']}")
                continue
            code = next(iter(cost_model.parse_sass(result["sass"]).values()))
            report = cost_model.KernelReport(
                "triton", launch.describe(), origin, cc, result["registers"], result["shared"],
                32 * result["num_warps"], 1 if origin.startswith("weight") else 4, cost_model.hot_loops(code),
                base=launch.kernel)
            print(f"[{origin}] grid {grid}")
            print(report.describe(), flush=True)


if __name__ == "__main__":
    main()
