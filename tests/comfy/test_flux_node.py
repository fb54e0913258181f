"""FreqCa Accelerate on Flux-family models, sampled by ComfyUI's own sampling code (real ComfyUI, CPU)."""
from __future__ import annotations

import pytest
import torch

from freqca_lab.comfy.harness import (apply_node, build_chroma, build_flux, bypass_blocks, count_block_calls,
                                     flux_conditioning, model_fingerprint, rel_l1, sample)
from freqca_lab.comfy.harness import latent_psnr as psnr
from freqca_lab.comfy.testbed_in_comfy import build_testbed_flux, pixel_latent, prompt_conditioning

STEPS = 12
N_BLOCKS = 5  # harness FLUX_CONFIG: 2 double + 3 single


def accelerate(pack, model, **inputs):
    """The nodes applied as ComfyUI would (freqca, interval 4, warm-up 2, no final full steps unless given);
    returns the patched model."""
    return apply_node(model, **{"method": "freqca", "interval": 4, "warmup_steps": 2, "final_full_steps": 0,
                                **inputs})


def expected_full_steps(steps, interval, warmup):
    from comfyui_freqca.freqca_core import FixedSchedule

    return len(FixedSchedule(warmup, interval).for_run(steps).full_steps(steps))  # as the node fits it


def test_blocks_run_only_at_full_steps(pack, flux, conds):
    fast = accelerate(pack, flux)
    with count_block_calls(flux) as calls:
        sample(fast, *conds, steps=STEPS)
    assert calls.total == expected_full_steps(STEPS, 4, 2) * N_BLOCKS
    with count_block_calls(flux) as calls:
        sample(flux, *conds, steps=STEPS)
    assert calls.total == STEPS * N_BLOCKS


def test_interval_one_is_exactly_uncached(pack, flux, conds):
    reference = sample(flux, *conds, steps=STEPS)
    assert torch.equal(sample(accelerate(pack, flux, interval=1), *conds, steps=STEPS), reference)


def assert_cached_and_sane(out: torch.Tensor, reference: torch.Tensor) -> None:
    """On random weights fidelity means little (skipping every block changes the output by ~2%): check only
    that the cached run differs (the forecast was used) and stays finite and bounded. Fidelity is tested on
    the trained testbed below."""
    assert out.shape == reference.shape and torch.isfinite(out).all()
    assert 0 < rel_l1(out, reference) < 0.5


def test_every_method_runs(pack, flux, conds):
    reference = sample(flux, *conds, steps=STEPS)
    for method in ("freqca", "reuse", "taylor", "frdiff", "feb", "res-taylor"):
        assert_cached_and_sane(sample(accelerate(pack, flux, method=method), *conds, steps=STEPS), reference)


@pytest.fixture(scope="module")
def testbed(comfyui):
    return build_testbed_flux()


@pytest.mark.parametrize("prompt", [0, 7])
def test_fidelity_on_the_trained_testbed(pack, testbed, prompt):
    """The trained model loaded into ComfyUI's Flux: FreqCa stays close to uncached where skipping is ruinous."""
    conds = prompt_conditioning(prompt)
    run = dict(steps=28, cfg=3.0, latent=pixel_latent(), seed=5)
    reference = sample(testbed, *conds, **run)
    skipped = sample(bypass_blocks(testbed), *conds, **run)
    fast = sample(accelerate(pack, testbed, interval=3, warmup_steps=3), *conds, **run)
    print(f"prompt {prompt}: PSNR cached {psnr(fast, reference):.1f} dB, blocks skipped {psnr(skipped, reference):.1f} dB")
    assert psnr(skipped, reference) < 16
    assert psnr(fast, reference) > 28
    assert rel_l1(fast, reference) < 0.15 * rel_l1(skipped, reference)
    assert torch.equal(sample(accelerate(pack, testbed, interval=1), *conds, **run), reference)


def test_the_photos_testbed_in_comfyui(pack, comfyui):
    """The second trained testbed (24x40 pixels = 12x20 tokens, 1 double + 5 single blocks) loaded into ComfyUI's
    Flux: the node runs its blocks only at full steps and stays close to uncached where skipping is ruinous."""
    photos = build_testbed_flux("photos")
    conds = prompt_conditioning(3, "photos")
    run = dict(steps=28, cfg=3.0, latent=pixel_latent(size=(24, 40)), seed=5)
    reference = sample(photos, *conds, **run)
    with count_block_calls(photos) as calls:
        fast = sample(accelerate(pack, photos, interval=3, warmup_steps=3), *conds, **run)
    skipped = sample(bypass_blocks(photos), *conds, **run)
    print(f"photos: PSNR cached {psnr(fast, reference):.1f} dB, blocks skipped {psnr(skipped, reference):.1f} dB")
    assert reference.shape[-2:] == (24, 40) and calls.total == expected_full_steps(28, 3, 3) * 6
    assert psnr(skipped, reference) < 16  # measured: 12.7 dB
    assert psnr(fast, reference) > 28  # measured: 33.0 dB
    assert rel_l1(fast, reference) < 0.15 * rel_l1(skipped, reference)


def test_cfg_with_cond_and_uncond(pack, flux, conds):
    reference = sample(flux, *conds, steps=STEPS, cfg=3.0)
    fast = accelerate(pack, flux)
    with count_block_calls(flux) as calls:
        out = sample(fast, *conds, steps=STEPS, cfg=3.0)
    # cond and uncond run as one batch: the same block count as cond alone
    assert calls.total == expected_full_steps(STEPS, 4, 2) * N_BLOCKS
    assert_cached_and_sane(out, reference)
    assert torch.equal(sample(accelerate(pack, flux, interval=1), *conds, steps=STEPS, cfg=3.0), reference)


def test_non_square_latent_and_batch(pack, flux, conds):
    shape = (2, 16, 24, 42)  # odd token grid 12 x 21, batch 2
    reference = sample(flux, *conds, steps=STEPS, shape=shape)
    out = sample(accelerate(pack, flux), *conds, steps=STEPS, shape=shape)
    assert_cached_and_sane(out, reference)


def test_kontext_reference_latent_of_another_size(pack, flux):
    reference_latent = torch.randn(1, 16, 20, 28, generator=torch.Generator().manual_seed(5))
    conds = flux_conditioning(seed=3, reference_latents=[reference_latent])
    reference = sample(flux, *conds, steps=STEPS, shape=(1, 16, 32, 24))
    fast = accelerate(pack, flux)
    with count_block_calls(flux) as calls:
        out = sample(fast, *conds, steps=STEPS, shape=(1, 16, 32, 24))
    assert calls.total == expected_full_steps(STEPS, 4, 2) * N_BLOCKS
    assert_cached_and_sane(out, reference)
    assert torch.equal(sample(accelerate(pack, flux, interval=1), *conds, steps=STEPS, shape=(1, 16, 32, 24)),
                       reference)


def test_model_unchanged_and_state_per_run(pack, flux, conds):
    before = model_fingerprint(flux)
    fast = accelerate(pack, flux)
    first = sample(fast, *conds, steps=STEPS)
    assert model_fingerprint(flux) == before
    assert "freqca_run" not in fast.model_options["transformer_options"]
    # a new resolution and batch size in the next queued run starts clean, and the first run repeats exactly
    sample(fast, *conds, steps=STEPS, shape=(3, 16, 16, 24))
    assert torch.equal(sample(fast, *conds, steps=STEPS), first)


def test_two_models_in_one_process_do_not_share_state(pack, conds):
    model_a, model_b = build_flux(seed=11), build_flux(seed=12)
    ref_a = sample(accelerate(pack, model_a), *conds, steps=STEPS)
    fast_b = accelerate(pack, model_b)
    sample(fast_b, *conds, steps=STEPS)
    again_a = sample(accelerate(pack, model_a), *conds, steps=STEPS)
    assert torch.equal(ref_a, again_a)


def test_chroma(pack, comfyui):
    chroma = build_chroma(seed=4)
    conds = flux_conditioning(seed=6)
    reference = sample(chroma, *conds, steps=STEPS)
    fast = accelerate(pack, chroma)
    with count_block_calls(chroma) as calls:
        out = sample(fast, *conds, steps=STEPS)
    assert calls.total == expected_full_steps(STEPS, 4, 2) * N_BLOCKS
    assert_cached_and_sane(out, reference)


def test_bad_input_names_the_input(pack, flux):
    with pytest.raises(ValueError, match=r"interval must be an integer in \[1, 1000\]"):
        accelerate(pack, flux, interval=0)
    with pytest.raises(ValueError, match="cutoff"):
        accelerate(pack, flux, cutoff=1.5)


def test_adaptive_schedule_in_comfyui(pack, testbed, caplog):
    """schedule=adaptive: full steps follow the measured error (fewer at a larger tolerance), the blocks run
    exactly at the reported full steps, cond and uncond (batched at CFG 3) decide together."""
    import logging

    conds = prompt_conditioning(3)
    run = dict(steps=20, cfg=3.0, latent=pixel_latent(), seed=2)
    reference = sample(testbed, *conds, **run)
    counts = []
    for tolerance in (0.02, 0.3):
        fast = accelerate(pack, testbed, schedule="adaptive", tolerance=tolerance, interval=10, warmup_steps=3)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="freqca"), count_block_calls(testbed) as calls:
            out = sample(fast, *conds, **run)
        summary = next(r.getMessage() for r in caplog.records if "steps full" in r.getMessage())
        assert "(freqca, adaptive, max interval 10)" in summary
        full = int(summary.split("): ")[1].split("/")[0])
        timeline = summary.split("[")[1].split("]")[0]
        assert timeline.startswith("FFF") and timeline.count("F") == full
        assert calls.total == full * len(testbed.model.diffusion_model.double_blocks) + full * len(
            testbed.model.diffusion_model.single_blocks)
        assert psnr(out, reference) > 20
        counts.append(full)
    assert counts[0] > counts[1]


def test_adaptive_schedule_rejects_bad_inputs(pack, flux):
    with pytest.raises(ValueError, match="tolerance"):
        accelerate(pack, flux, schedule="adaptive", tolerance=-1.0)
    with pytest.raises(ValueError, match="schedule must be one of fixed, adaptive"):
        accelerate(pack, flux, schedule="sometimes")


@pytest.mark.parametrize("method, min_psnr", [("frdiff", 26), ("feb", 28)])
def test_frdiff_and_feb_fidelity_on_the_trained_testbed(pack, testbed, method, min_psnr):
    """FRDiff (interval 3) and FEB-Cache (quality table) on the trained model loaded into ComfyUI's Flux;
    FEB's exposure scaling changes only the steps that reuse features, and offloading changes nothing."""
    conds = prompt_conditioning(4)
    run = dict(steps=28, cfg=3.0, latent=pixel_latent(), seed=3)
    reference = sample(testbed, *conds, **run)
    settings = dict(method=method, interval=3, warmup_steps=3, feb_level="quality")
    fast = sample(accelerate(pack, testbed, **settings), *conds, **run)
    print(f"{method}: PSNR {psnr(fast, reference):.1f} dB")
    assert psnr(fast, reference) > min_psnr
    offloaded = sample(accelerate(pack, testbed, offload_cache=True, **settings), *conds, **run)
    assert torch.equal(offloaded, fast)
    if method == "feb":
        unscaled = sample(accelerate(pack, testbed, exposure_delta=1.0, **settings), *conds, **run)
        assert not torch.equal(unscaled, fast) and psnr(unscaled, reference) > min_psnr


def test_res_taylor_on_the_trained_testbed_adds_the_current_embedding(pack, testbed):
    """res-taylor through the node: the adapter hands it the image embedding (cached steps add the current one
    to the forecast of what the blocks add), and at equal steps it is closer to uncached than the Taylor-1
    forecast of the whole CRF."""
    conds = prompt_conditioning(4)
    run = dict(steps=28, cfg=3.0, latent=pixel_latent(), seed=3)
    reference = sample(testbed, *conds, **run)
    settings = dict(interval=4, warmup_steps=1, final_full_steps=1, taylor_order=1)
    res = sample(accelerate(pack, testbed, method="res-taylor", **settings), *conds, **run)
    plain = sample(accelerate(pack, testbed, method="taylor", **settings), *conds, **run)
    print(f"res-taylor {psnr(res, reference):.2f} dB, taylor {psnr(plain, reference):.2f} dB")
    assert psnr(res, reference) > psnr(plain, reference) > 25


def test_frdiff_learned_gates_file(pack, flux, conds, freqca_dirs):
    """gates_file: the Auto-FR gates, a file of the freqca model folder, replace the schedule (blocks run
    exactly at the gates' full steps); a bad file is refused with an error that names the input, whatever
    the method; "" (the value of workflows saved before the list) and "none" mean no file."""
    from comfyui_freqca.freqca_core.methods.frdiff import GateSchedule

    gates = GateSchedule.from_steps([3, 4, 9], STEPS)
    gates.save(freqca_dirs.models / "gates.json")
    fast = accelerate(pack, flux, method="frdiff", gates_file="gates.json")
    with count_block_calls(flux) as calls:
        sample(fast, *conds, steps=STEPS)
    assert calls.total == len(gates.full_steps(STEPS)) * N_BLOCKS == 4 * N_BLOCKS
    for empty in ("", "none"):
        plain = accelerate(pack, flux, method="frdiff", interval=4, warmup_steps=2, gates_file=empty)
        with count_block_calls(flux) as calls:
            sample(plain, *conds, steps=STEPS)
        assert calls.total == expected_full_steps(STEPS, 4, 2) * N_BLOCKS
    (freqca_dirs.models / "bad.json").write_text('{"steps": 2, "gates": [1]}')
    for bad in ("missing.json", "bad.json", str(freqca_dirs.models / "gates.json")):
        for method in ("frdiff", "freqca"):
            with pytest.raises(ValueError, match="gates_file"):
                accelerate(pack, flux, method=method, gates_file=bad)


def test_taylor_order(pack, flux, conds):
    """taylor_order 0 is plain reuse; orders give different forecasts; out of range is named."""
    reuse = sample(accelerate(pack, flux, method="reuse"), *conds, steps=STEPS)
    assert torch.equal(sample(accelerate(pack, flux, method="taylor", taylor_order=0), *conds, steps=STEPS), reuse)
    first = sample(accelerate(pack, flux, method="taylor", taylor_order=1), *conds, steps=STEPS)
    assert not torch.equal(first, reuse)
    with pytest.raises(ValueError, match="taylor_order"):
        accelerate(pack, flux, method="taylor", taylor_order=4)
    accelerate(pack, flux, method="freqca", taylor_order=3)  # read by taylor only


def test_a_second_freqca_node_in_the_chain_is_warned_about_and_the_later_one_applies(pack, flux, conds, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="freqca"):
        first = accelerate(pack, flux, interval=2)
    assert "already went through another FreqCa Accelerate node" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="freqca"):
        second = accelerate(pack, first, method="reuse", interval=5)
    assert "already went through another FreqCa Accelerate node" in caplog.text
    with count_block_calls(flux) as calls:
        sample(second, *conds, steps=STEPS)
    assert calls.total == expected_full_steps(STEPS, 5, 2) * N_BLOCKS != expected_full_steps(STEPS, 2, 2) * N_BLOCKS


def test_without_an_options_node_the_nodes_defaults_apply(pack, flux):
    """FreqCa Accelerate alone runs its advanced settings at the node's defaults (the FreqCa Options node's),
    not at CacheConfig's (the paper's): res-taylor forecasts at order 1."""
    from comfyui_freqca.nodes.attach import SETTINGS_KEY
    from comfyui_freqca.nodes.freqca_node import DEFAULTS, FreqCaAccelerate, FreqCaOptions

    alone = FreqCaAccelerate.execute(flux, "res-taylor", 6, 1, 1, 0.0, 1.0).result[0]
    cache = alone.model_options["transformer_options"][SETTINGS_KEY].cache
    options = {i.id: i.default for i in FreqCaOptions.define_schema().inputs}
    assert cache.taylor_order == DEFAULTS.taylor_order == options["taylor_order"] == 1
    assert (cache.schedule, cache.cutoff, cache.feb_level) == (options["schedule"], options["cutoff"],
                                                               options["feb_level"])
    assert cache.new_controller(28).method.describe()["order"] == 1
