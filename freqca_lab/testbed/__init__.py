"""The testbed: a tiny trained FLUX-architecture model, its procedural data and a rectified-flow sampler.

Pure torch + numpy (never imports ComfyUI). ``load_testbed()`` returns the shipped model and prompt table.
"""
from .data import PROMPTS, PromptTable, render, render_batch
from .model import Embedded, TinyFlux, TinyFluxConfig, load_model, load_testbed, save_model
from .sampling import euler_sample, flux_sigmas, seeded_noise

__all__ = [
    "PROMPTS", "Embedded", "PromptTable", "TinyFlux", "TinyFluxConfig", "euler_sample", "flux_sigmas",
    "load_model", "load_testbed", "render", "render_batch", "save_model", "seeded_noise",
]
