"""Image fidelity metrics, computed in float64 (never on uint8, whose arithmetic wraps around).

Images are ``[C, H, W]`` or ``[B, C, H, W]`` tensors with values in ``[0, data_range]``; the benchmark
maps the sampler's ``[-1, 1]`` output to ``[0, 1]`` (``to_unit``) and uses ``data_range=1``. With a
batch, each function returns one value per image (``[B]`` float64 tensor); without, a Python float.

- ``psnr``: ``10 log10(data_range^2 / MSE)``; ``inf`` for identical images.
- ``ssim``: Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, computed
  per channel over the *valid* window positions (no padding) and averaged over positions and channels.
- ``rel_l1``: ``mean|a - b| / mean|b|`` with ``b`` the reference (the uncached image).
"""
from __future__ import annotations

import math

import torch

WINDOW = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Sampler output in ``[-1, 1]`` -> float64 in ``[0, 1]`` (clamped, as a viewer would show it)."""
    return (images.detach().double().clamp(-1.0, 1.0) + 1.0) / 2.0


def _pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dim() not in (3, 4):
        raise ValueError(f"expected [C, H, W] or [B, C, H, W], got {tuple(a.shape)}")
    single = a.dim() == 3
    a, b = a.detach().to(torch.float64), b.detach().to(torch.float64)
    if single:
        a, b = a[None], b[None]
    return a, b, single


def _out(values: torch.Tensor, single: bool) -> torch.Tensor | float:
    return float(values[0]) if single else values


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor | float:
    """Peak signal-to-noise ratio in dB (``inf`` where the images are identical)."""
    a, b, single = _pair(a, b)
    mse = (a - b).pow(2).flatten(1).mean(1)
    with torch.no_grad():
        values = 10.0 * torch.log10(data_range ** 2 / mse)  # mse == 0 -> inf
    return _out(values, single)


def gaussian_window(size: int = WINDOW, sigma: float = SIGMA) -> torch.Tensor:
    """Normalised 2-D Gaussian ``[size, size]`` in float64."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords ** 2) / (2.0 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor | float:
    """Structural similarity (mean SSIM over valid window positions and channels)."""
    a, b, single = _pair(a, b)
    _, c, h, w = a.shape
    if h < WINDOW or w < WINDOW:
        raise ValueError(f"ssim needs images of at least {WINDOW}x{WINDOW}, got {h}x{w}")
    kernel = gaussian_window().expand(c, 1, WINDOW, WINDOW).contiguous()

    def blur(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(x, kernel, groups=c)

    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)
    return _out((num / den).flatten(1).mean(1), single)


def rel_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor | float:
    """``mean|a - b| / mean|b|`` per image (``b`` is the reference; ``inf`` if ``b`` is all zero)."""
    a, b, single = _pair(a, b)
    num = (a - b).abs().flatten(1).mean(1)
    den = b.abs().flatten(1).mean(1)
    values = torch.where(den > 0, num / den.clamp_min(1e-300), torch.where(num > 0, math.inf, 0.0))
    return _out(values, single)


def fidelity(images: torch.Tensor, reference: torch.Tensor) -> dict[str, list[float]]:
    """Per-image ``psnr``, ``ssim`` and ``rel_l1`` of sampler outputs ``[B, C, H, W]`` in ``[-1, 1]``."""
    a, b = to_unit(images), to_unit(reference)
    return {"psnr": psnr(a, b).tolist(), "ssim": ssim(a, b).tolist(), "rel_l1": rel_l1(a, b).tolist()}
