"""The example workflows (``workflows/*.json``, UI format) against the node definitions of real ComfyUI.

Node definitions come from ComfyUI's ``nodes`` module plus only the ``comfy_extras`` modules that define a
node type a workflow uses (found by name in their source, then imported), this pack's nodes,
and the e2e test fixture nodes (for the testbed workflow the browser test opens). Skipped without ComfyUI.
"""
from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import json
import re
import sys
from pathlib import Path

import pytest

from freqca_lab.comfy.env import REPO

WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
FIXTURE_NODES = REPO / "tests" / "e2e" / "fixture_nodes"
FIXTURE_WORKFLOWS = sorted((FIXTURE_NODES / "example_workflows").glob("*.json"))
ALL_WORKFLOWS = WORKFLOWS + FIXTURE_WORKFLOWS
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}  # virtual nodes of the front-end
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# values workflows saved before an input became a list still hold, which the node accepts
LEGACY_VALUES = {("FreqCaOptions", "gates_file"): {""}}  # "" = none
FILE_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".gguf", ".png", ".jpg", ".jpeg", ".webp")


def _ids(paths):
    return [p.name for p in paths]


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _node_info(cls) -> dict:
    """What /object_info says about a node class (V3 classes have GET_NODE_INFO_V1)."""
    if hasattr(cls, "GET_NODE_INFO_V1"):
        return cls.GET_NODE_INFO_V1()
    inputs = cls.INPUT_TYPES()
    order = {k: list(v) for k, v in inputs.items() if isinstance(v, dict)}
    return {"input": inputs, "input_order": order, "output": list(cls.RETURN_TYPES),
            "output_name": list(getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES)}


def _ensure_comfy_utils_package(comfyui: Path) -> None:
    """``server`` (imported by some comfy_extras) needs ComfyUI's ``utils`` package, not comfy/utils.py.

    Some ComfyUI import puts ``comfy/`` itself on ``sys.path``, where ``utils`` would resolve to
    ``comfy/utils.py``; ``main.py`` imports the package before that happens, so do the same here.
    """
    module = sys.modules.get("utils")
    if module is not None and hasattr(module, "__path__"):
        return
    sys.modules.pop("utils", None)
    sys.path.insert(0, str(comfyui))
    try:
        importlib.import_module("utils")
    finally:
        sys.path.remove(str(comfyui))


def _extras_mappings(module) -> dict:
    if getattr(module, "NODE_CLASS_MAPPINGS", None):
        return dict(module.NODE_CLASS_MAPPINGS)
    entry = getattr(module, "comfy_entrypoint", None)
    if entry is None:
        return {}
    extension = entry()
    if asyncio.iscoroutine(extension):
        extension = asyncio.run(extension)
    node_list = asyncio.run(extension.get_node_list())
    return {cls.GET_SCHEMA().node_id: cls for cls in node_list}


@pytest.fixture(scope="module")
def node_defs(comfyui, pack):
    """node type -> /object_info-style dict, for every node type used by the workflows."""
    comfy_nodes = sys.modules.get("nodes")
    if comfy_nodes is None or Path(getattr(comfy_nodes, "__file__", "")).resolve() != (comfyui / "nodes.py"):
        spec = importlib.util.spec_from_file_location("nodes", comfyui / "nodes.py")
        comfy_nodes = importlib.util.module_from_spec(spec)
        sys.modules["nodes"] = comfy_nodes
        spec.loader.exec_module(comfy_nodes)
    classes = dict(comfy_nodes.NODE_CLASS_MAPPINGS)
    from comfyui_freqca.nodes.freqca_node import FreqCaAccelerate, FreqCaOptions

    classes.update(FreqCaAccelerate=FreqCaAccelerate, FreqCaOptions=FreqCaOptions)
    spec = importlib.util.spec_from_file_location("freqca_e2e_fixture_nodes", FIXTURE_NODES / "__init__.py")
    fixture = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixture)
    classes.update(fixture.NODE_CLASS_MAPPINGS)

    wanted = {n["type"] for path in ALL_WORKFLOWS for n in _load(path)["nodes"]} - FRONTEND_ONLY - set(classes)
    sources = {p.stem: p.read_text(encoding="utf-8") for p in sorted((comfyui / "comfy_extras").glob("nodes_*.py"))}
    for node_type in sorted(wanted):
        if node_type in classes:
            continue
        pattern = re.compile(rf'node_id\s*=\s*"{re.escape(node_type)}"|"{re.escape(node_type)}"\s*:\s*\w')
        for stem, text in sources.items():
            if pattern.search(text):
                _ensure_comfy_utils_package(comfyui)
                classes.update(_extras_mappings(importlib.import_module(f"comfy_extras.{stem}")))
                if node_type in classes:
                    break
    return {name: _node_info(cls) for name, cls in classes.items() if name in wanted | {"FreqCaAccelerate"}
            or name in {n["type"] for path in ALL_WORKFLOWS for n in _load(path)["nodes"]}}


def _inputs(info: dict, sections=("required", "optional")) -> list[tuple[str, object, dict]]:
    """(name, type, options) of every input in the front-end's order (required, then optional)."""
    out = []
    for section in sections:
        specs = info["input"].get(section, {}) or {}
        order = (info.get("input_order") or {}).get(section) or list(specs)
        for name in order:
            spec = specs[name]
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            out.append((name, spec[0], options))
    return out


def _is_widget(kind, options: dict) -> bool:
    if options.get("forceInput") or options.get("rawLink"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _combo_options(kind, options: dict) -> list | None:
    if isinstance(kind, list):
        return kind
    if kind == "COMBO":
        return options.get("options")
    return None


def _widget_slots(info: dict) -> list[tuple[str, object, dict]]:
    """The widgets a node shows, in order, as saved in ``widgets_values`` (incl. seed control, upload)."""
    slots = []
    for name, kind, options in _inputs(info):
        if not _is_widget(kind, options):
            continue
        slots.append((name, kind, options))
        if options.get("control_after_generate"):
            slots.append((f"{name}:control", ["fixed", "increment", "decrement", "randomize"], {}))
        if options.get("image_upload") or options.get("video_upload") or options.get("audio_upload"):
            slots.append((f"{name}:upload", "UPLOAD", {}))
    return slots


def _check_value(where: str, kind, options: dict, value) -> list[str]:
    problems = []
    choices = _combo_options(kind, options)
    if choices is not None:
        file_like = isinstance(value, str) and value.lower().endswith(FILE_SUFFIXES)
        if choices and not file_like and value not in choices:
            problems.append(f"{where}: {value!r} not one of {choices}")
    elif kind == "BOOLEAN":
        if not isinstance(value, bool):
            problems.append(f"{where}: {value!r} is not a boolean")
    elif kind in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind == "INT" and value != int(value)):
            problems.append(f"{where}: {value!r} is not {kind}")
        else:
            if "min" in options and value < options["min"]:
                problems.append(f"{where}: {value} < min {options['min']}")
            if "max" in options and value > options["max"]:
                problems.append(f"{where}: {value} > max {options['max']}")
    elif kind == "STRING" and not isinstance(value, str):
        problems.append(f"{where}: {value!r} is not a string")
    return problems


@pytest.mark.parametrize("path", ALL_WORKFLOWS, ids=_ids(ALL_WORKFLOWS))
def test_workflow_json_is_valid_ui_format(path):
    data = _load(path)
    assert data.get("version") == 0.4 and isinstance(data["nodes"], list) and isinstance(data["links"], list)
    node_ids = [n["id"] for n in data["nodes"]]
    link_ids = [link[0] for link in data["links"]]
    assert len(set(node_ids)) == len(node_ids) and len(set(link_ids)) == len(link_ids)
    assert data["last_node_id"] >= max(node_ids) and data["last_link_id"] >= max(link_ids, default=0)
    for node in data["nodes"]:
        for key in ("id", "type", "pos", "size", "mode", "inputs", "outputs", "widgets_values"):
            assert key in node or key in ("inputs", "outputs"), f"{path.name} node {node.get('id')}: no {key}"
        assert len(node["pos"]) == 2 and len(node["size"]) == 2
    for link in data["links"]:
        assert len(link) == 6 and all(isinstance(x, int) for x in link[:5]) and isinstance(link[5], str)


@pytest.mark.parametrize("path", ALL_WORKFLOWS, ids=_ids(ALL_WORKFLOWS))
def test_workflow_has_freqca_node_and_explaining_note(path):
    data = _load(path)
    types = [n["type"] for n in data["nodes"]]
    assert "FreqCaAccelerate" in types
    notes = [n for n in data["nodes"] if n["type"] in ("Note", "MarkdownNote")]
    assert notes and any("FreqCa" in (n["widgets_values"] or [""])[0] for n in notes), "needs a Note explaining it"
    for node in data["nodes"]:  # every FreqCa node feeds something
        if node["type"] == "FreqCaAccelerate":
            assert node["inputs"][0]["link"] is not None and node["outputs"][0]["links"]


@pytest.mark.parametrize("path", ALL_WORKFLOWS, ids=_ids(ALL_WORKFLOWS))
def test_workflow_nodes_exist_in_comfyui(path, node_defs):
    missing = sorted({n["type"] for n in _load(path)["nodes"]} - FRONTEND_ONLY - set(node_defs))
    assert not missing, f"node types not in ComfyUI: {missing}"


@pytest.mark.parametrize("path", ALL_WORKFLOWS, ids=_ids(ALL_WORKFLOWS))
def test_workflow_links_connect_matching_types(path, node_defs):
    data = _load(path)
    nodes = {n["id"]: n for n in data["nodes"]}
    problems = []
    for link_id, src, src_slot, dst, dst_slot, kind in data["links"]:
        a, b = nodes[src], nodes[dst]
        out_types = node_defs[a["type"]]["output"]
        if out_types[src_slot] not in (kind, "*"):
            problems.append(f"link {link_id}: {a['type']} output {src_slot} is {out_types[src_slot]}, link says {kind}")
        if link_id not in (a["outputs"][src_slot].get("links") or []):
            problems.append(f"link {link_id} not listed on {a['type']} output {src_slot}")
        target = b["inputs"][dst_slot]
        if target.get("link") != link_id:
            problems.append(f"link {link_id}: {b['type']} input {target['name']} says link {target.get('link')}")
        specs = {name: (k, opts) for name, k, opts in _inputs(node_defs[b["type"]])}
        if target["name"] not in specs:
            problems.append(f"link {link_id}: {b['type']} has no input {target['name']!r}")
            continue
        want = specs[target["name"]][0]
        want = "COMBO" if isinstance(want, list) else want
        if want not in (kind, "*") and kind != "*":
            problems.append(f"link {link_id}: {b['type']}.{target['name']} wants {want}, gets {kind}")
    for node in data["nodes"]:  # required sockets (non-widget inputs) are connected
        if node["type"] in FRONTEND_ONLY:
            continue
        linked = {i["name"] for i in node.get("inputs", []) if i.get("link") is not None}
        for name, kind, options in _inputs(node_defs[node["type"]], sections=("required",)):
            if not _is_widget(kind, options) and name not in linked:
                problems.append(f"node {node['id']} {node['type']}: required input {name!r} not connected")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", ALL_WORKFLOWS, ids=_ids(ALL_WORKFLOWS))
def test_workflow_widget_values_fit_the_nodes(path, node_defs):
    problems = []
    for node in _load(path)["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        slots = _widget_slots(node_defs[node["type"]])
        values = node.get("widgets_values") or []
        if len(values) != len(slots):
            problems.append(f"node {node['id']} {node['type']}: {len(values)} widget values for "
                            f"{[s[0] for s in slots]}")
            continue
        for (name, kind, options), value in zip(slots, values):
            if value in LEGACY_VALUES.get((node["type"], name), ()):
                continue
            problems += _check_value(f"node {node['id']} {node['type']}.{name}", kind, options, value)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", ALL_WORKFLOWS, ids=_ids(ALL_WORKFLOWS))
def test_freqca_widget_values_in_schema_range(path, pack):
    """The FreqCa nodes' values against their own V3 schema (and their validate_inputs)."""
    from comfy_api.latest import io

    from comfyui_freqca.nodes.freqca_node import FreqCaAccelerate, FreqCaOptions

    for node in _load(path)["nodes"]:
        node_class = {"FreqCaAccelerate": FreqCaAccelerate, "FreqCaOptions": FreqCaOptions}.get(node["type"])
        if node_class is None:
            continue
        widgets = [i for i in node_class.GET_SCHEMA().inputs if isinstance(i, io.WidgetInput)]
        values = dict(zip([w.id for w in widgets], node["widgets_values"]))
        assert len(values) == len(widgets) == len(node["widgets_values"])
        for w in widgets:
            value = values[w.id]
            if isinstance(w, io.Combo.Input):
                assert value in w.options or value in LEGACY_VALUES.get((node["type"], w.id), ()), (w.id, value)
            elif isinstance(w, io.Boolean.Input):
                assert isinstance(value, bool), (w.id, value)
            elif isinstance(w, io.String.Input):
                assert value == "", (w.id, value)  # a path: the examples ship none
            else:
                assert w.min <= value <= w.max, (w.id, value, w.min, w.max)
                if isinstance(w, io.Int.Input):
                    assert value == int(value), (w.id, value)
        accepted = inspect.signature(node_class.validate_inputs).parameters
        named = {k: v for k, v in values.items() if k in accepted}
        assert node_class.validate_inputs(**named) is True
