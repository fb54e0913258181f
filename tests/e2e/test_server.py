"""End to end on a real headless ComfyUI server (see conftest.py): the pack loads, its JS and example
workflows are served, and a prompt testbed -> FreqCa Accelerate -> KSampler -> SaveImage runs, saves a
plausible picture and reports the run's summary (log line, progress text and the ``freqca.stats`` event).
"""
from __future__ import annotations

import asyncio
import io
import json
import struct
import threading
import time
import uuid

import numpy as np

from e2e_server import PACK_DIR_NAME, make_testbed_prompt
from freqca_lab.comfy.env import REPO

STEPS = 12
# warm-up 3, interval 3, final_full 1 of 12 steps: full steps 0, 1, 2, 5, 8, 11
EXPECTED_TIMELINE = "FFFccFccFccF"


class SocketListener(threading.Thread):
    """Collects the server's websocket messages for one client id (JSON events and progress texts)."""

    def __init__(self, url: str, client_id: str) -> None:
        super().__init__(daemon=True)
        self.url = f"{url.replace('http', 'ws', 1)}/ws?clientId={client_id}"
        self.events: list[dict] = []
        self.texts: list[tuple[str, str]] = []
        self.connected = threading.Event()
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            asyncio.run(self._listen())
        except BaseException as exc:  # reported by the test
            self.error = exc
            self.connected.set()

    async def _listen(self) -> None:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(self.url, heartbeat=None) as ws:
                self.connected.set()
                while not self._halt.is_set():
                    try:
                        msg = await asyncio.wait_for(ws.receive(), timeout=0.3)
                    except asyncio.TimeoutError:
                        continue
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        self.events.append(json.loads(msg.data))
                    elif msg.type == aiohttp.WSMsgType.BINARY and len(msg.data) > 8:
                        kind, = struct.unpack(">I", msg.data[:4])
                        if kind == 3:  # progress text: node id length, node id, text
                            n, = struct.unpack(">I", msg.data[4:8])
                            self.texts.append((msg.data[8:8 + n].decode(), msg.data[8 + n:].decode()))
                    elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        break

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)

    def of_type(self, kind: str) -> list[dict]:
        return [e["data"] for e in self.events if e.get("type") == kind]


def test_pack_loaded_and_served(comfy_server):
    info = comfy_server.get_json("/object_info/FreqCaAccelerate")["FreqCaAccelerate"]
    assert info["display_name"] == "FreqCa Accelerate"
    assert info["input"]["required"]["interval"][1]["default"] == 6
    widgets = [name for section in ("required", "optional") for name, spec in info["input"].get(section, {}).items()
               if spec[0] in ("INT", "FLOAT", "BOOLEAN", "STRING", "COMBO")]
    assert len(widgets) <= 6 and info["input"]["optional"]["options"][0] == "FREQCA_OPTIONS", info["input"]
    options = comfy_server.get_json("/object_info/FreqCaOptions")["FreqCaOptions"]
    assert options["display_name"] == "FreqCa Options" and options["output"] == ["FREQCA_OPTIONS"]
    assert "FreqCaTestbedLoader" in comfy_server.get_json("/object_info/FreqCaTestbedLoader")
    extensions = comfy_server.get_json("/extensions")
    script = f"/extensions/{PACK_DIR_NAME}/freqca.js"
    assert script in extensions, extensions
    source = comfy_server.get_bytes(script).decode()
    assert "registerExtension" in source and "freqca.stats" in source
    templates = comfy_server.get_json("/workflow_templates")
    shipped = {path.stem for path in (REPO / "workflows").glob("*.json")}
    assert shipped and shipped == set(templates[PACK_DIR_NAME]), templates
    workflow = comfy_server.get_json(f"/api/workflow_templates/{PACK_DIR_NAME}/flux1_dev_text_to_image.json")
    assert any(node["type"] == "FreqCaAccelerate" for node in workflow["nodes"])


def test_prompt_runs_saves_image_and_reports_summary(comfy_server):
    from PIL import Image

    client_id = uuid.uuid4().hex
    listener = SocketListener(comfy_server.url, client_id)
    listener.start()
    try:
        assert listener.connected.wait(10) and listener.error is None, listener.error
        start, log_start = time.monotonic(), len(comfy_server.log_text())
        # seed 7 and cutoff 0.1 here, seed 3 and cutoff 0.15 in the browser test's workflow: ComfyUI reuses a
        # node's cached output for equal inputs, even that of a node of another prompt with another id
        queued = comfy_server.post_json("/prompt", {"prompt": make_testbed_prompt(steps=STEPS), "client_id": client_id})
        assert not queued.get("node_errors"), queued
        history = comfy_server.wait_history(queued["prompt_id"], timeout=90)
        elapsed = time.monotonic() - start
        deadline = time.monotonic() + 5  # the event is sent before the prompt finishes; allow delivery
        while not listener.of_type("freqca.stats") and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        listener.stop()

    # the saved picture
    images = history["outputs"]["7"]["images"]
    assert len(images) == 1 and images[0]["type"] == "output"
    path = comfy_server.base / "output" / images[0]["subfolder"] / images[0]["filename"]
    assert path.is_file() and path.suffix == ".png"
    with Image.open(path) as image:
        assert image.size == (256, 256) and image.mode == "RGB"
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3)
    served = comfy_server.get_bytes(f"/view?filename={images[0]['filename']}&subfolder={images[0]['subfolder']}"
                                    f"&type=output")
    assert Image.open(io.BytesIO(served)).size == (256, 256)
    spread = float((pixels.max(0) - pixels.min(0)).max())
    assert spread > 60, f"flat picture (channel means {pixels.mean(0)})"
    # prompt "red circle": the testbed draws a red object on a muted background
    reddest = float((pixels[:, 0] - pixels[:, 1:].mean(1)).max())
    assert reddest > 80, f"no red object in the picture (max red excess {reddest})"

    # the run's summary: log line, the node's progress text, and the structured event for the web UI
    summary = f"FreqCa Accelerate (freqca, interval 3): 6/{STEPS} steps full, 6 cached"
    log = comfy_server.log_text()[log_start:]
    assert summary in log and f"[{EXPECTED_TIMELINE}]" in log, log[-3000:]
    assert any(node == "2" and text.startswith(summary) for node, text in listener.texts), listener.texts
    stats = listener.of_type("freqca.stats")
    assert len(stats) == 1, listener.events[-10:]
    event = stats[0]
    assert event["node"] == "2" and event["method"] == "freqca" and event["interval"] == 3
    assert (event["steps"], event["full"], event["cached"]) == (STEPS, 6, 6)
    assert event["timeline"] == EXPECTED_TIMELINE and event["speedup"] == 2.0
    assert event["cache_mb"] > 0 and event["text"].startswith(summary)
    progress = [e for e in listener.of_type("progress") if e.get("node") == "5"]
    assert progress and progress[-1]["value"] == progress[-1]["max"] == STEPS
    print(f"\nprompt ran in {elapsed:.1f} s; {event['text']}")


def test_each_bad_value_is_one_error_on_its_input(comfy_server):
    """POST /prompt with one bad value: exactly one error, on that node and input."""
    options = comfy_server.option_defaults()
    cases = [("2", "method", {"method": "nope"}, None), ("2", "interval", {"interval": 0}, None),
             ("2", "warmup_steps", {"warmup_steps": 101}, None), ("2", "start_percent", {"start_percent": 1.5}, None),
             ("2", "end_percent", {"end_percent": -0.1}, None), ("8", "tolerance", {}, {"tolerance": -1.0}),
             ("8", "taylor_order", {}, {"taylor_order": 9}), ("8", "cutoff", {}, {"cutoff": 2.0}),
             ("8", "gates_file", {}, {"gates_file": "/etc/passwd"})]
    for node, name, main, extra in cases:
        prompt = make_testbed_prompt(options={**options, **(extra or {})})
        prompt["2"]["inputs"].update(main)
        status, body = comfy_server.post_prompt(prompt)
        assert status == 400 and list(body["node_errors"]) == [node], (name, body)
        errors = body["node_errors"][node]["errors"]
        assert [e["extra_info"]["input_name"] for e in errors] == [name], (name, errors)
