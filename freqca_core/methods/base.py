"""The method interface: how a cached call's CRF ``[B, L, D]`` is produced, and a method's other hooks.

The controller (``controller.py``) calls only this interface and knows no method by name. A method is one
module in this package that owns everything specific to it (its forecast, any output handling, any
attention override, its schedule pairing) and registers a ``MethodSpec`` in ``methods/__init__.py``.

Per-run state (stored outputs, attention kernels) lives on the method object and is reset by
``start_run``; the controller builds a new method per run through the spec anyway.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from ..cache import CRFHistory
from ..forecast import Forecaster, sigma_per_step
from ..spectral import BandSplitter, TokenLayout

if TYPE_CHECKING:  # only for type hints: the config imports the registry
    from ..config import CacheConfig
    from ..controller import CallPlan


class CacheMethod(ABC):
    name: str
    history_size: int  # full-step CRFs kept per stream

    def start_run(self, offload_device: torch.device | None) -> None:
        """Forget per-run state; stored tensors go to ``offload_device`` when given."""

    def end_run(self) -> dict[str, int]:
        """Release per-run state; return counters for the run's statistics."""
        return {}

    @abstractmethod
    def predict(self, history: CRFHistory, sigma: float, layout: TokenLayout) -> torch.Tensor:
        """The stored quantity ``[b, L, D]`` at ``sigma`` from a non-empty ``history``."""

    def encode(self, crf: torch.Tensor, embedding: torch.Tensor | None) -> torch.Tensor | None:
        """What the history stores for a computed CRF ``[B, L, D]`` (None: nothing can be stored)."""
        return crf

    def decode(self, forecast: torch.Tensor, embedding: torch.Tensor | None) -> torch.Tensor | None:
        """The CRF ``[B, L, D]`` of a cached call from the forecast of the stored quantity (None: unusable).

        ``encode`` and ``decode`` translate by the same function of the embedding, so that
        ``decode(x, e) - crf == x - encode(crf, e)``: calibration scores forecasts of the stored quantity."""
        return forecast

    def full_call_mode(self, step: int, n_steps: int | None) -> str | None:
        """At a call whose blocks run: ``"store"`` its attention kernel outputs, ``"serve"`` stored ones
        instead of computing them, or None (attention untouched)."""
        return None

    def attention_override(self, plan: "CallPlan") -> Callable[..., torch.Tensor] | None:
        """The call's attention-kernel override (``override(func, *args, **kwargs)``), or None."""
        return None

    def finish_call(self, plan: "CallPlan", out: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        """The model output ``[B, ...]`` of a planned call after the method's output handling."""
        return out

    @property
    def extra_bytes(self) -> int:
        """Bytes held besides the CRF histories (e.g. attention kernel outputs)."""
        return 0

    def describe(self) -> dict:
        """Parameters for logs and benchmark rows."""
        return {}


class LinearMethod(CacheMethod):
    """A forecast linear in the history per frequency band: ``low(sum_i l_i S_i) + high(sum_i h_i S_i)`` over
    the stored quantities ``S_i`` ``[b, L, D]`` (newest first), split by ``splitter`` (None: one band, l == h).
    Calibration scores such methods from the weights alone (``calibration.StepErrors``)."""

    splitter: BandSplitter | None = None

    @abstractmethod
    def band_weights(self, sigmas: Sequence[float], unit: float, sigma: float) -> tuple[list[float], list[float]]:
        """``(l, h)``: the low- and high-band weights of the history at ``sigmas`` (newest first) to forecast
        ``sigma``; ``unit`` is the sigma per sampler step between the two newest (``step_size``)."""

    def predict(self, history: CRFHistory, sigma: float, layout: TokenLayout) -> torch.Tensor:
        low_w, high_w = self.band_weights(history.sigmas, step_size(history), sigma)
        dtype = history.entries[0].crf.dtype  # accumulate in >= float32: bf16/fp16 sums of large weights drift
        acc = torch.promote_types(dtype, torch.float32)
        out = weighted_sum(history, high_w, acc)
        if self.splitter is not None:  # low(L) + high(H) = H + low(L - H)
            out = out + self.splitter.low(weighted_sum(history, [a - b for a, b in zip(low_w, high_w)], acc), layout)
        return out.to(dtype)


class ForecastMethod(LinearMethod):
    """The whole CRF from one forecaster (``reuse``: FORA-like; ``taylor``: TaylorSeer-like)."""

    def __init__(self, name: str, forecaster: Forecaster) -> None:
        self.name = name
        self.forecaster = forecaster
        self.history_size = forecaster.needs

    def band_weights(self, sigmas: Sequence[float], unit: float, sigma: float) -> tuple[list[float], list[float]]:
        weights = self.forecaster.weights(sigmas, sigma, unit)
        return weights, weights

    def describe(self) -> dict:
        return {"forecaster": self.forecaster.name, "order": self.history_size - 1}


class EmbeddingResidual:
    """Mixin for methods whose history holds ``crf - embedding`` (what the blocks added to the image rows
    entering the first block) and whose cached calls add the forecast to the *current* embedding."""

    def encode(self, crf: torch.Tensor, embedding: torch.Tensor | None) -> torch.Tensor | None:
        if embedding is None or embedding.shape != crf.shape:
            return None
        return crf - embedding.to(crf)

    def decode(self, forecast: torch.Tensor, embedding: torch.Tensor | None) -> torch.Tensor | None:
        if embedding is None or embedding.shape != forecast.shape:
            return None
        return forecast + embedding.to(forecast)


Schedule = Any  # a StepSchedule or AdaptiveSchedule: anything with ``start_run(locator) -> ScheduleRun``


@dataclass(frozen=True)
class MethodSpec:
    """One registry entry: the method's name, a one-line summary (tooltips, README) and how a config
    builds the method with its schedule for a run of ``n_steps`` steps (None: unknown) on a token grid
    split by ``transform``."""

    name: str
    summary: str
    build: Callable[["CacheConfig", int | None, str], tuple[CacheMethod, Schedule]]
    options: tuple[str, ...] = ()  # the config fields this method reads besides the schedule's
    attention: bool = False  # whether it stores / serves attention kernels (``attention_override``)


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
    entries = history.entries
    return sigma_per_step([e.sigma for e in entries[:2]], [e.step for e in entries[:2]])
