"""Other step caches applied to the same model, recognised by the markers they leave in its model options.

FreqCa caches the transformer blocks of the model calls that reach them. Another cache in the chain either
skips whole model calls (its output comes from its own cache) or replaces the model's forward for the call,
so FreqCa's block patches never run. Neither breaks sampling, but FreqCa's statistics and warnings would
otherwise blame a "replaced block patch". Markers (read only, from each pack's public node code):

- EasyCache (ComfyUI core, ``comfy_extras/nodes_easycache.py``): ``transformer_options["easycache"]`` holds an
  ``EasyCacheHolder``; its DIFFUSION_MODEL wrapper returns a cached output without calling the model.
- LazyCache (same file): ``transformer_options["easycache"]`` holds a ``LazyCacheHolder``; its PREDICT_NOISE
  wrapper skips whole steps before any model call.
- TeaCache (welltop-cn/ComfyUI-TeaCache): ``transformer_options["rel_l1_thresh"]`` and ``["coefficients"]``;
  its ``model_function_wrapper`` swaps in its own ``forward_orig``/``forward``, which runs the blocks itself.
- MagCache (Zehong-Ma/ComfyUI-MagCache): ``transformer_options["magcache_thresh"]`` and ``["mag_ratios"]``;
  the same kind of ``model_function_wrapper``.
- First Block Cache (chengzeyi/Comfy-WaveSpeed): ``model_options["model_function_wrapper"]`` is the function
  ``ApplyFBCacheOnModel.patch`` defines; it swaps the block lists (or Flux's ``forward_orig``) for its own
  during the call.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OtherCache:
    """A recognised cache: its ``name`` and whether it ``replaces`` the model's forward (FreqCa's block
    patches then never run, FreqCa is bypassed) rather than skipping some calls."""

    name: str
    replaces: bool


def other_caches(model_options: dict) -> list[OtherCache]:
    """The other caches set on ``model_options`` (a ModelPatcher's or a guider's), in a fixed order."""
    options = model_options.get("transformer_options", {})
    wrapper = model_options.get("model_function_wrapper")
    wrapper_name = getattr(wrapper, "__qualname__", "") if wrapper is not None else ""
    found = []
    holder = type(options.get("easycache")).__name__ if "easycache" in options else ""
    if holder == "LazyCacheHolder":
        found.append(OtherCache("LazyCache", replaces=False))
    elif holder:
        found.append(OtherCache("EasyCache", replaces=False))
    if "rel_l1_thresh" in options and "coefficients" in options:
        found.append(OtherCache("TeaCache", replaces=True))
    if "magcache_thresh" in options or "mag_ratios" in options:
        found.append(OtherCache("MagCache", replaces=True))
    if wrapper_name.startswith("ApplyFBCacheOnModel."):
        found.append(OtherCache("First Block Cache (WaveSpeed)", replaces=True))
    return found


def describe(caches: list[OtherCache]) -> str:
    """The run-summary note for ``caches`` (none: "")."""
    if not caches:
        return ""
    replacing = [c.name for c in caches if c.replaces]
    if replacing:
        return (f"{' and '.join(replacing)} replaces the model's forward, so FreqCa's block patches may never run "
                f"(FreqCa is then bypassed): use one of the two caches")
    names = " and ".join(c.name for c in caches)
    return (f"{names} also caches this model: the calls it skips never reach FreqCa (FreqCa caches the others; "
            f"the two caches' errors add up)")
