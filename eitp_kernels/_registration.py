"""One registration per op for both of its custom-op namespaces.

Every op with a compiled kernel ``eitp::<name>`` (schema and kernels in
csrc/bindings) has a Triton twin ``eitp_triton::<name>`` of the same name,
defined here from its launcher in :mod:`eitp_kernels.triton` (the launcher's
annotations give its schema). :func:`register` gives both the one fake kernel
and the one autograd formula an op module writes for it: ``eitp`` when the
extension is loaded, ``eitp_triton`` when triton is importable.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable

import torch

from eitp_kernels import _backends, _extension
from eitp_kernels._triton import triton

COMPILED = "eitp"
TRITON = "eitp_triton"


def register(name: str, launcher: Callable | None, fake: Callable, *, compiled_fake: Callable | None = None,
             autograd: tuple[Callable, Callable] | None = None, tags: tuple = ()) -> None:
    """Register op ``name`` in every namespace that exists here.

    ``launcher``: the Triton implementation (None where the op has no Triton
    twin); ``fake``: shapes and dtypes of the outputs, for both namespaces
    (``compiled_fake`` instead for ``eitp`` where the compiled schema has more
    than the Triton one); ``autograd``: ``(setup_context, backward)``, where
    ``backward(ops, ctx, *grads)`` gets the namespace's ops (``torch.ops.eitp``
    or ``torch.ops.eitp_triton``) to call its backward op; ``tags``: the
    Triton op's tags (the compiled op's come from its C++ schema).
    """
    if _extension.load()[0]:
        torch.library.register_fake(f"{COMPILED}::{name}", compiled_fake or fake)
        _register_autograd(COMPILED, name, autograd)
    if triton is not None and launcher is not None:
        _define_triton_op(name, launcher, fake, tags)
        _register_autograd(TRITON, name, autograd)


def _register_autograd(namespace: str, name: str, autograd) -> None:
    if autograd is None:
        return
    setup_context, backward = autograd
    ops = getattr(torch.ops, namespace)  # resolved at backward time: the backward op may be registered later
    torch.library.register_autograd(f"{namespace}::{name}", functools.partial(backward, ops),
                                    setup_context=setup_context)


def _traced(tags: tuple) -> bool:
    """Whether the Triton op is a ``triton_op`` (torch.compile traces into its
    kernels) rather than an opaque ``custom_op``. Opaque under the interpreter:
    tracing a triton_op's body (AOTAutograd, opcheck) runs it on fake tensors,
    and interpreted kernels cannot launch on them. Opaque when tagged
    cudagraph_unsafe: traced into, the graph would lose the op and its tag."""
    return not _backends.triton_interpreter_requested() and torch.Tag.cudagraph_unsafe not in tags


def _define_triton_op(name: str, launcher: Callable, fake: Callable, tags: tuple) -> None:
    qualname = f"{TRITON}::{name}"
    schema = torch.library.infer_schema(launcher, mutates_args=())
    if _traced(tags):
        op = torch.library.triton_op(qualname, launcher, mutates_args=(), schema=schema)
    else:
        direct_launches = _direct_launches()

        def run(*args, **kwargs):
            # Launch the kernels directly, as a triton_op does outside tracing
            # (_triton.launch wraps them for tracing).
            with direct_launches():
                return launcher(*args, **kwargs)

        op = torch.library.custom_op(qualname, run, mutates_args=(), schema=schema, tags=tags)
    op.register_fake(fake)  # the explicit fake in both cases (a triton_op's default is its traced body)


def _direct_launches() -> Callable:
    """A context in which wrap_triton kernels launch directly: torch's
    private switch where this torch has it; elsewhere a no-op, and the
    kernels go through the higher-order op (same result, about 1 ms slower
    per launch by torch's own note on the switch)."""
    try:
        from torch._library.triton import set_wrap_triton_enabled
    except ImportError:
        return contextlib.nullcontext
    return functools.partial(set_wrap_triton_enabled, False)
