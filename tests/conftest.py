"""Shared pytest fixtures and markers.

Triton kernels run on this CPU-only machine through Triton's interpreter,
which must be enabled before triton is first imported. Tests marked
``triton_interpret`` therefore run in their own pytest process
(``make test`` does: ``TRITON_INTERPRET=1 pytest -m triton_interpret``) and are
skipped in any process without the interpreter, GPU machines included (the
``gpu`` tests run the Triton kernels natively there). ``gpu`` tests run with
TF32 matmuls off.
"""
from __future__ import annotations

import os
import socket

import pytest
import torch

INTERPRETER_ON = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
HAS_CUDA = torch.cuda.is_available()

# (dtype, rtol) for comparisons against fp64 references; see docs/design.md §5.
FLOAT_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_interp = pytest.mark.skip(reason="needs TRITON_INTERPRET=1 before triton is imported (run with -m triton_interpret)")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)
        # Only the interpreter: on a GPU machine these would otherwise compile and run
        # natively in the plain pytest process, and stop skipping interpreter-heavy cases.
        if "triton_interpret" in item.keywords and not INTERPRETER_ON:
            item.add_marker(skip_interp)


def cpu_backends():
    """Backends to parametrize CPU tests over. The Triton entry is marked so it
    runs only in the interpreter process (pytest -m triton_interpret)."""
    return ["reference", "cpp", pytest.param("triton", marks=pytest.mark.triton_interpret)]


@pytest.fixture(autouse=True)
def _no_tf32_in_gpu_tests(request):
    """GPU tests run with TF32 matmuls off, whatever the user's setting: their
    tolerances are for IEEE fp32 (TF32 keeps 10 mantissa bits)."""
    if request.node.get_closest_marker("gpu") is None:
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same seed: failures reproduce."""
    torch.manual_seed(0)
    yield


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(0)


def free_port() -> int:
    """A free TCP port on 127.0.0.1, for the MASTER_PORT of a spawned gloo job."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
