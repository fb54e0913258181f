"""Adaptive schedule: full steps chosen per run from the forecast's own measured error; no per-model table.

At every full step ``i`` the run measures the relative L1 error ``e`` that the method's forecast would have
made there, from the history whose newest entry is full step ``k`` (``AdaptiveRun.observe_full``).
A forecast's error grows with its reach, roughly like ``reach ** growth``, so the error expected at a
later step ``j`` is ``e * (d(i, j) / d(k, i)) ** growth``, ``d`` the sigma distance between steps (step
count when the run's sigmas are unknown). Weighted by the noise level ``sigma_j / sigma_0`` (an error at
high noise changes the image more, ``AdaptiveRun._weight``), the next full step is the first step whose
expected error exceeds ``tolerance``, at least ``min_gap`` and at most ``max_gap`` steps after step ``i``. So the run
spends full steps where the features move fast (or the forecast does badly) and saves them where they
move slowly. Warm-up, ``start``/``end`` and the final full steps are honoured as in ``FixedSchedule``; a
step with nothing measured yet runs full. Decisions depend only on the run's sigmas and features, so a
seed gives the same schedule; the controller fixes each step's decision at its first call, so the cond
and uncond calls of a step agree.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .cache import CRFHistory
from .schedule import FixedSchedule, ScheduleRun, StepLocator, same_sigma
from .validation import check_float, check_int


@dataclass(frozen=True)
class AdaptiveSchedule:
    """Settings of the adaptive schedule (see the module docstring); validated on construction."""

    tolerance: float = 0.1
    warmup: int = 3
    max_gap: int = 8
    min_gap: int = 1
    final_full: int = 0
    start: float = 0.0
    end: float = 1.0
    growth: float = 1.0
    frame: FixedSchedule = field(init=False, repr=False, compare=False)
    kind = "adaptive"

    @property
    def label(self) -> str:
        return f"adaptive, max interval {self.max_gap}"

    def __post_init__(self) -> None:
        check_float("tolerance", self.tolerance, 0.0, 10.0)
        check_int("max_gap", self.max_gap, 1, 1000)
        check_int("min_gap", self.min_gap, 1, self.max_gap)
        check_float("growth", self.growth, 0.5, 4.0)
        # warm-up, start/end and final full steps: the fixed schedule's forced steps (validated there)
        object.__setattr__(self, "frame", FixedSchedule(self.warmup, 1, self.final_full, self.start, self.end))

    def start_run(self, locator: StepLocator) -> AdaptiveRun:
        return AdaptiveRun(self, locator)


class AdaptiveRun(ScheduleRun):
    """One run's adaptive decisions: ``next_full`` is set by each observed full step."""

    def __init__(self, schedule: AdaptiveSchedule, locator: StepLocator) -> None:
        self.schedule, self.locator = schedule, locator
        self.next_full: int | None = None  # None: nothing measured yet, the next step runs full
        self.errors: dict[int, float] = {}  # full step -> largest measured forecast error there

    def is_full(self, step: int) -> bool:
        if self.schedule.frame.forced_full(step, self.locator.n_steps) or self.next_full is None:
            return True
        return step >= self.next_full

    def observe_full(self, plan, pairs: list[tuple[CRFHistory, torch.Tensor]], method) -> None:
        """Measure, per stream, the error the forecast from the history would have made for the computed
        chunk; the worst stream counts."""
        measured = [forecast_error(history, plan, chunk, method) for history, chunk in pairs]
        errors = [e for e, _ in measured if e is not None]
        prev_steps = [p for _, p in measured if p is not None]
        self.observe(plan.step, max(errors) if errors else None, max(prev_steps, default=None))

    def observe(self, step: int, error: float | None, prev_step: int | None) -> None:
        """Full step ``step`` ran. ``error``: the relative error the forecast from the history (newest entry
        at ``prev_step``) would have made there, max over the call's streams; None if not measurable."""
        if error is None or prev_step is None or prev_step == step:
            self.next_full = None
            return
        error = max(error, self.errors.get(step, 0.0))  # several calls of one step: the worst counts
        self.errors[step] = error
        s = self.schedule
        reach = self._distance(prev_step, step)
        n_steps = self.locator.n_steps
        gap = s.min_gap
        while gap < s.max_gap and (n_steps is None or step + gap < n_steps):
            j = step + gap
            growth = (self._distance(step, j) / reach) ** s.growth if reach > 0 else float("inf")
            if error * growth * self._weight(j) > s.tolerance:
                break
            gap += 1
        self.next_full = step + gap

    def _weight(self, step: int) -> float:
        """How much a feature error at ``step`` matters (``noise_weight``)."""
        sigmas = self.locator.sigmas
        if sigmas is None or step >= len(sigmas):
            return 1.0
        return noise_weight(sigmas[step], sigmas[0])

    def _distance(self, a: int, b: int) -> float:
        """Sigma distance between steps ``a`` and ``b`` (in steps when the sigmas are unknown)."""
        sigmas = self.locator.sigmas
        if sigmas is None or max(a, b) >= len(sigmas):
            return float(abs(b - a))
        return abs(sigmas[a] - sigmas[b])


def noise_weight(sigma: float, first: float) -> float:
    """How much a feature error at noise ``sigma`` matters: its noise level relative to the run's ``first``,
    at least 0.25. Measured on the testbed, caching one step changes the image by ~0.13 x sigma x the
    relative CRF error (0.13 at sigma 0.98, 0.04 at sigma 0.3): errors at high noise shape the layout."""
    if first <= 0:
        return 1.0
    return min(max(sigma / first, 0.25), 1.0)


def forecast_error(history: CRFHistory, plan, crf: torch.Tensor, method) -> tuple[float | None, int | None]:
    """Relative L1 error the forecast from ``history`` (without any entry at the call's sigma) would have made
    for the computed ``crf`` ``[b, L, D]``, and the step of the history's newest entry; ``(None, None)``
    without a usable history or when the forecast fails."""
    entries = [e for e in history.entries if not same_sigma(plan.sigma, e.sigma)]
    if not entries or entries[0].crf.shape != crf.shape:
        return None, None
    past = CRFHistory(history.capacity)
    past.entries = entries
    try:
        forecast = method.predict(past, plan.sigma, plan.layout).to(crf.device, torch.float32)
    except Exception:
        return None, None
    truth = crf.float()
    error = float((forecast - truth).abs().mean() / truth.abs().mean().clamp_min(1e-12))
    return (error, past.entries[0].step) if math.isfinite(error) else (None, None)
