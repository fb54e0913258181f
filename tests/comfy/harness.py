"""Helpers that run ComfyUI's own model classes and sampling code on tiny random-weight models (CPU)."""
from __future__ import annotations

import contextlib
import hashlib
import importlib.machinery
import sys
import types
from pathlib import Path
from typing import Iterator

import torch


def import_comfyui(path: Path) -> None:
    """Put ``path`` on ``sys.path`` and import ComfyUI's sampling stack in CPU mode.

    ComfyUI's ``model_base`` imports torchvision at import time (for Cosmos). Real installs have it; the CPU
    test machine cannot install one beside the CPU torch build, so an empty stand-in module is registered
    when (and only when) the real one is missing. No test here uses it.
    """
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    try:
        import torchvision  # noqa: F401
    except Exception:
        for name in ("torchvision", "torchvision.transforms"):
            module = types.ModuleType(name)
            module.__spec__ = importlib.machinery.ModuleSpec(name, None)
            sys.modules[name] = module
        sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401
    import comfy.model_patcher  # noqa: F401
    import comfy.sample  # noqa: F401
    import comfy.samplers  # noqa: F401
    import comfy.supported_models  # noqa: F401


FLUX_CONFIG = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=32,
                   hidden_size=64, mlp_ratio=4.0, num_heads=4, depth=2, depth_single_blocks=3,
                   axes_dim=[4, 6, 6], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=False)


def _init_weights(model: torch.nn.Module, seed: int) -> None:
    """Deterministic small weights (ComfyUI leaves them uninitialised); norms' scales at 1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("scale"):
                param.fill_(1.0)
            elif param.ndim > 1:
                param.copy_(torch.randn(param.shape, generator=generator) * (0.5 / param.shape[1] ** 0.5))
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)


def _patcher(model: torch.nn.Module):
    import comfy.model_patcher

    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def build_flux(seed: int = 0, **overrides):
    """A tiny random-weight Flux (``comfy.supported_models.Flux``) in a ModelPatcher on the CPU.

    Kontext runs on the same model class: pass ``reference_latents`` in the conditioning.
    """
    import comfy.supported_models

    config = dict(FLUX_CONFIG, **overrides)
    model_config = comfy.supported_models.Flux(config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    _init_weights(model.diffusion_model, seed)
    return _patcher(model)


def build_chroma(seed: int = 0, **overrides):
    """A tiny random-weight Chroma (``comfy.supported_models.Chroma``) in a ModelPatcher on the CPU."""
    import comfy.supported_models

    config = dict(image_model="chroma", in_channels=64, out_channels=64, context_in_dim=32, hidden_size=64,
                  mlp_ratio=4.0, num_heads=4, depth=2, depth_single_blocks=3, axes_dim=[4, 6, 6], theta=10000,
                  patch_size=2, qkv_bias=True, in_dim=64, out_dim=64, hidden_dim=32, n_layers=2)
    config.update(overrides)
    model_config = comfy.supported_models.Chroma(config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    _init_weights(model.diffusion_model, seed)
    return _patcher(model)


def flux_conditioning(seed: int = 0, tokens: int = 8, width: int = 32, reference_latents=None):
    """Positive and negative conditioning lists as ComfyUI's text encoders would give them."""
    generator = torch.Generator().manual_seed(seed)
    extra = {} if reference_latents is None else {"reference_latents": reference_latents}
    positive = [[torch.randn(1, tokens, width, generator=generator),
                 {"pooled_output": torch.randn(1, width, generator=generator), "guidance": 3.5, **extra}]]
    negative = [[torch.randn(1, tokens, width, generator=generator),
                 {"pooled_output": torch.randn(1, width, generator=generator), "guidance": 3.5, **extra}]]
    return positive, negative


def sample(model, positive, negative, *, steps: int = 8, cfg: float = 1.0, sampler_name: str = "euler",
           scheduler: str = "simple", seed: int = 0, latent: torch.Tensor | None = None,
           shape: tuple[int, ...] = (1, 16, 32, 32), denoise: float = 1.0, start_step: int | None = None,
           last_step: int | None = None, add_noise: bool = True,
           force_full_denoise: bool = False) -> torch.Tensor:
    """Exactly KSampler's / KSamplerAdvanced's path: ``prepare_noise`` + ``comfy.sample.sample``."""
    import comfy.sample

    latent = torch.zeros(shape) if latent is None else latent
    noise = comfy.sample.prepare_noise(latent, seed) if add_noise else torch.zeros_like(latent)
    return comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent,
                               denoise=denoise, start_step=start_step, last_step=last_step,
                               force_full_denoise=force_full_denoise, disable_pbar=True, seed=seed)


class BlockCalls:
    """How many times transformer blocks ran (forward hooks)."""

    def __init__(self) -> None:
        self.total = 0

    def hit(self, *_) -> None:
        self.total += 1


@contextlib.contextmanager
def count_block_calls(model) -> Iterator[BlockCalls]:
    """Count executions of every transformer block of a ModelPatcher's diffusion model."""
    diffusion_model = model.get_model_object("diffusion_model")
    blocks = [module for name in ("double_blocks", "single_blocks", "blocks", "transformer_blocks", "layers")
              for module in getattr(diffusion_model, name, [])]
    counter = BlockCalls()
    handles = [block.register_forward_hook(counter.hit) for block in blocks]
    try:
        yield counter
    finally:
        for handle in handles:
            handle.remove()


def model_fingerprint(model) -> tuple:
    """Hash of every weight of the patched model object plus its patch and option keys."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    options = model.model_options.get("transformer_options", {})
    return (digest.hexdigest(), tuple(sorted(options)), tuple(sorted(model.object_patches)),
            tuple(sorted(model.wrappers)), len(model.patches))


def rel_l1(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().mean() / b.abs().mean())
