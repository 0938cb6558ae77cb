"""Int8Linear's int8 path against fp32 nn.Linear and quantize_dynamic (cases: eitp_kernels/bench/suite_int8_linear.py)."""
from eitp_kernels.bench.runner import pytest_benchmark_case

OP = "int8_linear"


def test_int8_linear(benchmark, bench_case, backend, bench_device):
    pytest_benchmark_case(benchmark, bench_case, backend, bench_device)
