"""CRF storage: a short history of full-step features per stream (cond / uncond / each batch chunk).

The **CRF** (cumulative residual feature) of a model call is the image-token hidden state after the last
transformer block, before the final layer, ``[B, L, D]``: what a full step computes and a cached step
forecasts. A method may store a quantity derived from it (e.g. the CRF minus the block input).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable

import torch

from .schedule import same_sigma


@dataclass
class CRFEntry:
    """One full step: its ``sigma``, sampler ``step`` index and the CRF ``[b, L, D]`` (detached copy)."""

    sigma: float
    step: int
    crf: torch.Tensor


class CRFHistory:
    """The last ``capacity`` full-step CRFs of one stream, newest first; all of one shape."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.entries: list[CRFEntry] = []

    def push(self, sigma: float, step: int, crf: torch.Tensor, device: torch.device | None = None) -> None:
        """Store a copy of ``crf``; a CRF at the same sigma up to rounding replaces its entry (re-runs at one
        sigma: two entries ~1e-7 apart would make a forecast's divided differences divide by ~1e-7)."""
        if self.entries and self.entries[0].crf.shape != crf.shape:
            self.entries.clear()  # new size or batch: earlier features cannot be extrapolated from
        self.entries = [e for e in self.entries if not same_sigma(e.sigma, sigma)]
        stored = crf.detach().to(device=device or crf.device, copy=True)
        self.entries.insert(0, CRFEntry(float(sigma), int(step), stored))
        del self.entries[self.capacity:]

    def matches(self, rows: int, length: int) -> bool:
        """Whether the history can forecast a ``[rows, length, D]`` CRF (non-empty and of that size)."""
        return bool(self.entries) and tuple(self.entries[0].crf.shape[:2]) == (rows, length)

    @property
    def sigmas(self) -> list[float]:
        return [e.sigma for e in self.entries]

    @property
    def nbytes(self) -> int:
        return sum(e.crf.numel() * e.crf.element_size() for e in self.entries)

    def __len__(self) -> int:
        return len(self.entries)


class StreamCache:
    """One ``CRFHistory`` per stream key; the stream keys come from the caller (uuids, cond/uncond index)."""

    def __init__(self, capacity: int, offload_device: torch.device | None = None) -> None:
        self.capacity = capacity
        self.offload_device = offload_device
        self.streams: dict[Hashable, CRFHistory] = {}

    def history(self, key: Hashable) -> CRFHistory:
        if key not in self.streams:
            self.streams[key] = CRFHistory(self.capacity)
        return self.streams[key]

    def push(self, key: Hashable, sigma: float, step: int, crf: torch.Tensor) -> None:
        self.history(key).push(sigma, step, crf, self.offload_device)

    @property
    def nbytes(self) -> int:
        return sum(h.nbytes for h in self.streams.values())

    def clear(self) -> None:
        self.streams.clear()
