"""Model families FreqCa can hook: where their blocks are and how their image tokens are laid out.

Each supported diffusion model routes its blocks through ``transformer_options["patches_replace"]["dit"]``
under keys ``(kind, index)``. A family says which keys run, in order, and the token grid of the image
fed to the model, so the CRF (image rows of the last block's output) can be split into frequency bands.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

BlockKey = tuple[str, int]


@dataclass(frozen=True)
class DitFamily:
    """A hookable DiT family.

    ``block_keys(diffusion_model)``: the replaceable block keys in execution order.
    ``grid(x, diffusion_model)``: token grid of the noisy latent ``x`` (e.g. ``(h, w)`` after patchify).
    The image tokens are the last rows of the last block's ``img`` output (text rows come first).
    """

    name: str
    classes: tuple[str, ...]  # fully qualified class names of the diffusion model
    block_keys: Callable[[torch.nn.Module], list[BlockKey]]
    grid: Callable[[torch.Tensor, torch.nn.Module], tuple[int, ...]]


def _flux_keys(model: torch.nn.Module) -> list[BlockKey]:
    skip_double = set(getattr(model, "skip_mmdit", ()))
    skip_single = set(getattr(model, "skip_dit", ()))
    return ([("double_block", i) for i in range(len(model.double_blocks)) if i not in skip_double]
            + [("single_block", i) for i in range(len(model.single_blocks)) if i not in skip_single])


def _patch_grid(x: torch.Tensor, model: torch.nn.Module) -> tuple[int, ...]:
    """``(h, w)`` of a ``[B, C, H, W]`` latent after (padded) ``patch_size`` patchify."""
    p = model.patch_size
    return ((x.shape[-2] + p - 1) // p, (x.shape[-1] + p - 1) // p)


FAMILIES: tuple[DitFamily, ...] = (
    DitFamily("Flux (dev, schnell, Kontext)", ("comfy.ldm.flux.model.Flux",), _flux_keys, _patch_grid),
    DitFamily("Chroma", ("comfy.ldm.chroma.model.Chroma",), _flux_keys, _patch_grid),
)


def qualified_name(obj: object) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def detect_family(diffusion_model: torch.nn.Module) -> DitFamily:
    """The family of ``diffusion_model``, or a ``ValueError`` naming it and the supported families."""
    name = qualified_name(diffusion_model)
    for family in FAMILIES:
        if name in family.classes:
            return family
    supported = ", ".join(f.name for f in FAMILIES)
    raise ValueError(f"FreqCa Accelerate does not support the model family {type(diffusion_model).__name__} "
                     f"({name}) yet. Supported: {supported}.")
