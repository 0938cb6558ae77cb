"""Input checks shared by every public op.

Each check raises ``TypeError`` (wrong type or dtype) or ``ValueError`` (wrong
value, rank, shape or device) with a message that names the op, the argument
and what was wrong. Checks only read shapes, dtypes and Python values: none of
them looks at tensor contents, so none of them syncs with the device.
"""
from __future__ import annotations

import math
import numbers
from typing import Iterable, Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
CODE_DTYPES = (torch.int8, torch.uint8)


def _dtype_names(dtypes: Iterable[torch.dtype]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def check_tensor(
    op: str,
    name: str,
    value,
    *,
    dtypes: Sequence[torch.dtype] = FLOAT_DTYPES,
    min_dim: int = 0,
    max_dim: int | None = None,
    allow_empty: bool = False,
) -> torch.Tensor:
    """A tensor of one of ``dtypes``, with min_dim <= ndim <= max_dim, non-empty unless allowed."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in dtypes:
        raise TypeError(f"{op}: {name} must have dtype in ({_dtype_names(dtypes)}), got {_dtype_names([value.dtype])}")
    if value.dim() < min_dim or (max_dim is not None and value.dim() > max_dim):
        expected = f"at least {min_dim}" if max_dim is None else (
            f"{min_dim}" if min_dim == max_dim else f"{min_dim} to {max_dim}")
        raise ValueError(f"{op}: {name} must have {expected} dimensions, got shape {tuple(value.shape)}")
    if not allow_empty and value.numel() == 0:
        raise ValueError(f"{op}: {name} is empty (shape {tuple(value.shape)}); it needs at least one element")
    return value


def check_same_device(op: str, name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.device != b.device:
        raise ValueError(f"{op}: {name_a} is on {a.device} but {name_b} is on {b.device}; they must share a device")


def check_bool(op: str, name: str, value) -> bool:
    """A Python bool (not an int, not a 0-d tensor)."""
    if not isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be a bool, got {type(value).__name__}")
    return value


def check_process_group(op: str, process_group) -> None:
    """None or a ``torch.distributed.ProcessGroup``."""
    if process_group is None:
        return
    import torch.distributed as dist

    if not (dist.is_available() and isinstance(process_group, dist.ProcessGroup)):
        raise TypeError(f"{op}: process_group must be None or a torch.distributed.ProcessGroup, "
                        f"got {type(process_group).__name__}")


def check_int(op: str, name: str, value, *, minimum: int | None = None) -> int:
    """A Python int (not bool) >= minimum."""
    if type(value) is int:  # the common case, without the ABC check below (1.5 us of a 20 us call)
        if minimum is not None and value < minimum:
            raise ValueError(f"{op}: {name} must be >= {minimum}, got {value}")
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value}")
    return int(value)


def check_float(op: str, name: str, value, *, positive: bool = False, non_negative: bool = False) -> float:
    """A finite real Python number (ints allowed), optionally > 0 or >= 0."""
    if type(value) is not float and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
        raise TypeError(f"{op}: {name} must be a real number, got {type(value).__name__}")
    value = float(value)
    # a comparison, not math.isfinite: under torch.compile(dynamic=True) dynamo turns
    # math.isfinite of a float argument into a torch op returning a bool, an error with
    # fullgraph=True (torch 2.14); NaN fails both comparisons, as it fails isfinite
    if not -math.inf < value < math.inf:
        raise ValueError(f"{op}: {name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{op}: {name} must be > 0, got {value}")
    if non_negative and value < 0:
        raise ValueError(f"{op}: {name} must be >= 0, got {value}")
    return value


def check_dim(op: str, name: str, dim, ndim: int) -> int:
    """A dimension index valid for a tensor of ``ndim`` dims, normalized to >= 0."""
    dim = check_int(op, name, dim)
    if ndim == 0 or not -ndim <= dim < ndim:
        raise ValueError(f"{op}: {name}={dim} is out of range for a tensor with {ndim} dimensions")
    return dim % ndim


def check_choice(op: str, name: str, value, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{op}: {name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_range(op: str, name: str, value, *, allow_tensors: bool = False):
    """None, or a (lo, hi) pair of finite numbers with lo < hi.

    With ``allow_tensors``, either bound may also be a 0-d real tensor on any
    device (as ``torch.histc`` takes ``x.min()``); it is returned as is, and
    lo < hi and finiteness are then the op's to enforce on the device (reading
    the values here would sync with the device).
    """
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{op}: {name} must be None or a (lo, hi) pair, got {value!r}")
    bounds = []
    for i, v in enumerate(value):
        if allow_tensors and isinstance(v, torch.Tensor):
            if v.dim() != 0:
                raise ValueError(f"{op}: {name}[{i}] must be a number or a 0-d tensor, got a tensor of shape "
                                 f"{tuple(v.shape)}")
            if v.dtype == torch.bool or v.dtype.is_complex:
                raise TypeError(f"{op}: {name}[{i}] must be a real tensor, got dtype {_dtype_names([v.dtype])}")
            if v.device.type == "meta":
                raise ValueError(f"{op}: {name}[{i}] is on the meta device (it holds no value)")
            bounds.append(v)
        elif allow_tensors and not isinstance(v, bool) and not isinstance(v, numbers.Real):
            raise TypeError(f"{op}: {name}[{i}] must be a real number or a 0-d tensor, got {type(v).__name__}")
        else:
            bounds.append(check_float(op, f"{name}[{i}]", v))
    lo, hi = bounds
    if not isinstance(lo, torch.Tensor) and not isinstance(hi, torch.Tensor) and not lo < hi:
        raise ValueError(f"{op}: {name} must have lo < hi, got ({lo}, {hi})")
    return lo, hi


def range_has_tensor(rng) -> bool:
    """Whether a checked range holds a tensor bound (so its values are only known on the device)."""
    return rng is not None and any(isinstance(v, torch.Tensor) for v in rng)


def check_group_size(op: str, group_size, last_dim: int) -> int:
    group_size = check_int(op, "group_size", group_size, minimum=1)
    if last_dim % group_size != 0:
        raise ValueError(
            f"{op}: group_size={group_size} does not divide the last dimension ({last_dim}); "
            "groups run along the last dimension"
        )
    return group_size
