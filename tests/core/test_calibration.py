"""Calibration (issue 16): recording, open-loop scores, the placement search and the stored choice."""
from __future__ import annotations

import itertools
import random

import pytest
import torch

from freqca_core import REGISTRY, CacheConfig, TokenLayout
from freqca_core.calibration import (
    CANDIDATES, Candidate, Choice, StepErrors, StreamTrajectory, Trajectory, TrajectoryRecorder, best_placement,
    calibrate, even_placement, placement_score, regular_placement, score_candidates, TIE)
import runs

BASE = CacheConfig()  # the config the candidates' settings replace

LAYOUT = TokenLayout.grid(4, 4)
EXACT = 5e-4  # the score of an exact forecast: zero up to the float32 Gram products


def polynomial_trajectory(n: int, degree: int, streams: int = 1, seed: int = 0,
                          residual: bool = False) -> Trajectory:
    """A recorded run whose CRFs ``[1, 16, 8]`` are a polynomial of ``degree`` in sigma (float32, exact); with
    ``residual``, the CRF minus a random embedding is (the embeddings recorded too)."""
    gen = torch.Generator().manual_seed(seed)
    sigmas = runs.flux_sigmas(n)[:-1]
    per = {}
    for s in range(streams):
        coeffs = [torch.randn(1, 16, 8, generator=gen) for _ in range(degree + 1)]
        crfs = [sum(c * sigma ** p for p, c in enumerate(coeffs)) for sigma in sigmas]
        embeddings = [torch.randn(1, 16, 8, generator=gen) for _ in sigmas]
        if residual:
            crfs = [c + e for c, e in zip(crfs, embeddings)]
        per[s] = StreamTrajectory(LAYOUT, crfs, embeddings)
    return Trajectory(sigmas, per)


def random_trajectory(n: int, streams: int = 2, seed: int = 0) -> Trajectory:
    """A recorded run of random CRFs and embeddings ``[2, 16, 8]``."""
    gen = torch.Generator().manual_seed(seed)
    sigmas = runs.flux_sigmas(n)[:-1]
    drift = [torch.randn(2, 16, 8, generator=gen) for _ in range(streams)]
    per = {s: StreamTrajectory(
        LAYOUT, [drift[s] * (1 + sigma) + 0.3 * torch.randn(2, 16, 8, generator=gen) for sigma in sigmas],
        [torch.randn(2, 16, 8, generator=gen) for _ in sigmas]) for s in range(streams)}
    return Trajectory(sigmas, per)


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|a - b| / |b|`` over the whole tensor (float64)."""
    return float((a.double() - b.double()).norm() / b.double().norm())


def step_weight(sigmas: list[float], j: int) -> float:
    """The image change per relative CRF error at step ``j``: 0.13 x n x the sigma step (the run ends at 0)."""
    end = sigmas[j + 1] if j + 1 < len(sigmas) else 0.0
    return 0.13 * len(sigmas) * (sigmas[j] - end)


def random_errors(seed: int):
    """A ``Row`` with a deterministic arbitrary cost per (history, cached step)."""
    def cost(history: tuple[int, ...], j: int) -> float:
        return random.Random(repr((seed, history, j))).random()

    return lambda history, stop: [cost(history, j) for j in range(history[0] + 1, stop)]


def brute_force(errors, n: int, budget: int, h: int, gap: int | None = None, compounding: bool = False) -> float:
    best = float("inf")
    for rest in itertools.combinations(range(1, n), budget - 1):
        steps = (0,) + rest
        ends = steps + (n,)
        if gap is not None and any(b - a > gap for a, b in zip(ends, ends[1:])):
            continue
        best = min(best, placement_score(errors, steps, n, h, compounding))
    return best


@pytest.mark.parametrize("compounding", [False, True])
@pytest.mark.parametrize("n,budget,h,gap", [(9, 4, 1, None), (9, 4, 2, None), (10, 4, 3, None), (10, 5, 2, 3),
                                            (8, 1, 2, None), (8, 8, 3, None), (11, 3, 3, 5)])
def test_dp_finds_the_brute_force_optimum_with_exactly_the_budget(n, budget, h, gap, compounding):
    errors = random_errors(n * 100 + budget * 10 + h)
    steps, score = best_placement(errors, n, budget, h, gap, compounding)
    assert len(steps) == budget and steps[0] == 0 and list(steps) == sorted(set(steps)) and steps[-1] < n
    ends = steps + (n,)
    assert gap is None or all(b - a <= gap for a, b in zip(ends, ends[1:]))
    assert score == pytest.approx(placement_score(errors, steps, n, h, compounding))
    assert score == pytest.approx(brute_force(errors, n, budget, h, gap, compounding))


def test_compounding_counts_a_cached_step_until_the_next_full_step():
    row = lambda history, stop: [1.0] * (stop - history[0] - 1)  # noqa: E731
    assert placement_score(row, (0, 4), 6, 1, compounding=False) == 4.0  # steps 1, 2, 3, 5
    assert placement_score(row, (0, 4), 6, 1) == (3 + 2 + 1) + 1  # the default


def test_dp_refuses_a_budget_that_cannot_cover_the_run():
    with pytest.raises(ValueError, match="cannot cover"):
        best_placement(random_errors(0), 20, 3, 1, max_gap=4)
    with pytest.raises(ValueError, match="full steps"):
        best_placement(random_errors(0), 5, 6, 1)


def test_even_and_regular_placements_have_the_budget():
    for n, b in [(50, 18), (50, 8), (28, 10), (27, 10), (7, 7), (9, 1), (49, 13)]:
        for steps in (even_placement(n, b), regular_placement(n, b)):
            assert len(set(steps)) == b and steps[0] == 0 and max(steps) < n and list(steps) == sorted(steps)
        gaps = [b - a for a, b in zip(even_placement(n, b), even_placement(n, b)[1:])]
        assert max(gaps, default=0) - min(gaps, default=0) <= 1  # even: spread
    assert regular_placement(49, 17) == tuple(range(0, 49, 3))  # every 3 steps, as warm-up 1 every 3 would
    assert regular_placement(49, 13) == tuple(range(0, 49, 4))
    assert regular_placement(27, 10) == (0, 3, 6, 9, 12, 15, 18, 21, 24, 26)  # what does not fit goes last


@pytest.mark.parametrize("degree,exact,residual", [
    (0, "reuse", False), (1, "taylor order 1", False), (2, "taylor order 2", False),
    (1, "res-taylor order 1", True)])
def test_a_method_exact_on_the_trajectory_scores_zero(degree, exact, residual):
    trajectory = polynomial_trajectory(14, degree, streams=2, residual=residual)
    candidate = next(c for c in CANDIDATES if c.label == exact)
    method = candidate.build(BASE)
    errors = StepErrors(trajectory, method).row
    # with the method's full history at every cached step: steps 0..h-1 full, then any placement
    steps = tuple(range(method.history_size)) + (7, 11)
    assert placement_score(errors, steps, 14, method.history_size) == pytest.approx(0.0, abs=EXACT)
    choice = calibrate(trajectory, 5, BASE, placement="searched")  # the search finds a zero-error placement
    assert choice.score == pytest.approx(0.0, abs=EXACT)
    assert choice.scores[exact] == pytest.approx(0.0, abs=EXACT)
    assert len(choice.full_steps) == 5
    even = calibrate(trajectory, 5, BASE, placement="even")  # steps before a full history cost
    assert even.full_steps == even_placement(14, 5) and even.score <= min(even.scores.values()) * (1 + TIE)
    lower = [c.label for c in CANDIDATES if (c.method == "reuse" and degree > 0) or (
        c.method == "taylor" and c.params["taylor_order"] < degree) or (residual and c.method == "taylor")]
    for label in lower:  # a lower order, or the CRF's forecast when the residual is the polynomial, is not exact
        assert choice.scores[label] > 1e-3


@pytest.mark.parametrize("candidate", CANDIDATES, ids=lambda c: c.label)
def test_scores_are_the_forecast_errors_the_run_would_make(candidate):
    """The Gram-matrix score of each cached step equals the relative L2 error of the CRF the controller
    would serve (the method's ``predict`` on its encoded history, decoded with the step's embedding)."""
    from freqca_core import CRFHistory

    trajectory = random_trajectory(12)
    method = candidate.build(BASE)
    row = StepErrors(trajectory, method).row
    sigmas = trajectory.sigmas
    for history_steps, stop in [((0,), 4), ((3, 0), 7), ((6, 3, 0), 12), ((9, 5, 4), 12)]:
        expected = []
        for j in range(history_steps[0] + 1, stop):
            errors = []
            for stream in trajectory.streams.values():
                history = CRFHistory(method.history_size)
                for k in reversed(history_steps[:method.history_size]):
                    history.push(sigmas[k], k, method.encode(stream.crfs[k], stream.embeddings[k]))
                crf = method.decode(method.predict(history, sigmas[j], LAYOUT), stream.embeddings[j])
                errors.append(relative_l2(crf, stream.crfs[j]))
            expected.append(step_weight(sigmas, j) * sum(errors) / len(errors))
        assert row(history_steps, stop) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_decode_undoes_encode_as_a_translation(method):
    """``decode(x, e) - crf == x - encode(crf, e)``: what calibration's scoring of stored quantities assumes."""
    gen = torch.Generator().manual_seed(2)
    crf, embedding, x = (torch.randn(2, 16, 8, generator=gen) for _ in range(3))
    built = CacheConfig(method=method).new_method()
    stored = built.encode(crf, embedding)
    torch.testing.assert_close(built.decode(x, embedding) - crf, x - stored)


def test_residual_candidates_need_the_embeddings():
    trajectory = polynomial_trajectory(12, 1, residual=True)
    for stream in trajectory.streams.values():
        stream.embeddings = None
    choice = calibrate(trajectory, 4, BASE)
    assert choice.scores["res-taylor order 1"] == float("inf") and choice.method != "res-taylor"


def test_errors_weigh_the_relative_crf_error_by_the_sigma_step_and_optionally_the_noise():
    from freqca_core.adaptive import noise_weight
    from freqca_core.calibration import step_weights

    trajectory = polynomial_trajectory(10, 1)
    crfs, sigmas = trajectory.streams[0].crfs, trajectory.sigmas
    rel = [relative_l2(crfs[0], crfs[j]) for j in (1, 2, 3)]
    row = StepErrors(trajectory, Candidate("reuse", "reuse").build(BASE)).row  # the default
    assert row((0,), 4) == pytest.approx([step_weight(sigmas, j) * e for j, e in zip((1, 2, 3), rel)], rel=1e-5)
    assert row((0,), 1) == []
    noisy = StepErrors(trajectory, Candidate("reuse", "reuse").build(BASE), noise_weighted=True).row
    assert noisy((0,), 4) == pytest.approx([step_weight(sigmas, j) * noise_weight(sigmas[j], sigmas[0]) * e
                                            for j, e in zip((1, 2, 3), rel)], rel=1e-5)
    weights = step_weights(sigmas)  # the measured 0.13 x sigma_0 per step on average, larger where sigma moves more
    assert sum(weights) / len(weights) == pytest.approx(0.13 * sigmas[0])
    steps = [a - b for a, b in zip(sigmas, sigmas[1:] + [0.0])]
    assert weights.index(max(weights)) == steps.index(max(steps)) and min(weights) > 0
    assert step_weights([1.0, 1.0, 0.5]) == pytest.approx([0.0, 0.13 * 3 * 0.5, 0.13 * 3 * 0.5])


def test_frdiff_is_scored_as_its_crf_reuse():
    """FRDiff's output mixing is not scored (its relative output error is not in the CRF's units; closed loop it
    lands with reuse): its score is its CRF forecast's, reuse's, so the tie goes to reuse."""
    trajectory = random_trajectory(10)
    frdiff, reuse = (Candidate(m, m).build(BASE) for m in ("frdiff", "reuse"))
    assert frdiff.output_weight(2, 10) == 1.0  # FRDiff would serve the last full output at step 2
    f, r = StepErrors(trajectory, frdiff).row, StepErrors(trajectory, reuse).row
    assert f((0,), 10) == pytest.approx(r((0,), 10)) and f((3, 0), 7) == pytest.approx(r((3, 0), 7))
    choice = calibrate(trajectory, 4, BASE, [Candidate("frdiff", "frdiff"), Candidate("reuse", "reuse")])
    assert choice.scores["frdiff"] == pytest.approx(choice.scores["reuse"]) and choice.method == "frdiff"
    choice = calibrate(trajectory, 4, BASE, [Candidate("reuse", "reuse"), Candidate("frdiff", "frdiff")])
    assert choice.method == "reuse"


def test_recorder_projects_to_64_fp16_dims_on_cpu_and_needs_every_step():
    recorder = TrajectoryRecorder()
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 16, 300, generator=gen), torch.randn(1, 16, 300, generator=gen)
    embeddings = [torch.randn(1, 16, 300, generator=gen) for _ in range(6)]
    sigmas = runs.flux_sigmas(6)[:-1]
    for i, s in enumerate(sigmas[:-1]):
        recorder.add(i, s, "cond", LAYOUT, a + s * b + embeddings[i], embeddings[i])
    assert recorder.trajectory(6) is None  # the last step is missing
    recorder.add(5, sigmas[5], "cond", LAYOUT, a + sigmas[5] * b + embeddings[5], embeddings[5])
    stored = recorder.crfs["cond"][0]
    assert stored.shape == (1, 16, 64) and stored.dtype == torch.float16 and stored.device.type == "cpu"
    assert recorder.embeddings["cond"][0].shape == (1, 16, 64)
    assert recorder.nbytes == 6 * 2 * 16 * 64 * 2  # CRF and embedding, fp16
    trajectory = recorder.trajectory(6)
    assert trajectory.n_steps == 6 and trajectory.streams["cond"].embeddings is not None
    assert trajectory.nbytes == recorder.nbytes  # the float32 copy counts as the fp16 recording
    # the projection is linear: what the blocks add is linear in sigma, so res-taylor order 1 stays (nearly:
    # fp16) exact while taylor order 1 on the CRF, whose embedding part is random, does not
    res = StepErrors(trajectory, Candidate("r", "res-taylor", {"taylor_order": 1}).build(BASE)).row
    taylor = StepErrors(trajectory, Candidate("t", "taylor", {"taylor_order": 1}).build(BASE)).row
    assert res((1, 0), 4)[-1] < 0.01 * taylor((1, 0), 4)[-1]


def test_calibrate_keeps_the_budget_and_reports_every_candidate():
    trajectory = polynomial_trajectory(20, 3, seed=4)
    for budget in (3, 6, 10):
        choice = calibrate(trajectory, budget, BASE)
        assert len(choice.full_steps) == budget and choice.full_steps[0] == 0
        assert set(choice.scores) == {c.label for c in CANDIDATES}
        assert choice.score <= min(choice.scores.values()) * (1 + TIE)
        uniform = {even_placement(20, budget), regular_placement(20, budget)}  # the default: the better of these
        assert choice.full_steps in uniform and choice.score <= choice.even
        for placement, steps in (("even", even_placement(20, budget)), ("regular", regular_placement(20, budget))):
            alone = calibrate(trajectory, budget, BASE, placement=placement)
            assert alone.full_steps == steps and alone.score >= choice.score * (1 - TIE)
        searched = calibrate(trajectory, budget, BASE, placement="searched")
        assert searched.score <= min(choice.score, searched.even) + 1e-12  # the search is never worse
    shared = score_candidates(trajectory, 6, BASE, placement="searched")  # one cache of Gram matrices for all
    for scored in shared:  # ... gives each candidate the score it gets alone
        alone = score_candidates(trajectory, 6, BASE, [scored.candidate], placement="searched")[0]
        assert (alone.score, alone.full_steps) == (scored.score, scored.full_steps)


def test_the_configs_final_steps_are_full_within_the_budget():
    trajectory = polynomial_trajectory(20, 3, seed=5)
    for final in (1, 2):
        base = CacheConfig(final_full=final)
        for budget in (3, 5, 8):
            scored = score_candidates(trajectory, budget, base)
            for s in scored:
                assert len(s.full_steps) == budget and s.full_steps[-final:] == tuple(range(20 - final, 20))
            choice = calibrate(trajectory, budget, base)
            assert len(choice.full_steps) == budget and choice.full_steps[-1] == 19
    assert calibrate(trajectory, 1, CacheConfig(final_full=2)).full_steps == (0,)  # step 0 comes first


def test_a_near_tie_goes_to_the_earlier_candidate():
    """With embeddings linear in sigma, taylor order 1 and res-taylor order 1 forecast the same CRF (but from
    a single full step): a near tie, won by whichever is listed first; a clearly smaller error wins from any
    place in the list."""
    trajectory = polynomial_trajectory(16, 2, seed=6)
    gen = torch.Generator().manual_seed(7)
    a, b = torch.randn(1, 16, 8, generator=gen), torch.randn(1, 16, 8, generator=gen)
    for stream in trajectory.streams.values():
        stream.embeddings = [a + sigma * b for sigma in trajectory.sigmas]
    res, taylor = (c for label in ("res-taylor order 1", "taylor order 1") for c in CANDIDATES if c.label == label)
    scored = score_candidates(trajectory, 5, BASE, [res, taylor])
    assert scored[0].score == pytest.approx(scored[1].score, rel=TIE / 2) and scored[0].score > 0
    assert calibrate(trajectory, 5, BASE, [res, taylor]).label == res.label
    assert calibrate(trajectory, 5, BASE, [taylor, res]).label == taylor.label
    quadratic = next(c for c in CANDIDATES if c.label == "taylor order 2")  # exact here
    assert calibrate(trajectory, 5, BASE, [res, taylor, quadratic]).label == quadratic.label


def test_choice_round_trips_and_refuses_bad_json():
    choice = calibrate(polynomial_trajectory(12, 2), 4, BASE)
    again = Choice.from_json(choice.to_json(), BASE)
    assert again == choice and "predicted error" in again.text()
    bad = [None, [], {**choice.to_json(), "method": "feb"}, {**choice.to_json(), "full_steps": [1, 3]},
           {**choice.to_json(), "full_steps": [0, 12]}, {**choice.to_json(), "params": {"taylor_order": 9}},
           {**choice.to_json(), "params": {"no_such_field": 1}},
           {k: v for k, v in choice.to_json().items() if k != "n_steps"}]
    for data in bad:
        with pytest.raises(ValueError):
            Choice.from_json(data, BASE)


def test_held_out_best_and_paired_difference_of_measure_auto():
    from freqca_lab.measure_auto import held_out_best, paired_difference

    rows = [{"candidate": "a", "placement": "even", "psnr_per_seed": [40.0, 30.0, 40.0, 30.0]},  # lucky on evens
            {"candidate": "b", "placement": "even", "psnr_per_seed": [35.0, 36.0, 35.0, 36.0]}]
    held = held_out_best(rows)  # a is picked on the even seeds and measured on the odd ones, b the other way
    assert held["picks"] == ["a/even", "b/even"] and held["psnr"] == pytest.approx((30.0 + 35.0) / 2)
    with pytest.raises(ValueError, match="2 reported seeds"):
        held_out_best([{"candidate": "a", "placement": "even", "psnr_per_seed": [40.0]}])
    mean, se = paired_difference([3.0, 5.0, 4.0], [1.0, 2.0, 3.0])  # differences 2, 3, 1
    assert mean == pytest.approx(2.0) and se == pytest.approx(1.0 / 3 ** 0.5)
    assert paired_difference([3.0], [1.0]) == (2.0, 0.0)


def test_spearman_of_measure_auto():
    from freqca_lab.measure_auto import spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties get average ranks: [0, 1.5, 1.5, 3] against [0, 2, 1, 3]: covariance 4.5, variances 4.5 and 5
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / (4.5 * 5) ** 0.5)


def test_oracle_pick_of_measure_oracle_uses_the_first_images_only():
    from freqca_lab.measure_oracle import oracle_pick

    rows = [{"candidate": "a", "calibration_psnr_per_seed": [40.0, 40.0, 20.0, 20.0]},
            {"candidate": "b", "calibration_psnr_per_seed": [35.0, 35.0, 35.0, 35.0]}]
    assert oracle_pick(rows, 2)["candidate"] == "a"  # best on the first two images
    assert oracle_pick(rows, 4)["candidate"] == "b"  # a's last two images pull its mean to 30
    with pytest.raises(ValueError, match="at least 8 calibration PSNRs"):
        oracle_pick(rows, 8)


def test_plan_and_summary_of_measure_placements():
    from freqca_lab.measure_placements import parse_plan, summary

    assert parse_plan(["50:6,7", "20:5"]) == {50: [6, 7], 20: [5]}
    for bad in (["50:6,x"], ["fifty:6"], ["20:21"], ["20:0"]):
        with pytest.raises(ValueError, match="--plan"):
            parse_plan(bad)

    def entry(budget: int, uniform: float, searched: float, default: float) -> dict:
        return {"steps": 50, "budget": budget, "uniform": {"psnr": uniform}, "searched": {"psnr": searched},
                "default": {"psnr": default}}

    s = summary([entry(10, 36.0, 34.0, 35.0), entry(14, 40.0, 41.0, 40.4)])
    assert s["uniform"]["mean_db"] == pytest.approx(38.0)
    assert s["uniform"]["minus_default_db"] == pytest.approx((1.0 - 0.4) / 2) and s["uniform"]["losses"] == []
    assert s["searched"]["losses"] == ["10/50"]  # 1 dB below; 14/50 is above
    assert s["default"]["minus_default_db"] == 0.0
