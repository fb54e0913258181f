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
