"""``res-taylor``: what the blocks add to the image tokens (``crf - embedding``) forecast by Taylor
polynomials in sigma and added to the *current* embedding at cached steps; ``taylor_order`` 1 forecasts the
whole residual linearly, order ``k >= 2`` its low band at order ``k`` and its high band linearly.

Measured on the testbed (``freqca_lab.measure_perlayer``, README "Benchmark"): the embedding of the current
input is known at every step, so only the blocks' contribution is extrapolated; order 1 holds at long
intervals where order 2 overshoots, and at order 2 the low band extrapolates well while the high band is
best kept linear. With warm-up 1 and the last step full it beats per-layer TaylorSeer at equal block
executions while storing one CRF history per stream (``taylor_order + 1`` image-token states).
"""
from __future__ import annotations

from ..forecast import TaylorForecaster
from ..spectral import BandSplitter
from .base import EmbeddingResidual, ForecastMethod, MethodSpec
from .freqca import FreqCaMethod


class ResidualTaylorMethod(EmbeddingResidual, ForecastMethod):
    """``embedding_now + T_k(R)``, ``R = crf - embedding`` per full step, ``T_k`` the Taylor polynomial of
    order ``k`` (<= 1 here) through the newest full steps."""

    def __init__(self, order: int = 1) -> None:
        super().__init__("res-taylor", TaylorForecaster(order))


class ResidualBandTaylorMethod(EmbeddingResidual, FreqCaMethod):
    """``embedding_now + high(T_1(R)) + low(T_k(R))`` with ``R = crf - embedding`` (``k >= 2``)."""

    name = "res-taylor"

    def __init__(self, splitter: BandSplitter, order: int = 2) -> None:
        super().__init__(splitter, high=TaylorForecaster(1), low=TaylorForecaster(order))

    def describe(self) -> dict:
        return {**super().describe(), "order": self.low.order}


def build(config, n_steps: int | None, transform: str):
    if config.taylor_order <= 1:
        return ResidualTaylorMethod(config.taylor_order), config.step_schedule()
    return ResidualBandTaylorMethod(BandSplitter(config.cutoff, transform), config.taylor_order), config.step_schedule()


SPEC = MethodSpec("res-taylor", "Taylor forecast of what the blocks add (order 2+: low band at taylor_order, "
                  "high band linear); best with warm-up 1 and the last step full", build, ("taylor_order", "cutoff"))
