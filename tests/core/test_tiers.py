"""Test tiers (tests/tiers.py): a ComfyUI tree that does not import names the missing module, once per tier."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import tiers
from freqca_lab.comfy.env import REPO

# The least a tree needs for harness.import_comfyui and for the server probe.
IMPORTABLE = {
    "comfy/__init__.py": "",
    "comfy/options.py": "args_parsing = False\n",
    "comfy/cli_args.py": "import types\nargs = types.SimpleNamespace(cpu=False)\n",
    "comfy/model_management.py": ("import enum\nfrom comfy.cli_args import args\n"
                                  "CPUState = enum.Enum('CPUState', 'GPU CPU')\n"
                                  "cpu_state = CPUState.CPU if args.cpu else CPUState.GPU\n"),
    **{f"comfy/{name}.py": "" for name in ("model_patcher", "sample", "samplers", "supported_models", "utils")},
    "comfy_api/__init__.py": "",
    "nodes.py": "",
    "node_helpers.py": "",
    "utils/__init__.py": "",
    "utils/extra_config.py": "",
    "app/__init__.py": "",
    "app/logger.py": "",
    "execution.py": "",
    "server.py": "",
    "comfyui_frontend_package/__init__.py": "",
}


def fake_tree(root: Path, **overrides: str) -> Path:
    """A ComfyUI-shaped tree under ``root``; ``overrides`` replace files ('comfy/options.py' as comfy__options)."""
    files = dict(IMPORTABLE, **{name.replace("__", "/") + ".py": text for name, text in overrides.items()})
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_server_tier_names_a_missing_server_module_then_weights_then_chromium(tmp_path):
    tree = fake_tree(tmp_path / "a" / "ComfyUI", utils__extra_config="import freqca_absent_yaml\n")
    reasons = tiers.reasons(tree, tmp_path, chromium="/usr/bin/true")
    assert reasons["comfyui"] is None
    assert reasons["server"].startswith("server tier: ComfyUI's server does not import")
    assert "No module named 'freqca_absent_yaml'" in reasons["server"]
    assert reasons["browser"] == "browser tier: needs the server tier, which is skipped"

    tree = fake_tree(tmp_path / "b" / "ComfyUI")
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "prompts.safetensors").touch()
    reasons = tiers.reasons(tree, weights, chromium=None)
    assert reasons["server"] == f"server tier: testbed weights missing in {weights}: tinyflux.safetensors"
    (weights / "tinyflux.safetensors").touch()
    reasons = tiers.reasons(tree, weights, chromium=None)
    assert reasons["server"] is None and reasons["browser"].startswith("browser tier: chromium not installed")
    assert tiers.reasons(tree, weights, chromium="/usr/bin/true") == {"comfyui": None, "server": None,
                                                                       "browser": None}


def test_no_tree_is_one_reason(tmp_path):
    reasons = tiers.reasons(None, tmp_path, chromium=None)
    assert reasons["comfyui"].startswith("ComfyUI tier: no ComfyUI source tree found")
    assert reasons["server"].startswith("server tier: needs the ComfyUI tier")


def test_tier_skips_fold_into_one_line_per_tier(tmp_path):
    """A real pytest run over the tiered tests with a tree that does not import: three skip lines, no error."""
    tree = fake_tree(tmp_path / "ComfyUI", comfy__options="import freqca_absent_psutil\n")
    env = {k: v for k, v in os.environ.items() if k != "FREQCA_REQUIRE_TIERS"}
    env["COMFYUI_PATH"] = str(tree)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/comfy",
                           "tests/e2e", "tests/core/test_testbed.py::test_matches_comfyui_flux"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    skips = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skips) == 3, skips
    lines = {line.split(": ", 1)[1].split(":")[0]: line for line in skips}
    assert f"ComfyUI at {tree} does not import in {sys.executable}" in lines["ComfyUI tier"]
    assert "(ModuleNotFoundError: No module named 'freqca_absent_psutil')" in lines["ComfyUI tier"]
    assert "requirements" in lines["ComfyUI tier"]
    assert lines["server tier"].endswith("server tier: needs the ComfyUI tier, which is skipped")
    assert lines["browser tier"].endswith("browser tier: needs the server tier, which is skipped")
    assert " passed, " in done.stdout.splitlines()[-1] and "error" not in done.stdout.splitlines()[-1]

    env["FREQCA_REQUIRE_TIERS"] = "1"  # as .ci/run sets it: a tier that cannot run is an error
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/e2e"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout[-3000:] + done.stderr[-3000:]
    assert "No module named 'freqca_absent_psutil'" in done.stderr
    assert lines["server tier"].split(": ", 1)[1] in done.stderr
