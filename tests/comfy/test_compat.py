"""FreqCa Accelerate with what users combine it with (issue 17), inside real ComfyUI on the trained testbed:
Skip Layer Guidance (ComfyUI's ``SkipLayerGuidanceDiT``), few-step runs, ControlNets that start or end
mid-run, torch.compile (ComfyUI's ``TorchCompileModel``) and other caches in the chain. Numbers are from
``python3 -m freqca_lab.comfy.measure_compat``.
"""
from __future__ import annotations

import logging

import pytest
import torch._dynamo
import torch

from freqca_lab.comfy.harness import sample
from freqca_lab.comfy.harness import latent_psnr as psnr
from freqca_lab.comfy.measure_compat import accelerate, cosine, skip_layer_guidance
from freqca_lab.comfy.testbed_in_comfy import build_testbed_flux, pixel_latent, prompt_conditioning

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RUN = dict(cfg=3.0, seed=5)


@pytest.fixture(scope="module")
def testbed(comfyui):
    return build_testbed_flux()


@pytest.fixture(scope="module")
def prompt(comfyui):
    return prompt_conditioning(0)


# -------------------------------------------------------------------------------------- Skip Layer Guidance


@pytest.mark.parametrize("end", [0.15, 0.6])
def test_skip_layer_guidance_keeps_its_effect(pack, testbed, prompt, end, caplog):
    """SLG's pass (same sigma, the positive stream, blocks skipped) has its own CRF history: its effect
    survives caching (before: cosine -0.23 / -0.35, PSNR 20.8 / 15.1 dB) and the fidelity stays that of the
    run without SLG (25.0 dB; with SLG 26.5 dB over 1-15%, 23.8 dB over 1-60%). Either order of the nodes."""
    run = dict(RUN, steps=28, latent=pixel_latent())
    slg = skip_layer_guidance(testbed, 0.01, end)
    ref_plain, ref_slg = sample(testbed, *prompt, **run), sample(slg, *prompt, **run)
    fast_plain = sample(accelerate(testbed), *prompt, **run)
    with caplog.at_level(logging.INFO, logger="freqca"):
        fast_slg = sample(accelerate(slg), *prompt, **run)
    assert "Skip Layer Guidance" in caplog.text  # the summary says the pass was cached apart
    assert "did not reach" not in caplog.text
    assert cosine(fast_slg - fast_plain, ref_slg - ref_plain) > 0.8
    assert psnr(fast_slg, ref_slg) > psnr(fast_plain, ref_plain) - 1.5
    assert torch.equal(sample(skip_layer_guidance(accelerate(testbed), 0.01, end), *prompt, **run), fast_slg)


@pytest.mark.parametrize("double, single", [("0", ""), ("", "3")], ids=["first block", "last block"])
def test_skip_layer_guidance_on_the_first_or_last_block(pack, testbed, prompt, double, single, caplog):
    """SLG skipping FreqCa's first or last block: its pass cannot be planned or recorded, so it is computed in
    full at every step (no warning about a replaced patch); the plain passes stay cached."""
    run = dict(RUN, steps=28, latent=pixel_latent())
    slg = skip_layer_guidance(testbed, 0.01, 0.3, double=double, single=single)
    reference = sample(slg, *prompt, **run)
    with caplog.at_level(logging.INFO, logger="freqca"):
        fast = sample(accelerate(slg), *prompt, **run)
    print(f"SLG on the {'first' if double else 'last'} block: {psnr(fast, reference):.1f} dB")
    assert "guidance-pass calls computed in full" in caplog.text and "did not reach" not in caplog.text
    assert psnr(fast, reference) > 20  # first block 25.9 dB, last block 22.0 dB (plain: 25.0 dB)


# ---------------------------------------------------------------------------------------------- short runs


@pytest.mark.parametrize("steps, min_psnr", [(7, 30), (8, 30), (12, 30)])
def test_few_step_runs_with_the_defaults(pack, testbed, prompt, steps, min_psnr, caplog):
    """The defaults (warm-up 3, interval 6) on a short run: fitted to it (before: FFFcccc at 7 steps,
    6.5 dB; 8 steps 6.3 dB; 12 steps 11.7 dB; now 33.6, 32.7, 31.9 dB), the fit stated in the summary."""
    run = dict(RUN, steps=steps, latent=pixel_latent())
    reference = sample(testbed, *prompt, **run)
    with caplog.at_level(logging.INFO, logger="freqca"):
        fast = sample(accelerate(testbed), *prompt, **run)
    assert f"short run of {steps} steps" in caplog.text
    assert psnr(fast, reference) > min_psnr
    assert "c" in caplog.text.split("[")[-1].split("]")[0]  # some steps were still cached


def test_four_steps_run_uncached(pack, testbed, prompt, caplog):
    """A 4-step run (schnell) is too short to cache: exact, and the summary says why."""
    run = dict(RUN, steps=4, latent=pixel_latent())
    with caplog.at_level(logging.INFO, logger="freqca"):
        fast = sample(accelerate(testbed), *prompt, **run)
    assert torch.equal(fast, sample(testbed, *prompt, **run))
    assert "too short to cache" in caplog.text


def test_few_step_custom_sigmas_with_heun(pack, testbed, prompt):
    """A 7-sigma custom schedule (6 steps) with heun (two calls per step): before 5.7 dB, now 26.9 dB."""
    import comfy.sample
    import comfy.samplers

    latent = pixel_latent()
    noise = comfy.sample.prepare_noise(latent, 5)
    sigmas = torch.tensor([1.0, 0.9, 0.75, 0.55, 0.35, 0.15, 0.0])

    def run(model):
        return comfy.sample.sample_custom(model, noise, 3.0, comfy.samplers.sampler_object("heun"), sigmas,
                                          *prompt, latent, disable_pbar=True, seed=5)

    assert psnr(run(accelerate(testbed)), run(testbed)) > 25  # 26.9 dB (FcFcFF)


# ------------------------------------------------------------------------------- ControlNet start and end


def test_controlnet_that_ends_or_starts_mid_run(pack, testbed, prompt, caplog):
    """A ControlNet (ComfyUI's ControlNetApplyAdvanced, a weightless ControlBase with a real ControlNet's
    timing) ending or starting at 50%: the call after the switch runs full and later forecasts use features
    of the same control only. Relative L1 to the uncached run: whole run 0.043; ending at 50% 0.411 before,
    0.143 now; starting at 50% 0.194 before, 0.083 now."""
    from freqca_lab.comfy.harness import rel_l1
    from freqca_lab.comfy.measure_compat import apply_control, projection_control

    run = dict(RUN, steps=28, latent=pixel_latent())
    control = projection_control(96, 3)
    errors = {}
    for start, end in ((0.0, 1.0), (0.0, 0.5), (0.5, 1.0)):
        controlled = apply_control(prompt, control, start, end)
        reference = sample(testbed, *controlled, **run)
        assert rel_l1(reference, sample(testbed, *prompt, **run)) > 0.05  # the control matters
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="freqca"):
            errors[start, end] = rel_l1(sample(accelerate(testbed), *controlled, **run), reference)
        assert ("active set changed" in caplog.text) == (end - start < 1)
    assert errors[0.0, 1.0] < 0.06
    assert errors[0.0, 0.5] < 0.2 and errors[0.5, 1.0] < 0.12


# -------------------------------------------------------------------------------------------- torch.compile


class _Recompiles(logging.Handler):
    """Counts dynamo's "Recompiling function" log records (and recompile-limit hits) while installed."""

    def __init__(self) -> None:
        super().__init__()
        self.recompiles = self.limits = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.recompiles += "Recompiling function" in message
        self.limits += "recompile_limit" in message or "cache_size_limit" in message


@pytest.fixture
def recompiles():
    """A ``_Recompiles`` counter on dynamo's loggers, with a fresh dynamo cache; all reset afterwards."""
    import torch._dynamo
    import torch._logging

    if not torch._dynamo.is_dynamo_supported():
        pytest.skip("torch.compile (dynamo) is not supported on this Python/platform")
    counter = _Recompiles()
    loggers = [logging.getLogger(name) for name in ("torch._dynamo", "torch")]
    torch._logging.set_logs(recompiles=True)
    for logger in loggers:
        logger.addHandler(counter)
    torch._dynamo.reset()
    yield counter
    for logger in loggers:
        logger.removeHandler(counter)
    torch._logging.set_logs()
    torch._dynamo.reset()


def test_torch_compile_recompiles_as_without_freqca(pack, recompiles):
    """ComfyUI's TorchCompileModel before or after the node: FreqCa's decisions run outside the compiled
    graphs, so a cached run recompiles about as often as an uncached one (small Flux, 8 steps, cfg: 5 uncached,
    7 with FreqCa; before: 15, then 4 more and the recompile limit hit on the next run) and neither a second
    run nor changed node settings recompile (FEB-Cache's attention override included: 18 before). Backend "eager": dynamo's tracing and guards, which decide
    recompiles, are the same for every backend; this one needs no C compiler and compiles fastest."""
    from comfy_extras.nodes_torch_compile import TorchCompileModel

    from freqca_lab.comfy.harness import build_flux, flux_conditioning

    flux, conds = build_flux(seed=1, depth=1, depth_single=2), flux_conditioning(seed=2)
    run = dict(steps=8, cfg=2.0, shape=(1, 16, 16, 16))

    def compiled(model):
        return TorchCompileModel.execute(model, backend="eager").result[0]

    reference = sample(compiled(flux), *conds, **run)
    plain = recompiles.recompiles
    torch._dynamo.reset()
    recompiles.recompiles = 0
    out = sample(accelerate(compiled(flux)), *conds, **run)
    first = recompiles.recompiles
    assert first <= plain + 3, (first, plain)
    assert 0 < torch.nn.functional.l1_loss(out, reference) / reference.abs().mean() < 0.1  # cached, close
    for model in (accelerate(compiled(flux)), compiled(accelerate(flux)), accelerate(compiled(flux), interval=3),
                  accelerate(compiled(flux), method="taylor"), accelerate(compiled(flux), method="feb")):
        sample(model, *conds, **run)
    assert recompiles.recompiles - first <= 2 and recompiles.limits == 0


# ------------------------------------------------------------------------------------------- other caches


@pytest.mark.parametrize("order", ["freqca first", "easycache first"])
def test_core_easycache_in_the_chain_is_named(pack, testbed, prompt, order, caplog):
    """ComfyUI's EasyCache skips some model calls; FreqCa's summary names it and counts the calls it skipped
    (applied after FreqCa, it skips inside FreqCa's wrapper), instead of blaming a replaced block patch."""
    from comfy_extras.nodes_easycache import EasyCacheNode

    def easycache(model):
        return EasyCacheNode.execute(model, 0.2, 0.15, 0.95, False).result[0]

    model = easycache(accelerate(testbed)) if order == "freqca first" else accelerate(easycache(testbed))
    with caplog.at_level(logging.INFO, logger="freqca"):
        sample(model, *prompt, **dict(RUN, steps=28, latent=pixel_latent()))
    assert "EasyCache also caches this model" in caplog.text
    assert "did not reach" not in caplog.text and "replaced by another node" not in caplog.text
    assert ("skipped or run by EasyCache" in caplog.text) == (order == "freqca first")


def test_core_lazycache_in_the_chain_is_named(pack, testbed, prompt, caplog):
    from comfy_extras.nodes_easycache import LazyCacheNode

    model = LazyCacheNode.execute(accelerate(testbed), 0.2, 0.15, 0.95, False).result[0]
    with caplog.at_level(logging.INFO, logger="freqca"):
        sample(model, *prompt, **dict(RUN, steps=28, latent=pixel_latent()))
    assert "LazyCache also caches this model" in caplog.text and "did not reach" not in caplog.text


def _forward_replacing_wrapper(model_function, kwargs):
    """What TeaCache, MagCache and First Block Cache do to a call (stand-in, no caching): run the model with
    their own forward, here the model's without ``patches_replace``, so no block patch runs."""
    c = dict(kwargs["c"])
    c["transformer_options"] = {k: v for k, v in c["transformer_options"].items() if k != "patches_replace"}
    return model_function(kwargs["input"], kwargs["timestep"], **c)


class ApplyFBCacheOnModel:
    """Stand-in for WaveSpeed's node: its ``model_function_wrapper`` is defined in ``ApplyFBCacheOnModel.patch``
    (the marker FreqCa recognises) and replaces the model's forward for the call."""

    def patch(self, model):
        def model_unet_function_wrapper(model_function, kwargs):
            return _forward_replacing_wrapper(model_function, kwargs)

        model = model.clone()
        model.set_model_unet_function_wrapper(model_unet_function_wrapper)
        return model


def teacache_like(model, **markers):
    """A clone with TeaCache's or MagCache's ``transformer_options`` markers and a forward-replacing wrapper."""
    model = model.clone()
    model.model_options["transformer_options"].update(markers)
    model.set_model_unet_function_wrapper(_forward_replacing_wrapper)
    return model


@pytest.mark.parametrize("name, apply", [
    ("First Block Cache (WaveSpeed)", lambda m: ApplyFBCacheOnModel().patch(m)),
    ("TeaCache", lambda m: teacache_like(m, rel_l1_thresh=0.4, coefficients=[1.0, 0.0])),
    ("MagCache", lambda m: teacache_like(m, magcache_thresh=0.24, mag_ratios=torch.ones(4))),
])
def test_forward_replacing_caches_are_named(pack, testbed, prompt, name, apply, caplog):
    """A cache that replaces the model's forward bypasses FreqCa (its block patches never run): the log and the
    summary name that cache and say so, instead of "did not reach FreqCa's first or last block patch"."""
    run = dict(RUN, steps=8, latent=pixel_latent())
    with caplog.at_level(logging.INFO, logger="freqca"):
        out = sample(apply(accelerate(testbed)), *prompt, **run)
    assert torch.equal(out, sample(testbed, *prompt, **run))  # the stand-in computes every call
    assert f"{name} replaces the model's forward" in caplog.text and "bypassed" in caplog.text
    assert f"skipped or run by {name}" in caplog.text
    assert "did not reach" not in caplog.text
