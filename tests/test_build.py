"""The build: every CUDA source compiles, and the installed extension has the
kernels it should have."""
import glob
import os
import shutil
import subprocess

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
