"""The pack in the real ComfyUI front-end, driven through headless Chromium (Chrome DevTools Protocol).

Needs Debian's ``chromium`` (``apt-get install chromium``): the browser tier (tests/tiers.py). Talks CDP
over a websocket with aiohttp (a ComfyUI dependency), so no browser-automation package is needed.
Checks: the page loads with this pack's extension and no console error from it; an example workflow
opens and its FreqCa Accelerate node renders with its widgets and planned timeline; the testbed workflow
runs from the UI and the node then shows the run's full/cached timeline. Screenshots go to
``tests/e2e/artifacts/`` (git-ignored).
"""
from __future__ import annotations

import asyncio
import base64
import itertools
import json
import subprocess
import time
import urllib.request
from pathlib import Path

from e2e_server import ARTIFACTS, PACK_DIR_NAME, stop

FIXTURE_PACK = "freqca_testbed_nodes"
VIEWPORT = (1600, 900)
EXPECTED_WIDGETS = ["method", "interval", "warmup_steps", "final_full_steps", "start_percent", "end_percent"]


class Browser:
    """A headless Chromium and a CDP session on its first page."""

    def __init__(self, executable: str, profile: Path) -> None:
        self.executable = executable
        self.profile = profile
        self.process: subprocess.Popen | None = None
        self.ws = None
        self.session = None
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future] = {}
        self.console: list[dict] = []
        self.reader: asyncio.Task | None = None

    async def start(self) -> None:
        import aiohttp

        self.process = subprocess.Popen(
            [self.executable, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
             "--remote-debugging-port=0", "--remote-allow-origins=*", f"--user-data-dir={self.profile}",
             f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.is_file() or not port_file.read_text().strip():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("chromium did not start its DevTools endpoint")
            await asyncio.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            targets = json.loads(response.read())
        page = next(t for t in targets if t["type"] == "page")
        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        self.reader = asyncio.create_task(self._read())
        for method in ("Runtime.enable", "Log.enable", "Page.enable"):
            await self.send(method)
        await self.send("Emulation.setDeviceMetricsOverride",
                        {"width": VIEWPORT[0], "height": VIEWPORT[1], "deviceScaleFactor": 1, "mobile": False})

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data:
                future = self.pending.pop(data["id"], None)
                if future and not future.done():
                    future.set_result(data)
            elif data.get("method") == "Runtime.consoleAPICalled" and data["params"]["type"] in ("error", "warning"):
                params = data["params"]
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
                frames = (params.get("stackTrace") or {}).get("callFrames") or []
                self.console.append({"level": params["type"], "text": text,
                                     "where": " ".join(f["url"] for f in frames)})
            elif data.get("method") == "Runtime.exceptionThrown":
                details = data["params"]["exceptionDetails"]
                text = (details.get("exception") or {}).get("description") or details.get("text", "")
                frames = (details.get("stackTrace") or {}).get("callFrames") or []
                where = " ".join([details.get("url", "")] + [f["url"] for f in frames])
                self.console.append({"level": "exception", "text": text, "where": where})
            elif data.get("method") == "Log.entryAdded" and data["params"]["entry"]["level"] == "error":
                entry = data["params"]["entry"]
                self.console.append({"level": "log", "text": entry.get("text", ""), "where": entry.get("url", "")})

    async def send(self, method: str, params: dict | None = None, timeout: float = 60) -> dict:
        message_id = next(self.ids)
        future = asyncio.get_running_loop().create_future()
        self.pending[message_id] = future
        await self.ws.send_str(json.dumps({"id": message_id, "method": method, "params": params or {}}))
        reply = await asyncio.wait_for(future, timeout)
        if "error" in reply:
            raise AssertionError(f"{method}: {reply['error']}")
        return reply["result"]

    async def js(self, expression: str, timeout: float = 60):
        """Evaluate ``expression`` (may be async) in the page and return its JSON value."""
        result = await self.send("Runtime.evaluate", {"expression": f"(async () => {{ {expression} }})()",
                                                      "awaitPromise": True, "returnByValue": True}, timeout)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise AssertionError(f"page error: {(details.get('exception') or {}).get('description') or details}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while True:
            value = await self.js(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out ({timeout} s) waiting for {what}")
            await asyncio.sleep(0.25)

    async def screenshot(self, path: Path, clip: dict | None = None) -> None:
        params = {"format": "png"}
        if clip:
            params["clip"] = dict(clip, scale=1)
        data = await self.send("Page.captureScreenshot", params)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))

    async def close(self) -> None:
        try:
            if self.ws is not None:
                await self.send("Browser.close", timeout=5)
        except Exception:
            pass
        if self.reader is not None:
            self.reader.cancel()
        if self.session is not None:
            await self.session.close()
        if self.process is not None:
            stop(self.process)


APP = "const app = window.comfyAPI.app.app;"
FREQCA_NODES = APP + "const nodes = app.graph._nodes.filter((n) => n.comfyClass === 'FreqCaAccelerate');"
VIEW = FREQCA_NODES + "const w = nodes[0].widgets.find((x) => x.name === 'freqca_timeline'); const v = w.view();"


async def load_workflow(browser: Browser, pack: str, name: str) -> None:
    await browser.js(APP + f"""
        const response = await fetch('/api/workflow_templates/{pack}/{name}.json');
        if (!response.ok) throw new Error('workflow ' + response.status);
        await app.loadGraphData(await response.json(), true, true, '{name}');
        app.canvas.setDirty(true, true);
        return true;""")
    await asyncio.sleep(1.0)  # let the canvas draw


async def node_box(browser: Browser, node_types: list[str], pad: int = 24) -> dict:
    """Screen rectangle around the given node types (title bar included), for a cropped screenshot."""
    box = await browser.js(APP + f"""
        const types = {json.dumps(node_types)};
        const ds = app.canvas.ds, rect = app.canvas.canvas.getBoundingClientRect();
        let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
        for (const n of app.graph._nodes) {{
            if (!types.includes(n.comfyClass ?? n.type)) continue;
            const t = LiteGraph.NODE_TITLE_HEIGHT;
            x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - t);
            x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
        }}
        const s = ds.scale;
        return {{x: rect.left + (x0 + ds.offset[0]) * s, y: rect.top + (y0 + ds.offset[1]) * s,
                 width: (x1 - x0) * s, height: (y1 - y0) * s}};""")
    x, y = max(0, box["x"] - pad), max(0, box["y"] - pad)
    width = min(VIEWPORT[0] - x, box["width"] + 2 * pad)
    height = min(VIEWPORT[1] - y, box["height"] + 2 * pad)
    return {"x": x, "y": y, "width": width, "height": height}


async def scenario(server_url: str, chromium: str, profile: Path) -> dict:
    (ARTIFACTS / "node_live.png").unlink(missing_ok=True)
    browser = Browser(chromium, profile)
    report: dict = {}
    try:
        await browser.start()
        started = time.monotonic()
        await browser.send("Page.navigate", {"url": server_url})
        await browser.wait_for("return !!(window.comfyAPI?.app?.app?.graph && window.comfyAPI.app.app.canvas"
                               " && window.comfyAPI.app.app.extensions?.length)", 90, "the ComfyUI app")
        report["load_s"] = round(time.monotonic() - started, 1)
        report["extension"] = await browser.js(
            APP + "return app.extensions.some((e) => e.name === 'freqca.accelerate');")
        await asyncio.sleep(1.5)  # let start-up dialogs and late console messages settle

        # an example workflow: the FLUX.1-dev text-to-image one, as a user opens it
        await load_workflow(browser, PACK_DIR_NAME, "flux1_dev_text_to_image")
        report["example"] = await browser.js(VIEW + """
            return {count: nodes.length, widgets: nodes[0].widgets.map((x) => x.name),
                    values: nodes[0].widgets.filter((x) => x.name !== 'freqca_timeline').map((x) => x.value),
                    title: nodes[0].title, size: nodes[0].size, view: v};""")
        report["bypassed"] = await browser.js(VIEW + """
            nodes[0].mode = 4; const off = w.view(); nodes[0].mode = 0; return off;""")
        await browser.screenshot(ARTIFACTS / "example_workflow.png")
        await browser.screenshot(ARTIFACTS / "example_node.png", await node_box(browser, ["FreqCaAccelerate", "FreqCaOptions"]))

        # the testbed workflow, queued from the UI
        await load_workflow(browser, FIXTURE_PACK, "freqca_testbed")
        report["planned"] = await browser.js(VIEW + "return v;")
        await browser.js("""window.__freqcaTexts = [];
            window.comfyAPI.api.api.addEventListener('progress_text', (e) => window.__freqcaTexts.push(e.detail));
            """ + APP + "await app.queuePrompt(0, 1); return true;")
        live, deadline = [], time.monotonic() + 150
        while True:
            state = await browser.js(VIEW + "return {view: v, stats: nodes[0].freqca?.stats ?? null};")
            if state["view"]["title"].startswith("sampling") and state["view"]["title"] not in live:
                live.append(state["view"]["title"])
                if state["view"]["done"] >= 4 and not (ARTIFACTS / "node_live.png").exists():
                    await browser.screenshot(ARTIFACTS / "node_live.png", await node_box(browser, ["FreqCaAccelerate"]))
            if state["stats"]:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"no FreqCa stats after the run; console: {browser.console[-5:]}")
            await asyncio.sleep(0.2)
        report["live"] = live
        report["stats"] = state["stats"]
        report["after"] = state["view"]
        await browser.wait_for(APP + "return !!app.graph._nodes.find((n) => n.type === 'SaveImage')?.imgs?.length;",
                               30, "the saved image preview")
        await asyncio.sleep(1.0)
        report["progress_text"] = await browser.js(FREQCA_NODES + """
            return {texts: window.__freqcaTexts, node: String(nodes[0].id),
                    widgets: nodes[0].widgets.map((x) => x.name)};""")
        await browser.screenshot(ARTIFACTS / "testbed_after_run.png")
        clip = await node_box(browser, ["FreqCaAccelerate", "KSampler", "SaveImage"])
        await browser.screenshot(ARTIFACTS / "node_after_run.png", clip)
        # events the real run did not produce: a summary with a note after the timeline, a summary the
        # Python side could not parse, an event for a node that is not in the graph
        report["synthetic"] = await browser.js(VIEW + """
            const api = window.comfyAPI.api.api, id = String(nodes[0].id), text = nodes[0].freqca.stats.text;
            const out = {};
            api.dispatchCustomEvent('freqca.stats', {...nodes[0].freqca.stats,
                                                     text: text + '; 2 calls fell back to full compute'});
            out.note = w.view().note;
            api.dispatchCustomEvent('freqca.stats', {node: id, text: 'FreqCa Accelerate: something else'});
            out.unparsed = w.view();
            api.dispatchCustomEvent('freqca.stats', {node: '9999', text: 'x', timeline: 'Fc'});
            out.height = w.computeSize(nodes[0].size[0])[1];
            return out;""")
        report["console"] = list(browser.console)
        return report
    finally:
        await browser.close()


def test_front_end_shows_freqca_feedback(comfy_server, chromium, tmp_path):
    started = time.monotonic()
    report = asyncio.run(scenario(comfy_server.url, chromium, tmp_path / "chromium-profile"))
    print(f"\nbrowser test {time.monotonic() - started:.1f} s, page load {report['load_s']} s, "
          f"live views {report['live']}, after: {report['after']['title']}")

    ours = [e for e in report["console"] if "freqca" in (e["text"] + e["where"]).lower()]
    others = [e for e in report["console"] if e not in ours]
    if others:
        print("other console messages (not from this pack):", json.dumps(others, indent=1)[:3000])
    assert not ours, ours
    assert report["extension"], "the pack's extension did not register"

    example = report["example"]
    assert example["count"] == 1 and example["title"] == "FreqCa Accelerate"
    assert example["widgets"][:len(EXPECTED_WIDGETS)] == EXPECTED_WIDGETS and "freqca_timeline" in example["widgets"]
    assert example["values"][:len(EXPECTED_WIDGETS)] == ["res-taylor", 6, 1, 1, 0, 1]
    # 28 steps of the workflow's KSampler, warm-up 1, interval 6, the last step full: full steps 0, 6, 12, 18, 24, 27
    assert example["view"]["title"].startswith("planned 6/28 full"), example["view"]
    assert example["view"]["timeline"] == "Fccccc" * 4 + "FccF", example["view"]

    assert report["bypassed"]["title"] == "FreqCa off (bypassed)" and not report["bypassed"]["timeline"]
    assert report["planned"]["title"].startswith("planned 6/12 full"), report["planned"]
    stats = report["stats"]
    assert (stats["steps"], stats["full"], stats["cached"], stats["timeline"]) == (12, 6, 6, "FFFccFccFccF")
    assert report["after"]["title"].startswith("6/12 full \u00b7 6 cached \u00b7 est. 2.0"), report["after"]
    assert report["after"]["done"] == 12 and "CRF cache" in report["after"]["detail"]
    # the summary also came as progress text (for front-ends without the extension); on the node the
    # extension shows it once, as the timeline, instead of a second plain-text copy
    texts = report["progress_text"]
    assert any(t["nodeId"] == texts["node"] and t["text"].startswith("FreqCa Accelerate (freqca, interval 3)")
               for t in texts["texts"]), texts
    assert "$$node-text-preview" not in texts["widgets"], texts["widgets"]
    synthetic = report["synthetic"]
    assert synthetic["note"] == "2 calls fell back to full compute", synthetic
    assert synthetic["unparsed"]["title"] == "last run" and "something else" in synthetic["unparsed"]["detail"]
    assert synthetic["height"] > 0
    for name in ("example_workflow.png", "example_node.png", "testbed_after_run.png", "node_after_run.png"):
        assert (ARTIFACTS / name).stat().st_size > 5000, name
