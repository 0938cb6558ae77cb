"""The built extension's CUDA kernels, read with cuobjdump (no GPU needed).

Every ``__global__`` kernel of csrc/cuda is present as SASS for each
architecture of the build (default ``setup.DEFAULT_CUDA_ARCHS``: sm_80, sm_86,
sm_90, plus PTX for newer GPUs; or the TORCH_CUDA_ARCH_LIST it was built
with), with no local memory (no register spills, no stack arrays) and shared
memory within the 48 KiB a block gets without opting in (static shared plus
the largest dynamic allocation the launcher makes). Skipped when the extension
was built without CUDA sources.
"""
import os
import re
import shutil
import subprocess

import pytest

from eitp_kernels import _extension
from eitp_kernels.bench import cost_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SHARED_LIMIT = 48 * 1024  # per block, no cudaFuncSetAttribute opt-in in the launchers
# cuobjdump counts the 1 KiB that sm_90 reserves per block for the system in a
# kernel's SHARED (cudaDevAttrReservedSharedMemoryPerBlock); it is not part of
# the 48 KiB a block may allocate.
RESERVED_SHARED = {"sm_90": 1024}


def _cuobjdump():
    try:
        import triton

        bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        if os.path.exists(bundled):
            return bundled
    except ImportError:
        pass
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    return shutil.which("cuobjdump") or (os.path.join(cuda_home, "bin", "cuobjdump")
                                         if os.path.exists(os.path.join(cuda_home, "bin", "cuobjdump")) else None)


def _expected_archs():
    """(SASS archs, PTX archs) of the build: TORCH_CUDA_ARCH_LIST if set, else setup.py's default."""
    spec = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if not spec:
        text = open(os.path.join(ROOT, "setup.py")).read()
        spec = re.search(r'DEFAULT_CUDA_ARCHS = "([^"]+)"', text).group(1)
    sass, ptx = set(), set()
    for item in re.split(r"[;\s]+", spec.strip()):
        if not item:
            continue
        cc = item.replace("+PTX", "").replace(".", "")
        sass.add(f"sm_{cc}")
        if item.endswith("+PTX"):
            ptx.add(f"sm_{cc}")
    return sass, ptx


def _kernel_names():
    names = set()
    for name in os.listdir(os.path.join(ROOT, "csrc", "cuda")):
        if name.endswith(".cu"):
            text = open(os.path.join(ROOT, "csrc", "cuda", name)).read()
            names |= set(re.findall(r"__global__\s+void\s+(\w+)", text))
    return names


def _max_dynamic_shared():
    """Largest dynamic shared allocation per kernel, from the launchers' constants."""
    many = open(os.path.join(ROOT, "csrc", "kernels", "entropy_many.h")).read()
    entropy = open(os.path.join(ROOT, "csrc", "cuda", "entropy_cuda.cu")).read()
    hist_bins = eval(re.search(r"kSharedHistogramMaxBins = ([^;]+);", many).group(1))  # noqa: S307 - our own source
    soft_bytes = eval(re.search(r"kSharedBytes = ([^;]+);", entropy).group(1).split("//")[0])  # noqa: S307
    return {"hist_rows_kernel": hist_bins * 4, "segments_count_kernel": hist_bins * 4, "soft_hist_kernel": soft_bytes}


def _resource_usage(cuobjdump, path):
    """{"sm_XX": {function: {REG, STACK, SHARED, LOCAL}}}: the cost model's reading, keyed as the arch list."""
    return {f"sm_{arch}": functions for arch, functions in cost_model.resource_usage(cuobjdump, path).items() if arch}


@pytest.fixture(scope="module")
def extension_binary():
    loaded, why = _extension.load()
    if not loaded:
        pytest.skip(f"extension not built: {why}")
    if not _extension.has_device_kernels("CUDA"):
        pytest.skip("the extension was built without CUDA sources (EITP_WITH_CUDA=0, a CPU-only torch or no nvcc): "
                    "no GPU kernels to inspect")
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not found (ships with Triton and the CUDA toolkit)")
    import eitp_kernels._C as c

    return tool, c.__file__


def test_every_kernel_is_built_for_every_architecture(extension_binary):
    tool, path = extension_binary
    sass, ptx = _expected_archs()
    usage = _resource_usage(tool, path)
    assert sass <= set(usage), f"SASS for {sorted(sass)} expected, found {sorted(usage)}"
    for arch in sorted(sass):
        functions = " ".join(usage[arch])
        missing = [k for k in sorted(_kernel_names()) if k not in functions]
        assert not missing, f"{arch}: kernels missing: {missing}"
    listed = subprocess.run([tool, "--list-ptx", path], capture_output=True, text=True).stdout
    for arch in sorted(ptx):
        assert f".{arch}.ptx" in listed, f"no PTX for {arch} (newer GPUs need it):\n{listed[:2000]}"


def test_no_local_memory_and_shared_memory_within_limits(extension_binary):
    tool, path = extension_binary
    dynamic = _max_dynamic_shared()
    problems = []
    for arch, functions in sorted(_resource_usage(tool, path).items()):
        for function, use in sorted(functions.items()):
            if use.get("LOCAL", 0) or use.get("STACK", 0):
                problems.append(f"{arch} {function}: local memory {use} (spills or stack arrays)")
            extra = max((b for k, b in dynamic.items() if k in function), default=0)
            static = max(0, use.get("SHARED", 0) - RESERVED_SHARED.get(arch, 0))
            if static + extra > DEFAULT_SHARED_LIMIT:
                problems.append(f"{arch} {function}: shared {static} B static + {extra} B dynamic > "
                                f"{DEFAULT_SHARED_LIMIT} B")
    assert not problems, "\n".join(problems)
