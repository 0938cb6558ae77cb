"""The build: every CUDA source compiles, and the installed extension has the
kernels it should have."""
import glob
import os
import shutil
import subprocess
import sys

import pytest
import torch

from eitp_kernels import _extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_HOME = os.environ.get("CUDA_HOME", "/usr/local/cuda")
NVCC = os.path.join(CUDA_HOME, "bin", "nvcc") if os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")) else shutil.which("nvcc")
CU_FILES = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))


def test_there_are_cuda_sources():
    assert CU_FILES


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
@pytest.mark.parametrize("source", CU_FILES, ids=os.path.basename)
def test_cuda_source_compiles_standalone(source, tmp_path):
    # Kernels are free of torch headers, so each .cu compiles on its own.
    # sm_86 here; the package build compiles for 8.6 and 9.0.
    cmd = [NVCC, "-std=c++17", "-O1", "-DEITP_WITH_CUDA", "--expt-relaxed-constexpr",
           "-gencode", "arch=compute_86,code=sm_86", "-I", os.path.join(ROOT, "csrc"),
           "-c", source, "-o", str(tmp_path / "out.o")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_extension_loaded():
    loaded, reason = _extension.load()
    assert loaded, reason


@pytest.mark.skipif(torch.version.cuda is None or NVCC is None, reason="needs a CUDA build of torch and nvcc")
def test_extension_was_built_with_cuda_kernels():
    # With a CUDA torch and nvcc present, setup.py must have compiled the .cu files in.
    assert _extension.has_device_kernels("CUDA")
    assert _extension.has_device_kernels("CPU")


def test_build_recorded_the_torch_it_was_built_against():
    # setup.py writes eitp_kernels/_build_info.py beside _C (in place and editable builds too);
    # eitp_kernels._extension reads it to detect a torch mismatch before loading _C.
    info = _extension.build_info()
    assert info is not None, "no eitp_kernels/_build_info.py: rebuild with setup.py"
    assert info["EXTENSION_BUILT"] is True
    assert info["TORCH_VERSION"] == torch.__version__
    assert info["TORCH_CUDA_VERSION"] == torch.version.cuda
    assert info["CUDA_SOURCES"] == _extension.has_device_kernels("CUDA")


def test_requires_python_matches_the_limited_api_torch_compiles_with():
    # The wheel is tagged cpXY-abi3 from this macro (setup.py); requires-python must say >=X.Y.
    import re

    from torch.utils import cpp_extension

    macro = int(getattr(cpp_extension, "min_supported_cpython", "0x030A0000"), 16)
    info = _extension.build_info() or {}
    if "PY_LIMITED_API" in info:
        assert info["PY_LIMITED_API"] == macro
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        declared = re.search(r'^requires-python = ">=(\d+)\.(\d+)"$', f.read(), re.M)
    assert declared, "pyproject.toml: requires-python = \">=X.Y\" expected"
    assert (int(declared.group(1)), int(declared.group(2))) == ((macro >> 24) & 0xFF, (macro >> 16) & 0xFF)


def test_setup_names_the_setuptools_it_needs():
    # setuptools < 77 cannot read the PEP 639 license and says so obscurely; setup.py says what to do
    code = ("import setuptools, runpy, sys; setuptools.__version__ = '65.5.0'; sys.argv = ['setup.py', '--version']; "
            "runpy.run_path('setup.py', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "setuptools >= 77" in proc.stderr and "65.5.0" in proc.stderr and "pip install 'setuptools>=77'" in proc.stderr
