"""Helpers of the end-to-end tests: a headless ComfyUI server and the testbed prompt.

The server (fixture ``comfy_server`` in conftest.py) runs ``main.py --cpu --listen 127.0.0.1`` on a free
port with a temporary base directory whose ``custom_nodes`` holds symlinks to this pack and to the
test-only fixture pack (``fixture_nodes``: the trained testbed as a ComfyUI Flux model).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from freqca_lab.comfy.env import REPO

HERE = Path(__file__).resolve().parent
FIXTURE_NODES = HERE / "fixture_nodes"
ARTIFACTS = HERE / "artifacts"
PACK_DIR_NAME = "comfyui-freqca"
START_TIMEOUT_S = 90

# ComfyUI's model_base imports torchvision at import time; real installs have it, the CPU test machine
# cannot install one beside its CPU torch. Only the test server gets this empty stand-in, and only when
# the real module is missing (same as tests/comfy/harness.py does in-process).
SITECUSTOMIZE = '''
import importlib.machinery, sys, types
try:
    import torchvision  # noqa: F401
except Exception:
    for _name in ("torchvision", "torchvision.transforms"):
        _module = types.ModuleType(_name)
        _module.__spec__ = importlib.machinery.ModuleSpec(_name, None)
        sys.modules[_name] = _module
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
'''

# Front-end settings of the test user: no first-run template browser, no missing-model dialogs (the
# example workflows name real FLUX files the test machine does not have).
SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Workflow.ShowMissingModelsWarning": False,
    "Comfy.Workflow.ShowMissingNodesWarning": False,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ComfyServer:
    url: str
    port: int
    base: Path
    log_path: Path
    process: subprocess.Popen

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get_json(self, path: str, timeout: float = 10.0):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return json.loads(response.read())

    def option_defaults(self) -> dict:
        """Every input of FreqCa Options at its default, as the server's /object_info lists them."""
        info = self.get_json("/object_info/FreqCaOptions")["FreqCaOptions"]["input"]["required"]
        return {name: spec[1]["default"] for name, spec in info.items()}

    def get_bytes(self, path: str, timeout: float = 10.0) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return response.read()

    def post_json(self, path: str, data: dict, timeout: float = 10.0):
        request = urllib.request.Request(self.url + path, data=json.dumps(data).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:  # ComfyUI explains a rejected prompt in the body
            raise AssertionError(f"POST {path} -> {err.code}: {err.read()[:2000]!r}") from None

    def post_prompt(self, prompt: dict) -> tuple[int, dict]:
        """POST /prompt; (HTTP status, JSON body), also for a rejected prompt."""
        request = urllib.request.Request(self.url + "/prompt", data=json.dumps({"prompt": prompt}).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def wait_history(self, prompt_id: str, timeout: float) -> dict:
        """The /history entry of a finished prompt (bounded polling)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"ComfyUI exited during the run:\n{self.log_text()[-3000:]}")
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                if entry["status"].get("status_str") == "error" or not entry["status"]["completed"]:
                    raise AssertionError(f"prompt failed: {json.dumps(entry['status'])[:3000]}")
                return entry
            time.sleep(0.25)
        raise AssertionError(f"prompt {prompt_id} did not finish in {timeout} s:\n{self.log_text()[-3000:]}")


def make_base_dir(base: Path) -> None:
    nodes = base / "custom_nodes"
    nodes.mkdir(parents=True)
    (nodes / PACK_DIR_NAME).symlink_to(REPO, target_is_directory=True)
    (nodes / "freqca_testbed_nodes").symlink_to(FIXTURE_NODES, target_is_directory=True)
    user = base / "user" / "default"
    user.mkdir(parents=True)
    (user / "comfy.settings.json").write_text(json.dumps(SETTINGS))
    site = base / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)  # the server's own process group (start_new_session)
        process.wait(timeout=10)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)


def make_testbed_prompt(steps: int = 12, seed: int = 7, interval: int = 3, prefix: str = "freqca_e2e",
                        prompt: str = "red circle", method: str = "freqca", options: dict | None = None) -> dict:
    """API-format prompt: testbed loader -> FreqCa Accelerate -> KSampler (euler) -> decode -> SaveImage; with
    ``options`` (every input of FreqCa Options, e.g. ``ComfyServer.option_defaults()`` updated) a FreqCa Options
    node "8" feeds FreqCa Accelerate's ``options``."""
    freqca = {"model": ["1", 0], "method": method, "interval": interval, "warmup_steps": 3, "final_full_steps": 1,
              "start_percent": 0.0, "end_percent": 1.0}
    extra = {}
    if options is not None:
        freqca["options"] = ["8", 0]
        extra["8"] = {"class_type": "FreqCaOptions", "inputs": dict(options)}
    return {
        **extra,
        "1": {"class_type": "FreqCaTestbedLoader", "inputs": {}},
        "2": {"class_type": "FreqCaAccelerate", "inputs": freqca},
        "3": {"class_type": "FreqCaTestbedPrompt", "inputs": {"prompt": prompt}},
        "4": {"class_type": "FreqCaTestbedEmptyLatent", "inputs": {"width": 32, "height": 32, "batch_size": 1}},
        "5": {"class_type": "KSampler",
              "inputs": {"model": ["2", 0], "positive": ["3", 0], "negative": ["3", 1], "latent_image": ["4", 0],
                         "seed": seed, "steps": steps, "cfg": 3.0, "sampler_name": "euler", "scheduler": "simple",
                         "denoise": 1.0}},
        "6": {"class_type": "FreqCaTestbedDecode", "inputs": {"samples": ["5", 0], "scale": 8}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}},
    }
