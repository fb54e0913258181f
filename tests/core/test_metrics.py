"""Fidelity metrics: known values, float64 arithmetic, and an independent SSIM written with plain loops."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from freqca_lab.metrics import fidelity, gaussian_window, psnr, rel_l1, ssim, to_unit


def _images(seed: int = 0, shape=(3, 24, 20)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g)


def naive_ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Straightforward SSIM: explicit 11x11 Gaussian (sigma 1.5) weighted statistics at every valid position."""
    coords = np.arange(11) - 5.0
    g1 = np.exp(-coords ** 2 / (2 * 1.5 ** 2))
    win = np.outer(g1, g1)
    win /= win.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for ch in range(a.shape[0]):
        for i in range(a.shape[1] - 10):
            for j in range(a.shape[2] - 10):
                pa, pb = a[ch, i:i + 11, j:j + 11], b[ch, i:i + 11, j:j + 11]
                ma, mb = (win * pa).sum(), (win * pb).sum()
                va = (win * (pa - ma) ** 2).sum()
                vb = (win * (pb - mb) ** 2).sum()
                cov = (win * (pa - ma) * (pb - mb)).sum()
                values.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_identical_images():
    a = _images()
    assert psnr(a, a) == math.inf
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert rel_l1(a, a) == 0.0


def test_psnr_of_known_mse():
    a = torch.full((3, 16, 16), 0.5, dtype=torch.float64)
    b = a + 0.1  # MSE 0.01 -> 20 dB at data range 1
    assert psnr(b, a) == pytest.approx(20.0, abs=1e-9)
    assert psnr(2 * b - 1, 2 * a - 1, data_range=2.0) == pytest.approx(20.0, abs=1e-9)


def test_psnr_in_float_not_uint8():
    a = torch.full((3, 8, 8), 10, dtype=torch.uint8)
    b = torch.full((3, 8, 8), 250, dtype=torch.uint8)  # uint8 a - b would wrap to 16
    assert psnr(a, b, data_range=255.0) == pytest.approx(10 * math.log10(255 ** 2 / 240 ** 2), abs=1e-9)


def test_rel_l1_known_value():
    b = torch.ones(3, 4, 4, dtype=torch.float64)
    assert rel_l1(b * 1.1, b) == pytest.approx(0.1, abs=1e-12)
    assert rel_l1(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2)) == 0.0


def test_ssim_matches_independent_implementation_and_is_symmetric():
    a = _images(1)
    b = (a + 0.1 * torch.randn(a.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    ours = ssim(a, b)
    assert ours == pytest.approx(naive_ssim(a.double().numpy(), b.double().numpy()), abs=1e-10)
    assert ours == pytest.approx(ssim(b, a), abs=1e-12)
    assert 0.0 < ours < 1.0
    noisier = (a + 0.3 * torch.randn(a.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    assert ssim(a, noisier) < ours


def test_batches_give_one_value_per_image():
    a = torch.stack([_images(4), _images(5)]).double()
    b = a.clone()
    b[1] += 0.05
    values = psnr(b, a)
    assert values.shape == (2,) and values.dtype == torch.float64
    assert values[0] == math.inf and values[1] == pytest.approx(10 * math.log10(1 / 0.0025), abs=1e-6)
    assert torch.allclose(ssim(a, b), torch.tensor([ssim(a[0], b[0]), ssim(a[1], b[1])], dtype=torch.float64))


def test_window_and_fidelity_helper():
    win = gaussian_window()
    assert win.shape == (11, 11) and win.sum().item() == pytest.approx(1.0)
    x = torch.tensor([[[[-2.0, 0.0, 1.0]]]])
    assert to_unit(x).tolist() == [[[[0.0, 0.5, 1.0]]]]
    ref = 2 * torch.stack([_images(6), _images(7)]) - 1
    out = fidelity(ref + 0.02, ref)
    assert set(out) == {"psnr", "ssim", "rel_l1"} and all(len(v) == 2 for v in out.values())
    with pytest.raises(ValueError):
        psnr(torch.zeros(3, 4, 4), torch.zeros(3, 4, 5))
