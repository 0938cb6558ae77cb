"""Optional import of Triton.

Triton is a Linux-only dependency; where it is missing the ops still work on
their other backends. Kernels are decorated with ``triton_jit`` so the op
modules import without Triton.
"""
from __future__ import annotations

try:
    import triton
    import triton.language as tl

    TRITON_IMPORT_ERROR = None
except ImportError as error:  # pragma: no cover - exercised only where triton is absent
    import types

    triton = None
    # Only what kernel signatures mention at definition time.
    tl = types.SimpleNamespace(constexpr=object)
    TRITON_IMPORT_ERROR = error


def triton_jit(fn):
    """``triton.jit`` where Triton is installed, otherwise the plain function (never launched)."""
    return triton.jit(fn) if triton is not None else fn
