"""DTensor inputs and FSDP2 models, in spawned gloo processes, against the full tensor in one process.

Each rank builds the same full tensors (fixed seeds), distributes them on a
1-D device mesh as Shard(0), Shard(1) and Replicate(), runs every public op
and compares with the op on the full tensor: exactly for ranges, counts,
codes, scales and dequantized values; to float tolerance for entropies and
losses. Gradients: fake-quant's (elementwise) equal the full tensor's; the
reductions that span the ranks (differentiable entropy, coherence) follow
``process_group``'s DDP convention (mesh size times the full gradient on a
sharded input). Then a QAT MLP under ``fully_shard``: the entropy monitor,
``export_int8``, ``save_compressed`` / ``load_compressed_int8`` /
``load_compressed`` and ``EITPRegularizer`` against the unwrapped model.

Every check runs inside one spawn (process start-up is the cost); each
worker records ``{check: None or the failure}`` and the tests below read
them, one test per check.
"""
from __future__ import annotations

import datetime
import os
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import eitp_kernels
from eitp_kernels import nn as enn
from eitp_kernels.training import EITPRegularizer, load_compressed, load_compressed_int8, save_compressed

from conftest import free_port

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")

PLACEMENTS = ("Shard(0)", "Shard(1)", "Replicate()")
TIMEOUT_S = 90  # a rank waiting this long on a collective raises (after another rank's failure)
QUANT_LAYOUTS = {  # name -> quantize_int8 keyword arguments
    "tensor": dict(granularity="tensor"),
    "tensor_affine": dict(granularity="tensor", symmetric=False),
    "channel0": dict(granularity="channel", axis=0),
    "channel1_affine": dict(granularity="channel", axis=1, symmetric=False),
    "group3": dict(granularity="group", group_size=3),
}


def _tensors():
    """The full tensors every rank starts from: (7, 12) float32 with a NaN and an Inf in different
    shards, its float64 copy scaled, int8 codes, and a (16, 6) batch for the coherence loss."""
    g = torch.Generator().manual_seed(2812)
    x = torch.randn(7, 12, generator=g) * torch.linspace(0.5, 3.0, 12)
    x[0, 1] = float("nan")
    x[6, 11] = float("inf")
    x64 = (torch.randn(7, 12, generator=g, dtype=torch.float64) * 1e3)
    codes = torch.randint(-128, 128, (7, 12), generator=g, dtype=torch.int8)
    batch = torch.randn(16, 6, generator=g, dtype=torch.float64)
    batch_y = torch.randn(16, 4, generator=g, dtype=torch.float64)
    return x, x64, codes, batch, batch_y


def _mlp(qat: bool):
    torch.manual_seed(11)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Tanh(), torch.nn.Linear(128, 10))
    return enn.prepare_qat(model) if qat else model


class _Checks:
    """Runs named checks, recording None or the failure's traceback. After a failure the rank runs no
    more checks: the ranks' collectives would no longer pair up (the process group's timeout ends a
    rank left waiting)."""

    def __init__(self):
        self.results: dict[str, str | None] = {}
        self.failed = None

    def run(self, name, fn, *args):
        if self.failed is not None:
            self.results[name] = f"not run: {self.failed!r} failed first on this rank"
            return
        try:
            fn(*args)
            self.results[name] = None
        except Exception:  # recorded, reported by the test of that name
            self.results[name] = traceback.format_exc()
            self.failed = name


def _placement(name):
    from torch.distributed.tensor import Replicate, Shard

    return {"Shard(0)": Shard(0), "Shard(1)": Shard(1), "Replicate()": Replicate()}[name]


def _exact(got, expected, what):
    from eitp_kernels._dtensor import is_dtensor

    assert is_dtensor(got), f"{what}: expected a DTensor result, got {type(got).__name__}"
    got = got.full_tensor()
    assert got.dtype == expected.dtype and got.shape == expected.shape, (
        f"{what}: {got.dtype} {tuple(got.shape)} != {expected.dtype} {tuple(expected.shape)}")
    torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{what}: {m}")


def _close(got, expected, what, rtol=1e-6, atol=1e-6):
    from eitp_kernels._dtensor import is_dtensor

    if is_dtensor(got):
        got = got.full_tensor()
    torch.testing.assert_close(got, expected, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{what}: {m}")


def _local_of(full, dt):
    """The slice of ``full`` that ``dt``'s local shard holds (torch.chunk, as Shard does)."""
    from torch.distributed.tensor import Shard

    p = dt.placements[0]
    if not isinstance(p, Shard):
        return full
    chunks = list(torch.chunk(full, dt.device_mesh.size(0), dim=p.dim))
    rank = dt.device_mesh.get_local_rank(0)
    return chunks[rank] if rank < len(chunks) else full.narrow(p.dim, 0, 0)


# ----- ops on a 1-D mesh ----------------------------------------------------------------------------------


def _check_minmax(mesh, place, x):
    from torch.distributed.tensor import distribute_tensor

    dx = distribute_tensor(x, mesh, [place])
    for dim in (None, 0, 1):
        lo, hi = eitp_kernels.finite_minmax(dx, dim=dim)
        elo, ehi = eitp_kernels.finite_minmax(x, dim=dim)
        _exact(lo, elo, f"finite_minmax lo dim={dim}")
        _exact(hi, ehi, f"finite_minmax hi dim={dim}")


def _check_entropy(mesh, place, x, x64, codes):
    from torch.distributed.tensor import distribute_tensor

    dx, dcodes = distribute_tensor(x, mesh, [place]), distribute_tensor(codes, mesh, [place])
    for kwargs in (dict(bins=50), dict(bins=50, dim=0), dict(bins=20, dim=1, base=2.0),
                   dict(bins=30, range=(-2.0, 2.5)), dict(bins=30, range=(x.nan_to_num(0, 0, 0).min(), 2.5))):
        _close(eitp_kernels.histogram_entropy(dx, **kwargs), eitp_kernels.histogram_entropy(x, **kwargs),
               f"histogram_entropy {kwargs}")
    _close(eitp_kernels.histogram_entropy(dcodes, base=2), eitp_kernels.histogram_entropy(codes, base=2),
           "code entropy")
    dx64 = distribute_tensor(x64, mesh, [place])
    many = eitp_kernels.histogram_entropy_many([dx, dx64, dcodes, x64[:3]], bins=256)
    expected = eitp_kernels.histogram_entropy_many([x, x64, codes, x64[:3]], bins=256)
    _close(many, expected, "histogram_entropy_many")
    ranged = eitp_kernels.histogram_entropy_many([dx, dx64], bins=40, range=(-1.5, 1.5))
    _close(ranged, eitp_kernels.histogram_entropy_many([x, x64], bins=40, range=(-1.5, 1.5)), "many, range")


def _check_entropy_gradient(mesh, place, x64):
    from torch.distributed.tensor import distribute_tensor

    full = x64.clone().requires_grad_(True)
    expected = eitp_kernels.histogram_entropy(full, bins=16, differentiable=True)
    expected.backward()
    dx = distribute_tensor(x64, mesh, [place]).requires_grad_(True)
    h = eitp_kernels.histogram_entropy(dx, bins=16, differentiable=True)
    _close(h, expected.detach(), "differentiable entropy", rtol=1e-12, atol=1e-12)
    h.backward()
    factor = mesh.size(0) if place.is_shard() else 1  # the DDP convention of process_group
    _close(dx.grad.to_local(), factor * _local_of(full.grad, dx), "differentiable entropy gradient",
           rtol=1e-10, atol=1e-12)


def _check_quant(mesh, place, x, x64):
    from torch.distributed.tensor import distribute_tensor

    for name, kwargs in QUANT_LAYOUTS.items():
        for t in (x, x64):
            dx = distribute_tensor(t, mesh, [place])
            q, s, zp = eitp_kernels.quantize_int8(dx, **kwargs)
            eq, es, ezp = eitp_kernels.quantize_int8(t, **kwargs)
            what = f"quantize_int8 {name} {t.dtype}"
            _exact(q, eq, what + " codes")
            _exact(s, es, what + " scale")
            if ezp is not None:
                _exact(zp, ezp, what + " zero point")
            assert q.placements == dx.placements, f"{what}: codes placed {q.placements}, x {dx.placements}"
            # static: the full tensor's scale given as a plain tensor, and as the returned DTensor
            for scale, zero in ((es, ezp), (s, zp)):
                sq, _, _ = eitp_kernels.quantize_int8(dx, **kwargs, scale=scale, zero_point=zero)
                _exact(sq, eq, what + " static codes")
            dq = eitp_kernels.dequantize_int8(q, s, zp, dtype=t.dtype, **{k: v for k, v in kwargs.items()
                                                                          if k != "symmetric"})
            _exact(dq, eitp_kernels.dequantize_int8(eq, es, ezp, dtype=t.dtype, **{
                k: v for k, v in kwargs.items() if k != "symmetric"}), what + " dequantize")
            assert dq.placements == dx.placements
            _check_fake_quant(mesh, place, t, kwargs, what)


def _check_fake_quant(mesh, place, t, kwargs, what):
    from torch.distributed.tensor import distribute_tensor

    g = torch.randn(t.shape, generator=torch.Generator().manual_seed(5), dtype=t.dtype)
    full = t.clone().requires_grad_(True)
    expected = eitp_kernels.fake_quant_int8(full, **kwargs)
    (expected.nan_to_num(0, 0, 0) * g).sum().backward()
    dx = distribute_tensor(t, mesh, [place]).requires_grad_(True)
    out = eitp_kernels.fake_quant_int8(dx, **kwargs)
    _exact(out.detach(), expected.detach(), what + " fake-quant")
    assert out.placements == dx.placements
    (out.to_local().nan_to_num(0, 0, 0) * _local_of(g, dx)).sum().backward()
    _exact_local = dx.grad.to_local()
    torch.testing.assert_close(_exact_local, _local_of(full.grad, dx), rtol=0, atol=0,
                               msg=lambda m: f"{what} fake-quant gradient: {m}")


def _check_group_split_error(mesh, x):
    """The last dim (12) in shards of 6 (2 ranks) or 3 (4 ranks): groups of 4 would straddle ranks."""
    from torch.distributed.tensor import Shard, distribute_tensor

    dx = distribute_tensor(x, mesh, [Shard(1)])
    assert all(s % 4 for s in (len(c) for c in torch.arange(12).chunk(mesh.size(0))))
    for op in (eitp_kernels.quantize_int8, eitp_kernels.fake_quant_int8):
        with_message("whole groups", op, dx, granularity="group", group_size=4)


def _check_coherence(mesh, place, batch, batch_y):
    from torch.distributed.tensor import distribute_tensor

    full_x = batch.clone().requires_grad_(True)
    full_y = batch_y.clone().requires_grad_(True)
    expected = (eitp_kernels.coherence_loss(full_x, diag_weight=0.7)
                + eitp_kernels.coherence_loss(full_x[:, :4], full_y, offdiag_weight=0.3, squared=True))
    expected.backward()
    dx = distribute_tensor(batch, mesh, [place]).requires_grad_(True)
    dy = distribute_tensor(batch_y, mesh, [place]).requires_grad_(True)
    if place.is_shard() and place.dim == 1:
        with_message(r"Shard\(1\)", eitp_kernels.coherence_loss, dx)
        return
    loss = (eitp_kernels.coherence_loss(dx, diag_weight=0.7)
            + eitp_kernels.coherence_loss(dx[:, :4], dy, offdiag_weight=0.3, squared=True))
    _close(loss, expected.detach(), "coherence loss", rtol=1e-12, atol=1e-12)
    loss.backward()
    factor = mesh.size(0) if place.is_shard() else 1
    _close(dx.grad.to_local(), factor * _local_of(full_x.grad, dx), "coherence grad x", rtol=1e-9, atol=1e-12)
    _close(dy.grad.to_local(), factor * _local_of(full_y.grad, dy), "coherence grad y", rtol=1e-9, atol=1e-12)


def with_message(pattern, fn, *args, **kwargs):
    import re

    try:
        fn(*args, **kwargs)
    except (ValueError, TypeError) as e:
        assert re.search(pattern, str(e)), f"error {e!r} does not match {pattern!r}"
        return
    raise AssertionError(f"expected an error matching {pattern!r}")


def _check_bad_placements(mesh, x):
    from torch.distributed.tensor import DTensor, Partial, Replicate

    partial = DTensor.from_local(x, mesh, [Partial()])
    for op in (eitp_kernels.histogram_entropy, eitp_kernels.finite_minmax, eitp_kernels.quantize_int8):
        with_message(r"Partial", op, partial)
    replicated = DTensor.from_local(x, mesh, [Replicate()])
    with_message("process_group must be None", eitp_kernels.histogram_entropy, replicated,
                 process_group=dist.group.WORLD)


def _check_empty_shards(mesh, x):
    """A (1, 12) tensor over the ranks on dim 0: every rank but one holds an empty shard."""
    from torch.distributed.tensor import Shard, distribute_tensor

    row = x[1:2].contiguous()
    dx = distribute_tensor(row, mesh, [Shard(0)])
    for dim in (None, 0, 1):
        lo, hi = eitp_kernels.finite_minmax(dx, dim=dim)
        elo, ehi = eitp_kernels.finite_minmax(row, dim=dim)
        _exact(lo, elo, f"finite_minmax lo dim={dim}")
        _exact(hi, ehi, f"finite_minmax hi dim={dim}")
        _close(eitp_kernels.histogram_entropy(dx, bins=7, dim=dim), eitp_kernels.histogram_entropy(row, bins=7, dim=dim),
               f"entropy dim={dim}")
    _close(eitp_kernels.histogram_entropy_many([dx, dx * 2], bins=9),
           eitp_kernels.histogram_entropy_many([row, row * 2], bins=9), "many")
    for name, kwargs in QUANT_LAYOUTS.items():
        q, s, zp = eitp_kernels.quantize_int8(dx, **kwargs)
        eq, es, ezp = eitp_kernels.quantize_int8(row, **kwargs)
        _exact(q, eq, f"{name} codes")
        _exact(s, es, f"{name} scale")


def _check_two_dim_mesh(world):
    """On a (2, world/2) mesh: (Replicate(), Shard(d)) as HSDP places parameters, and two sharded mesh dims
    refused by name."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (2, world // 2))
    x = _tensors()[0]
    for dim in (0, 1):
        dx = distribute_tensor(x, mesh, [Replicate(), Shard(dim)])
        _close(eitp_kernels.histogram_entropy(dx, bins=33), eitp_kernels.histogram_entropy(x, bins=33), "entropy")
        for name, kwargs in QUANT_LAYOUTS.items():
            q, s, _ = eitp_kernels.quantize_int8(dx, **kwargs)
            eq, es, _ = eitp_kernels.quantize_int8(x, **kwargs)
            _exact(q, eq, f"{name} codes on {dx.placements}")
            _exact(s, es, f"{name} scale on {dx.placements}")
    both = distribute_tensor(x, mesh, [Shard(0), Shard(1)])
    with_message(r"sharded on 2 mesh dims", eitp_kernels.histogram_entropy, both)


# ----- FSDP2 ------------------------------------------------------------------------------------------------


def _fsdp(model, mesh):
    from torch.distributed.fsdp import fully_shard

    for layer in model:
        if any(True for _ in layer.parameters()):
            fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def _check_monitor(mesh):
    plain, sharded = _mlp(qat=True), _fsdp(_mlp(qat=True), mesh)
    for kwargs in (dict(), dict(bins=64, base=None, range=(-0.2, 0.2))):
        got, expected = enn.EntropyMonitor(sharded, **kwargs)(), enn.EntropyMonitor(plain, **kwargs)()
        assert got.keys() == expected.keys()
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-7, msg=lambda m: f"{name}: {m}")


def _check_export_and_compress(mesh, out_dir, rank):
    plain, sharded = _mlp(qat=True), _fsdp(_mlp(qat=True), mesh)
    got, expected = enn.export_int8(sharded), enn.export_int8(plain)
    assert got.keys() == expected.keys()
    for key in expected:
        assert type(got[key]) is torch.Tensor, f"{key}: {type(got[key]).__name__}"
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=lambda m: f"{key}: {m}")
    # the FSDP2 model's file is written by rank 0 alone; the unwrapped model's by every rank, each its own
    path_sharded, path_plain = os.path.join(out_dir, "sharded.eitpz"), os.path.join(out_dir, f"plain_{rank}.eitpz")
    report = save_compressed(sharded, path_sharded, sparsity=0.25)  # pruned in place, as the unwrapped one
    save_compressed(plain, path_plain, sparsity=0.25)
    dist.barrier()
    with open(path_sharded, "rb") as a, open(path_plain, "rb") as b:
        data = a.read()
        assert data == b.read(), "the FSDP2 model's file differs from the unwrapped model's"
    assert report.compressed_bytes == len(data)
    int8_model = load_compressed_int8(path_sharded, lambda: _mlp(qat=False))
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(int8_model(x), load_compressed_int8(path_plain, lambda: _mlp(qat=False))(x))
    # the float state into an FSDP2 model: each rank keeps its shard
    target = _fsdp(_mlp(qat=False), mesh)
    state = load_compressed(path_sharded, target)
    for name, param in target.named_parameters():
        torch.testing.assert_close(param.full_tensor(), state[name], rtol=0, atol=0)
    with_message("FSDP2", load_compressed_int8, path_sharded, _fsdp(_mlp(qat=False), mesh))


def _check_regularizer(mesh, rank, world):
    plain, sharded = _mlp(qat=True), _fsdp(_mlp(qat=True), mesh)
    x = torch.randn(4 * world, 64, generator=torch.Generator().manual_seed(9))
    mine = x.chunk(world)[rank]

    def step(model, batch, group):
        reg = EITPRegularizer(model, ["0", "2"], lambda_thermo=0.05, lambda_coherence=0.7, bins=10,
                              process_group=group)
        model(batch)
        loss, metrics = reg()
        loss.backward()
        return loss.detach(), metrics

    expected_loss, expected_metrics = step(plain, x, None)
    loss, metrics = step(sharded, mine, dist.group.WORLD)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)
    for key, value in expected_metrics.items():
        torch.testing.assert_close(metrics[key], value, rtol=1e-5, atol=1e-6, msg=lambda m: f"{key}: {m}")
    for (name, p), (_, e) in zip(sharded.named_parameters(), plain.named_parameters()):
        torch.testing.assert_close(p.grad.full_tensor(), e.grad, rtol=1e-4, atol=1e-6,
                                   msg=lambda m: f"{name} gradient: {m}")


# ----- the spawned worker -----------------------------------------------------------------------------------


def _worker(rank, world, port, out_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="env://", timeout=datetime.timedelta(seconds=TIMEOUT_S))
    try:
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh("cpu", (world,))
        x, x64, codes, batch, batch_y = _tensors()
        checks = _Checks()
        for name in PLACEMENTS:
            place = _placement(name)
            checks.run(f"finite_minmax {name}", _check_minmax, mesh, place, x)
            checks.run(f"entropy {name}", _check_entropy, mesh, place, x, x64, codes)
            checks.run(f"entropy gradient {name}", _check_entropy_gradient, mesh, place, x64)
            checks.run(f"quantize {name}", _check_quant, mesh, place, x, x64)
            checks.run(f"coherence {name}", _check_coherence, mesh, place, batch, batch_y)
        checks.run("bad placements", _check_bad_placements, mesh, x)
        checks.run("group split", _check_group_split_error, mesh, x)
        checks.run("empty shards", _check_empty_shards, mesh, x)
        if world % 2 == 0 and world > 2:
            checks.run("two-dim mesh", _check_two_dim_mesh, world)
        checks.run("fsdp2 monitor", _check_monitor, mesh)
        checks.run("fsdp2 export and compress", _check_export_and_compress, mesh, out_dir, rank)
        checks.run("fsdp2 regularizer", _check_regularizer, mesh, rank, world)
        torch.save(checks.results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


CHECKS = ([f"{check} {p}" for p in PLACEMENTS for check in
           ("finite_minmax", "entropy", "entropy gradient", "quantize", "coherence")]
          + ["bad placements", "group split", "empty shards", "fsdp2 monitor", "fsdp2 export and compress", "fsdp2 regularizer"])


def _spawn(world, out):
    mp.spawn(_worker, args=(world, free_port(), str(out)), nprocs=world, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(world)]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return _spawn(2, tmp_path_factory.mktemp("dtensor2"))


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory):
    return _spawn(4, tmp_path_factory.mktemp("dtensor4"))


def _assert_passed(ranks, check):
    for rank, results in enumerate(ranks):
        assert check in results, f"rank {rank} did not run {check!r}"
        assert results[check] is None, f"rank {rank}, {check}:\n{results[check]}"


@pytest.mark.parametrize("check", CHECKS)
def test_dtensor_two_ranks(check, two_ranks):
    _assert_passed(two_ranks, check)


@pytest.mark.slow
@pytest.mark.parametrize("check", [*CHECKS, "two-dim mesh"])
def test_dtensor_four_ranks(check, four_ranks):
    _assert_passed(four_ranks, check)

