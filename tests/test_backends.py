"""Backend discovery and selection."""
import pytest
import torch

import eitp_kernels
from eitp_kernels import _backends


def test_backends_lists_every_backend_with_a_reason_when_unavailable():
    statuses = eitp_kernels.backends()
    assert list(statuses) == ["reference", "cpp", "cuda", "triton"]
    assert statuses["reference"].available
    for status in statuses.values():
        assert status.available or status.reason, status


def test_cpp_backend_is_built_here():
    # CI builds the extension; a package that silently lost it must fail here.
    status = eitp_kernels.backends()["cpp"]
    assert status.available, status.reason


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_backend_reports_built_without_device():
    status = eitp_kernels.backends()["cuda"]
    assert not status.available
    assert "no CUDA device" in status.reason or "without CUDA sources" in status.reason


def test_use_backend_overrides_and_restores():
    x = torch.randn(100)
    with eitp_kernels.use_backend("reference"):
        assert _backends.requested_backend() == "reference"
        eitp_kernels.finite_minmax(x)
    assert _backends.requested_backend() is None


def test_use_backend_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        with eitp_kernels.use_backend("fast"):
            pass


def test_environment_variable_selects_backend(monkeypatch):
    monkeypatch.setenv("EITP_BACKEND", "reference")
    assert _backends.requested_backend() == "reference"
    monkeypatch.setenv("EITP_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="EITP_BACKEND"):
        _backends.requested_backend()


def test_context_manager_beats_environment(monkeypatch):
    monkeypatch.setenv("EITP_BACKEND", "cpp")
    with eitp_kernels.use_backend("reference"):
        assert _backends.requested_backend() == "reference"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_backend_is_an_error_not_a_fallback():
    with eitp_kernels.use_backend("cuda"):
        with pytest.raises(eitp_kernels.BackendUnavailableError, match="unavailable"):
            eitp_kernels.finite_minmax(torch.randn(10))


def test_backend_that_cannot_run_the_device_is_an_error():
    statuses = eitp_kernels.backends()
    if statuses["triton"].available and "cpu" in statuses["triton"].devices:
        pytest.skip("the Triton interpreter runs CPU tensors in this process")
    with eitp_kernels.use_backend("triton"):
        with pytest.raises(eitp_kernels.BackendUnavailableError):
            eitp_kernels.finite_minmax(torch.randn(10))


def test_automatic_choice_on_cpu_is_the_compiled_kernel():
    assert _backends.resolve("op", torch.device("cpu"), {"cpu": ("cpp", "reference")}) == "cpp"


def test_automatic_choice_never_picks_interpreted_triton():
    assert _backends.resolve("op", torch.device("cpu"), {"cpu": ("triton", "reference")}) == "reference"


def test_backend_the_op_does_not_implement_is_named_in_the_error():
    with eitp_kernels.use_backend("cpp"):
        with pytest.raises(eitp_kernels.BackendUnavailableError, match="no 'cpp' implementation"):
            _backends.resolve("op", torch.device("cpu"), {"cpu": ("reference",)})


def test_extension_can_be_disabled(tmp_path):
    import subprocess
    import sys

    code = "import eitp_kernels, torch; s = eitp_kernels.backends(); print(s['cpp']); print(eitp_kernels.finite_minmax(torch.arange(5.)))"
    env = dict(__import__("os").environ, EITP_NO_EXTENSION="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert "cpp: unavailable" in out and "EITP_NO_EXTENSION" in out
    assert "tensor(0.)" in out and "tensor(4.)" in out
