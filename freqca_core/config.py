"""One config object for every user of the core (the node, the benchmark, the probes): the settings of a
cache, validated on construction, that build a ``CacheController`` through the method registry."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import torch

from .adaptive import AdaptiveSchedule
from .calibration import Choice
from .controller import CacheController
from .forecast import HermiteForecaster
from .methods import METHODS, REGISTRY, CacheMethod
from .methods.feb import LEVELS as FEB_LEVELS
from .methods.feb import CacheTable, FEBMethod, default_table
from .methods.frdiff import GateSchedule
from .schedule import FixedSchedule
from .spectral import BandSplitter
from .validation import check_choice, check_int

SCHEDULES = ("fixed", "adaptive")


@dataclass(frozen=True)
class CacheConfig:
    """What a cache does. ``start`` / ``end``: fractions of the steps between which steps may be cached
    (``with_sigma_window`` derives them from a window of the noise schedule for one run)."""

    method: str = "freqca"
    interval: int = 6
    warmup: int = 3
    final_full: int = 0
    start: float = 0.0
    end: float = 1.0
    schedule: str = "fixed"
    tolerance: float = 0.1
    cutoff: float = 0.1
    hermite_scale: float = 0.71
    taylor_order: int = 2
    feb_level: str = "balanced"
    exposure_delta: float = 0.965
    feb_table: CacheTable | None = None  # FEB-Cache: a derived table instead of ``feb_level``'s default
    gates: GateSchedule | None = None  # FRDiff: Auto-FR gates that replace the schedule
    offload: bool = False
    fit_short_runs: bool = False  # fixed schedule: fit runs too short for it (``FixedSchedule.for_run``)
    choice: Choice | None = None  # auto: the calibrated method and full steps (None: the run calibrates)
    on_choice: Callable[[Choice], None] | None = field(default=None, compare=False)  # auto: gets a new choice

    def __post_init__(self) -> None:
        check_choice("method", self.method, METHODS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("feb_level", self.feb_level, FEB_LEVELS)
        check_int("taylor_order", self.taylor_order, 0, 3)
        self.step_schedule()  # validates interval, warm-up, final steps, start/end, tolerance
        BandSplitter(self.cutoff)  # validates cutoff
        HermiteForecaster(self.hermite_scale)  # validates hermite_scale
        FEBMethod(default_table(1, self.feb_level), self.exposure_delta)  # validates exposure_delta

    def step_schedule(self) -> FixedSchedule | AdaptiveSchedule:
        """The fixed or adaptive schedule of this config (methods with their own schedule ignore it)."""
        if self.schedule == "adaptive":
            return AdaptiveSchedule(self.tolerance, self.warmup, max_gap=self.interval, final_full=self.final_full,
                                    start=self.start, end=self.end)
        return FixedSchedule(self.warmup, self.interval, self.final_full, self.start, self.end, self.fit_short_runs)

    def new_controller(self, n_steps: int | None = None, transform: str = "dct") -> CacheController:
        """A controller for one run of ``n_steps`` steps (None: unknown) on a grid split by ``transform``."""
        method, schedule = REGISTRY[self.method].build(self, n_steps, transform)
        offload = torch.device("cpu") if self.offload else None
        return CacheController(method, schedule, offload_device=offload)

    def new_method(self, n_steps: int | None = None, transform: str = "dct") -> CacheMethod:
        """The method alone, as ``new_controller`` builds it."""
        return REGISTRY[self.method].build(self, n_steps, transform)[0]

    def with_sigma_window(self, start_sigma: float, end_sigma: float,
                          sample_sigmas: Sequence[float] | None) -> "CacheConfig":
        """This config for a run over ``sample_sigmas`` (``n + 1`` values) with caching allowed only at steps
        whose sigma lies in ``[end_sigma, start_sigma]`` (ComfyUI's ``percent_to_sigma`` of start/end)."""
        if sample_sigmas is None or len(sample_sigmas) < 2:
            return self
        sigmas = [float(s) for s in sample_sigmas][:-1]
        n = len(sigmas)
        tol = 1e-5
        first = next((i for i, s in enumerate(sigmas) if s <= start_sigma * (1 + tol)), n)
        last = next((i for i, s in enumerate(sigmas) if i >= first and s < end_sigma * (1 - tol)), n)
        return replace(self, start=max(self.start, first / n), end=min(self.end, last / n))


def make_method(name: str, *, transform: str = "dct", **fields) -> CacheMethod:
    """The method ``name`` as ``CacheConfig(method=name, **fields)`` builds it (tests, probes)."""
    return CacheConfig(method=name, **fields).new_method(transform=transform)
