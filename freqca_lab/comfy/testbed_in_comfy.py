"""A shipped, trained testbed loaded into ComfyUI's own Flux class (its state dict has Flux's layout);
``testbed`` names which (``freqca_lab.testbed.testbeds``: ``shapes``, the default, or ``photos``).

Random-weight models say little about fidelity (their blocks barely change the output); this one was
trained to denoise, so the node's error on it is meaningful. Its "latents" are 3-channel pixels.
"""
from __future__ import annotations

import json

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from freqca_lab.testbed.testbeds import get_testbed


def build_testbed_flux(testbed: str = "shapes"):
    """``comfy.supported_models.Flux`` with the testbed's config and trained weights, in a ModelPatcher."""
    import comfy.model_patcher
    import comfy.supported_models

    path = get_testbed(testbed).weights_dir / "tinyflux.safetensors"
    with safe_open(str(path), framework="pt") as f:
        config = json.loads(f.metadata()["config"])
    model_config = comfy.supported_models.Flux(dict(config, image_model="flux"))
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    model.diffusion_model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def prompt_conditioning(prompt: int, testbed: str = "shapes"):
    """Positive (prompt ``prompt``) and negative (the null prompt) conditioning from the shipped table."""
    tensors = load_file(str(get_testbed(testbed).weights_dir / "prompts.safetensors"))
    context, pooled = tensors["context"].float(), tensors["pooled"].float()
    null = context.shape[0] - 1

    def cond(i: int):
        return [[context[i:i + 1], {"pooled_output": pooled[i:i + 1]}]]

    return cond(prompt), cond(null)


def pixel_latent(batch: int = 1, size: tuple[int, int] = (32, 32)) -> torch.Tensor:
    """A start latent for txt2img: pure noise at sigma 1, so its content is irrelevant; it is not all zeros
    because ComfyUI would then widen an empty latent to Flux's 16 channels."""
    return torch.full((batch, 3, *size), 1e-3)
