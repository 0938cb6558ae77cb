"""Inertia-aware learning rate ("intelligence inertia").

    v = ||theta_t - theta_{t-1}|| / ||theta_{t-1}||      (relative change of the last step)
    lr_eff = lr * sqrt(1 - min((v / c_L)^2, 1 - eps))

Like special relativity's Lorentz factor with c_L as the "speed limit": the
faster parameters moved in the last step, the more the next step is damped,
never below lr * sqrt(eps).
"""
from __future__ import annotations

import torch
from torch.optim import Optimizer


class InertiaAwareLR:
    """A ``torch.optim.lr_scheduler``-style wrapper: call ``step()`` after ``optimizer.step()``.

    Args:
        optimizer: the wrapped optimizer; each param group's initial lr is its base lr.
        speed_limit: c_L, the relative change per step at which the lr would vanish (> 0).
        eps: floor of the factor's radicand, 0 < eps <= 1 (lr never below lr*sqrt(eps)).

    Keeps one copy of the parameters (the previous step's), so it costs one
    parameter-sized buffer. ``step()`` reads v back to set the float lr: one
    host sync per step.
    """

    def __init__(self, optimizer: Optimizer, speed_limit: float, eps: float = 1e-3):
        if not speed_limit > 0:
            raise ValueError(f"InertiaAwareLR: speed_limit must be > 0, got {speed_limit}")
        if not 0 < eps <= 1:
            raise ValueError(f"InertiaAwareLR: eps must be in (0, 1], got {eps}")
        self.optimizer = optimizer
        self.speed_limit = float(speed_limit)
        self.eps = float(eps)
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self._previous = [[p.detach().clone() for p in group["params"]] for group in optimizer.param_groups]
        self.last_speed = [0.0] * len(self.base_lrs)
        self.last_factor = [1.0] * len(self.base_lrs)

    @torch.no_grad()
    def relative_change(self, group_index: int) -> torch.Tensor:
        """v for one param group: ||theta - theta_prev|| / ||theta_prev|| (0 if theta_prev is 0)."""
        params = self.optimizer.param_groups[group_index]["params"]
        previous = self._previous[group_index]
        delta = torch.stack([(p - q).float().norm() for p, q in zip(params, previous)]).norm()
        norm = torch.stack([q.float().norm() for q in previous]).norm()
        return torch.where(norm > 0, delta / norm, torch.zeros_like(norm))

    def factor(self, speed: float) -> float:
        """sqrt(1 - min((v/c_L)^2, 1 - eps))."""
        return (1.0 - min((speed / self.speed_limit) ** 2, 1.0 - self.eps)) ** 0.5

    @torch.no_grad()
    def step(self) -> None:
        for i, group in enumerate(self.optimizer.param_groups):
            speed = float(self.relative_change(i))
            self.last_speed[i] = speed
            self.last_factor[i] = self.factor(speed)
            group["lr"] = self.base_lrs[i] * self.last_factor[i]
            for p, q in zip(group["params"], self._previous[i]):
                q.copy_(p)

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"base_lrs": self.base_lrs, "speed_limit": self.speed_limit, "eps": self.eps,
                "last_speed": self.last_speed, "last_factor": self.last_factor}

    def load_state_dict(self, state: dict) -> None:
        for key in ("base_lrs", "speed_limit", "eps", "last_speed", "last_factor"):
            setattr(self, key, state[key])
