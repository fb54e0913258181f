"""Fixtures for tests that drive real ComfyUI code in-process (the ComfyUI tier: see tests/tiers.py).

ComfyUI is imported from a source tree (``find_comfyui()``: $COMFYUI_PATH, the tree this pack sits in, or
a usual place), in CPU mode and without its server; the pack need not be inside ``custom_nodes``.
"""
from __future__ import annotations

import pytest

from freqca_lab.comfy.env import load_pack


@pytest.fixture(scope="session")
def pack(comfyui):
    """This pack, imported the way ComfyUI imports a custom-node folder."""
    return load_pack()


@pytest.fixture(scope="module")
def flux(comfyui):
    """The harness's tiny random-weight Flux (seed 1)."""
    from freqca_lab.comfy.harness import build_flux

    return build_flux(seed=1)


@pytest.fixture(scope="module")
def conds(comfyui):
    """Positive and negative conditioning for ``flux``."""
    from freqca_lab.comfy.harness import flux_conditioning

    return flux_conditioning(seed=2)
