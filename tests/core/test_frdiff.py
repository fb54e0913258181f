"""FRDiff: the score-mixing weight, the method through the controller, learned-gate schedules and Auto-FR."""
from __future__ import annotations

import json

import pytest
import torch

from freqca_core import METHODS, CacheController, CRFHistory, TokenLayout, make_method
from freqca_lab.autofr import DEFAULT_GATES, evenly_spaced, gated_sample, learn_gates, target_count
from freqca_core.methods.frdiff import FRDiffMethod, GateSchedule, score_mix_weight
from freqca_lab.runner import conditioning, generate
from freqca_core.schedule import StepLocator
from freqca_lab.testbed.sampling import flux_sigmas, seeded_noise
import runs

pytestmark = pytest.mark.usefixtures("one_torch_thread")
LAYOUT = TokenLayout.grid(2, 3)


# ---------------------------------------------------------------------------------------- λ(r)
@pytest.mark.parametrize("r,expected", [
    (0.5, 0.5), (0.55, 0.875), (0.45, 0.125), (0.5 + 2 / 30, 1.0), (0.5 - 2 / 30, 0.0),
    (1.0, 1.0), (0.0, 0.0), (0.6, 1.0), (0.4, 0.0), (5.0, 1.0), (-3.0, 0.0),
])
def test_score_mix_weight_known_points_and_clipping(r, expected):
    assert score_mix_weight(r) == pytest.approx(expected, abs=1e-12)


def test_output_weight_follows_the_remaining_noise_fraction():
    method = FRDiffMethod()
    assert method.score_mixing and method.name == "frdiff" and method.history_size == 1
    assert method.output_weight(0, 28) == 1.0            # r = 1: reduced NFE
    assert method.output_weight(14, 28) == pytest.approx(0.5)
    assert method.output_weight(15, 28) == pytest.approx((30 * (13 / 28 - 0.5) + 2) / 4)
    assert method.output_weight(27, 28) == 0.0           # late: feature reuse
    assert method.output_weight(3, None) == 0.0         # unknown length: no mixing
    off = FRDiffMethod(score_mixing=False)
    assert not off.score_mixing and off.output_weight(0, 28) == 0.0
    assert method.describe()["score_mixing"] is True and off.describe()["score_mixing"] is False


def test_registered_and_reuses_the_newest_crf():
    assert "frdiff" in METHODS
    method = make_method("frdiff", cutoff=0.3)
    assert isinstance(method, FRDiffMethod)
    hist = CRFHistory(method.history_size)
    crf = torch.randn(1, LAYOUT.length, 4)
    hist.push(0.8, 0, torch.zeros_like(crf))
    hist.push(0.6, 2, crf)
    out = method.predict(hist, 0.5, LAYOUT)
    assert torch.equal(out, crf) and out.data_ptr() != hist.entries[0].crf.data_ptr()


# -------------------------------------------------------------------------------- through the controller
def drive(ctrl: CacheController, sigmas, streams=("uncond", "cond")):
    """One call per step with per-stream CRFs and model outputs that differ per step; returns, per step,
    (plan, raw output, finished output)."""
    def call(step: int, s: float):
        plan = ctrl.plan(s, streams, 2 * len(streams), LAYOUT)
        if plan.full:
            ctrl.record(plan, torch.full((2 * len(streams), LAYOUT.length, 4), float(step)))
        raw = torch.stack([torch.full((3, 2, 3), 10.0 * step + k) for k in range(2 * len(streams))])
        return plan, raw, ctrl.finish_call(plan, raw.clone())

    ctrl.start_run(sigmas)  # None: a run of unknown length, whose calls get the sigmas of 8 steps
    return runs.drive(ctrl, sigmas if sigmas is not None else [1.0 - i / 8 for i in range(9)], call, start=False)


def test_controller_mixes_cached_outputs_with_the_last_full_output_per_stream():
    n = 10
    sigmas = [1.0 - i / n for i in range(n + 1)]
    schedule = GateSchedule.from_steps([0, 3, 7], n)
    ctrl = CacheController(FRDiffMethod(), schedule)
    rows = drive(ctrl, sigmas)
    assert ctrl.stats.timeline() == "FccFcccFcc"
    expected_w = {1: 1.0, 2: 1.0, 4: 1.0, 5: 0.5, 6: 0.0, 8: 0.0, 9: 0.0}  # r = 1 - step/10
    last_full = None
    for step, (plan, raw, out) in enumerate(rows):
        if plan.full:
            assert torch.equal(out, raw)
            last_full = raw
            continue
        assert torch.equal(plan.crf, torch.full_like(plan.crf, float(max(s for s in (0, 3, 7) if s < step))))
        w = expected_w[step]
        assert ctrl.method.output_weight(step, n) == pytest.approx(w)
        # per stream: uncond rows (0, 1) mix with the full call's uncond rows, cond rows with cond rows
        torch.testing.assert_close(out, w * last_full + (1 - w) * raw)
    assert set(ctrl.method.outputs) == {"uncond", "cond"}
    ctrl.end_run()
    assert not ctrl.method.outputs


def test_controller_without_run_length_does_not_mix():
    ctrl = CacheController(FRDiffMethod(), GateSchedule((True, False, False, True, False, False, False, False)))
    rows = drive(ctrl, None)
    assert ctrl.locator.n_steps is None
    assert [plan.full for plan, _, _ in rows] == [True, False, False, True, False, False, False, False]
    for plan, raw, out in rows:
        assert torch.equal(out, raw)


def test_score_mixing_off_matches_reuse():
    n = 8
    sigmas = [1.0 - i / n for i in range(n + 1)]
    schedule = GateSchedule.from_steps([0, 4], n)
    off = drive(CacheController(FRDiffMethod(score_mixing=False), schedule), sigmas)
    reuse = drive(CacheController(make_method("reuse"), schedule), sigmas)
    for (p1, raw1, out1), (p2, _, out2) in zip(off, reuse):
        assert p1.full == p2.full and torch.equal(out1, raw1) and torch.equal(out1, out2)
        if not p1.full:
            assert torch.equal(p1.crf, p2.crf)


# ------------------------------------------------------------------------------------- GateSchedule
def test_gate_schedule_same_length_resampling_and_step_zero():
    gates = GateSchedule((False, True, False, True))   # gate 0 off: step 0 still runs full
    assert gates.full_steps(4) == [0, 1, 3]
    assert gates.full_steps(8) == [0, 2, 3, 6, 7]      # step i takes gate floor((i + 0.5) * 4 / 8)
    assert gates.full_steps(2) == [0, 1]               # step 1 -> gate floor(1.5 * 2) = 3
    assert [gates.is_full(i, None) for i in range(6)] == [True, True, False, True, True, True]  # past: full
    spaced = GateSchedule.from_steps(evenly_spaced(10, 28), 28)
    assert len(spaced.full_steps(28)) == 10
    assert 15 <= len(spaced.full_steps(50)) <= 20     # about the same fraction (17.9) at another length


def test_gate_schedule_runs_like_a_fixed_schedule():
    gates = GateSchedule.from_steps([0, 2, 5], 6)
    run = gates.start_run(StepLocator([1.0 - i / 6 for i in range(7)]))
    assert [run.is_full(i) for i in range(6)] == [True, False, True, False, False, True]
    with pytest.raises(ValueError, match="gates"):
        GateSchedule(())


def test_gate_schedule_save_load_round_trip(tmp_path):
    gates = GateSchedule((True, False, True, True, False), {"note": "x", "iters": 3})
    path = tmp_path / "g.json"
    gates.save(path)
    data = json.loads(path.read_text())
    assert data == {"steps": 5, "gates": [1, 0, 1, 1, 0], "meta": {"note": "x", "iters": 3}}
    loaded = GateSchedule.load(path)
    assert loaded == gates and loaded.meta == gates.meta


@pytest.mark.parametrize("content,field", [
    ("not json", "cannot read"),
    ("[1, 0]", "JSON object"),
    ('{"gates": [1, 0]}', "'steps'"),
    ('{"steps": 2}', "'gates'"),
    ('{"steps": 2, "gates": [1, 2]}', "'gates'"),
    ('{"steps": 0, "gates": []}', "'gates'"),
    ('{"steps": 2, "gates": "10"}', "'gates'"),
    ('{"steps": 3, "gates": [1, 0]}', "'steps'"),
    ('{"steps": 2, "gates": [true, false]}', "'gates'"),
    ('{"steps": 2, "gates": [1, 0], "meta": []}', "'meta'"),
])
def test_gate_schedule_bad_files_name_the_file_and_field(tmp_path, content, field):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=field) as info:
        GateSchedule.load(path)
    assert "bad.json" in str(info.value)
    with pytest.raises(ValueError, match="missing.json"):
        GateSchedule.load(tmp_path / "missing.json")


def test_default_gates_are_shipped():
    gates = GateSchedule.load(DEFAULT_GATES)
    assert gates.steps == 28 and gates.gates[0]
    assert len(gates.full_steps(28)) == gates.meta["full_steps"] < 28


# ------------------------------------------------------------------------------------------- Auto-FR
@pytest.fixture(scope="module")
def tiny():
    return runs.tiny_testbed()


def test_target_count():
    assert target_count(0.36, 28) == 10 and target_count(10, 28) == 10 and target_count(0.01, 28) == 1
    with pytest.raises(ValueError, match="target_full"):
        target_count(0, 28)
    with pytest.raises(ValueError, match="target_full"):
        target_count(29, 28)
    assert evenly_spaced(3, 8) == [0, 2, 5] and evenly_spaced(8, 8) == list(range(8))


def test_gated_sampler_matches_the_controller_run(tiny):
    """With rounded gates, Auto-FR's differentiable sampler is what runner.generate does through the
    controller; all gates on is the uncached sampler."""
    model, table = tiny
    steps, prompts, seeds, size = 8, [1, 7], [5, 6], (8, 8)
    schedule = GateSchedule.from_steps([0, 3, 6], steps)
    context, y = conditioning(table, prompts, 3.0)
    sigmas = flux_sigmas(steps, 2.0)
    mix = [FRDiffMethod().output_weight(k, steps) for k in range(steps)]
    noise = seeded_noise(seeds, size)
    gates = torch.tensor([float(g) for g in schedule.gates])
    with torch.no_grad():
        ours = gated_sample(model, gates, noise, context, y, sigmas, 3.0, mix)
        full = gated_sample(model, torch.ones(steps), noise, context, y, sigmas, 3.0, mix)
    cached = generate(model, prompts, seeds, steps, 3.0, CacheController(FRDiffMethod(), schedule), table=table,
                      size=size)
    assert cached.stats.timeline() == "FccFccFc"
    torch.testing.assert_close(ours, cached.images, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full, generate(model, prompts, seeds, steps, 3.0, None, table=table,
                                              size=size).images, atol=1e-6, rtol=1e-6)
    assert (ours - full).abs().max() > 1e-4  # the cache did change the image


def test_auto_fr_learns_valid_gates_and_lowers_its_loss(tiny):
    model, table = tiny
    kwargs = dict(steps=10, target=4, images=1, iters=6, lr=2.0, cost_weight=20.0, size=(8, 8))
    result = learn_gates(model, table, **kwargs)
    gates = result.schedule
    assert gates.steps == 10 and gates.gates[0] and sum(gates.gates) == 4
    assert len(result.mse) == len(result.loss) == len(result.full_counts) == 6
    assert result.best_mse < result.mse[0]  # found a better 4-step gate set than the evenly spaced start
    assert min(result.loss) < result.loss[0]
    assert gates.meta["full_steps"] == 4 and gates.meta["mse_best"] == result.best_mse
    assert all(p.grad is None for p in model.parameters())
    again = learn_gates(model, table, **kwargs)
    assert again.schedule == gates and again.mse == result.mse  # deterministic
