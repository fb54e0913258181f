"""Frequency-band split of token features.

A CRF is ``[B, L, D]``: ``L`` tokens, each a ``D``-vector. ``TokenLayout`` says how the ``L`` tokens are
arranged: consecutive segments, each on its own grid (``(h, w)`` image, ``(t, h, w)`` video, ``(n,)``
sequence) or without spatial structure (``grid=()``, e.g. register tokens). ``BandSplitter`` returns the
low band; the high band is ``x - low``, so ``low + high`` reconstructs ``x`` exactly up to float rounding.

- ``transform="dct"``: orthonormal DCT-II along every grid axis; the low band keeps the coefficients inside
  the quarter ball ``|k| <= cutoff * |n - 1|`` around the DC corner (FreqCa's FLUX split, any grid shape).
- ``transform="fft"``: 1-D FFT over the segment's flattened tokens; keeps ``|f| <= cutoff * max|f|``
  (FreqCa's Qwen-Image split).
Tokens without a grid have no spatial frequencies: they are all low band (their DC component).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .validation import check_choice, check_float

TRANSFORMS = ("dct", "fft")


@dataclass(frozen=True)
class Segment:
    """``length`` consecutive tokens laid on ``grid`` (row-major), or without structure if ``grid == ()``."""

    length: int
    grid: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.grid and math.prod(self.grid) != self.length:
            raise ValueError(f"segment grid {self.grid} has {math.prod(self.grid)} cells but length is {self.length}")
        if self.length < 0 or any(n < 1 for n in self.grid):
            raise ValueError(f"invalid segment: length {self.length}, grid {self.grid}")


@dataclass(frozen=True)
class TokenLayout:
    """The token axis of a ``[B, L, D]`` feature as consecutive segments."""

    segments: tuple[Segment, ...]

    @classmethod
    def grid(cls, *shape: int) -> "TokenLayout":
        """One grid covering all tokens, e.g. ``TokenLayout.grid(h, w)``."""
        return cls((Segment(math.prod(shape), tuple(shape)),))

    @classmethod
    def of(cls, *parts: tuple[int, ...] | int) -> "TokenLayout":
        """Segments from grids (tuples) and unstructured runs (ints): ``TokenLayout.of((h, w), (h2, w2), 4)``."""
        return cls(tuple(Segment(p) if isinstance(p, int) else Segment(math.prod(p), tuple(p)) for p in parts))

    @property
    def length(self) -> int:
        return sum(s.length for s in self.segments)


class BandSplitter:
    """Low/high split of ``[B, L, D]`` features; caches its small basis matrices per size and device."""

    def __init__(self, cutoff: float = 0.1, transform: str = "dct") -> None:
        self.cutoff = check_float("cutoff", cutoff, 0.0, 1.0)
        self.transform = check_choice("transform", transform, TRANSFORMS)
        self._bases: dict[tuple, torch.Tensor] = {}
        self._masks: dict[tuple, torch.Tensor] = {}

    def low(self, x: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        """Low band of ``x`` ``[B, L, D]`` (same shape and dtype)."""
        if x.shape[1] != layout.length:
            raise ValueError(f"feature has {x.shape[1]} tokens but the layout describes {layout.length}")
        if x.numel() == 0:  # empty batch or channels: nothing to transform (FFT/reshape reject empty inputs)
            return x.clone()
        parts, start = [], 0
        for seg in layout.segments:
            chunk = x[:, start:start + seg.length]
            start += seg.length
            if not seg.grid:
                parts.append(chunk)
            elif self.transform == "dct":
                parts.append(self._dct_low(chunk, seg.grid))
            else:
                parts.append(self._fft_low(chunk))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def split(self, x: torch.Tensor, layout: TokenLayout) -> tuple[torch.Tensor, torch.Tensor]:
        """``(low, high)`` with ``low + high == x``."""
        low = self.low(x, layout)
        return low, x - low

    def _dct_low(self, x: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        """Project ``x`` ``[B, n, D]`` (tokens row-major on ``grid``) on the low DCT coefficients."""
        b, _, d = x.shape
        radius = self.cutoff * math.sqrt(sum((n - 1) ** 2 for n in grid))
        keep = tuple(min(n, int(math.floor(radius + 1e-9)) + 1) for n in grid)
        y = x.float().reshape(b, *grid, d)
        bases = [self._basis(n, k, x.device) for n, k in zip(grid, keep)]
        for axis, basis in enumerate(bases):  # forward transform, truncated to the kept coefficients
            y = torch.movedim(torch.movedim(y, axis + 1, -1) @ basis.T, -1, axis + 1)
        y = y * self._ball_mask(keep, radius, x.device).unsqueeze(-1)
        for axis, basis in enumerate(bases):  # inverse transform from the kept coefficients
            y = torch.movedim(torch.movedim(y, axis + 1, -1) @ basis, -1, axis + 1)
        return y.reshape(b, -1, d).to(x.dtype)

    def _fft_low(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        # |f| = k / n and max|f| = (n // 2) / n, so |f| <= cutoff * max|f| is k <= cutoff * (n // 2); compared on
        # integer bins (float32 frequencies against a float64 threshold dropped the top bin at cutoff 1, odd n).
        bins = torch.arange(n // 2 + 1, device=x.device, dtype=torch.float64)
        keep = bins <= self.cutoff * (n // 2) * (1 + 1e-12) + 1e-9
        spectrum = torch.fft.rfft(x.float(), dim=1) * keep[None, :, None]
        return torch.fft.irfft(spectrum, n=n, dim=1).to(x.dtype)

    def _basis(self, n: int, keep: int, device: torch.device) -> torch.Tensor:
        """First ``keep`` rows of the orthonormal DCT-II matrix of size ``n``: ``[keep, n]``."""
        key = (n, keep, device)
        if key not in self._bases:
            k = torch.arange(keep, dtype=torch.float64)[:, None]
            i = torch.arange(n, dtype=torch.float64)[None, :]
            basis = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
            basis[0] /= math.sqrt(2.0)
            self._bases[key] = basis.to(device=device, dtype=torch.float32)
        return self._bases[key]

    def _ball_mask(self, keep: tuple[int, ...], radius: float, device: torch.device) -> torch.Tensor:
        key = (keep, radius, device)
        if key not in self._masks:
            axes = torch.meshgrid(*[torch.arange(k, dtype=torch.float64) for k in keep], indexing="ij")
            norm = torch.sqrt(sum(a ** 2 for a in axes))
            self._masks[key] = (norm <= radius + 1e-9).to(device=device, dtype=torch.float32)
        return self._masks[key]
