"""EIT-P regularizer cost per training step, fused vs reference backends (cases: eitp_kernels/bench/suite_eitp_regularizer.py)."""
from eitp_kernels.bench.runner import pytest_benchmark_case

OP = "eitp_regularizer"


def test_eitp_regularizer(benchmark, bench_case, backend, bench_device):
    pytest_benchmark_case(benchmark, bench_case, backend, bench_device)
