"""FEB-Cache core: cache tables, derived tables, exposure scaling, attention cache and the TinyFlux hook."""
from __future__ import annotations

import json

import pytest
import torch

from freqca_core.methods.feb import ATTN, SKIP, FULL, LEVELS, AttentionCache, CacheTable, default_table, exposure_scale
from freqca_lab.feb_tables import derive_table, load_tables, pick_table, save_tables
from freqca_lab.testbed.model import TinyFlux, TinyFluxConfig, attention
import runs

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------- tables

def test_table_identity_and_forced_steps():
    t = CacheTable.parse("bbabFab", last_full=False)
    assert t.timeline() == "FbabFab"  # step 0 forced full
    assert [t.action(i) for i in range(7)] == [FULL, SKIP, ATTN, SKIP, FULL, ATTN, SKIP]
    assert t.counts() == {"full": 2, "attn": 2, "skip": 3}
    t2 = CacheTable.parse("FabFab", last_full=True)
    assert t2.action(5, 6) == FULL and t2.timeline() == "FabFaF"


def test_table_resampling_by_fraction():
    t = CacheTable.parse("FFbbbbbbab", last_full=False)  # 10 reference steps
    assert t.timeline(20) == "FF" + "FF" + "b" * 12 + "aabb"  # each reference step covers two steps
    assert t.timeline(5) == "Fbbbb"  # reference steps 1, 3, 5, 7, 9 (step 0 forced full)
    assert CacheTable.parse("FFbbbbbaab", last_full=False).timeline(5) == "Fbbab"
    assert sum(t.counts(37).values()) == 37
    assert t.action(0, 3) == FULL
    t_last = CacheTable.parse("Fbbbbbbbbb", last_full=True)
    assert all(t_last.action(n - 1, n) == FULL for n in (2, 7, 50))


def test_table_validation_errors():
    with pytest.raises(ValueError, match="action at step 1"):
        CacheTable([FULL, "blend"])
    with pytest.raises(ValueError, match="letters"):
        CacheTable.parse("FxB")
    with pytest.raises(ValueError, match="table steps"):
        CacheTable([])
    t = CacheTable.parse("Fab")
    with pytest.raises(ValueError, match="step must be an integer in \\[0, 4\\]"):
        t.action(5, 5)
    with pytest.raises(ValueError, match="n_steps"):
        t.action(0, 0)
    with pytest.raises(ValueError, match="level"):
        derive_table([0.1] * 5, [0.1] * 5, level="turbo")
    with pytest.raises(ValueError, match="mlp_change"):
        derive_table([0.1] * 5, [0.1] * 4)
    with pytest.raises(ValueError, match=r"attn_change\[2\]"):
        derive_table([0.1, 0.1, -1.0], [0.1] * 3)
    with pytest.raises(ValueError, match="delta"):
        exposure_scale(torch.ones(1), torch.ones(1), 0.5, 0.0)
    with pytest.raises(ValueError, match="prediction"):
        exposure_scale(torch.ones(1), torch.ones(1), 0.5, 0.9, "x0")


def test_table_json_roundtrip_and_errors(tmp_path):
    t = derive_table([0.0] + [0.05] * 19, [0.0] + [0.1] * 19, level="balanced")
    t.save(tmp_path / "t.json")
    back = CacheTable.load(tmp_path / "t.json")
    assert back.actions == t.actions and back.last_full == t.last_full and back.meta["level"] == "balanced"
    with pytest.raises(FileNotFoundError, match="not found"):
        CacheTable.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        CacheTable.load(tmp_path / "bad.json")
    (tmp_path / "bad2.json").write_text(json.dumps({"actions": ["full", "nope"]}))
    with pytest.raises(ValueError, match="bad2.json.*action at step 1"):
        CacheTable.load(tmp_path / "bad2.json")
    (tmp_path / "bad3.json").write_text(json.dumps({"steps": 3, "actions": ["full"]}))
    with pytest.raises(ValueError, match="'steps' is 3"):
        CacheTable.load(tmp_path / "bad3.json")
    tables = {lv: [default_table(28, lv), default_table(50, lv)] for lv in LEVELS}
    save_tables(tmp_path / "set.json", tables, {"note": "x"})
    loaded, meta = load_tables(tmp_path / "set.json")
    assert meta == {"note": "x"} and set(loaded) == set(LEVELS)
    assert pick_table(loaded, "fast", 30).n_ref == 28 and pick_table(loaded, "fast", 45).n_ref == 50
    with pytest.raises(ValueError, match="not a FEB table set"):
        load_tables(tmp_path / "t.json")


def _profile(n: int, attn_scale: float, mlp_scale: float) -> tuple[list[float], list[float]]:
    """U-shaped per-step change (large at both ends), like the testbed's."""
    shape = [0.0] + [0.06 + 0.2 * ((i / n - 0.5) * 2) ** 4 for i in range(1, n)]
    return [attn_scale * s for s in shape], [mlp_scale * s for s in shape]


@pytest.mark.parametrize("n", [20, 28, 50])
@pytest.mark.parametrize("scales", [(0.5, 1.5), (1.0, 1.0), (1.5, 0.8)])
def test_derive_table_monotone_in_level(n, scales):
    a, m = _profile(n, *scales)
    counts = [derive_table(a, m, level=lv).counts() for lv in LEVELS]
    fulls = [c["full"] for c in counts]
    computed_mlp = [c["full"] + c["attn"] for c in counts]
    assert fulls == sorted(fulls, reverse=True) and fulls[0] > fulls[-1]
    assert computed_mlp == sorted(computed_mlp, reverse=True)
    for lv in LEVELS:
        t = derive_table(a, m, level=lv)
        assert t.action(0) == FULL and t.action(n - 1) == FULL


def test_derive_table_frequency_guided():
    """Slow attention / fast MLP -> 'attn' steps; identical inputs -> identical table (deterministic)."""
    a, m = [0.0] + [0.02] * 29, [0.0] + [0.15] * 29
    t = derive_table(a, m, level="balanced")
    c = t.counts()
    assert c["attn"] > 0 and c["attn"] > c["full"] - 2
    assert derive_table(a, m, level="balanced").actions == t.actions
    # both components equally fast: attention reaches its threshold first, no 'attn' steps
    assert derive_table(m, m, level="balanced").counts()["attn"] == 0
    # no change at all: only max_run forces full steps
    still = derive_table([0.0] * 30, [0.0] * 30, level="fast")
    assert "b" * 6 in still.timeline() and "b" * 7 not in still.timeline()
    assert derive_table(torch.tensor(a), torch.tensor(m), level="balanced").actions == t.actions


@pytest.mark.parametrize("n", [10, 28, 50])
def test_default_table(n):
    tables = {lv: default_table(n, lv) for lv in LEVELS}
    fulls = [tables[lv].counts()["full"] for lv in LEVELS]
    assert fulls == sorted(fulls, reverse=True)
    for t in tables.values():
        assert t.n_ref == n and t.action(0) == FULL and t.action(n - 1) == FULL
    assert tables["quality"].counts()["skip"] == 0
    warm = max(1, round(0.1 * n))
    assert tables["balanced"].timeline()[:warm + 6] == "F" * warm + "FabFab"


# ---------------------------------------------------------------------------------------- exposure

def test_exposure_identity_and_eps():
    out, x = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert torch.equal(exposure_scale(out, x, 0.4, 1.0, "flow"), out)
    assert torch.equal(exposure_scale(out, x, 0.4, 1.0, "eps"), out)
    torch.testing.assert_close(exposure_scale(out, None, 0.4, 0.965, "eps"), out / 0.965)


@pytest.mark.parametrize("delta", [0.95, 0.965, 1.035])
def test_exposure_flow_exact(delta):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 3, 8, 8, generator=g, dtype=torch.float64), torch.randn(3, 3, 8, 8, generator=g,
                                                                                       dtype=torch.float64)
    sigma = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)
    s = sigma.view(-1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * eps
    v = eps - x0
    v2 = exposure_scale(v, x_t, sigma, delta, "flow")
    torch.testing.assert_close(v2, eps / delta - x0, rtol=1e-12, atol=1e-12)
    # x0 prediction kept; noise prediction scaled by 1/delta
    torch.testing.assert_close(x_t - s * v2 - (x_t - s * v), -s * (1 / delta - 1) * eps)
    # scalar sigma broadcasts the same way
    v3 = exposure_scale(v[1:2], x_t[1:2], 0.5, delta, "flow")
    torch.testing.assert_close(v3, v2[1:2])
    # delta < 1 enlarges the noise component of the prediction
    eps_hat = x_t + (1 - s) * v2
    assert (eps_hat.norm() > eps.norm()) == (delta < 1)


# ----------------------------------------------------------------------------------- attention cache

def _fake_attention(q, k, v, pe=None):
    return (q + 2 * k - v).transpose(1, 2).flatten(2)  # [B, H, L, Dh] -> [B, L, H*Dh]


def test_attention_cache_store_serve_bytes():
    cache = AttentionCache()
    q = torch.randn(4, 2, 5, 3)
    rec = cache.override(["u", "c"], serve=False)
    outs = [rec(_fake_attention, q * (i + 1), q, q) for i in range(3)]
    assert len(cache) == 6 and cache.nbytes == 6 * 2 * 5 * 6 * 4
    torch.testing.assert_close(cache.serve("c", 1), outs[1][2:])
    play = cache.override(["u", "c"], serve=True)
    calls = []
    func = lambda *a: calls.append(1) or _fake_attention(*a)  # noqa: E731
    served = [play(func, q * 7, q, q) for _ in range(3)]
    assert not calls and cache.hits == 3 and cache.misses == 0
    for s, o in zip(served, outs):
        assert torch.equal(s, o) and s.data_ptr() != o.data_ptr()
    served[0].add_(1.0)  # in-place edits by the caller (ControlNet) never reach the store
    assert torch.equal(cache.serve("u", 0), outs[0][:2])
    # swapped stream order: served chunks follow the streams
    swapped = cache.override(["c", "u"], serve=True)(func, q, q, q)
    assert torch.equal(swapped, torch.cat([outs[0][2:], outs[0][:2]]))
    # a fourth call or another shape has nothing stored: computed (miss)
    play(func, q, q, q)
    cache.override(["u", "c"], serve=True)(func, torch.randn(4, 2, 7, 3), torch.randn(4, 2, 7, 3),
                                           torch.randn(4, 2, 7, 3))
    assert len(calls) == 2 and cache.misses == 2
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_attention_cache_offload():
    cache = AttentionCache(offload_device="cpu")
    q = torch.randn(2, 1, 4, 2, dtype=torch.float64)
    out = cache.override(["a"])(_fake_attention, q, q, q)
    assert cache.store_[("a", 0)].device.type == "cpu"
    back = cache.override(["a"], serve=True)(_fake_attention, q.float(), q.float(), q.float())
    assert back.dtype == torch.float32  # returned like the caller's tensors
    torch.testing.assert_close(back, out.float())


# ----------------------------------------------------------------------------------- TinyFlux hook

def _tiny_model():
    torch.manual_seed(0)
    model = TinyFlux(TinyFluxConfig(vec_in_dim=8, context_in_dim=12, hidden_size=32, num_heads=2, depth=1,
                                    depth_single_blocks=2, axes_dim=[4, 6, 6]))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.eval()


def _inputs(b=2, sigma=0.6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 3, 8, 8, generator=g), torch.full((b,), sigma), torch.randn(b, 5, 12, generator=g),
            torch.randn(b, 8, generator=g))


def test_tinyflux_identity_override_and_call_order():
    model = _tiny_model()
    args = _inputs()
    calls = []

    def identity(func, q, k, v, pe):
        assert func is attention
        calls.append(q.shape)
        return func(q, k, v, pe)

    with torch.no_grad():
        ref = model(*args)
        out = model(*args, attention_override=identity)
    assert torch.equal(out, ref) and len(calls) == 3  # one kernel call per block


def test_tinyflux_stored_attention_reproduces_full_call():
    model = _tiny_model()
    args = _inputs()
    cache = AttentionCache()
    with torch.no_grad():
        e = model.embed(*args)
        full = model.final(model.run_blocks(e, cache.override(["u", "c"])), e)
        again = model.final(model.run_blocks(e, cache.override(["u", "c"], serve=True)), e)
        # at another step: served attention differs from computing it, but the blocks still run
        e2 = model.embed(*_inputs(sigma=0.3, seed=1))
        served = model.final(model.run_blocks(e2, cache.override(["u", "c"], serve=True)), e2)
        fresh = model.final(model.run_blocks(e2), e2)
    torch.testing.assert_close(again, full, rtol=0, atol=0)
    assert cache.hits == 6 and cache.misses == 0
    assert not torch.allclose(served, fresh) and torch.isfinite(served).all()


# ---------------------------------------------------------------------------- FEB-Cache on the controller

def feb_controller(letters: str, delta: float = 1.0):
    from freqca_core.controller import CacheController
    from freqca_core.methods.feb import FEBMethod, FEBSchedule

    table = CacheTable.parse(letters, last_full=False)
    return CacheController(FEBMethod(table, delta), FEBSchedule(table))


def drive(ctrl, steps: int, model) -> list:
    """A run of ``steps`` with one batched call per step (streams uncond, cond) through ``model(plan, i,
    embedding)``; returns the plans."""
    from freqca_core.spectral import TokenLayout

    def call(i: int, sigma: float):
        embedding = torch.full((2, 4, 3), float(i))
        plan = ctrl.plan(sigma, ("u", "c"), 2, TokenLayout.grid(2, 2), embedding=embedding)
        model(plan, i, embedding)
        return plan

    return runs.drive(ctrl, [1.0 - i / steps for i in range(steps + 1)], call)


def test_feb_both_steps_reuse_block_residuals_with_the_current_embedding():
    ctrl = feb_controller("FbbFb")
    residual = lambda i: torch.arange(24.0).reshape(2, 4, 3) * (i + 1)  # noqa: E731  crf - embedding at step i

    def model(plan, i, embedding):
        if plan.full:
            ctrl.record(plan, embedding + residual(i), embedding=embedding)
        else:  # the stored residual of the last step whose blocks ran, on today's embedding
            last = 0 if i < 3 else 3
            assert torch.equal(plan.crf, embedding + residual(last))

    plans = drive(ctrl, 5, model)
    assert [p.full for p in plans] == [True, False, False, True, False]
    assert ctrl.stats.timeline() == "FccFc"


def test_feb_residual_needs_the_embedding():
    from freqca_core.spectral import TokenLayout

    ctrl = feb_controller("Fb")
    ctrl.start_run([1.0, 0.5, 0.0])
    full = ctrl.plan(1.0, (0,), 1, TokenLayout.grid(2, 2), embedding=torch.zeros(1, 4, 3))
    ctrl.record(full, torch.ones(1, 4, 3), embedding=torch.zeros(1, 4, 3))
    plan = ctrl.plan(0.5, (0,), 1, TokenLayout.grid(2, 2))  # the adapter gave no embedding
    assert plan.full and "embedding" in plan.reason
    ctrl.record(plan, torch.ones(1, 4, 3))  # nor here: not stored, warned
    assert any("no embedding" in w for w in ctrl.stats.warnings)


def test_feb_attention_steps_serve_the_stored_kernels():
    ctrl = feb_controller("FaaFa")
    kernel_calls = []

    def kernel(q):
        kernel_calls.append(q.clone())
        return q * 2

    def model(plan, i, embedding):
        assert plan.full  # blocks run at a steps too
        override = ctrl.attention_override(plan)
        outs = [override(kernel, torch.full((2, 5, 3), float(i * 10 + j))) for j in range(3)]  # 3 layers
        if plan.attention == "serve":  # the last full step's kernel outputs, per layer
            last = 0 if i < 3 else 3
            assert all(torch.equal(o, torch.full((2, 5, 3), float(last * 10 + j)) * 2) for j, o in enumerate(outs))
        ctrl.record(plan, embedding + 1, embedding=embedding)

    drive(ctrl, 5, model)
    assert len(kernel_calls) == 2 * 3  # computed at the two full steps only
    assert ctrl.stats.timeline() == "FaaFa" and ctrl.stats.attention_steps == 3
    stats = ctrl.end_run()
    assert stats.attention_served == 9 and stats.attention_computed == 0 and len(ctrl.method.attention) == 0


def test_feb_exposure_scaling_only_at_reusing_calls():
    ctrl = feb_controller("FbaF", delta=0.9)
    x, out = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)

    def model(plan, i, embedding):
        if plan.full:
            ctrl.record(plan, embedding + 1, embedding=embedding)
        got = ctrl.finish_call(plan, out, x)
        reused = not plan.full or plan.attention == "serve"
        expected = exposure_scale(out, x, plan.sigma, 0.9, "flow") if reused else out
        assert torch.equal(got, expected) and (reused == (i in (1, 2)))

    drive(ctrl, 4, model)
    plain = feb_controller("Fb", delta=1.0)
    plans = drive(plain, 2, lambda plan, i, e: plan.full and plain.record(plan, e + 1, embedding=e))
    assert plain.finish_call(plans[1], out, x) is out


def test_registry_builds_feb_with_the_levels_table_as_its_schedule():
    from freqca_core import CacheConfig
    from freqca_core.methods.feb import FEBMethod, FEBSchedule

    controller = CacheConfig(method="feb", feb_level="fast", exposure_delta=0.98).new_controller(20)
    assert isinstance(controller.method, FEBMethod) and isinstance(controller.schedule, FEBSchedule)
    assert controller.method.table.timeline() == default_table(20, "fast").timeline()
    assert controller.method.delta == 0.98 and controller.schedule.table is controller.method.table
