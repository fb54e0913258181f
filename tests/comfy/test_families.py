"""FreqCa Accelerate on every hookable DiT family of ComfyUI v0.3.64 beyond Flux: Qwen-Image (-Edit), Wan 2.1/2.2,
HunyuanVideo, SD3, Lumina 2 and HiDream — tiny random-weight models built with ComfyUI's own classes and sampled
by ComfyUI's sampling code (real ComfyUI, CPU).

For each family: the transformer blocks execute only at full steps, interval 1 is exactly the uncached model,
and the cached output stays close to the uncached one (relative L1 printed and bounded). Video models run a
few frames at odd sizes; edit models a reference latent of another size than the output.

The default random init is weak (the residual path dominates), so closeness alone says little about whether the
cache handles the right rows; :func:`test_cached_call_restores_the_crf_exactly` does, on models whose blocks
matter (``harness.STRONG``): a cached call fed the CRF of an identical full call must give exactly its output.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Callable

import pytest
import torch

from freqca_lab.comfy import harness as H

STEPS = 8
INTERVAL, WARMUP = 3, 2
MAX_REL_L1 = 0.1


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def accelerate(model, **inputs):
    """The nodes applied as ComfyUI would, at this file's interval and warm-up, no final full steps; returns the
    patched model."""
    return H.apply_node(model, **{"method": "freqca", "interval": INTERVAL, "warmup_steps": WARMUP,
                                  "final_full_steps": 0, **inputs})


def full_steps(steps: int = STEPS) -> int:
    from comfyui_freqca.freqca_core import FixedSchedule

    return len(FixedSchedule(WARMUP, INTERVAL).for_run(steps).full_steps(steps))  # as the node fits it


@dataclass
class Case:
    build: Callable  # seed, init -> ModelPatcher
    conditioning: Callable  # -> (positive, negative)
    shape: tuple
    blocks: int  # blocks per full model call


def _with(conditioning: Callable, **values) -> Callable:
    """``conditioning`` with ``values`` set on positive and negative (tensors: what the nodes would set)."""
    return lambda: tuple([[c[0][0], dict(c[0][1], **values)]] for c in conditioning())


def _reference(conditioning: Callable, latent: torch.Tensor) -> Callable:
    return lambda: tuple(H.add_reference_latent(c, latent) for c in conditioning())


def _latent(*shape: int, seed: int = 5) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


_TEXT = lambda: H.text_conditioning(seed=2)  # noqa: E731
_POOLED = lambda: H.text_conditioning(seed=2, pooled_width=32)  # noqa: E731
CASES = {
    "qwen_image": Case(H.build_qwen_image, _TEXT, (1, 16, 1, 22, 18), 3),
    "wan": Case(H.build_wan, _TEXT, (1, 16, 3, 13, 11), 3),
    "hunyuan_video": Case(H.build_hunyuan_video, _POOLED, (1, 16, 3, 10, 14), 4),
    "hunyuan_image_2_1": Case(H.build_hunyuan_image, _TEXT, (1, 64, 9, 7), 4),  # same class, 2-D patch
    "sd3": Case(H.build_sd3, _POOLED, (1, 16, 21, 15), 2),
    "lumina2": Case(H.build_lumina2, lambda: H.lumina2_conditioning(seed=2), (1, 16, 21, 15), 3),
    "hidream": Case(H.build_hidream, lambda: H.hidream_conditioning(seed=2), (1, 16, 20, 14), 4),
}
REFERENCE_CASES = {
    # Qwen-Image-Edit: reference rows after the image rows, another size than the output
    "qwen_image_edit": Case(H.build_qwen_image, _reference(_TEXT, _latent(1, 16, 1, 14, 20)), (1, 16, 1, 22, 18), 3),
    # Wan 2.1 Fun 1.1 ref_conv: reference-image rows before the video rows (same H x W: ComfyUI's RoPE for them
    # assumes the latent's size)
    "wan_reference": Case(lambda seed, init=None: H.build_wan(seed, init=init, in_dim_ref_conv=16),
                          _reference(_TEXT, _latent(1, 16, 1, 12, 10)), (1, 16, 2, 12, 10), 3),
    # Wan Phantom: subject frames joined along time after the video's (time_dim_concat)
    "wan_phantom": Case(H.build_wan, _with(_TEXT, time_dim_concat=_latent(1, 16, 2, 13, 11)), (1, 16, 3, 13, 11), 3),
    # HunyuanVideo ref_latent: rows before the video rows, image rows first, text after them in single blocks
    "hunyuan_video_reference": Case(H.build_hunyuan_video, _with(_POOLED, ref_latent=_latent(1, 16, 1, 6, 8)),
                                    (1, 16, 3, 10, 14), 4),
    # HiDream-E1: the condition image joined along the width
    "hidream_e1": Case(H.build_hidream, _with(lambda: H.hidream_conditioning(seed=2),
                                              concat_latent_image=_latent(1, 16, 20, 14)), (1, 16, 20, 14), 4),
}


def check_family(model, case: Case, conds, label: str, **kwargs) -> torch.Tensor:
    """Uncached vs cached vs interval 1 on ``model``; returns the uncached output."""
    with H.count_block_calls(model) as calls:
        reference = H.sample(model, *conds, steps=STEPS, shape=case.shape, **kwargs)
    assert calls.total == STEPS * case.blocks
    with H.count_block_calls(model) as calls:
        out = H.sample(accelerate(model), *conds, steps=STEPS, shape=case.shape, **kwargs)
    assert calls.total == full_steps() * case.blocks, "blocks must run at full steps only"
    assert out.shape == reference.shape and torch.isfinite(out).all()
    error = H.rel_l1(out, reference)
    print(f"{label}: {calls.total}/{STEPS * case.blocks} block runs, relative L1 vs uncached {error:.4f}")
    assert 0 < error < MAX_REL_L1
    assert torch.equal(H.sample(accelerate(model, interval=1), *conds, steps=STEPS, shape=case.shape, **kwargs),
                       reference)
    return reference


@pytest.mark.parametrize("name", list(CASES) + list(REFERENCE_CASES))
def test_family(pack, comfyui, name):
    case = {**CASES, **REFERENCE_CASES}[name]
    check_family(case.build(seed=1), case, case.conditioning(), name)


def test_cfg_batches_cond_and_uncond(pack, comfyui):
    """SD3 (APPLY_MODEL wrapper) and Lumina 2 (gated layers) with cond and uncond in one batch."""
    for name in ("sd3", "lumina2"):
        case = CASES[name]
        check_family(case.build(seed=1), case, case.conditioning(), f"{name} cfg 3", cfg=3.0)


def model_outputs(model, conds, sigmas: torch.Tensor, shape: tuple) -> list[torch.Tensor]:
    """The diffusion model's output at every call of an euler run over ``sigmas`` (ComfyUI's sample_custom)."""
    import comfy.sample
    import comfy.samplers

    outputs = []
    handle = model.get_model_object("diffusion_model").register_forward_hook(
        lambda _module, _args, out: outputs.append(out.detach().clone()))
    try:
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        comfy.sample.sample_custom(model, noise, 1.0, comfy.samplers.sampler_object("euler"), sigmas, *conds,
                                   torch.zeros(shape), disable_pbar=True, seed=0)
    finally:
        handle.remove()
    return outputs


@pytest.mark.parametrize("method", ["reuse", "feb"])
@pytest.mark.parametrize("name", list(CASES) + list(REFERENCE_CASES))
def test_cached_call_restores_the_crf_exactly(pack, comfyui, name, method):
    """Two calls with identical inputs (sigmas [s, s, 0]: euler does not move x): the first full, the second
    cached. With method reuse the cached call skips every block and writes the first call's CRF back into
    the image rows, so its output must equal the uncached output bit for bit; any wrong row (text, reference,
    padding, an offset) breaks this on a model whose blocks matter. With feb (no exposure scaling) it writes
    the stored residual plus the embedding taken at the first block: the same CRF up to rounding (the
    embedding cancels for identical inputs, so this checks the residual path's plumbing, not which rows the
    embedding comes from; test_feb_embedding_is_the_first_blocks_image_rows does that)."""
    from comfyui_freqca.nodes.attach import SETTINGS_KEY

    case = {**CASES, **REFERENCE_CASES}[name]
    model, conds = case.build(seed=1, init=H.STRONG), case.conditioning()
    sigmas = torch.tensor([0.8, 0.8, 0.0])
    uncached = model_outputs(model, conds, sigmas, case.shape)
    fast = accelerate(model, method=method, exposure_delta=1.0)
    options = fast.model_options["transformer_options"]
    settings = options[SETTINGS_KEY]

    def new_controller(sample_sigmas=None):  # the first model call full, every later one cached (both are step 0)
        controller = type(settings).new_controller(settings, sample_sigmas)
        calls = itertools.count()
        controller.is_full = lambda step: next(calls) == 0
        return controller

    forced = dataclasses.replace(settings)
    object.__setattr__(forced, "new_controller", new_controller)
    options[SETTINGS_KEY] = forced
    with H.count_block_calls(model) as calls:
        cached = model_outputs(fast, conds, sigmas, case.shape)
    assert calls.total == case.blocks, "the second call must skip every block"
    assert len(cached) == len(uncached) == 2 and torch.equal(uncached[0], uncached[1])
    assert torch.equal(cached[0], uncached[0])
    if method == "reuse":
        assert torch.equal(cached[1], uncached[1])
    else:
        assert torch.allclose(cached[1], uncached[1], rtol=1e-4, atol=1e-5)
        assert H.rel_l1(cached[1], uncached[1]) < 1e-5


@pytest.mark.parametrize("variant", ["camera", "humo"])
def test_wan_variants_with_the_same_block_loop(pack, comfyui, variant):
    case = Case(lambda seed: H.build_wan(seed, variant=variant), _TEXT, (1, 16, 2, 9, 11), 3)
    check_family(case.build(seed=4), case, case.conditioning(), f"wan_{variant}")


@pytest.mark.parametrize("variant, reason", [("vace", "VACE blocks"), ("s2v", "no transformer_options"),
                                             ("animate", "face-adapter")])
def test_wan_variants_that_change_the_block_loop_are_refused(pack, comfyui, variant, reason):
    from comfyui_freqca.nodes.families import FAMILIES

    with pytest.raises(ValueError, match=reason) as error:
        accelerate(H.build_wan(seed=0, variant=variant))
    assert all(family.name in str(error.value) for family in FAMILIES)


def test_gated_layers_keep_the_model_and_its_keys(pack, comfyui):
    """Lumina 2 / HiDream: the gated block list is an object patch of the clone only, with the same children."""
    from comfyui_freqca.nodes.families import GatedBlocks

    case = CASES["lumina2"]
    model, conds = case.build(seed=1), case.conditioning()
    before = H.model_fingerprint(model)
    keys = set(model.model.state_dict())
    reference = H.sample(model, *conds, steps=STEPS, shape=case.shape)
    fast = accelerate(model)
    gated = fast.object_patches["diffusion_model.layers"]
    assert isinstance(gated, GatedBlocks) and "diffusion_model.layers" not in model.object_patches
    layers = model.get_model_object("diffusion_model.layers")
    assert [id(b) for b in gated.children()] == [id(b) for b in layers.children()]
    assert set(gated.state_dict()) == set(layers.state_dict())
    again = accelerate(fast, interval=2)  # applied twice: wraps the same children, not the gates
    regated = again.object_patches["diffusion_model.layers"]
    assert [id(b) for b in regated.children()] == [id(b) for b in layers.children()]
    H.sample(fast, *conds, steps=STEPS, shape=case.shape)
    assert set(model.model.state_dict()) == keys
    assert torch.equal(H.sample(model, *conds, steps=STEPS, shape=case.shape), reference)
    assert H.model_fingerprint(model) == before


def test_layouts(pack, comfyui):
    """The image-token layouts the families read from a model call (grids in token units)."""
    from comfyui_freqca.nodes.families import detect_family

    def layout(model, **call):
        diffusion_model = model.get_model_object("diffusion_model")
        return [s.grid or s.length for s in detect_family(diffusion_model).layout(call, diffusion_model).segments]

    qwen = H.build_qwen_image(seed=0, layers=1)
    assert layout(qwen, x=torch.zeros(1, 16, 1, 22, 17), ref_latents=[torch.zeros(1, 16, 1, 14, 20)]) == [
        (11, 9), (7, 10)]
    wan = H.build_wan(seed=0, layers=1, in_dim_ref_conv=16)
    assert layout(wan, x=torch.zeros(1, 16, 3, 13, 11), reference_latent=torch.zeros(1, 16, 12, 10)) == [
        (6, 5), (3, 7, 6)]
    hunyuan = H.build_hunyuan_video(seed=0, depth=1, depth_single=1)
    assert layout(hunyuan, x=torch.zeros(1, 16, 3, 10, 14), ref_latent=torch.zeros(1, 16, 1, 6, 8)) == [
        (1, 3, 4), (3, 5, 7)]
    hidream = H.build_hidream(seed=0, double=1, single=1)
    assert layout(hidream, x=torch.zeros(1, 16, 20, 14), image_cond=torch.zeros(1, 16, 20, 14)) == [(10, 14)]
    lumina = H.build_lumina2(seed=0, layers=1)
    assert layout(lumina, x=torch.zeros(2, 16, 21, 15)) == [(11, 8)]
    with pytest.raises(ValueError, match="caption lengths differ"):
        layout(lumina, x=torch.zeros(2, 16, 21, 15), attention_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]))


def test_qwen_uses_the_papers_1d_fft_split(pack, comfyui):
    from comfyui_freqca.nodes.families import detect_family
    from comfyui_freqca.nodes.attach import SETTINGS_KEY

    fast = accelerate(H.build_qwen_image(seed=0, layers=1))
    settings = fast.model_options["transformer_options"][SETTINGS_KEY]
    assert detect_family(fast.get_model_object("diffusion_model")).transform == "fft"
    assert settings.new_controller().method.describe()["transform"] == "fft"


def run_summary(caplog, model, case: Case, conds) -> tuple[torch.Tensor, str]:
    """Sample ``model`` and return its output and FreqCa's summary line of the run."""
    import logging

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="freqca"):
        out = H.sample(model, *conds, steps=STEPS, shape=case.shape)
    return out, next(r.getMessage() for r in caplog.records if "steps full" in r.getMessage())


FLUX_CASE = Case(lambda seed, init=None: H.build_flux(seed, init=init), lambda: H.flux_conditioning(seed=2),
                 (1, 16, 12, 10), 5)
METHOD_CASES = {"flux": FLUX_CASE, **CASES}


@pytest.mark.parametrize("method", ["freqca", "reuse", "taylor", "res-taylor"])
@pytest.mark.parametrize("name", list(METHOD_CASES))
def test_every_forecasting_method_skips_the_blocks_at_cached_steps(pack, comfyui, caplog, name, method):
    """The methods that forecast the CRF on the step schedule: blocks run only at its full steps, and the
    output stays close to the uncached one on every family (res-taylor also reads the first block's input)."""
    case = METHOD_CASES[name]
    model, conds = case.build(seed=1), case.conditioning()
    reference = H.sample(model, *conds, steps=STEPS, shape=case.shape)
    with H.count_block_calls(model) as calls:
        out, summary = run_summary(caplog, accelerate(model, method=method, taylor_order=1), case, conds)
    assert calls.total == full_steps() * case.blocks and f"({method}, interval {INTERVAL})" in summary
    assert torch.isfinite(out).all() and 0 < H.rel_l1(out, reference) < MAX_REL_L1


@pytest.mark.parametrize("name", list(METHOD_CASES))
def test_frdiff_and_feb_skip_what_they_claim(pack, comfyui, caplog, name):
    """FRDiff: blocks only at the schedule's full steps, and cached outputs mixed with the last full output
    (early cached steps take it whole, so the run differs from plain reuse). FEB-Cache (balanced table of
    8 steps: F F a b F a b F): blocks skipped at the b steps, attention kernels served from the cache at the
    a steps."""
    from comfyui_freqca.freqca_core.methods.feb import default_table

    case = METHOD_CASES[name]
    model, conds = case.build(seed=1), case.conditioning()
    reference = H.sample(model, *conds, steps=STEPS, shape=case.shape)
    with H.count_block_calls(model) as calls:
        frdiff, summary = run_summary(caplog, accelerate(model, method="frdiff"), case, conds)
    assert calls.total == full_steps() * case.blocks and "(frdiff, interval 3)" in summary
    reuse = H.sample(accelerate(model, method="reuse"), *conds, steps=STEPS, shape=case.shape)
    assert not torch.equal(frdiff, reuse) and H.rel_l1(frdiff, reference) < MAX_REL_L1

    table = default_table(STEPS, "balanced").timeline()
    assert table == "FFabFabF"
    with H.count_block_calls(model) as calls:
        feb, summary = run_summary(caplog, accelerate(model, method="feb", feb_level="balanced"), case, conds)
    blocks_run = sum(1 for letter in table if letter != "b")
    assert calls.total == blocks_run * case.blocks, "blocks must be skipped at the both-reused steps"
    assert "(feb, table balanced): 4/8 steps full, 2 cached" in summary and "[FFacFacF]" in summary
    served = int(summary.split("steps reused attention (")[1].split(" kernel")[0])
    computed = int(summary.split("kernel calls served, ")[1].split(" computed")[0])
    assert served > 0 and computed == 0
    assert torch.isfinite(feb).all() and 0 < H.rel_l1(feb, reference) < MAX_REL_L1
    again, _ = run_summary(caplog, accelerate(model, method="feb", feb_level="balanced"), case, conds)
    assert torch.equal(again, feb)  # deterministic, nothing carried over between runs


@pytest.mark.parametrize("name", list(METHOD_CASES))
def test_feb_embedding_is_the_first_blocks_image_rows(pack, comfyui, name):
    """The embedding FEB-Cache stores with each residual is the image part of the first block's input: the
    rows that the last block's image rows (the CRF) continue. Checked against the first block's input as a
    forward pre-hook sees it, at the CRF's rows (the family's image rows: first or last ``n_img``)."""
    from comfyui_freqca.nodes.attach import SETTINGS_KEY

    case = METHOD_CASES[name]
    model, conds = case.build(seed=1), case.conditioning()
    fast = accelerate(model, method="feb", exposure_delta=1.0)
    options = fast.model_options["transformer_options"]
    settings = options[SETTINGS_KEY]
    recorded = []

    def new_controller(sample_sigmas=None):
        controller = type(settings).new_controller(settings, sample_sigmas)
        record = controller.record

        def spy(plan, crf, embedding=None):
            recorded.append((crf.clone(), embedding.clone()))
            return record(plan, crf, embedding)

        controller.record = spy
        return controller

    forced = dataclasses.replace(settings)
    object.__setattr__(forced, "new_controller", new_controller)
    options[SETTINGS_KEY] = forced
    diffusion_model = model.get_model_object("diffusion_model")
    first = next(getattr(diffusion_model, a)[0] for a in ("double_blocks", "joint_blocks", "double_stream_blocks",
                                                          "blocks", "transformer_blocks", "layers")
                 if isinstance(getattr(diffusion_model, a, None), torch.nn.ModuleList))
    inputs = []
    handle = first.register_forward_pre_hook(  # every 3-D tensor input: the image stream (and text, for SD3)
        lambda _m, args, kwargs: inputs.append([t.clone() for t in (*args, *kwargs.values())
                                                if isinstance(t, torch.Tensor) and t.dim() == 3]),
        with_kwargs=True)
    try:
        H.sample(fast, *conds, steps=STEPS, shape=case.shape)
    finally:
        handle.remove()
    assert recorded and len(inputs) >= len(recorded)
    crf, embedding = recorded[0]
    rows = embedding.shape[1]  # the first call's first-block inputs, first or last rows
    candidates = [part for t in inputs[0] for part in (t[:, :rows], t[:, t.shape[1] - rows:])]
    assert any(c.shape == embedding.shape and torch.equal(c, embedding) for c in candidates), name
    assert crf.shape == embedding.shape
