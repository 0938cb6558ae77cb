"""histogram_entropy on every backend (cases: eitp_kernels/bench/suite_histogram_entropy.py)."""
from eitp_kernels.bench.runner import pytest_benchmark_case

OP = "histogram_entropy"


def test_histogram_entropy(benchmark, bench_case, backend, bench_device):
    pytest_benchmark_case(benchmark, bench_case, backend, bench_device)
