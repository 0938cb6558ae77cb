"""int8 quantize / fake-quant / dequantize on every backend (cases: eitp_kernels/bench/suite_fake_quant_int8.py)."""
from eitp_kernels.bench.runner import pytest_benchmark_case

OP = "fake_quant_int8"


def test_fake_quant_int8(benchmark, bench_case, backend, bench_device):
    pytest_benchmark_case(benchmark, bench_case, backend, bench_device)
