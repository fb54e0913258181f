"""What the core tests share: a FLUX-like sigma schedule and a one-call-per-step sampler loop."""
from __future__ import annotations

from typing import Any, Callable, Sequence

from freqca_lab.testbed.sampling import flux_sigmas as testbed_sigmas


def flux_sigmas(n: int, shift: float = 3.0) -> list[float]:
    """``n + 1`` sigmas from 1 to 0 of the shifted rectified-flow schedule: strongly non-uniform spacing."""
    return testbed_sigmas(n, shift).tolist()


def drive(ctrl, sigmas: Sequence[float], call: Callable[[int, float], Any], *, start: bool = True) -> list:
    """A sampler with one model call per step at ``sigmas[:-1]``: ``call(step, sigma)`` plans it (and records or
    finishes it) and returns what the test keeps. The controller's run is started first unless ``start`` is
    False."""
    if start:
        ctrl.start_run(sigmas)
    return [call(step, float(sigma)) for step, sigma in enumerate(sigmas[:-1])]


def tiny_testbed(depth: int = 1):
    """A random-weight TinyFlux (hidden 32, ``depth`` double + 2 single blocks) and a prompt table for it."""
    from freqca_lab.runner import randomize
    from freqca_lab.testbed.data import PROMPTS, PromptTable
    from freqca_lab.testbed.model import TinyFlux, TinyFluxConfig

    config = TinyFluxConfig(hidden_size=32, num_heads=2, axes_dim=[4, 6, 6], depth=depth, depth_single_blocks=2,
                            vec_in_dim=16, context_in_dim=16)
    model = randomize(TinyFlux(config), seed=3).eval().requires_grad_(False)
    return model, PromptTable.create(PROMPTS, 2, 16, 16, seed=0).requires_grad_(False)
