"""How well could *any* choice made from the calibration images do? ``python3 -m freqca_lab.measure_oracle
[--testbed shapes|photos] [--steps 50] [--images 8] [--json PATH]``.

Reads ``measure_auto``'s JSON (``docs/auto_{testbed}_{steps}.json``: per budget 21 configurations, each with its
PSNR on the reported seeds) and runs every configuration closed loop on ``--images`` calibration seeds and
prompts (the first two are the ones ``auto`` records). The *oracle* with ``k`` images picks the configuration
with the best mean closed-loop PSNR on the first ``k``: it knows exactly what each configuration does to those
images, which no scoring of one recorded uncached run can know. Printed per budget and ``k`` in 2, 4 and
``--images``: the pick's PSNR on the reported seeds, against ``auto``'s, the held-out brute-force best and the
fixed default of that JSON, and the rank correlation of the configurations' PSNR on the calibration images with
their PSNR on the reported seeds.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from freqca_core import CacheConfig, CacheController
from freqca_core.calibration import CANDIDATES
from freqca_core.methods.frdiff import GateSchedule

from .bench import CALIB_SEED_BASE, CFG, SHIFT
from .measure_auto import spearman
from .metrics import fidelity
from .report import write_json
from .runner import generate
from .testbed.testbeds import add_testbed_argument, get_testbed

DOCS = Path(__file__).resolve().parent.parent / "docs"


def oracle_pick(rows: list[dict], images: int) -> dict:
    """The row with the best mean ``calibration_psnr_per_seed`` over its first ``images`` entries."""
    if not rows or any(len(r["calibration_psnr_per_seed"]) < images for r in rows):
        raise ValueError(f"every row needs at least {images} calibration PSNRs")
    return max(rows, key=lambda r: statistics.fmean(r["calibration_psnr_per_seed"][:images]))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--images", type=int, default=8, help="calibration seeds run closed loop (at least 2)")
    parser.add_argument("--json", type=str, default=None)
    add_testbed_argument(parser)
    args = parser.parse_args(argv)
    if args.images < 2:
        parser.error(f"--images must be at least 2, got {args.images}")
    torch.set_num_threads(1)
    bed = get_testbed(args.testbed)
    model, table = bed.load("cpu")
    n, base = args.steps, CacheConfig(final_full=1)
    source = DOCS / f"auto_{bed.name}_{n}.json"
    measured = json.loads(source.read_text())
    images = [CALIB_SEED_BASE + i for i in range(args.images)], bed.calib_prompts(args.images)

    def run(controller) -> torch.Tensor:
        return generate(model, images[1], images[0], n, CFG, controller, table=table, shift=SHIFT,
                        size=bed.size).images

    reference = run(None)
    candidates = {c.label: c for c in CANDIDATES}
    ks = sorted({2, 4, args.images} & set(range(2, args.images + 1)))
    result = {"testbed": bed.name, "steps": n, "images": args.images, "source": source.name, "budgets": []}
    for budget in measured["budgets"]:
        rows = []
        for row in budget["rows"]:
            controller = CacheController(candidates[row["candidate"]].build(base),
                                         GateSchedule.from_steps(row["full_steps"], n))
            rows.append({"candidate": row["candidate"], "placement": row["placement"],
                         "full_steps": row["full_steps"], "psnr": row["psnr"],
                         "calibration_psnr_per_seed": fidelity(run(controller), reference)["psnr"]})
        picks = {k: oracle_pick(rows, k) for k in ks}
        rho = spearman([statistics.fmean(r["calibration_psnr_per_seed"]) for r in rows], [r["psnr"] for r in rows])
        entry = {"budget": budget["budget"], "auto_db": budget["auto"]["psnr"],
                 "held_out_best_db": budget["best_held_out"]["psnr"], "default_db": budget["node_default"]["psnr"],
                 "oracle": {str(k): {"candidate": p["candidate"], "placement": p["placement"], "psnr": p["psnr"]}
                            for k, p in picks.items()},
                 "spearman_calibration_vs_reported": rho, "rows": rows}
        result["budgets"].append(entry)
        print(f"{bed.name} {entry['budget']}/{n} full: auto {entry['auto_db']:.2f}, held-out best "
              f"{entry['held_out_best_db']:.2f}, fixed default {entry['default_db']:.2f} dB; oracle "
              + ", ".join(f"{k} images {p['psnr']:.2f} ({p['candidate']}/{p['placement']})" for k, p in picks.items())
              + f"; rho over the configurations {rho:+.2f}", flush=True)
    if args.json:
        write_json(result, args.json)
    return result


if __name__ == "__main__":
    main()
