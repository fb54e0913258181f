"""``freqca``: FreqCa (arXiv 2510.08669). The CRF's low band is reused from the last full step, its high band
forecast by the scaled 2nd-order Hermite extrapolation; the band split is a DCT (or FFT) over the token grid."""
from __future__ import annotations

from typing import Sequence

from ..forecast import Forecaster, HermiteForecaster, ReuseForecaster
from ..spectral import BandSplitter
from .base import LinearMethod, MethodSpec


class FreqCaMethod(LinearMethod):
    """FreqCa: ``low(reuse(F)) + high(forecast(F))``: the low band from ``low``'s forecast (reuse by default),
    the high band from ``high``'s, computed with a single low-pass per call (``LinearMethod.predict``)."""

    name = "freqca"

    def __init__(self, splitter: BandSplitter, high: Forecaster, low: Forecaster | None = None) -> None:
        self.splitter = splitter
        self.high = high
        self.low = low or ReuseForecaster()
        self.history_size = max(self.high.needs, self.low.needs)

    def band_weights(self, sigmas: Sequence[float], unit: float, sigma: float) -> tuple[list[float], list[float]]:
        return self.low.weights(sigmas, sigma, unit), self.high.weights(sigmas, sigma, unit)

    def describe(self) -> dict:
        return {"cutoff": self.splitter.cutoff, "transform": self.splitter.transform,
                "high": self.high.name, "low": self.low.name}


def build(config, n_steps: int | None, transform: str):
    method = FreqCaMethod(BandSplitter(config.cutoff, transform), HermiteForecaster(config.hermite_scale))
    return method, config.step_schedule()


SPEC = MethodSpec("freqca", "the paper's FreqCa: low band reused, high band forecast (Hermite)", build,
                  ("cutoff", "hermite_scale"))
