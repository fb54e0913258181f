"""Forecasters (freqca_core.forecast): exactness on polynomials for non-uniform sigma spacing, reduced order
with short histories, and FreqCa's Hermite forecast against the official step-index formula (written here
independently) on uniform spacing."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from freqca_core import HermiteForecaster, ReuseForecaster, TaylorForecaster
from freqca_core.cache import CRFHistory
from freqca_core import make_method
from freqca_core.spectral import BandSplitter, TokenLayout
from runs import flux_sigmas

INV_SQRT2 = 1 / math.sqrt(2)


def _histories(rng: np.random.Generator, count: int = 20):
    """(history sigmas newest first, target sigma) pairs with non-uniform spacing, target past the newest."""
    cases = []
    sig = flux_sigmas(50)
    for full_steps, target in [([8, 2, 1, 0], 11), ([14, 8, 2, 1], 19), ([44, 38, 32, 26], 49), ([2, 1, 0], 3)]:
        cases.append(([sig[i] for i in full_steps], sig[target]))
    while len(cases) < count + 4:
        s = np.sort(rng.uniform(0.05, 1.0, size=5))  # ascending; sampling goes downwards
        if np.diff(s).min() < 0.03:
            continue
        cases.append(([float(v) for v in s[1:]], float(s[0])))  # newest (smallest sigma) first; target below
    return cases


def _poly(rng: np.random.Generator, degree: int):
    coeffs = rng.normal(size=degree + 1)
    return lambda x: float(np.polyval(coeffs, x))


def _forecast(weights, values):
    return sum(w * v for w, v in zip(weights, values))


# ------------------------------------------------------------------------------------------- reuse
@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_reuse_returns_the_newest(n):
    sig = [0.5 - 0.1 * i for i in range(n)][::-1]
    w = ReuseForecaster().weights(sig, 0.1, 0.05)
    assert w == [1.0] + [0.0] * (n - 1)
    assert ReuseForecaster().needs == 1


# ------------------------------------------------------------------------------------------- taylor
@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_taylor_is_exact_on_polynomials_of_its_degree(order):
    rng = np.random.default_rng(order)
    fc = TaylorForecaster(order)
    assert fc.needs == order + 1
    for hist, target in _histories(rng):
        hist = hist[: order + 1 + 1]  # one more entry than needed: it must get weight 0
        if len(hist) < order + 1:
            continue
        for degree in range(order + 1):
            p = _poly(rng, degree)
            w = fc.weights(hist, target, 0.02)
            assert len(w) == len(hist)
            assert all(x == 0.0 for x in w[order + 1:])
            assert math.isclose(sum(w), 1.0, rel_tol=0, abs_tol=1e-9)
            got = _forecast(w, [p(s) for s in hist])
            assert got == pytest.approx(p(target), rel=1e-8, abs=1e-8)


@pytest.mark.parametrize("order", [1, 2])
def test_taylor_is_not_exact_one_degree_higher(order):
    """The exactness test can fail: degree order + 1 is not reproduced (distinct nodes, extrapolation)."""
    sig = flux_sigmas(50)
    hist = [sig[i] for i in (14, 8, 2)][: order + 1]
    target = sig[17]
    w = TaylorForecaster(order).weights(hist, target, 0.0)
    p = lambda x: x ** (order + 1)  # noqa: E731
    expected_error = math.prod(target - s for s in hist)  # Lagrange remainder of x^(n+1)
    assert _forecast(w, [p(s) for s in hist]) - p(target) == pytest.approx(-expected_error, rel=1e-9)
    assert abs(expected_error) > 1e-4


def test_taylor_with_short_history_drops_order():
    sig = [0.3, 0.5, 0.8]  # newest first
    fc = TaylorForecaster(2)
    # one entry: reuse
    assert fc.weights(sig[:1], 0.1, 0.1) == [1.0]
    # two entries: the line through them (exact on linear, not on quadratic)
    w2 = fc.weights(sig[:2], 0.1, 0.1)
    line = lambda x: 3 * x - 1  # noqa: E731
    assert _forecast(w2, [line(s) for s in sig[:2]]) == pytest.approx(line(0.1), abs=1e-12)
    assert w2 == pytest.approx([(0.1 - 0.5) / (0.3 - 0.5), (0.1 - 0.3) / (0.5 - 0.3)], abs=1e-12)
    quad = lambda x: x * x  # noqa: E731
    assert abs(_forecast(w2, [quad(s) for s in sig[:2]]) - quad(0.1)) > 1e-3
    # three entries: exact on the quadratic
    w3 = fc.weights(sig, 0.1, 0.1)
    assert _forecast(w3, [quad(s) for s in sig]) == pytest.approx(quad(0.1), abs=1e-12)


def test_taylor_at_a_history_node_returns_that_node():
    sig = [0.2, 0.4, 0.7]
    w = TaylorForecaster(2).weights(sig, 0.4, 0.1)
    assert w == pytest.approx([0.0, 1.0, 0.0], abs=1e-12)


# ------------------------------------------------------------------------------------------- hermite
def official_hermite(F: list[float], steps_since: int, interval: int, s: float, order: int) -> float:
    """FreqCa's public forecast on step indices: pred = F0 + sum_k H_k(x s)/k! s^k D_k with physicists'
    Hermite polynomials, x = -(steps since the last full step), backward differences over dd = -interval."""
    x = -steps_since
    dd = -interval
    H = {1: lambda y: 2 * y, 2: lambda y: 4 * y * y - 2}
    D = {}
    if order >= 1 and len(F) >= 2:
        D[1] = (F[0] - F[1]) / dd
    if order >= 2 and len(F) >= 3:
        D[2] = ((F[0] - F[1]) / dd - (F[1] - F[2]) / dd) / dd
    pred = F[0]
    for k, dk in D.items():
        pred += H[k](x * s) / math.factorial(k) * s ** k * dk
    return pred


@pytest.mark.parametrize("scale", [0.5, 0.71, INV_SQRT2, 1.0, 1.3])
@pytest.mark.parametrize("order", [0, 1, 2])
def test_hermite_equals_the_official_formula_on_uniform_steps(scale, order):
    rng = np.random.default_rng(int(scale * 100) + order)
    n_steps = 60
    u = 1.0 / n_steps
    grid = [1.0 - i * u for i in range(n_steps + 1)]  # uniform, decreasing
    fc = HermiteForecaster(scale, order)
    for interval in (1, 2, 3, 6, 9):
        for last in (2 * interval + 1, 3 * interval + 5):
            full = [last, last - interval, last - 2 * interval]
            F = list(rng.normal(size=3))  # arbitrary values: the formulas must agree on any data
            for hist_len in (1, 2, 3):
                for k in range(1, interval + 2):
                    target = last + k
                    w = fc.weights([grid[i] for i in full[:hist_len]], grid[target], u)
                    assert len(w) == hist_len
                    assert sum(w) == pytest.approx(1.0, abs=1e-9)
                    expected = official_hermite(F[:hist_len], k, interval, scale, order)
                    assert _forecast(w, F[:hist_len]) == pytest.approx(expected, rel=1e-9, abs=1e-9), \
                        (interval, last, hist_len, k)


def test_hermite_official_check_can_fail():
    """The reference is sensitive: a wrong step unit (u doubled) changes the second-order term."""
    u = 0.02
    grid = [1.0 - i * u for i in range(40)]
    full = [14, 8, 2]
    F = [0.3, -1.2, 2.5]
    w = HermiteForecaster(0.71, 2).weights([grid[i] for i in full], grid[17], 2 * u)
    assert abs(_forecast(w, F) - official_hermite(F, 3, 6, 0.71, 2)) > 1e-3


@pytest.mark.parametrize("order", [1, 2])
def test_hermite_inv_sqrt2_is_exact_on_linear_for_non_uniform_spacing(order):
    rng = np.random.default_rng(10 + order)
    fc = HermiteForecaster(INV_SQRT2, order)
    for hist, target in _histories(rng):
        hist = hist[:3]
        for step_size in (0.0, 0.013, abs(hist[0] - hist[1]), 0.3):
            a, b = rng.normal(size=2)
            w = fc.weights(hist, target, step_size)
            assert sum(w) == pytest.approx(1.0, abs=1e-9)
            assert _forecast(w, [a + b * s for s in hist]) == pytest.approx(a + b * target, rel=1e-9, abs=1e-9)


def test_hermite_default_scale_is_only_approximately_linear():
    """0.71 is not exactly 1/sqrt(2): the first-order gain is 2 * 0.71^2 = 1.0082, not 1."""
    hist = [0.4, 0.5, 0.6]
    w = HermiteForecaster(0.71, 2).weights(hist, 0.3, 0.1)
    got = _forecast(w, [2 * s for s in hist])  # slope 2, F0 = 0.8, d = -0.1
    assert got == pytest.approx(0.8 + 2 * 0.71 ** 2 * (-0.1) * 2, abs=1e-12)
    assert got != pytest.approx(0.6, abs=1e-4)


def test_hermite_is_damped_on_quadratics():
    """Second-order term s^2 (2 s^2 d^2 - u^2) * 2 f[s0,s1,s2] (documented): not exact on quadratics."""
    hist = [0.4, 0.5, 0.6]
    w = HermiteForecaster(INV_SQRT2, 2).weights(hist, 0.3, 0.1)
    got = _forecast(w, [s * s for s in hist])
    # f[s0,s1] = 0.9, f[s0,s1,s2] = 1, d = -0.1, u = 0.1, s^2 = 1/2
    expected = 0.16 + 2 * 0.5 * (-0.1) * 0.9 + 0.5 * (2 * 0.5 * 0.01 - 0.01) * 2 * 1
    assert got == pytest.approx(expected, abs=1e-12)
    assert got != pytest.approx(0.09, abs=1e-3)


def test_hermite_short_history_drops_order():
    fc = HermiteForecaster(0.71, 2)
    assert fc.needs == 3
    assert fc.weights([0.5], 0.3, 0.1) == [1.0]
    w2 = fc.weights([0.5, 0.7], 0.3, 0.1)
    c = 2 * 0.71 ** 2 * (0.3 - 0.5) / (0.5 - 0.7)
    assert w2 == pytest.approx([1 + c, -c], abs=1e-12)
    # a 4th entry is ignored
    w4 = fc.weights([0.5, 0.7, 0.8, 0.9], 0.3, 0.1)
    assert w4[3] == 0.0
    assert w4[:3] == pytest.approx(fc.weights([0.5, 0.7, 0.8], 0.3, 0.1), abs=0)


def test_forecasters_are_linear_in_data_through_a_method():
    """make_method('taylor') applies the forecaster's weights to whole tensors."""
    hist = CRFHistory(3)
    sig = [0.9, 0.7, 0.45]
    tensors = [torch.randn(2, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    for i, (s, t) in enumerate(zip(sig, tensors)):
        hist.push(s, i, t)
    method = make_method("taylor", taylor_order=2)
    out = method.predict(hist, 0.3, TokenLayout.of(4))
    w = TaylorForecaster(2).weights(hist.sigmas, 0.3, 0.0)
    expected = sum(wj * tensors[2 - j] for j, wj in enumerate(w))
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("factory,name", [
    (lambda: TaylorForecaster(-1), "order"),
    (lambda: TaylorForecaster(4), "order"),
    (lambda: TaylorForecaster(1.5), "order"),
    (lambda: TaylorForecaster(True), "order"),
    (lambda: HermiteForecaster(0.0), "hermite_scale"),
    (lambda: HermiteForecaster(-0.5), "hermite_scale"),
    (lambda: HermiteForecaster(float("nan")), "hermite_scale"),
    (lambda: HermiteForecaster(float("inf")), "hermite_scale"),
    (lambda: HermiteForecaster(2.5), "hermite_scale"),
    (lambda: HermiteForecaster(0.71, 3), "order"),
    (lambda: make_method("teacache"), "method"),
    (lambda: make_method("freqca", cutoff=1.2), "cutoff"),
    (lambda: make_method("freqca", transform="haar"), "transform"),
    (lambda: make_method("freqca", hermite_scale=0), "hermite_scale"),
    (lambda: make_method("taylor", taylor_order=7), "order"),
])
def test_invalid_parameters_name_the_parameter(factory, name):
    with pytest.raises(ValueError, match=name):
        factory()


def test_valid_boundaries_accepted():
    assert TaylorForecaster(0).needs == 1
    assert TaylorForecaster(3).needs == 4
    assert HermiteForecaster(2.0).scale == 2.0
    assert HermiteForecaster(1e-3, 0).needs == 1
    assert BandSplitter(0.0).cutoff == 0.0


# ------------------------------------------------------------------------------------------- low precision
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["taylor", "reuse", "freqca"])
def test_low_precision_history_is_accumulated_in_float32(dtype, name):
    """bf16/fp16 CRFs (FLUX usually runs in bf16): the forecast must be the exact weighted sum of the stored
    (already rounded) CRFs, rounded once to the CRF dtype. Summing large extrapolation weights in bf16 itself
    drifts by several ulps."""
    sig = flux_sigmas(50)
    gen = torch.Generator().manual_seed(5)
    a, b, c = (torch.randn(1, 64, 32, generator=gen, dtype=torch.float64) for _ in range(3))
    method = make_method(name, cutoff=0.2)
    hist, hist64 = CRFHistory(method.history_size), CRFHistory(method.history_size)
    for step in (2, 8, 14)[-method.history_size:]:
        s = sig[step]
        crf = (a + b * s + c * s * s).to(dtype)
        hist.push(s, step, crf)
        hist64.push(s, step, crf.double())
    layout = TokenLayout.grid(8, 8)
    eps = torch.finfo(dtype).eps
    for target in (15, 17, 19):
        out = method.predict(hist, sig[target], layout)
        assert out.dtype == dtype and out.shape == (1, 64, 32)
        ref = method.predict(hist64, sig[target], layout)  # float64 accumulation of the same inputs
        err = (out.double() - ref).abs()
        # one rounding to the CRF dtype (half an ulp: eps/2 relative), plus float32-level noise
        assert bool((err <= ref.abs() * eps / 2 * (1 + 1e-3) + 1e-4 * float(ref.abs().max()) * eps).all()), \
            float((err / ref.abs().clamp_min(1e-6)).max())


def test_float64_history_keeps_float64_precision():
    hist = CRFHistory(3)
    sig = [0.9, 0.7, 0.45]
    gen = torch.Generator().manual_seed(3)
    a, b, c = (torch.randn(1, 12, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    for i, s in enumerate(sig):
        hist.push(s, i, a + b * s + c * s * s)
    for name, kwargs in (("taylor", {}), ("freqca", {"cutoff": 1.0})):  # cutoff 1: all low band = reuse
        out = make_method(name, **kwargs).predict(hist, 0.3, TokenLayout.grid(3, 4))
        assert out.dtype == torch.float64
    out = make_method("taylor").predict(hist, 0.3, TokenLayout.grid(3, 4))
    torch.testing.assert_close(out, a + b * 0.3 + c * 0.09, atol=1e-12, rtol=1e-12)
