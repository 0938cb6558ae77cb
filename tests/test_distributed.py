"""Every ``process_group`` path in 2 gloo processes against one process on the global batch.

The workers run as ``torchrun`` would start them (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT in the environment, ``init_method="env://"``), wrap a
float64 model in DistributedDataParallel, and record the loss and the
DDP-averaged parameter gradients of each case. A single process then computes
the same loss on the concatenated batch: values and gradients must agree.
That is the gradient convention of the ops (each rank's input receives
world_size * dL/dx_rank, which DDP's 1/world_size averaging undoes).

One spawn runs every case on every backend, so the whole file costs one
process start-up (seconds).
"""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import eitp_kernels
from eitp_kernels import reference
from eitp_kernels.training import EITPRegularizer

from conftest import free_port

WORLD = 2
N_PER_RANK = 9
IN, HIDDEN, OUT = 6, 8, 7


def _data():
    g = torch.Generator().manual_seed(123)
    x = torch.randn(WORLD * N_PER_RANK, IN, generator=g, dtype=torch.float64)
    y = torch.randn(WORLD * N_PER_RANK, 5, generator=g, dtype=torch.float64)
    target = torch.randn(WORLD * N_PER_RANK, OUT, generator=g, dtype=torch.float64)
    x2 = torch.randn(WORLD * N_PER_RANK, IN, generator=g, dtype=torch.float64)  # a second step's batch
    return x, y, target, x2


def _model():
    torch.manual_seed(7)
    return torch.nn.Sequential(torch.nn.Linear(IN, HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, OUT)).double()


def _entropy(h, pg, **kwargs):
    return eitp_kernels.histogram_entropy(h, bins=12, differentiable=True, process_group=pg, **kwargs)


def _coherence(h, y, pg):
    # self-correlation (EIT-P form) + a cross term (Barlow-style, squared)
    return (eitp_kernels.coherence_loss(h, diag_weight=0.7, offdiag_weight=1.2, process_group=pg)
            + eitp_kernels.coherence_loss(h[:, :4], y, offdiag_weight=0.3, squared=True, process_group=pg))


# name -> loss(model output h, y, target, process group); each a scalar.
CASES = {
    "entropy_auto_range": lambda h, y, t, pg: _entropy(h, pg),
    "entropy_explicit_range": lambda h, y, t, pg: _entropy(h, pg, range=(-0.9, 1.1), base=2.0),
    "entropy_per_column": lambda h, y, t, pg: _entropy(h, pg, dim=0).sum(),
    "coherence": lambda h, y, t, pg: _coherence(h, y, pg),
    # a per-rank batch-mean task loss (DDP averages it to the global mean) plus both ops
    "task_plus_entropy_plus_coherence": lambda h, y, t, pg: (
        torch.nn.functional.mse_loss(h, t) + 0.3 * _entropy(h, pg) + _coherence(h, y, pg)),
}


def _hard_data():
    """Per rank: (5, 700) rows with different scales per rank (so the global range differs from each
    rank's) and a NaN, and int8 codes."""
    gen = torch.Generator().manual_seed(1234)
    rows = torch.randn(WORLD, 5, 700, generator=gen) * torch.arange(1, WORLD + 1).view(WORLD, 1, 1)
    rows[1, 2, 3] = float("nan")
    codes = torch.randint(-128, 128, (WORLD, 999), generator=gen, dtype=torch.int8)
    return rows, codes


def _hard_entropies(fn, rows, codes, **kwargs):
    """The hard-binned entropy (no gradient) of ``rows`` and ``codes`` in several forms."""
    return {
        "rows_auto_range": fn(rows, bins=50, dim=1, **kwargs),
        "whole_bits": fn(rows, bins=50, base=2, **kwargs),
        "whole_explicit_range": fn(rows, bins=30, range=(-2.0, 2.5), **kwargs),
        "codes_bits": fn(codes, base=2, **kwargs),
    }


def _regularizer(model, pg):
    return EITPRegularizer(model, ["0", "2"], lambda_thermo=0.05, lambda_coherence=0.7, bins=10,
                           lyapunov_activation=torch.tanh, process_group=pg)


def _rank_mean(loss, pg):
    """The loss averaged over the ranks, as DDP averages gradients (the loss itself without a group)."""
    if pg is None:
        return loss.detach()
    total = loss.detach().clone()
    dist.all_reduce(total, group=pg)
    return total / dist.get_world_size(pg)


def _run_cases(model_fn, x, y, target, x2, pg):
    """{case: (this rank's loss, rank-averaged loss, [param grads])} plus the regularizer's two
    steps' metrics; model_fn() gives a fresh (possibly DDP-wrapped) model and its module."""
    out = {}
    for name, fn in CASES.items():
        model, module = model_fn()
        loss = fn(model(x), y, target, pg)
        loss.backward()
        out[name] = (loss.detach(), _rank_mean(loss, pg), [p.grad.clone() for p in module.parameters()])
    model, module = model_fn()
    reg = _regularizer(module, pg)
    model(x)
    loss, metrics = reg()
    loss.backward()
    out["regularizer"] = (loss.detach(), _rank_mean(loss, pg), [p.grad.clone() for p in module.parameters()])
    with torch.no_grad():
        model(x2)  # a second step: the coherence factor compares the two steps' global batch means
    _, metrics2 = reg()
    out["regularizer_metrics"] = {"first": metrics, "second": metrics2}
    return out


def _worker(rank, port, out_dir, backends):
    # torchrun's environment; init_method env:// reads it
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="env://")
    try:
        x, y, target, x2 = _data()
        rows = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)

        def ddp_model():
            ddp = torch.nn.parallel.DistributedDataParallel(_model())
            return ddp, ddp.module

        hard_rows, codes = _hard_data()
        results = {}
        for backend in backends:
            with eitp_kernels.use_backend(backend):
                results[backend] = _run_cases(ddp_model, x[rows], y[rows], target[rows], x2[rows],
                                              dist.group.WORLD)
                results[backend]["hard"] = _hard_entropies(eitp_kernels.histogram_entropy, hard_rows[rank],
                                                           codes[rank], process_group=dist.group.WORLD)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        _teardown()


def _teardown():
    """Leave the group in step: free every DDP model (their reducers hold the gloo process group,
    and a reference cycle would keep one alive into interpreter finalization, where gloo's worker
    threads then outlive Python), then a barrier, so rank 0 (the TCPStore's host) cannot destroy
    the group and exit while rank 1 still has gloo work in flight, then destroy the group."""
    import gc

    gc.collect()
    if dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def _spawn(backends, out):
    """Every case on each of ``backends`` in WORLD spawned ranks: (backends, [per-rank results])."""
    mp.spawn(_worker, args=(free_port(), str(out), backends), nprocs=WORLD, join=True)
    return backends, [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory):
    # the process_group paths run on each backend's counting kernels (coherence: ATen everywhere);
    # Triton's have their own test below, in the interpreter process
    available = eitp_kernels.backends()
    backends = [b for b in ("cpp", "reference") if available[b].available]
    return _spawn(backends, tmp_path_factory.mktemp("ddp"))


@pytest.fixture(scope="module")
def single_process_results():
    x, y, target, x2 = _data()

    def model():
        m = _model()
        return m, m

    return _run_cases(model, x, y, target, x2, None)


pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")


@pytest.mark.parametrize("case", [*CASES, "regularizer"])
def test_ddp_loss_and_gradients_equal_single_process_on_global_batch(case, distributed_results,
                                                                    single_process_results):
    backends, ranks = distributed_results
    expected_loss, _, expected_grads = single_process_results[case]
    assert backends, "no backend ran"
    for backend in backends:
        for rank, got in enumerate(ranks):
            loss, mean_loss, grads = got[backend][case]
            torch.testing.assert_close(mean_loss, expected_loss, rtol=1e-10, atol=1e-12,
                                       msg=lambda m: f"{case} rank-mean loss, {backend} rank {rank}: {m}")
            if not case.startswith("task"):  # the ops' losses are global: the same on every rank
                torch.testing.assert_close(loss, expected_loss, rtol=1e-10, atol=1e-12,
                                           msg=lambda m: f"{case} loss, {backend} rank {rank}: {m}")
            for i, (g, e) in enumerate(zip(grads, expected_grads)):
                assert e.abs().max() > 0, f"{case}: parameter {i} has no gradient to compare"
                torch.testing.assert_close(g, e, rtol=1e-8, atol=1e-12,
                                           msg=lambda m: f"{case} grad {i}, {backend} rank {rank}: {m}")


def test_hard_entropy_is_the_global_batch_entropy(distributed_results):
    backends, ranks = distributed_results
    rows, codes = _hard_data()
    # row i of every rank together (dim=1); the whole tensors: all elements of every rank
    expected = _hard_entropies(reference.histogram_entropy, rows.permute(1, 0, 2).reshape(5, -1), codes)
    for backend in backends:
        for rank, got in enumerate(ranks):
            for key, value in expected.items():
                torch.testing.assert_close(got[backend]["hard"][key], value, rtol=1e-6, atol=1e-6,
                                           msg=lambda m: f"{key}, {backend} rank {rank}: {m}")


def test_regularizer_metrics_are_global(distributed_results, single_process_results):
    backends, ranks = distributed_results
    expected = single_process_results["regularizer_metrics"]
    assert expected["second"]["coherence_factor"].item() < 1.0  # the second step really compares two means
    for backend in backends:
        for rank, got in enumerate(ranks):
            for step in ("first", "second"):
                metrics = got[backend]["regularizer_metrics"][step]
                assert metrics.keys() == expected[step].keys()
                for key, value in expected[step].items():
                    torch.testing.assert_close(metrics[key], value, rtol=1e-5, atol=1e-7,
                                               msg=lambda m: f"{key} ({step} step), {backend} rank {rank}: {m}")


def test_regularizer_rejects_a_non_group():
    with pytest.raises(TypeError, match="process_group must be None or a torch.distributed.ProcessGroup"):
        EITPRegularizer(_model(), ["0"], process_group="world")


@pytest.mark.slow
def test_the_two_process_harness_exits_cleanly_many_times(tmp_path):
    # A rank killed at teardown (SIGABRT: "terminate called without an active exception")
    # makes mp.spawn raise ProcessExitedException naming the signal; every run must be clean
    # and its results complete. EITP_DDP_STRESS_RUNS sets the count (default 30).
    runs = int(os.environ.get("EITP_DDP_STRESS_RUNS", "30"))
    available = eitp_kernels.backends()
    backends = [b for b in ("cpp", "reference") if available[b].available]
    failures = []
    for i in range(runs):
        out = tmp_path / f"run{i}"
        out.mkdir()
        try:
            _, ranks = _spawn(backends, out)
        except Exception as error:  # ProcessExitedException / ProcessRaisedException
            failures.append(f"run {i}: {type(error).__name__}: {str(error).strip()[:300]}")
            continue
        for rank, got in enumerate(ranks):
            if set(got) != set(backends) or "task_plus_entropy_plus_coherence" not in got[backends[0]]:
                failures.append(f"run {i} rank {rank}: incomplete results")
    assert not failures, f"{len(failures)} of {runs} runs failed:\n" + "\n".join(failures)


@pytest.mark.triton_interpret
def test_triton_kernels_under_ddp(tmp_path, single_process_results):
    # the spawned ranks inherit TRITON_INTERPRET=1 from this process's environment
    if not eitp_kernels.backends()["triton"].available:
        pytest.skip("the triton backend is not available here")
    _, ranks = _spawn(["triton"], tmp_path)
    rows, codes = _hard_data()
    expected_hard = _hard_entropies(reference.histogram_entropy, rows.permute(1, 0, 2).reshape(5, -1), codes)
    for rank, got in enumerate(ranks):
        got = got["triton"]
        for case in [*CASES, "regularizer"]:
            expected_loss, _, expected_grads = single_process_results[case]
            loss, mean_loss, grads = got[case]
            torch.testing.assert_close(mean_loss, expected_loss, rtol=1e-10, atol=1e-12)
            for g, e in zip(grads, expected_grads):
                torch.testing.assert_close(g, e, rtol=1e-8, atol=1e-12, msg=lambda m: f"{case} rank {rank}: {m}")
        for key, value in expected_hard.items():
            torch.testing.assert_close(got["hard"][key], value, rtol=1e-6, atol=1e-6)
