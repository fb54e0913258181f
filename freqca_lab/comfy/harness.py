"""Helpers that run ComfyUI's own model classes and sampling code on tiny random-weight models (CPU).

Nothing of ComfyUI is copied here: the models are ComfyUI's classes (``comfy.supported_models.Flux`` /
``Chroma`` → ``comfy.model_base`` → ``comfy.ldm...``) wrapped in a real ``ModelPatcher``, conditioning is
built with ComfyUI's ``node_helpers`` exactly as its nodes build it, and :func:`sample` calls
``nodes.common_ksampler`` from ComfyUI's ``nodes.py`` — the function behind KSampler and KSamplerAdvanced.

Call :func:`import_comfyui` first (the ``comfyui`` fixture in ``conftest.py`` does).

Kontext needs no model of its own in ComfyUI v0.3.64: a Flux model given ``reference_latents`` in its
conditioning (the ReferenceLatent node) appends the reference tokens to the image tokens
(``comfy/ldm/flux/model.py``). Use ``flux_conditioning(reference_latents=[...])`` with :func:`build_flux`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from .. import metrics

_COMFY_NODES: types.ModuleType | None = None


# ---------------------------------------------------------------------------------------------- importing


def _stub_torchvision() -> None:
    """Register an empty ``torchvision`` when the real one is missing.

    ``comfy.model_base`` imports ``comfy.ldm.cosmos`` which does ``from torchvision import transforms`` at
    import time; the CPU test machine has no torchvision matching its torch build. No model used here
    touches it. The stand-in has no distribution metadata, so libraries that check the installed version
    (transformers) still see torchvision as absent.
    """
    if "torchvision" in sys.modules:
        return
    try:
        import torchvision  # noqa: F401
        return
    except Exception:
        for name in [name for name in sys.modules if name == "torchvision" or name.startswith("torchvision.")]:
            del sys.modules[name]
    for name in ("torchvision", "torchvision.transforms"):
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        module.__comfyui_test_stub__ = True
        sys.modules[name] = module
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]


def import_comfyui(path: Path | str) -> types.ModuleType:
    """Import a ComfyUI source tree in-process, in CPU mode, without its server; return its ``nodes`` module.

    * ``comfy.cli_args.args.cpu = True`` must be set before ``comfy.model_management`` is first imported:
      that module picks the device at import time, and on a CPU-only torch build the GPU default fails.
    * ``comfy.options.args_parsing`` stays False (its default), so ComfyUI parses no command line (pytest's).
    * ComfyUI's ``nodes.py`` is loaded from the tree by file path under its own name ``nodes`` (as
      ``main.py`` has it), so the pack's ``nodes`` folder on ``sys.path`` can never shadow it.
    """
    global _COMFY_NODES
    path = Path(path).resolve()
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    _stub_torchvision()
    import comfy.options

    if comfy.options.args_parsing:
        raise RuntimeError("comfy.options.args_parsing is on: ComfyUI would parse pytest's command line")
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_management as mm

    if mm.cpu_state != mm.CPUState.CPU:
        raise RuntimeError("comfy.model_management was imported before CPU mode was set; import it through "
                           "harness.import_comfyui (the comfyui fixture) only")
    import comfy.model_patcher  # noqa: F401
    import comfy.sample  # noqa: F401
    import comfy.samplers  # noqa: F401
    import comfy.supported_models  # noqa: F401
    import comfy.utils  # noqa: F401

    nodes_file = path / "nodes.py"
    loaded = sys.modules.get("nodes")
    if loaded is not None:
        if Path(getattr(loaded, "__file__", "") or "").resolve() != nodes_file:
            raise RuntimeError(f"a module 'nodes' not from {nodes_file} is already imported: {loaded!r}")
    else:
        spec = importlib.util.spec_from_file_location("nodes", nodes_file)
        loaded = importlib.util.module_from_spec(spec)
        sys.modules["nodes"] = loaded
        try:
            spec.loader.exec_module(loaded)
        except BaseException:
            del sys.modules["nodes"]
            raise
    import node_helpers  # noqa: F401  (ComfyUI's, imported by nodes.py)

    _COMFY_NODES = loaded
    return loaded


def _comfy_nodes() -> types.ModuleType:
    if _COMFY_NODES is None:
        raise RuntimeError("ComfyUI is not imported: use the comfyui fixture or harness.import_comfyui(path)")
    return _COMFY_NODES


# ------------------------------------------------------------------------------------------------ models


FLUX_CONFIG = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=32,
                   hidden_size=64, mlp_ratio=4.0, num_heads=4, depth=2, depth_single_blocks=3,
                   axes_dim=[4, 6, 6], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=False)
"""The default tiny Flux ``unet_config`` (2 double + 3 single blocks, hidden 64, 4 heads of 16)."""

_MODULATION = ("_mod.", "modulation", "adaLN", "distilled_guidance_layer.out_proj")


@dataclasses.dataclass(frozen=True)
class WeightInit:
    """How :func:`init_weights` draws a random model.

    ``gain``: std x sqrt(fan_in) of weight matrices; ``mod_gain``: the same for adaLN/modulation layers
    (and Chroma's approximator output), which set shifts, scales and gates; ``qk_scale``: the QK-norm
    RMSNorm scales (> 1 sharpens attention so text and reference tokens really mix); ``bias_std``.

    The default is stable but weak: the residual path dominates, so bypassing *all* transformer blocks
    changes a 28-step euler sample (default Flux, 32x24 latent) by only ~2 % rel. L1, another prompt
    ~4 %, cfg 3 ~9 %, a Kontext reference ~0.2 %. :data:`STRONG` makes the blocks matter (bypass ~23 %,
    prompt ~30 %, cfg 3 ~56 %, reference ~6 %; the last block's output moves ~13 % per step) and still
    stays finite and bounded over 50 steps. Compare a cached run against :func:`bypass_blocks`, not
    against a fixed threshold.
    """

    gain: float = 0.5
    mod_gain: float = 0.5
    qk_scale: float = 1.0
    bias_std: float = 0.02


STRONG = WeightInit(gain=1.0, mod_gain=0.3, qk_scale=2.0)
"""A random model whose blocks, prompt, cfg and reference latents change the output substantially."""


def init_weights(model: torch.nn.Module, seed: int, init: WeightInit = WeightInit()) -> None:
    """Deterministically initialise every parameter (ComfyUI creates them uninitialised, ``torch.empty``).

    Drawn in float32 from one seeded generator in parameter order, then cast to the parameter's dtype.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("scale"):
                qk = "query_norm" in name or "key_norm" in name
                value = torch.full(param.shape, init.qk_scale if qk else 1.0)
            elif param.ndim > 1:
                gain = init.mod_gain if any(key in name for key in _MODULATION) else init.gain
                value = torch.randn(param.shape, generator=generator) * (gain / param.shape[1] ** 0.5)
            else:
                value = torch.randn(param.shape, generator=generator) * init.bias_std
            param.copy_(value.to(param.dtype))


def axes_dim_for(head_dim: int) -> list[int]:
    """RoPE axes (index, height, width) summing to ``head_dim``, split like Flux's 16/56/56 of 128."""
    side = (head_dim * 3 // 8) // 2 * 2
    first = head_dim - 2 * side
    if head_dim % 2 or first <= 0:
        raise ValueError(f"head dim {head_dim} must be even and at least 4")
    return [first, side, side]


def _patcher(model: torch.nn.Module):
    import comfy.model_patcher

    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def _build(config_class, unet_config: dict, dtype: torch.dtype, seed: int, init: WeightInit | None):
    model_config = config_class(unet_config)
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({})
    init_weights(model.diffusion_model, seed, init or WeightInit())
    return _patcher(model)


def flux_unet_config(*, hidden: int = 64, depth: int = 2, depth_single: int = 3, heads: int = 4,
                     in_channels: int = 16, context_dim: int = 32, vec_dim: int = 32, guidance_embed: bool = False,
                     **unet_config: Any) -> dict:
    """A Flux ``unet_config``; raw ComfyUI keys in ``unet_config`` (``hidden_size``, ``axes_dim``…) win."""
    config = dict(FLUX_CONFIG, hidden_size=hidden, depth=depth, depth_single_blocks=depth_single, num_heads=heads,
                  in_channels=in_channels, out_channels=in_channels, context_in_dim=context_dim,
                  vec_in_dim=vec_dim, guidance_embed=guidance_embed)
    config.update(unet_config)
    if "axes_dim" not in unet_config:
        config["axes_dim"] = axes_dim_for(config["hidden_size"] // config["num_heads"])
    return config


def build_flux(seed: int = 0, *, hidden: int = 64, depth: int = 2, depth_single: int = 3, heads: int = 4,
               in_channels: int = 16, context_dim: int = 32, vec_dim: int = 32, guidance_embed: bool = False,
               dtype: torch.dtype = torch.float32, init: WeightInit | None = None, **unet_config: Any):
    """A tiny random-weight Flux (``comfy.supported_models.Flux`` → ``model_base.Flux``) in a CPU ModelPatcher.

    ``context_dim``/``vec_dim`` are the widths of the T5 tokens and the pooled CLIP vector
    (see :func:`flux_conditioning`). Any raw ``unet_config`` key may be given as well. The same model
    serves Kontext (reference latents come through the conditioning).
    """
    import comfy.supported_models

    config = flux_unet_config(hidden=hidden, depth=depth, depth_single=depth_single, heads=heads,
                              in_channels=in_channels, context_dim=context_dim, vec_dim=vec_dim,
                              guidance_embed=guidance_embed, **unet_config)
    return _build(comfy.supported_models.Flux, config, dtype, seed, init)


def build_chroma(seed: int = 0, *, hidden: int = 64, depth: int = 2, depth_single: int = 3, heads: int = 4,
                 in_channels: int = 16, context_dim: int = 32, approximator_hidden: int = 32,
                 approximator_layers: int = 2, dtype: torch.dtype = torch.float32, init: WeightInit | None = None,
                 **unet_config: Any):
    """A tiny random-weight Chroma (``comfy.supported_models.Chroma``) in a CPU ModelPatcher.

    Chroma's ``in_channels`` is the patchified width (latent channels x 2 x 2) and its modulation
    approximator takes a fixed 64-wide input (16 timestep + 16 guidance + 32 index features). Use
    ``flux_conditioning(guidance=None)`` for Chroma-like conditioning (its guidance defaults to 0).
    """
    import comfy.supported_models

    config = dict(image_model="chroma", in_channels=in_channels * 4, out_channels=in_channels * 4,
                  context_in_dim=context_dim, hidden_size=hidden, mlp_ratio=4.0, num_heads=heads, depth=depth,
                  depth_single_blocks=depth_single, theta=10000, patch_size=2, qkv_bias=True, in_dim=64,
                  out_dim=hidden, hidden_dim=approximator_hidden, n_layers=approximator_layers)
    config.update(unet_config)
    if "axes_dim" not in unet_config:
        config["axes_dim"] = axes_dim_for(config["hidden_size"] // config["num_heads"])
    config["out_dim"] = unet_config.get("out_dim", config["hidden_size"])
    return _build(comfy.supported_models.Chroma, config, dtype, seed, init)


# ------------------------------------------------------------------------------------------ conditioning


def add_reference_latent(conditioning: list, latent: torch.Tensor) -> list:
    """What the ReferenceLatent node does (``comfy_extras/nodes_edit_model.py``): append one reference."""
    import node_helpers

    return node_helpers.conditioning_set_values(conditioning, {"reference_latents": [latent]}, append=True)


def flux_conditioning(batch: int = 1, tokens: int = 8, seed: int = 0, *, width: int = 32,
                      pooled_width: int | None = None, guidance: float | None = 3.5,
                      reference_latents: Sequence[torch.Tensor] | None = None,
                      reference_latents_method: str | None = None,
                      negative_reference: bool = True) -> tuple[list, list]:
    """Positive and negative conditioning lists shaped like ComfyUI's Flux text encoders' output.

    ``[[context (batch, tokens, width), {"pooled_output": (batch, pooled_width), "guidance": g, ...}]]``.
    ``guidance=None`` leaves the key out (the model's default: 3.5 for Flux, 0 for Chroma).
    ``reference_latents`` are appended one by one as chained ReferenceLatent nodes would (Kontext), to the
    negative too unless ``negative_reference`` is False; ``reference_latents_method`` is what
    FluxKontextMultiReferenceLatentMethod sets ("offset", "index", "uxo/uno").
    """
    import node_helpers

    generator = torch.Generator().manual_seed(seed)
    pooled_width = width if pooled_width is None else pooled_width
    conds = []
    for with_reference in (True, negative_reference):
        extra = {} if guidance is None else {"guidance": guidance}
        cond = [[torch.randn(batch, tokens, width, generator=generator),
                 {"pooled_output": torch.randn(batch, pooled_width, generator=generator), **extra}]]
        if with_reference:
            for latent in reference_latents or ():
                cond = add_reference_latent(cond, latent)
            if reference_latents_method is not None:
                cond = node_helpers.conditioning_set_values(
                    cond, {"reference_latents_method": reference_latents_method})
        conds.append(cond)
    return conds[0], conds[1]


# ---------------------------------------------------------------------------------------------- sampling


def latent_dict(model, latent: torch.Tensor | Sequence[int] | dict | None = None,
                shape: Sequence[int] | None = None) -> dict:
    """A LATENT dict: given, from a tensor, or zeros (like EmptySD3LatentImage) of a shape (B, C, H, W).

    Default shape: (1, latent channels of the model, 32, 32).
    """
    if isinstance(latent, dict):
        return latent
    if isinstance(latent, torch.Tensor):
        return {"samples": latent}
    shape = latent if latent is not None else shape
    if shape is None:
        shape = (1, model.model.latent_format.latent_channels, 32, 32)
    return {"samples": torch.zeros(tuple(shape))}


def sample(model, positive: list, negative: list, *, steps: int = 8, cfg: float = 1.0,
           sampler_name: str = "euler", scheduler: str = "simple", seed: int = 0,
           latent: torch.Tensor | Sequence[int] | dict | None = None, shape: Sequence[int] | None = None,
           denoise: float = 1.0, start_step: int | None = None, last_step: int | None = None,
           add_noise: bool = True, force_full_denoise: bool = False) -> torch.Tensor:
    """Sample through ComfyUI's ``nodes.common_ksampler`` (KSampler / KSamplerAdvanced) with no progress bars.

    ``latent``: a tensor, a LATENT dict, a shape (B, C, H, W) for an empty latent, or None (see
    :func:`latent_dict`; ``shape=`` is the same as a shape in ``latent``). KSampler is
    ``denoise``; KSamplerAdvanced is ``start_step``/``last_step``, ``add_noise`` and
    ``force_full_denoise`` (True there unless return_with_leftover_noise is enabled). Returns the samples.
    """
    import comfy.utils

    nodes = _comfy_nodes()
    latent = latent_dict(model, latent, shape)
    was_enabled = comfy.utils.PROGRESS_BAR_ENABLED
    comfy.utils.set_progress_bar_enabled(False)
    try:
        (out,) = nodes.common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent,
                                       denoise=denoise, disable_noise=not add_noise, start_step=start_step,
                                       last_step=last_step, force_full_denoise=force_full_denoise)
    finally:
        comfy.utils.set_progress_bar_enabled(was_enabled)
    return out["samples"]


# ------------------------------------------------------------------------------------------ the pack's nodes

MAIN_INPUTS = ("method", "interval", "warmup_steps", "final_full_steps", "start_percent", "end_percent")


def apply_node(model, **inputs):
    """FreqCa Accelerate's ``execute`` as ComfyUI calls it, with the inputs it does not have given to a
    FreqCa Options node (defaults for the rest) plugged into its ``options``; returns the patched model.
    Main inputs not given take the node's defaults. Needs the pack imported (``env.load_pack``)."""
    from comfyui_freqca.nodes.freqca_node import FreqCaAccelerate, FreqCaOptions

    main = {name: inputs.pop(name) for name in MAIN_INPUTS if name in inputs}
    if inputs:
        options = {i.id: i.default for i in FreqCaOptions.define_schema().inputs}
        unknown = set(inputs) - set(options)
        if unknown:
            raise TypeError(f"neither FreqCa node has the inputs {sorted(unknown)}")
        main["options"] = FreqCaOptions.execute(**{**options, **inputs}).result[0]
    defaults = {i.id: i.default for i in FreqCaAccelerate.define_schema().inputs if i.id in MAIN_INPUTS}
    return FreqCaAccelerate.execute(model, **{**defaults, **main}).result[0]


# ----------------------------------------------------------------------------------------------- probes


def bypass_blocks(model):
    """A clone whose every double/single block is skipped (returns its input) via ``patches_replace["dit"]``.

    The "cache that never computes" baseline for Flux-layout models (Flux, Kontext, Chroma, HunyuanVideo):
    an accelerated run should be much closer to the full run than this is.
    """
    diffusion_model = model.get_model_object("diffusion_model")
    clone = model.clone()
    for i in range(len(diffusion_model.double_blocks)):
        clone.set_model_patch_replace(lambda args, extra: {"img": args["img"], "txt": args["txt"]},
                                      "dit", "double_block", i)
    for i in range(len(diffusion_model.single_blocks)):
        clone.set_model_patch_replace(lambda args, extra: {"img": args["img"]}, "dit", "single_block", i)
    return clone


@dataclasses.dataclass
class BlockCalls:
    """Executions counted by :func:`count_block_calls`.

    ``double``/``single``: runs of ``double_blocks``/``single_blocks`` members (SD3 ``joint_blocks`` and
    HiDream ``double_stream_blocks`` count as double, ``single_stream_blocks`` as single); ``other``: of
    generic ``blocks`` (Wan) / ``transformer_blocks`` (Qwen-Image) / ``layers`` (Lumina 2) members;
    ``model_calls``: runs of the diffusion model's forward, with the batch size of each in ``batch_sizes``
    (cond and uncond batched together show as 2).
    """

    double: int = 0
    single: int = 0
    other: int = 0
    model_calls: int = 0
    batch_sizes: list[int] = dataclasses.field(default_factory=list)

    @property
    def total(self) -> int:
        return self.double + self.single + self.other


_BLOCK_LISTS = {"double_blocks": "double", "single_blocks": "single", "joint_blocks": "double",
                "double_stream_blocks": "double", "single_stream_blocks": "single", "blocks": "other",
                "transformer_blocks": "other", "layers": "other"}


@contextlib.contextmanager
def count_block_calls(model) -> Iterator[BlockCalls]:
    """Count executions of every transformer block of a ModelPatcher's diffusion model (forward hooks).

    The hooks sit on the shared block modules, so they also count runs through clones of ``model``
    (e.g. the output of an acceleration node). They are removed on exit.
    """
    diffusion_model = model.get_model_object("diffusion_model")
    counter = BlockCalls()

    def block_hook(field: str):
        def hook(*_) -> None:
            setattr(counter, field, getattr(counter, field) + 1)
        return hook

    def model_hook(_module, args, kwargs) -> None:
        x = args[0] if args else kwargs.get("x")
        counter.model_calls += 1
        counter.batch_sizes.append(int(x.shape[0]) if isinstance(x, torch.Tensor) else -1)

    handles = [diffusion_model.register_forward_pre_hook(model_hook, with_kwargs=True)]
    try:
        for attribute, field in _BLOCK_LISTS.items():
            blocks = getattr(diffusion_model, attribute, None)
            if isinstance(blocks, (torch.nn.ModuleList, torch.nn.Sequential)):
                handles += [block.register_forward_hook(block_hook(field)) for block in blocks]
        yield counter
    finally:
        for handle in handles:
            handle.remove()


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """What :func:`model_fingerprint` records; equal fingerprints mean an unchanged ModelPatcher."""

    weights: str
    diffusion_model: str
    model_options: tuple
    object_patches: tuple
    patches: tuple
    wrappers: tuple
    callbacks: tuple
    hooks: int
    instance_overrides: tuple


def _structure(value: Any, depth: int = 4) -> Any:
    """Keys of nested dicts (values only by type / length) — the shape of model_options, not its contents."""
    if isinstance(value, dict):
        if depth == 0:
            return ("dict", len(value))
        return tuple(sorted((repr(k), _structure(v, depth - 1)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, len(value))
    return type(value).__name__


def model_fingerprint(model) -> Fingerprint:
    """Prove a ModelPatcher unchanged: a hash of all state-dict tensors (bytes, dtypes, shapes) of its model,
    the structure of ``model_options``, object patches, weight patches, wrappers, callbacks, the number of
    torch hooks on its modules, and any attributes set on module instances over their class (monkeypatches).
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.model.state_dict().items()):
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{data.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
    hooks = 0
    overrides = []
    for name, module in model.model.named_modules():
        hooks += len(module._forward_hooks) + len(module._forward_pre_hooks)
        hooks += len(module._backward_hooks) + len(getattr(module, "_backward_pre_hooks", {}))
        patched = sorted(key for key, value in vars(module).items() if callable(value)
                         and not isinstance(value, torch.nn.Module) and hasattr(type(module), key))
        if patched:
            overrides.append((name, tuple(patched)))
    return Fingerprint(
        weights=digest.hexdigest(),
        diffusion_model=f"{type(model.model.diffusion_model).__module__}.{type(model.model.diffusion_model).__name__}",
        model_options=_structure(model.model_options),
        object_patches=tuple(sorted(model.object_patches)),
        patches=tuple(sorted((k, len(v)) for k, v in model.patches.items())),
        wrappers=_structure(getattr(model, "wrappers", {})),
        callbacks=_structure(getattr(model, "callbacks", {})),
        hooks=hooks,
        instance_overrides=tuple(overrides),
    )


def rel_l1(a: torch.Tensor, b: torch.Tensor) -> float:
    """``metrics.rel_l1`` of two whole tensors (latents of any shape): mean |a - b| relative to mean |b|."""
    return float(metrics.rel_l1(a.reshape(1, 1, 1, -1), b.reshape(1, 1, 1, -1)))


def latent_psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """``metrics.psnr`` of two whole tensors (latents of any shape), the reference ``b``'s range as the peak."""
    return float(metrics.psnr(a.reshape(1, 1, 1, -1), b.reshape(1, 1, 1, -1), data_range=float(b.max() - b.min())))


# ------------------------------------------------------------------------ more DiT families (tiny, random)


def _build_model(config_class, unet_config: dict, dtype: torch.dtype, seed: int, init: WeightInit | None):
    """``config_class(unet_config)`` at ``dtype``, its model with :func:`init_weights`, in a CPU ModelPatcher."""
    model_config = config_class(unet_config)
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({})
    init_weights(model.diffusion_model, seed, init or WeightInit())
    with torch.no_grad():  # norm scales named "weight" (LayerNorm, RMSNorm) at 1, as init_weights does for "scale"
        for module in model.diffusion_model.modules():
            weight = getattr(module, "weight", None)
            if "norm" in type(module).__name__.lower() and isinstance(weight, torch.nn.Parameter) and weight.ndim == 1:
                weight.fill_(1.0)
    return _patcher(model)


def build_qwen_image(seed: int = 0, *, heads: int = 4, head_dim: int = 16, layers: int = 3, context_dim: int = 32,
                     dtype: torch.dtype = torch.float32, init: WeightInit | None = None, **unet_config: Any):
    """A tiny random-weight Qwen-Image (``comfy.supported_models.QwenImage``); latents are ``[B, 16, 1, H, W]``.

    The same model serves Qwen-Image-Edit: reference latents come through the conditioning
    (:func:`add_reference_latent`), 5-D like the latent.
    """
    import comfy.supported_models

    config = dict(image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16, num_layers=layers,
                  attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=context_dim,
                  axes_dims_rope=tuple(axes_dim_for(head_dim)))
    config.update(unet_config)
    return _build_model(comfy.supported_models.QwenImage, config, dtype, seed, init)


_WAN_CONFIGS = {"t2v": "WAN21_T2V", "camera": "WAN21_Camera", "humo": "WAN21_HuMo", "vace": "WAN21_Vace",
                "s2v": "WAN22_S2V", "animate": "WAN22_Animate"}


def build_wan(seed: int = 0, *, variant: str = "t2v", dim: int = 64, heads: int = 4, layers: int = 3,
              context_dim: int = 32, dtype: torch.dtype = torch.float32, init: WeightInit | None = None,
              **unet_config: Any):
    """A tiny random-weight Wan 2.1 (``comfy.supported_models.WAN21_T2V`` or the ``variant``'s config class:
    ``t2v``, ``camera``, ``humo``, ``vace``, ``s2v``, ``animate``); latents are ``[B, 16, T, H, W]``.

    ``in_dim_ref_conv=16`` gives the reference-image embedding of Wan 2.1 Fun 1.1 (reference latents come
    through the conditioning, 5-D; the model uses the first frame of the last one).
    """
    import comfy.supported_models

    config = dict(image_model="wan2.1", model_type=variant, patch_size=(1, 2, 2), in_dim=16, dim=dim,
                  ffn_dim=2 * dim, freq_dim=32, text_dim=context_dim, out_dim=16, num_heads=heads, num_layers=layers)
    if variant == "camera":
        config.update(in_dim=32, in_dim_control_adapter=24)
    if variant == "vace":
        config.update(vace_layers=1, vace_in_dim=96)
    config.update(unet_config)
    return _build_model(getattr(comfy.supported_models, _WAN_CONFIGS[variant]), config, dtype, seed, init)


def build_hunyuan_video(seed: int = 0, *, hidden: int = 64, heads: int = 4, depth: int = 2, depth_single: int = 2,
                        context_dim: int = 32, vec_dim: int = 32, patch_size: Sequence[int] = (1, 2, 2),
                        dtype: torch.dtype = torch.float32, init: WeightInit | None = None, **unet_config: Any):
    """A tiny random-weight HunyuanVideo (``comfy.supported_models.HunyuanVideo``); latents ``[B, 16, T, H, W]``
    with H, W multiples of the patch. Its text rows come after the image rows in the single-stream blocks."""
    import comfy.supported_models

    head_dim = hidden // heads
    config = dict(image_model="hunyuan_video", in_channels=16, out_channels=16, vec_in_dim=vec_dim,
                  context_in_dim=context_dim, hidden_size=hidden, mlp_ratio=4.0, num_heads=heads, depth=depth,
                  depth_single_blocks=depth_single, axes_dim=axes_dim_for(head_dim), theta=256,
                  patch_size=list(patch_size), qkv_bias=True, guidance_embed=False, byt5=False, meanflow=False)
    config.update(unet_config)
    return _build_model(comfy.supported_models.HunyuanVideo, config, dtype, seed, init)


def build_hunyuan_image(seed: int = 0, *, hidden: int = 64, heads: int = 4, depth: int = 2, depth_single: int = 2,
                        context_dim: int = 32, patch_size: Sequence[int] = (1, 1), dtype: torch.dtype = torch.float32,
                        init: WeightInit | None = None, **unet_config: Any):
    """A tiny random-weight HunyuanImage 2.1 (``comfy.supported_models.HunyuanImage21``: the HunyuanVideo class
    with a 2-D patch, 64-channel ``[B, 64, H, W]`` latents, no pooled vector)."""
    import comfy.supported_models

    config = dict(image_model="hunyuan_video", in_channels=64, out_channels=64, vec_in_dim=None,
                  context_in_dim=context_dim, hidden_size=hidden, mlp_ratio=4.0, num_heads=heads, depth=depth,
                  depth_single_blocks=depth_single, axes_dim=[hidden // heads // 2] * 2, theta=256,
                  patch_size=list(patch_size), qkv_bias=True, guidance_embed=False, byt5=False, meanflow=False)
    config.update(unet_config)
    return _build_model(comfy.supported_models.HunyuanImage21, config, dtype, seed, init)


def build_sd3(seed: int = 0, *, depth: int = 2, context_dim: int = 32, pooled_dim: int = 32,
              dtype: torch.dtype = torch.float32, init: WeightInit | None = None, **unet_config: Any):
    """A tiny random-weight SD3 MMDiT (``comfy.supported_models.SD3``); hidden width is 64 x ``depth``."""
    import comfy.supported_models

    config = dict(in_channels=16, patch_size=2, depth=depth, adm_in_channels=pooled_dim,
                  context_embedder_config={"target": "torch.nn.Linear",
                                           "params": {"in_features": context_dim, "out_features": 64 * depth}},
                  pos_embed_scaling_factor=None)
    config.update(unet_config)
    return _build_model(comfy.supported_models.SD3, config, dtype, seed, init)


def build_lumina2(seed: int = 0, *, dim: int = 64, heads: int = 4, layers: int = 3, refiner_layers: int = 1,
                  context_dim: int = 32, dtype: torch.dtype = torch.float32, init: WeightInit | None = None,
                  **unet_config: Any):
    """A tiny random-weight Lumina 2 NextDiT (``comfy.supported_models.Lumina2``); use
    :func:`lumina2_conditioning` (the model needs the caption's attention mask)."""
    import comfy.supported_models

    config = dict(image_model="lumina2", patch_size=2, in_channels=16, dim=dim, n_layers=layers,
                  n_refiner_layers=refiner_layers, n_heads=heads, n_kv_heads=heads, multiple_of=16,
                  ffn_dim_multiplier=None, norm_eps=1e-5, qk_norm=True, cap_feat_dim=context_dim,
                  axes_dims=axes_dim_for(dim // heads), axes_lens=[256, 256, 256])
    config.update(unet_config)
    return _build_model(comfy.supported_models.Lumina2, config, dtype, seed, init)


def build_hidream(seed: int = 0, *, heads: int = 4, head_dim: int = 16, double: int = 2, single: int = 2,
                  t5_dim: int = 32, llama_dim: int = 24, pooled_dim: int = 32, experts: int = 4,
                  dtype: torch.dtype = torch.float32, init: WeightInit | None = None, **unet_config: Any):
    """A tiny random-weight HiDream (``comfy.supported_models.HiDream``, MoE feed-forward); use
    :func:`hidream_conditioning` with the same widths."""
    import comfy.supported_models

    config = dict(image_model="hidream", patch_size=2, in_channels=16, out_channels=16, num_layers=double,
                  num_single_layers=single, attention_head_dim=head_dim, num_attention_heads=heads,
                  caption_channels=[t5_dim, llama_dim], text_emb_dim=pooled_dim, num_routed_experts=experts,
                  num_activated_experts=2, axes_dims_rope=tuple(axes_dim_for(head_dim)), max_resolution=(128, 128),
                  llama_layers=list(range(double + single)))
    config.update(unet_config)
    return _build_model(comfy.supported_models.HiDream, config, dtype, seed, init)


def text_conditioning(batch: int = 1, tokens: int = 8, seed: int = 0, *, width: int = 32,
                      pooled_width: int | None = None, **values: Any) -> tuple[list, list]:
    """Positive and negative ``[[context (batch, tokens, width), {...}]]`` with random contexts, a random
    ``pooled_output`` when ``pooled_width`` is given, and ``values`` set on both."""
    generator = torch.Generator().manual_seed(seed)
    conds = []
    for _ in range(2):
        extra = dict(values)
        context = torch.randn(batch, tokens, width, generator=generator)
        if pooled_width is not None:
            extra["pooled_output"] = torch.randn(batch, pooled_width, generator=generator)
        conds.append([[context, extra]])
    return conds[0], conds[1]


def lumina2_conditioning(batch: int = 1, tokens: int = 8, seed: int = 0, *, width: int = 32) -> tuple[list, list]:
    """Lumina 2 conditioning: context plus the caption's integer ``attention_mask`` (all tokens valid)."""
    return text_conditioning(batch, tokens, seed, width=width,
                             attention_mask=torch.ones(batch, tokens, dtype=torch.long))


def hidream_conditioning(batch: int = 1, tokens: int = 8, seed: int = 0, *, t5_dim: int = 32, llama_dim: int = 24,
                         llama_layers: int = 4, pooled_dim: int = 32) -> tuple[list, list]:
    """HiDream conditioning: T5 context, pooled CLIP vector and ``conditioning_llama3`` ``[B, layers, L, D]``."""
    positive, negative = text_conditioning(batch, tokens, seed, width=t5_dim, pooled_width=pooled_dim)
    generator = torch.Generator().manual_seed(seed + 1)
    for cond in (positive, negative):
        cond[0][1]["conditioning_llama3"] = torch.randn(batch, llama_layers, tokens, llama_dim, generator=generator)
    return positive, negative
