"""Inertia-aware learning rate against hand-computed factors."""
import math

import pytest
import torch

from eitp_kernels.training import InertiaAwareLR


def _setup(speed_limit=0.5, eps=1e-3):
    p = torch.nn.Parameter(torch.tensor([3.0, 4.0]))  # ||p|| = 5
    opt = torch.optim.SGD([p], lr=0.1)
    return p, opt, InertiaAwareLR(opt, speed_limit=speed_limit, eps=eps)


def test_factor_follows_the_formula():
    p, opt, sched = _setup()
    with torch.no_grad():
        p.add_(torch.tensor([0.6, 0.8]))  # ||delta|| = 1 -> v = 0.2
    sched.step()
    assert sched.last_speed[0] == pytest.approx(0.2)
    assert sched.get_last_lr()[0] == pytest.approx(0.1 * math.sqrt(1 - (0.2 / 0.5) ** 2))


def test_factor_is_floored_above_zero():
    p, opt, sched = _setup(speed_limit=0.1, eps=0.04)
    with torch.no_grad():
        p.mul_(3.0)  # v = 2, far above the limit
    sched.step()
    assert sched.get_last_lr()[0] == pytest.approx(0.1 * math.sqrt(0.04))


def test_no_motion_keeps_base_lr_and_works_in_a_training_loop():
    p, opt, sched = _setup()
    sched.step()
    assert sched.get_last_lr()[0] == pytest.approx(0.1)
    for _ in range(3):
        opt.zero_grad()
        (p ** 2).sum().backward()
        opt.step()
        sched.step()
        assert 0 < sched.get_last_lr()[0] <= 0.1


@pytest.mark.parametrize("kwargs", [{"speed_limit": 0.0}, {"speed_limit": 1.0, "eps": 0.0}, {"speed_limit": 1.0, "eps": 2.0}])
def test_bad_arguments(kwargs):
    p = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError):
        InertiaAwareLR(torch.optim.SGD([p], lr=0.1), **kwargs)
