"""Rules the C++ extension owns, and what the Python side relies on them for:
the histogram bin limit."""
import os
import subprocess
import sys

import pytest
import torch

import eitp_kernels
from eitp_kernels.ops.entropy import MAX_BINS

from conftest import cpu_backends

# --------------------------------------------------------------------------
# histogram bins: at most MAX_BINS, the number of csrc/kernels/entropy.h
# --------------------------------------------------------------------------


def test_compiled_ops_take_exactly_max_bins():
    # No rows: the (0, bins) outputs cost nothing, so the limit itself is tried.
    x, lo, hi = torch.empty(0, 3), torch.empty(0), torch.empty(0)
    assert torch.ops.eitp.histogram_counts(x, lo, hi, MAX_BINS, False).shape == (0, MAX_BINS)
    assert torch.ops.eitp.soft_histogram(x, lo, hi, MAX_BINS, False).shape == (0, MAX_BINS)
    message = rf"bins must be in \[1, {MAX_BINS}\], got {MAX_BINS + 1}"
    with pytest.raises(ValueError, match=message):
        torch.ops.eitp.histogram_counts(x, lo, hi, MAX_BINS + 1, False)
    with pytest.raises(ValueError, match=message):
        torch.ops.eitp.soft_histogram(x, lo, hi, MAX_BINS + 1, False)
    with pytest.raises(ValueError, match=message):
        torch.ops.eitp.histogram_counts_many([torch.randn(3)], MAX_BINS + 1, None)


@pytest.mark.parametrize("backend", cpu_backends())
def test_every_backend_rejects_more_than_max_bins(backend):
    message = f"bins must be <= {MAX_BINS}, got {MAX_BINS + 1}"
    with eitp_kernels.use_backend(backend):
        with pytest.raises(ValueError, match=message):
            eitp_kernels.histogram_entropy(torch.randn(10), bins=MAX_BINS + 1)
        with pytest.raises(ValueError, match=message):
            eitp_kernels.histogram_entropy(torch.randn(10, requires_grad=True), bins=MAX_BINS + 1,
                                           differentiable=True)
        with pytest.raises(ValueError, match=message):
            eitp_kernels.histogram_entropy_many([torch.randn(10)], bins=MAX_BINS + 1)


def test_the_limit_holds_without_the_extension():
    code = ("import torch, eitp_kernels\n"
            "print('extension loaded:', eitp_kernels._extension.load()[0])\n"
            "try:\n"
            "    eitp_kernels.histogram_entropy(torch.randn(10), bins=(1 << 24) + 1)\n"
            "except ValueError as e:\n"
            "    print(e)\n")
    env = dict(os.environ, EITP_NO_EXTENSION="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert "extension loaded: False" in out
    assert f"bins must be <= {MAX_BINS}" in out
