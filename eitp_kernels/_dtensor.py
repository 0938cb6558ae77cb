"""DTensor inputs for every public op (docs/design.md §3.3): one mechanism.

Each public op starts with a hook, ``if _dtensor.holds_dtensor(x): return
_dtensor.<op>(...)``. The functions here run the same public op on each
rank's local shard (a plain tensor) and reduce over the device mesh only what
the shards cannot give on their own:

* ``histogram_entropy``: the local shard with ``process_group`` = the sharded
  mesh dimension's group (the range all-reduced MIN/MAX, the counts SUM), when
  the reduced elements are split across ranks; locally otherwise.
  ``histogram_entropy_many``: the same reductions, one collective for all
  ranges and one for all counts.
* ``finite_minmax``: the local min/max, all-reduced (MIN) when split.
* quantize / fake-quant: locally when every scale's elements (a tensor, a
  channel, a group) stay on one rank; when the sharded dimension splits them
  (per tensor; per channel sharded along another dim), each scale's finite
  range is all-reduced (MIN/MAX, one collective) and the local shard is
  quantized with that global scale as a static one: the codes are those of
  the full tensor bit for bit (``_layout.int8_params_from_range`` is the
  scale arithmetic of every backend). A sharded last dim whose shards do not
  hold whole groups is a ValueError. Dequantize: locally with each shard's
  scales.
* ``coherence_loss``: Shard(0) (the batch) through the ``process_group``
  path, Replicate() locally; any other placement is a ValueError naming it.

Outputs are DTensors on the input's mesh: elementwise outputs (codes,
fake-quant, dequantize) sharded like the input; scales sharded where their
dimension follows the input's shard, else replicated; per-slice reductions
(``dim``) sharded along the surviving dim, full reductions replicated.
Gradients (fake-quant, differentiable entropy, coherence) flow through
``to_local`` / ``from_local``; where a reduction spans the ranks they follow
``process_group``'s DDP convention (each rank's shard receives
``mesh size * dL/dshard``, which the data-parallel average over ranks turns
into the full tensor's gradient).

Placements: Shard(d) on at most one mesh dimension (the others Replicate());
Partial and several sharded mesh dimensions raise a ValueError naming the
placements. Shards may be uneven (``torch.chunk`` sizes, as DTensor).
``torch.distributed.tensor`` is never imported here: a DTensor can only exist
once its module is loaded, so ``is_dtensor`` looks it up in ``sys.modules``.
"""
from __future__ import annotations

import dataclasses
import math
import sys

import torch

from eitp_kernels import _layout, _validation


# Types that are never DTensors: the hooks' fast path, 0.13 us per is_dtensor(plain tensor) instead of
# 0.58 us through sys.modules and isinstance (python -m timeit -s "import torch; from eitp_kernels
# import _dtensor; x = torch.ones(3)" "_dtensor.is_dtensor(x)").
_PLAIN_TYPES = frozenset({torch.Tensor, torch.nn.Parameter, type(None), bool, int, float, str})


def is_dtensor(value) -> bool:
    """Whether ``value`` is a ``torch.distributed.tensor.DTensor`` (never imports that module)."""
    if type(value) in _PLAIN_TYPES:
        return False
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(value, module.DTensor)


def holds_dtensor(*values) -> bool:
    """Whether any value, or any element of a list/tuple value, is a DTensor."""
    for value in values:
        if type(value) in _PLAIN_TYPES:
            continue
        if isinstance(value, (list, tuple)):
            if any(is_dtensor(v) for v in value):
                return True
        elif is_dtensor(value):
            return True
    return False


def full(value):
    """The full tensor of a DTensor (a collective for a sharded one), anything else as it is."""
    return value.full_tensor() if is_dtensor(value) else value


def replicate_like(value: torch.Tensor, like) -> torch.Tensor:
    """``value`` (the same on every rank) as a replicated DTensor on ``like``'s mesh when ``like`` is a
    DTensor, so the two combine; else ``value`` as it is."""
    if not is_dtensor(like):
        return value
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(value, like.device_mesh, _replicated(like.device_mesh), run_check=False)


def writes_files(values) -> bool:
    """False on every rank but global rank 0 when ``values`` hold a DTensor (one rank writes a shared
    file); True otherwise."""
    if not any(is_dtensor(v) for v in values):
        return True
    import torch.distributed as dist

    return dist.get_rank() == 0


def shard_like(state: dict, like: dict) -> dict:
    """``state`` (full tensors, the same on every rank) with each entry whose ``like`` counterpart is a
    DTensor replaced by this rank's shard of it, placed as that counterpart (no communication)."""
    from torch.distributed.tensor import distribute_tensor

    out = dict(state)
    for key, value in state.items():
        target = like.get(key)
        if is_dtensor(target) and isinstance(value, torch.Tensor) and not is_dtensor(value):
            out[key] = distribute_tensor(value.to(target.device), target.device_mesh, target.placements,
                                         src_data_rank=None)
    return out


# --------------------------------------------------------------------------
# Placements
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Sharding:
    """A DTensor's mesh and placements, reduced to the one mesh dim that shards it (if any)."""
    mesh: object
    placements: tuple
    mesh_dim: int | None  # the mesh dim with a Shard placement, None when replicated
    dim: int | None  # the tensor dim it shards
    shape: tuple  # the global shape

    @property
    def ranks(self) -> int:
        return 1 if self.mesh_dim is None else self.mesh.size(self.mesh_dim)

    @property
    def group(self):
        return None if self.mesh_dim is None else self.mesh.get_group(self.mesh_dim)

    def shard_range(self) -> tuple[int, int]:
        """(offset, size) of this rank's shard along ``dim`` (``torch.chunk`` sizes, as DTensor's Shard)."""
        n = self.shape[self.dim]
        chunk = -(-n // self.ranks)
        offset = min(self.mesh.get_local_rank(self.mesh_dim) * chunk, n)
        return offset, min(chunk, n - offset)

    def shard_sizes(self) -> list[int]:
        n = self.shape[self.dim]
        chunk = -(-n // self.ranks)
        return [max(0, min(chunk, n - r * chunk)) for r in range(self.ranks)]


def _sharding(op: str, name: str, t) -> _Sharding:
    from torch.distributed.tensor import Replicate, Shard

    placements = tuple(t.placements)
    sharded = []
    for mesh_dim, p in enumerate(placements):
        if type(p) is Shard:
            sharded.append((mesh_dim, p.dim % max(t.dim(), 1)))
        elif not isinstance(p, Replicate):
            raise ValueError(f"{op}: {name} has placement {p} on mesh dim {mesh_dim} (placements {placements}); "
                             f"DTensor inputs must be Shard(d) or Replicate(): redistribute it first, e.g. "
                             f"{name}.redistribute(mesh, [Replicate()])")
    if len(sharded) > 1:
        raise ValueError(f"{op}: {name} is sharded on {len(sharded)} mesh dims (placements {placements}); DTensor "
                         "inputs may be sharded on one mesh dim only: redistribute the others to Replicate()")
    mesh_dim, dim = sharded[0] if sharded else (None, None)
    return _Sharding(t.device_mesh, placements, mesh_dim, dim, tuple(t.shape))


def _check_same_sharding(op: str, name_a: str, a: _Sharding, name_b: str, b: _Sharding) -> None:
    if a.mesh != b.mesh or a.placements != b.placements:
        raise ValueError(f"{op}: {name_a} (placements {a.placements}) and {name_b} (placements {b.placements}) "
                         "must be DTensors on the same mesh with the same placements")


def _contiguous_stride(shape) -> tuple[int, ...]:
    stride, step = [], 1
    for size in reversed(tuple(shape)):
        stride.append(step)
        step *= max(size, 1)
    return tuple(reversed(stride))


def _wrap(local: torch.Tensor, sh: _Sharding, dim: int | None, shape, stride=None):
    """``local`` as a DTensor on ``sh``'s mesh, sharded along ``dim`` by ``sh``'s mesh dim (None: replicated)."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    placements = [Replicate()] * sh.mesh.ndim
    if dim is not None:
        placements[sh.mesh_dim] = Shard(dim)
    return DTensor.from_local(local, sh.mesh, placements, run_check=False, shape=torch.Size(shape),
                              stride=_contiguous_stride(shape) if stride is None else tuple(stride))


def _reduce_min_max(lo: torch.Tensor, hi: torch.Tensor, group) -> tuple[torch.Tensor, torch.Tensor]:
    """(MIN of lo, MAX of hi) over ``group``: one collective (hi travels negated)."""
    import torch.distributed as dist

    both = torch.stack([lo, -hi])
    dist.all_reduce(both, op=dist.ReduceOp.MIN, group=group)
    return both[0], -both[1]


def _local_minmax(x: torch.Tensor, dim: int | None):
    """finite_minmax of a local shard, which may be empty (then (+inf, -inf))."""
    from eitp_kernels.ops.finite_minmax import finite_minmax

    if x.numel() == 0:
        shape = () if dim is None else x.shape[:dim] + x.shape[dim + 1:]
        acc = _layout.compute_dtype(x.dtype)
        return (torch.full(shape, math.inf, dtype=acc, device=x.device),
                torch.full(shape, -math.inf, dtype=acc, device=x.device))
    return finite_minmax(x, dim)


def _plain_range(rng):
    """A range whose DTensor bounds (e.g. ``(x.min(), x.max())`` of a DTensor) are made full tensors."""
    if isinstance(rng, (tuple, list)) and any(is_dtensor(v) for v in rng):
        return tuple(full(v) for v in rng)
    return rng


def _no_group(op: str, process_group) -> None:
    if process_group is not None:
        raise ValueError(f"{op}: process_group must be None for DTensor inputs: the reduction group is the "
                         "DTensor's device mesh")


def _reduced_dim_out(sh: _Sharding, dim: int | None) -> tuple[bool, int | None]:
    """For a reduction over ``dim`` (None: all): (whether it spans the ranks, the output's sharded dim)."""
    if sh.dim is None:
        return False, None
    if dim is None or dim == sh.dim:
        return True, None
    return False, sh.dim - (dim < sh.dim)


# --------------------------------------------------------------------------
# Ops
# --------------------------------------------------------------------------


def finite_minmax(x, dim):
    op = "finite_minmax"
    _validation.check_tensor(op, "x", x)
    sh = _sharding(op, "x", x)
    if dim is not None:
        dim = _validation.check_dim(op, "dim", dim, x.dim())
    spans, out_dim = _reduced_dim_out(sh, dim)
    lo, hi = _local_minmax(x.to_local(), dim)
    if spans:
        lo, hi = _reduce_min_max(lo, hi, sh.group)
    shape = () if dim is None else sh.shape[:dim] + sh.shape[dim + 1:]
    return _wrap(lo, sh, out_dim, shape), _wrap(hi, sh, out_dim, shape)


def histogram_entropy(x, bins, range, dim, base, differentiable, process_group):
    from eitp_kernels.ops.entropy import histogram_entropy as entropy

    op = "histogram_entropy"
    rng = _plain_range(range)
    if not is_dtensor(x):  # only the range was a DTensor
        return entropy(x, bins, rng, dim, base, differentiable, process_group)
    _no_group(op, process_group)
    sh = _sharding(op, "x", x)
    if dim is not None:
        dim = _validation.check_dim(op, "dim", dim, x.dim())
    spans, out_dim = _reduced_dim_out(sh, dim)
    h = entropy(x.to_local(), bins, rng, dim, base, differentiable, sh.group if spans else None)
    shape = () if dim is None else sh.shape[:dim] + sh.shape[dim + 1:]
    return _wrap(h, sh, out_dim, shape)


def histogram_entropy_many(tensors, bins, range, base):
    """One entropy per tensor of a list of DTensors (and plain tensors, taken as replicated) on one mesh.

    Per tensor: its local range (one finite_minmax) and counts (one
    histogram_counts); one all-reduce of every range (MIN/MAX) and one of
    every sharded tensor's counts (SUM); one entropy_from_counts."""
    from eitp_kernels import _backends
    from eitp_kernels.ops import entropy as E
    from eitp_kernels.ops.finite_minmax import ROWS as FINITE_MINMAX_ROWS

    op = E.MANY_OP
    if len(tensors) == 0:
        raise ValueError(f"{op}: tensors is empty; it needs at least one tensor")
    shardings = {}
    for i, t in enumerate(tensors):
        _validation.check_tensor(op, f"tensors[{i}]", t, allow_empty=True,
                                 dtypes=_validation.FLOAT_DTYPES + _validation.CODE_DTYPES)
        if is_dtensor(t):
            shardings[i] = _sharding(op, f"tensors[{i}]", t)
    first = next(iter(shardings))
    ref = shardings[first]
    for i, sh in shardings.items():
        if sh.mesh != ref.mesh:
            raise ValueError(f"{op}: tensors[{first}] and tensors[{i}] are DTensors on different device meshes")
    mesh_dims = {sh.mesh_dim for sh in shardings.values()} - {None}
    if len(mesh_dims) > 1:
        raise ValueError(f"{op}: the DTensors are sharded along different mesh dims {sorted(mesh_dims)}; "
                         "one call reduces over one mesh dim")
    local = [t.to_local() if is_dtensor(t) else t for t in tensors]
    split = [i in shardings and shardings[i].mesh_dim is not None for i, _ in enumerate(tensors)]
    any_code = any(t.dtype in _validation.CODE_DTYPES for t in local)
    bins, rng, log_base = E._check_common(op, bins, _plain_range(range), base, codes=any_code)
    out_dtype = torch.float64 if any(t.dtype == torch.float64 for t in local) else torch.float32
    if not any(split):
        from eitp_kernels.ops.entropy import histogram_entropy_many as many

        h = many(local, bins, rng, base)
        return _wrap(h, ref, None, (len(tensors),))
    mesh_dim = mesh_dims.pop()
    group = ref.mesh.get_group(mesh_dim)
    device = local[0].device
    backend = _backends.resolve(op, device, _backends.IMPLEMENTED)
    rows = [t.reshape(1, t.numel()).contiguous() for t in local]
    # ranges in float64 (exact for the float32 ones), all tensors in one collective
    lo = torch.full((len(rows),), math.inf, dtype=torch.float64, device=device)
    hi = torch.full((len(rows),), -math.inf, dtype=torch.float64, device=device)
    for i, r in enumerate(rows):
        if r.dtype in _validation.CODE_DTYPES:
            continue
        if rng is not None:  # the given range (a tensor bound's checks included)
            lo_i, hi_i = E._range_rows(backend, r, rng, None)
            lo[i], hi[i] = lo_i[0], hi_i[0]
        elif r.numel():
            lo_i, hi_i = FINITE_MINMAX_ROWS[backend](r)
            lo[i], hi[i] = lo_i[0], hi_i[0]
    if rng is None:
        lo, hi = _reduce_min_max(lo, hi, group)
    counts = []
    for i, r in enumerate(rows):
        if r.dtype in _validation.CODE_DTYPES:
            counts.append(E._counts_rows(backend, r, None, None, 256, False))
            continue
        acc = _layout.compute_dtype(r.dtype)
        counts.append(E._counts_rows(backend, r, lo[i:i + 1].to(acc), hi[i:i + 1].to(acc), bins, rng is not None))
    counts = torch.cat(counts)
    if ref.mesh.get_local_rank(mesh_dim) != 0:  # replicated tensors: count them once
        counts[torch.tensor([not s for s in split], device=device)] = 0
    import torch.distributed as dist

    dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=group)
    h = E._entropy_rows(backend, counts, log_base).to(out_dtype)
    return _wrap(h, ref, None, (len(tensors),))


# quantization ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _QuantPlan:
    sh: _Sharding
    layout: object  # ops.quant._Layout (global shapes)
    scale_dim: int | None  # the scale dim that follows the shard (its rows stay whole), or None
    split_rows: bool  # the shard splits the scales' rows across ranks
    divisor: int  # shard offset/size along dim -> along scale_dim

    def local_scale(self, op: str, name: str, value):
        """The scale / zero point of this rank's shard: a slice of the full one along scale_dim."""
        if value is None or not isinstance(value, torch.Tensor):
            return value
        sshape = tuple(self.layout.sshape)
        if self.scale_dim is not None and is_dtensor(value) and value.device_mesh == self.sh.mesh:
            expected = list(_replicated(self.sh.mesh))
            expected[self.sh.mesh_dim] = _shard(self.scale_dim)
            if tuple(value.placements) == tuple(expected) and tuple(value.shape) == sshape:
                return value.to_local()
        value = full(value)
        if value.numel() != math.prod(sshape) or (value.dim() > 1 and tuple(value.shape) != sshape):
            raise ValueError(f"{op}: {name} must have shape {sshape}, got {tuple(value.shape)}")
        if self.scale_dim is None:
            return value
        offset, size = self.sh.shard_range()
        return value.reshape(sshape).narrow(self.scale_dim, offset // self.divisor, size // self.divisor)

    def wrap_scale(self, local, shape):
        if local is None:
            return None
        return _wrap(local, self.sh, self.scale_dim, shape)

    def output_stride(self):
        """The global stride of an output with x's shape (a permuted view for channel axis != 0, as the op's)."""
        lay = self.layout
        meta = torch.empty(self.sh.shape, device="meta")
        rows = _layout.to_rows(meta, lay.granularity, lay.axis, lay.group_size).contiguous()
        return _layout.from_rows(rows, self.sh.shape, lay.granularity, lay.axis).stride()


def _replicated(mesh):
    from torch.distributed.tensor import Replicate

    return [Replicate()] * mesh.ndim


def _shard(dim):
    from torch.distributed.tensor import Shard

    return Shard(dim)


def _quant_plan(op: str, name: str, x, granularity, axis, group_size) -> _QuantPlan:
    from eitp_kernels.ops import quant as Q

    layout = Q._check_layout(op, name, x, granularity, axis, group_size)
    sh = _sharding(op, name, x)
    if sh.dim is None:
        return _QuantPlan(sh, layout, None, False, 1)
    last = x.dim() - 1
    if layout.granularity == "channel" and sh.dim == layout.axis:
        return _QuantPlan(sh, layout, 0, False, 1)
    if layout.granularity == "group":
        if sh.dim < last:
            return _QuantPlan(sh, layout, sh.dim, False, 1)
        g = layout.group_size
        sizes = sh.shard_sizes()
        if any(s % g for s in sizes):
            raise ValueError(
                f"{op}: granularity='group' with group_size={g} needs every shard of the last dim to hold whole "
                f"groups, but {name}'s last dim ({sh.shape[last]}) is sharded as {sh.placements} into {sizes}; "
                f"redistribute {name} (e.g. {name}.redistribute(mesh, [Replicate()])) or shard another dim")
        return _QuantPlan(sh, layout, last, False, g)
    return _QuantPlan(sh, layout, None, True, 1)


def _global_scale(plan: _QuantPlan, local: torch.Tensor, symmetric: bool):
    """Per-row (scale, zero point) of the full tensor when the shard splits rows: each row's local finite
    range, all-reduced (MIN/MAX), through the scale arithmetic every backend uses."""
    lay = plan.layout
    rows = _layout.to_rows(local.detach(), lay.granularity, lay.axis, lay.group_size)
    lo, hi = _local_minmax(rows, 1)
    lo, hi = _reduce_min_max(lo, hi, plan.sh.group)
    if symmetric:
        s, zp = _layout.int8_params_from_range(None, torch.maximum(-lo, hi).clamp(min=0), True)
    else:
        s, zp = _layout.int8_params_from_range(lo.clamp(max=0), hi.clamp(min=0), False)
    sshape = lay.sshape
    return s.reshape(sshape), None if zp is None else zp.reshape(sshape)


def _quant_call(op, x, granularity, axis, group_size, symmetric, scale, zero_point):
    """(plan, local x, the local static scale and zero point) of a quantize / fake-quant call."""
    plan = _quant_plan(op, "x", x, granularity, axis, group_size)
    local = x.to_local()
    _validation.check_bool(op, "symmetric", symmetric)
    if scale is None and zero_point is None and plan.split_rows:
        scale, zero_point = _global_scale(plan, local, symmetric)
    return plan, local, plan.local_scale(op, "scale", scale), plan.local_scale(op, "zero_point", zero_point)


def quantize_int8(x, granularity, axis, group_size, symmetric, scale, zero_point):
    from eitp_kernels.ops.quant import quantize_int8 as quantize

    plan, local, s, zp = _quant_call("quantize_int8", x, granularity, axis, group_size, symmetric, scale,
                                     zero_point)
    lay = plan.layout
    q, s, zp = quantize(local.detach(), granularity=lay.granularity, axis=lay.axis, group_size=lay.group_size,
                        symmetric=symmetric, scale=s, zero_point=zp)
    q = _wrap(q, plan.sh, plan.sh.dim, plan.sh.shape, plan.output_stride())
    return q, plan.wrap_scale(s, lay.sshape), plan.wrap_scale(zp, lay.sshape)


def fake_quant_int8(x, granularity, axis, group_size, symmetric, scale, zero_point):
    from eitp_kernels.ops.quant import fake_quant_int8 as fake_quant

    plan, local, s, zp = _quant_call("fake_quant_int8", x, granularity, axis, group_size, symmetric, scale,
                                     zero_point)
    lay = plan.layout
    out = fake_quant(local, granularity=lay.granularity, axis=lay.axis, group_size=lay.group_size,
                     symmetric=symmetric, scale=s, zero_point=zp)
    return _wrap(out, plan.sh, plan.sh.dim, plan.sh.shape, plan.output_stride())


def dequantize_int8(q, scale, zero_point, granularity, axis, group_size, dtype):
    from eitp_kernels.ops.quant import dequantize_int8 as dequantize

    op = "dequantize_int8"
    if not is_dtensor(q):  # only the scale or zero point was a DTensor
        return dequantize(q, full(scale), full(zero_point), granularity=granularity, axis=axis,
                          group_size=group_size, dtype=dtype)
    _validation.check_tensor(op, "q", q, dtypes=(torch.int8,), allow_empty=True)
    plan = _quant_plan(op, "q", q, granularity, axis, group_size)
    lay = plan.layout
    out = dequantize(q.to_local(), plan.local_scale(op, "scale", scale), plan.local_scale(op, "zero_point", zero_point),
                     granularity=lay.granularity, axis=lay.axis, group_size=lay.group_size, dtype=dtype)
    return _wrap(out, plan.sh, plan.sh.dim, plan.sh.shape, plan.output_stride())


# coherence ------------------------------------------------------------------


def coherence_loss(x, y, diag_weight, offdiag_weight, squared, eps, process_group):
    from eitp_kernels.ops.coherence import coherence_loss as loss_fn

    op = "coherence_loss"
    for name, value in (("x", x), ("y", y)):
        if value is not None and not is_dtensor(value):
            raise TypeError(f"{op}: x and y must both be DTensors (or both plain tensors), got a DTensor and a "
                            f"{type(value).__name__} for {name}")
    _no_group(op, process_group)
    _validation.check_tensor(op, "x", x, min_dim=1)
    sx = _sharding(op, "x", x)
    if y is not None:
        _check_same_sharding(op, "x", sx, "y", _sharding(op, "y", y))
    if sx.dim not in (None, 0):
        raise ValueError(f"{op}: x is sharded as Shard({sx.dim}) on mesh dim {sx.mesh_dim} (placements "
                         f"{sx.placements}); coherence_loss takes DTensors sharded on the batch dimension "
                         "(Shard(0)) or replicated (Replicate()): redistribute it, e.g. "
                         "x.redistribute(mesh, [Shard(0)])")
    if sx.dim == 0 and min(sx.shard_sizes()) < 2:
        raise ValueError(f"{op}: every rank's shard of x needs at least 2 rows; a batch of {sx.shape[0]} "
                         f"sharded over {sx.ranks} ranks gives shards of {sx.shard_sizes()} rows")
    loss = loss_fn(x.to_local(), None if y is None else y.to_local(), diag_weight=diag_weight,
                   offdiag_weight=offdiag_weight, squared=squared, eps=eps, process_group=sx.group)
    return _wrap(loss, sx, None, ())
