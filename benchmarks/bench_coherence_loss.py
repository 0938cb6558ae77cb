"""coherence_loss forward and forward+backward on every backend (cases: eitp_kernels/bench/suite_coherence_loss.py)."""
from eitp_kernels.bench.runner import pytest_benchmark_case

OP = "coherence_loss"


def test_coherence_loss(benchmark, bench_case, backend, bench_device):
    pytest_benchmark_case(benchmark, bench_case, backend, bench_device)
