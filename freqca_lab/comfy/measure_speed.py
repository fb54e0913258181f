"""Measure FreqCa Accelerate on a Flux-shaped random model in real ComfyUI (run by hand, not by pytest).

    python3 -m freqca_lab.comfy.measure_speed [--hidden 384] [--double 2] [--single 6] [--latent 32] [--repeats 3]

For 28 and 50 euler steps and a few intervals: fraction of block executions, wall-clock speedup against the
uncached model (median of alternating repeats in this one process), and that speedup divided by the ideal
``steps / full_steps``. Random weights: timing only, fidelity is not meaningful here.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path


from freqca_lab.comfy.env import find_comfyui, load_pack
from freqca_lab.comfy.harness import (apply_node, build_flux, count_block_calls, flux_conditioning, import_comfyui,
                                     sample)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--double", type=int, default=2)
    parser.add_argument("--single", type=int, default=6)
    parser.add_argument("--latent", type=int, default=32, help="latent side (tokens = (latent/2)^2)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--intervals", type=int, nargs="+", default=[3, 6, 9])
    args = parser.parse_args()
    path = find_comfyui()
    if path is None:
        sys.exit("ComfyUI not found: set COMFYUI_PATH")
    import_comfyui(path)
    load_pack()
    import torch
    head_dim = args.hidden // args.heads
    axes = [head_dim - 2 * (head_dim * 3 // 8), head_dim * 3 // 8, head_dim * 3 // 8]
    model = build_flux(seed=0, hidden_size=args.hidden, num_heads=args.heads, depth=args.double,
                       depth_single_blocks=args.single, axes_dim=axes, context_in_dim=64, vec_in_dim=64)
    conds = flux_conditioning(seed=1, width=64, tokens=16)
    shape = (1, 16, args.latent, args.latent)
    n_blocks = args.double + args.single
    print(f"Flux-shaped random model: hidden {args.hidden}, {args.double} double + {args.single} single blocks, "
          f"{(args.latent // 2) ** 2} image tokens, torch threads {torch.get_num_threads()}")
    print("| steps | interval | full steps | block executions | wall speedup | ideal | speedup / ideal |")
    print("|---|---|---|---|---|---|---|")
    for steps in (28, 50):
        variants = {0: model}
        for interval in args.intervals:
            variants[interval] = apply_node(model, method="freqca", interval=interval, warmup_steps=3,
                                            final_full_steps=0)
        sample(model, *conds, steps=2, shape=shape)  # warm-up
        times = {k: [] for k in variants}
        calls = {}
        for _ in range(args.repeats):
            for key, variant in variants.items():
                with count_block_calls(model) as counter:
                    start = time.perf_counter()
                    sample(variant, *conds, steps=steps, shape=shape)
                    times[key].append(time.perf_counter() - start)
                calls[key] = counter.total
        base = statistics.median(times[0])
        for interval in args.intervals:
            full = calls[interval] // n_blocks
            speedup = base / statistics.median(times[interval])
            ideal = steps / full
            print(f"| {steps} | {interval} | {full} | {calls[interval]}/{calls[0]} ({calls[interval] / calls[0]:.1%}) "
                  f"| {speedup:.2f}x | {ideal:.2f}x | {speedup / ideal:.2f} |")


if __name__ == "__main__":
    main()
