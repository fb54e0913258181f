"""Full steps needed for a PSNR target, fixed vs adaptive schedule, on the trained testbed (issue 9).

    python3 -m freqca_lab.measure_schedules [--steps 50] [--seeds 4] [--targets 30 35] [--testbed shapes|photos]

For each configuration family (FreqCa and reuse on the fixed schedule over intervals 2..12, on the adaptive
schedule over a tolerance grid, and the output-space adaptive baseline over a threshold grid) every setting
runs on the calibration seeds/prompts; for each PSNR target the setting with the fewest full steps that
reaches it there is chosen and then run on the reported seeds/prompts, which are never used for choosing.
Prints one markdown table: chosen setting, its full steps and PSNR on the reported seeds.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from freqca_core import CacheConfig
from freqca_lab.baselines import AdaptiveOutputCache
from freqca_lab.bench import ADAPTIVE_MAX_GAP, CALIB_SEED_BASE, CFG, REPORT_SEED_BASE, SHIFT, WARMUP
from freqca_lab.metrics import fidelity
from freqca_lab.runner import generate
from freqca_lab.testbed.testbeds import add_testbed_argument, get_testbed

TOLERANCES = [0.02 * 1.4 ** k for k in range(12)]
THRESHOLDS = [0.01 * 1.5 ** k for k in range(12)]


def families() -> dict[str, list[tuple[str, Callable[[], Any]]]]:
    """Each family's settings: (label, factory of a fresh cache)."""
    def ctrl(config: CacheConfig) -> Callable[[], Any]:
        return config.new_controller

    out: dict[str, list[tuple[str, Callable[[], Any]]]] = {}
    for name in ("freqca", "reuse"):
        out[f"{name}, fixed"] = [(f"N={n}", ctrl(CacheConfig(method=name, warmup=WARMUP, interval=n)))
                                 for n in range(2, 13)]
        out[f"{name}, adaptive"] = [(f"tol={t:.3g}", ctrl(CacheConfig(method=name, schedule="adaptive", tolerance=t,
                                                                      warmup=WARMUP, interval=ADAPTIVE_MAX_GAP)))
                                    for t in TOLERANCES]
    out["adaptive output baseline"] = [(f"thr={t:.3g}", lambda t=t: AdaptiveOutputCache(t, WARMUP))
                                       for t in THRESHOLDS]
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--targets", type=float, nargs="+", default=[30.0, 35.0])
    add_testbed_argument(p)
    args = p.parse_args()
    torch.set_num_threads(1)
    bed = get_testbed(args.testbed)
    model, table = bed.load("cpu")
    sets = {"calib": (bed.calib_prompts(args.seeds), [CALIB_SEED_BASE + i for i in range(args.seeds)]),
            "report": (bed.report_prompts(args.seeds), [REPORT_SEED_BASE + i for i in range(args.seeds)])}

    def run(which: str, cache: Any) -> tuple[int, float]:
        prompts, seeds = sets[which]
        g = generate(model, prompts, seeds, args.steps, CFG, cache, table=table, shift=SHIFT, size=bed.size)
        psnr = fidelity(g.images, refs[which])["psnr"]
        return g.full_steps, sum(psnr) / len(psnr)

    refs = {k: generate(model, p, s, args.steps, CFG, None, table=table, shift=SHIFT, size=bed.size).images
            for k, (p, s) in sets.items()}
    print(f"{args.steps} steps, {args.seeds} seeds; chosen on the calibration seeds, reported on held-out ones\n")
    print("| configuration | target | chosen setting | full steps (calibration) | full steps | PSNR dB |")
    print("|---|---:|---|---:|---:|---:|")
    for family, settings in families().items():
        curve = [(label, make, *run("calib", make())) for label, make in settings]
        for target in args.targets:
            ok = [c for c in curve if c[3] >= target]
            if not ok:
                print(f"| {family} | {target:g} | none reaches it | – | – | – |", flush=True)
                continue
            label, make, calib_full, _ = min(ok, key=lambda c: (c[2], -c[3]))
            full, psnr = run("report", make())
            print(f"| {family} | {target:g} | {label} | {calib_full} | {full} | {psnr:.1f} |", flush=True)


if __name__ == "__main__":
    main()
