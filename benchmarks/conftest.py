"""pytest-benchmark suites of eitp_kernels: one ``bench_<op>.py`` per op.

The cases (shapes, dtypes, the reference from ``eitp_kernels.reference``)
come from the op's suite in ``eitp_kernels/bench/suite_<op>.py``, the same
ones ``eitp-bench`` runs; each test is parametrized over those cases and over
the backends: the library's available kernels for the device, ``eager`` (the
reference), ``compile`` (torch.compile of the reference) and the case's
alternatives that are installed (peer libraries such as fast-histogram or
lightly, other formulations). Every test checks its output against the
reference (an alternative's through its stated conventions) before timing.

Run from the repository root:

    .venv/bin/python -m pytest benchmarks/ --benchmark-only
    .venv/bin/python -m pytest benchmarks/ --benchmark-only --eitp-quick --eitp-no-compile

The files are named ``bench_*.py`` so that the normal test run (testpaths =
tests) never collects them; this conftest collects them under benchmarks/
(``-o python_files='bench_*.py'`` works as well).
"""
from __future__ import annotations

import fnmatch

import pytest
import torch

from eitp_kernels.bench import cases, runner


def pytest_addoption(parser):
    group = parser.getgroup("eitp-bench", "eitp_kernels benchmark suites")
    group.addoption("--eitp-quick", action="store_true", help="the quick (CI) sizes")
    group.addoption("--eitp-device", choices=("cpu", "cuda"), default=None,
                    help="device to benchmark on (default: cuda if available, else cpu)")
    group.addoption("--eitp-no-compile", action="store_true", help="skip the torch.compile baseline")


def pytest_collect_file(file_path, parent):
    """Collect bench_*.py here even though python_files does not name them."""
    if file_path.suffix != ".py" or not file_path.name.startswith("bench_"):
        return None
    if parent.session.isinitpath(file_path) or any(
        fnmatch.fnmatch(file_path.name, pattern) for pattern in parent.config.getini("python_files")
    ):
        return None  # pytest's own collector takes it
    return pytest.Module.from_parent(parent, path=file_path)


def _device(config) -> torch.device:
    name = config.getoption("--eitp-device") or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pytest_generate_tests(metafunc):
    """Parametrize ``bench_case`` x ``backend`` from the module's ``OP`` suite."""
    if "bench_case" not in metafunc.fixturenames:
        return
    config = metafunc.config
    device = _device(config)
    quick = config.getoption("--eitp-quick")
    suite_op = metafunc.module.OP
    params = [
        pytest.param(case, backend, id=f"{_op_prefix(case, suite_op)}{case.shape}-{case.dtype_label}-{backend}")
        for case in cases.build_cases([suite_op], device, quick)
        for backend in runner.backends_to_run(case, device, not config.getoption("--eitp-no-compile"))
        + [alt.name for alt in runner.alternatives_to_run(case, device, quick)]
    ]
    metafunc.parametrize(("bench_case", "backend"), params)


def _op_prefix(case, suite_op: str) -> str:
    """A suite's cases of another op (quantize_int8 in fake_quant_int8's) say so in their ids."""
    return "" if case.op == suite_op else f"{case.op}:"


@pytest.fixture
def bench_device(request) -> torch.device:
    device = _device(request.config)
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return device
