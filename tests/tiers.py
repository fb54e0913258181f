"""Which test tiers can run here, decided once per session: ComfyUI in-process, headless server, browser.

Tiers, each needing the one before:

* ``comfyui``: a ComfyUI source tree is found (``find_comfyui``) and imports in this Python
  (``harness.import_comfyui``);
* ``server``: ComfyUI's server modules import too, and the testbed weights are present;
* ``browser``: Chromium is installed.

Tests join a tier through the fixture they use (``comfyui``, ``comfy_server``, ``chromium``); tests/conftest.py
skips an unavailable tier's tests with this module's one-line reason, reported once per tier.

Importability is probed in a subprocess (once per session, ~3 s): it runs the very import the tests run
(``import_comfyui``) and then the modules ComfyUI's ``main.py`` and ``server.py`` need, so a missing requirement
is named exactly, whatever ComfyUI version the tree is. Probing in the test process instead would leave a
half-imported ``comfy`` package and the tree's top-level modules (``utils``, ``server``, ``app``) behind when an
import fails; a list of module names to ``find_spec`` would have to follow ComfyUI's requirements by hand.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from freqca_lab.comfy.env import REPO, find_comfyui
from freqca_lab.testbed.model import WEIGHTS_DIR

WEIGHT_FILES = ("tinyflux.safetensors", "prompts.safetensors")
PROBE_TIMEOUT_S = 300
SETUP_HINT = ("install ComfyUI's requirements into this Python (without torch, torchvision, torchaudio, kornia, "
              "spandrel): see README 'Running the full suite', or run `bash .ci/setup_comfyui.sh`")
# Run as ``python -c PROBE REPO TREE``; prints one JSON line {"comfyui": error|None, "server": error|None}.
# main.py imports utils.extra_config before nodes.py puts comfy/ first on sys.path (whose utils.py would
# shadow ComfyUI's utils package), so that import is tried first.
PROBE = r"""
import importlib, json, sys
repo, tree = sys.argv[1:3]
sys.path[:0] = [tree, repo]

def error(*modules, run=None):
    try:
        for name in modules:
            importlib.import_module(name)
        if run is not None:
            run()
    except Exception as err:
        return f"{type(err).__name__}: {err}"
    return None

server_first = error("utils.extra_config", "app.logger")
from freqca_lab.comfy.harness import import_comfyui
result = {"comfyui": error(run=lambda: import_comfyui(tree)), "server": None}
if result["comfyui"] is None:
    result["server"] = server_first or error("execution", "server", "comfyui_frontend_package")
print(json.dumps(result))
"""


@functools.cache
def probe(tree: Path) -> dict[str, str | None]:
    """Import errors of the ComfyUI tree in this Python: {"comfyui": ..., "server": ...}, None = imports."""
    try:
        done = subprocess.run([sys.executable, "-c", PROBE, str(REPO), str(tree)], capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        failure = f"the import probe did not finish in {PROBE_TIMEOUT_S} s"
        return {"comfyui": failure, "server": failure}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        failure = f"the import probe exited with code {done.returncode}: {tail}"
        return {"comfyui": failure, "server": failure}
    return json.loads(lines[-1])


def chromium_path() -> str | None:
    """$CHROMIUM, else Debian's ``chromium`` (or ``chromium-browser``) on PATH."""
    candidates = (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                  shutil.which("chromium-browser"))
    return next((p for p in candidates if p and Path(p).is_file()), None)


def reasons(tree: Path | None, weights: Path, chromium: str | None) -> dict[str, str | None]:
    """Each tier's one-line skip reason, None where it can run: {"comfyui": ..., "server": ..., "browser": ...}."""
    out: dict[str, str | None] = {}
    if tree is None:
        out["comfyui"] = ("ComfyUI tier: no ComfyUI source tree found ($COMFYUI_PATH, the ComfyUI this pack sits in, "
                          "~/ComfyUI, ~/comfy/ComfyUI, ../ComfyUI); `bash .ci/setup_comfyui.sh` sets one up and "
                          "prints its path for COMFYUI_PATH")
        errors = {}
    else:
        errors = probe(tree)
        out["comfyui"] = errors["comfyui"] and (
            f"ComfyUI tier: ComfyUI at {tree} does not import in {sys.executable} ({errors['comfyui']}); {SETUP_HINT}")
    missing = [f for f in WEIGHT_FILES if not (weights / f).is_file()]
    if out["comfyui"]:
        out["server"] = "server tier: needs the ComfyUI tier, which is skipped"
    elif errors["server"]:
        out["server"] = (f"server tier: ComfyUI's server does not import in {sys.executable} ({errors['server']}); "
                         f"{SETUP_HINT}")
    elif missing:
        out["server"] = f"server tier: testbed weights missing in {weights}: {', '.join(missing)}"
    else:
        out["server"] = None
    if out["server"]:
        out["browser"] = "browser tier: needs the server tier, which is skipped"
    elif chromium is None:
        out["browser"] = "browser tier: chromium not installed (apt-get install chromium, or set CHROMIUM)"
    else:
        out["browser"] = None
    return out


@functools.cache
def session_reasons() -> dict[str, str | None]:
    """``reasons`` for this machine, decided once per session."""
    return reasons(find_comfyui(), WEIGHTS_DIR, chromium_path())


# The fixture that puts a test in each tier, the most demanding tier first.
FIXTURE_TIERS = (("chromium", "browser"), ("comfy_server", "server"), ("comfyui", "comfyui"))


def tier_of(fixturenames) -> str | None:
    """The tier of a test that uses ``fixturenames`` (its whole fixture closure), or None for the core tier."""
    return next((name for fixture, name in FIXTURE_TIERS if fixture in fixturenames), None)
