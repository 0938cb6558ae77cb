"""Build of eitp_kernels._C, the one compiled extension.

Environment switches (all optional):
  EITP_NO_EXTENSION=1   build no extension at all: the package then runs on the
                        reference and Triton backends and says why cpp/cuda are
                        missing (eitp_kernels.backends()).
  EITP_WITH_CUDA=0|1    force the CUDA sources off/on. Default: on when torch
                        was built with CUDA and nvcc is found (CUDA_HOME,
                        default /usr/local/cuda).
  TORCH_CUDA_ARCH_LIST  GPU architectures; default "8.0;8.6;9.0+PTX": SASS for
                        A100, RTX 3090/A10, H100/H200, and PTX that newer GPUs
                        compile at load. Narrow it (e.g. "9.0") for a faster build.
  EITP_DEBUG=1          -O0 -g instead of -O3.
  EITP_SANITIZE=1       AddressSanitizer + UndefinedBehaviorSanitizer build of the
                        CPU code (implies EITP_WITH_CUDA=0, -O1 -g). Run it with
                        the ASan runtime preloaded; see `make test-asan`.
"""
import glob
import os
import shutil

from setuptools import setup

DEFAULT_CUDA_ARCHS = "8.0;8.6;9.0+PTX"

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name, default=None):
    value = os.environ.get(name, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    return default


def _find_nvcc():
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    if os.path.exists(nvcc):
        os.environ.setdefault("CUDA_HOME", cuda_home)
        return nvcc
    return shutil.which("nvcc")


def _sources(pattern):
    return sorted(glob.glob(os.path.join("csrc", pattern)))


def _extension_modules():
    if _flag("EITP_NO_EXTENSION", False):
        print("eitp_kernels: EITP_NO_EXTENSION set, building no compiled extension")
        return [], {}
    # CUDA_HOME must be settled before torch.utils.cpp_extension is imported:
    # it reads the variable once, at import.
    nvcc = _find_nvcc()
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    sanitize = _flag("EITP_SANITIZE", False)
    want_cuda = False if sanitize else _flag("EITP_WITH_CUDA", None)
    has_cuda_torch = torch.version.cuda is not None
    nvcc = nvcc if has_cuda_torch else None
    if want_cuda is None:
        want_cuda = has_cuda_torch and nvcc is not None
    elif want_cuda and not (has_cuda_torch and nvcc):
        raise RuntimeError(
            "EITP_WITH_CUDA=1 but "
            + ("torch is a CPU-only build" if not has_cuda_torch else "nvcc was not found (set CUDA_HOME)")
        )
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)

    debug = _flag("EITP_DEBUG", False)
    opt = ["-O0", "-g"] if debug else ["-O3"]
    sanitizer_flags = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all"]
    if sanitize:
        opt = ["-O1", "-g"] + sanitizer_flags
    cxx_flags = opt + ["-fopenmp", "-fno-math-errno"]
    sources = _sources("bindings/*.cpp") + _sources("cpu/*.cpp")
    define_macros = []
    extra = {"cxx": cxx_flags}
    if want_cuda:
        sources += _sources("cuda/*.cu")
        define_macros.append(("EITP_WITH_CUDA", None))
        extra["nvcc"] = opt + ["--expt-relaxed-constexpr", "-lineinfo"]
        ext_cls = CUDAExtension
    else:
        ext_cls = CppExtension
    print(f"eitp_kernels: building _C with CUDA sources: {bool(want_cuda)}")
    ext = ext_cls(
        name="eitp_kernels._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=define_macros,
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"] + (sanitizer_flags if sanitize else []),
        py_limited_api=True,
    )
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = _extension_modules()
setup(
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp39"}} if ext_modules else {},
)
