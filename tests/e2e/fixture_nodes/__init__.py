"""Test-only ComfyUI custom nodes: the trained TinyFlux testbed inside real ComfyUI (never shipped as nodes).

Loaded only by the headless server of ``tests/e2e`` (symlinked into its temporary ``custom_nodes``):

- ``FreqCaTestbedLoader``: ComfyUI's own Flux model (``comfy.supported_models.Flux``) built in-process with
  the testbed's config, the shipped testbed weights loaded into it; pixel "latents" (3 channels, identity
  latent format) and the testbed's shift-2 flow schedule.
- ``FreqCaTestbedPrompt``: the testbed's learned conditioning for one of its prompts (positive) and for
  the null prompt (negative, for CFG).
- ``FreqCaTestbedEmptyLatent``: an empty 3-channel pixel latent.
- ``FreqCaTestbedDecode``: pixels in [-1, 1] to an IMAGE, enlarged (nearest) so it is visible.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

WEIGHTS = Path(__file__).resolve().parents[3] / "freqca_lab" / "testbed" / "weights"
MODEL_FILE = WEIGHTS / "tinyflux.safetensors"
PROMPT_FILE = WEIGHTS / "prompts.safetensors"
TESTBED_SHIFT = 2.0  # the testbed's sigma schedule: shift * t / (1 + (shift - 1) * t)


def _prompt_names() -> list[str]:
    try:
        with safe_open(str(PROMPT_FILE), framework="pt") as f:
            return f.metadata()["names"].split("\n")
    except Exception:  # weights missing: the node still registers, loading reports the problem
        return ["red circle"]


def _pixel_latent_format():
    import comfy.latent_formats

    class TestbedPixels(comfy.latent_formats.LatentFormat):
        latent_channels = 3
        scale_factor = 1.0

    return TestbedPixels()


def build_testbed_model():
    """ComfyUI's Flux model with the testbed's config and weights, in a ModelPatcher (fp32)."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    with safe_open(str(MODEL_FILE), framework="pt") as f:
        config = json.loads(f.metadata()["config"])
    unet_config = dict(image_model="flux", **config)
    model_config = comfy.supported_models.Flux(unet_config)
    model_config.latent_format = _pixel_latent_format()
    # ModelSamplingFlux's shift is the log of the usual shift: exp(mu) t / (exp(mu) t + 1 - t)
    model_config.sampling_settings = {"shift": math.log(TESTBED_SHIFT)}
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    state = {k: v.float() for k, v in load_file(str(MODEL_FILE)).items()}
    model.diffusion_model.load_state_dict(state, strict=True)
    model.diffusion_model.eval().requires_grad_(False)
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


class FreqCaTestbedLoader:
    CATEGORY = "testing/freqca"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"
    DESCRIPTION = "The trained TinyFlux testbed as a ComfyUI Flux model (test fixture)."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def load(self):
        return (build_testbed_model(),)


class FreqCaTestbedPrompt:
    CATEGORY = "testing/freqca"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"prompt": (_prompt_names(),)}}

    def encode(self, prompt: str):
        with safe_open(str(PROMPT_FILE), framework="pt") as f:
            names = f.metadata()["names"].split("\n")
            context, pooled = f.get_tensor("context").float(), f.get_tensor("pooled").float()
        row, null = names.index(prompt), len(names)

        def cond(i: int):
            return [[context[i:i + 1].clone(), {"pooled_output": pooled[i:i + 1].clone()}]]

        return cond(row), cond(null)


class FreqCaTestbedEmptyLatent:
    CATEGORY = "testing/freqca"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"width": ("INT", {"default": 32, "min": 8, "max": 256, "step": 2}),
                             "height": ("INT", {"default": 32, "min": 8, "max": 256, "step": 2}),
                             "batch_size": ("INT", {"default": 1, "min": 1, "max": 16})}}

    def generate(self, width: int, height: int, batch_size: int):
        return ({"samples": torch.zeros(batch_size, 3, height, width)},)


class FreqCaTestbedDecode:
    CATEGORY = "testing/freqca"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",),
                             "scale": ("INT", {"default": 8, "min": 1, "max": 16})}}

    def decode(self, samples, scale: int):
        pixels = ((samples["samples"].float() + 1) / 2).clamp(0, 1)
        if scale > 1:
            pixels = torch.nn.functional.interpolate(pixels, scale_factor=scale, mode="nearest")
        return (pixels.permute(0, 2, 3, 1).contiguous(),)


NODE_CLASS_MAPPINGS = {
    "FreqCaTestbedLoader": FreqCaTestbedLoader,
    "FreqCaTestbedPrompt": FreqCaTestbedPrompt,
    "FreqCaTestbedEmptyLatent": FreqCaTestbedEmptyLatent,
    "FreqCaTestbedDecode": FreqCaTestbedDecode,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "FreqCaTestbedLoader": "FreqCa testbed loader (test)",
    "FreqCaTestbedPrompt": "FreqCa testbed prompt (test)",
    "FreqCaTestbedEmptyLatent": "FreqCa testbed empty pixels (test)",
    "FreqCaTestbedDecode": "FreqCa testbed pixels to image (test)",
}
