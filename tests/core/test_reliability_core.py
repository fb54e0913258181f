"""Fault cases of the cache controller that the ComfyUI reliability suite (tests/comfy/test_reliability.py)
relies on, checked without ComfyUI: a forecast the caller cannot use, re-runs at (almost) the same sigma,
non-finite sigmas, and many runs in a row."""
from __future__ import annotations

import logging

import pytest
import torch

from freqca_core import CacheController, FixedSchedule, TokenLayout, make_method

LAYOUT = TokenLayout.grid(4, 4)
D = 8
SIGMAS = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]


def crf(seed: int, rows: int = 1, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(rows, LAYOUT.length, D, generator=torch.Generator().manual_seed(seed)).to(dtype)


def linear(rows: int = 1, dtype=torch.float32):
    """F(sigma) = A + B sigma: every method but reuse forecasts it exactly (Hermite at scale 1/sqrt 2)."""
    a, b = crf(1, rows, torch.float64), crf(2, rows, torch.float64)
    return lambda s: (a + b * s).to(dtype)


def controller(method="taylor", warmup=3, interval=3, **kwargs) -> CacheController:
    return CacheController(make_method(method, **kwargs), FixedSchedule(warmup, interval))


def test_demote_turns_a_cached_plan_into_a_counted_fallback(caplog):
    ctrl = controller("reuse", 1, 4)
    ctrl.start_run(SIGMAS)
    ctrl.record(ctrl.plan(SIGMAS[0], [0], 1, LAYOUT), crf(0))
    plan = ctrl.plan(SIGMAS[1], [0], 1, LAYOUT)
    assert not plan.full and ctrl.stats.cached_calls == 1 and ctrl.stats.steps[1] == "cached"
    with caplog.at_level(logging.WARNING, logger="freqca"):
        assert ctrl.demote(plan, "cannot use it") is plan
    assert plan.full and plan.crf is None and plan.reason == "cannot use it"
    stats = ctrl.stats
    assert (stats.cached_calls, stats.full_calls, stats.fallbacks) == (0, 2, 1)
    assert stats.steps[1] == "full" and stats.timeline().startswith("FF")
    assert "cannot use it" in caplog.text
    # the demoted call runs full: its CRF is recorded like any full call's
    ctrl.record(plan, crf(1))
    assert ctrl.cache.history(0).sigmas == [SIGMAS[1]]
    # a full plan is left alone
    assert ctrl.demote(plan, "again") is plan and ctrl.stats.fallbacks == 1


@pytest.mark.parametrize("method", ["taylor", "freqca"])
def test_rerun_at_almost_the_same_sigma_does_not_blow_up_the_forecast(method):
    """A second call of a full step at a sigma that differs only by rounding (e.g. a solver that rebuilds
    sigma from log-sigma, or a re-run after a float32 round trip) is the same point of the trajectory: the
    history must not keep both, or the divided differences of the forecast divide by ~1e-7 (before the fix:
    ~4 % relative error on a linear trajectory, growing with the distance forecast)."""
    traj = linear()
    forecasts = []
    for rerun in (False, True):
        ctrl = controller(method, 3, 3)
        ctrl.start_run(SIGMAS)
        for step in range(3):  # full warm-up steps; with rerun each is called again at a rounded sigma
            for s in (SIGMAS[step], SIGMAS[step] * (1 + 3e-7))[: 2 if rerun else 1]:
                plan = ctrl.plan(s, [0], 1, LAYOUT)
                assert plan.full and plan.step == step
                ctrl.record(plan, traj(s))
        sigmas = ctrl.cache.history(0).sigmas
        assert len(sigmas) == 3 and min(abs(a - b) for a, b in zip(sigmas, sigmas[1:])) > 0.05
        plan = ctrl.plan(SIGMAS[4], [0], 1, LAYOUT)
        assert not plan.full
        forecasts.append(plan.crf)
    torch.testing.assert_close(forecasts[1], forecasts[0], atol=1e-4, rtol=1e-4)
    if method == "taylor":  # exact on a linear trajectory
        torch.testing.assert_close(forecasts[1], traj(SIGMAS[4]), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("sigma", [float("nan"), float("inf"), -1.0, 2.0])
def test_a_call_at_a_sigma_outside_the_schedule_runs_full_and_records_nothing(sigma):
    ctrl = controller("reuse", 1, 2)
    ctrl.start_run(SIGMAS)
    plan = ctrl.plan(sigma, [0], 1, LAYOUT)
    assert plan.full and plan.step is None
    ctrl.record(plan, crf(0))
    assert ctrl.cache.nbytes == 0 and ctrl.stats.timeline() == "." * 10


@pytest.mark.parametrize("schedule", [[float("nan"), 0.0], [1.0, float("nan"), 0.0], [float("inf"), 1.0, 0.0]])
def test_non_finite_schedules_do_not_crash(schedule):
    for method in ("freqca", "taylor", "reuse"):
        ctrl = controller(method, 1, 2)
        ctrl.start_run(torch.tensor(schedule))
        for s in schedule[:-1] * 2:
            plan = ctrl.plan(s, [0], 1, LAYOUT)
            if plan.full:
                ctrl.record(plan, crf(3))
            else:
                assert torch.isfinite(plan.crf).all()
        ctrl.stats.timeline()
        assert ctrl.end_run() is ctrl.stats and ctrl.cache.nbytes == 0


def test_many_runs_leave_nothing_behind():
    """The same controller through 100 runs (as the node's per-run controllers would be): each ends empty,
    peak bytes = history size x CRF bytes x streams, and no stream keys pile up."""
    ctrl = controller("freqca", 1, 2)
    one = 2 * LAYOUT.length * D * 4
    for i in range(100):
        ctrl.start_run(SIGMAS[:6])
        streams = (f"uncond-{i}", f"cond-{i}")  # ComfyUI's uuids are new every run
        for s in SIGMAS[:5]:
            plan = ctrl.plan(s, streams, 4, LAYOUT)
            if plan.full:
                ctrl.record(plan, crf(i, rows=4))
        stats = ctrl.end_run()
        assert stats.peak_cache_bytes == ctrl.method.history_size * one * 2
        assert ctrl.cache.nbytes == 0 and ctrl.cache.streams == {}
