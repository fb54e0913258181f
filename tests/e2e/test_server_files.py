"""End to end on the headless ComfyUI server: ``gates_file`` offers the files of the server's
``models/freqca`` folder, a prompt naming anything else (an absolute path, ``..``, a symlink out, a missing,
huge or corrupt file) is rejected by POST /prompt with one error naming the input that does not tell
whether the target exists, and a prompt naming a listed file runs with its gates.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request

from e2e_server import make_testbed_prompt

GATES = {"steps": 12, "gates": [1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0], "meta": {}}  # full steps 0, 3, 7


def post_prompt(server, prompt: dict) -> tuple[int, dict]:
    """POST /prompt; (HTTP status, JSON body), also for a rejected prompt."""
    request = urllib.request.Request(server.url + "/prompt", data=json.dumps({"prompt": prompt}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def gates_prompt(gates_file: str, seed: int = 11, method: str = "frdiff") -> dict:
    prompt = make_testbed_prompt(seed=seed, prefix="freqca_e2e_gates")
    prompt["2"]["inputs"].update(method=method, gates_file=gates_file)
    return prompt


def test_gates_file_choices_and_refusals(comfy_server, tmp_path):
    folder = comfy_server.base / "models" / "freqca"
    assert folder.is_dir()  # created by the pack at start
    (folder / "e2e_gates.json").write_text(json.dumps(GATES))
    (folder / "e2e_corrupt.json").write_text('{"steps": 12, "gates": [1, 0')
    with open(folder / "e2e_huge.json", "wb") as file:
        file.truncate(100 * 10 ** 6)
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps(GATES))
    link = folder / "e2e_link_out.json"
    if not link.is_symlink():
        link.symlink_to(outside)
    info = comfy_server.get_json("/object_info/FreqCaAccelerate")["FreqCaAccelerate"]
    options = info["input"]["optional"]["gates_file"][1]["options"]
    assert options[0] == "none" and {"e2e_gates.json", "e2e_corrupt.json", "e2e_link_out.json"} <= set(options)

    messages = set()
    for name in ("/etc/passwd", "/nonexistent/gates.json", str(outside), "../../outside.json", "e2e_link_out.json",
                 "e2e_missing.json"):
        for method in ("frdiff", "freqca"):
            status, body = post_prompt(comfy_server, gates_prompt(name, method=method))
            assert status == 400 and set(body["node_errors"]) == {"2"}, body
            errors = body["node_errors"]["2"]["errors"]
            assert "gates_file" in {e["extra_info"]["input_name"] for e in errors}
            messages |= {e["details"].split(" - ", 1)[1].replace(repr(name), "<name>") for e in errors}
    assert messages == {"gates_file: <name> is not a .json file in ComfyUI's models/freqca folder (put the file "
                        "there and pick it from the list)"}
    for name, expected in (("e2e_huge.json", "is larger than the 1048576 byte limit"),
                           ("e2e_corrupt.json", "is not valid JSON")):
        status, body = post_prompt(comfy_server, gates_prompt(name))
        assert status == 400 and all(f"gates_file: {name!r} {expected}" in e["details"]
                                     for e in body["node_errors"]["2"]["errors"]), body


def test_prompt_with_listed_gates_file_runs(comfy_server):
    folder = comfy_server.base / "models" / "freqca"
    (folder / "e2e_run_gates.json").write_text(json.dumps(GATES))
    log_start = len(comfy_server.log_text())
    status, body = post_prompt(comfy_server, gates_prompt("e2e_run_gates.json"))
    assert status == 200 and not body.get("node_errors"), body
    comfy_server.wait_history(body["prompt_id"], timeout=90)
    log = comfy_server.log_text()[log_start:]
    assert "FreqCa Accelerate (frdiff, learned gates): 3/12 steps full, 9 cached" in log, log[-3000:]
    assert "[FccFcccFcccc]" in log, log[-3000:]
