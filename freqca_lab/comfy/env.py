"""Where the pack and ComfyUI are: import paths, the pack as a package, and locating a ComfyUI source tree.

The repository root is itself a package (ComfyUI's custom-node entry), and ComfyUI has a top-level
module named ``nodes``; so tests import the pack under the name ``comfyui_freqca`` and never put a
ComfyUI tree on ``sys.path`` unless a test asks for it through the ``comfyui`` fixture.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACK_NAME = "comfyui_freqca"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _is_comfyui(path: Path) -> bool:
    return (path / "comfy" / "model_patcher.py").is_file() and (path / "comfy_api").is_dir()


def find_comfyui() -> Path | None:
    """Return a ComfyUI source tree: $COMFYUI_PATH, the tree this pack sits in, or a usual place."""
    candidates = []
    if os.environ.get("COMFYUI_PATH"):
        candidates.append(Path(os.environ["COMFYUI_PATH"]).expanduser())
    if REPO.parent.name == "custom_nodes":
        candidates.append(REPO.parent.parent)
    home = Path.home()
    candidates += [home / "ComfyUI", home / "comfy" / "ComfyUI", REPO.parent / "ComfyUI"]
    for path in candidates:
        if _is_comfyui(path):
            return path.resolve()
    return None


def load_pack():
    """Import the repository root as the package ``comfyui_freqca`` (as ComfyUI would import the folder)."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(
        PACK_NAME, REPO / "__init__.py", submodule_search_locations=[str(REPO)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module
