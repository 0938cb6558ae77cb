"""finite_minmax on every backend (cases: eitp_kernels/bench/suite_finite_minmax.py)."""
from eitp_kernels.bench.runner import pytest_benchmark_case

OP = "finite_minmax"


def test_finite_minmax(benchmark, bench_case, backend, bench_device):
    pytest_benchmark_case(benchmark, bench_case, backend, bench_device)
