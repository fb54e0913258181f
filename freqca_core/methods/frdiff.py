"""FRDiff (So et al., "FRDiff: Feature Reuse for Universal Training-free Acceleration of Diffusion Models"):
feature reuse + score mixing, with per-step reuse gates learned by Auto-FR (``autofr.py``).

How this package implements it (our interpretation, on the CRF interface of ``methods.py``):

- **Feature reuse (FR)**: at a cached step the transformer blocks are skipped and the CRF of the last full
  step is reused; the final layer runs on it with the *current* timestep embedding (``out_FR``).
- **Reduced NFE**: skipping a model evaluation altogether amounts to reusing the last full step's raw
  model output (``out_last_full``) as the score of the cached step.
- **Score mixing**: a cached step's output is ``λ(r)·out_last_full + (1 − λ(r))·out_FR`` with
  ``λ(r) = clip((30·(r − 0.5) + 2) / 4, 0, 1)`` and ``r = 1 − step / n_steps`` the remaining-noise fraction
  (the paper's ``t / T``: r ≈ 1 at the first, noisiest steps). Early on, reduced NFE keeps the
  low-frequency structure; late, feature reuse keeps the high-frequency detail. λ is 1 for
  ``r >= 0.5 + 2/30`` and 0 for ``r <= 0.5 - 2/30``: the switch happens around the middle of the run.
  ``FRDiffMethod.finish_call`` does the mixing with the last full call's output kept per stream; when the
  run's length is unknown the weight is 0 (plain feature reuse).
- **Auto-FR**: which steps run full comes from per-step gates (``GateSchedule``) learned on the testbed
  against the uncached sampler (``python -m freqca_lab.autofr``, which writes a 28-step set for the testbed);
  other step counts resample a set by step fraction.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from ..forecast import ReuseForecaster
from ..schedule import StepSchedule, resampled_index
from .base import ForecastMethod, MethodSpec


def score_mix_weight(r: float) -> float:
    """λ(r) = clip((30·(r − 0.5) + 2) / 4, 0, 1): weight of the reduced-NFE output at remaining noise ``r``."""
    return min(1.0, max(0.0, (30.0 * (float(r) - 0.5) + 2.0) / 4.0))


def remaining_fraction(step: int, n_steps: int) -> float:
    """``r = 1 − step / n_steps``: 1 at the first step, ``1/n`` at the last."""
    return 1.0 - step / n_steps


class FRDiffMethod(ForecastMethod):
    """FRDiff: reuse of the last full step's CRF, and score mixing of cached calls' outputs (see module doc).

    ``score_mixing=False`` leaves plain feature reuse (the same outputs as ``reuse``), for comparisons.
    """

    def __init__(self, score_mixing: bool = True) -> None:
        super().__init__("frdiff", ReuseForecaster())
        self.score_mixing = bool(score_mixing)
        self.outputs: dict = {}  # stream -> the last full call's output chunk

    def start_run(self, offload_device: torch.device | None) -> None:
        self.outputs = {}

    def end_run(self) -> dict[str, int]:
        self.outputs = {}
        return {}

    def finish_call(self, plan, out: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        """A full call's output is kept per stream; a cached call's becomes ``w * kept + (1 - w) * out``
        with ``w = output_weight(step, n_steps)``."""
        if plan.step is None or not self.score_mixing:
            return out
        chunks = out.chunk(len(plan.streams), dim=0)
        if plan.full:
            for key, chunk in zip(plan.streams, chunks):
                self.outputs[key] = chunk.detach().clone()
            return out
        weight = self.output_weight(plan.step, plan.n_steps)
        kept = [self.outputs.get(key) for key in plan.streams]
        if weight == 0.0 or any(k is None or k.shape != c.shape for k, c in zip(kept, chunks)):
            return out
        return torch.cat([torch.lerp(c, k.to(c), weight) for k, c in zip(kept, chunks)], dim=0)

    def output_weight(self, step: int, n_steps: int | None) -> float:
        if not self.score_mixing or not n_steps:
            return 0.0
        return score_mix_weight(remaining_fraction(step, n_steps))

    def describe(self) -> dict:
        return {"reuse": "crf", "score_mixing": self.score_mixing,
                "mix_weight": "clip((30*(r-0.5)+2)/4, 0, 1), r = 1 - step/n_steps"}


@dataclass(frozen=True)
class GateSchedule(StepSchedule):
    """Full/cached steps from per-step gates (True: full) learned for ``len(gates)`` steps.

    Used wherever a ``FixedSchedule`` is. Step ``i`` of ``n`` takes the gate at the same step fraction
    (gate ``floor((i + 0.5) · len(gates) / n)``: the gate itself when ``n == len(gates)``); with an unknown
    run length (``n_steps`` None) the step index is the gate index, and steps past the learned ones run
    full. Step 0 is always full (nothing to reuse before it).
    """

    gates: tuple[bool, ...]
    meta: dict = field(default_factory=dict, compare=False)
    kind = "gates"

    @property
    def label(self) -> str:
        return "learned gates"

    def __post_init__(self) -> None:
        gates = tuple(bool(g) for g in self.gates)
        if not gates:
            raise ValueError("gates must hold at least one step")
        object.__setattr__(self, "gates", gates)

    @property
    def steps(self) -> int:
        return len(self.gates)

    def gate_index(self, step: int, n_steps: int | None) -> int | None:
        """The learned gate that decides ``step`` (None: past the learned steps with unknown length)."""
        if n_steps is None:
            return step if step < self.steps else None
        return resampled_index(step, n_steps, self.steps)

    def is_full(self, step: int, n_steps: int | None) -> bool:
        """Whether sampler step ``step`` (0-based) of ``n_steps`` (None: unknown length) runs all blocks."""
        if step <= 0:
            return True
        index = self.gate_index(step, n_steps)
        return index is None or self.gates[index]

    # ------------------------------------------------------------------------------------- files
    def to_json(self) -> dict:
        return {"steps": self.steps, "gates": [int(g) for g in self.gates], "meta": dict(self.meta)}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def from_json(cls, data: object, source: str = "gates") -> "GateSchedule":
        """Parse ``{"steps": n, "gates": [0/1, ...], "meta": {...}}``; ValueError naming the bad field."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object with 'steps' and 'gates', got {type(data).__name__}")
        for key in ("steps", "gates"):
            if key not in data:
                raise ValueError(f"{source}: missing field {key!r}")
        gates, steps, meta = data["gates"], data["steps"], data.get("meta", {})
        if not isinstance(gates, list) or not gates or any(isinstance(g, bool) or g not in (0, 1) for g in gates):
            raise ValueError(f"{source}: field 'gates' must be a non-empty list of 0/1, got {gates!r:.80}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps != len(gates):
            raise ValueError(f"{source}: field 'steps' must equal the number of gates ({len(gates)}), got {steps!r}")
        if not isinstance(meta, dict):
            raise ValueError(f"{source}: field 'meta' must be an object, got {type(meta).__name__}")
        return cls(tuple(g == 1 for g in gates), meta)

    @classmethod
    def load(cls, path: str | Path) -> "GateSchedule":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: cannot read a gates file: {exc}") from exc
        return cls.from_json(data, str(path))

    @classmethod
    def from_steps(cls, full: Sequence[int], n_steps: int, meta: dict | None = None) -> "GateSchedule":
        """Gates for ``n_steps`` steps with exactly the steps in ``full`` (and step 0) full."""
        chosen = set(full) | {0}
        return cls(tuple(i in chosen for i in range(n_steps)), meta or {})


def build(config, n_steps: int | None, transform: str):
    return FRDiffMethod(), config.gates if config.gates is not None else config.step_schedule()


SPEC = MethodSpec("frdiff", "reuse + FRDiff's score mixing with the last full output", build, ("gates",))
