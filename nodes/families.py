"""Model families FreqCa can hook: where their blocks are and how their image tokens are laid out.

Two ways to reach the blocks, both without monkeypatching:

- ``patches_replace``: the model routes each block through ``transformer_options["patches_replace"]["dit"]``
  under keys ``(kind, index)`` (Flux, Chroma, Qwen-Image, Wan, HunyuanVideo, SD3).
- ``gates``: the model has no such hook (Lumina 2, HiDream). The block list ``diffusion_model.<attribute>``
  is replaced, through ``ModelPatcher.add_object_patch`` on the clone, by a :class:`GatedBlocks`: an
  ``nn.ModuleList`` holding the very same children (state-dict and LoRA keys unchanged) whose iteration, which
  is how the model's forward runs its blocks, sends each block call through the same patch protocol as
  ``patches_replace`` (``patch({"img", "txt", "transformer_options"}, {"original_block"})``).

A family also says where the image rows sit in a block's ``img`` (last rows after text, or first rows) and
the layout of the image tokens (their grids), read from the arguments of the diffusion model's call by a
wrapper, so the CRF (the image rows of the last block's output) can be split into frequency bands.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..freqca_core import TokenLayout

BlockKey = tuple[str, int]
Layout = Callable[[dict, torch.nn.Module], TokenLayout]


@dataclass(frozen=True)
class Gate:
    """How a block of a list without ``patches_replace`` is called: which argument is the image stream
    (keyword name and position), which the text stream (if the block takes and returns one), and the names of
    what it returns, in order (``("img",)`` for a single tensor)."""

    attribute: str
    kind: str
    img: tuple[str, int]
    txt: tuple[str, int] | None = None
    returns: tuple[str, ...] = ("img",)


@dataclass(frozen=True)
class DitFamily:
    """A hookable DiT family.

    ``block_keys(diffusion_model)``: the block keys in execution order.
    ``layout(call, diffusion_model)``: the ``TokenLayout`` of the image tokens known from the named arguments
    of the model call (``call["x"]`` is the latent); image rows beyond it (e.g. Kontext or Qwen-Image-Edit
    reference tokens that come after the image) are added as tokens without a grid.
    ``transform``: band split over the image tokens: ``"dct"`` over each grid, ``"fft"`` 1-D over the tokens.
    ``image_rows``: ``"last"``: the image rows are the last rows of a block's ``img`` (text rows first);
    ``"first"``: the first rows (text appended after them).
    ``n_img``: ``"block"``: the image rows are all rows of the first block's ``img``; ``"layout"``: as many rows
    as the layout describes (the first block's ``img`` also holds the caption, e.g. Lumina 2).
    ``wrapper``: the ComfyUI wrapper that reads the layout: ``"diffusion_model"`` or ``"apply_model"`` (for
    models whose forward calls no DIFFUSION_MODEL wrappers, e.g. SD3).
    ``gates``: for models without ``patches_replace``, the block lists to gate (see module docstring).
    """

    name: str
    classes: tuple[str, ...]  # fully qualified class names of the diffusion model
    block_keys: Callable[[torch.nn.Module], list[BlockKey]]
    layout: Layout
    transform: str = "dct"
    image_rows: str = "last"
    n_img: str = "block"
    wrapper: str = "diffusion_model"
    gates: tuple[Gate, ...] = ()

    def install_gates(self, patched, patches: dict[BlockKey, Callable]) -> None:
        """Object-patch each gated block list of the ModelPatcher ``patched`` (a clone) with a GatedBlocks."""
        for gate in self.gates:
            name = f"diffusion_model.{gate.attribute}"
            current = patched.get_model_object(name)
            blocks = [current[i] for i in range(len(current))]  # the children, also when already gated
            patched.add_object_patch(name, GatedBlocks(blocks, gate, patches))


class GatedBlocks(torch.nn.ModuleList):
    """The same blocks as the model's list; iterating it yields callables that route each block call through
    its patch (``patches[(gate.kind, index)]``) with the ``patches_replace`` protocol. Indexing, ``len``,
    ``state_dict`` and parameters are those of a plain ``ModuleList`` of the same children."""

    def __init__(self, blocks, gate: Gate, patches: dict[BlockKey, Callable]) -> None:
        super().__init__(blocks)
        self.freqca_gate = gate
        self.freqca_patches = dict(patches)

    def __iter__(self):
        for index, block in enumerate(super().__iter__()):
            patch = self.freqca_patches.get((self.freqca_gate.kind, index))
            yield block if patch is None else _GatedCall(block, patch, self.freqca_gate)


class _GatedCall:
    """One block call routed through a patch: ``patch(args, {"original_block": ...})`` as ``patches_replace``.

    Any other attribute is the block's, so code that iterates the list for other reasons (hooks, inspection)
    still reaches the real module.
    """

    def __init__(self, block: torch.nn.Module, patch: Callable, gate: Gate) -> None:
        self.block, self.patch, self.gate = block, patch, gate

    def __getattr__(self, name: str):
        return getattr(self.block, name)

    def __call__(self, *args, **kwargs):
        gate = self.gate
        streams = {"img": gate.img, **({"txt": gate.txt} if gate.txt else {})}
        block_args = {name: _argument(args, kwargs, *where) for name, where in streams.items()}
        block_args["transformer_options"] = kwargs.get("transformer_options", {})

        def original_block(new: dict) -> dict:
            call_args, call_kwargs = list(args), dict(kwargs)
            for name, where in streams.items():
                _set_argument(call_args, call_kwargs, *where, new[name])
            out = self.block(*call_args, **call_kwargs)
            return dict(zip(gate.returns, out)) if len(gate.returns) > 1 else {gate.returns[0]: out}

        out = self.patch(block_args, {"original_block": original_block})
        return tuple(out[name] for name in gate.returns) if len(gate.returns) > 1 else out[gate.returns[0]]


def _argument(args: tuple, kwargs: dict, name: str, index: int) -> Any:
    return kwargs[name] if name in kwargs else args[index]


def _set_argument(args: list, kwargs: dict, name: str, index: int, value: Any) -> None:
    if name in kwargs or index >= len(args):
        kwargs[name] = value
    else:
        args[index] = value


def call_arguments(function: Callable, args: tuple, kwargs: dict) -> dict:
    """The arguments of a call of ``function`` by parameter name (``**kwargs`` merged in)."""
    signature = inspect.signature(function)
    named = dict(signature.bind_partial(*args, **kwargs).arguments)
    for name, parameter in signature.parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            named.update(named.pop(name, {}))
    return named


# ------------------------------------------------------------------------------------------ per family


def _patched_grid(shape, patch) -> tuple[int, ...]:
    """Token grid of a latent of spatial ``shape`` after (padded) patchify with ``patch``."""
    return tuple((n + p - 1) // p for n, p in zip(shape, patch))


def _flux_keys(model: torch.nn.Module) -> list[BlockKey]:
    skip_double = set(getattr(model, "skip_mmdit", ()))
    skip_single = set(getattr(model, "skip_dit", ()))
    return ([("double_block", i) for i in range(len(model.double_blocks)) if i not in skip_double]
            + [("single_block", i) for i in range(len(model.single_blocks)) if i not in skip_single])


def _double_keys(attribute: str) -> Callable[[torch.nn.Module], list[BlockKey]]:
    return lambda model: [("double_block", i) for i in range(len(getattr(model, attribute)))]


def _hunyuan_keys(model: torch.nn.Module) -> list[BlockKey]:
    return ([("double_block", i) for i in range(len(model.double_blocks))]
            + [("single_block", i) for i in range(len(model.single_blocks))])


def _image_layout(call: dict, model: torch.nn.Module) -> TokenLayout:
    """``(h, w)`` of a ``[B, C, H, W]`` latent after (padded) square patchify (Flux, Chroma, SD3, Lumina 2)."""
    p = model.patch_size if isinstance(model.patch_size, int) else model.patch_size[-1]
    return TokenLayout.grid(*_patched_grid(call["x"].shape[-2:], (p, p)))


def _qwen_layout(call: dict, model: torch.nn.Module) -> TokenLayout:
    """The image grid, then one grid per reference latent (Qwen-Image-Edit appends them after the image)."""
    p = (model.patch_size, model.patch_size)
    grids = [_patched_grid(call["x"].shape[-2:], p)]
    grids += [_patched_grid(ref.shape[-2:], p) for ref in call.get("ref_latents") or ()]
    return TokenLayout.of(*grids)


def _wan_layout(call: dict, model: torch.nn.Module) -> TokenLayout:
    """``(t, h, w)`` of the video; a reference image embedded by ``ref_conv`` comes before it. Frames joined
    along time (``time_dim_concat``, Phantom) and HuMo's reference frames come after: extra rows."""
    patch = tuple(model.patch_size)
    parts: list = []
    ref = call.get("reference_latent")
    if ref is not None and getattr(model, "ref_conv", None) is not None:
        parts.append((ref.shape[-2] // patch[1], ref.shape[-1] // patch[2]))
    parts.append(_patched_grid(call["x"].shape[-3:], patch))
    return TokenLayout.of(*parts)


def _hunyuan_layout(call: dict, model: torch.nn.Module) -> TokenLayout:
    """``(t, h, w)`` (video) or ``(h, w)`` (HunyuanImage 2.1); a reference latent is prepended to the image."""
    patch = tuple(model.patch_size)
    parts: list = []
    ref = call.get("ref_latent")
    if ref is not None:
        parts.append(_patched_grid(ref.shape[-len(patch):], patch))
    parts.append(_patched_grid(call["x"].shape[-len(patch):], patch))
    return TokenLayout.of(*parts)


def _lumina_layout(call: dict, model: torch.nn.Module) -> TokenLayout:
    """The image grid; the sequence is ``[caption, image]`` and the image rows are last only when every
    batch row has the same caption length (always, when cond and uncond are batched: equal ``num_tokens``)."""
    mask = call.get("attention_mask")
    if mask is not None and mask.ndim == 2 and len(set(mask.sum(dim=1).tolist())) > 1:
        raise ValueError("caption lengths differ within the batch; image rows are not aligned")
    return _image_layout(call, model)


def _hidream_layout(call: dict, model: torch.nn.Module) -> TokenLayout:
    """``(h, w)``; HiDream-E1's ``image_cond`` is joined along the width before patchify."""
    x, cond = call["x"], call.get("image_cond")
    width = x.shape[-1] + (cond.shape[-1] if cond is not None else 0)
    p = model.patch_size
    return TokenLayout.grid(*_patched_grid((x.shape[-2], width), (p, p)))


def _hidream_keys(model: torch.nn.Module) -> list[BlockKey]:
    return ([("double_block", i) for i in range(len(model.double_stream_blocks))]
            + [("single_block", i) for i in range(len(model.single_stream_blocks))])


def _lumina_keys(model: torch.nn.Module) -> list[BlockKey]:
    return [("layer", i) for i in range(len(model.layers))]


_WAN = "comfy.ldm.wan.model."
FAMILIES: tuple[DitFamily, ...] = (
    DitFamily("Flux (dev, schnell, Kontext)", ("comfy.ldm.flux.model.Flux",), _flux_keys, _image_layout),
    DitFamily("Chroma", ("comfy.ldm.chroma.model.Chroma",), _flux_keys, _image_layout),
    DitFamily("Qwen-Image (and -Edit)", ("comfy.ldm.qwen_image.model.QwenImageTransformer2DModel",),
              _double_keys("transformer_blocks"), _qwen_layout, transform="fft"),
    DitFamily("Wan 2.1/2.2 (T2V, I2V, FLF, Fun, Camera, HuMo, Phantom)",
              (_WAN + "WanModel", _WAN + "CameraWanModel", _WAN + "HumoWanModel"),
              _double_keys("blocks"), _wan_layout),
    DitFamily("HunyuanVideo (T2V, I2V, HunyuanImage 2.1)", ("comfy.ldm.hunyuan_video.model.HunyuanVideo",),
              _hunyuan_keys, _hunyuan_layout, image_rows="first"),
    DitFamily("SD3 / SD3.5 (MMDiT)", ("comfy.ldm.modules.diffusionmodules.mmdit.OpenAISignatureMMDITWrapper",),
              _double_keys("joint_blocks"), _image_layout, wrapper="apply_model"),
    DitFamily("Lumina 2 (NextDiT)", ("comfy.ldm.lumina.model.NextDiT",), _lumina_keys, _lumina_layout,
              n_img="layout", gates=(Gate("layers", "layer", img=("x", 0)),)),
    DitFamily("HiDream", ("comfy.ldm.hidream.model.HiDreamImageTransformer2DModel",), _hidream_keys,
              _hidream_layout, image_rows="first",
              gates=(Gate("double_stream_blocks", "double_block", img=("image_tokens", 0),
                          txt=("text_tokens", 2), returns=("img", "txt")),
                     Gate("single_stream_blocks", "single_block", img=("image_tokens", 0)))),
)

UNSUPPORTED: dict[str, str] = {
    _WAN + "VaceWanModel": "its VACE blocks run between the transformer blocks, outside the hookable ones",
    "comfy.ldm.wan.model_animate.AnimateWanModel": "its face-adapter blocks run between the transformer "
                                                   "blocks, outside the hookable ones",
    _WAN + "WanModel_S2V": "its block hooks receive no transformer_options, so the sampling step is unknown there",
}
"""Classes of a supported family's code that change its block loop, and why they are not hooked."""


def qualified_name(obj: object) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def detect_family(diffusion_model: torch.nn.Module) -> DitFamily:
    """The family of ``diffusion_model``, or a ``ValueError`` naming it and the supported families."""
    name = qualified_name(diffusion_model)
    for family in FAMILIES:
        if name in family.classes:
            return family
    supported = "; ".join(f.name for f in FAMILIES)
    reason = f": {UNSUPPORTED[name]}" if name in UNSUPPORTED else " yet"
    raise ValueError(f"FreqCa Accelerate does not support the model family {type(diffusion_model).__name__} "
                     f"({name}){reason}. Supported: {supported}.")
