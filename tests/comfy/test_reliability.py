"""Reliability of FreqCa Accelerate (issue 8): nothing the node does may break a user's workflow.

Every case runs ComfyUI's own validation and sampling code (v0.3.64, CPU) on the harness's tiny random Flux
(2 double + 3 single blocks). "close" means relative L1 to the uncached run under a bound; "exact" means
``torch.equal``. Each sampler's error is printed (``pytest -s``). Cases and findings are summarised in the
report of issue 8; the short version:

- ComfyUI checks the schema's min/max itself only for inputs that ``validate_inputs`` does not name;
  ``validate_inputs`` checks the rest (``method``: ComfyUI 0.3.64 does not check V3 combo values at all).
- Stochastic samplers (ancestral, SDE, lcm, ddpm, er_sde, seeds, sa_solver) deviate more from the uncached
  run than ODE samplers: fresh noise enters at every step and a cached step cannot react to it (the noise of
  the last step stays in the output unless ``final_full_steps`` >= 1). They get a looser bound.
- A block patch of another pack registered *before* the node runs at full steps only. One registered
  *after* it on the same key (ComfyUI keeps one patch per key) either calls ours (chaining: caching goes on,
  it runs at every step) or replaces ours: on a middle block caching goes on; on the first or last block
  the run is uncached (exactly) and FreqCa logs a warning and says so in its summary. Applying the node
  again keeps such a patch. ``ModelPatcher.clone()`` deep-copies patch objects (see ``OtherPatch``).
- ComfyUI cannot nest two sampling runs of one model (with or without the node), so "two samplers" run in
  turn.
"""
from __future__ import annotations

import asyncio
import gc
import importlib.util
import logging
import sys
import weakref
from pathlib import Path

import pytest
import torch

from freqca_lab.comfy.harness import apply_node, build_flux, count_block_calls, flux_conditioning, rel_l1

STEPS = 6
SHAPE = (1, 16, 16, 16)  # 8 x 8 image tokens
N_BLOCKS = 5
SETTINGS = dict(method="freqca", interval=3, warmup_steps=2, final_full_steps=0, start_percent=0.0, end_percent=1.0)
ODE_BOUND = 0.05
STOCHASTIC_BOUND = 0.6
STOCHASTIC = {"euler_ancestral", "euler_ancestral_cfg_pp", "dpm_2_ancestral", "dpmpp_2s_ancestral",
              "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
              "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm",
              "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp", "er_sde", "seeds_2", "seeds_3",
              "sa_solver", "sa_solver_pece"}
SKIPPED_SAMPLERS: dict[str, str] = {}  # none needs extra models or is too slow at this size
ALL_SAMPLERS = ['euler', 'euler_cfg_pp', 'euler_ancestral', 'euler_ancestral_cfg_pp', 'heun', 'heunpp2', 'dpm_2',
                'dpm_2_ancestral', 'lms', 'dpm_fast', 'dpm_adaptive', 'dpmpp_2s_ancestral',
                'dpmpp_2s_ancestral_cfg_pp', 'dpmpp_sde', 'dpmpp_sde_gpu', 'dpmpp_2m', 'dpmpp_2m_cfg_pp',
                'dpmpp_2m_sde', 'dpmpp_2m_sde_gpu', 'dpmpp_2m_sde_heun', 'dpmpp_2m_sde_heun_gpu', 'dpmpp_3m_sde',
                'dpmpp_3m_sde_gpu', 'ddpm', 'lcm', 'ipndm', 'ipndm_v', 'deis', 'res_multistep',
                'res_multistep_cfg_pp', 'res_multistep_ancestral', 'res_multistep_ancestral_cfg_pp',
                'gradient_estimation', 'gradient_estimation_cfg_pp', 'er_sde', 'seeds_2', 'seeds_3', 'sa_solver',
                'sa_solver_pece', 'ddim', 'uni_pc', 'uni_pc_bh2']  # comfy.samplers.KSampler.SAMPLERS in v0.3.64


# ---------------------------------------------------------------------------------------------- helpers


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def accelerate(model, **inputs):
    """The node's ``execute`` as ComfyUI calls it; returns the patched model."""
    return apply_node(model, **dict(SETTINGS, **inputs))


def run(model, conds, *, steps=STEPS, cfg=1.0, sampler="euler", scheduler="simple", seed=0, shape=SHAPE,
        latent=None, denoise=1.0, start_step=None, last_step=None, add_noise=True, force_full_denoise=False,
        callback=None):
    """KSampler / KSamplerAdvanced's path (``prepare_noise`` + ``comfy.sample.sample``)."""
    import comfy.sample

    latent = torch.zeros(shape) if latent is None else latent
    noise = comfy.sample.prepare_noise(latent, seed) if add_noise else torch.zeros_like(latent)
    return comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, conds[0], conds[1], latent,
                               denoise=denoise, disable_noise=not add_noise, start_step=start_step,
                               last_step=last_step, force_full_denoise=force_full_denoise, callback=callback,
                               disable_pbar=True, seed=seed)


def run_sigmas(model, conds, sigmas, *, sampler="euler", seed=0, shape=SHAPE, cfg=1.0):
    """SamplerCustom's path with an explicit sigma list."""
    import comfy.sample
    import comfy.samplers

    latent = torch.zeros(shape)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample_custom(model, noise, cfg, comfy.samplers.sampler_object(sampler),
                                      torch.tensor(sigmas, dtype=torch.float32), conds[0], conds[1], latent,
                                      disable_pbar=True, seed=seed)


def full_steps(steps, interval=SETTINGS["interval"], warmup=SETTINGS["warmup_steps"], final_full=0):
    from comfyui_freqca.freqca_core import FixedSchedule

    return len(FixedSchedule(warmup, interval, final_full).for_run(steps).full_steps(steps))  # as the node fits it


@pytest.fixture
def runs(monkeypatch, pack):
    """Statistics of every sampling run (captured when the run's controller is released)."""
    from comfyui_freqca.freqca_core import CacheController

    log: list = []
    end_run = CacheController.end_run

    def recording_end_run(self):
        log.append((self.method.history_size, self.cache.nbytes, weakref.ref(self)))
        stats = end_run(self)
        log[-1] = (stats,) + log[-1]
        return stats

    monkeypatch.setattr(CacheController, "end_run", recording_end_run)
    return log


class OtherPatch:
    """Another pack's ``patches_replace["dit"]`` block patch: runs the block (or the patch it found there)
    and changes its ``img`` output (a scale and a fixed per-channel offset, which the LayerNorm of the next
    block or final layer does not remove), so that whether it ran shows in the result."""

    def __init__(self, previous=None, scale=1.5):
        self.previous, self.scale, self.calls = previous, scale, 0
        self.offset = torch.randn(64, generator=torch.Generator().manual_seed(19)) * 0.5

    def __deepcopy__(self, memo):  # ModelPatcher.clone() deep-copies model_options: keep one call counter
        return self

    def __call__(self, args, extra):
        self.calls += 1
        out = dict(self.previous(args, extra) if self.previous is not None else extra["original_block"](args))
        out["img"] = out["img"] * self.scale + self.offset.to(out["img"])
        return out


def with_other_patch(model, key, patch, chain=True):
    """``patch`` registered on a clone of ``model`` at ``key``; ``chain``: it calls the patch it found there
    (as well-behaved packs do), else it replaces it and calls the original block."""
    patched = model.clone()
    previous = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    patch.previous = previous.get(key) if chain else None
    patched.set_model_patch_replace(patch, "dit", key[0], key[1])
    return patched


def comfy_nodes():
    """ComfyUI's own ``nodes`` module (loaded by file path: the pack has a ``nodes`` package too)."""
    loaded = sys.modules.get("nodes")
    if loaded is None or not hasattr(loaded, "NODE_CLASS_MAPPINGS"):
        import comfy.model_patcher

        path = Path(comfy.model_patcher.__file__).resolve().parents[1] / "nodes.py"
        spec = importlib.util.spec_from_file_location("nodes", path)
        loaded = importlib.util.module_from_spec(spec)
        sys.modules["nodes"] = loaded
        spec.loader.exec_module(loaded)
    return loaded


# ------------------------------------------------------------------------------------------- bad inputs


NAN, INF = float("nan"), float("inf")
BAD_INPUTS = [
    ("interval", 0, r"interval must be an integer in \[1, "),
    ("interval", 1001, r"interval must be an integer in \[1, 1000\]"),
    ("interval", 2.5, r"interval must be an integer"),
    ("interval", "4", r"interval must be an integer"),
    ("interval", True, r"interval must be an integer"),
    ("warmup_steps", -1, r"warmup_steps must be an integer in \[0, "),
    ("warmup_steps", None, r"warmup_steps must be an integer"),
    ("final_full_steps", -1, r"final_full_steps must be an integer in \[0, "),
    ("cutoff", -0.01, r"cutoff must be in \[0.0, 1.0\]"),
    ("cutoff", 1.5, r"cutoff must be in \[0.0, 1.0\]"),
    ("cutoff", NAN, r"cutoff must be a finite number in \[0.0, 1.0\]"),
    ("cutoff", "0.1", r"cutoff must be a finite number"),
    ("hermite_scale", 0.0, r"hermite_scale must be in \(0.0, 2.0\]"),
    ("hermite_scale", 2.5, r"hermite_scale must be in \(0.0, 2.0\]"),
    ("hermite_scale", INF, r"hermite_scale must be a finite number"),
    ("start_percent", -0.1, r"start_percent must be in \[0.0, 1.0\]"),
    ("start_percent", 1.1, r"start_percent must be in \[0.0, 1.0\]"),
    ("end_percent", 1.5, r"end_percent must be in \[0.0, 1.0\]"),
    ("end_percent", NAN, r"end_percent must be a finite number"),
    ("method", "fast", r"method must be one of freqca, reuse, taylor"),
    ("method", None, r"method must be one of freqca, reuse, taylor"),
]


@pytest.mark.parametrize("name, value, message", BAD_INPUTS, ids=[f"{n}={v!r}" for n, v, _ in BAD_INPUTS])
def test_execute_rejects_a_bad_input_naming_it(pack, flux, name, value, message):
    with pytest.raises(ValueError, match=message):
        accelerate(flux, **{name: value})


@pytest.mark.parametrize("method", ["reuse", "taylor"])
def test_execute_checks_inputs_the_method_does_not_use(pack, flux, method):
    with pytest.raises(ValueError, match=r"hermite_scale must be in"):
        accelerate(flux, method=method, hermite_scale=-1.0)
    with pytest.raises(ValueError, match=r"cutoff must be in"):
        accelerate(flux, method=method, cutoff=2.0)


def test_execute_rejects_end_before_start(pack, flux):
    with pytest.raises(ValueError, match=r"end_percent \(0.2\) must be >= start_percent \(0.5\)"):
        accelerate(flux, start_percent=0.5, end_percent=0.2)


def test_unsupported_model_is_named(pack, comfyui):
    import comfy.model_patcher

    class UNetModel(torch.nn.Module):
        pass

    model = comfy.model_patcher.ModelPatcher(torch.nn.Module(), torch.device("cpu"), torch.device("cpu"))
    model.model.diffusion_model = UNetModel()
    with pytest.raises(ValueError, match=r"does not support the model family UNetModel \(.*UNetModel\).*Supported:"):
        accelerate(model)


class _ValidationHarness:
    """``execution.validate_inputs`` of one of the pack's nodes: FreqCa Accelerate fed by a MODEL source (and a
    FLOAT source for linked values), or FreqCa Options alone."""

    def __init__(self, node_class):
        self.node_class = node_class
        self.nodes = comfy_nodes()
        import execution

        self.execution = execution

        class TestModelSource:
            RETURN_TYPES = ("MODEL",)
            FUNCTION = "run"

            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {}}

        class TestFloatSource(TestModelSource):
            RETURN_TYPES = ("FLOAT",)

        self.classes = {"FreqCaNode": node_class, "TestModelSource": TestModelSource,
                        "TestFloatSource": TestFloatSource}

    def validate(self, **inputs):
        schema = self.node_class.define_schema()
        defaults = {i.id: i.default for i in schema.inputs if getattr(i, "default", None) is not None}
        if schema.node_id == "FreqCaAccelerate":
            defaults.update(SETTINGS, model=["1", 0])
        prompt = {"1": {"class_type": "TestModelSource", "inputs": {}},
                  "3": {"class_type": "TestFloatSource", "inputs": {}},
                  "2": {"class_type": "FreqCaNode", "inputs": {**defaults, **inputs}}}
        mappings = self.nodes.NODE_CLASS_MAPPINGS
        saved = {k: mappings.get(k) for k in self.classes}
        mappings.update(self.classes)
        try:
            ok, errors, _ = asyncio.run(self.execution.validate_inputs("test", prompt, "2", {}))
        finally:
            for k, v in saved.items():
                if v is None:
                    mappings.pop(k, None)
                else:
                    mappings[k] = v
        return ok, errors


@pytest.fixture(scope="module")
def validation(pack):
    from comfyui_freqca.nodes.freqca_node import FreqCaAccelerate, FreqCaOptions

    return {"main": _ValidationHarness(FreqCaAccelerate), "options": _ValidationHarness(FreqCaOptions)}


def _schema_ranges(node: str) -> dict:
    from comfyui_freqca.nodes.freqca_node import FreqCaAccelerate, FreqCaOptions

    node_class = {"main": FreqCaAccelerate, "options": FreqCaOptions}[node]
    required = node_class.INPUT_TYPES()["required"]
    return {name: (info[1]["min"], info[1]["max"], info[0]) for name, info in required.items()
            if info[0] in ("INT", "FLOAT")}


def test_comfyui_validation_accepts_defaults_and_linked_values(validation):
    assert validation["main"].validate() == (True, [])
    assert validation["options"].validate() == (True, [])
    assert validation["main"].validate(start_percent=["3", 0], end_percent=0.1) == (True, [])


@pytest.mark.parametrize("node,name", [("main", n) for n in ("interval", "warmup_steps", "final_full_steps",
                                                             "start_percent", "end_percent")]
                         + [("options", n) for n in ("tolerance", "taylor_order", "cutoff", "hermite_scale",
                                                     "exposure_delta")])
def test_comfyui_validation_reports_a_bad_value_once_on_its_input(pack, validation, node, name):
    low, high, kind = _schema_ranges(node)[name]
    step = 1 if kind == "INT" else 0.01
    for value, bound in ((low - step, low), (high + step, high)):
        ok, errors = validation[node].validate(**{name: value})
        assert ok is False and len(errors) == 1, (name, value, errors)
        assert errors[0]["extra_info"]["input_name"] == name
        assert str(bound) in errors[0]["message"], errors[0]


def test_comfyui_validation_rejects_wrong_kinds_and_choices_once(validation):
    ok, errors = validation["main"].validate(interval="abc")
    assert not ok and [(e["type"], e["extra_info"]["input_name"]) for e in errors] == [("invalid_input_type",
                                                                                         "interval")]
    ok, errors = validation["options"].validate(cutoff="x")
    assert not ok and [e["extra_info"]["input_name"] for e in errors] == ["cutoff"]
    ok, errors = validation["main"].validate(method="fast")
    assert not ok and [e["extra_info"]["input_name"] for e in errors] == ["method"]
    assert "method must be one of freqca, reuse, taylor" in errors[0]["details"]


def test_values_only_execution_can_check_are_refused_there_naming_the_input(pack, flux):
    """End before start needs two values and ComfyUI 0.3.64 checks no V3 combo: execute() refuses them."""
    from comfyui_freqca.nodes.freqca_node import FreqCaOptions

    with pytest.raises(ValueError, match=r"cutoff must be a finite number"):  # NaN passes ComfyUI's min/max
        accelerate(flux, cutoff=NAN)
    defaults = {i.id: i.default for i in FreqCaOptions.define_schema().inputs}
    for name in ("schedule", "feb_level"):
        with pytest.raises(ValueError, match=rf"^{name} must be one of"):
            FreqCaOptions.execute(**{**defaults, name: "bogus"})


# -------------------------------------------------------------------------------- samplers / schedulers




@pytest.mark.parametrize("sampler", ALL_SAMPLERS)
def test_every_sampler_finite_and_close(pack, flux, conds, sampler):
    import comfy.samplers

    if sampler not in comfy.samplers.KSampler.SAMPLERS:
        pytest.skip(f"{sampler} is not in this ComfyUI")
    reference = run(flux, conds, sampler=sampler, seed=3)
    out = run(accelerate(flux), conds, sampler=sampler, seed=3)
    assert torch.isfinite(out).all()
    error = rel_l1(out, reference)
    print(f"\n  {sampler}: rel. L1 vs uncached {error:.4f}")
    assert 0 < error < (STOCHASTIC_BOUND if sampler in STOCHASTIC else ODE_BOUND)


def test_sampler_list_is_covered(comfyui):
    import comfy.samplers

    missing = set(comfy.samplers.KSampler.SAMPLERS) - set(ALL_SAMPLERS) - set(SKIPPED_SAMPLERS)
    assert not missing, f"samplers added to ComfyUI: add them to ALL_SAMPLERS: {sorted(missing)}"


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m", "uni_pc", "res_multistep", "euler_ancestral"])
def test_interval_one_exact(pack, flux, conds, sampler):
    reference = run(flux, conds, sampler=sampler, seed=5)
    assert torch.equal(run(accelerate(flux, interval=1), conds, sampler=sampler, seed=5), reference)


# Schedules with a big sigma jump after closely spaced full steps: FreqCa forecasts in sigma, so a cached
# step far from the last full steps extrapolates the history a long way (reuse does better there; see the
# report of issue 8). Still finite and bounded; the others stay under ODE_BOUND.
#   linear_quadratic, 10 steps: warm-up steps 0.005 apart, then steps up to 0.35 wide.
#   simple + ModelSamplingFlux for 2048 x 2048 (shift e^3.2): 0.99 ... 0.86, 0.74, then 0.74 -> 0 in one step.
SCHEDULE_BOUNDS = {"linear_quadratic": 0.3, "flux_shift_2048": 0.2}


@pytest.mark.parametrize("scheduler", ["simple", "normal", "karras", "exponential", "sgm_uniform", "beta",
                                       "ddim_uniform", "kl_optimal", "linear_quadratic", "flux_shift_1024",
                                       "flux_shift_2048"])
def test_schedulers(pack, flux, conds, scheduler):
    model = flux
    if scheduler.startswith("flux_shift"):  # ModelSamplingFlux as in FLUX workflows (1024: the model default)
        comfy_nodes()
        from comfy_extras.nodes_model_advanced import ModelSamplingFlux

        size = int(scheduler.rsplit("_", 1)[1])
        model = ModelSamplingFlux().patch(flux, 1.15, 0.5, size, size)[0]
    name = "simple" if scheduler.startswith("flux_shift") else scheduler
    reference = run(model, conds, scheduler=name, steps=10)
    out = run(accelerate(model), conds, scheduler=name, steps=10)
    assert torch.isfinite(out).all()
    error = rel_l1(out, reference)
    print(f"\n  {scheduler}: rel. L1 vs uncached {error:.4f}")
    assert 0 < error < SCHEDULE_BOUNDS.get(scheduler, ODE_BOUND)
    assert torch.equal(run(accelerate(model, interval=1), conds, scheduler=name, steps=10), reference)


# ----------------------------------------------------------------------------------------- sampling modes


def test_img2img_denoise(pack, flux, conds, runs):
    image = torch.randn(SHAPE, generator=torch.Generator().manual_seed(9))
    reference = run(flux, conds, latent=image, denoise=0.6)
    fast = accelerate(flux)
    with count_block_calls(flux) as calls:
        out = run(fast, conds, latent=image, denoise=0.6)
    assert calls.total == full_steps(STEPS) * N_BLOCKS  # the STEPS steps of the shortened schedule
    assert runs[-1][0].n_steps == STEPS
    assert rel_l1(out, reference) < ODE_BOUND
    assert torch.equal(run(accelerate(flux, interval=1), conds, latent=image, denoise=0.6), reference)


def two_stage(model_a, model_b, conds, switch=STEPS // 2, sampler="euler"):
    """KSamplerAdvanced x 2: steps [0, switch) with leftover noise, then [switch, end) without adding noise."""
    first = run(model_a, conds, start_step=0, last_step=switch, sampler=sampler)
    return run(model_b, conds, latent=first, start_step=switch, last_step=10000, add_noise=False,
               force_full_denoise=True, sampler=sampler)


def test_two_stage_sampling(pack, flux, conds, runs):
    reference = two_stage(flux, flux, conds)
    fast = accelerate(flux)
    out = two_stage(fast, fast, conds)
    assert rel_l1(out, reference) < ODE_BOUND
    first, second = runs[-2][0], runs[-1][0]
    # each stage is its own run: the second starts with its own warm-up, nothing carried over
    assert first.n_steps == STEPS // 2 and second.n_steps == STEPS - STEPS // 2
    assert second.timeline().startswith("FF") and second.fallbacks == 0
    assert torch.equal(two_stage(accelerate(flux, interval=1), accelerate(flux, interval=1), conds), reference)
    # the stages may also use different settings, or only one of them the node
    assert rel_l1(two_stage(flux, fast, conds), reference) < ODE_BOUND
    assert rel_l1(two_stage(fast, flux, conds), reference) < ODE_BOUND


@pytest.mark.parametrize("cfg, batch", [(1.0, 1), (3.0, 1), (1.0, 4), (3.0, 4)])
def test_cfg_and_batch(pack, flux, conds, cfg, batch, runs):
    shape = (batch,) + SHAPE[1:]
    reference = run(flux, conds, cfg=cfg, shape=shape)
    fast = accelerate(flux)
    with count_block_calls(flux) as calls:
        out = run(fast, conds, cfg=cfg, shape=shape)
    assert calls.total == full_steps(STEPS) * N_BLOCKS  # cond and uncond run as one batch
    assert runs[-1][0].fallbacks == 0
    assert rel_l1(out, reference) < ODE_BOUND
    assert torch.equal(run(accelerate(flux, interval=1), conds, cfg=cfg, shape=shape), reference)


def test_queued_runs_change_size_batch_and_prompt(pack, flux, conds, runs):
    fast = accelerate(flux)
    other = flux_conditioning(seed=7, tokens=5)
    first = run(fast, conds)
    changes = [dict(shape=(2, 16, 24, 16)), dict(shape=(1, 16, 8, 24)), dict(conds=other),
               dict(shape=(3, 16, 16, 16), conds=other, cfg=2.0)]
    for change in changes:
        change = dict(change)
        use = change.pop("conds", conds)
        out = run(fast, use, **change)
        assert runs[-1][0].fallbacks == 0
        assert torch.equal(out, run(accelerate(flux), use, **change))  # as on a fresh node
    assert torch.equal(run(fast, conds), first)


def test_one_patched_model_in_two_samplers(pack, flux, conds):
    """One patched model feeding two samplers (in turn: ComfyUI cannot nest sampling runs of one model,
    with or without the node: the inner run's cleanup unsets ``current_patcher``)."""
    fast = accelerate(flux)
    euler = run(fast, conds)
    dpm = run(fast, conds, sampler="dpmpp_2m")
    assert torch.equal(run(fast, conds), euler)
    assert torch.equal(run(accelerate(flux), conds, sampler="dpmpp_2m"), dpm)
    assert rel_l1(dpm, run(flux, conds, sampler="dpmpp_2m")) < ODE_BOUND


def test_same_seed_same_output(pack, flux, conds):
    fast = accelerate(flux)
    for sampler in ("euler", "euler_ancestral", "dpmpp_sde"):
        assert torch.equal(run(fast, conds, sampler=sampler, seed=11), run(fast, conds, sampler=sampler, seed=11))


# ------------------------------------------------------------------------------------------ other patches


def lora_like(model):
    """A LoRA-like weight patch (``add_patches`` with 'diff' patches) on a clone of ``model``."""
    generator = torch.Generator().manual_seed(13)
    sd = model.model.state_dict()
    keys = [k for k in sd if k.startswith("diffusion_model.") and k.endswith("qkv.weight")]
    patched = model.clone()
    added = patched.add_patches({k: (torch.randn(sd[k].shape, generator=generator) * 0.05,) for k in keys}, 1.0)
    assert len(added) == len(keys) > 0
    return patched


def test_lora_like_weight_patch_either_order(pack, flux, conds):
    base = run(flux, conds)
    reference = run(lora_like(flux), conds)
    assert rel_l1(reference, base) > 1e-3  # the patch matters
    for model in (accelerate(lora_like(flux)), lora_like(accelerate(flux))):
        assert rel_l1(run(model, conds), reference) < ODE_BOUND
    for model in (accelerate(lora_like(flux), interval=1), lora_like(accelerate(flux, interval=1))):
        assert torch.equal(run(model, conds), reference)
    assert torch.equal(run(flux, conds), base)  # the loaded model is back as it was


def test_other_block_patch_before_the_node(pack, flux, conds):
    for key in (("double_block", 0), ("double_block", 1), ("single_block", 2)):
        patch = OtherPatch()
        other = with_other_patch(flux, key, patch)
        reference = run(other, conds)
        assert rel_l1(reference, run(flux, conds)) > 1e-3
        patch.calls = 0
        out = run(accelerate(other), conds)
        assert patch.calls == full_steps(STEPS)  # it runs at every full step, never at cached ones
        assert rel_l1(out, reference) < ODE_BOUND
        patch.calls = 0
        assert torch.equal(run(accelerate(other, interval=1), conds), reference)
        assert patch.calls == STEPS


@pytest.mark.parametrize("key", [("double_block", 0), ("double_block", 1), ("single_block", 2)])
@pytest.mark.parametrize("chain", [True, False], ids=["chaining", "replacing"])
def test_other_block_patch_after_the_node(pack, flux, conds, key, chain, runs, caplog):
    """ComfyUI keeps one patch per key, so a patch registered after ours on a key either calls ours
    (chaining) or replaces it. Chaining, and replacing a middle block: caching goes on, the other patch runs
    at every step (at cached steps around our pass-through; its effect there comes with the forecast).
    Replacing our first or last block: no call is planned or no feature recorded, so the whole run is
    uncached (exactly), and a warning says so."""
    reference = run(with_other_patch(flux, key, OtherPatch()), conds)
    patch = OtherPatch()
    model = with_other_patch(accelerate(flux), key, patch, chain=chain)
    with caplog.at_level(logging.WARNING, logger="freqca"):
        out = run(model, conds)
    assert patch.calls == STEPS
    stats = runs[-1][0]
    if chain or key == ("double_block", 1):
        assert stats.cached_steps == STEPS - full_steps(STEPS)
        assert rel_l1(out, reference) < ODE_BOUND
        assert "replaced" not in caplog.text
    else:
        assert stats.cached_steps == 0
        assert torch.equal(out, reference)
        assert "did not reach FreqCa's first or last block patch" in caplog.text


def test_node_applied_twice(pack, flux, conds):
    reference = run(flux, conds)
    twice = accelerate(accelerate(flux, interval=3), interval=1)
    with count_block_calls(flux) as calls:
        assert torch.equal(run(twice, conds), reference)  # the second settings win, exact
    assert calls.total == STEPS * N_BLOCKS  # no double patching
    assert torch.equal(run(accelerate(accelerate(flux, interval=1), interval=3), conds),
                       run(accelerate(flux, interval=3), conds))
    # another pack's patch under the first node is kept, and runs once per block call
    patch = OtherPatch()
    other = with_other_patch(flux, ("double_block", 1), patch)
    other_reference = run(other, conds)
    patch.calls = 0
    assert torch.equal(run(accelerate(accelerate(other, interval=4), interval=1), conds), other_reference)
    assert patch.calls == STEPS


@pytest.mark.parametrize("chain", [True, False], ids=["chaining", "replacing"])
def test_other_patch_between_two_node_applications_is_kept(pack, flux, conds, chain):
    key = ("double_block", 1)
    reference = run(with_other_patch(flux, key, OtherPatch()), conds)
    patch = OtherPatch()
    model = accelerate(with_other_patch(accelerate(flux), key, patch, chain=chain), interval=1)
    assert torch.equal(run(model, conds), reference)
    assert patch.calls == STEPS


def fake_control():
    """A ``comfy.controlnet.ControlBase`` whose ``get_control`` returns Flux-ControlNet-shaped residuals
    (``input`` per double block, ``output`` per single block, ``[B, image tokens, hidden]``) from a fixed
    random projection of the noisy latent. The model adds them in place into the blocks' outputs."""
    import comfy.controlnet

    class FakeControl(comfy.controlnet.ControlBase):
        def __init__(self):
            super().__init__()
            self.calls = 0
            self.projection = torch.randn(64, 64, generator=torch.Generator().manual_seed(17)) * 0.1

        def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
            self.calls += 1
            b, c, h, w = x_noisy.shape
            tokens = x_noisy.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * 4)
            residual = tokens @ self.projection.to(tokens)
            return {"input": [residual, residual * 0.5], "output": [residual * 0.25, None, residual * 0.5]}

        def copy(self):
            return self

    return FakeControl()


def test_controlnet_like_control(pack, flux, conds):
    control = fake_control()
    positive = [[c, dict(d, control=control, control_apply_to_uncond=True)] for c, d in conds[0]]
    controlled = (positive, conds[1])
    base = run(flux, conds, cfg=2.0)
    reference = run(flux, controlled, cfg=2.0)
    assert rel_l1(reference, base) > 1e-3
    control.calls = 0
    fast = accelerate(flux)
    out = run(fast, controlled, cfg=2.0)
    assert control.calls == STEPS  # computed at every step, cached ones too
    assert rel_l1(out, reference) < ODE_BOUND
    assert torch.equal(run(fast, controlled, cfg=2.0), out)  # its in-place adds never touch the stored CRFs
    assert torch.equal(run(accelerate(flux, interval=1), controlled, cfg=2.0), reference)


# ----------------------------------------------------------------------------------------------- faults


def test_nan_forecast_falls_back_to_full(pack, flux, conds, runs, caplog, monkeypatch):
    from comfyui_freqca.freqca_core import methods

    reference = run(flux, conds)

    def nan_predict(self, history, sigma, layout):
        return torch.full_like(history.entries[0].crf, float("nan"))

    monkeypatch.setattr(methods.freqca.FreqCaMethod, "predict", nan_predict)
    with caplog.at_level(logging.WARNING, logger="freqca"):
        out = run(accelerate(flux), conds)
    assert torch.equal(out, reference)
    assert "not finite" in caplog.text
    assert runs[-1][0].fallbacks == STEPS - full_steps(STEPS)


def test_nan_in_stored_crf_falls_back_to_full(pack, flux, conds, runs, caplog, monkeypatch):
    """A stored CRF that is not finite (here: every one) makes the forecast non-finite: full compute."""
    from comfyui_freqca.freqca_core import cache

    reference = run(flux, conds)
    push = cache.CRFHistory.push

    def poisoned_push(self, sigma, step, crf, device=None):
        push(self, sigma, step, crf, device)
        self.entries[0].crf[..., 0] = float("nan")

    monkeypatch.setattr(cache.CRFHistory, "push", poisoned_push)
    with caplog.at_level(logging.WARNING, logger="freqca"):
        assert torch.equal(run(accelerate(flux), conds), reference)
    assert "not finite" in caplog.text
    assert runs[-1][0].fallbacks == STEPS - full_steps(STEPS)


def test_exception_in_forecast_degrades_to_full(pack, flux, conds, runs, caplog, monkeypatch):
    from comfyui_freqca.freqca_core import methods

    reference = run(flux, conds)

    def broken(self, history, sigma, layout):
        raise RuntimeError("injected")

    monkeypatch.setattr(methods.freqca.FreqCaMethod, "predict", broken)
    with caplog.at_level(logging.WARNING, logger="freqca"):
        assert torch.equal(run(accelerate(flux), conds), reference)
    assert "injected" in caplog.text


@pytest.mark.parametrize("where", ["plan", "record", "prepare"])
def test_exception_in_our_code_degrades_to_full(pack, flux, conds, runs, caplog, monkeypatch, where):
    """Planning, recording or preparing the cached output fails: that call (and, without a history, every
    later one) runs the full model; the run finishes and equals the uncached one."""
    from comfyui_freqca.freqca_core import CacheController
    from comfyui_freqca.nodes import attach

    reference = run(flux, conds)

    def broken(*args, **kwargs):
        raise RuntimeError(f"injected into {where}")

    if where == "prepare":
        target = getattr(attach.RunState, "prepare_cached", None)
        if target is None:
            pytest.fail("RunState.prepare_cached is missing")
        monkeypatch.setattr(attach.RunState, "prepare_cached", broken)
    else:
        monkeypatch.setattr(CacheController, where, broken)
    with caplog.at_level(logging.WARNING, logger="freqca"):
        assert torch.equal(run(accelerate(flux), conds), reference)
    assert f"injected into {where}" in caplog.text


def test_interrupt_leaves_no_state(pack, flux, conds, runs):
    import comfy.model_management

    fast = accelerate(flux)
    expected = run(accelerate(flux), conds)

    def interrupt(step, *_):
        if step == 4:
            raise comfy.model_management.InterruptProcessingException()

    with pytest.raises(comfy.model_management.InterruptProcessingException):
        run(fast, conds, callback=interrupt)
    stats, history_size, cache_bytes_at_end, controller = runs[-1]
    assert "freqca_run" not in fast.model_options["transformer_options"]
    assert stats.steps and len(stats.steps) < STEPS  # it was stopped mid-run, and the controller released
    del stats
    sys.last_traceback = sys.last_value = sys.last_type = None
    gc.collect()
    assert controller() is None or controller().cache.nbytes == 0
    assert torch.equal(run(fast, conds), expected)


def same(a, b) -> bool:
    return torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))


@pytest.mark.parametrize("sigmas", [[0.0, 0.0], [1.0, 0.0], [0.5], [], [1.0, 1.0, 0.0], [0.3, 0.6, 0.0],
                                    [1.0, 0.5, 0.5, 0.0], [1.0, 0.7, 0.0, 0.0]],
                         ids=lambda s: "sigmas=" + ",".join(map(str, s)))
def test_unusual_sigma_lists(pack, flux, conds, sigmas, runs):
    """Custom sigma lists (SamplerCustom, SplitSigmas): no crash, the same finite/NaN pattern as uncached
    (euler itself gives NaN for [0, 0]: it divides by sigma 0), exact where no step can be cached."""
    reference = run_sigmas(flux, conds, sigmas)
    out = run_sigmas(accelerate(flux, interval=2, warmup_steps=1), conds, sigmas)
    assert out.shape == SHAPE
    assert torch.equal(torch.isfinite(out), torch.isfinite(reference))
    stats = runs[-1][0] if runs else None
    if stats is None or stats.cached_steps == 0 or not torch.isfinite(reference).all():
        assert same(out, reference) or not torch.isfinite(reference).any()
    else:  # e.g. [0.3, 0.6, 0]: the one cached step is the last, and spans the largest sigma jump
        print(f"\n  sigmas {sigmas}: {stats.timeline()} rel. L1 {rel_l1(out, reference):.4f}")
        assert rel_l1(out, reference) < 0.5


@pytest.mark.parametrize("kwargs", [dict(steps=1), dict(steps=4, start_step=3, last_step=10000),
                                    dict(steps=4, start_step=4, last_step=10000),
                                    dict(steps=4, start_step=0, last_step=0),
                                    dict(steps=4, last_step=1, force_full_denoise=True)], ids=str)
def test_one_step_and_empty_ranges(pack, flux, conds, kwargs):
    reference = run(flux, conds, **kwargs)
    assert same(run(accelerate(flux, interval=2, warmup_steps=0), conds, **kwargs), reference)


# ------------------------------------------------------------------------------------------------ memory


def live_tensors() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if torch.is_tensor(obj))


def test_no_growth_over_100_runs(pack, flux, conds, runs):
    fast = accelerate(flux, interval=2, warmup_steps=1)
    kwargs = dict(steps=5, shape=(1, 16, 4, 4), cfg=2.0)  # FcFcF (4 steps would be too short to cache)
    for _ in range(5):
        run(fast, conds, **kwargs)
    before = live_tensors()
    for i in range(100):
        run(fast, conds, **kwargs)
    after = live_tensors()
    assert after <= before, (before, after)
    assert len(runs) == 105 and all(stats.cached_steps == 2 for stats, *_ in runs)
    gc.collect()
    assert all(ref() is None for *_, ref in runs)  # every run's controller (and its cache) is gone
    assert "freqca_run" not in fast.model_options["transformer_options"]


@pytest.mark.parametrize("method, cfg, batch", [("freqca", 1.0, 1), ("freqca", 3.0, 2), ("reuse", 3.0, 1),
                                                ("taylor", 1.0, 3)])
def test_cache_bytes(pack, flux, conds, runs, method, cfg, batch):
    """Peak cache size = history size x CRF bytes per stream x streams (cond/uncond), and 0 after the run."""
    shape = (batch, 16, 16, 24)
    run(accelerate(flux, method=method, interval=2, warmup_steps=3), conds, cfg=cfg, shape=shape, steps=10)
    stats, history_size, bytes_at_end, _ = runs[-1]
    streams = 2 if cfg > 1 else 1
    crf_bytes = batch * (16 // 2) * (24 // 2) * 64 * 4  # rows x image tokens x hidden x float32
    assert history_size == {"freqca": 3, "reuse": 1, "taylor": 2}[method]  # taylor: order 1, the node default
    assert stats.peak_cache_bytes == history_size * crf_bytes * streams
    assert bytes_at_end == stats.peak_cache_bytes
