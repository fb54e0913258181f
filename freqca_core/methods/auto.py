"""``auto``: the method and full steps chosen for this model by calibration (``calibration.py``).

Without a chosen configuration (``CacheConfig.choice``; or one made for another step count or number of full
steps) the run is the calibration: every step is computed in full, so its output is the uncached one, and
``RecordingMethod`` records each call's CRF and embedding (through its ``encode`` and ``finish_call`` hooks).
At the run's end it picks the candidate and the placement of the full steps with the least predicted error
for the number of full steps the fixed schedule of the config would compute (the user's speed), and hands the
``Choice`` to ``CacheConfig.on_choice`` (the node stores it as a profile). With a choice, the run uses the
chosen method on the chosen full steps (a ``GateSchedule``).
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Callable

import torch

from ..cache import CRFHistory
from ..calibration import Candidate, Choice, Trajectory, TrajectoryRecorder, calibrate
from ..schedule import StepSchedule
from ..spectral import TokenLayout
from .base import CacheMethod, MethodSpec
from .frdiff import GateSchedule

log = logging.getLogger("freqca")


class AllFull(StepSchedule):
    """Every step full (the calibration run)."""

    kind = "calibration"

    @property
    def label(self) -> str:
        return "calibration run, every step full"

    def is_full(self, step: int, n_steps: int | None) -> bool:
        return True


class RecordingMethod(CacheMethod):
    """The calibration run's method: never forecasts; records every computed CRF ``[B, L, D]`` and the
    embedding it started from (projected, see ``TrajectoryRecorder``) per stream, and calibrates at
    ``end_run``."""

    name = "auto"
    history_size = 1

    def __init__(self, n_steps: int | None, budget: int | None, base,
                 on_choice: Callable[[Choice], None] | None = None, transform: str = "dct") -> None:
        self.n_steps, self.budget, self.on_choice, self.transform = n_steps, budget, on_choice, transform
        self.base = base  # the CacheConfig the candidates' settings replace
        self.recorder = TrajectoryRecorder()
        self.pending: tuple[torch.Tensor, torch.Tensor | None] | None = None  # the full call in flight: CRF, embedding
        self.choice: Choice | None = None
        self.trajectory: Trajectory | None = None  # the last complete recording (kept for the lab scripts)

    def start_run(self, offload_device: torch.device | None) -> None:
        self.recorder.clear()
        self.pending, self.choice, self.trajectory = None, None, None

    def predict(self, history: CRFHistory, sigma: float, layout: TokenLayout) -> torch.Tensor:
        raise RuntimeError("auto's calibration run computes every step")

    def encode(self, crf: torch.Tensor, embedding: torch.Tensor | None) -> torch.Tensor | None:
        self.pending = crf, embedding
        return crf

    def finish_call(self, plan, out: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        """Record the call's CRF and embedding (kept by ``encode``) per stream; the output is unchanged."""
        pending, self.pending = self.pending, None
        if plan.full and plan.step is not None and pending is not None:
            crf, embedding = pending
            k = len(plan.streams)
            embeddings = embedding.chunk(k, dim=0) if embedding is not None else [None] * k
            for key, chunk, rows in zip(plan.streams, crf.chunk(k, dim=0), embeddings):
                self.recorder.add(plan.step, plan.sigma, key, plan.layout, chunk, rows)
        return out

    def end_run(self) -> dict[str, int]:
        """Choose from a complete recording (an interrupted run chooses nothing) and hand the choice on."""
        trajectory = self.recorder.trajectory(self.n_steps) if self.n_steps else None
        self.recorder.clear()
        self.trajectory = trajectory
        if trajectory is not None and self.budget:
            try:
                self.choice = calibrate(trajectory, self.budget, self.base, transform=self.transform)
                if self.on_choice is not None:
                    self.on_choice(self.choice)
            except Exception as exc:  # calibration must never fail the (finished) run
                log.warning("FreqCa auto: calibration failed (%r); the next run calibrates again", exc)
        return {}

    @property
    def extra_bytes(self) -> int:
        return self.recorder.nbytes

    def describe(self) -> dict:
        return {"calibration": True, "budget": self.budget}


def budget_of(config, n_steps: int) -> int:
    """The full steps the user pays for: as many as the config's fixed schedule computes in ``n_steps``."""
    fixed = replace(config, schedule="fixed").step_schedule()
    if fixed.fit_short_runs:
        fixed = fixed.for_run(n_steps)
    return len(fixed.full_steps(n_steps))


def chosen(choice: Choice, config, transform: str = "dct") -> tuple[CacheMethod, GateSchedule]:
    """The chosen method (its settings on ``config``) and its full steps."""
    method = Candidate(choice.label, choice.method, choice.params).build(config, transform)
    return method, GateSchedule.from_steps(choice.full_steps, choice.n_steps, {"calibrated": choice.label})


def build(config, n_steps: int | None, transform: str):
    """The chosen method on its full steps; the calibration run when there is no choice for this step count
    and number of full steps."""
    budget = budget_of(config, n_steps) if n_steps else None
    choice = config.choice
    if choice is not None and choice.n_steps == n_steps and len(choice.full_steps) == budget:
        return chosen(choice, config, transform)
    return RecordingMethod(n_steps, budget, config, config.on_choice, transform), AllFull()


SPEC = MethodSpec("auto", "calibrated per model: the first run computes every step and picks the method "
                          "and full steps for the others", build, ("choice",))
