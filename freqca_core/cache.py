"""CRF storage: a short history of full-step features per stream (cond / uncond / each batch chunk)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable

import torch


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
        """Store a copy of ``crf``; a CRF at the same sigma replaces its entry (re-runs at one sigma)."""
        if self.entries and self.entries[0].crf.shape != crf.shape:
            self.entries.clear()  # new size or batch: earlier features cannot be extrapolated from
        self.entries = [e for e in self.entries if e.sigma != sigma]
        stored = crf.detach().to(device=device or crf.device, copy=True)
        self.entries.insert(0, CRFEntry(float(sigma), int(step), stored))
        del self.entries[self.capacity:]

    def matches(self, shape: torch.Size) -> bool:
        return bool(self.entries) and self.entries[0].crf.shape == shape

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
