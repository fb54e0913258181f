"""Files the pack reads and writes stay inside ComfyUI's own folders (``nodes/files.py``), checked in real
ComfyUI (its ``folder_paths`` pointed at temporary folders by the ``freqca_dirs`` fixture, its own prompt
validation): the ``gates_file`` list, refusals that do not tell whether a target exists, the size limit,
corrupt files, and atomic profile writes under concurrent writers (threads and processes).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from freqca_lab.comfy.env import REPO

GATES = {"steps": 6, "gates": [1, 0, 1, 0, 0, 1], "meta": {}}
LIMIT = 1 << 20


def write_gates(path: Path, data: object = GATES) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def files(pack):
    from comfyui_freqca.nodes import files

    return files


def refusal(files, name) -> str:
    """The error for gates_file ``name``, with the name itself replaced by ``<name>``."""
    with pytest.raises(ValueError) as err:
        files.load_gates(name)
    return str(err.value).replace(repr(name), "<name>")


# ----------------------------------------------------------------------------------------------- reading


def test_gates_file_lists_the_model_folder(files, freqca_dirs):
    from comfyui_freqca.nodes.freqca_node import FreqCaOptions

    write_gates(freqca_dirs.models / "b.json")
    write_gates(freqca_dirs.models / "sub" / "a.json")
    (freqca_dirs.models / "notes.txt").write_text("not a gates file")
    expected = ["none", "b.json", os.path.join("sub", "a.json")]
    assert files.gates_file_options() == expected
    kind, options = FreqCaOptions.INPUT_TYPES()["required"]["gates_file"]
    assert kind == "COMBO" and options["options"] == expected and options["default"] == "none"
    assert files.load_gates(os.path.join("sub", "a.json")).gates == (True, False, True, False, False, True)
    assert files.load_gates("none") is None and files.load_gates("") is None and files.load_gates(" ") is None


def test_register_folder_keeps_user_paths(files, freqca_dirs, monkeypatch):
    """A ``freqca`` path from extra_model_paths.yaml (registered before the pack, any extension) is kept,
    after the default folder, and only .json files are listed."""
    import folder_paths

    extra = freqca_dirs.outside / "extra"
    write_gates(extra / "shared.json")
    (extra / "model.safetensors").write_bytes(b"x")
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "freqca", ([str(extra)], set()))
    assert files.register_folder() == [freqca_dirs.models, extra]
    assert files.gates_file_options() == ["none", "shared.json"]
    assert files.load_gates("shared.json").steps == 6


def test_paths_out_of_the_folder_are_refused_alike(files, freqca_dirs):
    """Absolute paths, ``..`` and symlinks out of the folder get one message, whether or not the target
    exists (and whether or not it is a valid gates file), and so does a missing file."""
    outside = write_gates(freqca_dirs.outside / "gates.json")
    inside = write_gates(freqca_dirs.models / "gates.json")
    (freqca_dirs.models / "link_out.json").symlink_to(outside)
    (freqca_dirs.models / "dangling_out.json").symlink_to(freqca_dirs.outside / "nothing.json")
    (freqca_dirs.models / "dir_out").symlink_to(freqca_dirs.outside, target_is_directory=True)
    names = [str(outside), str(freqca_dirs.outside / "nothing.json"), str(inside), "/etc/passwd",
             "/nonexistent", "../outside/gates.json", "../outside/nothing.json", "sub/../gates.json",
             "link_out.json", "dangling_out.json", "dir_out/gates.json", "missing.json", "gates", "../../../etc/passwd",
             "gates.json\0", 5, None]
    messages = {refusal(files, name) for name in names}
    assert len(messages) == 1, messages
    message = messages.pop()
    assert message.startswith("gates_file: <name> is not a .json file in ComfyUI's models/freqca folder")
    assert str(freqca_dirs.models) not in message  # the server's layout is not shown either
    assert files.load_gates("gates.json").steps == 6  # the same file by its name in the folder
    (freqca_dirs.models / "link_in.json").symlink_to(inside)  # a symlink that stays inside is fine
    assert files.load_gates("link_in.json").steps == 6


def test_special_files_do_not_hang(files, freqca_dirs):
    os.mkfifo(freqca_dirs.models / "fifo.json")
    (freqca_dirs.models / "dir.json").mkdir()
    assert refusal(files, "fifo.json") == refusal(files, "dir.json") == refusal(files, "missing.json")
    with pytest.raises(ValueError, match="is not a regular file"):
        files.read_json(freqca_dirs.models / "fifo.json", "gates_file", "'fifo.json'")


def test_size_limit_checked_before_reading(files, freqca_dirs):
    huge = freqca_dirs.models / "huge.json"
    with open(huge, "wb") as file:  # 100 MB (sparse): refused by its size, never parsed
        file.truncate(100 * 10 ** 6)
    with pytest.raises(ValueError, match=rf"gates_file: 'huge.json' is larger than the {LIMIT} byte limit"):
        files.load_gates("huge.json")
    text = json.dumps(GATES)
    write_gates(freqca_dirs.models / "limit.json").write_text(text + " " * (LIMIT - len(text)))
    assert files.load_gates("limit.json").steps == 6  # exactly at the limit: read
    (freqca_dirs.models / "over.json").write_text(text + " " * (LIMIT + 1 - len(text)))
    with pytest.raises(ValueError, match="larger than"):
        files.load_gates("over.json")


@pytest.mark.parametrize("content, message", [
    (b"", "is not valid JSON"),
    (b'{"steps": 6, "gates": [1, 0', "is not valid JSON"),
    (b"\xff\xfe\x00garbage", "is not valid JSON"),
    (b"[" * 200_000, "is not valid JSON"),  # nesting deeper than the parser's recursion limit
    (b'{"steps": 2, "gates": [1]}', "field 'steps' must equal the number of gates"),
    (b'[1, 0, 1]', "expected a JSON object"),
], ids=["empty", "truncated", "binary", "deep", "wrong-steps", "list"])
def test_corrupt_gates_file_named(files, freqca_dirs, content, message):
    (freqca_dirs.models / "bad.json").write_bytes(content)
    with pytest.raises(ValueError, match=rf"^gates_file:? 'bad\.json':? .*{message}"):
        files.load_gates("bad.json")


# ------------------------------------------------------------------------------------ prompt validation


@pytest.fixture(scope="module")
def validation(pack):
    from test_reliability import _ValidationHarness

    from comfyui_freqca.nodes.freqca_node import FreqCaOptions

    return _ValidationHarness(FreqCaOptions)


def test_comfyui_validation_of_gates_file(files, freqca_dirs, validation):
    """ComfyUI's own prompt validation of FreqCa Options (whatever method it will serve): each bad case is
    one error, on gates_file; the old empty value, none and a listed file pass."""
    write_gates(freqca_dirs.models / "gates.json")
    write_gates(freqca_dirs.outside / "gates.json")
    (freqca_dirs.models / "corrupt.json").write_text("{")
    for value in ("", "none", "gates.json"):
        assert validation.validate(gates_file=value) == (True, []), value
    details = set()
    for value in ("/etc/passwd", "/nonexistent.json", str(freqca_dirs.outside / "gates.json"), "../outside/gates.json",
                  "missing.json"):
        ok, errors = validation.validate(gates_file=value)
        assert not ok and [(e["type"], e["extra_info"]["input_name"]) for e in errors] == [
            ("custom_validation_failed", "gates_file")]
        details.add(errors[0]["details"].split(" - ", 1)[1].replace(repr(value), "<name>"))
    assert details == {refusal(files, "/etc/passwd")}
    ok, errors = validation.validate(gates_file="corrupt.json")
    assert not ok and len(errors) == 1 and "gates_file: 'corrupt.json' is not valid JSON" in errors[0]["details"]


# ---------------------------------------------------------------------------------------- written files


def test_profile_round_trip_and_names(files, freqca_dirs):
    key = {"model": "../../etc/passwd", "steps": 28}
    path = files.write_profile(key, {"gates": [1, 0, 1]})
    assert path.parent == freqca_dirs.user / "freqca" / "profiles"
    assert len(path.stem) == 64 and set(path.stem) <= set("0123456789abcdef") and path.suffix == ".json"
    assert files.read_profile({"steps": 28, "model": "../../etc/passwd"}) == ({"gates": [1, 0, 1]},
                                                                              f"profile: read {path.name}")
    assert files.write_profile(key, {"gates": [1]}) == path  # the same key: replaced
    assert files.read_profile(key)[0] == {"gates": [1]}
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left
    data, message = files.read_profile({"model": "other"})
    assert data is None and "none stored" in message
    for bad in (float("nan"), {"x": object()}, "x" * LIMIT):
        with pytest.raises(ValueError, match="cannot write"):
            files.write_profile(key, bad)
    assert files.read_profile(key)[0] == {"gates": [1]}


@pytest.mark.parametrize("content, message", [(b'{"gates": [1, 0', "is not valid JSON"),
                                              (b" " * (LIMIT + 1), "larger than")])
def test_corrupt_profile_reported_not_fatal(files, freqca_dirs, content, message):
    path = files.write_profile("key", {"ok": True})
    path.write_bytes(content)
    data, text = files.read_profile("key")
    assert data is None and message in text and text.startswith(f"profile: {path.name}")


def test_profile_outside_the_folder_not_read(files, freqca_dirs):
    path = files.write_profile("key", {"ok": True})
    target = write_gates(freqca_dirs.outside / "elsewhere.json", {"ok": False})
    path.unlink()
    path.symlink_to(target)
    data, message = files.read_profile("key")
    assert data is None and "none stored" in message


def test_crash_while_writing_keeps_the_old_profile(files, freqca_dirs, monkeypatch):
    files.write_profile("key", {"version": 1})

    def crash(fd):
        raise OSError("disk gone")

    with monkeypatch.context() as patch, pytest.raises(OSError, match="disk gone"):
        patch.setattr(files.os, "fsync", crash)
        files.write_profile("key", {"version": 2, "pad": "x" * 100_000})
    folder = freqca_dirs.user / "freqca" / "profiles"
    assert files.read_profile("key")[0] == {"version": 1}
    assert len(list(folder.iterdir())) == 1  # the temporary file was removed


def payload(writer: int) -> dict:
    """A profile of a few hundred kB, different for every writer (a mixed file would fail to parse or compare)."""
    return {"writer": writer, "values": [writer] * 40_000}


def watch(files, folder: Path, writers_alive, payloads: list[dict]) -> int:
    """Read the profile ``key`` until no writer is alive; every read is nothing yet or one complete payload.
    Returns the number of complete reads."""
    complete = 0
    while writers_alive():
        data, message = files.read_json_at(folder, "key", "profile")
        if data is None:
            assert "none stored" in message, message  # never a corrupt or partial file
        else:
            assert data in payloads, str(data)[:200]
            complete += 1
        time.sleep(0.002)
    return complete


def test_concurrent_writer_threads(files, freqca_dirs):
    folder = freqca_dirs.user / "profiles"
    payloads = [payload(i) for i in range(3)]
    errors = []

    def write(data):
        try:
            for _ in range(15):
                files.atomic_write_json(folder, "key", data)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(data,)) for data in payloads]
    for thread in threads:
        thread.start()
    complete = watch(files, folder, lambda: any(t.is_alive() for t in threads), payloads)
    for thread in threads:
        thread.join()
    assert not errors
    assert files.read_json_at(folder, "key", "profile")[0] in payloads
    assert [p.name for p in folder.iterdir()] == [files.hashed_name("key")]
    print(f"{complete} complete reads during the writes")


WRITER = """
import sys, time
from pathlib import Path
sys.path[:0] = [{repo!r}, {comfy!r}]
from freqca_lab.comfy.env import load_pack
load_pack()
from comfyui_freqca.nodes.files import atomic_write_json
data = {{"writer": {writer}, "values": [{writer}] * 40_000}}
go = Path({go!r})
while not go.exists():
    time.sleep(0.01)
for _ in range(25):
    atomic_write_json(Path({folder!r}), "key", data)
"""


def test_concurrent_writer_processes(files, freqca_dirs, comfyui):
    """Two ComfyUI processes (or two prompts) writing the same profile at once."""
    folder = freqca_dirs.user / "profiles"
    go = freqca_dirs.user / "go"
    processes = [subprocess.Popen([sys.executable, "-c", WRITER.format(repo=str(REPO), comfy=str(comfyui), writer=i,
                                                                        go=str(go), folder=str(folder))],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                 for i in range(2)]
    try:
        time.sleep(0.5)
        go.touch()
        watch(files, folder, lambda: any(p.poll() is None for p in processes), [payload(0), payload(1)])
        for process in processes:
            out, _ = process.communicate(timeout=120)
            assert process.returncode == 0, out.decode()[-2000:]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert files.read_json_at(folder, "key", "profile")[0] in (payload(0), payload(1))
    assert [p.name for p in folder.iterdir()] == [files.hashed_name("key")]
