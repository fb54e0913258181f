"""``res-taylor``: what the blocks add to the image tokens (``crf - embedding``) forecast by Taylor
polynomials in sigma, the low band at ``taylor_order`` and the high band at ``min(taylor_order, 1)``, added
to the *current* embedding at cached steps.

Measured on the testbed (``freqca_lab.measure_perlayer``): the embedding of the current input is known
at every step, so only the blocks' contribution is extrapolated; the low band of the CRF extrapolates
well at order 2 while its high band is best kept linear; order 1 (the whole feature linear) holds at long
intervals where order 2 overshoots. With warm-up 1 and the last step full it beats per-layer TaylorSeer at
equal block executions while storing one CRF history per stream (``taylor_order + 1`` image-token states).
"""
from __future__ import annotations

from ..forecast import TaylorForecaster
from ..spectral import BandSplitter
from .base import EmbeddingResidual, MethodSpec
from .freqca import FreqCaMethod


class ResidualTaylorMethod(EmbeddingResidual, FreqCaMethod):
    """``embedding_now + high(T_k1(R)) + low(T_k(R))`` with ``R = crf - embedding`` per full step,
    ``T_k`` the Taylor polynomial of order ``k`` through the newest full steps, ``k1 = min(k, 1)``."""

    name = "res-taylor"

    def __init__(self, splitter: BandSplitter, order: int = 1) -> None:
        super().__init__(splitter, high=TaylorForecaster(min(order, 1)), low=TaylorForecaster(order))
        self.order = order

    def describe(self) -> dict:
        return {**super().describe(), "order": self.order, "residual": "crf - embedding"}


def build(config, n_steps: int | None, transform: str):
    return ResidualTaylorMethod(BandSplitter(config.cutoff, transform), config.taylor_order), config.step_schedule()


SPEC = MethodSpec("res-taylor", "Taylor forecast of what the blocks add (low band at taylor_order, high band "
                  "linear); best with warm-up 1 and the last step full", build, ("taylor_order", "cutoff"))
