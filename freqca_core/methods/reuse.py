"""``reuse``: the whole CRF of the last full step (FORA-like)."""
from __future__ import annotations

from ..forecast import ReuseForecaster
from .base import ForecastMethod, MethodSpec


def build(config, n_steps: int | None, transform: str):
    return ForecastMethod("reuse", ReuseForecaster()), config.step_schedule()


SPEC = MethodSpec("reuse", "the last full step's features reused (FORA-like)", build)
