"""Rectified-flow sampling helpers: the shifted FLUX-style sigma schedule, seeded noise and Euler steps."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

VelocityFn = Callable[[Tensor, float], Tensor]


def flux_sigmas(steps: int, shift: float = 2.0) -> Tensor:
    """Schedule of ``steps + 1`` sigmas from 1 to 0: ``shift*s / (1 + (shift-1)*s)`` on a uniform s grid."""
    if steps < 1 or shift <= 0:
        raise ValueError("steps must be >= 1 and shift > 0")
    s = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return (shift * s / (1 + (shift - 1) * s)).float()


def seeded_noise(seeds: Sequence[int], size: tuple[int, int], channels: int = 3) -> Tensor:
    """Standard normal noise [B, C, H, W], one CPU torch generator per seed (independent of batch make-up)."""
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    return torch.stack([torch.randn(channels, *size, generator=g) for g in gens])


def euler_sample(velocity_fn: VelocityFn, noise: Tensor, sigmas: Tensor,
                 callback: Callable[[int, Tensor], None] | None = None) -> Tensor:
    """Integrate dx/dsigma = v from sigmas[0] to sigmas[-1]: x_{i+1} = x_i + (s_{i+1} - s_i) * v(x_i, s_i).

    ``velocity_fn(x [B,C,H,W], sigma) -> v [B,C,H,W]``; ``callback(i, x)`` sees x after step i.
    """
    x = noise
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x = x + (s_next - s) * velocity_fn(x, s)
        if callback is not None:
            callback(i, x)
    return x
