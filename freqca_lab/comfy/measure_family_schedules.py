"""Fixed vs adaptive schedule on every supported family in real ComfyUI (run by hand, not by pytest).

    python3 -m freqca_lab.comfy.measure_family_schedules [--steps 28] [--method freqca] [--families Flux SD3 ...]

The random-weight models of ``measure_families.py`` are sampled with euler through the node, on the fixed
schedule (warm-up 3, intervals 2, 3, 4, 6, 9) and on the adaptive one (warm-up 3, max interval 12, a
tolerance grid), and compared with the uncached output by relative L1. Printed per family: each curve as
``full steps: rel L1`` points, and for each adaptive point the fixed curve's error at the same full-step
count (linear interpolation between fixed points) with the ratio adaptive / fixed (< 1: adaptive better).
Random weights: the blocks change the output only a little, so the errors are small and say how well each
schedule tracks this model's features, not picture quality.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


from freqca_lab.comfy.measure_families import families, start_comfyui
from freqca_lab.comfy import harness as H

INTERVALS = (2, 3, 4, 6, 9)
TOLERANCES = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32)


def interpolate(points: list[tuple[int, float]], full: int) -> float | None:
    """The fixed curve's error at ``full`` full steps (None outside its range)."""
    points = sorted(points)
    for (f0, e0), (f1, e1) in zip(points, points[1:]):
        if f0 <= full <= f1:
            return e0 if f1 == f0 else e0 + (e1 - e0) * (full - f0) / (f1 - f0)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--method", default="freqca")
    parser.add_argument("--families", nargs="+", default=None)
    args = parser.parse_args()
    start_comfyui()
    import torch
    torch.set_num_threads(1)
    table = families()
    base = dict(method=args.method, warmup_steps=3, final_full_steps=0)
    print(f"{args.steps} euler steps, method {args.method}; relative L1 vs uncached at each full-step count")
    for name in args.families or list(table):
        build, conditioning, shape = table[name]
        model, conds = build(), conditioning()
        reference = H.sample(model, *conds, steps=args.steps, shape=shape)

        def point(**inputs) -> tuple[int, float]:
            fast = H.apply_node(model, **base, **inputs)
            with H.count_block_calls(model) as calls:
                out = H.sample(fast, *conds, steps=args.steps, shape=shape)
            return calls.total, H.rel_l1(out, reference)

        with H.count_block_calls(model) as calls:
            H.sample(model, *conds, steps=1, shape=shape)
        per_step = calls.total
        fixed = [(n_blocks // per_step, err) for n_blocks, err in (point(interval=n) for n in INTERVALS)]
        adaptive = [(n_blocks // per_step, err) for n_blocks, err in
                    (point(interval=12, schedule="adaptive", tolerance=t) for t in TOLERANCES)]
        print(f"\n{name}: fixed " + ", ".join(f"{f}: {e:.4f}" for f, e in fixed))
        print(f"{name}: adaptive " + ", ".join(f"{f}: {e:.4f}" for f, e in adaptive))
        ratios = [(f, e, interpolate(fixed, f)) for f, e in adaptive]
        print(f"{name}: adaptive / fixed at equal full steps " + ", ".join(
            f"{f}: {e / ref:.2f}" for f, e, ref in ratios if ref))


if __name__ == "__main__":
    main()
