"""The cache controller: per model call, decide full vs cached, store CRFs, hand out forecasts.

Both the ComfyUI adapters and the testbed use it the same way::

    controller.start_run(sample_sigmas)            # once per sampling run: clears all state
    plan = controller.plan(sigma, streams, batch, layout)
    if plan.full:
        crf = run_all_blocks(...)                  # [B, L, D] image-token state before the final layer
        controller.record(plan, crf)
    else:
        crf = plan.crf                             # forecast [B, L, D]
    out = final_layer(crf, current_timestep_embedding)
    out = controller.finish_call(plan, out, x)     # the method's output handling (mixing, scaling)

``streams`` names the batch chunks of the call (e.g. ComfyUI's cond uuids, uncond first): the batch is
split evenly between them and each stream has its own CRF history. A cached call needs a usable history
for every stream; otherwise, or if a forecast fails or is not finite, the call runs full (``plan.reason``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Hashable, Sequence

import torch

from .cache import StreamCache
from .methods.base import CacheMethod, Schedule
from .schedule import ScheduleRun, StepLocator
from .spectral import TokenLayout

log = logging.getLogger("freqca")


@dataclass
class CallPlan:
    """What one model call does. ``crf`` is the forecast ``[B, L, D]`` when ``full`` is False."""

    full: bool
    sigma: float
    step: int | None
    streams: tuple[Hashable, ...]
    layout: TokenLayout
    crf: torch.Tensor | None = None
    reason: str = ""
    attention: str | None = None  # at a full call: "store" or "serve" the attention kernels (method's choice)
    n_steps: int | None = None  # the run's length, if known


@dataclass
class RunStats:
    """Counts for one sampling run; ``steps`` maps step index to ``"full"`` or ``"cached"``."""

    n_steps: int | None = None
    full_calls: int = 0
    cached_calls: int = 0
    fallbacks: int = 0
    peak_cache_bytes: int = 0
    attention_served: int = 0  # attention kernel calls answered from the cache
    attention_computed: int = 0  # ... that had to be computed at attention-reuse steps (nothing fitting stored)
    steps: dict[int, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def full_steps(self) -> int:
        return sum(1 for mode in self.steps.values() if mode == "full")

    @property
    def cached_steps(self) -> int:
        return sum(1 for mode in self.steps.values() if mode == "cached")

    @property
    def attention_steps(self) -> int:
        """Steps whose blocks ran with their attention kernels served from the cache."""
        return sum(1 for mode in self.steps.values() if mode == "attn")

    def timeline(self) -> str:
        """One character per step: ``F`` full, ``a`` attention reused, ``c`` cached, ``.`` not called."""
        n = self.n_steps if self.n_steps is not None else (max(self.steps) + 1 if self.steps else 0)
        return "".join({"full": "F", "attn": "a", "cached": "c"}.get(self.steps.get(i, ""), ".") for i in range(n))


class CacheController:
    """Decides and serves cached model calls for one sampling run at a time."""

    def __init__(self, method: CacheMethod, schedule: Schedule, *,
                 offload_device: torch.device | None = None) -> None:
        self.method = method
        self.schedule = schedule
        self.offload_device = offload_device
        self.start_run(None)

    def start_run(self, sample_sigmas: Sequence[float] | torch.Tensor | None) -> None:
        """Forget everything from earlier runs; ``sample_sigmas`` is the run's schedule if known."""
        if isinstance(sample_sigmas, torch.Tensor):
            sample_sigmas = sample_sigmas.detach().float().cpu().tolist()
        self.locator = StepLocator(sample_sigmas)
        self.cache = StreamCache(self.method.history_size, self.offload_device)
        self.stats = RunStats(n_steps=self.locator.n_steps)
        self.run: ScheduleRun = self.schedule.start_run(self.locator)
        self.decisions: dict[int, bool] = {}  # step -> full: every call of a step (cond, uncond) alike
        self.method.start_run(self.offload_device)

    def is_full(self, step: int) -> bool:
        """The schedule's decision for ``step``, fixed at the step's first call."""
        if step not in self.decisions:
            self.decisions[step] = self.run.is_full(step)
        return self.decisions[step]

    def plan(self, sigma: float, streams: Sequence[Hashable], batch: int, layout: TokenLayout,
             embedding: torch.Tensor | None = None) -> CallPlan:
        """Plan a call at ``sigma`` whose batch of ``batch`` rows is split evenly over ``streams``.
        ``embedding`` ``[B, L, D]``: the image rows entering the first block (for methods that store residuals)."""
        sigma = float(sigma)
        streams = tuple(streams) or (0,)
        step = self.locator.step_of(sigma)
        plan = CallPlan(True, sigma, step, streams, layout, n_steps=self.locator.n_steps)
        if step is None or self.is_full(step):
            if step is not None:
                plan.attention = self.method.full_call_mode(step, self.locator.n_steps)
            return self._count(plan)
        if batch % len(streams):
            return self._fallback(plan, f"batch {batch} does not split over {len(streams)} streams")
        rows = batch // len(streams)
        histories = [self.cache.history(key) for key in streams]
        if not all(h.matches(rows, layout.length) for h in histories):
            return self._fallback(plan, "no stored CRF of this stream, size or batch")
        try:
            forecast = torch.cat([self.method.predict(h, sigma, layout) for h in histories], dim=0)
        except Exception as exc:  # a broken forecast must never break the sampling run
            return self._fallback(plan, f"forecast failed: {exc!r}", warn=True)
        crf = self.method.decode(forecast, embedding)
        if crf is None:
            return self._fallback(plan, "no embedding of the call's image rows to add the residual to")
        if not torch.isfinite(crf).all():
            return self._fallback(plan, "forecast is not finite", warn=True)
        plan.full, plan.crf = False, crf
        return self._count(plan)

    def record(self, plan: CallPlan, crf: torch.Tensor, embedding: torch.Tensor | None = None) -> None:
        """Store the CRF ``[B, L, D]`` computed by a full call (as the method encodes it, e.g. minus the
        ``embedding`` of the image rows); the schedule run observes it first (adaptive schedules)."""
        if plan.step is None:
            return
        if not torch.isfinite(crf).all():
            self._warn(f"step {plan.step}: computed CRF is not finite; not cached")
            return
        stored = self.method.encode(crf, embedding)
        if stored is None:
            self._warn(f"step {plan.step}: no embedding of the image rows; not cached")
            return
        chunks = list(zip(plan.streams, stored.chunk(len(plan.streams), dim=0)))
        self.run.observe_full(plan, [(self.cache.history(key), chunk) for key, chunk in chunks], self.method)
        for key, chunk in chunks:
            self.cache.push(key, plan.sigma, plan.step, chunk)
        self.stats.peak_cache_bytes = max(self.stats.peak_cache_bytes, self.cache.nbytes + self.method.extra_bytes)

    def attention_override(self, plan: CallPlan) -> Callable[..., torch.Tensor] | None:
        """The call's attention-kernel override (``override(func, *args, **kwargs)``), or None."""
        return self.method.attention_override(plan)

    def finish_call(self, plan: CallPlan, out: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """The call's model output ``[B, ...]`` after the method's output handling (``x``: the model input,
        for methods that rescale flow velocities)."""
        return self.method.finish_call(plan, out, x)

    def demote(self, plan: CallPlan, reason: str) -> CallPlan:
        """Turn a cached ``plan`` into a full one, for a caller that cannot use its forecast (a fallback)."""
        if plan.full:
            return plan
        plan.full, plan.crf = True, None
        self.stats.cached_calls -= 1
        return self._fallback(plan, reason, warn=True)

    def end_run(self) -> RunStats:
        """Release the stored tensors and return the run's statistics."""
        counts = self.method.end_run()
        self.stats.attention_served = counts.get("attention_served", 0)
        self.stats.attention_computed = counts.get("attention_computed", 0)
        self.cache.clear()
        return self.stats

    def _count(self, plan: CallPlan) -> CallPlan:
        if plan.full:
            self.stats.full_calls += 1
        else:
            self.stats.cached_calls += 1
        if plan.step is not None:
            mode = ("attn" if plan.attention == "serve" else "full") if plan.full else "cached"
            if self.stats.steps.get(plan.step) != "full":
                self.stats.steps[plan.step] = mode
        return plan

    def _fallback(self, plan: CallPlan, reason: str, warn: bool = False) -> CallPlan:
        plan.reason = reason
        self.stats.fallbacks += 1
        if warn:
            self._warn(f"step {plan.step}: {reason}; running the full model")
        return self._count(plan)

    def _warn(self, message: str) -> None:
        self.stats.warnings.append(message)
        log.warning("FreqCa: %s", message)
