"""``freqca``: FreqCa (arXiv 2510.08669). The CRF's low band is reused from the last full step, its high band
forecast by the scaled 2nd-order Hermite extrapolation; the band split is a DCT (or FFT) over the token grid."""
from __future__ import annotations

from typing import Sequence

import torch

from ..cache import CRFHistory
from ..forecast import Forecaster, HermiteForecaster, ReuseForecaster
from ..spectral import BandSplitter, TokenLayout
from .base import CacheMethod, MethodSpec, step_size, weighted_sum, weighted_sums


class FreqCaMethod(CacheMethod):
    """FreqCa: ``low(reuse(F)) + high(forecast(F))``, computed with a single low-pass per call.

    Both forecasts are linear combinations of the history, so with ``H = sum_j h_j F_j`` (high-band
    forecaster) and ``R = sum_j r_j F_j`` (low-band forecaster): ``low(R) + H - low(H) = H + low(R - H)``.
    """

    name = "freqca"

    def __init__(self, splitter: BandSplitter, high: Forecaster, low: Forecaster | None = None) -> None:
        self.splitter = splitter
        self.high = high
        self.low = low or ReuseForecaster()
        self.history_size = max(self.high.needs, self.low.needs)

    def predict(self, history: CRFHistory, sigma: float, layout: TokenLayout) -> torch.Tensor:
        unit = step_size(history)
        high_w = self.high.weights(history.sigmas, sigma, unit)
        low_w = self.low.weights(history.sigmas, sigma, unit)
        dtype = history.entries[0].crf.dtype
        acc = torch.promote_types(dtype, torch.float32)
        high = weighted_sum(history, high_w, acc)
        correction = weighted_sum(history, [r - h for r, h in zip(low_w, high_w)], acc)
        out = high + self.splitter.low(correction, layout)
        return out.to(dtype)

    def predict_many(self, history: CRFHistory, sigmas: Sequence[float], layout: TokenLayout) -> torch.Tensor:
        unit = step_size(history)
        high_w = [self.high.weights(history.sigmas, sigma, unit) for sigma in sigmas]
        low_w = [self.low.weights(history.sigmas, sigma, unit) for sigma in sigmas]
        high = weighted_sums(history, high_w)
        correction = weighted_sums(history, [[r - h for r, h in zip(rs, hs)] for rs, hs in zip(low_w, high_w)])
        low = self.splitter.low(correction.flatten(0, 1), layout).view_as(correction)
        return high + low

    def describe(self) -> dict:
        return {"cutoff": self.splitter.cutoff, "transform": self.splitter.transform,
                "high": self.high.name, "low": self.low.name}


def build(config, n_steps: int | None, transform: str):
    method = FreqCaMethod(BandSplitter(config.cutoff, transform), HermiteForecaster(config.hermite_scale))
    return method, config.step_schedule()


SPEC = MethodSpec("freqca", "the paper's FreqCa: low band reused, high band forecast (Hermite)", build,
                  ("cutoff", "hermite_scale"))
