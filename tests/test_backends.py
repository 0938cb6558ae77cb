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


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs triton to be unavailable on CPU tensors")
def test_compiled_code_follows_use_backend_blocks():
    # torch.compile reads the choice from a module global it guards (dynamo before torch
    # 2.14 cannot trace the ContextVar): a new block's choice recompiles, nested blocks restore
    if _backends.triton_interpreter_requested():
        pytest.skip("triton runs CPU tensors under the interpreter")
    compiled = torch.compile(lambda x: eitp_kernels.finite_minmax(x), fullgraph=True, backend="eager")
    x = torch.randn(64)
    with eitp_kernels.use_backend("cpp"):
        compiled(x)
        with eitp_kernels.use_backend("triton"):
            with pytest.raises(Exception, match="triton"):
                compiled(x)
        assert _backends._requested_while_compiling == "cpp"
        compiled(x)
    assert _backends._requested_while_compiling is None


def test_compiled_code_traces_once_across_calls():
    # The per-process caches of backend choices and op handles are not read while tracing:
    # a guard on their contents failed when the first call filled them (a second trace).
    import torch._dynamo.testing

    counter = torch._dynamo.testing.CompileCounter()

    @torch.compile(backend=counter, fullgraph=True)
    def monitored(x):
        return eitp_kernels.histogram_entropy(x) + eitp_kernels.fake_quant_int8(x, granularity="tensor").sum()

    x = torch.randn(300)
    torch._dynamo.reset()
    _backends._resolved.clear()
    for _ in range(3):
        monitored(x)
    assert counter.frame_count == 1


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
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    out = result.stdout
    assert "cpp: unavailable" in out and "EITP_NO_EXTENSION" in out
    assert "tensor(0.)" in out and "tensor(4.)" in out
    assert "ExtensionUnavailableWarning" not in result.stderr  # switched off on purpose: no warning


def test_imports_and_runs_without_triton():
    # Triton is optional (Linux only): where it does not import, the package still
    # imports, says why the triton backend is missing, and the ops run on the others.
    import subprocess
    import sys

    code = ("import sys; sys.modules['triton'] = None  # import triton raises ImportError\n"
            "import eitp_kernels, torch\n"
            "print(eitp_kernels.backends()['triton'])\n"
            "x = torch.randn(64)\n"
            "print(eitp_kernels.histogram_entropy(x, bins=8).dtype, eitp_kernels.quantize_int8(x)[0].dtype,\n"
            "      eitp_kernels.coherence_loss(torch.randn(8, 3)).dtype, eitp_kernels.finite_minmax(x)[0].dtype)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "triton: unavailable" in result.stdout and "not installed" in result.stdout
    assert "torch.float32 torch.int8 torch.float32 torch.float32" in result.stdout


# --- the extension built for another torch, or failing to load -------------------------------------

import os
import shutil
import subprocess
import sys

from eitp_kernels import _extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in a fresh interpreter: installs a fake build record (or none) before
# eitp_kernels is imported, then reports what a user would see.
_PROBE = r"""
import json, sys, types, warnings
record = json.loads(sys.argv[1])
if record is not None:
    fake = types.ModuleType("eitp_kernels._build_info")
    fake.__dict__.update(record)
    sys.modules[fake.__name__] = fake
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import eitp_kernels
    import torch
    from eitp_kernels import _backends
    statuses = eitp_kernels.backends()
    auto = _backends.resolve("op", torch.device("cpu"), {"cpu": ("cpp", "reference")})
    try:
        with eitp_kernels.use_backend("cpp"):
            eitp_kernels.finite_minmax(torch.arange(3.0))
        explicit = "ran"
    except eitp_kernels.BackendUnavailableError as error:
        explicit = str(error)
ours = [str(w.message) for w in caught if w.category.__name__ == "ExtensionUnavailableWarning"]
print(json.dumps({"warnings": ours, "cpp": statuses["cpp"].reason, "cuda": statuses["cuda"].reason,
                  "cpp_available": statuses["cpp"].available, "auto": auto, "explicit": explicit,
                  "torch": torch.__version__}))
"""


def _run_probe(record, pythonpath=ROOT, env_extra=None):
    import json

    env = dict(os.environ, PYTHONPATH=pythonpath)
    env.pop("EITP_NO_EXTENSION", None)
    env.pop("EITP_BACKEND", None)
    env.update(env_extra or {})
    result = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(record)], env=env, cwd=pythonpath,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def _record(**overrides):
    record = dict(EXTENSION_BUILT=True, TORCH_VERSION=torch.__version__, TORCH_CUDA_VERSION=torch.version.cuda,
                  CUDA_SOURCES=False, PY_LIMITED_API=0x030A0000, SOURCE_DIR=ROOT)
    record.update(overrides)
    return record


def test_version_mismatch_compares_the_torch_series():
    built = _record(TORCH_VERSION="2.14.1+cu130", TORCH_CUDA_VERSION="13.0")
    assert _extension.version_mismatch(built, "2.14.1+cu130", "13.0") is None
    assert _extension.version_mismatch(built, "2.14.0", "13.0") is None  # same series: ABI-compatible
    why = _extension.version_mismatch(built, "2.13.0+cpu", None)
    assert why == "it was built against torch 2.14.1+cu130 but torch 2.13.0+cpu is installed"
    assert _extension.version_mismatch(built, "3.14.1", "13.0") is not None
    assert _extension.version_mismatch(None, "2.13.0", None) is None


def test_version_mismatch_of_cuda_only_matters_for_a_build_with_cuda_kernels():
    cpu_build = _record(TORCH_VERSION="2.14.1+cu130", TORCH_CUDA_VERSION="13.0", CUDA_SOURCES=False)
    assert _extension.version_mismatch(cpu_build, "2.14.1+cpu", None) is None
    cuda_build = dict(cpu_build, CUDA_SOURCES=True)
    assert "has no CUDA (a CPU build)" in _extension.version_mismatch(cuda_build, "2.14.1+cpu", None)
    assert "CUDA 12.8" in _extension.version_mismatch(cuda_build, "2.14.1+cu128", "12.8")


def test_build_for_another_torch_warns_once_and_names_the_fix():
    # A wheel built against another torch series than the one installed.
    result = _run_probe(_record(TORCH_VERSION="1.9.0+cu111", TORCH_CUDA_VERSION="11.1"))
    assert len(result["warnings"]) == 1, result
    message = result["warnings"][0]
    assert f"built against torch 1.9.0+cu111 but torch {result['torch']} is installed" in message
    assert f"{sys.executable} -m pip install --no-build-isolation" in message
    assert "EITP_NO_EXTENSION" not in message
    # backends() says the same; automatic choice falls back (after the warning); explicit raises.
    assert result["cpp"] == message and result["cuda"] == message and not result["cpp_available"]
    assert result["auto"] == "reference"
    assert "backend 'cpp' is unavailable" in result["explicit"] and "1.9.0+cu111" in result["explicit"]


def test_a_library_that_fails_to_load_warns_once_with_the_loader_error(tmp_path):
    # A real load failure: the package copied beside a _C that is not a shared library.
    package = tmp_path / "eitp_kernels"
    shutil.copytree(os.path.join(ROOT, "eitp_kernels"), package,
                    ignore=shutil.ignore_patterns("*.so", "__pycache__", "_build_info.py"))
    (package / "_C.abi3.so").write_bytes(b"not an ELF file")
    (package / "_build_info.py").write_text(
        "".join(f"{k} = {v!r}\n" for k, v in _record(SOURCE_DIR=str(tmp_path / "gone")).items()))
    result = _run_probe(None, pythonpath=str(tmp_path))
    assert len(result["warnings"]) == 1, result
    message = result["warnings"][0]
    assert "eitp_kernels._C failed to load (built against torch" in message
    assert "_C.abi3.so" in message  # the loader's own error
    assert "-m pip install --no-build-isolation --force-reinstall --no-deps --no-cache-dir" in message
    assert "EITP_NO_EXTENSION" not in message
    assert result["cpp"] == message and result["auto"] == "reference"


def test_no_warning_when_the_extension_was_built_without_it():
    # (EITP_NO_EXTENSION at run time: test_extension_can_be_disabled.)
    at_build_time = _run_probe({"EXTENSION_BUILT": False, "SOURCE_DIR": ROOT})
    assert at_build_time["warnings"] == []
    assert "built with EITP_NO_EXTENSION=1" in at_build_time["cpp"]
    assert "-m pip install --no-build-isolation" in at_build_time["cpp"]


def test_direct_launch_switch_falls_back_where_torch_lacks_it(monkeypatch):
    # The opaque Triton ops turn torch's private wrap_triton switch off; a
    # torch without it gets a no-op context (kernels then run through the
    # higher-order op), not an ImportError at the first call.
    import contextlib

    import torch._library.triton as torch_triton

    from eitp_kernels import _registration

    with _registration._direct_launches()():
        assert not torch_triton.is_wrap_triton_enabled()
    assert torch_triton.is_wrap_triton_enabled()
    monkeypatch.delattr(torch_triton, "set_wrap_triton_enabled")
    assert _registration._direct_launches() is contextlib.nullcontext


# ---------------------------------------------------------------- op_caller's plain-eager shortcut


def _dispatched_ops(fn) -> list[str]:
    """The eitp ops a call sends through the dispatcher (a dispatch mode sees them)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with Record():
        fn()
    return [name for name in seen if name.startswith("eitp")]


def test_plain_eager_is_recognised_and_everything_else_is_not():
    from torch.utils._python_dispatch import TorchDispatchMode

    x = torch.randn(8)
    assert _backends._plain_eager((x, None, 3, [x, x]))
    assert not _backends._plain_eager((x.clone().requires_grad_(),))
    assert not _backends._plain_eager(([x, x.clone().requires_grad_()],))
    with torch.no_grad():
        assert _backends._plain_eager((x.clone().requires_grad_(),))
    assert not _backends._plain_eager((torch.nn.Parameter(x),))  # a subclass
    with TorchDispatchMode():
        assert not _backends._plain_eager((x,))
    with torch.overrides.TorchFunctionMode():
        assert not _backends._plain_eager((x,))
    assert torch.func.vmap(lambda t: torch.tensor(float(not _backends._plain_eager((t,)))) + t * 0)(x).all()


def test_compiled_op_with_python_autograd_skips_it_only_without_a_gradient():
    from eitp_kernels import _registration

    assert "eitp::fake_quant_int8_rows" in _registration.python_autograd
    x = torch.randn(4, 6)
    with eitp_kernels.use_backend("cpp"):
        plain = eitp_kernels.fake_quant_int8(x, granularity="channel")
        xg = x.clone().requires_grad_()
        out = eitp_kernels.fake_quant_int8(xg, granularity="channel")
    assert torch.equal(plain, out.detach()) and out.grad_fn is not None
    (grad,) = torch.autograd.grad(out.sum(), xg)
    assert grad.shape == x.shape
    # the same op is dispatched either way (the shortcut only skips the Autograd layer)
    assert _dispatched_ops(lambda: eitp_kernels.fake_quant_int8(x, granularity="channel")) == \
        ["eitp.fake_quant_int8_rows.default"]


def _triton_missing() -> bool:
    from eitp_kernels import _registration

    return not _registration.triton_installed()


@pytest.mark.skipif(_triton_missing(), reason="needs triton")
def test_triton_op_calls_its_launcher_in_plain_eager_and_the_op_otherwise():
    from eitp_kernels import _triton
    from eitp_kernels.bench import launches

    x = torch.randn(64)
    launched = []  # (kernel, whether it was launched by the launcher called directly)

    def take_over(kernel, grid, args, meta):
        launched.append((_triton.kernel_name(kernel), _triton._direct.on))
        return True

    def launches_of(fn):
        launched.clear()
        fn()
        return list(launched)

    with launches.forced_backend("triton"):
        _triton.launch_observers.append(take_over)
        try:
            plain = launches_of(lambda: eitp_kernels.finite_minmax(x))
            moded = launches_of(lambda: _dispatched_ops(lambda: eitp_kernels.finite_minmax(x)))
            dispatched = _dispatched_ops(lambda: eitp_kernels.finite_minmax(x))
        finally:
            _triton.launch_observers.remove(take_over)
    names = [name for name, _ in plain]
    assert names and all(direct for _, direct in plain)
    assert moded == [(name, False) for name in names]  # under a dispatch mode the op is dispatched as before
    assert dispatched == ["eitp_triton.finite_minmax.default"]


@pytest.mark.parametrize("version, slow", [
    ("3.6.0", True), ("3.7.1", True), ("2.3.1", True), ("3.8.0", False), ("3.8.0+git5f0c1a2", False),
    ("3.10.0", False), ("4.0.0", False), ("main", False),
])
def test_triton_histogram_note_names_versions_before_the_shared_memory_lowering(version, slow):
    note = _backends.triton_histogram_note(version)
    assert bool(note) == slow
    if slow:
        assert version in note and "triton>=3.8" in note and "cuda backend" in note


def _probe_on_a_gpu_with_triton(monkeypatch, version):
    import sys
    import types

    from eitp_kernels import _registration

    monkeypatch.setitem(sys.modules, "triton", types.SimpleNamespace(__version__=version))
    monkeypatch.setattr(_registration, "triton_installed", lambda: True)
    monkeypatch.setattr(_registration, "define_triton_ops", lambda: None)
    monkeypatch.setattr(_backends, "triton_interpreter_requested", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    return _backends._probe_triton()


def test_an_old_triton_on_a_gpu_warns_and_says_so_in_its_status(monkeypatch):
    with pytest.warns(eitp_kernels.SlowTritonHistogramWarning, match="triton 3.7.1 lowers tl.histogram"):
        status = _probe_on_a_gpu_with_triton(monkeypatch, "3.7.1")
    assert status.available and status.devices == ("cuda",) and "triton>=3.8" in status.reason


def test_a_current_triton_on_a_gpu_neither_warns_nor_notes(monkeypatch):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        status = _probe_on_a_gpu_with_triton(monkeypatch, "3.8.0")
    assert status.available and status.reason == ""
