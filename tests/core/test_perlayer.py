"""Per-layer baselines (``freqca_lab.perlayer``): forecasts on polynomial trajectories, the per-layer assembly,
block counts and cache memory from shapes, and their benchmark rows."""
from __future__ import annotations

import pytest
import torch

from freqca_core.schedule import FixedSchedule
from freqca_lab import bench
from freqca_lab.perlayer import (DBCache, FeatureHistory, PerLayerTaylorSeer, StepCache, assemble, spread_steps,
                                 taylorseer_weights)
from freqca_lab.runner import generate
import runs

pytestmark = pytest.mark.usefixtures("one_torch_thread")
STEPS = 10


@pytest.fixture(scope="module")
def setup():
    return runs.tiny_testbed(depth=2)


def run(setup, method, steps=STEPS):
    model, table = setup
    return generate(model, [0, 5], [11, 12], steps, 3.0, method, table=table, size=(16, 16))


def history(steps, trajectory) -> FeatureHistory:
    h = FeatureHistory(len(steps))
    for s in reversed(steps):  # oldest first, as a run pushes them
        h.push(s, trajectory(s))
    return h


def poly(*coeffs):
    base = [torch.randn(3, 4, generator=torch.Generator().manual_seed(k), dtype=torch.float64) for k in range(3)]
    return lambda t: sum(c * b * t ** k for k, (c, b) in enumerate(zip(coeffs, base)))


@pytest.mark.parametrize("steps", [[9, 6, 3], [12, 7, 5], [20, 11, 4]])
def test_taylor_series_is_exact_on_polynomials_of_its_degree(steps):
    linear, quadratic = poly(1.0, 0.7), poly(1.0, 0.7, -0.05)
    target = steps[0] + 4
    for order in (1, 2):  # the paper's series: exact on linear trajectories at any spacing
        h = history(steps[: order + 1], linear)
        torch.testing.assert_close(h.forecast(taylorseer_weights(h.steps, target, order)), linear(target))
    exact = StepCache(FixedSchedule(), order=2, exact=True)
    h = history(steps, quadratic)
    torch.testing.assert_close(h.forecast(exact.weights(h, target)), quadratic(target))
    # the paper's order-2 series divides backward differences by the newest gap: off by c2 * d * x on a
    # uniform quadratic (d the gap, x the distance), not exact
    h = history([9, 6, 3], quadratic)
    series = h.forecast(taylorseer_weights(h.steps, 13, 2))
    c2 = poly(0.0, 0.0, -0.05)(1.0)
    torch.testing.assert_close(series - quadratic(13), -c2 * 3 * 4)
    assert taylorseer_weights([9, 6], 13, 0) == [1.0, 0.0]  # order 0: reuse
    assert taylorseer_weights([9], 13, 2) == [1.0]  # falls back to what the history supports


def test_assembly_of_the_captured_modules_reproduces_the_blocks(setup):
    model, table = setup
    ctx, y = table([0, 5])
    x = torch.randn(2, 3, 16, 16)
    e = model.embed(x, torch.full((2,), 0.6), ctx, y)
    captured = {}
    handles = [m.register_forward_hook(lambda _m, _i, out, k=k: captured.__setitem__(k, out))
               for k, m in PerLayerTaylorSeer.modules(model).items()]
    crf = model.run_blocks(e)
    for h in handles:
        h.remove()
    assert len(captured) == 4 * 2 + 2
    torch.testing.assert_close(assemble(model, e, captured.__getitem__), crf)


def test_taylorseer_counts_blocks_and_cache_from_shapes(setup):
    model, _ = setup
    ref = run(setup, None)
    n_blocks = len(model.double_blocks) + len(model.single_blocks)
    assert torch.equal(run(setup, PerLayerTaylorSeer(FixedSchedule(1, 1), 2)).images, ref.images)
    batch, n_img, n_txt, dim = 4, 64, 2, 32  # cond + uncond of 2 seeds, 8x8 tokens, 2 text tokens
    per_step = 2 * (2 * batch * n_img * dim + 2 * batch * n_txt * dim) + 2 * batch * (n_img + n_txt) * dim
    for order in (1, 2):
        out = run(setup, PerLayerTaylorSeer(FixedSchedule(3, 3), order))
        assert out.full_steps == len(FixedSchedule(3, 3).full_steps(STEPS)) == 5
        assert out.block_calls == out.full_steps * n_blocks
        assert out.stats.cached_steps == STEPS - 5
        assert out.cache_bytes == (order + 1) * per_step * 4  # float32
        assert not torch.equal(out.images, ref.images) and torch.isfinite(out.images).all()


def test_dbcache_runs_its_front_blocks_at_every_step(setup):
    model, _ = setup
    ref = run(setup, None)
    n_blocks = len(model.double_blocks) + len(model.single_blocks)
    assert torch.equal(run(setup, DBCache(FixedSchedule(1, 1), 1)).images, ref.images)
    for front in (1, 3):  # a front inside the double blocks and one reaching into the single blocks
        out = run(setup, DBCache(FixedSchedule(3, 3), order=1, front=front))
        assert out.full_steps == 5 and out.stats.cached_steps == 5
        assert out.block_calls == 5 * n_blocks + 5 * front
        assert out.cache_bytes == 2 * 4 * 64 * 32 * 4  # order + 1 residuals of the image rows, float32
        assert torch.isfinite(out.images).all() and not torch.equal(out.images, ref.images)
    with pytest.raises(ValueError, match="front"):
        run(setup, DBCache(FixedSchedule(3, 3), front=n_blocks))


def test_spread_steps():
    assert spread_steps(50, 18, 3, 1) == [0, 1, 2] + [2 + round(j * 47 / 15) for j in range(1, 15)] + [49]
    assert len(spread_steps(50, 10, 2, 0)) == 10 and spread_steps(50, 10, 2, 0)[:2] == [0, 1]
    assert spread_steps(10, 3, 3, 0) == [0, 1, 2]


def test_budgeted_bench_rows_fit_their_block_budget(setup):
    model, table = setup
    spec = bench.Spec(steps=12, seeds=1, repeats=1, budgeted=tuple(bench.BUDGETED))
    n_blocks = len(model.double_blocks) + len(model.single_blocks)
    configs = bench.budgeted_configs(spec, [6, 4], n_blocks)
    assert {c.method for c in configs} == set(bench.BUDGETED)
    runs, _ = bench.run_configs(model, table, spec, [bench.Config("none", {}, 12, lambda: None)] + configs,
                                bench.Progress(False), size=(16, 16), seeds=[11], prompts=[0])
    for r in runs[1:]:
        assert r["block_ratio"] <= r["budget_ratio"] == r["budget"] / 12
        assert r["cache_bytes"] > 0 and r["flops_speedup"] > 1 and r["psnr"] > 0
        if r["method"].startswith("dbcache"):  # its front block runs at cached steps: fewer full steps fit
            assert r["full_steps"] < r["budget"]
            assert r["block_calls"] == r["full_steps"] * n_blocks + 12 - r["full_steps"]
        else:  # spread schedules take the whole budget; fixed ones the smallest interval that fits
            assert r["block_calls"] == r["full_steps"] * n_blocks
            spread = r["params"]["schedule"] == "spread"
            assert r["full_steps"] == r["budget"] if spread else r["full_steps"] <= r["budget"]


def test_cache_size_from_shapes_matches_the_measured_one_and_scales_to_flux(setup):
    from freqca_lab.perlayer import taylorseer_cache_bytes
    model, _ = setup
    out = run(setup, PerLayerTaylorSeer(FixedSchedule(3, 3), 2))
    c = model.config
    assert out.cache_bytes == taylorseer_cache_bytes(c.depth, c.depth_single_blocks, c.hidden_size, 64, 2, 2,
                                                     element_size=4, batch=4)
    flux = taylorseer_cache_bytes(19, 38, 3072, 4096, 512, 2)  # FLUX.1-dev at 1024x1024, bf16, one stream
    assert 6.0e9 < flux < 7.0e9
    crf = 3 * 4096 * 3072 * 2  # a CRF method's history of three image-token states
    assert flux / crf > 80
