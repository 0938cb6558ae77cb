"""Backends and how a call picks one.

Four backends: ``reference`` (eager PyTorch, any device), ``cpp`` (the
compiled extension, CPU tensors), ``cuda`` (the compiled extension, CUDA
tensors) and ``triton`` (Triton kernels: CUDA tensors, or CPU tensors under
Triton's interpreter when TRITON_INTERPRET=1 was set before triton was
imported).

Choice, first match wins:
1. ``with eitp_kernels.use_backend("triton"): ...`` (per call site, per
   thread/async task: a context variable, never a module global);
2. the environment variable ``EITP_BACKEND`` (read at call time);
3. the op's own preference for the tensor's device among what is available.
Asking for a backend that is unavailable, or that the op does not implement,
or that cannot run the tensor's device, raises ``BackendUnavailableError``:
there is no silent fallback.

When the compiled extension was built but cannot be used (built against
another torch series or CUDA version, or its library fails to load; see
``eitp_kernels._extension``), ``import eitp_kernels`` emits one
``ExtensionUnavailableWarning`` naming the cause and the pip command that
rebuilds it, and ``backends()`` reports the same text for ``cpp`` and
``cuda``. Automatic choice (3.) then picks among the remaining backends
(``reference`` for CPU tensors, so those calls run the eager reference:
correct, slower); choices 1. and 2. naming ``cpp`` or ``cuda`` raise
``BackendUnavailableError`` with that reason.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import os
import re
import warnings
from typing import Iterator, Mapping, Sequence

import torch

from eitp_kernels import _extension

BACKEND_NAMES = ("reference", "cpp", "cuda", "triton")
# Backends per device type, best first: every op implements all four (the
# ops pass it to resolve(); the benchmark suites list what they time from it).
IMPLEMENTED = {"cpu": ("cpp", "triton", "reference"), "cuda": ("cuda", "triton", "reference")}
ENV_VARIABLE = "EITP_BACKEND"

_requested: contextvars.ContextVar[str | None] = contextvars.ContextVar("eitp_backend", default=None)
# What torch.compile reads instead of _requested: dynamo before torch 2.14 cannot trace
# ContextVar.get (a graph break, an error under fullgraph=True; seen with torch 2.11), while
# it guards a module global, so a compiled function recompiles when the choice changes.
# Process-wide: compiled code in two threads inside different use_backend blocks at once
# sees the one entered last.
_requested_while_compiling: str | None = None


class BackendUnavailableError(RuntimeError):
    """A backend was asked for that cannot run this call."""


@dataclasses.dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    devices: tuple[str, ...]  # device types it runs on here
    reason: str  # why it is unavailable, or a note on how it runs

    def __str__(self) -> str:
        state = "available" if self.available else "unavailable"
        where = f" on {', '.join(self.devices)}" if self.devices else ""
        return f"{self.name}: {state}{where}" + (f" ({self.reason})" if self.reason else "")


TRITON_MISSING = ("triton is not installed (a CUDA build of torch brings it; "
                  "otherwise pip install 'eitp-kernels[gpu]')")

# The first Triton whose tl.histogram (the histogram kernels' block-local counts)
# compiles to one shared-memory increment per element. Triton 3.6 and 3.7 lower it
# to warp ballots and popcounts: about 105 instructions per element at 256 bins for
# sm_90, 2.7-7x the issue budget of a memory-bound pass (docs/design.md §2.1, §7).
FAST_HISTOGRAM_TRITON = (3, 8)


class SlowTritonHistogramWarning(UserWarning):
    """The installed triton is older than FAST_HISTOGRAM_TRITON: the Triton histogram
    kernels stay exact but run several times slower than memory."""


def triton_histogram_note(version: str) -> str:
    """"" for a triton whose tl.histogram is memory-bound, else why and what to do.

    ``version`` is triton's version string ("3.7.1", "3.8.0+git1234"); one that
    does not start with two numbers is taken as new (a development build)."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None or (int(match[1]), int(match[2])) >= FAST_HISTOGRAM_TRITON:
        return ""
    needed = ".".join(map(str, FAST_HISTOGRAM_TRITON))
    return (f"triton {version} lowers tl.histogram to warp ballots (about 105 instructions per element): "
            f"the Triton histogram kernels are exact but several times slower than memory; triton>={needed} "
            "(torch>=2.14) or the cuda backend is the fast path")


def triton_interpreter_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0")


_triton_status_cache: list[BackendStatus] = []  # filled once; see _extension.load on why not lru_cache


def _triton_status() -> BackendStatus:
    if not _triton_status_cache:
        _triton_status_cache.append(_probe_triton())
    return _triton_status_cache[0]


def _probe_triton() -> BackendStatus:
    """The triton backend's status. Imports triton (and defines the Triton ops,
    _registration.define_triton_ops) only where the backend can run: never on a
    CPU-only machine without TRITON_INTERPRET=1."""
    from eitp_kernels import _registration  # it imports this module

    if not _registration.triton_installed():
        return BackendStatus("triton", False, (), TRITON_MISSING)
    if triton_interpreter_requested():
        devices = ("cpu",)
    elif torch.cuda.is_available():
        devices = ("cuda",)
    else:
        return BackendStatus(
            "triton", False, (), "no GPU; set TRITON_INTERPRET=1 before importing triton to run its kernels interpreted"
        )
    try:
        _registration.define_triton_ops()
    except ImportError as error:
        return BackendStatus("triton", False, (), f"triton cannot be imported ({error})")
    if devices == ("cpu",):
        return BackendStatus("triton", True, devices, "interpreter only (TRITON_INTERPRET=1): correct but slow")
    import triton

    note = triton_histogram_note(triton.__version__)
    if note:
        warnings.warn(note, SlowTritonHistogramWarning, stacklevel=2)
    return BackendStatus("triton", True, devices, note)


def _status(name: str) -> BackendStatus:
    if name == "reference":
        return BackendStatus("reference", True, ("cpu", "cuda"), "eager PyTorch")
    if name == "triton":
        return _triton_status()
    loaded, why = _extension.load()
    if not loaded:
        return BackendStatus(name, False, (), why)
    if name == "cpp":
        return BackendStatus("cpp", True, ("cpu",), "")
    if not _extension.has_device_kernels("CUDA"):
        return BackendStatus("cuda", False, (), "extension built without CUDA sources (torch without CUDA, or no nvcc)")
    if not torch.cuda.is_available():
        return BackendStatus("cuda", False, (), "built with CUDA kernels, but no CUDA device is present")
    return BackendStatus("cuda", True, ("cuda",), "")


def backends() -> dict[str, BackendStatus]:
    """Each backend's availability here, with the reason when unavailable."""
    return {name: _status(name) for name in BACKEND_NAMES}


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Run the ops inside the block on backend ``name`` (None: automatic choice)."""
    if name is not None and name not in BACKEND_NAMES:
        raise ValueError(f"use_backend: unknown backend {name!r}; expected one of {BACKEND_NAMES} or None")
    global _requested_while_compiling
    token, outer = _requested.set(name), _requested_while_compiling
    _requested_while_compiling = name
    try:
        yield
    finally:
        _requested.reset(token)
        _requested_while_compiling = outer


def requested_backend() -> str | None:
    """The backend asked for by use_backend or EITP_BACKEND, or None for automatic."""
    name = _requested_while_compiling if torch.compiler.is_compiling() else _requested.get()
    if name is not None:
        return name
    # While tracing, os.environ.get: dynamo would guard a read of os.environ's mapping, and
    # the README promises EITP_BACKEND is read when a function is traced, not guarded.
    env = os.environ.get(ENV_VARIABLE, "") if torch.compiler.is_compiling() else _environment_value()
    if not env:
        return None
    env = env.strip().lower()
    if env in ("", "auto"):
        return None
    if env not in BACKEND_NAMES:
        raise ValueError(f"{ENV_VARIABLE}={env!r} is not a backend; expected one of {BACKEND_NAMES} or 'auto'")
    return env


def _environment_value() -> str:
    """EITP_BACKEND's value now ("" when unset). os.environ's mapping read directly: its
    get() raises and catches a KeyError for an unset variable (1.4 us, a third of a
    resolve() call); os.environ's setters and deleters keep ``_data`` current."""
    data = getattr(os.environ, "_data", None)
    if data is None or _ENV_KEY is None:
        return os.environ.get(ENV_VARIABLE, "")
    value = data.get(_ENV_KEY)
    return "" if value is None else os.environ.decodevalue(value)


try:
    _ENV_KEY = os.environ.encodekey(ENV_VARIABLE)
except AttributeError:  # not CPython's os._Environ
    _ENV_KEY = None


# (op, device type, requested backend, id(implemented)) -> the backend chosen: every
# status it depends on is fixed for the life of the process, so each decision is
# made once per call site rather than per call (9 us of a 53 us finite_minmax call
# on 64 elements, by timeit on this machine under load).
_resolved: dict[tuple, str] = {}


def resolve(op_name: str, device: torch.device, implemented: Mapping[str, Sequence[str]]) -> str:
    """Pick the backend for one call.

    ``implemented`` maps device type -> the op's backends for it, best first
    (for example ``{"cpu": ("cpp", "reference"), "cuda": ("cuda", "triton", "reference")}``).
    """
    requested = requested_backend()
    if torch.compiler.is_compiling():
        # Traced once per graph: a lookup in _resolved would become a guard on its contents,
        # and filling it on the first call would fail that guard and trace again.
        return _resolve(op_name, device.type, requested, implemented)
    key = (op_name, device.type, requested, id(implemented))
    chosen = _resolved.get(key)
    if chosen is None:
        chosen = _resolved[key] = _resolve(op_name, device.type, requested, implemented)
    return chosen


def _resolve(op_name: str, device_type: str, requested: str | None, implemented: Mapping[str, Sequence[str]]) -> str:
    if requested is not None:
        status = _status(requested)
        if requested not in implemented.get(device_type, ()) and requested not in _any_device(implemented):
            have = sorted(_any_device(implemented))
            raise BackendUnavailableError(f"{op_name}: no {requested!r} implementation (implemented: {', '.join(have)})")
        if not status.available:
            raise BackendUnavailableError(f"{op_name}: backend {requested!r} is unavailable: {status.reason}")
        if device_type not in status.devices or requested not in implemented.get(device_type, ()):
            raise BackendUnavailableError(
                f"{op_name}: backend {requested!r} cannot run tensors on {device_type!r} here ({status})"
            )
        return requested
    for name in implemented.get(device_type, ()):
        # Interpreted Triton is a test vehicle, never an automatic choice.
        if name == "triton" and device_type == "cpu":
            continue
        status = _status(name)
        if status.available and device_type in status.devices:
            return name
    raise BackendUnavailableError(f"{op_name}: no available backend for tensors on {device_type!r}; {backends()}")


def _any_device(implemented: Mapping[str, Sequence[str]]) -> set[str]:
    return {name for names in implemented.values() for name in names}


def op_caller(namespace: str, name: str):
    """A function calling ``torch.ops.<namespace>.<name>``, looked up at its first call: an
    op exists only where its backend is built (the extension) or registered (Triton), so
    the ops' dispatch tables cannot hold the op itself.

    In a plain eager call (:func:`_plain_eager`: not traced, no mode or functorch
    transform active, plain tensors none of which needs a gradient) it skips the
    dispatch layers that would do nothing: an ``eitp_triton::`` op calls its launcher
    (``_triton.run_direct``: what the op's eager body does, without the custom-op
    dispatch around it), and an op with a Python autograd formula is called below the
    Autograd key (what torch.library's autograd kernel does when no input needs a
    gradient, without that Python kernel). On 64 elements, Triton launches taken over
    (``python -m eitp_kernels.bench --host``, this 2-core machine): the Triton
    ``finite_minmax`` op 24.6 us through the dispatcher, 12.8 us its launcher alone; the
    compiled ``fake_quant_int8_rows`` 7.6 us, 3.8 us below Autograd.
    """
    bound = []  # (op, launcher or None, whether the op's autograd formula is Python)

    def bind():
        from eitp_kernels import _registration

        op = getattr(getattr(torch.ops, namespace), name).default
        launcher = _registration.triton_launchers.get(name) if namespace == _registration.TRITON else None
        if launcher is not None:
            from eitp_kernels._triton import run_direct  # imports triton: only once Triton ops exist

            launcher = functools.partial(run_direct, launcher)
        bound.append((op, launcher, f"{namespace}::{name}" in _registration.python_autograd))

    def call(*args):
        if torch.compiler.is_compiling():  # as in resolve: no guard on a list filled by the first call
            return getattr(getattr(torch.ops, namespace), name).default(*args)
        if not bound:
            bind()
        op, launcher, python_autograd = bound[0]
        if (launcher is not None or python_autograd) and _plain_eager(args):
            if launcher is not None:
                return launcher(args)
            with _below_autograd():
                return op(*args)
        return op(*args)

    call.__name__ = call.__qualname__ = f"{namespace}::{name}"
    return call


def _plain_eager(args: tuple) -> bool:
    """Whether an op call with ``args`` (outside dynamo tracing: op_caller checks) is plain
    eager: not run under torch.compile's frame evaluation, no torch function or dispatch mode and no functorch
    transform active, every tensor (also inside a list) a plain ``torch.Tensor`` and none
    needing a gradient. Such a call gets nothing from the dispatcher's Python layers."""
    if not no_layers_active():
        return False
    grad = torch.is_grad_enabled()
    for arg in args:
        if type(arg) is torch.Tensor:
            if grad and arg.requires_grad:
                return False
        elif isinstance(arg, (list, tuple)):
            if not _plain_eager_list(arg, grad):
                return False
        elif isinstance(arg, torch.Tensor):  # a subclass
            return False
    return True


def no_layers_active() -> bool:
    """Whether nothing would wrap an op call: the probes exist on this torch, and no
    torch.compile frame evaluation, torch function or dispatch mode or functorch
    transform is active (the tensors themselves are the caller's to check)."""
    return bool(_EAGER_PROBES) and not (_eval_frame_callback() is not None or _dispatch_mode_depth()
                                        or _torch_function_mode() or _functorch_layer() is not None)


def _plain_eager_list(values, grad: bool) -> bool:
    for value in values:
        if isinstance(value, torch.Tensor) and (type(value) is not torch.Tensor or (grad and value.requires_grad)):
            return False
    return True


def _eager_probes():
    """The state probes _plain_eager reads, or None where this torch lacks one (then no call
    skips a layer)."""
    try:
        return (torch._C._dynamo.eval_frame.get_eval_frame_callback, torch._C._len_torch_dispatch_stack,
                torch._C._is_torch_function_mode_enabled, torch._C._functorch.peek_interpreter_stack,
                torch._C._AutoDispatchBelowAutograd)
    except AttributeError:
        return None


_EAGER_PROBES = _eager_probes()
if _EAGER_PROBES:
    _eval_frame_callback, _dispatch_mode_depth, _torch_function_mode, _functorch_layer, _below_autograd = \
        _EAGER_PROBES
