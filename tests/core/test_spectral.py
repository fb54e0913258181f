"""Band split (freqca_core.spectral) against brute-force references built with scipy/numpy and explicit masks.

DCT reference: full orthonormal n-D DCT-II of the token grid (``scipy.fft.dctn(norm="ortho")``, or the
definitional sum in numpy where scipy is missing), multiply by the radial mask
``|k| <= cutoff * sqrt(sum_a (n_a - 1)^2)``, inverse transform. FFT reference: numpy's full complex FFT over
the segment's flattened tokens with the mask ``|f| <= cutoff * max|f|``, real part of the inverse.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from freqca_core import BandSplitter, Segment, TokenLayout

try:
    import scipy.fft as _sfft
except ImportError:  # pragma: no cover - scipy is optional for the suite
    _sfft = None

GRIDS = [(1, 1), (1, 7), (7, 1), (5, 3), (16, 16), (13, 29), (3, 4, 5), (2, 1, 6)]
CUTOFFS = [0.0, 0.1, 0.3, 1.0]


# --------------------------------------------------------------------------------------------- references
def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix from its definition: X_k = s_k sum_i x_i cos(pi (2i+1) k / 2n)."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] *= np.sqrt(0.5)
    return m


def _dctn(y: np.ndarray, axes: tuple[int, ...], inverse: bool = False) -> np.ndarray:
    if _sfft is not None:
        return (_sfft.idctn if inverse else _sfft.dctn)(y, axes=axes, norm="ortho")
    for ax in axes:
        m = _dct_matrix(y.shape[ax])
        y = np.moveaxis(np.moveaxis(y, ax, -1) @ (m if inverse else m.T), -1, ax)
    return y


def ref_low_dct(x: np.ndarray, grid: tuple[int, ...], cutoff: float) -> np.ndarray:
    b, n, d = x.shape
    y = x.reshape(b, *grid, d)
    axes = tuple(range(1, 1 + len(grid)))
    coeffs = _dctn(y, axes)
    radius = cutoff * math.sqrt(sum((m - 1) ** 2 for m in grid))
    ks = np.meshgrid(*[np.arange(m) for m in grid], indexing="ij")
    mask = np.sqrt(sum(k.astype(np.float64) ** 2 for k in ks)) <= radius * (1 + 1e-12) + 1e-12
    coeffs = coeffs * mask[None, ..., None]
    return _dctn(coeffs, axes, inverse=True).reshape(b, n, d)


def ref_low_fft(x: np.ndarray, cutoff: float) -> np.ndarray:
    n = x.shape[1]
    f = np.abs(np.fft.fftfreq(n))
    mask = f <= cutoff * f.max() * (1 + 1e-12) + 1e-15
    return np.fft.ifft(np.fft.fft(x, axis=1) * mask[None, :, None], axis=1).real


def ref_low(x: np.ndarray, layout: TokenLayout, cutoff: float, transform: str) -> np.ndarray:
    parts, start = [], 0
    for seg in layout.segments:
        chunk = x[:, start:start + seg.length]
        start += seg.length
        if not seg.grid:
            parts.append(chunk)
        elif transform == "dct":
            parts.append(ref_low_dct(chunk, seg.grid, cutoff))
        else:
            parts.append(ref_low_fft(chunk, cutoff))
    return np.concatenate(parts, axis=1)


def _rand(*shape: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


@pytest.mark.skipif(_sfft is None, reason="scipy not installed")
def test_numpy_dct_reference_matches_scipy():
    y = np.random.default_rng(0).normal(size=(2, 5, 3, 4))
    ours = y
    for ax in (1, 2):
        m = _dct_matrix(y.shape[ax])
        ours = np.moveaxis(np.moveaxis(ours, ax, -1) @ m.T, -1, ax)
    np.testing.assert_allclose(ours, _sfft.dctn(y, axes=(1, 2), norm="ortho"), atol=1e-12)


# ------------------------------------------------------------------------------- reference and reconstruction
@pytest.mark.parametrize("transform", ["dct", "fft"])
@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: "x".join(map(str, g)))
@pytest.mark.parametrize("batch", [1, 4])
def test_low_band_matches_reference_and_reconstructs(transform, grid, batch):
    layout = TokenLayout.grid(*grid)
    x = _rand(batch, layout.length, 3, seed=hash((grid, batch)) % 1000)
    for cutoff in CUTOFFS:
        splitter = BandSplitter(cutoff, transform)
        low, high = splitter.split(x, layout)
        assert low.shape == x.shape and high.shape == x.shape
        assert low.dtype == x.dtype and high.dtype == x.dtype
        expected = ref_low(x.double().numpy(), layout, cutoff, transform)
        np.testing.assert_allclose(low.double().numpy(), expected, atol=2e-5, rtol=1e-5,
                                   err_msg=f"cutoff {cutoff}")
        torch.testing.assert_close(low + high, x, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("transform", ["dct", "fft"])
def test_reference_test_can_fail_on_a_wrong_radius(transform):
    """Sanity check of the harness: the reference at a different cutoff does not match."""
    layout = TokenLayout.grid(16, 16)
    x = _rand(1, 256, 2, seed=3)
    low = BandSplitter(0.1, transform).low(x, layout).double().numpy()
    other = ref_low(x.double().numpy(), layout, 0.2, transform)
    assert np.abs(low - other).max() > 1e-2


@pytest.mark.parametrize("n,cutoff,kept", [(7, 1.0, 4), (7, 1 / 3, 2), (7, 2 / 3, 3), (13, 0.5, 4), (10, 0.2, 2)])
def test_fft_cutoff_exactly_on_a_bin_keeps_it(n, cutoff, kept):
    """Regression: |f| <= cutoff * max|f| is inclusive. Float32 frequencies compared with a float64 threshold
    used to drop the bin lying exactly on the cutoff (e.g. the top bin of an odd length at cutoff 1)."""
    eye = torch.eye(n).unsqueeze(0)
    proj = BandSplitter(cutoff, "fft").low(eye, TokenLayout.grid(1, n))[0]
    # each kept rfft bin k > 0 carries two dimensions (+k and -k); the DC carries one
    assert round(float(torch.trace(proj))) == 1 + 2 * (kept - 1) - (1 if n % 2 == 0 and kept - 1 == n // 2 else 0)
    np.testing.assert_allclose(proj.double().numpy(), ref_low_fft(np.eye(n)[None], cutoff)[0], atol=1e-6)


@pytest.mark.parametrize("transform", ["dct", "fft"])
def test_multiple_segments_and_unstructured_tokens(transform):
    layout = TokenLayout.of((4, 6), (3, 5), 4)
    assert layout.length == 24 + 15 + 4
    assert [s.grid for s in layout.segments] == [(4, 6), (3, 5), ()]
    x = _rand(2, layout.length, 5, seed=7)
    splitter = BandSplitter(0.3, transform)
    low, high = splitter.split(x, layout)
    expected = ref_low(x.double().numpy(), layout, 0.3, transform)
    np.testing.assert_allclose(low.double().numpy(), expected, atol=2e-5)
    # Segments are split independently: each grid segment alone gives the same result.
    torch.testing.assert_close(low[:, :24], splitter.low(x[:, :24], TokenLayout.grid(4, 6)))
    torch.testing.assert_close(low[:, 24:39], splitter.low(x[:, 24:39], TokenLayout.grid(3, 5)))
    # Unstructured tokens have no spatial frequencies: all low band.
    torch.testing.assert_close(low[:, 39:], x[:, 39:], atol=0, rtol=0)
    assert torch.count_nonzero(high[:, 39:]) == 0
    torch.testing.assert_close(low + high, x, atol=1e-6, rtol=1e-6)


def test_unstructured_only_layout_is_identity():
    x = _rand(3, 6, 2, seed=1)
    low = BandSplitter(0.1).low(x, TokenLayout.of(6))
    torch.testing.assert_close(low, x, atol=0, rtol=0)


def test_3d_grid_is_not_a_flattened_2d_split():
    """A (t, h, w) segment uses a 3-D DCT: it differs from treating the tokens as a (t*h, w) image."""
    x = _rand(1, 3 * 4 * 5, 2, seed=11)
    splitter = BandSplitter(0.3, "dct")
    low3 = splitter.low(x, TokenLayout.grid(3, 4, 5))
    low2 = splitter.low(x, TokenLayout.grid(12, 5))
    np.testing.assert_allclose(low3.double().numpy(), ref_low_dct(x.double().numpy(), (3, 4, 5), 0.3), atol=2e-5)
    assert (low3 - low2).abs().max() > 1e-3


# ------------------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("transform", ["dct", "fft"])
def test_low_precision_and_double_inputs_keep_their_dtype(dtype, transform):
    layout = TokenLayout.of((8, 6), 3)
    x = _rand(2, layout.length, 4, seed=5, dtype=dtype)
    splitter = BandSplitter(0.2, transform)
    low, high = splitter.split(x, layout)
    assert low.dtype == dtype and high.dtype == dtype
    expected = ref_low(x.double().numpy(), layout, 0.2, transform)
    eps = torch.finfo(dtype).eps if dtype != torch.float64 else 1e-6
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(low.double().numpy(), expected, atol=4 * eps * max(scale, 1.0))
    recon = low.double() + high.double()
    torch.testing.assert_close(recon, x.double(), atol=4 * eps * 4, rtol=4 * eps)


# ------------------------------------------------------------------------------------- properties
@pytest.mark.parametrize("transform", ["dct", "fft"])
@pytest.mark.parametrize("grid", [(5, 3), (16, 16), (13, 29), (3, 4, 5)], ids=str)
def test_low_is_idempotent(transform, grid):
    layout = TokenLayout.of(grid, 2)
    x = _rand(2, layout.length, 3, seed=2)
    splitter = BandSplitter(0.15, transform)
    low = splitter.low(x, layout)
    torch.testing.assert_close(splitter.low(low, layout), low, atol=1e-5, rtol=1e-5)
    high = x - low
    assert splitter.low(high, layout).abs().max() < 1e-5  # the high band has no low component


@pytest.mark.parametrize("transform", ["dct", "fft"])
@pytest.mark.parametrize("grid", [(1, 1), (1, 7), (5, 3), (16, 16), (3, 4, 5)], ids=str)
@pytest.mark.parametrize("cutoff", [0.0, 0.1, 1.0])
def test_constant_field_is_all_low(transform, grid, cutoff):
    layout = TokenLayout.grid(*grid)
    values = torch.tensor([[1.5, -2.0, 0.25]])  # one constant per channel, per batch row
    x = values[:, None, :].expand(2, layout.length, 3).clone()
    x[1] *= -3.0
    low, high = BandSplitter(cutoff, transform).split(x, layout)
    torch.testing.assert_close(low, x, atol=1e-5, rtol=1e-5)
    assert high.abs().max() < 1e-5


@pytest.mark.parametrize("transform", ["dct", "fft"])
@pytest.mark.parametrize("grid", [(1, 7), (5, 3), (16, 16), (13, 29), (2, 3, 4)], ids=str)
def test_cutoff_zero_keeps_only_the_mean(transform, grid):
    layout = TokenLayout.of(grid, 2)
    n = math.prod(grid)
    x = _rand(3, layout.length, 2, seed=4)
    low = BandSplitter(0.0, transform).low(x, layout)
    mean = x[:, :n].mean(dim=1, keepdim=True).expand(-1, n, -1)
    torch.testing.assert_close(low[:, :n], mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(low[:, n:], x[:, n:], atol=0, rtol=0)


@pytest.mark.parametrize("transform", ["dct", "fft"])
@pytest.mark.parametrize("grid", [(1, 1), (1, 7), (5, 3), (16, 16), (13, 29), (3, 4, 5)], ids=str)
def test_cutoff_one_keeps_everything(transform, grid):
    layout = TokenLayout.grid(*grid)
    x = _rand(2, layout.length, 3, seed=6)
    low, high = BandSplitter(1.0, transform).split(x, layout)
    torch.testing.assert_close(low, x, atol=1e-5, rtol=1e-5)
    assert high.abs().max() < 1e-5


def _checkerboard(h: int, w: int) -> torch.Tensor:
    i = torch.arange(h)[:, None]
    j = torch.arange(w)[None, :]
    return ((-1.0) ** (i + j)).float().reshape(1, h * w, 1)


@pytest.mark.parametrize("grid", [(4, 5), (6, 7), (2, 3)], ids=str)
def test_checkerboard_is_all_high_fft(grid):
    """With an odd width and an even token count the flattened checkerboard is (-1)^p: the Nyquist bin."""
    x = _checkerboard(*grid)
    low, high = BandSplitter(0.1, "fft").split(x, TokenLayout.grid(*grid))
    assert low.abs().max() < 1e-6
    torch.testing.assert_close(high, x, atol=1e-6, rtol=0)


@pytest.mark.parametrize("grid", [(8, 6), (16, 16), (14, 10), (13, 29)], ids=str)
def test_checkerboard_is_high_dct(grid):
    """The checkerboard is the highest spatial frequency. DCT-II has no exact (-1)^i basis vector, so a
    sliver of its energy leaks to odd low coefficients (e.g. (1, 1)); that leakage matches the reference and
    is tiny. Where the low band is just DC and the grid has an even size, the low band is exactly zero."""
    h, w = grid
    layout = TokenLayout.grid(h, w)
    x = _checkerboard(h, w)
    low = BandSplitter(0.1, "dct").low(x, layout)
    np.testing.assert_allclose(low.double().numpy(), ref_low_dct(x.double().numpy(), grid, 0.1), atol=1e-6)
    energy = float((low.double() ** 2).sum() / (x.double() ** 2).sum())
    assert energy < 5e-3
    radius = 0.1 * math.hypot(h - 1, w - 1)
    if radius < 1 and (h * w) % 2 == 0:
        assert low.abs().max() < 1e-6


@pytest.mark.parametrize("grid", [(16, 16), (13, 29), (5, 3), (3, 4, 5)], ids=str)
def test_highest_dct_basis_vector_is_all_high(grid):
    """The basis function of the coefficient (n_a - 1, ...) lies outside the ball for any cutoff < 1."""
    vec = None
    for n in grid:
        v = torch.from_numpy(_dct_matrix(n)[n - 1])
        vec = v if vec is None else torch.outer(vec.reshape(-1), v).reshape(-1)
    x = vec.float().reshape(1, -1, 1)
    for cutoff in (0.1, 0.5, 0.99):
        low, high = BandSplitter(cutoff, "dct").split(x, TokenLayout.grid(*grid))
        assert low.abs().max() < 1e-6
    # ... and at cutoff 1 the corner is inside: all low.
    torch.testing.assert_close(BandSplitter(1.0, "dct").low(x, TokenLayout.grid(*grid)), x, atol=1e-6, rtol=0)


def test_lowest_nonconstant_mode_is_low():
    """A slow cosine along one axis (coefficient (0, 1)) is entirely low band at cutoff 0.1 on 16x16."""
    v = torch.from_numpy(_dct_matrix(16)[1])
    x = torch.outer(torch.ones(16) / 4, v.float()).reshape(1, 256, 1)
    low, high = BandSplitter(0.1, "dct").split(x, TokenLayout.grid(16, 16))
    torch.testing.assert_close(low, x, atol=1e-6, rtol=0)


@pytest.mark.parametrize("transform,grid,cutoff", [("dct", (24, 24), 0.1), ("dct", (9, 14), 0.3),
                                                   ("dct", (4, 5, 6), 0.25), ("fft", (12, 10), 0.1),
                                                   ("fft", (7, 9), 0.3)])
def test_projection_rank_equals_number_of_kept_coefficients(transform, grid, cutoff):
    """The low band is an orthogonal projection: its trace is the number of coefficients inside the mask."""
    n = math.prod(grid)
    eye = torch.eye(n).unsqueeze(0)  # token axis x "channels" = identity
    proj = BandSplitter(cutoff, transform).low(eye, TokenLayout.grid(*grid))[0].double()
    torch.testing.assert_close(proj, proj.T, atol=1e-5, rtol=0)  # symmetric
    torch.testing.assert_close(proj @ proj, proj, atol=1e-4, rtol=0)  # idempotent
    if transform == "dct":
        radius = cutoff * math.sqrt(sum((m - 1) ** 2 for m in grid))
        count = sum(1 for k in np.ndindex(*grid) if math.sqrt(sum(c * c for c in k)) <= radius)
    else:
        f = np.abs(np.fft.fftfreq(n))
        count = int((f <= cutoff * f.max()).sum())
    assert round(float(torch.trace(proj))) == count


# ------------------------------------------------------------------------------------- independence
@pytest.mark.parametrize("transform", ["dct", "fft"])
def test_rows_and_channels_are_independent(transform):
    layout = TokenLayout.of((5, 6), (2, 3), 2)
    x = _rand(4, layout.length, 3, seed=9)
    splitter = BandSplitter(0.25, transform)
    low = splitter.low(x, layout)
    for b in range(4):
        for c in range(3):
            alone = splitter.low(x[b:b + 1, :, c:c + 1].contiguous(), layout)
            torch.testing.assert_close(alone, low[b:b + 1, :, c:c + 1], atol=1e-6, rtol=1e-6)
    # Changing one row or one channel leaves the others untouched.
    y = x.clone()
    y[2] += 10 * _rand(layout.length, 3, seed=10)
    y[:, :, 1] -= 5.0
    low_y = splitter.low(y, layout)
    for b in (0, 1, 3):
        torch.testing.assert_close(low_y[b, :, [0, 2]], low[b, :, [0, 2]], atol=1e-6, rtol=1e-6)
    # Linearity.
    z = _rand(4, layout.length, 3, seed=12)
    torch.testing.assert_close(splitter.low(2 * x - 3 * z, layout), 2 * low - 3 * splitter.low(z, layout),
                               atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------- errors
def test_wrong_token_count_raises():
    splitter = BandSplitter(0.1)
    with pytest.raises(ValueError, match="tokens"):
        splitter.low(torch.zeros(1, 15, 2), TokenLayout.grid(4, 4))
    with pytest.raises(ValueError):
        splitter.split(torch.zeros(1, 17, 2), TokenLayout.of((4, 4)))


@pytest.mark.parametrize("kwargs,name", [({"cutoff": -0.1}, "cutoff"), ({"cutoff": 1.5}, "cutoff"),
                                         ({"cutoff": float("nan")}, "cutoff"), ({"cutoff": "0.1"}, "cutoff"),
                                         ({"transform": "wavelet"}, "transform")])
def test_invalid_splitter_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        BandSplitter(**kwargs)


def test_invalid_segments():
    with pytest.raises(ValueError):
        Segment(5, (2, 3))
    with pytest.raises(ValueError):
        Segment(0, (0, 4))
    with pytest.raises(ValueError):
        Segment(-1)
    assert TokenLayout.grid(3, 4).length == 12
    assert TokenLayout.of((2, 2), 3, (1, 5)).length == 12


# ------------------------------------------------------------------------------------- odd inputs
@pytest.mark.parametrize("transform", ["dct", "fft"])
def test_empty_batch_and_empty_segments(transform):
    """A zero-row batch and zero-length segments pass through with their shape (no reshape ambiguity)."""
    splitter = BandSplitter(0.2, transform)
    for layout in (TokenLayout.grid(2, 3), TokenLayout.of((2, 3), 4), TokenLayout.of(0, (3, 3), 0)):
        x = torch.zeros(0, layout.length, 5)
        low, high = splitter.split(x, layout)
        assert low.shape == x.shape and high.shape == x.shape
    x = _rand(2, 9, 3, seed=21)
    layout = TokenLayout.of(0, (3, 3), 0)
    torch.testing.assert_close(splitter.low(x, layout), splitter.low(x, TokenLayout.grid(3, 3)), atol=0, rtol=0)
    assert splitter.low(torch.zeros(2, 0, 3), TokenLayout.of(0)).shape == (2, 0, 3)


@pytest.mark.parametrize("transform", ["dct", "fft"])
def test_non_contiguous_input(transform):
    layout = TokenLayout.of((3, 4), 2)
    x = _rand(3, 6, layout.length, seed=22).transpose(1, 2)[::2]  # [2, 14, 6], strided
    assert not x.is_contiguous()
    splitter = BandSplitter(0.3, transform)
    torch.testing.assert_close(splitter.low(x, layout), splitter.low(x.contiguous(), layout), atol=0, rtol=0)
    np.testing.assert_allclose(splitter.low(x, layout).double().numpy(),
                               ref_low(x.double().numpy(), layout, 0.3, transform), atol=2e-5)


def test_one_splitter_reused_across_grids_matches_fresh_ones():
    """The basis/mask caches are keyed correctly: alternating grids of one splitter give the reference."""
    splitter = BandSplitter(0.25, "dct")
    grids = [(5, 3), (3, 5), (16, 16), (5, 3), (2, 3, 4), (4, 3, 2), (15, 1), (1, 15)]
    for k, grid in enumerate(grids):
        x = _rand(1, math.prod(grid), 2, seed=30 + k)
        expected = ref_low_dct(x.double().numpy(), grid, 0.25)
        np.testing.assert_allclose(splitter.low(x, TokenLayout.grid(*grid)).double().numpy(), expected, atol=2e-5)


def test_numpy_scalar_cutoff_accepted():
    assert BandSplitter(np.float64(0.2)).cutoff == pytest.approx(0.2)
    assert BandSplitter(np.float32(0.5), "fft").cutoff == pytest.approx(0.5)
    with pytest.raises(ValueError, match="cutoff"):
        BandSplitter(np.float64(1.5))
    with pytest.raises(ValueError, match="cutoff"):
        BandSplitter(True)
