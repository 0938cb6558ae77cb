"""Benchmark of the EIT-P regularizer's cost per training step.

One step = forward of an MLP (batch 256, 512 -> 1024 -> 1024 -> 10, tanh),
cross-entropy, EITPRegularizer on both hidden layers (differentiable entropy
+ coherence loss), backward. Rows: the step on the fused backends against
the same step with every eitp op forced to the reference backend ('eager'),
and a plain step without the regularizer for scale ("plain"; "+reg" is the
regularized step): the overhead of the regularizer is (step - plain step).
"""
from __future__ import annotations

import torch
from torch import nn

import eitp_kernels
from eitp_kernels import _backends
from eitp_kernels.bench.cases import Case, register_suite

OP = "eitp_regularizer"


def _step_fn(batch: int, width: int, regularized: bool, backend: str | None):
    from eitp_kernels.training import EITPRegularizer

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 10))
    reg = EITPRegularizer(model, ["1", "3"], lambda_coherence=1e-3, bins=64) if regularized else None

    def step(x, y):
        model.to(x.device)
        with eitp_kernels.use_backend(backend):
            loss = nn.functional.cross_entropy(model(x), y)
            if reg is not None:
                loss = loss + reg()[0]
            grads = torch.autograd.grad(loss, list(model.parameters()))
        return grads[0]
    return step


def build(device: torch.device, quick: bool) -> list[Case]:
    batch, width = (64, 256) if quick else (256, 1024)

    def make(dev):
        generator = torch.Generator().manual_seed(0)
        return (torch.randn(batch, 512, generator=generator).to(dev),
                torch.randint(0, 10, (batch,), generator=generator).to(dev))

    label = f"MLP b{batch} w{width}"
    # The plain step: same model and data, no regularizer ('eager' = itself).
    plain = Case(op=OP, shape=f"{label} plain", dtype=torch.float32, make_inputs=make,
                 fn=_step_fn(batch, width, False, None), reference=_step_fn(batch, width, False, None),
                 implemented=_backends.IMPLEMENTED, rtol=1e-4, atol=1e-6)
    regularized = Case(op=OP, shape=f"{label} +reg", dtype=torch.float32, make_inputs=make,
                       fn=_step_fn(batch, width, True, None), reference=_step_fn(batch, width, True, "reference"),
                       implemented=_backends.IMPLEMENTED, rtol=1e-3, atol=1e-5)
    return [plain, regularized]


register_suite(OP, build)


def overhead(steps: int = 60, threads: int = 1, cpu_time: bool = False) -> tuple[float, float]:
    """(plain, regularized) median seconds per step of the CPU case of EITPRegularizer's
    docstring: a 64-512-512-10 tanh MLP, batch 256, layers "1" and "3", default
    lambdas, forward + cross-entropy (+ regularizer) + backward, the two steps
    alternating in one process (so load on the machine hits both alike). Wall
    time, or with ``cpu_time`` the thread's CPU time (at 1 thread: the step's
    own work, less moved by other processes than the wall time)."""
    import statistics
    import time

    torch.set_num_threads(threads)
    plain, regularized = _overhead_steps()
    times: tuple[list[float], list[float]] = ([], [])
    clock = time.thread_time if cpu_time else time.perf_counter
    for i in range(steps + 5):
        for fn, out in ((plain, times[0]), (regularized, times[1])):
            start = clock()
            fn()
            if i >= 5:
                out.append(clock() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def _overhead_steps():
    """(plain, regularized): the two steps of the CPU case, each a no-argument function."""
    from eitp_kernels.training import EITPRegularizer

    def make(regularized: bool):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 512), nn.Tanh(), nn.Linear(512, 512), nn.Tanh(), nn.Linear(512, 10))
        reg = EITPRegularizer(model, ["1", "3"]) if regularized else None
        params = list(model.parameters())

        def step(x, y):
            loss = nn.functional.cross_entropy(model(x), y)
            if reg is not None:
                loss = loss + reg()[0]
            return torch.autograd.grad(loss, params)
        return step

    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 64, generator=generator), torch.randint(0, 10, (256,), generator=generator)
    plain, regularized = make(False), make(True)
    return (lambda: plain(x, y)), (lambda: regularized(x, y))


def parts(steps: int = 60) -> dict[str, float]:
    """Median thread CPU seconds, 1 thread, of the CPU case's pieces, in one
    process, taken in turn: the plain and regularized steps of :func:`overhead`,
    and on two tanh(randn(256, 512)) activations the two coherence losses'
    forward + backward (``coherence``, through ``coherence_loss``) and the one
    ``histogram_entropy_many`` (``entropies``). What is left of the overhead
    (regularized - plain - coherence - entropies) is the rest of
    ``EITPRegularizer.__call__``: C_l, the metrics, autograd's sums."""
    import statistics
    import time

    from eitp_kernels import coherence_loss, histogram_entropy_many

    torch.set_num_threads(1)
    plain, regularized = _overhead_steps()
    generator = torch.Generator().manual_seed(1)
    acts = [torch.tanh(torch.randn(256, 512, generator=generator)).requires_grad_() for _ in range(2)]

    def coherence():
        loss = torch.stack([coherence_loss(a) for a in acts]).mean()
        torch.autograd.grad(loss, acts)

    def entropies():
        histogram_entropy_many([a.detach() for a in acts], bins=64, base=2)

    fns = {"plain": plain, "regularized": regularized, "coherence": coherence, "entropies": entropies}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(steps + 5):
        for name, fn in fns.items():
            start = time.thread_time()
            fn()
            if i >= 5:
                times[name].append(time.thread_time() - start)
    return {k: statistics.median(v) for k, v in times.items()}


if __name__ == "__main__":
    import os
    import sys

    if "--parts" in sys.argv:
        p = parts()
        rest = p["regularized"] - p["plain"] - p["coherence"] - p["entropies"]
        print("EITPRegularizer CPU case, 1 thread, thread CPU time, medians of 60: " +
              ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in p.items()) +
              f", rest {rest * 1e3:.2f} ms (load average {os.getloadavg()[0]:.1f})")
        sys.exit(0)
    for cpu in (False, True):
        plain_s, reg_s = overhead(cpu_time=cpu)
        print(f"EITPRegularizer, 64-512-512-10 MLP, batch 256, 2 layers, default lambdas, 1 thread, "
              f"{'thread CPU' if cpu else 'wall'} time: plain step {plain_s * 1e3:.2f} ms, regularized "
              f"{reg_s * 1e3:.2f} ms, overhead {100 * (reg_s / plain_s - 1):+.0f}% "
              f"(load average {os.getloadavg()[0]:.1f})")
