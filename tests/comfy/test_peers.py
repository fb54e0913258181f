"""The peer comparison script's helpers (freqca_lab/comfy/peers.py): the summary, the node sweep, the counter."""
from __future__ import annotations

from unittest import mock

import pytest

from freqca_lab.comfy.harness import sample
from freqca_lab.bench import CALIB_SEED_BASE, REPORT_SEED_BASE, calib_prompts, report_prompts
from freqca_lab.comfy.harness import apply_node
from freqca_lab.comfy.peers import (CALIBRATION_IMAGE, PACK, Row, best_within, count_block_work, image_set, markdown,
                                    merged, node_inputs, pack_settings, row_from_json, row_json, run_peer_node,
                                    summary)


def row(source: str, budget: float | None, psnr: float | None, error: str | None = None, **settings) -> Row:
    return Row(source, PACK if source == "pack" else "peer pack", "Node", settings, budget=budget, psnr=psnr,
               error=error)


def test_best_within_takes_the_best_psnr_under_the_cap_and_skips_failures():
    rows = [row("pack", 0.36, 30.0, n=1), row("pack", 0.30, 32.0, n=2), row("pack", 0.40, 50.0, n=3),
            row("pack", None, None, error="boom", n=4), row("pack", 0.20, 32.0, n=5)]
    assert best_within(rows, 0.36).settings == {"n": 5}  # tie at 32 dB: the cheaper
    assert best_within(rows, 0.28).settings == {"n": 5}
    assert best_within([row("pack", 0.1 + 0.2, 40.0)], 0.3).psnr == 40.0  # 0.30000000000000004: at the cap
    assert best_within(rows, 0.10) is None


def test_summary_compares_pack_and_peers_at_each_cap():
    rows = [row("pack", 0.36, 35.0), row("pack", 0.20, 29.0), row("peer", 0.33, 36.5), row("peer", 0.25, 27.0)]
    table = summary(rows, caps=(0.36, 0.28, 0.20))
    assert [e["margin_db"] for e in table] == [pytest.approx(-1.5), pytest.approx(2.0), None]
    assert table[2]["pack"].psnr == 29.0 and table[2]["peer"] is None
    rows.append(Row("peer", "broken pack", "Broken", {"t": 1}, error="AttributeError: no txt_norm"))
    peers = [{"pack": "broken pack", "node": "Broken", "commit": "a" * 40, "load": "imported", "sweep": {"t": [1]},
              "fixed": {}}]
    text = markdown(rows, peers, {"comfyui": "0", "steps": 5, "images": [(1, 2)]}, caps=(0.36, 0.28, 0.20))
    assert "| 0.36 |" in text and "-1.50 dB" in text and "+2.00 dB" in text
    assert f"`{'a' * 12}` | imported | t [1] | 0/1; error: AttributeError: no txt_norm |" in text


def test_row_group_names_the_method_and_taylor_order():
    assert row("pack", 0.3, 30.0, method="taylor", taylor_order=1, interval=4).group == f"{PACK} taylor-1"
    assert row("pack", 0.3, 30.0, method="reuse", interval=4).group == f"{PACK} reuse"
    assert row("peer", 0.3, 30.0, rel_l1_thresh=0.4).group == "Node"


class V1Node:
    """A ComfyUI V1 node, as the peer packs write them."""

    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "kind": (["a", "b"],), "thresh": ("FLOAT", {"default": 0.4})},
                "optional": {"extra": ("EXTRA",)}}

    def apply(self, model, kind, thresh):
        return ((model, kind, thresh),)


def test_v1_node_defaults_and_application(comfyui):
    assert node_inputs(V1Node)["kind"] == {"default": "a", "options": ["a", "b"]}
    assert node_inputs(V1Node)["thresh"]["default"] == 0.4
    assert run_peer_node(V1Node, "M", {"thresh": 0.7}) == ("M", "a", 0.7)


def test_every_setting_of_the_node_sweep_is_accepted_by_the_node(pack, flux):
    from comfyui_freqca.nodes.freqca_node import FreqCaAccelerate

    methods = node_inputs(FreqCaAccelerate)["method"]["options"]
    settings = pack_settings(None, intervals=(2, 7))
    assert {s["method"] for s in settings} == set(methods)
    assert {s.get("taylor_order") for s in settings if s["method"] in ("taylor", "res-taylor")} == {1, 2}
    assert {s["final_full_steps"] for s in settings if "interval" in s} == {0, 1}
    for setting in settings:
        assert apply_node(flux, **setting) is not flux


def test_counter_tells_computed_blocks_from_called_ones(comfyui, conds):
    from freqca_lab.comfy.harness import build_flux

    model = build_flux(seed=2)
    with count_block_work(model) as work:
        sample(model, *conds, steps=3)
    assert work.computed == work.called == 3 * 5
    block = model.get_model_object("diffusion_model").single_blocks[0]
    with mock.patch.object(block, "forward", lambda x, **_: x), count_block_work(model) as work:
        sample(model, *conds, steps=3)  # the block is called but computes nothing, as at TaylorSeer's forecasts
    assert (work.called, work.computed) == (3 * 5, 3 * 4)


def test_the_sweep_takes_warm_ups_and_final_steps(pack):
    settings = pack_settings(["res-taylor"], intervals=(4,), finals=(1, 2), warmups=(1, 3))
    assert {(s["warmup_steps"], s["final_full_steps"], s["taylor_order"]) for s in settings} == {
        (w, f, o) for w in (1, 3) for f in (1, 2) for o in (1, 2)}
    assert all("warmup_steps" not in s for s in pack_settings(["reuse"], intervals=(4,)))  # the node's default


def test_merge_keeps_earlier_rows_that_were_not_measured_again(tmp_path):
    import json

    header = {"steps": 5, "images": [(1, 2)]}
    old = [row("pack", 0.3, 30.0, method="reuse", interval=4), row("pack", 0.2, float("inf"), method="auto"),
           row("peer", 0.3, 20.0, t=1)]
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"header": {**header, "images": [[1, 2]], "pack_commit": "abc",
                                           "merged": [{"file": "older.json", "pack_commit": "0ld"}]},
                                "peers": [{"node": "Node", "pack": "peer pack"}, {"node": "Gone", "pack": "x"}],
                                "rows": [row_json(r) for r in old]}))
    assert [row_from_json(row_json(r)) for r in old] == old  # the JSON round trip, an infinite PSNR included
    new = [row("pack", 0.3, 31.0, method="reuse", interval=4)]
    rows, peers = merged(path, new, [{"node": "Node", "pack": "peer pack", "commit": "new"}], header)
    assert [r.psnr for r in rows] == [float("inf"), 20.0, 31.0]  # the reuse row measured now replaces its old one
    assert [p["node"] for p in peers] == ["Gone", "Node"] and peers[1]["commit"] == "new"
    assert [m["pack_commit"] for m in header["merged"]] == ["0ld", "abc"]  # what the old file had merged, then it
    with pytest.raises(SystemExit, match="another step count"):
        merged(path, new, [], {"steps": 6, "images": [(1, 2)]})


def test_json_writes_an_infinite_psnr_as_null():
    exact = Row("pack", PACK, "Node", {}, budget=1.0, psnr=float("inf"), psnr_per_image=[float("inf"), 30.0])
    assert (row_json(exact)["psnr"], row_json(exact)["psnr_per_image"]) == (None, [None, 30.0])


def test_images_are_neither_the_benchmarks_reported_nor_its_calibration_ones():
    k = 12
    assert CALIBRATION_IMAGE not in image_set(k)  # auto's first run is on none of the measured images
    bench_pairs = set(zip(range(REPORT_SEED_BASE, REPORT_SEED_BASE + k), report_prompts(k)))
    bench_pairs |= set(zip(range(CALIB_SEED_BASE, CALIB_SEED_BASE + k), calib_prompts(k)))
    seeds = [seed for seed, _ in image_set(k)]
    assert not set(seeds) & {seed for seed, _ in bench_pairs} and len(set(seeds)) == k
    assert {prompt for _, prompt in image_set(3)}.isdisjoint(report_prompts(3) + calib_prompts(3))
