"""Runner, baseline and benchmark CLI on a tiny random-weight TinyFlux (fast; no trained weights needed)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from freqca_lab import bench
from freqca_lab.baselines import AdaptiveOutputCache, calibrate_threshold
from freqca_core.controller import CacheController
from freqca_core import make_method
from freqca_lab.runner import (flop_counter, flops_per_sample, generate, median_call_seconds, randomize, run_cost,
                                streams_for)
from freqca_core.schedule import FixedSchedule
from freqca_lab.testbed.data import PROMPTS, PromptTable
from freqca_lab.testbed.model import TinyFlux, TinyFluxConfig

CONTRACT = ("method", "params", "full_steps", "nfe_ratio", "wall_s", "speedup", "psnr", "ssim", "rel_l1",
            "cache_bytes", "flops_speedup")


def tiny(guidance_embed: bool = False) -> tuple[TinyFlux, PromptTable]:
    config = TinyFluxConfig(hidden_size=32, num_heads=2, axes_dim=[4, 6, 6], depth=1, depth_single_blocks=2,
                            vec_in_dim=16, context_in_dim=16, guidance_embed=guidance_embed)
    model = randomize(TinyFlux(config), seed=1).eval().requires_grad_(False)
    table = PromptTable.create(PROMPTS, 2, 16, 16, seed=0).requires_grad_(False)
    return model, table


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    return tiny()


def run(setup, method, steps=8, cfg=3.0, **kw):
    model, table = setup
    return generate(model, [0, 5], [11, 12], steps, cfg, method, table=table, size=(16, 16), **kw)


def freqca(interval: int, warmup: int = 3) -> CacheController:
    return CacheController(make_method("freqca"), FixedSchedule(warmup=warmup, interval=interval))


def test_interval_one_reproduces_uncached_exactly(setup):
    ref = run(setup, None)
    assert ref.images.abs().max() > 0  # random weights: a non-trivial output
    for cfg in (3.0, 1.0):
        ref = run(setup, None, cfg=cfg)
        out = run(setup, freqca(1), cfg=cfg)
        assert torch.equal(out.images, ref.images)
        assert out.full_steps == 8 and out.stats.cached_calls == 0


def test_block_executions_equal_full_steps_times_blocks(setup):
    model, _ = setup
    n_blocks = len(model.double_blocks) + len(model.single_blocks)
    ref = run(setup, None, steps=10)
    assert ref.block_calls == 10 * n_blocks and ref.n_blocks == n_blocks
    out = run(setup, freqca(3), steps=10)
    assert out.full_steps == len(FixedSchedule(3, 3).full_steps(10)) == 5
    assert out.block_calls == out.full_steps * n_blocks
    assert out.stats.timeline() == "FFFccFccFc"
    assert not torch.equal(out.images, ref.images)
    assert out.cache_bytes > 0


def test_streams_and_medians():
    assert streams_for(3.0) == ("uncond", "cond") and streams_for(1.0) == ("cond",)
    assert median_call_seconds([(True, 3.0), (True, 1.0), (False, 0.5), (True, 2.0)]) == (2.0, 0.5)
    assert median_call_seconds([(True, 1.0), (True, 2.0)]) == (1.5, 0.0)


def test_adaptive_baseline_extremes(setup):
    ref = run(setup, None)
    exact = run(setup, AdaptiveOutputCache(0.0))
    assert torch.equal(exact.images, ref.images) and exact.full_steps == 8
    lazy = run(setup, AdaptiveOutputCache(1e9, warmup=3))
    assert lazy.full_steps == 3 and lazy.stats.timeline() == "FFFccccc"
    assert lazy.block_calls == 3 * ref.n_blocks


def test_calibration_hits_target():
    counts = lambda t: max(3, int(20 - 5 * math.log10(t / 1e-3)))  # noqa: E731  falls with the threshold

    def run_with_abort(t, abort_above):  # like a real run: stops once over budget, returning a lower bound
        return min(counts(t), abort_above + 1)

    trials = []
    threshold, got, made = calibrate_threshold(run_with_abort, 9, iters=30, trials=trials)
    assert got == 9 and counts(threshold) == 9 and made == len(trials) < 12
    threshold, got, made_again = calibrate_threshold(run_with_abort, 9, trials=trials)
    assert got == 9 and made_again == 0  # a shared history answers at once
    threshold, got, _ = calibrate_threshold(run_with_abort, 6, trials=trials)
    assert got == 6 and counts(threshold) == 6
    trials = []
    threshold, got, _ = calibrate_threshold(run_with_abort, 1, iters=5, trials=trials)  # unreachable
    assert got > 1 and threshold >= 1 and len(trials) <= 5  # the closest run, after a bounded search


def test_flops_from_call_costs_equal_direct_count(setup):
    for method in (freqca(3), AdaptiveOutputCache(0.05)):
        g = run(setup, method, steps=8, count_flops=True)
        direct = sum(f for _, f in g.call_flops)
        per_call = flops_per_sample(g.call_flops, 2)
        assert run_cost(g.stats.full_calls, g.stats.cached_calls, per_call) * 2 == pytest.approx(direct)
    model, table = setup
    ctx, y = table([0])
    x = torch.randn(1, 3, 16, 16)
    with torch.inference_mode(), flop_counter() as mode:
        model(x, torch.full((1,), 0.5), ctx, y)
    with torch.inference_mode(), flop_counter() as mode_blocks:
        e = model.embed(x, torch.full((1,), 0.5), ctx, y)
        model.run_blocks(e)
    counts = mode_blocks.get_flop_counts()["Global"]
    assert any("scaled_dot_product" in str(op) for op in counts)  # CPU attention is counted
    assert mode.get_total_flops() > mode_blocks.get_total_flops() > 0


def test_cli_json_and_pictures(setup, tmp_path, monkeypatch):
    from PIL import Image
    loaded = []
    monkeypatch.setattr(bench, "load_testbed_model", lambda name: loaded.append(name) or setup)
    out = tmp_path / "out"
    result = bench.main(["--steps", "6", "--seeds", "1", "--intervals", "2", "--repeats", "1",
                         "--json", str(tmp_path / "r.json"), "--out", str(out), "--no-progress"])
    data = json.loads((tmp_path / "r.json").read_text())
    assert data == json.loads((out / "results.json").read_text())
    assert data["model"] == "testbed" and data["steps"] == 6 and data["seeds"] == 1
    assert loaded == ["shapes"] and data["testbed"] == "shapes" and data["skipped"] == {}
    assert data["resolution"] == [32, 32] and data["timing_only"] is False
    methods = [r["method"] for r in data["runs"]]
    assert methods == ["none", "freqca", "reuse", "taylor", "frdiff", "adaptive", "freqca-adaptive",
                       "reuse-adaptive", "feb", "feb", "feb", *bench.BUDGETED, "auto"]
    assert all(r["block_ratio"] <= r["budget_ratio"] for r in data["runs"] if r["method"] in bench.BUDGETED)
    for r in data["runs"]:
        assert all(key in r for key in CONTRACT), r
        assert 1 <= r["full_steps"] <= 6 and 0 < r["nfe_ratio"] <= 1
        assert r["wall_s"] > 0 and r["speedup"] > 0 and r["flops_speedup"] > 0
        assert r["cache_bytes"] >= 0
        if r["method"] == "none":
            assert r["psnr"] is None and r["ssim"] == 1.0 and r["rel_l1"] == 0.0
            assert r["full_steps"] == 6 and r["flops_speedup"] == 1.0
        else:
            assert r["psnr"] is None or r["psnr"] > 0
            assert -1 <= r["ssim"] <= 1 and r["rel_l1"] >= 0
    fixed = [r for r in data["runs"] if r["method"] in ("freqca", "reuse", "taylor", "frdiff")]
    assert all(r["full_steps"] == 4 and r["flops_speedup"] > 1.2 for r in fixed)
    feb = [r for r in data["runs"] if r["method"] == "feb"]
    assert [r["params"]["level"] for r in feb] == ["quality", "balanced", "fast"]
    assert all(r["full_steps"] == r["budget"] == len(r["params"]["table"].replace("b", "")) for r in feb)
    assert all(r["timeline"] == r["params"]["table"].replace("b", "c") for r in feb)
    auto = next(r for r in data["runs"] if r["method"] == "auto")  # calibrated on other seeds, then run
    assert auto["full_steps"] == auto["budget"] == 4 and auto["timeline"].endswith("F")
    assert auto["params"]["chosen"] in auto["params"]["scores"] and auto["psnr"] > 0
    assert [i for i, c in enumerate(auto["timeline"]) if c == "F"] == auto["params"]["chosen_full_steps"]
    calibrated = [r for r in data["runs"] if r["method"].endswith("adaptive")]
    assert all(r["params"]["target_full_steps"] == 4 for r in calibrated)
    assert all(r["params"]["tolerance"] > 0 for r in calibrated if r["method"] != "adaptive")
    for name in ("grid.png", "pareto.png"):
        with Image.open(out / name) as im:
            im.verify()
    assert "| method |" in (out / "table.md").read_text()
    assert result["runs"][0]["method"] == "none"


def test_cli_runs_the_chosen_testbed(setup, tmp_path, monkeypatch):
    """``--testbed photos``: its model, image size, prompt walks and FEB tables; FEB rows are skipped, and the
    JSON says so, where a testbed has no FEB table."""
    from dataclasses import replace

    from freqca_core.methods.feb import LEVELS
    from freqca_lab.feb_tables import load_tables, pick_table
    from freqca_lab.testbed import get_testbed
    loaded = []
    monkeypatch.setattr(bench, "load_testbed_model", lambda name: loaded.append(name) or setup)
    argv = ["--testbed", "photos", "--steps", "5", "--seeds", "2", "--intervals", "2", "--repeats", "1",
            "--methods", "freqca,feb,adaptive", "--json", str(tmp_path / "r.json"), "--out", str(tmp_path / "o"),
            "--no-progress"]
    bench.main(argv)
    data = json.loads((tmp_path / "r.json").read_text())
    bed, names = get_testbed("photos"), setup[1].names
    assert loaded == ["photos"] and data["testbed"] == "photos" and data["resolution"] == [24, 40]
    assert data["prompts"] == [names[p] for p in bed.report_prompts(2)]
    assert data["calibration"]["prompts"] == [names[p] for p in bed.calib_prompts(2)]
    assert [r["method"] for r in data["runs"]] == ["none", "freqca", "adaptive", "feb", "feb", "feb"]
    tables, _ = load_tables(bed.feb_table)
    assert [r["params"]["table"] for r in data["runs"][3:]] == [pick_table(tables, lv, 5).timeline(5) for lv in LEVELS]
    assert data["skipped"] == {} and "**testbed photos**" in bench.report.markdown_table(data)

    monkeypatch.setattr(bench, "get_testbed", lambda name: replace(get_testbed(name), weights_dir=tmp_path))
    bench.main(argv)
    data = json.loads((tmp_path / "r.json").read_text())
    assert [r["method"] for r in data["runs"]] == ["none", "freqca", "adaptive"]
    assert "feb_table.json absent" in data["skipped"]["feb"]


def test_flux_timing_mode_with_a_tiny_model():
    model, _ = tiny(guidance_embed=True)
    spec = bench.Spec(model="flux-timing", steps=5, seeds=1, intervals=(2,), repeats=1)
    result, _ = bench.run_flux_timing(spec, bench.Progress(False), model=model)
    assert result["timing_only"] and "fidelity not meaningful" in result["note"]
    none, cached = result["runs"]
    assert none["block_fraction"] == 1.0 and cached["full_steps"] == 4
    assert cached["block_fraction"] == pytest.approx(4 / 5)
    assert cached["psnr"] is None and cached["speedup_vs_ideal"] > 0 and cached["median_call_speedup"] > 0
    assert "timing only" in bench.report.markdown_table(result)


def test_table_marks_best_psnr_per_budget_even_for_a_baseline():
    def row(method, budget, full, psnr, **params):
        return {"method": method, "params": {"warmup": 3, "interval": 6, "threshold": 0.1, **params},
                "budget": budget, "full_steps": full, "nfe_ratio": full / 50, "speedup": 50 / full,
                "flops_speedup": 50 / full, "psnr": psnr, "ssim": 0.9, "rel_l1": 0.1, "cache_bytes": 0,
                "wall_s": 1.0}
    result = {"model": "testbed", "steps": 50, "seeds": 2, "resolution": [32, 32], "cfg": 3.0, "runs": [
        row("none", 50, 50, None), row("freqca", 10, 10, 30.0), row("reuse", 10, 10, 31.0),
        row("adaptive", 10, 11, 40.0), row("freqca", 8, 8, 25.0), row("adaptive", 8, 8, 24.0)]}
    lines = bench.report.markdown_table(result).splitlines()
    bold = [line for line in lines if "**" in line and line.startswith("|")]
    assert len(bold) == 2
    assert bold[0].startswith("| reuse") and "**31.00**" in bold[0]  # the over-budget run is not eligible
    assert bold[1].startswith("| FreqCa") and "**25.00**" in bold[1]
    assert any("11 †" in line for line in lines)


def test_stepwise_sampling_matches_the_testbed_sampler(setup):
    from freqca_lab.runner import Sampling
    from freqca_lab.testbed.sampling import euler_sample, flux_sigmas, seeded_noise
    model, table = setup
    ctx, y = table([table.null_id, table.null_id, 0, 5])

    def velocity(x, sigma):
        v_uncond, v_cond = model(torch.cat([x, x]), torch.full((4,), sigma), ctx, y).chunk(2)
        return v_uncond + 3.0 * (v_cond - v_uncond)

    with torch.inference_mode():
        expected = euler_sample(velocity, seeded_noise([11, 12], (16, 16)), flux_sigmas(6, 2.0))
    assert torch.equal(run(setup, None, steps=6).images, expected)
    # two runs advanced in turns give the same images and counts as run one after the other
    a = Sampling(model, [0, 5], [11, 12], 6, 3.0, None, table=table, size=(16, 16))
    b = Sampling(model, [0, 5], [11, 12], 6, 3.0, freqca(2), table=table, size=(16, 16))
    for _ in range(6):
        a.step()
        b.step()
    ga, gb = a.finish(), b.finish()
    alone = run(setup, freqca(2), steps=6)
    assert torch.equal(ga.images, expected) and torch.equal(gb.images, alone.images)
    assert gb.block_calls == alone.block_calls == gb.full_steps * gb.n_blocks and ga.block_calls == 6 * ga.n_blocks


def test_measured_call_flops_match_a_fully_counted_run(setup):
    model, table = setup
    spec = bench.Spec(steps=8, seeds=1)
    none = bench.measure_flops(model, table, "none", 0, 11, spec, (16, 16), None)
    assert none[0] > 0 and none[1] == 0.0
    for name, method in (("freqca", freqca(3)), ("taylor", CacheController(make_method("taylor", taylor_order=2),
                                                                           FixedSchedule(3, 3)))):
        per_call = bench.measure_flops(model, table, name, 0, 11, spec, (16, 16), None, full_flops=none[0])
        g = generate(model, [0], [11], 8, 3.0, method, table=table, size=(16, 16), count_flops=True)
        assert run_cost(g.stats.full_calls, g.stats.cached_calls, per_call) == pytest.approx(
            sum(f for _, f in g.call_flops))
    assert bench.measure_flops(model, table, "adaptive", 0, 11, spec, (16, 16), None, full_flops=none[0]) == (
        none[0], 0.0)
