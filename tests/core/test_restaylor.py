"""``res-taylor``: Taylor forecast of what the blocks add, per band orders, through the registry."""
from __future__ import annotations

import pytest
import torch

from freqca_core import CacheConfig
from freqca_core.controller import CacheController
from freqca_core.methods import METHODS
from freqca_core.methods.restaylor import ResidualBandTaylorMethod, ResidualTaylorMethod
from freqca_core.schedule import FixedSchedule
from freqca_core.spectral import BandSplitter, TokenLayout

LAYOUT = TokenLayout.grid(8, 8)
SPLIT = BandSplitter(0.1, "dct")


def trajectory(order_low: int, order_high: int):
    """``R(sigma)``: a polynomial whose low band has degree ``order_low`` and high band ``order_high``."""
    g = torch.Generator().manual_seed(0)
    low = [SPLIT.low(torch.randn(2, 64, 4, generator=g, dtype=torch.float64), LAYOUT) for _ in range(3)]
    high = [(x := torch.randn(2, 64, 4, generator=g, dtype=torch.float64)) - SPLIT.low(x, LAYOUT) for _ in range(3)]
    return lambda s: (sum(c * s ** k for k, c in enumerate(low[: order_low + 1]))
                      + sum(c * s ** k for k, c in enumerate(high[: order_high + 1])))


def run(order: int, residual, sigmas, full_every: int = 3):
    """A controller run over ``sigmas``: full calls store ``embedding + residual(sigma)``; returns the
    cached calls' ``(crf, expected)`` pairs."""
    method = ResidualTaylorMethod(order) if order <= 1 else ResidualBandTaylorMethod(SPLIT, order)
    ctrl = CacheController(method, FixedSchedule(warmup=1, interval=full_every))
    ctrl.start_run(sigmas)
    pairs = []
    for i, s in enumerate(sigmas[:-1]):
        embedding = torch.full((2, 64, 4), 10.0 * i, dtype=torch.float64)  # changes every step
        plan = ctrl.plan(s, ("u", "c"), 2, LAYOUT, embedding=embedding)
        if plan.full:
            ctrl.record(plan, embedding + residual(s), embedding=embedding)
        else:
            pairs.append((plan.crf, embedding + residual(s)))
    return ctrl, pairs


SIGMAS = [1.0 - i / 12 + 0.02 * (i % 3) for i in range(13)]  # non-uniform spacing
SIGMAS[-1] = 0.0


@pytest.mark.parametrize("order", [1, 2])
def test_exact_when_each_band_is_a_polynomial_of_its_order(order):
    ctrl, pairs = run(order, trajectory(order, min(order, 1)), SIGMAS)
    assert len(pairs) >= 6 and ctrl.stats.fallbacks == 0
    for crf, expected in pairs[2 * order:]:  # two cached steps per cycle: from the (order + 1)-th full step on
        torch.testing.assert_close(crf, expected)


def test_high_band_stays_linear_and_order_one_is_the_whole_feature_linear():
    quadratic_high = trajectory(1, 2)
    _, pairs = run(2, quadratic_high, SIGMAS)
    assert any((crf - exp).abs().max() > 1e-6 for crf, exp in pairs[4:])  # high band not extrapolated at order 2
    linear = trajectory(1, 1)
    _, pairs = run(1, linear, SIGMAS)
    for crf, expected in pairs[2:]:
        torch.testing.assert_close(crf, expected)


def test_registry_and_config():
    assert "res-taylor" in METHODS
    config = CacheConfig(method="res-taylor", warmup=1, interval=4, final_full=1, taylor_order=2)
    method = config.new_method(50)
    assert isinstance(method, ResidualBandTaylorMethod) and method.history_size == 3
    assert method.describe()["order"] == 2 and method.name == "res-taylor"
    linear = CacheConfig(method="res-taylor", taylor_order=1).new_method(50)
    assert isinstance(linear, ResidualTaylorMethod) and linear.describe()["order"] == 1 and linear.history_size == 2
    assert len(config.step_schedule().full_steps(50)) == 14  # steps 0, 4, ..., 48 and the last one
    with pytest.raises(ValueError, match="taylor_order"):
        CacheConfig(method="res-taylor", taylor_order=4)


def test_needs_the_embedding():
    ctrl = CacheController(ResidualTaylorMethod(1), FixedSchedule(warmup=1, interval=100))
    ctrl.start_run([1.0, 0.5, 0.0])
    full = ctrl.plan(1.0, (0,), 1, LAYOUT, embedding=torch.zeros(1, 64, 4))
    ctrl.record(full, torch.ones(1, 64, 4), embedding=torch.zeros(1, 64, 4))
    plan = ctrl.plan(0.5, (0,), 1, LAYOUT)
    assert plan.full and "embedding" in plan.reason
