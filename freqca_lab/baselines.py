"""Output-space adaptive caching baseline (TeaCache / EasyCache idea, written from the description).

``AdaptiveOutputCache`` reuses the model's last computed output (the velocity of the whole batch, all
CFG streams) instead of calling the model, as long as an accumulated estimate of how much the output has
changed since that full call stays under ``threshold``:

- at each full call ``t`` after an earlier full call ``s``, the *transformation rate*
  ``k = mean|v_t - v_s| / mean|x_t - x_s|`` (output change per unit of input change) is updated;
- at each later call, the estimated relative output change ``k * mean|x - x_prev| / mean|v_full|``
  (``x_prev`` the input of the previous call) is added to an accumulator;
- while the accumulator is below ``threshold`` the stored output is reused; otherwise the model runs,
  the accumulator is reset and the rate refreshed.

The first ``warmup`` steps always run (like FreqCa's warm-up); a rate needs two full calls. The signal
is batch-wide, so one decision covers every image and stream in the call (as output-space caches in
ComfyUI do). The cost of a cached call is a few elementwise reductions: no model FLOPs.

``calibrate_threshold`` searches the threshold (geometric bisection) that makes a run use a target
number of full steps; the benchmark runs it on calibration prompts and seeds disjoint from the reported
ones, then applies the threshold unchanged to the reported seeds (so the reported count may differ).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from freqca_core.controller import RunStats
from freqca_core.schedule import StepLocator


class BudgetExceeded(RuntimeError):
    """Raised by a run with ``abort_above`` set once it needs more full steps (calibration shortcut)."""


def _mean_abs(t: Tensor) -> float:
    return float(t.detach().abs().double().mean())


class AdaptiveOutputCache:
    name = "adaptive"

    def __init__(self, threshold: float, warmup: int = 3, abort_above: int | None = None) -> None:
        if not threshold >= 0 or math.isinf(threshold):
            raise ValueError(f"threshold must be finite and >= 0, got {threshold}")
        self.threshold = float(threshold)
        self.warmup = int(warmup)
        self.abort_above = abort_above
        self.start_run(None)

    def describe(self) -> dict:
        return {"threshold": self.threshold, "warmup": self.warmup}

    def start_run(self, sample_sigmas: Sequence[float] | Tensor | None) -> None:
        if isinstance(sample_sigmas, Tensor):
            sample_sigmas = sample_sigmas.detach().double().cpu().tolist()
        self.locator = StepLocator(sample_sigmas)
        self.stats = RunStats(n_steps=self.locator.n_steps)
        self.prev_x: Tensor | None = None  # input of the previous call
        self.full_x: Tensor | None = None  # input and output of the last full call
        self.full_v: Tensor | None = None
        self.rate: float | None = None
        self.accumulated = 0.0

    def __call__(self, x: Tensor, sigma: float, compute: Callable[[], Tensor]) -> Tensor:
        """The output at ``x``: ``compute()`` (the model) or the stored output of the last full call."""
        step = self.locator.step_of(float(sigma))
        reuse = False
        if (self.rate is not None and self.full_v is not None and self.prev_x is not None
                and (step is None or step >= self.warmup) and self.prev_x.shape == x.shape):
            scale = max(_mean_abs(self.full_v), 1e-12)
            self.accumulated += self.rate * _mean_abs(x - self.prev_x) / scale
            reuse = self.accumulated < self.threshold
        self.prev_x = x.detach().clone()
        if reuse:
            self._count(step, full=False)
            return self.full_v.clone()  # never hand out the stored tensor itself
        out = compute()
        if self.full_x is not None and self.full_x.shape == x.shape:
            dx = _mean_abs(x - self.full_x)
            if dx > 0:
                self.rate = _mean_abs(out - self.full_v) / dx
        self.full_x, self.full_v = x.detach().clone(), out.detach().clone()
        self.accumulated = 0.0
        self._count(step, full=True)
        if self.abort_above is not None and self.stats.full_steps > self.abort_above:
            raise BudgetExceeded(f"more than {self.abort_above} full steps")
        return out

    def _count(self, step: int | None, full: bool) -> None:
        if full:
            self.stats.full_calls += 1
        else:
            self.stats.cached_calls += 1
        if step is not None and self.stats.steps.get(step) != "full":
            self.stats.steps[step] = "full" if full else "cached"
        held = sum(t.numel() * t.element_size() for t in (self.prev_x, self.full_x, self.full_v) if t is not None)
        self.stats.peak_cache_bytes = max(self.stats.peak_cache_bytes, held)

    def end_run(self) -> RunStats:
        self.prev_x = self.full_x = self.full_v = None
        return self.stats


def calibrate_threshold(full_steps_at: Callable[[float, int | None], int], target: int, *,
                        low: float = 0.01, high: float = 1.0, iters: int = 12,
                        trials: list[tuple[float, int, bool]] | None = None) -> tuple[float, int, int]:
    """Threshold whose run uses ``target`` full steps (or the closest count found, fewer preferred).

    ``full_steps_at(threshold, abort_above)`` runs the method and returns its full-step count; a run may
    stop once it exceeds ``abort_above`` and then returns a lower bound of its count. The count falls (not
    always strictly) as the threshold grows; the search brackets the target and narrows the bracket on a
    log scale, interpolating between the counts at its ends. ``trials`` (``(threshold, count, exact)``)
    may be shared between calls on the same calibration set, e.g. for several budgets: earlier runs then
    narrow the bracket for free. Returns ``(threshold, full_steps, runs made by this call)``.
    """
    trials = [] if trials is None else trials
    made = 0

    def side(n: int, exact: bool) -> int | None:
        """+1: too many full steps, 0: on target, -1: too few, None: unknown (a lower bound <= target)."""
        if n > target:
            return 1
        if not exact:
            return None
        return 0 if n == target else -1

    for _ in range(iters + 8):
        known = [(t, n, side(n, e)) for t, n, e in trials if side(n, e) is not None]
        if any(s == 0 for _, _, s in known) or made >= iters + 8:
            break
        many = [(t, n) for t, n, s in known if s == 1]
        few = [(t, n) for t, n, s in known if s == -1]
        lo = max(many, default=None)  # largest threshold that still gives too many full steps
        hi = min(few, default=None)   # smallest threshold that gives too few
        if hi is None:
            if lo is not None and lo[0] >= high * 1e3:
                break  # even huge thresholds run too many steps (warm-up above the target)
            t = high if lo is None or lo[0] < high else lo[0] * 10
        elif lo is None:
            t = low if hi[0] > low else hi[0] / 10
        elif lo[0] >= hi[0]:  # not monotone here: probe between the two
            t = math.sqrt(lo[0] * hi[0])
        else:
            frac = min(max((lo[1] - target) / max(lo[1] - hi[1], 1), 0.2), 0.8)
            t = math.exp(math.log(lo[0]) + frac * (math.log(hi[0]) - math.log(lo[0])))
        if made >= iters and lo is not None and hi is not None:
            break
        n = full_steps_at(t, target)
        trials.append((t, n, n <= target))
        made += 1

    def score(item: tuple[float, int, bool]) -> tuple[int, int, int]:
        return abs(item[1] - target), 0 if item[1] <= target else 1, 0 if item[2] else 1

    usable = [x for x in trials if side(x[1], x[2]) is not None] or trials
    best = min(usable, key=score)
    return best[0], best[1], made
