"""save_compressed's time and file size, zstd level 19 (the former default) against the
default coder parameters, in one process on one model: a 4.2M-parameter MLP (17 MB of
fp32: Linear(1024, 2048), ReLU, Linear(2048, 1024)) pruned to sparsity 0.5.

    python benchmarks/save_compressed_speed.py [repeats]

Prints the median time of each (the model's weights restored before every save) and the
file sizes.
"""
import os
import statistics
import sys
import tempfile
import time

import torch
from torch import nn

from eitp_kernels.training import save_compressed


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(1024, 2048), nn.ReLU(), nn.Linear(2048, 1024))


def _time_save(model, state, path, **kwargs):
    times = []
    for _ in range(REPEATS):
        model.load_state_dict(state)
        start = time.perf_counter()
        report = save_compressed(model, path, sparsity=0.5, **kwargs)
        times.append(time.perf_counter() - start)
    return statistics.median(times), report


if __name__ == "__main__":
    REPEATS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    model = _model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    print(f"parameters: {sum(p.numel() for p in model.parameters())}, fp32 bytes: "
          f"{sum(p.numel() * p.element_size() for p in model.parameters())}")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.eitpz")
        rows = [("level=19", *_time_save(model, state, path, level=19)),
                ("default", *_time_save(model, state, path))]
    for label, seconds, report in rows:
        print(f"{label:>9}: {seconds:.3f} s  {report.compressed_bytes} bytes  sparsity {report.sparsity:.4f}  "
              f"achieved {report.achieved_bits:.3f} bits/param")
    print(f"speed-up {rows[0][1] / rows[1][1]:.1f}x, size default/level19 "
          f"{rows[1][2].compressed_bytes / rows[0][2].compressed_bytes:.4f} (medians of {REPEATS})")
