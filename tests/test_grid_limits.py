"""Launch grids within CUDA's limits for huge inputs, checked on the CPU.

CUDA allows gridDim.x < 2^31 and gridDim.y, gridDim.z <= 65535. The Triton
launchers are driven with meta tensors of up to 2^31 elements (nothing is
allocated) while an observer takes over every launch and records its grid;
the CUDA launchers' block counts go through csrc/kernels/grid.h, checked here
with g++.
"""
import os
import shutil
import subprocess

import pytest
import torch

pytest.importorskip("triton")

from eitp_kernels import _triton  # noqa: E402
from eitp_kernels.triton import coherence, entropy, finite_minmax, quant  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIG = 2**31
# (rows, row length) of 2^31 elements: one row, many rows of medium length, more than 65535 rows, tiny rows
HUGE_SHAPES = [(1, BIG), (2**11, 2**20), (2**17, 2**14), (2**24, 2**7), (2**30, 2)]
LAUNCHERS = {
    "finite_minmax": lambda x, lo, hi: finite_minmax.finite_minmax(x),
    "counts bins=256": lambda x, lo, hi: entropy.histogram_counts(x, lo, hi, 256, False),
    "counts bins=8192": lambda x, lo, hi: entropy.histogram_counts(x, lo, hi, 8192, True),
    "soft": lambda x, lo, hi: entropy.soft_histogram(x, lo, hi, 64, False),
    "soft backward": lambda x, lo, hi: entropy.soft_histogram_backward(
        torch.empty(x.shape[0], 64, dtype=torch.float64, device="meta"), x, lo, hi, 64, False),
    "quant dynamic": lambda x, lo, hi: quant.quantize_int8_rows(x, None, None, False),
    "quant static": lambda x, lo, hi: quant.fake_quant_int8_rows(
        x, torch.ones(x.shape[0], device="meta"), None, True),
    "dequant": lambda x, lo, hi: quant.dequantize_int8_rows(
        torch.empty(x.shape, dtype=torch.int8, device="meta"), torch.ones(x.shape[0], device="meta"), None,
        torch.float32),
    "quant backward": lambda x, lo, hi: quant.fake_quant_int8_rows_backward(
        x, x, torch.ones(x.shape[0], device="meta"), None, True),
    "many": lambda x, lo, hi: entropy.histogram_counts_many([x.reshape(-1), x[:1].reshape(-1)], 256, None),
}


@pytest.fixture
def grids():
    recorded = []

    def observer(kernel, grid, args, meta):
        recorded.append((getattr(kernel, "__name__", str(kernel)), grid))
        return True  # nothing runs

    _triton.launch_observers.append(observer)
    try:
        yield recorded
    finally:
        _triton.launch_observers.remove(observer)


def _assert_within_limits(recorded):
    assert recorded, "no launch was recorded"
    for name, grid in recorded:
        grid = tuple(grid) + (1,) * (3 - len(grid))
        assert 1 <= grid[0] <= _triton.MAX_GRID[0], (name, grid)
        assert grid[1] <= 65535 and grid[2] <= 65535, (name, grid)


@pytest.mark.parametrize("shape", HUGE_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_triton_launch_grids_fit_cuda_limits(grids, launcher, shape):
    x = torch.empty(shape, dtype=torch.float16, device="meta")
    lo = torch.zeros(shape[0], device="meta")
    hi = torch.ones(shape[0], device="meta")
    LAUNCHERS[launcher](x, lo, hi)
    _assert_within_limits(grids)


@pytest.mark.parametrize("n, d, dp", [(2**19, 2**12, 0), (2**16, 2**15, 2**15), (2**26, 32, 64)])
def test_triton_coherence_grids_fit_cuda_limits(grids, n, d, dp):
    forward = coherence.coherence_forward
    backward = coherence.coherence_backward
    x = torch.empty((n, d), device="meta")
    y = torch.empty((n, dp), device="meta") if dp else None
    for path in (coherence.GRAM, coherence.PRODUCT):
        out = forward(x, y, 1.0, 1.0, False, 1e-5, path)
        backward(torch.ones((), device="meta"), out[0], x, y, *out[1:], 1.0, 1.0, False, path)
    _assert_within_limits(grids)


def test_launch_refuses_a_grid_past_the_limits():
    with pytest.raises(ValueError, match="axis 1"):
        _triton.check_grid("k", (1, 65536))
    with pytest.raises(ValueError, match="axis 0"):
        _triton.check_grid("k", (2**31,))
    assert _triton.check_grid("k", (2**31 - 1, 65535, 65535)) == (2**31 - 1, 65535, 65535)


GRID_PROGRAM = r"""
#include <cstdio>
#include "kernels/grid.h"
int main() {
  std::printf("%u %u %u\n", eitp::grid_x(1, "t"), eitp::grid_x(2147483647LL, "t"), eitp::grid_yz(65535, "t"));
  const long long bad[][2] = {{2147483648LL, 0}, {65536, 1}, {-1, 0}};
  for (const auto& b : bad) {
    try {
      if (b[1]) eitp::grid_yz(b[0], "launcher"); else eitp::grid_x(b[0], "launcher");
      std::printf("accepted %lld\n", b[0]);
    } catch (const std::invalid_argument& e) {
      std::printf("refused: %s\n", e.what());
    }
  }
}
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found")
def test_cuda_grid_checks(tmp_path):
    (tmp_path / "grid.cpp").write_text(GRID_PROGRAM)
    build = subprocess.run(["g++", "-std=c++17", "-Wall", "-Werror", "-I", os.path.join(ROOT, "csrc"),
                            str(tmp_path / "grid.cpp"), "-o", str(tmp_path / "grid")], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    lines = subprocess.run([str(tmp_path / "grid")], capture_output=True, text=True, check=True).stdout.splitlines()
    assert lines[0] == "1 2147483647 65535"
    assert lines[1:] == [
        "refused: launcher: 2147483648 blocks on grid axis x, CUDA allows at most 2147483647 (the input is too large "
        "for one launch)",
        "refused: launcher: 65536 blocks on grid axis y, CUDA allows at most 65535 (the input is too large for one "
        "launch)",
        "refused: launcher: -1 blocks on grid axis x, CUDA allows at most 2147483647 (the input is too large for one "
        "launch)",
    ]


def test_cuda_launchers_cast_no_unchecked_block_count():
    # Every launch's block count goes through grid_x/grid_yz (or is clamped for a grid-stride loop).
    import re

    for name in sorted(os.listdir(os.path.join(ROOT, "csrc", "cuda"))):
        text = open(os.path.join(ROOT, "csrc", "cuda", name)).read()
        for match in re.finditer(r"<<<\s*([^,]+),", text):
            grid = match.group(1).strip()
            assert "static_cast<unsigned>" not in grid, (name, grid)
        for match in re.finditer(r"dim3 grid\(([^;]*)\);", text):
            assert "static_cast<unsigned>" not in match.group(1), (name, match.group(1))
