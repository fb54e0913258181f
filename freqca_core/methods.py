"""Cache methods: how a cached step's CRF ``[B, L, D]`` is produced from the stream's history.

- ``freqca``: low band reused from the last full step, high band forecast (Hermite by default).
- ``reuse``: the whole CRF of the last full step (FORA-like).
- ``taylor``: the whole CRF forecast by a Taylor/polynomial forecaster (TaylorSeer-like).
- ``frdiff``: CRF reuse plus FRDiff's score mixing of cached outputs (``frdiff.FRDiffMethod``).
- ``feb``: FEB-Cache (``feb.FEBMethod``, built with its cache table, which is also its schedule).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import torch

from .cache import CRFHistory
from .forecast import Forecaster, HermiteForecaster, ReuseForecaster, TaylorForecaster
from .spectral import BandSplitter, TokenLayout

METHODS = ("freqca", "reuse", "taylor", "frdiff", "feb")  # feb: built with its table (feb.FEBMethod)


class CacheMethod(ABC):
    name: str
    history_size: int  # full-step CRFs kept per stream
    mixes_output = False  # whether cached calls mix in the last full call's output (``output_weight``)
    residual = False  # whether the history holds ``crf - embedding`` and forecasts add the current embedding
    delta = 1.0  # exposure-bias scale of cached calls' outputs (``feb.exposure_scale``; 1: none)

    def attention_mode(self, step: int, n_steps: int | None) -> str | None:
        """At a call whose blocks run: ``"store"`` its attention kernel outputs, ``"serve"`` the stored
        ones instead of computing them, or None (attention untouched)."""
        return None

    @abstractmethod
    def predict(self, history: CRFHistory, sigma: float, layout: TokenLayout) -> torch.Tensor:
        """The CRF ``[b, L, D]`` at ``sigma`` from a non-empty ``history``."""

    def output_weight(self, step: int, n_steps: int | None) -> float:
        """Weight in [0, 1] of the last full call's output in a cached call's output at ``step``."""
        return 0.0

    def describe(self) -> dict:
        """Parameters for logs and benchmark rows."""
        return {}


class ForecastMethod(CacheMethod):
    """The whole CRF from one forecaster (``reuse``: FORA-like; ``taylor``: TaylorSeer-like)."""

    def __init__(self, name: str, forecaster: Forecaster) -> None:
        self.name = name
        self.forecaster = forecaster
        self.history_size = forecaster.needs

    def predict(self, history: CRFHistory, sigma: float, layout: TokenLayout) -> torch.Tensor:
        weights = self.forecaster.weights(history.sigmas, sigma, step_size(history))
        dtype = history.entries[0].crf.dtype  # accumulate in >= float32: bf16/fp16 sums of large weights drift
        return weighted_sum(history, weights, torch.promote_types(dtype, torch.float32)).to(dtype)

    def describe(self) -> dict:
        return {"forecaster": self.forecaster.name, "order": self.history_size - 1}


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

    def describe(self) -> dict:
        return {"cutoff": self.splitter.cutoff, "transform": self.splitter.transform,
                "high": self.high.name, "low": self.low.name}


def make_method(name: str, *, cutoff: float = 0.1, transform: str = "dct", hermite_scale: float = 0.71,
                order: int = 2) -> CacheMethod:
    """Build a method by name (see ``METHODS``)."""
    if name == "freqca":
        return FreqCaMethod(BandSplitter(cutoff, transform), HermiteForecaster(hermite_scale, order))
    if name == "reuse":
        return ForecastMethod("reuse", ReuseForecaster())
    if name == "taylor":
        return ForecastMethod("taylor", TaylorForecaster(order))
    if name == "frdiff":
        from .frdiff import FRDiffMethod  # frdiff imports this module
        return FRDiffMethod()
    if name == "feb":
        raise ValueError("method feb is built with its cache table, which is also its schedule: "
                         "use feb.FEBMethod(table) with feb.FEBSchedule(table)")
    raise ValueError(f"method must be one of {', '.join(METHODS)}; got {name!r}")


def weighted_sum(history: CRFHistory, weights: Sequence[float], dtype: torch.dtype | None = None) -> torch.Tensor:
    """``sum_j w_j F_j`` over the history (entries with zero weight skipped), in ``dtype`` if given."""
    out = None
    for entry, w in zip(history.entries, weights):
        if w == 0.0:
            continue
        term = entry.crf.to(dtype or entry.crf.dtype) * w
        out = term if out is None else out.add_(term)
    if out is None:
        return torch.zeros_like(history.entries[0].crf, dtype=dtype)
    return out


def step_size(history: CRFHistory) -> float:
    """Sigma per sampler step between the two newest full steps (0 with a single entry)."""
    if len(history) < 2:
        return 0.0
    newest, older = history.entries[0], history.entries[1]
    return abs(older.sigma - newest.sigma) / max(newest.step - older.step, 1)
