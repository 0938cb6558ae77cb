"""One registration per op for both of its custom-op namespaces.

Every op with a compiled kernel ``eitp::<name>`` (schema and kernels in
csrc/bindings) has a Triton twin ``eitp_triton::<name>`` of the same name,
defined here from its launcher in :mod:`eitp_kernels.triton` (the launcher's
annotations give its schema). :func:`register` gives both the one fake kernel
and the one autograd formula an op module writes for it: ``eitp`` when the
extension is loaded, ``eitp_triton`` once the Triton backend is wanted.

The Triton twins are defined lazily (:func:`define_triton_ops`): importing
triton, the kernel modules and ``torch.library.triton_op`` (which imports
torch._inductor) costs about as much as importing torch, and a CPU-only
machine never runs them. They are defined when the triton backend is found
available (``_backends``: a CUDA device, or ``TRITON_INTERPRET=1``, which
defines them at import), or when a caller asks (``define_triton_ops()``).
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
from typing import Callable

import torch

from eitp_kernels import _backends, _extension

COMPILED = "eitp"
TRITON = "eitp_triton"
TRITON_PACKAGE = "eitp_kernels.triton"

# (name, launcher path, fake, tags, autograd) of the Triton twins registered and not yet defined.
_pending_triton_ops: list[tuple] = []
_triton_defined = [False]  # whether define_triton_ops ran (later registrations define at once)
# What _backends.op_caller reads to skip dispatch layers in plain eager calls: each defined
# eitp_triton:: op's launcher (by name), and the ops whose autograd formula is Python
# ("namespace::name": their Autograd kernel is torch.library's, a Python function).
triton_launchers: dict[str, Callable] = {}
python_autograd: set[str] = set()


def register(name: str, launcher: str | None, fake: Callable, *,
             autograd: tuple[Callable, Callable] | None = None, tags: tuple = (), compiled: bool = True) -> None:
    """Register op ``name`` in every namespace that exists here.

    ``launcher``: the Triton implementation as ``"<module>.<function>"`` in
    :mod:`eitp_kernels.triton` (imported only when the Triton ops are
    defined; None where the op has no Triton twin); ``fake``: shapes and dtypes of the outputs, for both namespaces
    (the two schemas are the same); ``autograd``: ``(setup_context, backward)``, where
    ``backward(ops, ctx, *grads)`` gets the namespace's ops (``torch.ops.eitp``
    or ``torch.ops.eitp_triton``) to call its backward op; ``tags``: the
    Triton op's tags (the compiled op's come from its C++ schema);
    ``compiled=False``: an op with no ``eitp::`` kernel (Triton and eager only).
    """
    if compiled and _extension.load()[0]:
        torch.library.register_fake(f"{COMPILED}::{name}", fake)
        _register_autograd(COMPILED, name, autograd)
    if launcher is None:
        return
    _pending_triton_ops.append((name, launcher, fake, tags, autograd))
    if _triton_defined[0] or _backends.triton_interpreter_requested():
        # TRITON_INTERPRET=1 asks for the Triton kernels on CPU tensors: define them now.
        define_triton_ops()


def triton_installed() -> bool:
    """Whether the triton package can be imported (found without importing it)."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):
        return False


def define_triton_ops() -> bool:
    """Define every ``eitp_triton::`` op registered so far (and those registered
    later, as they are); imports triton and :mod:`eitp_kernels.triton`. Returns
    False, defining nothing, where triton is not installed. Idempotent."""
    if not triton_installed():
        return False
    _triton_defined[0] = True
    while _pending_triton_ops:
        name, launcher, fake, tags, autograd = _pending_triton_ops.pop(0)
        _define_triton_op(name, _import_launcher(launcher), fake, tags)
        _register_autograd(TRITON, name, autograd)
    return True


# torch.compile runs it as it is rather than tracing it (as torch.compiler.assume_constant_result
# would, without importing torch._dynamo here): a function compiled before any eager call may be
# where the Triton backend is first found available, and dynamo cannot trace imports and op
# registrations (tests/test_import.py).
define_triton_ops._dynamo_marked_constant = True


def _import_launcher(path: str) -> Callable:
    module, function = path.rsplit(".", 1)
    return getattr(importlib.import_module(f"{TRITON_PACKAGE}.{module}"), function)


def _register_autograd(namespace: str, name: str, autograd) -> None:
    if autograd is None:
        return
    setup_context, backward = autograd
    python_autograd.add(f"{namespace}::{name}")
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
    triton_launchers[name] = launcher


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
