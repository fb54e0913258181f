"""The adaptive schedule (AdaptiveSchedule) driven through the CacheController with synthetic features."""
from __future__ import annotations

from typing import Callable

import pytest
import torch

from freqca_core import AdaptiveSchedule, CacheController, FixedSchedule, TokenLayout, make_method

LAYOUT = TokenLayout.grid(4, 4)
SIGMAS = [1.0 - i / 30 for i in range(31)]  # 30 steps, uniform


def feature(sigma: float, speed: Callable[[float], float]) -> torch.Tensor:
    """A CRF ``[1, 16, 8]`` whose change per unit sigma is ``speed(sigma)`` times a fixed direction."""
    g = torch.Generator().manual_seed(0)
    base, direction = torch.randn(1, 16, 8, generator=g) + 3.0, torch.randn(1, 16, 8, generator=g)
    return base + direction * speed(sigma) * (1.0 - sigma)


def run(schedule, speed=lambda s: 1.0, sigmas=SIGMAS, streams=("cond",), split_calls=False,
        method: str = "reuse") -> CacheController:
    """One run over ``sigmas``: full calls record ``feature(sigma)`` per stream, like an adapter would."""
    ctrl = CacheController(make_method(method), schedule)
    ctrl.start_run(sigmas)
    for sigma in sigmas[:-1]:
        calls = [(s,) for s in streams] if split_calls else [tuple(streams)]
        for call in calls:
            plan = ctrl.plan(sigma, call, len(call), LAYOUT)
            if plan.full:
                ctrl.record(plan, torch.cat([feature(sigma, speed)] * len(call)))
    return ctrl


def full_steps(ctrl: CacheController) -> list[int]:
    return sorted(step for step, mode in ctrl.stats.steps.items() if mode == "full")


def test_invalid_settings_name_the_input():
    with pytest.raises(ValueError, match="tolerance"):
        AdaptiveSchedule(tolerance=-0.1)
    with pytest.raises(ValueError, match="min_gap"):
        AdaptiveSchedule(min_gap=5, max_gap=3)
    with pytest.raises(ValueError, match="max_gap"):
        AdaptiveSchedule(max_gap=0)
    with pytest.raises(ValueError, match="warmup_steps"):
        AdaptiveSchedule(warmup=-1)
    with pytest.raises(ValueError, match="end_percent"):
        AdaptiveSchedule(start=0.8, end=0.2)


def test_larger_tolerance_takes_fewer_full_steps():
    counts = [len(full_steps(run(AdaptiveSchedule(tolerance=t, max_gap=10)))) for t in (0.001, 0.01, 0.05, 0.3)]
    assert counts == sorted(counts, reverse=True)
    assert counts[0] > counts[-1]


def test_faster_features_get_more_full_steps():
    slow = full_steps(run(AdaptiveSchedule(tolerance=0.02, max_gap=10), speed=lambda s: 0.2))
    fast = full_steps(run(AdaptiveSchedule(tolerance=0.02, max_gap=10), speed=lambda s: 2.0))
    assert len(fast) > len(slow)


def test_full_steps_follow_where_features_move():
    """Features that move only in the second half of the run: full steps gather there."""
    still_then_moving = lambda s: 0.0 if s > 0.5 else 4.0  # noqa: E731
    steps = full_steps(run(AdaptiveSchedule(tolerance=0.02, max_gap=8), speed=still_then_moving))
    first_half = [s for s in steps if 3 <= s < 15]
    second_half = [s for s in steps if s >= 15]
    assert len(second_half) > 2 * len(first_half)


def test_constant_features_use_the_largest_gap_and_gaps_stay_within_bounds():
    steps = full_steps(run(AdaptiveSchedule(tolerance=0.05, warmup=3, max_gap=5), speed=lambda s: 0.0))
    assert steps[:3] == [0, 1, 2]
    assert [b - a for a, b in zip(steps[2:], steps[3:])] == [5] * (len(steps) - 3)
    steps = full_steps(run(AdaptiveSchedule(tolerance=0.0, warmup=3, min_gap=3, max_gap=6), speed=lambda s: 5.0))
    assert all(b - a == 3 for a, b in zip(steps[2:], steps[3:]))  # never closer than min_gap


def test_forced_full_steps_are_honoured():
    steps = full_steps(run(AdaptiveSchedule(tolerance=10.0, warmup=4, max_gap=50, final_full=2, end=0.9),
                           speed=lambda s: 0.0))
    assert steps[:4] == [0, 1, 2, 3]
    assert {27, 28, 29} <= set(steps)  # end 0.9 of 30 steps -> 27 on; the last two
    assert all(s in (0, 1, 2, 3) or s >= 27 for s in steps)


def test_same_decision_for_cond_and_uncond_calls_of_a_step():
    batched = run(AdaptiveSchedule(tolerance=0.02), streams=("uncond", "cond"))
    split = run(AdaptiveSchedule(tolerance=0.02), streams=("uncond", "cond"), split_calls=True)
    assert full_steps(batched) == full_steps(split)
    assert split.stats.full_calls == 2 * len(full_steps(split))  # both calls of a full step ran full


def test_deterministic_and_reset_per_run():
    schedule = AdaptiveSchedule(tolerance=0.02)
    a = run(schedule, speed=lambda s: 3.0)
    b = run(schedule, speed=lambda s: 3.0)
    assert full_steps(a) == full_steps(b)
    ctrl = run(schedule, speed=lambda s: 3.0)
    ctrl.start_run(SIGMAS)  # the earlier run's measurements are gone: nothing measured -> steps run full
    assert ctrl.plan(SIGMAS[5], ("cond",), 1, LAYOUT).full


def test_without_sigmas_distances_are_counted_in_steps():
    ctrl = CacheController(make_method("reuse"), AdaptiveSchedule(tolerance=0.02, max_gap=6))
    ctrl.start_run(None)
    modes = []
    for sigma in SIGMAS[:-1]:
        plan = ctrl.plan(sigma, ("cond",), 1, LAYOUT)
        modes.append(plan.full)
        if plan.full:
            ctrl.record(plan, feature(sigma, lambda s: 1.0))
    assert modes[:3] == [True] * 3 and not all(modes)


def test_fixed_schedule_is_unaffected_by_errors():
    fixed = FixedSchedule(3, 4)
    ctrl = run(fixed, speed=lambda s: 10.0)
    assert full_steps(ctrl) == fixed.full_steps(30)
