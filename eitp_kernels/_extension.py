"""Loading of the compiled extension eitp_kernels._C.

Importing the stub module loads the shared library, whose static initializers
register the ``torch.ops.eitp.*`` operators. A torch extension only loads
under the torch it was compiled against, so setup.py records that torch (and
its CUDA version) in ``eitp_kernels/_build_info.py``, a plain Python file read
here *before* the library is loaded: a build that cannot load still says what
it was built for.

What happens when the extension cannot be used (decided here, read by
``eitp_kernels._backends``):

* the torch series (major.minor) differs from the one it was built against,
  or a build with CUDA kernels meets a torch with another (or no) CUDA
  version: the library is not loaded at all (loading it could crash the
  process rather than raise);
* the library fails to load for any other reason (a missing shared library,
  undefined symbols, a missing file);

then, at ``import eitp_kernels``, ONE ``ExtensionUnavailableWarning`` names
the cause and the exact command that rebuilds the extension against the
installed torch, and ``eitp_kernels.backends()`` gives the same text as the
reason ``cpp`` and ``cuda`` are unavailable. Automatic backend selection then
uses the remaining backends (``reference`` on CPU tensors; ``triton`` or
``reference`` on CUDA tensors): correct results, slower, after that warning.
An explicit ``use_backend("cpp")`` / ``EITP_BACKEND=cpp`` raises
``BackendUnavailableError`` with the same reason.

No warning when the extension was switched off on purpose: ``EITP_NO_EXTENSION=1``
at run time, or a build made with ``EITP_NO_EXTENSION=1`` (recorded in
``_build_info.py``); ``backends()`` still says why.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import shlex
import sys
import warnings

import torch

# An op every build registers; used to ask the dispatcher which device
# kernels the build contains.
_PROBE_OP = "eitp::finite_minmax"
_DISTRIBUTION = "eitp-kernels"


class ExtensionUnavailableWarning(RuntimeWarning):
    """The compiled extension was built but cannot be used with the installed torch."""


# (loaded, reason) once the import was tried. A plain global rather than
# functools.lru_cache so torch.compile traces the lookup without warnings.
_load_result: tuple[bool, str] | None = None


def load() -> tuple[bool, str]:
    """Import eitp_kernels._C once; return (loaded, reason it is not).

    The first call that fails to load warns once (ExtensionUnavailableWarning).
    """
    global _load_result
    if _load_result is None:
        _load_result = _try_import()
        loaded, reason = _load_result
        if not loaded and _warn_about(reason):
            warnings.warn(reason, ExtensionUnavailableWarning, stacklevel=2)
        for key in ("CPU", "CUDA"):
            has_device_kernels(key)  # answered now, outside any torch.compile trace
    return _load_result


def _env_disabled() -> bool:
    return os.environ.get("EITP_NO_EXTENSION", "").strip().lower() in ("1", "true", "yes", "on")


_DISABLED_AT_RUN_TIME = "extension disabled (EITP_NO_EXTENSION is set in this process); unset it to use cpp/cuda"


def _warn_about(reason: str) -> bool:
    return reason != _DISABLED_AT_RUN_TIME and not reason.startswith(_BUILT_WITHOUT)


_BUILT_WITHOUT = "installed without the compiled extension"


def _try_import() -> tuple[bool, str]:
    if _env_disabled():
        return False, _DISABLED_AT_RUN_TIME
    info = build_info()
    if info is not None and not info.get("EXTENSION_BUILT", True):
        return False, (
            f"{_BUILT_WITHOUT} (it was built with EITP_NO_EXTENSION=1); "
            f"to build it against the installed torch: {rebuild_command(info)}"
        )
    mismatch = version_mismatch(info)
    if mismatch is not None:
        return False, (
            f"eitp_kernels._C was not loaded: {mismatch}. The cpp and cuda backends are off and automatic "
            f"selection uses the reference (slow) or triton backends. Fix: rebuild it against the installed torch: "
            f"{rebuild_command(info)}"
        )
    try:
        from eitp_kernels import _C  # noqa: F401  (registers torch.ops.eitp.*)
    except (ImportError, OSError) as error:
        built_for = f" (built against torch {info['TORCH_VERSION']})" if info else ""
        cause = "is not built" if _is_missing(error) else f"failed to load{built_for}: {error}"
        return False, (
            f"eitp_kernels._C {cause}. The cpp and cuda backends are off and automatic selection uses the "
            f"reference (slow) or triton backends. Fix: build it against the installed torch "
            f"{torch.__version__}: {rebuild_command(info)}"
        )
    return True, ""


def _is_missing(error: BaseException) -> bool:
    return isinstance(error, ModuleNotFoundError) and error.name == "eitp_kernels._C"


def build_info() -> dict | None:
    """The fields setup.py recorded for this build (None when no build left any)."""
    try:
        module = importlib.import_module("eitp_kernels._build_info")
    except ImportError:
        return None
    return {name: value for name, value in vars(module).items() if name.isupper()}


def _series(version: str) -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def version_mismatch(
    info: dict | None, torch_version: str | None = None, torch_cuda: str | None | bool = False
) -> str | None:
    """Why a build recorded in ``info`` cannot load under this torch, or None.

    ``torch_version`` / ``torch_cuda`` default to the running torch (``torch_cuda``
    False means "not given"; None means a CPU build of torch).
    """
    if not info or "TORCH_VERSION" not in info:
        return None
    running = torch.__version__ if torch_version is None else torch_version
    running_cuda = torch.version.cuda if torch_cuda is False else torch_cuda
    built, built_cuda = info["TORCH_VERSION"], info.get("TORCH_CUDA_VERSION")
    if _series(built) != _series(running):
        return f"it was built against torch {built} but torch {running} is installed"
    if info.get("CUDA_SOURCES") and running_cuda != built_cuda:
        have = f"CUDA {running_cuda}" if running_cuda else "no CUDA (a CPU build)"
        return (
            f"it was built with CUDA kernels against torch {built} (CUDA {built_cuda}) "
            f"but the installed torch {running} has {have}"
        )
    return None


def rebuild_command(info: dict | None) -> str:
    """The pip command that rebuilds the extension against the installed torch."""
    pip = f"{shlex.quote(sys.executable)} -m pip install --no-build-isolation"
    source = (info or {}).get("SOURCE_DIR")
    package_dir = os.path.dirname(os.path.abspath(__file__))
    if source and os.path.isfile(os.path.join(source, "setup.py")):
        if os.path.dirname(package_dir) == os.path.abspath(source):
            # Imported from the source tree (pip install -e, or build_ext --inplace).
            return f"{pip} -e {shlex.quote(source)}"
        return f"{pip} --force-reinstall --no-deps {shlex.quote(source)}"
    if os.path.isfile(os.path.join(os.path.dirname(package_dir), "setup.py")):
        return f"{pip} -e {shlex.quote(os.path.dirname(package_dir))}"
    # Built from an sdist that is gone (PyPI, or a temporary directory).
    try:
        requirement = f"{_DISTRIBUTION}=={importlib.metadata.version(_DISTRIBUTION)}"
    except importlib.metadata.PackageNotFoundError:
        requirement = _DISTRIBUTION
    return (
        f"{pip} --force-reinstall --no-deps --no-cache-dir --no-binary {_DISTRIBUTION} {requirement} "
        f"(installed from a local sdist or checkout: give its path instead of {requirement})"
    )


# Filled once, on the first question for a key: the answer cannot change in a process. Kept
# as plain bools so that torch.compile, which traces the backend choice, reads constants:
# dynamo cannot trace torch._C._dispatch_has_kernel_for_dispatch_key (it returns a bool, no
# tensor: an error under fullgraph=True, seen with torch 2.11 on an H200). load() asks
# for both keys, and import eitp_kernels loads, so no compiled call is the first to ask.
_device_kernels: dict[str, bool] = {}


def has_device_kernels(dispatch_key: str) -> bool:
    """Whether the loaded build registered kernels for a dispatch key ("CPU", "CUDA")."""
    if dispatch_key not in _device_kernels:
        loaded, _ = load()
        _device_kernels[dispatch_key] = bool(
            loaded and torch._C._dispatch_has_kernel_for_dispatch_key(_PROBE_OP, dispatch_key))
    return _device_kernels[dispatch_key]
