"""``taylor``: the whole CRF forecast by a Taylor series of ``taylor_order`` through the last full steps
(TaylorSeer-like, at CRF level), with the real sigma spacing."""
from __future__ import annotations

from ..forecast import TaylorForecaster
from .base import ForecastMethod, MethodSpec


def build(config, n_steps: int | None, transform: str):
    return ForecastMethod("taylor", TaylorForecaster(config.taylor_order)), config.step_schedule()


SPEC = MethodSpec("taylor", "Taylor forecast of the features (TaylorSeer-like)", build, ("taylor_order",))
