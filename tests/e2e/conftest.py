"""Fixture ``comfy_server``: one headless ComfyUI server for all end-to-end tests (see e2e_server.py).

The server tier (tests/tiers.py: skipped with one reason where ComfyUI or its server's requirements or the
testbed weights are missing); the server is stopped at the end of the session in all cases. Fixture ``chromium``:
the browser tier.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error

import pytest

import tiers
from e2e_server import START_TIMEOUT_S, ComfyServer, free_port, make_base_dir, stop
from freqca_lab.comfy.env import find_comfyui


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    comfy = find_comfyui()
    base = tmp_path_factory.mktemp("comfy_base")
    make_base_dir(base)
    port = free_port()
    log_path = base / "server.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(base / "site"), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    command = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--base-directory", str(base), "--disable-auto-launch", "--database-url", "sqlite:///:memory:"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=comfy, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    server = ComfyServer(f"http://127.0.0.1:{port}", port, base, log_path, process)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"ComfyUI exited at start (code {process.returncode}):\n{server.log_text()[-3000:]}")
            try:
                server.get_json("/system_stats", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(f"ComfyUI did not answer in {START_TIMEOUT_S} s:\n{server.log_text()[-3000:]}")
                time.sleep(0.5)
        yield server
    finally:
        stop(process)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of the Chromium executable (the browser tier)."""
    return tiers.chromium_path()
