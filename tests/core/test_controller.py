"""CacheController: the full/cached pattern, what cached calls hand out, streams, batches, fallbacks,
warnings, memory accounting and run boundaries, driven like a sampler would."""
from __future__ import annotations

import math
from typing import Callable

import pytest
import torch

from freqca_core import (BandSplitter, CacheController, CacheMethod, FreqCaMethod, FixedSchedule, TaylorForecaster,
                         TokenLayout, make_method)
from freqca_core.forecast import HermiteForecaster
import runs
from runs import flux_sigmas

INV_SQRT2 = 1 / math.sqrt(2)
LAYOUT = TokenLayout.grid(4, 5)
D = 6


def _t(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def quadratic(rows: int, seed: int, layout: TokenLayout = LAYOUT, dtype=torch.float64):
    """A CRF trajectory F(sigma) = A + B sigma + C sigma^2 with random tensor coefficients."""
    a, b, c = (_t(rows, layout.length, D, seed=seed * 3 + k, dtype=dtype) for k in range(3))
    return lambda s: a + b * s + c * s * s


def drive(ctrl: CacheController, sigmas, traj: Callable[[float], torch.Tensor], streams=(0,),
          layout: TokenLayout = LAYOUT, start=True):
    """The CRF trajectory ``traj`` sampled one call per step; returns (plan, true CRF) per step."""
    def call(step: int, s: float):
        truth = traj(s)
        plan = ctrl.plan(s, streams, truth.shape[0], layout)
        if plan.full:
            ctrl.record(plan, truth)
        return plan, truth

    return runs.drive(ctrl, sigmas, call, start=start)


def controller(method="taylor", warmup=3, interval=6, **kwargs):
    m = method if isinstance(method, CacheMethod) else make_method(method, **kwargs)
    return CacheController(m, FixedSchedule(warmup, interval))


# ==================================================================================== pattern
@pytest.mark.parametrize("warmup,interval,n", [(3, 6, 50), (3, 9, 50), (1, 2, 10), (0, 3, 12), (3, 6, 4)])
def test_pattern_follows_the_schedule(warmup, interval, n):
    ctrl = controller("reuse", warmup, interval)
    plans = drive(ctrl, flux_sigmas(n), quadratic(1, 0))
    full = FixedSchedule(warmup, interval).full_steps(n)
    assert [i for i, (p, _) in enumerate(plans) if p.full] == full
    assert [p.step for p, _ in plans] == list(range(n))
    assert all(p.reason == "" for p, _ in plans)
    stats = ctrl.end_run()
    assert stats.n_steps == n
    assert stats.full_steps == len(full) and stats.full_calls == len(full)
    assert stats.cached_steps == n - len(full) and stats.cached_calls == n - len(full)
    assert stats.fallbacks == 0 and stats.warnings == []
    assert stats.timeline() == "".join("F" if i in full else "c" for i in range(n))


def test_interval_one_never_forecasts():
    ctrl = controller("freqca", 3, 1)
    plans = drive(ctrl, flux_sigmas(15), quadratic(1, 1, dtype=torch.float32))
    assert all(p.full and p.crf is None for p, _ in plans)
    assert ctrl.stats.cached_calls == 0 and ctrl.stats.timeline() == "F" * 15


# ==================================================================================== cached output
@pytest.mark.parametrize("name", ["reuse", "taylor", "freqca"])
def test_cached_crf_equals_the_methods_forecast(name):
    """Recompute each cached step's forecast from this test's own record of the full steps."""
    ctrl = controller(name, 3, 4)
    method = ctrl.method
    layout = TokenLayout.of((4, 5), 3)
    traj = lambda s: _t(2, layout.length, D, seed=int(s * 1e6) % 997, dtype=torch.float32)  # noqa: E731
    sigmas = flux_sigmas(20)
    recorded = []  # (sigma, step, crf), newest last
    ctrl.start_run(sigmas)
    n_cached = 0
    for i, s in enumerate(sigmas[:-1]):
        plan = ctrl.plan(s, ["c"], 2, layout)
        if plan.full:
            x = traj(s)
            ctrl.record(plan, x)
            recorded.append((s, i, x.clone()))
            continue
        n_cached += 1
        hist = recorded[::-1][: method.history_size]
        sig = [h[0] for h in hist]
        if name == "reuse":
            expected = hist[0][2]
        elif name == "taylor":
            w = TaylorForecaster(2).weights(sig, s, 0.0)
            expected = sum(wj * h[2].double() for wj, h in zip(w, hist)).float()
        else:
            unit = abs(hist[1][0] - hist[0][0]) / (hist[0][1] - hist[1][1])
            hw = HermiteForecaster(0.71, 2).weights(sig, s, unit)
            high_fc = sum(wj * h[2].double() for wj, h in zip(hw, hist)).float()
            splitter = BandSplitter(0.1, "dct")
            # FreqCa: low band of the last full step + high band of the Hermite forecast
            expected = splitter.low(hist[0][2], layout) + (high_fc - splitter.low(high_fc, layout))
        assert plan.crf.shape == (2, layout.length, D) and plan.crf.dtype == torch.float32
        torch.testing.assert_close(plan.crf, expected, atol=2e-5, rtol=2e-5)
    assert n_cached == 20 - len(FixedSchedule(3, 4).full_steps(20))


def test_taylor_reproduces_a_quadratic_trajectory_exactly():
    ctrl = controller("taylor", 3, 6, taylor_order=2)
    traj = quadratic(2, 5)
    plans = drive(ctrl, flux_sigmas(50), traj)
    cached = [(p, x) for p, x in plans if not p.full]
    assert len(cached) == 40
    for p, x in cached:
        torch.testing.assert_close(p.crf, x, atol=1e-9, rtol=1e-9)


def test_taylor_order_1_is_not_exact_on_the_quadratic():
    """The exactness test above can fail: a lower order misses the curvature."""
    ctrl = controller("taylor", 3, 6, taylor_order=1)
    plans = drive(ctrl, flux_sigmas(50), quadratic(1, 5))
    errs = [float((p.crf - x).abs().max()) for p, x in plans if not p.full]
    assert max(errs) > 1e-3


def _band_trajectory(splitter: BandSplitter, layout: TokenLayout, rows: int, seed: int):
    """F(sigma) = L0 + H0 + sigma * H1 with low(L0) = L0 and low(H0) = low(H1) = 0."""
    x, y, z = (_t(rows, layout.length, D, seed=seed + k, dtype=torch.float32) for k in range(3))
    low0 = splitter.low(x, layout)
    h0 = y - splitter.low(y, layout)
    h1 = 3.0 * (z - splitter.low(z, layout))
    return (lambda s: low0 + h0 + s * h1), h1


@pytest.mark.parametrize("transform,layout", [("dct", TokenLayout.grid(6, 5)),
                                              ("dct", TokenLayout.of((4, 4), (3, 2), 2)),
                                              ("fft", TokenLayout.of((5, 3), 3))])
def test_freqca_exact_on_constant_low_and_linear_high(transform, layout):
    ctrl = controller("freqca", 3, 6, hermite_scale=INV_SQRT2, transform=transform, cutoff=0.2)
    traj, _ = _band_trajectory(ctrl.method.splitter, layout, 2, 20)
    plans = drive(ctrl, flux_sigmas(30), traj, layout=layout)
    cached = [(p, x) for p, x in plans if not p.full]
    assert len(cached) == 30 - len(FixedSchedule(3, 6).full_steps(30))
    for p, x in cached:
        torch.testing.assert_close(p.crf, x, atol=5e-5, rtol=1e-5)


def test_freqca_default_scale_is_close_but_not_exact_there():
    layout = TokenLayout.grid(6, 5)
    ctrl = controller("freqca", 3, 6)  # scale 0.71
    traj, h1 = _band_trajectory(ctrl.method.splitter, layout, 1, 20)
    plans = drive(ctrl, flux_sigmas(30), traj, layout=layout)
    errs = [float((p.crf - x).abs().max()) for p, x in plans if not p.full]
    assert 1e-4 < max(errs) < 0.05 * float(h1.abs().max())


def test_reuse_is_exact_only_on_constants():
    ctrl = controller("reuse", 2, 5)
    const = _t(1, LAYOUT.length, D, seed=4)
    plans = drive(ctrl, flux_sigmas(20), lambda s: const)
    assert all(torch.equal(p.crf, const) for p, _ in plans if not p.full)


# ==================================================================================== streams and batches
def test_cond_and_uncond_streams_in_one_batch():
    """Uncond first, cond second, one batch: each half is forecast from its own history."""
    ctrl = controller("taylor", 3, 6)
    tu, tc = quadratic(1, 7), quadratic(1, 8)
    plans = drive(ctrl, flux_sigmas(30), lambda s: torch.cat([tu(s), tc(s)]), streams=("u", "c"))
    sig = flux_sigmas(30)
    n_cached = 0
    for i, (p, _) in enumerate(plans):
        if p.full:
            continue
        n_cached += 1
        torch.testing.assert_close(p.crf[:1], tu(sig[i]), atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(p.crf[1:], tc(sig[i]), atol=1e-9, rtol=1e-9)
    assert n_cached > 0
    assert set(ctrl.cache.streams) == {"u", "c"}


def test_cond_and_uncond_in_separate_calls():
    ctrl = controller("taylor", 3, 6)
    tu, tc = quadratic(2, 9), quadratic(2, 10)
    sig = flux_sigmas(24)
    ctrl.start_run(sig)
    n_cached = 0
    for s in sig[:-1]:
        for key, traj in (("c", tc), ("u", tu)):
            p = ctrl.plan(s, [key], 2, LAYOUT)
            if p.full:
                ctrl.record(p, traj(s))
            else:
                n_cached += 1
                torch.testing.assert_close(p.crf, traj(s), atol=1e-9, rtol=1e-9)
    assert n_cached == 2 * (24 - len(FixedSchedule(3, 6).full_steps(24)))
    assert ctrl.stats.timeline() == "".join("F" if i in FixedSchedule(3, 6).full_steps(24) else "c"
                                            for i in range(24))


def test_streams_are_not_mixed_up_when_their_order_changes():
    """ComfyUI may batch cond/uncond in either order; the key, not the position, picks the history."""
    ctrl = controller("reuse", 1, 3)
    a, b = _t(1, LAYOUT.length, D, seed=1), _t(1, LAYOUT.length, D, seed=2)
    ctrl.start_run(flux_sigmas(6))
    s = flux_sigmas(6)
    p = ctrl.plan(s[0], ["a", "b"], 2, LAYOUT)
    ctrl.record(p, torch.cat([a, b]))
    p = ctrl.plan(s[1], ["b", "a"], 2, LAYOUT)
    assert not p.full
    assert torch.equal(p.crf[:1], b) and torch.equal(p.crf[1:], a)


def test_batch_of_four_equals_four_batches_of_one():
    layout = TokenLayout.of((4, 6), 2)
    rows = [(lambda s, k=k: torch.sin(3 * s + _t(1, layout.length, D, seed=k, dtype=torch.float32)))
            for k in range(4)]
    sig = flux_sigmas(20)
    big = controller("freqca", 2, 4)
    plans4 = drive(big, sig, lambda s: torch.cat([r(s) for r in rows]), layout=layout)
    for k, r in enumerate(rows):
        one = controller("freqca", 2, 4)
        plans1 = drive(one, sig, r, layout=layout)
        for (p4, _), (p1, _) in zip(plans4, plans1):
            assert p4.full == p1.full
            if not p1.full:
                torch.testing.assert_close(p4.crf[k:k + 1], p1.crf, atol=1e-5, rtol=1e-5)


def test_uneven_batch_over_streams_runs_full():
    ctrl = controller("reuse", 1, 4)
    sig = flux_sigmas(6)
    ctrl.start_run(sig)
    ctrl.record(ctrl.plan(sig[0], ["a", "b"], 2, LAYOUT), _t(2, LAYOUT.length, D))
    p = ctrl.plan(sig[1], ["a", "b"], 3, LAYOUT)
    assert p.full and "split" in p.reason


# ==================================================================================== fallbacks
def test_token_count_change_falls_back_then_resumes():
    ctrl = controller("taylor", 2, 3)
    sig = flux_sigmas(12)
    small, big = TokenLayout.grid(4, 5), TokenLayout.grid(4, 6)
    ta, tb = quadratic(1, 1, small), quadratic(1, 2, big)

    def run(switch: int) -> list[tuple[bool, str]]:
        """One run whose token grid grows at step ``switch``: (full, reason) per step."""
        ctrl.start_run(sig)
        modes = []
        for i, s in enumerate(sig[:-1]):
            layout, traj = (small, ta) if i < switch else (big, tb)
            p = ctrl.plan(s, [0], 1, layout)
            if p.full:
                ctrl.record(p, traj(s))
            else:
                assert p.crf.shape == (1, layout.length, D)
            modes.append((p.full, p.reason))
        return modes

    modes = run(4)
    assert FixedSchedule(2, 3).full_steps(11) == [0, 1, 4, 7, 10]
    assert modes[2] == (False, "") and modes[3] == (False, "")
    # step 4 is full anyway; the size changed there, so the forecast at step 5 needs the new size: it has it
    assert modes[5] == (False, "")
    # now change the size at a cached step
    modes = run(5)
    assert modes[5][0] and modes[5][1]  # fallback with a reason
    assert modes[6] == (False, "")  # resumes caching from the new-size CRF
    assert ctrl.stats.fallbacks == 1 and ctrl.stats.steps[5] == "full"
    assert ctrl.cache.history(0).matches(1, big.length)


def test_batch_size_change_falls_back_then_resumes():
    ctrl = controller("reuse", 2, 3)
    sig = flux_sigmas(12)
    ctrl.start_run(sig)
    results = []
    for i, s in enumerate(sig[:-1]):
        batch = 1 if i < 5 else 3
        x = _t(batch, LAYOUT.length, D, seed=i)
        p = ctrl.plan(s, [0], batch, LAYOUT)
        if p.full:
            ctrl.record(p, x)
        results.append(p)
    assert results[5].full and "batch" in results[5].reason
    assert not results[6].full and results[6].crf.shape[0] == 3
    assert ctrl.stats.fallbacks == 1


def test_nan_crf_is_not_recorded():
    ctrl = controller("reuse", 1, 10)
    sig = flux_sigmas(5)
    ctrl.start_run(sig)
    bad = torch.full((1, LAYOUT.length, D), float("nan"))
    p = ctrl.plan(sig[0], [0], 1, LAYOUT)
    ctrl.record(p, bad)
    assert ctrl.cache.nbytes == 0 and len(ctrl.cache.history(0)) == 0
    assert ctrl.stats.warnings and "not finite" in ctrl.stats.warnings[0]
    p = ctrl.plan(sig[1], [0], 1, LAYOUT)  # cached by schedule, but nothing to forecast from
    assert p.full and p.reason
    good = _t(1, LAYOUT.length, D)
    ctrl.record(p, good)
    inf = good.clone()
    inf[0, 0, 0] = float("inf")
    ctrl.record(ctrl.plan(sig[1], [0], 1, LAYOUT), inf)  # a re-run of step 1 computing inf
    assert ctrl.cache.history(0).sigmas == [sig[1]]
    assert torch.equal(ctrl.cache.history(0).entries[0].crf, good)
    p = ctrl.plan(sig[2], [0], 1, LAYOUT)
    assert not p.full and torch.equal(p.crf, good)


class _Broken(CacheMethod):
    name = "broken"
    history_size = 1

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.calls = 0

    def predict(self, history, sigma, layout):
        self.calls += 1
        if self.mode == "raise":
            raise RuntimeError("boom")
        value = float("nan") if self.mode == "nan" else float("inf")
        return torch.full_like(history.entries[0].crf, value)


@pytest.mark.parametrize("mode", ["raise", "nan", "inf"])
def test_failing_method_runs_full_with_a_warning(mode, caplog):
    method = _Broken(mode)
    ctrl = CacheController(method, FixedSchedule(1, 4))
    sig = flux_sigmas(8)
    with caplog.at_level("WARNING", logger="freqca"):
        plans = drive(ctrl, sig, lambda s: _t(1, LAYOUT.length, D))
    assert method.calls == 6  # every step the schedule wanted cached
    assert all(p.full for p, _ in plans)
    assert all(p.reason for i, (p, _) in enumerate(plans) if i not in (0, 4))
    stats = ctrl.end_run()
    assert stats.cached_calls == 0 and stats.fallbacks == 6 and len(stats.warnings) == 6
    word = "boom" if mode == "raise" else "not finite"
    assert all(word in w for w in stats.warnings)
    assert any(word in r.getMessage() for r in caplog.records)
    assert stats.timeline() == "F" * 8


# ==================================================================================== run boundaries, memory
def test_start_run_clears_everything():
    ctrl = controller("taylor", 3, 6)
    drive(ctrl, flux_sigmas(20), quadratic(2, 1), streams=("a", "b"))
    assert ctrl.cache.nbytes > 0 and ctrl.stats.full_calls > 0
    ctrl.start_run(flux_sigmas(8))
    assert ctrl.cache.nbytes == 0 and ctrl.cache.streams == {}
    assert ctrl.stats.n_steps == 8 and ctrl.stats.full_calls == 0 and ctrl.stats.cached_calls == 0
    assert ctrl.stats.steps == {} and ctrl.stats.warnings == [] and ctrl.stats.peak_cache_bytes == 0
    # a second run with another size and another schedule works without errors from the first
    layout = TokenLayout.grid(3, 3)
    plans = drive(ctrl, flux_sigmas(8), quadratic(1, 2, layout), streams=("a",), layout=layout, start=False)
    assert [p.full for p, _ in plans] == [True, True, True, False, False, False, False, False]
    for p, x in plans[3:]:
        torch.testing.assert_close(p.crf, x, atol=1e-9, rtol=1e-9)


def test_start_run_accepts_a_tensor_schedule():
    ctrl = controller("reuse", 1, 2)
    ctrl.start_run(torch.tensor(flux_sigmas(6), dtype=torch.float32))
    assert ctrl.locator.n_steps == 6
    assert ctrl.plan(flux_sigmas(6)[3], [0], 1, LAYOUT).step == 3


def test_end_run_releases_tensors():
    ctrl = controller("freqca", 3, 6)
    drive(ctrl, flux_sigmas(12), quadratic(1, 3, dtype=torch.float32), streams=("c",))
    assert ctrl.cache.nbytes > 0
    stats = ctrl.end_run()
    assert ctrl.cache.nbytes == 0 and ctrl.cache.streams == {}
    assert stats.peak_cache_bytes > 0 and stats.full_calls > 0


@pytest.mark.parametrize("name,order,expected_history", [("taylor", 2, 3), ("taylor", 1, 2), ("reuse", 2, 1),
                                                         ("freqca", 2, 3), ("freqca", 1, 2)])
def test_peak_cache_bytes(name, order, expected_history):
    method = (FreqCaMethod(BandSplitter(0.1), HermiteForecaster(0.71, order)) if name == "freqca"
              else make_method(name, taylor_order=order))
    ctrl = controller(method, 3, 6)
    assert ctrl.method.history_size == expected_history
    rows, layout = 2, TokenLayout.of((3, 4), 2)
    one_crf = rows * layout.length * D * 4  # float32
    drive(ctrl, flux_sigmas(30), quadratic(2 * rows, 4, layout, dtype=torch.float32), streams=("u", "c"),
          layout=layout)
    assert ctrl.stats.peak_cache_bytes == 2 * expected_history * one_crf
    assert ctrl.cache.nbytes == 2 * expected_history * one_crf


# ==================================================================================== odd samplers, odd schedules
@pytest.mark.parametrize("name", ["taylor", "freqca", "reuse"])
@pytest.mark.parametrize("pattern", ["heun", "dpm2", "rerun"])
def test_double_calls_per_step(name, pattern):
    """Heun (second call at the next sigma), DPM2 (a midpoint sigma), SLG-like re-runs at the same sigma."""
    kwargs = {"hermite_scale": INV_SQRT2} if name == "freqca" else {}
    ctrl = controller(name, 3, 3, **kwargs)  # 3 warm-up steps: a full 3-entry history before caching
    sig = flux_sigmas(16)
    if name == "freqca":
        traj, _ = _band_trajectory(ctrl.method.splitter, LAYOUT, 1, 30)
    else:
        traj = quadratic(1, 6, dtype=torch.float32)
    ctrl.start_run(sig)
    n_cached = 0
    for i in range(16):
        calls = [sig[i]]
        if pattern == "heun" and sig[i + 1] > 0:
            calls.append(sig[i + 1])
        elif pattern == "dpm2" and sig[i + 1] > 0:
            calls.append(math.sqrt(sig[i] * sig[i + 1]))
        elif pattern == "rerun":
            calls.append(sig[i])
        for s in calls:
            p = ctrl.plan(s, [0], 1, LAYOUT)
            assert p.step is not None
            if p.full:
                ctrl.record(p, traj(s))
            else:
                n_cached += 1
                assert torch.isfinite(p.crf).all()
                if name == "taylor" or name == "freqca":  # exact models stay exact with any distinct nodes
                    torch.testing.assert_close(p.crf, traj(s), atol=5e-4, rtol=1e-4)
    assert n_cached > 0
    assert ctrl.stats.warnings == []
    assert all(len(set(h.sigmas)) == len(h.sigmas) for h in ctrl.cache.streams.values())


@pytest.mark.parametrize("schedule", [[0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0], [0.5], []])
def test_degenerate_schedules_do_not_crash(schedule):
    for name in ("freqca", "taylor", "reuse"):
        ctrl = controller(name, 1, 2)
        ctrl.start_run(schedule)
        for s in (schedule[:-1] or [0.0]) * 2:
            p = ctrl.plan(s, [0], 1, LAYOUT)
            if p.full:
                ctrl.record(p, _t(1, LAYOUT.length, D, dtype=torch.float32))
            else:
                assert torch.isfinite(p.crf).all()
        ctrl.stats.timeline()
        ctrl.end_run()


def test_two_stage_sampling_restarts_cleanly():
    """A second sampler continuing at low sigma: a new run, its own steps, no stale history."""
    ctrl = controller("taylor", 3, 3)
    first, second = flux_sigmas(10)[:6], flux_sigmas(10)[5:]
    traj = quadratic(1, 11)
    drive(ctrl, first, traj)
    ctrl.end_run()
    plans = drive(ctrl, second, traj)
    assert [p.step for p, _ in plans] == list(range(len(second) - 1))
    assert [p.full for p, _ in plans] == [True, True, True, False, False]
    for p, x in plans:
        if not p.full:
            torch.testing.assert_close(p.crf, x, atol=1e-9, rtol=1e-9)


def test_sigma_outside_the_schedule_runs_full_and_is_not_recorded():
    ctrl = controller("reuse", 1, 5)
    sig = flux_sigmas(6)
    ctrl.start_run(sig)
    p = ctrl.plan(5.0, [0], 1, LAYOUT)
    assert p.full and p.step is None
    ctrl.record(p, _t(1, LAYOUT.length, D))
    assert ctrl.cache.nbytes == 0
    assert ctrl.stats.steps == {} and ctrl.stats.full_calls == 1


def test_without_a_schedule_each_new_sigma_is_a_step():
    ctrl = controller("taylor", 3, 6)
    sig = flux_sigmas(20)
    traj = quadratic(1, 12)
    ctrl.start_run(None)
    for i, s in enumerate(sig[:-1]):
        p = ctrl.plan(s, [0], 1, LAYOUT)
        assert p.step == i
        assert p.full == FixedSchedule(3, 6).is_full(i, None)
        if p.full:
            ctrl.record(p, traj(s))
        else:
            torch.testing.assert_close(p.crf, traj(s), atol=1e-9, rtol=1e-9)
    assert ctrl.stats.n_steps is None
    assert ctrl.stats.timeline() == "".join("F" if FixedSchedule(3, 6).is_full(i, None) else "c" for i in range(20))


def test_mutating_a_handed_out_forecast_does_not_change_the_next():
    ctrl = controller("reuse", 1, 4)
    sig = flux_sigmas(6)
    x = _t(1, LAYOUT.length, D)
    ctrl.start_run(sig)
    ctrl.record(ctrl.plan(sig[0], [0], 1, LAYOUT), x)
    p1 = ctrl.plan(sig[1], [0], 1, LAYOUT)
    p1.crf.add_(1000.0)  # e.g. ControlNet adding in place into what a block returned
    p2 = ctrl.plan(sig[2], [0], 1, LAYOUT)
    assert torch.equal(p2.crf, x)


def test_empty_streams_mean_one_stream():
    ctrl = controller("reuse", 1, 3)
    sig = flux_sigmas(4)
    ctrl.start_run(sig)
    x = _t(2, LAYOUT.length, D)
    p = ctrl.plan(sig[0], [], 2, LAYOUT)
    assert p.streams == (0,)
    ctrl.record(p, x)
    p = ctrl.plan(sig[1], [], 2, LAYOUT)
    assert not p.full and torch.equal(p.crf, x)


# ==================================================================================== official formula, end to end
def _official_high(F0, F1, F2, steps_since: int, interval: int, s: float):
    """FreqCa's public step-index forecast: F0 + sum_k H_k(x s)/k! s^k D_k, x = -steps since the last full
    step, backward differences over dd = -interval (physicists' Hermite H1 = 2y, H2 = 4y^2 - 2)."""
    x, dd = -steps_since, -interval
    d1 = (F0 - F1) / dd
    d2 = ((F0 - F1) / dd - (F1 - F2) / dd) / dd
    y = x * s
    return F0 + (2 * y) * s * d1 + (4 * y * y - 2) / 2 * s * s * d2


@pytest.mark.parametrize("transform,layout", [("dct", TokenLayout.grid(5, 6)), ("fft", TokenLayout.of((4, 4), 3))])
def test_freqca_through_the_controller_equals_the_official_formula_on_uniform_steps(transform, layout):
    """Uniform sigma grid, arbitrary (non-smooth) CRFs at the full steps: at every cached step whose history is
    evenly spaced in steps, the CRF is low(F0) + high(official Hermite forecast). This checks the step-size
    plumbing (sigma per step taken from the recorded step indices) end to end."""
    n, warmup, interval, scale = 30, 3, 6, 0.71
    sig = [1.0 - i / n for i in range(n + 1)]
    ctrl = controller("freqca", warmup, interval, transform=transform, cutoff=0.2, hermite_scale=scale)
    splitter = BandSplitter(0.2, transform)
    ctrl.start_run(sig)
    full = {}
    checked = 0
    for i, s in enumerate(sig[:-1]):
        p = ctrl.plan(s, ["c", "u"], 4, layout)
        if p.full:
            full[i] = _t(4, layout.length, D, seed=100 + i, dtype=torch.float32)
            ctrl.record(p, full[i])
            continue
        last = sorted(full)[-3:][::-1]  # newest first
        gaps = {last[0] - last[1], last[1] - last[2]}
        if len(gaps) != 1:
            continue  # official differences assume even spacing (history 8, 2, 1 right after the warm-up)
        F0, F1, F2 = (full[k].double() for k in last)
        high = _official_high(F0, F1, F2, i - last[0], gaps.pop(), scale).float()
        expected = splitter.low(full[last[0]], layout) + high - splitter.low(high, layout)
        torch.testing.assert_close(p.crf, expected, atol=3e-5, rtol=1e-5)
        checked += 1
    # cached steps 3..7 (history 2, 1, 0), 15..19, 21..25, 27..29 (history 6 steps apart)
    assert checked == 5 + 5 + 5 + 3


def test_low_precision_crf_through_the_controller():
    """bf16 CRFs: the handed-out forecast stays bf16 and within bf16 rounding of the exact quadratic."""
    ctrl = controller("taylor", 3, 6)
    traj = quadratic(1, 13)
    sig = flux_sigmas(30)
    ctrl.start_run(sig)
    for s in sig[:-1]:
        p = ctrl.plan(s, [0], 1, LAYOUT)
        if p.full:
            ctrl.record(p, traj(s).to(torch.bfloat16))
            continue
        assert p.crf.dtype == torch.bfloat16
        # inputs are rounded to bf16 (relative 2^-8) and amplified by the sum of |weights|, plus one rounding
        w = TaylorForecaster(2).weights(ctrl.cache.history(0).sigmas, s, 0.0)
        stored = [e.crf.double() for e in ctrl.cache.history(0).entries]
        bound = sum(abs(wj) * x.abs() for wj, x in zip(w, stored)) * 2 ** -8 + traj(s).abs() * 2 ** -8
        assert bool(((p.crf.double() - traj(s)).abs() <= bound * 1.01 + 1e-6).all())
