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

What the build records, because a torch extension only loads under the torch
it was compiled against:
  eitp_kernels/_build_info.py  written next to the built _C: the torch and CUDA
                        versions it was built against, whether it has CUDA
                        kernels, the Py_LIMITED_API value it was compiled with.
                        eitp_kernels._extension reads it before loading _C and
                        warns (with the rebuild command) on a mismatch.
  Requires-Dist         torch pinned to the building torch's series
                        (torch>=X.Y,<X.(Y+1)), as other compiled extensions do.
  wheel tag             cpXY-abi3, XY taken from the Py_LIMITED_API value that
                        torch.utils.cpp_extension defines for py_limited_api
                        extensions (0x030A0000: cp310); requires-python in
                        pyproject.toml is >=3.10 to match.
"""
import glob
import os
import re
import shutil

import setuptools
from setuptools import setup
from setuptools.command.build_py import build_py

# pyproject.toml's `license = "Apache-2.0"` is a PEP 639 expression, which setuptools reads
# from 77 on; older ones (65, as a torch 2.11 venv can hold) fail with "project.license must
# be valid exactly by one definition", which names neither the cause nor the fix.
MIN_SETUPTOOLS = (77, 0)
if tuple(int(part) for part in re.findall(r"\d+", setuptools.__version__)[:2]) < MIN_SETUPTOOLS:
    raise SystemExit(
        f"eitp_kernels needs setuptools >= {'.'.join(map(str, MIN_SETUPTOOLS))} to build (PEP 639 license "
        f"metadata); this Python has setuptools {setuptools.__version__}. Fix: pip install 'setuptools>=77'"
    )

DEFAULT_CUDA_ARCHS = "8.0;8.6;9.0+PTX"

ROOT = os.path.dirname(os.path.abspath(__file__))
BUILD_INFO = "_build_info.py"
# The Python 3.10 limited API: what torch's cpp_extension defines for
# py_limited_api=True (its min_supported_cpython); used as is when an older
# torch does not define the macro itself.
DEFAULT_LIMITED_API = 0x030A0000
# triton and nvidia-ml-py are the `gpu` extra (pyproject.toml): a CUDA build of torch
# brings triton already, and on a CPU-only machine triton's backend cannot run.
RUNTIME_DEPENDENCIES = [
    "numpy",
    "safetensors",
    "zstandard",
]


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


def _torch_series_requirement(torch_version):
    """'2.14.1+cu130' -> 'torch>=2.14,<2.15': the series an extension built against it loads under."""
    match = re.match(r"(\d+)\.(\d+)", torch_version)
    if match is None:
        raise RuntimeError(f"cannot read the torch version {torch_version!r}")
    major, minor = int(match.group(1)), int(match.group(2))
    return f"torch>={major}.{minor},<{major}.{minor + 1}"


def _limited_api_tag(limited_api):
    """0x030A0000 -> 'cp310': the abi3 wheel tag matching a Py_LIMITED_API value."""
    return f"cp{(limited_api >> 24) & 0xFF}{(limited_api >> 16) & 0xFF}"


def _limited_api_macro(extension):
    """The Py_LIMITED_API value the compiler is given for ``extension`` (None if none)."""
    flags = extension.extra_compile_args
    flags = [f for group in flags.values() for f in group] if isinstance(flags, dict) else list(flags)
    values = {f.split("=", 1)[1] for f in flags if f.startswith("-DPy_LIMITED_API=")}
    values |= {str(v) for k, v in extension.define_macros if k == "Py_LIMITED_API"}
    if len(values) > 1:
        raise RuntimeError(f"conflicting Py_LIMITED_API values: {sorted(values)}")
    return int(values.pop(), 0) if values else None


def _build_info_text(**fields):
    lines = [
        "# Written by setup.py when eitp_kernels was built; read by eitp_kernels._extension",
        "# before it loads _C, so a build that cannot load still says what it was built for.",
    ]
    for name, value in fields.items():
        shown = f"0x{value:08X}" if name == "PY_LIMITED_API" and value else repr(value)
        lines.append(f"{name} = {shown}")
    return "\n".join(lines) + "\n"


def _write_if_changed(path, text):
    try:
        with open(path) as f:
            if f.read() == text:
                return
    except OSError:
        pass
    with open(path, "w") as f:
        f.write(text)


class _BuildPyRecordingNoExtension(build_py):
    """EITP_NO_EXTENSION builds record that no _C was built (so no warning says it failed)."""

    def run(self):
        super().run()
        text = _build_info_text(EXTENSION_BUILT=False, SOURCE_DIR=ROOT)
        _write_if_changed(os.path.join(self.build_lib, "eitp_kernels", BUILD_INFO), text)
        if getattr(self, "editable_mode", False):
            _write_if_changed(os.path.join(ROOT, "eitp_kernels", BUILD_INFO), text)


def _build_ext_recording_versions(base, torch):
    class BuildExtRecordingVersions(base):
        """torch's BuildExtension, plus eitp_kernels/_build_info.py written beside _C."""

        def run(self):
            # setuptools builds into build/lib and then copies _C into the
            # source tree for --inplace and editable builds (clearing
            # self.inplace meanwhile); the record must follow it there.
            self._into_source = bool(self.inplace or getattr(self, "editable_mode", False))
            super().run()

        def build_extension(self, ext):
            # Runs after BuildExtension added its flags, Py_LIMITED_API among them.
            text = _build_info_text(
                EXTENSION_BUILT=True,
                TORCH_VERSION=torch.__version__,
                TORCH_CUDA_VERSION=torch.version.cuda,
                CUDA_SOURCES=any(src.endswith(".cu") for src in ext.sources),
                PY_LIMITED_API=_limited_api_macro(ext),
                SOURCE_DIR=ROOT,
            )
            targets = [os.path.join(os.path.dirname(self.get_ext_fullpath(ext.name)), BUILD_INFO)]
            if getattr(self, "_into_source", False):
                targets.append(os.path.join(ROOT, "eitp_kernels", BUILD_INFO))
            try:
                with open(targets[0]) as f:
                    recorded = f.read()
            except OSError:
                recorded = None
            if recorded != text:
                # A _C built against another torch (or with other flags) must
                # not be kept because its sources are older than it.
                self.force = True
            super().build_extension(ext)
            for path in targets:
                _write_if_changed(path, text)

    return BuildExtRecordingVersions


def _extension_modules():
    """(ext_modules, cmdclass, install_requires, bdist_wheel options)."""
    if _flag("EITP_NO_EXTENSION", False):
        print("eitp_kernels: EITP_NO_EXTENSION set, building no compiled extension")
        return [], {"build_py": _BuildPyRecordingNoExtension}, ["torch>=2.4"], {}
    # CUDA_HOME must be settled before torch.utils.cpp_extension is imported:
    # it reads the variable once, at import.
    nvcc = _find_nvcc()
    try:
        import torch
    except ImportError as error:
        raise RuntimeError(
            f"eitp_kernels compiles its extension against the installed torch, and torch cannot be imported "
            f"({error}). Install torch first (README, Install: a CPU build for CPU-only machines), then "
            f"`pip install --no-build-isolation .`; or set EITP_NO_EXTENSION=1 to build without the extension."
        ) from error
    from torch.utils import cpp_extension
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
    # torch >= 2.6 defines Py_LIMITED_API (its min_supported_cpython) for
    # py_limited_api extensions; for an older torch define the same value here,
    # so the abi3 tag below always names the API the code was compiled for.
    torch_limited_api = getattr(cpp_extension, "min_supported_cpython", None)
    limited_api = int(torch_limited_api, 16) if torch_limited_api else DEFAULT_LIMITED_API
    if not torch_limited_api:
        define_macros.append(("Py_LIMITED_API", hex(DEFAULT_LIMITED_API)))
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
    build_ext = _build_ext_recording_versions(BuildExtension, torch)
    wheel_options = {"bdist_wheel": {"py_limited_api": _limited_api_tag(limited_api)}}
    return [ext], {"build_ext": build_ext}, [_torch_series_requirement(torch.__version__)], wheel_options


ext_modules, cmdclass, torch_requirement, options = _extension_modules()
setup(
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=torch_requirement + RUNTIME_DEPENDENCIES,
    options=options,
)
