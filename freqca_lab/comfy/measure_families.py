"""Measure FreqCa Accelerate on every supported DiT family in real ComfyUI (run by hand, not by pytest).

    python3 -m freqca_lab.comfy.measure_families [--steps 28] [--repeats 3] [--threads 1] [--families wan sd3 ...]

For each family, a CPU-sized random-weight model built with ComfyUI's own classes (widths ~256-384, 4-8 blocks,
256-320 image tokens) is sampled with euler for ``--steps`` steps, uncached and through the node with its
defaults (freqca, warm-up 3, interval 6). Reported: transformer-block executions of both runs, the ideal
speedup ``steps / full steps``, the wall-clock speedup (median uncached time / median cached time over
alternating repeats in this one process), that speedup divided by the ideal, and the same ratio of this
process's CPU time (``time.process_time``; steadier than wall time when other jobs share the CPU). Random
weights: timing only; the relative L1 column (cached vs uncached output) is for orientation, not quality.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path


from freqca_lab.comfy.env import find_comfyui, load_pack
from freqca_lab.comfy import harness as H

IMAGE = (1, 16, 32, 32)  # 16 x 16 = 256 image tokens
VIDEO = (1, 16, 5, 16, 16)  # 5 frames of 8 x 8 = 320 tokens


def families() -> dict:
    """name -> (builder, conditioning, latent shape); built lazily (ComfyUI must be imported first)."""
    text = lambda **kw: H.text_conditioning(seed=1, tokens=16, **kw)  # noqa: E731
    return {
        "Flux": (lambda: H.build_flux(seed=0, hidden=256, heads=4, depth=2, depth_single=6),
                 lambda: H.flux_conditioning(seed=1, tokens=16), IMAGE),
        "Chroma": (lambda: H.build_chroma(seed=0, hidden=256, heads=4, depth=2, depth_single=6),
                   lambda: H.flux_conditioning(seed=1, tokens=16, guidance=None), IMAGE),
        "Qwen-Image": (lambda: H.build_qwen_image(seed=0, heads=4, head_dim=64, layers=8),
                       lambda: text(), (1, 16, 1, 32, 32)),
        "Wan 2.1": (lambda: H.build_wan(seed=0, dim=256, heads=4, layers=8), lambda: text(), VIDEO),
        "HunyuanVideo": (lambda: H.build_hunyuan_video(seed=0, hidden=256, heads=4, depth=2, depth_single=6),
                         lambda: text(pooled_width=32), VIDEO),
        "SD3": (lambda: H.build_sd3(seed=0, depth=6), lambda: text(pooled_width=32), IMAGE),
        "Lumina 2": (lambda: H.build_lumina2(seed=0, dim=256, heads=4, layers=8),
                     lambda: H.lumina2_conditioning(seed=1, tokens=16), IMAGE),
        "HiDream": (lambda: H.build_hidream(seed=0, heads=4, head_dim=64, double=2, single=6),
                    lambda: H.hidream_conditioning(seed=1, tokens=16, llama_layers=8), IMAGE),
    }


def start_comfyui() -> None:
    """Import the ComfyUI tree ``find_comfyui`` finds and the pack, or exit with the reason."""
    path = find_comfyui()
    if path is None:
        sys.exit("ComfyUI not found: set COMFYUI_PATH")
    H.import_comfyui(path)
    load_pack()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is steadiest on a shared CPU; 0 keeps torch's default)")
    parser.add_argument("--families", nargs="+", default=None, help="subset of: " + ", ".join(
        ["Flux", "Chroma", "Qwen-Image", "Wan 2.1", "HunyuanVideo", "SD3", "Lumina 2", "HiDream"]))
    args = parser.parse_args()
    start_comfyui()
    import torch
    from comfyui_freqca.nodes.freqca_node import DEFAULTS

    if args.threads:
        torch.set_num_threads(args.threads)
    table = families()
    chosen = args.families or list(table)
    print(f"{args.steps} euler steps, node defaults ({DEFAULTS.method}, warm-up {DEFAULTS.warmup}, interval "
          f"{DEFAULTS.interval}, final full steps {DEFAULTS.final_full}), median of {args.repeats} alternating repeats, torch threads "
          f"{torch.get_num_threads()}")
    print("| family | tokens | blocks/call | block executions cached / uncached | full steps | ideal | "
          "uncached s | cached s | wall speedup | speedup / ideal | CPU-time speedup | rel. L1 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in chosen:
        build, conditioning, shape = table[name]
        model, conds = build(), conditioning()
        fast = H.apply_node(model)  # the node at its defaults
        variants = {"uncached": model, "cached": fast}
        for variant in variants.values():  # warm-up: first loads, allocator
            H.sample(variant, *conds, steps=2, shape=shape)
        times = {key: [] for key in variants}
        cpu = {key: [] for key in variants}
        calls, outputs = {}, {}
        for _ in range(args.repeats):
            for key, variant in variants.items():
                with H.count_block_calls(model) as counter:
                    start, start_cpu = time.perf_counter(), time.process_time()
                    outputs[key] = H.sample(variant, *conds, steps=args.steps, shape=shape)
                    times[key].append(time.perf_counter() - start)
                    cpu[key].append(time.process_time() - start_cpu)
                calls[key] = counter.total
        per_call = calls["uncached"] // args.steps
        full = calls["cached"] // per_call
        base, cached = statistics.median(times["uncached"]), statistics.median(times["cached"])
        ideal, speedup = args.steps / full, base / cached
        cpu_speedup = statistics.median(cpu["uncached"]) / statistics.median(cpu["cached"])
        tokens = math.prod(shape[2:-2]) * ((shape[-2] + 1) // 2) * ((shape[-1] + 1) // 2)  # 2 x 2 patches
        print(f"| {name} | {tokens} | {per_call} | {calls['cached']} / {calls['uncached']} "
              f"({calls['cached'] / calls['uncached']:.1%}) | {full} | {ideal:.2f}x | {base:.2f} | {cached:.2f} | "
              f"{speedup:.2f}x | {speedup / ideal:.2f} | {cpu_speedup:.2f}x | {H.rel_l1(outputs['cached'], outputs['uncached']):.4f} |",
              flush=True)


if __name__ == "__main__":
    main()
