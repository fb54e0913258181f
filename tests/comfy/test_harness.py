"""The test harness itself: tiny random Flux/Kontext/Chroma models sampled by real ComfyUI code on the CPU."""
from __future__ import annotations

import pytest
import torch

from freqca_lab.comfy.harness import (STRONG, BlockCalls, add_reference_latent, build_chroma, build_flux, bypass_blocks,
                     count_block_calls, flux_conditioning, model_fingerprint, rel_l1, sample)

STEPS = 6
DEPTH, DEPTH_SINGLE = 2, 3  # build_flux defaults


@pytest.fixture(scope="module")
def flux(comfyui):
    return build_flux(seed=1)


@pytest.fixture(scope="module")
def strong(comfyui):
    return build_flux(seed=1, init=STRONG)


@pytest.fixture(scope="module")
def conds(comfyui):
    return flux_conditioning(seed=2)


@pytest.fixture(scope="module")
def baseline(flux, conds):
    """euler, simple, 6 steps, 32x32 latent, seed 0, cfg 1."""
    return sample(flux, *conds, steps=STEPS)


def test_euler_gives_finite_latent_of_the_right_shape(flux, conds, baseline):
    assert baseline.shape == (1, 16, 32, 32)
    assert baseline.dtype == torch.float32
    assert torch.isfinite(baseline).all()
    # a denoised latent in ComfyUI's scale (Flux latent format), not noise left as it was nor a blow-up
    assert 0.5 < float(baseline.std()) < 20
    noise_only = sample(flux, *conds, steps=STEPS, denoise=1e-4)
    assert rel_l1(baseline, noise_only) > 0.05


def test_counter_counts_every_block_once_per_model_call(flux, conds):
    with count_block_calls(flux) as calls:
        sample(flux, *conds, steps=STEPS)
    assert calls.model_calls == STEPS
    assert (calls.double, calls.single, calls.other) == (DEPTH * STEPS, DEPTH_SINGLE * STEPS, 0)
    assert calls.total == (DEPTH + DEPTH_SINGLE) * STEPS
    assert calls.batch_sizes == [1] * STEPS


def test_counter_follows_the_model_depth_and_removes_its_hooks(comfyui, conds):
    model = build_flux(seed=3, depth=1, depth_single=2)
    blocks = [*model.model.diffusion_model.double_blocks, *model.model.diffusion_model.single_blocks]
    with count_block_calls(model) as calls:
        sample(model, *conds, steps=3)
        assert all(len(block._forward_hooks) == 1 for block in blocks)
    assert (calls.double, calls.single, calls.model_calls) == (3, 6, 3)
    assert all(len(block._forward_hooks) == 0 for block in blocks)
    assert len(model.model.diffusion_model._forward_pre_hooks) == 0
    sample(model, *conds, steps=2)
    assert calls == BlockCalls(double=3, single=6, model_calls=3, batch_sizes=[1, 1, 1])


def test_cfg_runs_cond_and_uncond(flux, conds, baseline):
    with count_block_calls(flux) as calls:
        out = sample(flux, *conds, steps=STEPS, cfg=3.0)
    # ComfyUI batches cond and uncond into one model call of batch 2
    assert calls.model_calls == STEPS
    assert calls.batch_sizes == [2] * STEPS
    assert calls.total == (DEPTH + DEPTH_SINGLE) * STEPS
    assert torch.isfinite(out).all()
    assert rel_l1(out, baseline) > 1e-3
    # conds that cannot be concatenated (a reference latent on the positive only) run as separate calls
    reference = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(9))
    positive, negative = flux_conditioning(seed=2, reference_latents=[reference], negative_reference=False)
    with count_block_calls(flux) as calls:
        sample(flux, positive, negative, steps=STEPS, cfg=3.0)
    assert calls.model_calls == 2 * STEPS
    assert calls.batch_sizes == [1] * (2 * STEPS)


def test_non_square_latent_and_batch(flux, conds):
    out = sample(flux, *conds, steps=STEPS, latent=(2, 16, 24, 40))
    assert out.shape == (2, 16, 24, 40)
    assert torch.isfinite(out).all()
    assert not torch.equal(out[0], out[1])  # each batch item gets its own noise


def test_kontext_reference_latent_of_another_size(strong):
    flux = strong
    reference = torch.randn(1, 16, 20, 28, generator=torch.Generator().manual_seed(5))
    plain = flux_conditioning(seed=3)
    kontext = flux_conditioning(seed=3, reference_latents=[reference])
    assert len(kontext[0][0][1]["reference_latents"]) == 1
    seen = []
    hook = flux.model.diffusion_model.double_blocks[0].register_forward_pre_hook(
        lambda _m, _a, kwargs: seen.append(kwargs["img"].shape[1]), with_kwargs=True)
    try:
        out = sample(flux, *kontext, steps=STEPS, shape=(1, 16, 32, 24))
    finally:
        hook.remove()
    assert out.shape == (1, 16, 32, 24)
    assert torch.isfinite(out).all()
    # image tokens 16 x 12 plus reference tokens 10 x 14 at every step
    assert seen == [16 * 12 + 10 * 14] * STEPS
    assert rel_l1(out, sample(flux, *plain, steps=STEPS, shape=(1, 16, 32, 24))) > 0.01
    # two chained ReferenceLatent nodes give two references
    two = add_reference_latent(kontext[0], reference[..., :8, :8])
    assert [r.shape[-1] for r in two[0][1]["reference_latents"]] == [28, 8]


def test_same_seed_same_output_other_seed_other_output(flux, conds, baseline):
    assert torch.equal(sample(flux, *conds, steps=STEPS), baseline)
    assert not torch.equal(sample(flux, *conds, steps=STEPS, seed=1), baseline)
    assert torch.equal(build_flux(seed=1).model.state_dict()["diffusion_model.img_in.weight"],
                       flux.model.state_dict()["diffusion_model.img_in.weight"])


def test_advanced_two_stage_matches_one_pass(flux, conds, baseline):
    first = sample(flux, *conds, steps=STEPS, last_step=3, force_full_denoise=False)
    second = sample(flux, *conds, steps=STEPS, latent=first, start_step=3, add_noise=False, force_full_denoise=True)
    assert (second - baseline).abs().max() < 1e-4
    assert rel_l1(first, baseline) > 0.05


def test_fingerprint_unchanged_by_a_run_and_sees_changes(flux, conds):
    before = model_fingerprint(flux)
    sample(flux, *conds, steps=2, cfg=2.0)
    assert model_fingerprint(flux) == before
    # it must be able to fail: patches on a clone, a forward hook, a monkeypatched method, a changed weight
    clone = flux.clone()
    assert model_fingerprint(clone) == before
    clone.set_model_unet_function_wrapper(lambda apply, args: apply(args["input"], args["timestep"], **args["c"]))
    assert model_fingerprint(clone) != before
    assert model_fingerprint(flux) == before
    block = flux.model.diffusion_model.single_blocks[0]
    handle = block.register_forward_hook(lambda *_: None)
    assert model_fingerprint(flux) != before
    handle.remove()
    block.forward = block.forward
    assert model_fingerprint(flux) != before
    del block.forward
    bias = flux.model.diffusion_model.img_in.bias
    saved = bias.detach().clone()
    with torch.no_grad():
        bias[0] += 1e-3
        assert model_fingerprint(flux) != before
        bias.copy_(saved)
    assert model_fingerprint(flux) == before


def test_chroma(comfyui):
    chroma = build_chroma(seed=4)
    conds = flux_conditioning(seed=6, guidance=None)
    with count_block_calls(chroma) as calls:
        out = sample(chroma, *conds, steps=4, shape=(1, 16, 24, 32))
    assert out.shape == (1, 16, 24, 32)
    assert torch.isfinite(out).all()
    assert 0.5 < float(out.std()) < 20
    assert (calls.double, calls.single, calls.model_calls) == (2 * 4, 3 * 4, 4)


def test_bypassed_blocks_never_run_and_matter_in_the_strong_model(flux, strong, conds, baseline):
    with count_block_calls(flux) as calls:
        bypassed = sample(bypass_blocks(flux), *conds, steps=STEPS)
    assert (calls.total, calls.model_calls) == (0, STEPS)
    assert 0 < rel_l1(bypassed, baseline)
    full = sample(strong, *conds, steps=STEPS)
    assert rel_l1(sample(bypass_blocks(strong), *conds, steps=STEPS), full) > 0.1
    assert rel_l1(sample(strong, *conds, steps=STEPS, cfg=3.0), full) > 0.2
