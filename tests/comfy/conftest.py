"""Fixtures for tests that drive real ComfyUI code in-process (the ComfyUI tier: see tests/tiers.py).

ComfyUI is imported from a source tree (``find_comfyui()``: $COMFYUI_PATH, the tree this pack sits in, or
a usual place), in CPU mode and without its server; the pack need not be inside ``custom_nodes``.
"""
from __future__ import annotations

from types import SimpleNamespace

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


@pytest.fixture
def freqca_dirs(comfyui, monkeypatch, tmp_path):
    """ComfyUI's folders pointed at ``tmp_path`` for one test: ``models`` (its ``freqca`` folder, created, is
    the pack's model folder), ``user`` (the user directory) and ``outside`` (a folder outside both)."""
    import folder_paths

    dirs = SimpleNamespace(models=tmp_path / "models" / "freqca", user=tmp_path / "user", outside=tmp_path / "outside")
    for path in vars(dirs).values():
        path.mkdir(parents=True)
    monkeypatch.setattr(folder_paths, "models_dir", str(tmp_path / "models"))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "freqca", ([str(dirs.models)], {".json"}))
    monkeypatch.setattr(folder_paths, "user_directory", str(dirs.user))
    return dirs
