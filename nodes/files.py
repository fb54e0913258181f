"""Files the pack reads and writes, kept inside ComfyUI's own folders.

ComfyUI is often run with ``--listen``, so every prompt input is untrusted. A file named in a prompt is
a path relative to the ``freqca`` model folder (``models/freqca`` plus any ``freqca`` paths of
``extra_model_paths.yaml``), as ``folder_paths.get_filename_list("freqca")`` lists it; files the pack writes
(calibration profiles) go to ``<user directory>/freqca/profiles`` under a name hashed from their key.
Absolute paths, ``..`` and symlinks that lead out of the folder, missing files and non-files are all
refused with one message, which never tells whether the target exists. Reads are limited to
``MAX_JSON_BYTES`` (checked on the opened file before reading; at most limit + 1 bytes are read).
Parsing the contents stays in ``freqca_core`` (``GateSchedule.from_json``).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Mapping

import folder_paths

from ..freqca_core.methods.frdiff import GateSchedule

FOLDER = "freqca"  # the model folder: models/freqca
EXTENSIONS = frozenset({".json"})
NO_FILE = "none"  # the gates_file choice meaning "no file" ("" too: the value saved before it was a list)
MAX_JSON_BYTES = 1 << 20  # 1 MiB: gates and profiles are a few kB
PROFILES = ("freqca", "profiles")  # under the user directory

log = logging.getLogger("freqca")


def register_folder() -> list[Path]:
    """Register ``models/freqca`` (``.json`` files) with ``folder_paths`` if it is not yet, keeping ``freqca``
    paths the user configured; return the folder's paths, the default first."""
    default = os.path.join(folder_paths.models_dir, FOLDER)
    paths, extensions = folder_paths.folder_names_and_paths.get(FOLDER, ([], set()))
    if default not in paths or set(extensions) != EXTENSIONS:
        paths = [default] + [p for p in paths if p != default]
        folder_paths.folder_names_and_paths[FOLDER] = (paths, set(EXTENSIONS))
    return [Path(p) for p in paths]


def create_model_folder() -> None:
    """At ComfyUI's start: register the model folder and create ``models/freqca``, where users put files."""
    try:
        register_folder()[0].mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a read-only install: the folder can still be made by hand
        log.warning("FreqCa: cannot create the models/%s folder (%s)", FOLDER, exc)


def gates_file_options() -> list[str]:
    """The ``gates_file`` choices: ``none`` and the files of the ``freqca`` model folder."""
    register_folder()
    return [NO_FILE] + folder_paths.get_filename_list(FOLDER)


def resolve_in(name: object, roots: list[Path], what: str, where: str) -> Path:
    """The regular ``.json`` file ``name`` (relative to one of ``roots``), resolved, inside that root.

    ValueError ``"{what}: ..."`` otherwise, with the same message for every reason (outside, missing,
    not a file); ``where`` names the folder in it without the server's absolute path.
    """
    refused = ValueError(f"{what}: {name!r:.200} is not a .json file in {where}")
    if not isinstance(name, str) or not name.strip() or "\0" in name:
        raise refused
    relative = Path(name.strip())
    if relative.anchor or ".." in relative.parts or relative.suffix.lower() not in EXTENSIONS:
        raise refused
    for root in roots:
        try:
            root = root.resolve()
            path = (root / relative).resolve()
            if path.is_relative_to(root) and path.is_file():  # is_file only for paths inside the root
                return path
        except (OSError, RuntimeError):  # a symlink loop, a name too long: not a file of the folder
            continue
    raise refused


def read_json(path: Path, what: str, label: str, limit: int = MAX_JSON_BYTES) -> object:
    """The JSON value in the regular file ``path`` of at most ``limit`` bytes; ValueError ``"{what}: {label}
    ..."`` for a larger or unreadable file or invalid JSON. The size is checked before anything is read."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)  # non-blocking: a FIFO put there cannot hang the open
    except OSError as exc:
        raise ValueError(f"{what}: cannot open {label} ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{what}: {label} is not a regular file")
        too_big = ValueError(f"{what}: {label} is larger than the {limit} byte limit")
        if info.st_size > limit:
            raise too_big
        data = file.read(limit + 1)
    if len(data) > limit:  # grew since the check
        raise too_big
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"{what}: {label} is not valid JSON ({str(exc)[:200] or type(exc).__name__})") from None


def read_model_json(name: str, what: str) -> object:
    """The JSON value of file ``name`` of the ``freqca`` model folder (see ``resolve_in``, ``read_json``)."""
    path = resolve_in(name, register_folder(), what,
                      f"ComfyUI's models/{FOLDER} folder (put the file there and pick it from the list)")
    return read_json(path, what, repr(name))


def load_gates(name: object) -> GateSchedule | None:
    """The Auto-FR gates of ``gates_file`` ``name`` (None for ``""`` or ``none``); ValueError naming
    ``gates_file`` for anything but a valid gates file of the ``freqca`` model folder."""
    if isinstance(name, str) and name.strip() in ("", NO_FILE):
        return None
    return GateSchedule.from_json(read_model_json(name, "gates_file"), f"gates_file {name!r}")


# ------------------------------------------------------------------------------------------ written files


def profile_folder() -> Path:
    """Where calibration profiles are written: ``<ComfyUI user directory>/freqca/profiles``."""
    return Path(folder_paths.get_user_directory()).joinpath(*PROFILES)


def hashed_name(key: Mapping[str, object] | str) -> str:
    """The file name for ``key``: ``<sha256 of the key>.json`` (a mapping as canonical JSON); never the
    key's own text, so no prompt text reaches a path."""
    try:
        text = key if isinstance(key, str) else json.dumps(key, sort_keys=True, separators=(",", ":"),
                                                             allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"a file key must be a string or JSON-serialisable mapping ({exc})") from None
    return hashlib.sha256(text.encode("utf-8")).hexdigest() + ".json"


def atomic_write_json(folder: Path, key: Mapping[str, object] | str, data: object,
                      limit: int = MAX_JSON_BYTES) -> Path:
    """Write ``data`` as JSON to ``folder / hashed_name(key)`` atomically and return that path.

    The JSON goes to a temporary file in ``folder``, is flushed to disk and then renamed over the target
    (``os.replace``): a reader, a crash or a concurrent writer never sees a partial or mixed file, only a
    complete earlier or later one. ValueError for data that is not JSON or is larger than ``limit`` (it
    could not be read back).
    """
    try:
        payload = (json.dumps(data, indent=1, allow_nan=False) + "\n").encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cannot write {hashed_name(key)}: not JSON data ({exc})") from None
    if len(payload) > limit:
        raise ValueError(f"cannot write {hashed_name(key)}: {len(payload)} bytes, over the {limit} byte limit")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / hashed_name(key)
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{target.stem[:16]}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return target


def read_json_at(folder: Path, key: Mapping[str, object] | str, what: str) -> tuple[object | None, str]:
    """The JSON value stored for ``key`` in ``folder`` by ``atomic_write_json``, and a message; ``(None,
    reason)`` when there is none or it is unreadable, corrupt or too large (the caller recalibrates)."""
    name = hashed_name(key)
    try:
        path = resolve_in(name, [folder], what, str(folder))
    except ValueError:
        return None, f"{what}: none stored for this key ({name})"
    try:
        return read_json(path, what, name), f"{what}: read {name}"
    except ValueError as exc:
        return None, f"{exc}; ignored"


def write_profile(key: Mapping[str, object] | str, data: object) -> Path:
    """Store a calibration profile for ``key`` in ``profile_folder()`` (see ``atomic_write_json``)."""
    return atomic_write_json(profile_folder(), key, data)


def read_profile(key: Mapping[str, object] | str) -> tuple[object | None, str]:
    """The calibration profile stored for ``key`` and a message, or ``(None, reason)`` (see ``read_json_at``)."""
    return read_json_at(profile_folder(), key, "profile")
