"""CRF storage (CRFHistory, StreamCache), the full-step schedule (FixedSchedule) and StepLocator."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from freqca_core import CRFHistory, FixedSchedule, StepLocator, StreamCache, TokenLayout, make_method


def _t(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


# =============================================================================================== CRFHistory
def test_history_capacity_and_newest_first():
    h = CRFHistory(3)
    tensors = [_t(1, 4, 2, seed=i) for i in range(5)]
    for i, (s, x) in enumerate(zip([1.0, 0.8, 0.6, 0.4, 0.2], tensors)):
        h.push(s, i, x)
        assert len(h) == min(i + 1, 3)
    assert h.sigmas == [0.2, 0.4, 0.6]
    assert [e.step for e in h.entries] == [4, 3, 2]
    for e, x in zip(h.entries, tensors[::-1]):
        assert torch.equal(e.crf, x)


def test_history_capacity_must_be_positive():
    with pytest.raises(ValueError, match="capacity"):
        CRFHistory(0)


def test_history_same_sigma_replaces():
    h = CRFHistory(3)
    h.push(0.9, 0, _t(1, 3, 2, seed=0))
    h.push(0.7, 1, _t(1, 3, 2, seed=1))
    newer = _t(1, 3, 2, seed=2)
    h.push(0.9, 2, newer)  # e.g. a second model call at an already stored sigma
    assert h.sigmas == [0.9, 0.7]
    assert h.entries[0].step == 2
    assert torch.equal(h.entries[0].crf, newer)
    h.push(0.9, 3, newer * 2)
    assert len(h) == 2 and h.sigmas == [0.9, 0.7]
    assert len(set(h.sigmas)) == len(h.sigmas)


def test_history_shape_change_clears():
    h = CRFHistory(3)
    h.push(0.9, 0, _t(1, 4, 2))
    h.push(0.8, 1, _t(1, 4, 2))
    assert h.matches(1, 4)
    h.push(0.7, 2, _t(1, 5, 2))  # token count changed
    assert h.sigmas == [0.7]
    assert h.matches(1, 5) and not h.matches(1, 4)
    h.push(0.6, 3, _t(2, 5, 2))  # batch changed
    assert h.sigmas == [0.6]
    h.push(0.5, 4, _t(2, 5, 3))  # channels changed
    assert h.sigmas == [0.5]
    assert not CRFHistory(2).matches(2, 5)


def test_history_stores_a_copy():
    h = CRFHistory(2)
    x = _t(1, 4, 3)
    keep = x.clone()
    h.push(0.5, 0, x)
    assert h.entries[0].crf.data_ptr() != x.data_ptr()
    x.add_(100.0)
    x[0, 0, 0] = float("nan")
    assert torch.equal(h.entries[0].crf, keep)


def test_history_detaches():
    x = _t(1, 2, 2).requires_grad_(True)
    h = CRFHistory(1)
    h.push(0.5, 0, x * 2)
    assert not h.entries[0].crf.requires_grad


@pytest.mark.parametrize("name", ["reuse", "taylor", "freqca"])
def test_mutating_a_forecast_leaves_the_cache_alone(name):
    method = make_method(name)
    h = CRFHistory(method.history_size)
    for i, s in enumerate([0.9, 0.8, 0.7]):
        h.push(s, i, _t(1, 6, 2, seed=i))
    before = [e.crf.clone() for e in h.entries]
    out = method.predict(h, 0.6, TokenLayout.grid(2, 3))
    out.mul_(-3.0).add_(7.0)
    for e, b in zip(h.entries, before):
        assert torch.equal(e.crf, b)
    again = method.predict(h, 0.6, TokenLayout.grid(2, 3))
    assert not torch.equal(again, out)


@pytest.mark.parametrize("dtype,size", [(torch.float32, 4), (torch.bfloat16, 2), (torch.float16, 2),
                                        (torch.float64, 8)])
def test_nbytes_exact(dtype, size):
    h = CRFHistory(2)
    assert h.nbytes == 0
    h.push(0.9, 0, _t(2, 5, 3, dtype=dtype))
    assert h.nbytes == 2 * 5 * 3 * size
    h.push(0.8, 1, _t(2, 5, 3, dtype=dtype))
    h.push(0.7, 2, _t(2, 5, 3, dtype=dtype))  # capacity 2: still two entries
    assert h.nbytes == 2 * (2 * 5 * 3 * size)
    h.push(0.6, 3, _t(1, 5, 3, dtype=dtype))  # shape change: one small entry
    assert h.nbytes == 1 * 5 * 3 * size


def test_nbytes_of_a_non_contiguous_input():
    x = _t(4, 6, 8)[:, ::2, 1::3]  # a strided view: the copy holds only its elements
    h = CRFHistory(1)
    h.push(0.5, 0, x)
    assert h.nbytes == x.numel() * 4


# =============================================================================================== StreamCache
def test_stream_cache_keeps_streams_apart():
    cache = StreamCache(2)
    a, b = _t(1, 4, 2, seed=1), _t(1, 4, 2, seed=2)
    cache.push("cond", 0.9, 0, a)
    cache.push("uncond", 0.9, 0, b)
    cache.push("cond", 0.8, 1, a * 2)
    assert cache.history("cond").sigmas == [0.8, 0.9]
    assert cache.history("uncond").sigmas == [0.9]
    assert torch.equal(cache.history("uncond").entries[0].crf, b)
    assert cache.nbytes == 3 * 4 * 2 * 4
    assert cache.history("cond").capacity == 2
    assert len(cache.history("new").entries) == 0
    cache.clear()
    assert cache.nbytes == 0 and cache.streams == {}


def test_stream_cache_offload_device():
    cache = StreamCache(2, offload_device=torch.device("meta"))
    cache.push(0, 0.5, 0, _t(1, 4, 2))
    stored = cache.history(0).entries[0].crf
    assert stored.device.type == "meta"
    assert cache.nbytes == 4 * 2 * 4
    cpu = StreamCache(1, offload_device=torch.device("cpu"))
    x = _t(1, 3, 2)
    cpu.push(0, 0.5, 0, x)
    assert cpu.history(0).entries[0].crf.device.type == "cpu"
    assert torch.equal(cpu.history(0).entries[0].crf, x)


# =============================================================================================== FixedSchedule
def test_official_pattern_interval_6():
    assert FixedSchedule(3, 6).full_steps(50) == [0, 1, 2, 8, 14, 20, 26, 32, 38, 44]


def test_official_pattern_interval_9():
    full = FixedSchedule(3, 9).full_steps(50)
    assert full == [0, 1, 2, 11, 20, 29, 38, 47]
    assert len(full) == 8


def test_defaults_are_the_official_setting():
    assert FixedSchedule().full_steps(50) == FixedSchedule(3, 6).full_steps(50)


def test_interval_one_is_all_full():
    assert FixedSchedule(3, 1).full_steps(20) == list(range(20))
    assert FixedSchedule(0, 1).full_steps(7) == list(range(7))


def test_single_step():
    assert FixedSchedule(3, 6).full_steps(1) == [0]
    assert FixedSchedule(0, 6).full_steps(1) == [0]


def test_interval_longer_than_the_run():
    assert FixedSchedule(3, 100).full_steps(20) == [0, 1, 2]
    assert FixedSchedule(1, 30).full_steps(20) == [0]


def test_warmup_longer_than_the_run():
    assert FixedSchedule(25, 6).full_steps(20) == list(range(20))


def test_warmup_zero_still_makes_step_zero_full():
    full = FixedSchedule(0, 4).full_steps(13)
    assert full[0] == 0
    assert full == [0, 4, 8, 12]
    assert FixedSchedule(0, 4).is_full(0, None)


def test_final_full_steps():
    assert FixedSchedule(3, 6, final_full=2).full_steps(20) == [0, 1, 2, 8, 14, 18, 19]
    assert FixedSchedule(3, 6, final_full=0).full_steps(20) == [0, 1, 2, 8, 14]
    assert FixedSchedule(3, 6, final_full=50).full_steps(20) == list(range(20))


def test_start_fraction_delays_caching():
    # origin = ceil(0.5 * 20) = 10: steps 0..9 full, then the cycle restarts from the last of them
    assert FixedSchedule(3, 6, start=0.5).full_steps(20) == list(range(10)) + [15]
    # a start earlier than the warm-up changes nothing
    assert FixedSchedule(3, 6, start=0.05).full_steps(20) == [0, 1, 2, 8, 14]


def test_end_fraction_stops_caching():
    assert FixedSchedule(3, 6, end=0.8).full_steps(20) == [0, 1, 2, 8, 14, 16, 17, 18, 19]
    assert FixedSchedule(3, 6, end=0.0).full_steps(10) == list(range(10))
    assert FixedSchedule(3, 6, start=0.2, end=0.6).full_steps(10) == [0, 1, 2, 6, 7, 8, 9]


def test_unknown_length_uses_warmup_and_interval_only():
    s = FixedSchedule(3, 6, final_full=2, start=0.5, end=0.5)
    assert [i for i in range(30) if s.is_full(i, None)] == [0, 1, 2, 8, 14, 20, 26]


def test_cached_step_count_matches_the_definition():
    """Count of cached steps: every step not full; for warm-up w and interval N the full steps after the
    warm-up are w - 1 + k N (k >= 1)."""
    for w in (1, 2, 3, 5):
        for n_int in (2, 3, 6, 9):
            for n in (1, 7, 28, 50):
                expected = sorted(set(range(min(w, n))) | {w - 1 + k * n_int for k in range(1, n) if w - 1 + k * n_int < n})
                assert FixedSchedule(w, n_int).full_steps(n) == expected, (w, n_int, n)


@pytest.mark.parametrize("kwargs,words", [
    ({"warmup": -1}, ["warmup_steps", "[0, 1000]", "-1"]),
    ({"warmup": 1001}, ["warmup_steps", "[0, 1000]"]),
    ({"interval": 0}, ["interval", "[1, 1000]", "0"]),
    ({"interval": 2.5}, ["interval", "integer"]),
    ({"interval": "6"}, ["interval"]),
    ({"interval": True}, ["interval"]),
    ({"final_full": -2}, ["final_full_steps", "[0, 1000]"]),
    ({"start": 1.5}, ["start_percent", "[0.0, 1.0]", "1.5"]),
    ({"start": -0.1}, ["start_percent", "[0.0, 1.0]"]),
    ({"end": 2}, ["end_percent", "[0.0, 1.0]"]),
    ({"end": float("nan")}, ["end_percent"]),
    ({"start": 0.6, "end": 0.4}, ["end_percent", "start_percent", "0.6", "0.4"]),
])
def test_invalid_schedule_values(kwargs, words):
    with pytest.raises(ValueError) as info:
        FixedSchedule(**kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_integral_float_interval_accepted():
    assert FixedSchedule(3, 6.0).is_full(8, 50)


# =============================================================================================== StepLocator
SIGMAS = [1.0, 0.8, 0.5, 0.25, 0.1, 0.0]


def test_locator_exact_hits():
    loc = StepLocator(SIGMAS)
    assert loc.n_steps == 5
    for i, s in enumerate(SIGMAS[:-1]):
        assert loc.step_of(s) == i
        assert loc.step_of(s * (1 + 1e-7)) == i  # float noise from a tensor round trip
    assert loc.step_of(0.0) == 4  # the final sigma lies at the end of the last step


def test_locator_midpoints_map_to_the_earlier_step():
    loc = StepLocator(SIGMAS)
    for i in range(5):
        hi, lo = SIGMAS[i], SIGMAS[i + 1]
        assert loc.step_of((hi + lo) / 2) == i
        assert loc.step_of(math.sqrt(hi * lo) if lo > 0 else hi / 2) == i  # DPM2-style geometric midpoint
        assert loc.step_of(lo + 0.9 * (hi - lo)) == i


def test_locator_with_a_float32_tensor_schedule():
    sig = torch.tensor([14.6146, 7.0, 3.1, 0.9, 0.03, 0.0])
    loc = StepLocator(sig.tolist())
    for i in range(5):
        assert loc.step_of(float(sig[i])) == i


def test_locator_repeated_sigmas():
    loc = StepLocator([1.0, 0.5, 0.5, 0.2, 0.0])
    assert loc.n_steps == 4
    assert loc.step_of(1.0) == 0
    assert loc.step_of(0.5) == 1  # exact hit: the first step at that sigma
    assert loc.step_of(0.35) == 2  # between the second 0.5 and 0.2
    assert loc.step_of(0.2) == 3
    assert loc.step_size(1) == 0.0
    assert loc.step_size(2) == pytest.approx(0.3)


def test_locator_outside_the_schedule():
    loc = StepLocator(SIGMAS)
    assert loc.step_of(1.5) is None
    assert loc.step_of(-0.1) is None
    assert StepLocator([0.5, 0.2, 0.0]).step_of(0.9) is None


def test_locator_without_schedule_counts_new_sigmas():
    loc = StepLocator(None)
    assert loc.n_steps is None
    assert loc.step_of(0.9) == 0
    assert loc.step_of(0.9) == 0  # a second call at the same sigma (cond / uncond, re-run)
    assert loc.step_of(0.7) == 1
    assert loc.step_of(0.7) == 1
    assert loc.step_of(0.6) == 2
    assert loc.step_size(1) == 0.0


def test_locator_all_zero_schedule():
    loc = StepLocator([0.0, 0.0])
    assert loc.n_steps == 1
    assert loc.step_of(0.0) == 0
    assert loc.step_size(0) == 0.0
    assert loc.step_of(0.1) is None


def test_locator_degenerate_schedules():
    assert StepLocator([]).n_steps == 0
    assert StepLocator([]).step_of(0.5) is None
    assert StepLocator([0.7]).step_of(0.7) is None
    assert StepLocator([0.7]).step_size(0) == 0.0


def test_locator_step_size():
    loc = StepLocator(SIGMAS)
    assert [loc.step_size(i) for i in range(5)] == pytest.approx([0.2, 0.3, 0.25, 0.15, 0.1])
    assert loc.step_size(5) == 0.0


def test_numpy_scalars_accepted_and_bools_rejected():
    """Values coming from numpy (benchmark sweeps) are numbers like any other; bools are not."""
    np = pytest.importorskip("numpy")
    s = FixedSchedule(np.int64(3), np.int32(6), final_full=np.int64(0), start=np.float32(0.0), end=np.float64(1.0))
    assert s.full_steps(50) == [0, 1, 2, 8, 14, 20, 26, 32, 38, 44]
    with pytest.raises(ValueError, match=r"interval must be an integer in \[1, 1000\]"):
        FixedSchedule(3, np.int64(0))
    with pytest.raises(ValueError, match="interval"):
        FixedSchedule(3, np.float64(2.5))
    with pytest.raises(ValueError, match="interval"):
        FixedSchedule(3, np.float64("inf"))
    with pytest.raises(ValueError, match="warmup_steps"):
        FixedSchedule(np.bool_(True), 6)
    with pytest.raises(ValueError, match="start_percent"):
        FixedSchedule(3, 6, start=np.float32("nan"))


def test_locator_rising_schedule_prefers_exact_hits():
    """Restart-style schedules rise again: an exact sigma maps to its own step, not an earlier interval."""
    loc = StepLocator([1.0, 0.5, 0.2, 0.8, 0.3, 0.0])
    assert [loc.step_of(s) for s in (1.0, 0.5, 0.2, 0.8, 0.3)] == [0, 1, 2, 3, 4]
    assert loc.step_of(0.9) == 0  # first interval containing it
    assert loc.step_of(0.1) == 4


def test_locator_float32_round_trip_of_a_long_schedule():
    np = pytest.importorskip("numpy")
    t = np.linspace(1.0, 0.0, 401)
    sig = 3 * t / (1 + 2 * t)
    loc = StepLocator(torch.tensor(sig, dtype=torch.float32).tolist())
    assert all(loc.step_of(float(s)) == i for i, s in enumerate(sig[:-1]))
    mids = (sig[:-1] + sig[1:]) / 2
    assert all(loc.step_of(float(m)) == i for i, m in enumerate(mids))


# ===================================================================================== short runs (issue 17)
def _timeline(schedule: FixedSchedule, n: int) -> str:
    run = replace(schedule, fit_short_runs=True).start_run(StepLocator([1.0 - i / n for i in range(n + 1)]))
    return "".join("F" if run.is_full(i) else "c" for i in range(n))


@pytest.mark.parametrize("n, expected", [(4, "FFFF"), (5, "FcFcF"), (7, "FcFcFcF"), (8, "FFcFcFcF"),
                                         (12, "FFFccFccFccF")])
def test_short_runs_are_fitted_with_the_defaults(n, expected):
    """A run too short for warm-up and two cycles: a smaller interval and warm-up, the last step full;
    under MIN_CACHED_STEPS steps nothing is cached. The defaults would give FFFcccc at 7 steps."""
    assert FixedSchedule().is_short(n)
    assert _timeline(FixedSchedule(), n) == expected
    assert FixedSchedule(fit_short_runs=True).fit_text(n) and not FixedSchedule().fit_text(n)
    off = FixedSchedule().start_run(StepLocator([1.0 - i / n for i in range(n + 1)]))  # off: the pattern as set
    assert [i for i in range(n) if off.is_full(i)] == FixedSchedule().full_steps(n)


def test_long_runs_and_interval_one_are_unchanged():
    for schedule, n in ((FixedSchedule(), 16), (FixedSchedule(), 28), (FixedSchedule(3, 10), 28),
                        (FixedSchedule(3, 1), 6), (FixedSchedule(2, 3), 9)):
        assert not schedule.is_short(n) and schedule.for_run(n) == schedule and schedule.fit_text(n) == ""
        assert _timeline(schedule, n) == "".join("F" if i in schedule.full_steps(n) else "c" for i in range(n))


def test_short_run_fit_never_exceeds_the_chosen_interval_or_warmup():
    for n in range(1, 40):
        for warmup, interval in ((0, 2), (1, 3), (3, 6), (5, 20)):
            fitted = FixedSchedule(warmup, interval).for_run(n)
            assert fitted.interval <= interval and (fitted.warmup <= warmup or n < 5)
            timeline = _timeline(FixedSchedule(warmup, interval), n)
            assert timeline[0] == "F" and (not FixedSchedule(warmup, interval).is_short(n) or timeline[-1] == "F")
    assert FixedSchedule().for_run(None) == FixedSchedule()
