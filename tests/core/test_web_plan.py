"""The front-end's planned timeline (web/freqca.js ``planOf`` + ``fitted``) matches the fixed schedule the node
runs (``FixedSchedule`` with ``fit_short_runs``), short runs included. Runs the JS with node; skipped without."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from freqca_core import FixedSchedule, StepLocator

JS = Path(__file__).resolve().parents[2] / "web" / "freqca.js"
CASES = [(w, i, f, n) for w in (0, 1, 3) for i in (1, 2, 3, 6) for f in (0, 2) for n in (1, 3, 4, 5, 7, 8, 12, 20, 28)]


def python_timeline(warmup: int, interval: int, final: int, n: int) -> str:
    run = FixedSchedule(warmup, interval, final, fit_short_runs=True).start_run(
        StepLocator([1.0 - k / n for k in range(n + 1)]))
    return "".join("F" if run.is_full(k) else "c" for k in range(n))


@pytest.mark.skipif(shutil.which("node") is None, reason="node (JavaScript) is not installed")
def test_planned_timeline_matches_the_schedule():
    source = JS.read_text()
    functions = [re.search(pattern, source, re.S).group(0) for pattern in
                 (r"const MIN_CACHED_STEPS.*?\n}\n", r"function planOf.*?\n}\n")]
    script = "\n".join(functions) + f"""
const out = {json.dumps(CASES)}.map(([w, i, f, n]) => {{
  const s = fitted({{method: "freqca", schedule: "fixed", interval: i, warmup_steps: w, final_full_steps: f,
                     start_percent: 0, end_percent: 1}}, n);
  let t = ""; for (let k = 0; k < n; k++) t += planOf(k, n, s); return t; }});
console.log(JSON.stringify(out));"""
    result = subprocess.run(["node", "-e", script], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(result.stdout) == [python_timeline(*case) for case in CASES]


@pytest.mark.skipif(shutil.which("node") is None, reason="node (JavaScript) is not installed")
def test_widget_values_of_the_16_widget_node_move_to_the_six_widgets():
    source = JS.read_text()
    functions = re.search(r"const LEGACY_LENGTH.*?\nfunction migrateLegacyValues.*?\n}\n", source, re.S).group(0)
    legacy = ["taylor", 4, 2, 1, 0.1, 0.71, 0.2, 0.8, False, "fixed", 0.1, "balanced", 0.965, False, "", 2]
    script = functions + f"""
const names = ["method", "interval", "warmup_steps", "final_full_steps", "start_percent", "end_percent"];
const make = () => ({{widgets: names.map((name) => ({{name, value: "default"}}))}});
const old = make(), current = make();
migrateLegacyValues(old, {json.dumps(legacy)});
migrateLegacyValues(current, ["reuse", 3, 1, 0, 0, 1]);
console.log(JSON.stringify([old.widgets.map((w) => w.value), current.widgets.map((w) => w.value)]));"""
    result = subprocess.run(["node", "-e", script], capture_output=True, text=True,
                            timeout=60, check=True)
    migrated, untouched = json.loads(result.stdout)
    assert migrated == ["taylor", 4, 2, 1, 0.2, 0.8]
    assert untouched == ["default"] * 6  # values saved by the six-widget node are the front-end's to set
