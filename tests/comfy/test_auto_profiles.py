"""Method ``auto`` inside ComfyUI (issue 16): the first run of a model calibrates (its output is the uncached
one) and stores a profile in the user directory; later runs with the same key use it; another model, step
count or size calibrates again; a corrupt profile is reported and replaced, never fatal."""
from __future__ import annotations

import logging

import pytest
import torch

from freqca_lab.comfy.harness import apply_node, latent_psnr, sample
from freqca_lab.comfy.testbed_in_comfy import build_testbed_flux, pixel_latent, prompt_conditioning

RUN = dict(steps=20, cfg=3.0, seed=4)


@pytest.fixture(scope="module")
def testbed(comfyui):
    return build_testbed_flux()


def run_auto(testbed, caplog, conds, interval: int = 4, recalibrate: bool = False, **run) -> tuple[torch.Tensor, str]:
    """One sampling run through FreqCa Accelerate with method auto: output and run summary."""
    model = apply_node(testbed, method="auto", interval=interval, warmup_steps=2, final_full_steps=0,
                       recalibrate=recalibrate)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="freqca"):
        out = sample(model, *conds, **{**RUN, "latent": pixel_latent(), **run})
    return out, next(r.getMessage() for r in caplog.records if "steps full" in r.getMessage())


def profiles(freqca_dirs) -> list:
    folder = freqca_dirs.user / "freqca" / "profiles"
    return sorted(folder.glob("*.json")) if folder.exists() else []


def test_first_run_calibrates_uncached_then_the_profile_is_used(pack, testbed, freqca_dirs, caplog):
    conds = prompt_conditioning(2)
    reference = sample(testbed, *conds, **RUN, latent=pixel_latent())
    first, summary = run_auto(testbed, caplog, conds)
    assert torch.equal(first, reference)
    assert "20/20 steps full" in summary and "auto: calibrated:" in summary and "profile saved" in summary
    assert len(profiles(freqca_dirs)) == 1
    second, summary = run_auto(testbed, caplog, conds)
    assert "auto: profile of this model:" in summary and "calibrated" not in summary
    from comfyui_freqca.freqca_core import FixedSchedule
    budget = len(FixedSchedule(2, 4).full_steps(20))
    assert f"{budget}/20 steps full" in summary
    assert latent_psnr(second, reference) > 18  # cached (fidelity: freqca_lab.measure_auto)
    assert not torch.equal(second, reference)
    third, _ = run_auto(testbed, caplog, conds)
    assert torch.equal(third, second) and len(profiles(freqca_dirs)) == 1


def test_recalibrate_ignores_and_replaces_the_stored_profile(pack, testbed, freqca_dirs, caplog):
    conds = prompt_conditioning(3)
    reference = sample(testbed, *conds, **RUN, latent=pixel_latent())
    run_auto(testbed, caplog, conds)
    [stored] = profiles(freqca_dirs)
    stored.write_text("{}")  # unusable if it were read: recalibrate does not read it, and replaces it
    again, summary = run_auto(testbed, caplog, conds, recalibrate=True)
    assert "recalibrate is on" in summary and "auto: calibrated:" in summary and "20/20 steps full" in summary
    assert "unusable" not in summary and torch.equal(again, reference) and profiles(freqca_dirs) == [stored]
    _, summary = run_auto(testbed, caplog, conds)
    assert "auto: profile of this model:" in summary


@pytest.mark.parametrize("change", ["steps", "size", "model", "interval", "version"])
def test_a_new_key_calibrates_again(pack, testbed, freqca_dirs, caplog, monkeypatch, change):
    """Another step count, size, model or speed, or a profile of an older calibration version."""
    from comfyui_freqca.nodes import profiles as profile_module
    from freqca_lab.comfy.harness import build_flux, flux_conditioning

    conds = prompt_conditioning(1)
    with monkeypatch.context() as patch:
        if change == "version":  # stored by a pack whose calibration scored differently
            patch.setattr(profile_module, "VERSION", profile_module.VERSION - 1)
        run_auto(testbed, caplog, conds)
    model, run = testbed, {}
    if change == "interval":
        run = {"interval": 6}
    elif change == "steps":
        run = {"steps": 16}
    elif change == "size":
        run = {"latent": pixel_latent(size=(48, 48))}
    else:
        model, conds = build_flux(seed=1), flux_conditioning(seed=2)
        run = {"latent": None}
    reference = sample(model, *conds, **{**RUN, "latent": pixel_latent(), **{k: v for k, v in run.items()
                                                                          if k != "interval"}})
    out, summary = run_auto(model, caplog, conds, **run)
    assert "auto: calibrated:" in summary and torch.equal(out, reference)
    assert len(profiles(freqca_dirs)) == 2
    _, summary = run_auto(model, caplog, conds, **run)
    assert "auto: profile of this model:" in summary


@pytest.mark.parametrize("content", [b"{not json", b'{"key": {}, "choice": {}}', b"[]"])
def test_a_corrupt_profile_is_reported_and_replaced(pack, testbed, freqca_dirs, caplog, content):
    conds = prompt_conditioning(4)
    reference = sample(testbed, *conds, **RUN, latent=pixel_latent())
    run_auto(testbed, caplog, conds)
    (path,) = profiles(freqca_dirs)
    path.write_bytes(content)
    out, summary = run_auto(testbed, caplog, conds)
    assert torch.equal(out, reference) and "auto: calibrated:" in summary
    assert "unusable" in summary or "ignored" in summary
    _, summary = run_auto(testbed, caplog, conds)
    assert "auto: profile of this model:" in summary


@pytest.mark.parametrize("name", ["qwen_image", "wan", "hunyuan_video", "hunyuan_image_2_1", "sd3", "lumina2",
                                  "hidream"])
def test_every_family_calibrates_then_uses_its_profile(pack, comfyui, freqca_dirs, caplog, name):
    """Tiny family models (no fidelity claim): the calibration run is uncached, the next run finds the
    profile and runs the blocks at its full steps only."""
    from comfyui_freqca.freqca_core import CacheConfig
    from comfyui_freqca.freqca_core.methods.auto import budget_of
    from freqca_lab.comfy import harness as H
    from test_families import CASES, STEPS

    case = CASES[name]
    model, conds = case.build(seed=1), case.conditioning()
    reference = H.sample(model, *conds, steps=STEPS, shape=case.shape)
    summaries = []
    for _ in range(2):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="freqca"), H.count_block_calls(model) as calls:
            out = H.sample(H.apply_node(model, method="auto", interval=3, warmup_steps=2), *conds, steps=STEPS,
                           shape=case.shape)
        summaries.append((out, calls.total, next(r.getMessage() for r in caplog.records
                                                 if "steps full" in r.getMessage())))
    (first, first_calls, first_text), (second, second_calls, second_text) = summaries
    assert torch.equal(first, reference) and first_calls == STEPS * case.blocks and "auto: calibrated:" in first_text
    budget = budget_of(CacheConfig("auto", interval=3, warmup=2, fit_short_runs=True), STEPS)
    assert "auto: profile of this model:" in second_text and second_calls == budget * case.blocks
    assert len(profiles(freqca_dirs)) == 1 and torch.isfinite(second).all()
