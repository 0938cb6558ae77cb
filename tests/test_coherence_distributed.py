"""coherence_loss(process_group=...) in 2 gloo processes against one process on the global batch."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from eitp_kernels import reference

WORLD = 2
N_PER_RANK = 9


def _data():
    g = torch.Generator().manual_seed(123)
    x = torch.randn(WORLD * N_PER_RANK, 6, generator=g, dtype=torch.float64)
    y = torch.randn(WORLD * N_PER_RANK, 5, generator=g, dtype=torch.float64)
    return x, y


def _model():
    torch.manual_seed(7)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 7)).double()


def _loss(fn, model, x, y, **kwargs):
    h = model(x)
    # self-correlation (EIT-P form) + a cross term (Barlow-style, squared)
    return (fn(h, diag_weight=0.7, offdiag_weight=1.2, **kwargs)
            + fn(h[:, :4], y, offdiag_weight=0.3, squared=True, **kwargs))


def _worker(rank, init_file, out_dir, backend_name):
    import eitp_kernels

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        x, y = _data()
        rows = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
        ddp = torch.nn.parallel.DistributedDataParallel(_model())
        with eitp_kernels.use_backend(backend_name):
            loss = _loss(eitp_kernels.coherence_loss, ddp, x[rows], y[rows], process_group=dist.group.WORLD)
        loss.backward()
        torch.save({"loss": loss.detach(), "grads": [p.grad for p in ddp.module.parameters()]},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_ddp_gradients_equal_single_process_on_global_batch(tmp_path):
    # The process_group path runs on ATen ops whatever the backend; one run.
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path), None), nprocs=WORLD, join=True)
    x, y = _data()
    model = _model()
    loss = _loss(lambda *a, **k: reference.coherence_loss(*a, **k), model, x, y)
    loss.backward()
    expected = [p.grad for p in model.parameters()]
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(got["loss"], loss.detach(), rtol=1e-12, atol=0)
        for g, e in zip(got["grads"], expected):
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
