"""The testbeds: tiny trained FLUX-architecture models, their data and a rectified-flow sampler.

Pure torch + numpy (never imports ComfyUI). ``load_testbed(name=...)`` returns a shipped model and its
prompt table: ``shapes`` (32x32 procedural shapes, the default) or ``photos`` (24x40 photo crops).
"""
from .data import PROMPTS, PromptTable, render, render_batch
from .model import Embedded, TinyFlux, TinyFluxConfig, load_model, save_model
from .sampling import euler_sample, flux_sigmas, seeded_noise
from .testbeds import TESTBEDS, Testbed, get_testbed, load_testbed

__all__ = [
    "PROMPTS", "TESTBEDS", "Embedded", "PromptTable", "Testbed", "TinyFlux", "TinyFluxConfig", "euler_sample",
    "flux_sigmas", "get_testbed", "load_model", "load_testbed", "render", "render_batch", "save_model",
    "seeded_noise",
]
