"""Forecasters: predict a feature at a new sigma from the features of the last full steps.

Every forecaster is linear in the history: it returns weights ``c_j`` so that the forecast is
``sum_j c_j * F_j`` over the history (newest first). Weights are computed from the real sigma spacing of
the history, so non-uniform schedules (FLUX's shifted one, Karras, …) are handled correctly.

- ``ReuseForecaster``: ``F_0`` (FORA-style reuse; exact on constants).
- ``TaylorForecaster(order)``: the polynomial of degree ``order`` through the last ``order + 1`` points
  (Taylor expansion with derivatives from divided differences); exact on polynomials of that degree.
- ``HermiteForecaster(scale)``: FreqCa's scaled 2nd-order Hermite expansion (see ``HermiteForecaster``).
With fewer history entries than needed, each falls back to the highest order the history supports.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Sequence

from .validation import check_float, check_int


class Forecaster(ABC):
    name: str
    needs: int  # history entries that give the full order

    @abstractmethod
    def weights(self, sigmas: Sequence[float], sigma: float, step_size: float) -> list[float]:
        """Weights for the history at ``sigmas`` (newest first, pairwise distinct) to forecast ``sigma``.

        ``step_size`` is the sampler's sigma distance per step around the history (used by Hermite only).
        """


class ReuseForecaster(Forecaster):
    name = "reuse"
    needs = 1

    def weights(self, sigmas: Sequence[float], sigma: float, step_size: float) -> list[float]:
        return [1.0] + [0.0] * (len(sigmas) - 1)


class TaylorForecaster(Forecaster):
    name = "taylor"

    def __init__(self, order: int = 2) -> None:
        self.order = check_int("order", order, 0, 3)
        self.needs = self.order + 1

    def weights(self, sigmas: Sequence[float], sigma: float, step_size: float) -> list[float]:
        used = sigmas[: self.needs]
        weights = [_lagrange(used, j, sigma) for j in range(len(used))]
        return weights + [0.0] * (len(sigmas) - len(used))


class HermiteForecaster(Forecaster):
    """FreqCa's scaled Hermite forecast, in sigma units.

    The official code forecasts ``F(x) = F0 + sum_k H_k(s*x)/k! * s**k * D_k`` (``H_k`` physicists' Hermite
    polynomials, ``s`` the scale, ``x`` the distance in sampler steps, ``D_k`` backward-difference
    derivatives per step). Written in sigma with ``d = sigma - sigma_0`` and ``u`` = sigma per sampler step:

        F = F0 + 2 s^2 d D1 + s^2 (2 s^2 d^2 - u^2) D2,    D1 = f[s0, s1],  D2 = 2 f[s0, s1, s2]

    which equals the official expression on uniform steps. With ``s = 1/sqrt(2)`` (the paper's 0.71 rounds
    it) it is exact on linear trajectories; its second-order term is deliberately damped, so it is not
    exact on quadratics (the ``-u^2`` term and the backward-difference ``D1``).
    """

    name = "hermite"

    def __init__(self, scale: float = 0.71, order: int = 2) -> None:
        self.scale = check_float("hermite_scale", scale, 0.0, 2.0, low_open=True)
        self.order = check_int("order", order, 0, 2)
        self.needs = self.order + 1

    def weights(self, sigmas: Sequence[float], sigma: float, step_size: float) -> list[float]:
        n = min(len(sigmas), self.needs)
        s2 = self.scale ** 2
        d = sigma - sigmas[0]
        weights = [1.0] + [0.0] * (len(sigmas) - 1)
        if n >= 2:  # first-order term: 2 s^2 d f[s0, s1]
            c = 2 * s2 * d / (sigmas[0] - sigmas[1])
            weights[0] += c
            weights[1] -= c
        if n >= 3:  # second-order term: s^2 (2 s^2 d^2 - u^2) * 2 f[s0, s1, s2]
            c = s2 * (2 * s2 * d * d - step_size * step_size) * 2
            for j in range(3):
                weights[j] += c * _divided_difference_weight(sigmas[:3], j)
        return weights


def sigma_per_step(sigmas: Sequence[float], steps: Sequence[int]) -> float:
    """The sampler's sigma per step between the two newest of full steps ``steps`` at ``sigmas`` (newest
    first): the ``step_size`` of ``Forecaster.weights``; 0 with a single step."""
    if len(sigmas) < 2:
        return 0.0
    return abs(sigmas[1] - sigmas[0]) / max(steps[0] - steps[1], 1)


def _lagrange(nodes: Sequence[float], j: int, x: float) -> float:
    """The ``j``-th Lagrange basis polynomial of ``nodes`` at ``x``."""
    return math.prod((x - nodes[m]) / (nodes[j] - nodes[m]) for m in range(len(nodes)) if m != j)


def _divided_difference_weight(nodes: Sequence[float], j: int) -> float:
    """Weight of ``f(nodes[j])`` in the divided difference ``f[nodes[0], ..., nodes[-1]]``."""
    return 1.0 / math.prod(nodes[j] - nodes[m] for m in range(len(nodes)) if m != j)


FORECASTERS = ("reuse", "taylor", "hermite")
