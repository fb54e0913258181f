"""Which sampler steps run the full transformer, and which step a model call belongs to."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

from .validation import check_float, check_int

MIN_CACHED_STEPS = 5  # shorter runs are not cached: at most one step could be skipped, at a large error


class StepSchedule:
    """A schedule whose decisions depend on the step and the run length only (``is_full(step, n_steps)``).
    ``kind`` names what decides the full steps and ``label`` says it for a run summary."""

    kind = "steps"

    @property
    def label(self) -> str:
        return self.kind

    def is_full(self, step: int, n_steps: int | None) -> bool:
        raise NotImplementedError

    def full_steps(self, n_steps: int) -> list[int]:
        return [i for i in range(n_steps) if self.is_full(i, n_steps)]

    def start_run(self, locator: StepLocator) -> ScheduleRun:
        """This schedule's decisions for one sampling run."""
        return FixedRun(self, locator.n_steps)


@dataclass(frozen=True)
class FixedSchedule(StepSchedule):
    """FreqCa's schedule: ``warmup`` full steps, then one full step every ``interval`` steps.

    Step ``i`` of ``n`` is full if ``i < origin`` (``origin = max(warmup, 1, ceil(start * n))``), if
    ``(i - origin + 1) % interval == 0`` (so the last warm-up step opens the first cycle, as in the
    official code: warm-up 3, interval 6 → full steps 0, 1, 2, 8, 14, …), if ``i >= end * n``, or if it is
    one of the ``final_full`` last steps. Step 0 is always full (nothing to forecast from before it).
    With ``fit_short_runs`` a run too short for these settings uses the schedule ``for_run`` gives instead
    (the node sets it; research scripts that time or compare exact patterns leave it off).
    """

    warmup: int = 3
    interval: int = 6
    final_full: int = 0
    start: float = 0.0
    end: float = 1.0
    fit_short_runs: bool = False
    kind = "fixed"

    @property
    def label(self) -> str:
        return f"interval {self.interval}"

    def __post_init__(self) -> None:
        check_int("warmup_steps", self.warmup, 0, 1000)
        check_int("interval", self.interval, 1, 1000)
        check_int("final_full_steps", self.final_full, 0, 1000)
        check_float("start_percent", self.start, 0.0, 1.0)
        check_float("end_percent", self.end, 0.0, 1.0)
        if self.end < self.start:
            raise ValueError(f"end_percent ({self.end}) must be >= start_percent ({self.start})")

    def is_full(self, step: int, n_steps: int | None) -> bool:
        """Whether sampler step ``step`` (0-based) of ``n_steps`` (None: unknown length) runs all blocks."""
        return self.forced_full(step, n_steps) or (step - self.origin(n_steps) + 1) % self.interval == 0

    def origin(self, n_steps: int | None) -> int:
        """The first step that may be cached: after warm-up and ``start`` (never step 0)."""
        origin = max(self.warmup, 1)
        if n_steps is not None:
            origin = max(origin, math.ceil(self.start * n_steps - 1e-9))
        return origin

    def forced_full(self, step: int, n_steps: int | None) -> bool:
        """Full whatever the interval: warm-up, before ``start``, from ``end`` on, the final full steps."""
        if step < self.origin(n_steps):
            return True
        return n_steps is not None and (step >= self.end * n_steps - 1e-9 or step >= n_steps - self.final_full)

    def start_run(self, locator: StepLocator) -> ScheduleRun:
        """This schedule's decisions for one run (with ``fit_short_runs``: fitted to its length, ``for_run``)."""
        return FixedRun(self.for_run(locator.n_steps) if self.fit_short_runs else self, locator.n_steps)

    def is_short(self, n_steps: int | None) -> bool:
        """Whether a run of ``n_steps`` cannot hold the warm-up and two full cycles (``warmup + 2 * interval``
        steps and a last one): its cached stretches would be a large part of the run, ending it cached."""
        return n_steps is not None and self.interval > 1 and n_steps < self.warmup + 2 * self.interval + 1

    def for_run(self, n_steps: int | None) -> FixedSchedule:
        """The schedule a run of ``n_steps`` steps uses: this one, unless the run is short (``is_short``).
        A short run of fewer than ``MIN_CACHED_STEPS`` steps runs every step full; a longer one gets
        ``interval = max(2, n // 4)`` and ``warmup = max(1, n // 4)`` (never more than chosen) and its
        last step full: 8 steps with the defaults are ``FFcFcFcF``, 12 steps ``FFFccFccFccF``."""
        if not self.is_short(n_steps):
            return self
        if n_steps < MIN_CACHED_STEPS:
            return replace(self, warmup=n_steps, interval=1)
        return replace(self, warmup=min(self.warmup, max(1, n_steps // 4)),
                       interval=min(self.interval, max(2, n_steps // 4)), final_full=max(self.final_full, 1))

    def fit_text(self, n_steps: int | None) -> str:
        """What ``for_run`` changed for a run of ``n_steps``, for the run summary; "" when nothing (or off)."""
        fitted = self.for_run(n_steps)
        if fitted == self or not self.fit_short_runs:
            return ""
        if fitted.interval == 1:
            return f"{n_steps} steps: too short to cache (under {MIN_CACHED_STEPS}), every step full"
        last = "last step" if fitted.final_full == 1 else f"last {fitted.final_full} steps"
        return f"short run of {n_steps} steps: warm-up {fitted.warmup}, interval {fitted.interval}, {last} full"


class ScheduleRun:
    """One sampling run's full/cached decisions; ``observe_full`` sees every full call's stored features
    (adaptive runs learn from them)."""

    def is_full(self, step: int) -> bool:
        raise NotImplementedError

    def observe_full(self, plan, pairs: list, method) -> None:
        """A full call (``plan``) computed the chunk ``[b, L, D]`` of each stream, given as ``(history, chunk)``
        pairs with the stream's history before the chunk is stored; ``method`` forecasts from histories."""


class FixedRun(ScheduleRun):
    """The run of a ``StepSchedule``: its decisions depend on the step only."""

    def __init__(self, schedule: StepSchedule, n_steps: int | None) -> None:
        self.schedule, self.n_steps = schedule, n_steps

    def is_full(self, step: int) -> bool:
        return self.schedule.is_full(step, self.n_steps)


def resampled_index(step: int, n_steps: int, n_ref: int) -> int:
    """The index, in a per-step table written for ``n_ref`` steps, of step ``step`` of a run of ``n_steps``:
    the reference step whose span holds the step's centre, ``floor((step + 0.5) * n_ref / n_steps)``
    (the identity when ``n_steps == n_ref``)."""
    return min(n_ref - 1, (2 * step + 1) * n_ref // (2 * n_steps))


def same_sigma(a: float, b: float) -> bool:
    """Whether two sigmas are the same point of the schedule (they differ by rounding only)."""
    return abs(a - b) <= 1e-5 * max(1.0, abs(a))


class StepLocator:
    """Maps the sigma of a model call to the sampler step it belongs to.

    ``sample_sigmas`` is the sampler's schedule (``n + 1`` values, normally decreasing to 0). A call at
    ``sample_sigmas[i]`` is step ``i``; a call between ``sample_sigmas[i]`` and ``sample_sigmas[i + 1]``
    (midpoints of multistage samplers) also belongs to step ``i``. Without a schedule, every new sigma
    starts a new step.
    """

    def __init__(self, sample_sigmas: Sequence[float] | None) -> None:
        self.sigmas = [float(s) for s in sample_sigmas] if sample_sigmas is not None else None
        self._seen: list[float] = []

    @property
    def n_steps(self) -> int | None:
        return None if self.sigmas is None else max(len(self.sigmas) - 1, 0)

    def step_of(self, sigma: float) -> int | None:
        """The step index, or None if ``sigma`` is outside the schedule (or not finite)."""
        if not math.isfinite(sigma):
            return None
        if self.sigmas is None:
            if not self._seen or self._seen[-1] != sigma:
                self._seen.append(sigma)
            return len(self._seen) - 1
        n = self.n_steps
        if not n:
            return None
        tol = 1e-5 * max(1.0, abs(sigma))
        for i in range(n):  # exact hits first: schedules may repeat or rise (restarts)
            if same_sigma(sigma, self.sigmas[i]):
                return i
        for i in range(n):
            hi, lo = self.sigmas[i], self.sigmas[i + 1]
            if min(hi, lo) - tol <= sigma <= max(hi, lo) + tol:
                return i
        return None

    def step_size(self, step: int) -> float:
        """Sigma distance of one sampler step at ``step`` (0 if unknown)."""
        if self.sigmas is None or step + 1 >= len(self.sigmas):
            return 0.0
        return abs(self.sigmas[step] - self.sigmas[step + 1])
