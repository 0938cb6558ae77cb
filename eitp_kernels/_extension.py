"""Loading of the compiled extension eitp_kernels._C.

Importing the stub module loads the shared library, whose static initializers
register the ``torch.ops.eitp.*`` operators. A missing or broken build is not
an error here: the package then runs on the reference and Triton backends and
``eitp_kernels.backends()`` says why the compiled ones are missing.
"""
from __future__ import annotations

import os

import torch

# An op every build registers; used to ask the dispatcher which device
# kernels the build contains.
_PROBE_OP = "eitp::finite_minmax"


# (loaded, reason) once the import was tried. A plain global rather than
# functools.lru_cache so torch.compile traces the lookup without warnings.
_load_result: tuple[bool, str] | None = None


def load() -> tuple[bool, str]:
    """Import eitp_kernels._C once; return (loaded, reason it is not)."""
    global _load_result
    if _load_result is None:
        _load_result = _try_import()
    return _load_result


def _try_import() -> tuple[bool, str]:
    if os.environ.get("EITP_NO_EXTENSION", "").strip().lower() in ("1", "true", "yes", "on"):
        return False, "extension disabled (EITP_NO_EXTENSION is set)"
    try:
        from eitp_kernels import _C  # noqa: F401  (registers torch.ops.eitp.*)
    except ImportError as error:
        return False, f"extension not built or not loadable ({error}); reinstall without EITP_NO_EXTENSION"
    return True, ""


def has_device_kernels(dispatch_key: str) -> bool:
    """Whether the loaded build registered kernels for a dispatch key ("CPU", "CUDA")."""
    loaded, _ = load()
    return loaded and torch._C._dispatch_has_kernel_for_dispatch_key(_PROBE_OP, dispatch_key)
