"""End to end on the headless ComfyUI server: ``gates_file`` offers the files of the server's
``models/freqca`` folder, a prompt naming anything else (an absolute path, ``..``, a symlink out, a missing,
huge or corrupt file) is rejected by POST /prompt with one error naming the input that does not tell
whether the target exists, and a prompt naming a listed file runs with its gates.
"""
from __future__ import annotations

import json

from e2e_server import make_testbed_prompt

GATES = {"steps": 12, "gates": [1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0], "meta": {}}  # full steps 0, 3, 7


def gates_prompt(server, gates_file: str, seed: int = 11, method: str = "frdiff") -> dict:
    return make_testbed_prompt(seed=seed, prefix="freqca_e2e_gates", method=method,
                               options={**server.option_defaults(), "gates_file": gates_file})


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
    info = comfy_server.get_json("/object_info/FreqCaOptions")["FreqCaOptions"]
    options = info["input"]["required"]["gates_file"][1]["options"]
    assert options[0] == "none" and {"e2e_gates.json", "e2e_corrupt.json", "e2e_link_out.json"} <= set(options)

    messages = set()
    for name in ("/etc/passwd", "/nonexistent/gates.json", str(outside), "../../outside.json", "e2e_link_out.json",
                 "e2e_missing.json"):
        for method in ("frdiff", "freqca"):
            status, body = comfy_server.post_prompt(gates_prompt(comfy_server, name, method=method))
            assert status == 400 and set(body["node_errors"]) == {"8"}, body
            errors = body["node_errors"]["8"]["errors"]
            assert [e["extra_info"]["input_name"] for e in errors] == ["gates_file"]
            messages.add(errors[0]["details"].split(" - ", 1)[1].replace(repr(name), "<name>"))
    assert messages == {"gates_file: <name> is not a .json file in ComfyUI's models/freqca folder (put the file "
                        "there and pick it from the list)"}
    for name, expected in (("e2e_huge.json", "is larger than the 1048576 byte limit"),
                           ("e2e_corrupt.json", "is not valid JSON")):
        status, body = comfy_server.post_prompt(gates_prompt(comfy_server, name))
        errors = body["node_errors"]["8"]["errors"]
        assert status == 400 and len(errors) == 1 and f"gates_file: {name!r} {expected}" in errors[0]["details"]


def test_prompt_with_listed_gates_file_runs(comfy_server):
    folder = comfy_server.base / "models" / "freqca"
    (folder / "e2e_run_gates.json").write_text(json.dumps(GATES))
    log_start = len(comfy_server.log_text())
    status, body = comfy_server.post_prompt(gates_prompt(comfy_server, "e2e_run_gates.json"))
    assert status == 200 and not body.get("node_errors"), body
    comfy_server.wait_history(body["prompt_id"], timeout=90)
    log = comfy_server.log_text()[log_start:]
    assert "FreqCa Accelerate (frdiff, learned gates): 3/12 steps full, 9 cached" in log, log[-3000:]
    assert "[FccFcccFcccc]" in log, log[-3000:]
