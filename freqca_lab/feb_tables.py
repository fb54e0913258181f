"""FEB-Cache tables derived from measurements (research side of ``freqca_core.methods.feb``).

- ``derive_table``: the frequency-guided table from calibration measurements (``febprobe``), with the speed
  levels' thresholds (``LEVEL_PRESETS``).
- ``save_tables`` / ``load_tables`` / ``pick_table``: several tables (per level and reference step count) in
  one JSON file (``testbed/weights/feb_table.json``).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch

from freqca_core.methods.feb import ATTN, SKIP, FULL, LEVELS, CacheTable, read_json
from freqca_core.validation import check_choice, check_float, check_int

TABLES_FORMAT = "freqca-feb-tables"


def save_tables(path: str | Path, tables: Mapping[str, Sequence[CacheTable]], meta: dict | None = None) -> None:
    """Write several tables: ``{level: [table for each reference step count]}`` plus ``meta``."""
    data = {"format": TABLES_FORMAT, "version": 1, "meta": meta or {},
            "tables": {level: {str(t.n_ref): t.to_dict() for t in ts} for level, ts in tables.items()}}
    Path(path).write_text(json.dumps(data, indent=1) + "\n")


def load_tables(path: str | Path) -> tuple[dict[str, dict[int, CacheTable]], dict]:
    """Read ``save_tables`` output -> ``({level: {n_ref: table}}, meta)``."""
    data = read_json(path)
    if not isinstance(data, Mapping) or data.get("format") != TABLES_FORMAT:
        raise ValueError(f"{path}: not a FEB table set (expected format {TABLES_FORMAT!r})")
    tables = data.get("tables")
    if not isinstance(tables, Mapping) or not tables:
        raise ValueError(f"{path}: 'tables' must be a non-empty object {{level: {{steps: table}}}}")
    out: dict[str, dict[int, CacheTable]] = {}
    for level, by_steps in tables.items():
        if not isinstance(by_steps, Mapping) or not by_steps:
            raise ValueError(f"{path}: tables[{level!r}] must be a non-empty object {{steps: table}}")
        out[level] = {}
        for key, entry in by_steps.items():
            table = CacheTable.from_dict(entry, f"{path}: tables[{level!r}][{key!r}]")
            out[level][table.n_ref] = table
    return out, dict(data.get("meta") or {})


def pick_table(tables: Mapping[str, Mapping[int, CacheTable]], level: str, n_steps: int) -> CacheTable:
    """The table of ``level`` whose reference step count is nearest to ``n_steps`` (ties: the larger)."""
    check_choice("level", level, tuple(tables))
    n_steps = check_int("n_steps", n_steps, 1)
    by_steps = tables[level]
    return by_steps[min(by_steps, key=lambda n: (abs(n - n_steps), -n))]


# ------------------------------------------------------------------------------------------ table rules

@dataclass(frozen=True)
class Level:
    """Thresholds of one speed level for ``derive_table`` (relative feature change accumulated since the
    component was last computed), the longest run of steps without a full step, and the full warm-up."""

    attn_threshold: float
    mlp_threshold: float
    max_run: int
    warmup: float  # fraction of the steps that run full at the start (at least step 0)


# Set on the testbed (febprobe, 28 steps): per-step relative change ~0.06-0.3 (mean ~0.11 attention kernels,
# ~0.09 MLP outputs), so quality / balanced / fast recompute about every 1-2 / 2-3 / 3-5 steps mid-run.
# Thresholds and max_run grow with the level and the warm-up shrinks, so tables only get cheaper.
LEVEL_PRESETS: dict[str, Level] = {
    "quality": Level(attn_threshold=0.12, mlp_threshold=0.12, max_run=3, warmup=0.08),
    "balanced": Level(attn_threshold=0.22, mlp_threshold=0.22, max_run=4, warmup=0.06),
    "fast": Level(attn_threshold=0.40, mlp_threshold=0.40, max_run=6, warmup=0.04),
}


def level_preset(level: str | Level) -> Level:
    if isinstance(level, Level):
        return level
    return LEVEL_PRESETS[check_choice("level", level, LEVELS)]


def _changes(name: str, values: Sequence[float] | torch.Tensor) -> list[float]:
    if isinstance(values, torch.Tensor):
        values = values.detach().double().flatten().cpu().tolist()
    out = []
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            v = 0.0  # step 0 has no previous step
        out.append(check_float(f"{name}[{i}]", v, 0.0, 1e6))
    return out


def derive_table(attn_change: Sequence[float] | torch.Tensor, mlp_change: Sequence[float] | torch.Tensor, *,
                 level: str | Level = "balanced", last_full: bool = True, meta: dict | None = None) -> CacheTable:
    """The frequency-guided cache table from per-step calibration measurements.

    ``attn_change[i]`` / ``mlp_change[i]``: relative change ``||F_i - F_{i-1}|| / ||F_{i-1}||`` of the
    attention-kernel / MLP outputs between steps ``i - 1`` and ``i`` (averaged over blocks and samples;
    index 0 ignored). ``febprobe`` measures it per DCT band over the image-token grid and combines the bands
    as ``sqrt(e_low * c_low^2 + (1 - e_low) * c_high^2)`` (``e_low``: the band's energy share), which is
    exactly the whole feature's relative change: a component is judged by the band where its energy is.
    Attention outputs are low-frequency dominated and drift slowly, so they cross their threshold less
    often than MLP outputs (high-frequency, fast) and are reused for longer.

    Rule (greedy, deterministic; ``Level`` of ``level`` gives the thresholds):
      * steps ``< max(1, round(warmup * n))`` are full, and the last step when ``last_full``;
      * otherwise accumulate ``A += attn_change[i]``, ``M += mlp_change[i]`` (drift since each component was
        last computed); if ``A > attn_threshold`` or the step would make ``max_run`` non-full steps in a row:
        ``"full"`` and ``A = M = 0``; elif ``M > mlp_threshold``: ``"attn"`` (MLP recomputed, ``M = 0``;
        attention stays stale); else ``"skip"``.
    A higher level only raises the thresholds, ``max_run`` and lowers the warm-up, so for the same inputs
    it never has more full steps (greedy segmentation is monotone in its threshold).
    """
    lv = level_preset(level)
    a, m = _changes("attn_change", attn_change), _changes("mlp_change", mlp_change)
    if len(a) != len(m):
        raise ValueError(f"attn_change has {len(a)} steps but mlp_change has {len(m)}")
    n = check_int("number of steps", len(a), 1, 100_000)
    warm = max(1, round(lv.warmup * n))
    actions, acc_a, acc_m, run = [], 0.0, 0.0, 0
    for i in range(n):
        if i < warm or (last_full and i == n - 1):
            actions.append(FULL)
            acc_a = acc_m = 0.0
            run = 0
            continue
        acc_a += a[i]
        acc_m += m[i]
        if acc_a > lv.attn_threshold or run + 1 > lv.max_run:
            actions.append(FULL)
            acc_a = acc_m = 0.0
            run = 0
        else:
            run += 1
            if acc_m > lv.mlp_threshold:
                actions.append(ATTN)
                acc_m = 0.0
            else:
                actions.append(SKIP)
    info = {"rule": "derive_table", "level": level if isinstance(level, str) else "custom",
            "thresholds": {"attn": lv.attn_threshold, "mlp": lv.mlp_threshold, "max_run": lv.max_run,
                           "warmup": lv.warmup}}
    return CacheTable(actions, last_full, {**info, **(meta or {})})
