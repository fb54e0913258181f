"""Train a testbed: ``python -m freqca_lab.testbed.train [--testbed shapes|photos] [--out DIR] [--iters N] ...``.

Deterministic on CPU (fixed seeds, one process, fixed thread count): every batch, timestep and noise
tensor is a function of (seed, iteration). Rectified flow: x_t = (1-t) x0 + t noise, the model predicts
noise - x0, t ~ logit-normal(0, 1). ``--testbed`` picks the data, image size and architecture
(``testbeds.TESTBEDS``); ``--out`` defaults to that testbed's weights folder. Writes tinyflux.safetensors
(fp16, EMA weights), prompts.safetensors, heldout.safetensors (32 held-out images, so that tests need no
data-set dependency), samples.png and MODEL_CARD.md into --out. ``--minutes`` is only a safety cap: hitting it stops early
(the card says so) and the result then depends on machine speed.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors.torch import save_file
from torch import Tensor

from .data import PromptTable
from .model import TinyFlux, load_model, save_model
from .sampling import euler_sample, flux_sigmas, seeded_noise
from .testbeds import TESTBEDS, Testbed, TrainingData, get_testbed

TRAIN_SEED_BASE = 1_000_000  # training images use seeds >= this; smaller seeds are held out
GRID_STEPS, GRID_SHIFT, GRID_CFG = 28, 2.0, 3.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--testbed", choices=sorted(TESTBEDS), default="shapes")
    p.add_argument("--out", type=Path, default=None, help="default: the testbed's weights folder")
    p.add_argument("--iters", type=int, default=2400)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--minutes", type=float, default=40.0, help="safety cap on wall time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-every", type=int, default=50)
    return p.parse_args(argv)


def training_batch(it: int, args: argparse.Namespace, data: TrainingData, size: tuple[int, int],
                   null_id: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Batch ``it``: x0 [B,3,H,W], prompt ids [B] (10% null), t [B], noise [B,3,H,W]."""
    rng = np.random.default_rng([args.seed, it])
    ids = rng.integers(len(data.prompts), size=args.batch)
    x0 = data.render_batch(ids, TRAIN_SEED_BASE + it * args.batch + np.arange(args.batch), size)
    ids[rng.random(args.batch) < 0.1] = null_id
    g = torch.Generator().manual_seed(args.seed * 1_000_003 + it)
    t = torch.sigmoid(torch.randn(args.batch, generator=g))
    noise = torch.randn(x0.shape, generator=g)
    return x0, torch.from_numpy(ids), t, noise


def flow_loss(model: TinyFlux, table: PromptTable, x0: Tensor, ids: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """Rectified-flow MSE between the predicted velocity and noise - x0."""
    xt = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * noise
    context, y = table(ids)
    return (model(xt, t, context, y) - (noise - x0)).pow(2).mean()


def lr_at(it: int, iters: int, base: float, warmup: int = 100) -> float:
    """Linear warm-up, then cosine decay to 5% of base."""
    if it < warmup:
        return base * (it + 1) / warmup
    progress = (it - warmup) / max(1, iters - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def heldout_batch(data: TrainingData, size: tuple[int, int], n: int) -> tuple[Tensor, Tensor]:
    """Held-out images: prompt ids [n] (cycling over the prompts) and x0 [n, 3, H, W] from seeds 0..n-1."""
    ids = torch.arange(n) % len(data.prompts)
    return ids, data.render_batch(ids, range(n), size)


def save_heldout(data: TrainingData, size: tuple[int, int], path: Path, n: int = 32) -> None:
    """``heldout_batch`` as ``heldout.safetensors`` (ids int64, x0 fp16), so that tests can check the shipped
    model without the data set's dependencies."""
    ids, x0 = heldout_batch(data, size, n)
    save_file({"ids": ids, "x0": x0.half().contiguous()}, str(path))


@torch.no_grad()
def evaluate(model: TinyFlux, table: PromptTable, data: TrainingData, size: tuple[int, int],
             n: int = 192) -> dict[str, float]:
    """Held-out flow loss over t in (0, 1), and x0-prediction MSE at t=0.5 vs a zero predictor."""
    ids, x0 = heldout_batch(data, size, n)
    noise = seeded_noise(range(10_000, 10_000 + n), size)
    t = (torch.arange(n) + 0.5) / n
    loss = flow_loss(model, table, x0, ids, t, noise).item()
    half = torch.full((n,), 0.5)
    xt = 0.5 * x0 + 0.5 * noise
    x0_hat = xt - 0.5 * model(xt, half, *table(ids))
    return {"eval_flow_loss": loss, "x0_mse_t05": (x0_hat - x0).pow(2).mean().item(),
            "zero_mse": x0.pow(2).mean().item()}


@torch.no_grad()
def generate(model: TinyFlux, table: PromptTable, prompt: int, seeds: range, size: tuple[int, int],
             cfg: float = GRID_CFG, steps: int = GRID_STEPS, shift: float = GRID_SHIFT) -> Tensor:
    """Euler + CFG samples for one prompt: [len(seeds), 3, H, W]."""
    n = len(seeds)
    context, y = table(torch.tensor([prompt] * n + [table.null_id] * n))

    def velocity(x: Tensor, sigma: float) -> Tensor:
        v_cond, v_uncond = model(torch.cat([x, x]), torch.full((2 * n,), sigma), context, y).chunk(2)
        return v_uncond + cfg * (v_cond - v_uncond)

    return euler_sample(velocity, seeded_noise(seeds, size), flux_sigmas(steps, shift))


def save_grid(model: TinyFlux, table: PromptTable, bed: Testbed, data: TrainingData, path: Path,
              n_train: int = 3, n_gen: int = 6) -> None:
    """Rows: prompts; left: training images, right: samples from held-out noise seeds 0..n_gen-1."""
    scale, label_w, gap = 3, 120, 12
    tile_h, tile_w = bed.size[0] * scale, bed.size[1] * scale
    width = label_w + (n_train + n_gen) * tile_w + gap
    canvas = Image.new("RGB", (width, 20 + len(bed.grid_prompts) * tile_h), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((label_w, 4), "training data", fill="black")
    draw.text((label_w + n_train * tile_w + gap, 4), f"generated ({GRID_STEPS} Euler steps, cfg {GRID_CFG})", fill="black")
    for row, name in enumerate(bed.grid_prompts):
        pid = data.prompts.index(name)
        seeds = [TRAIN_SEED_BASE + 7 * k + row for k in range(n_train)]
        images = torch.cat([data.render_batch([pid] * n_train, seeds, bed.size),
                            generate(model, table, pid, range(n_gen), bed.size)])
        top = 20 + row * tile_h
        draw.text((6, top + tile_h // 2 - 6), name, fill="black")
        for col, img in enumerate(images):
            arr = ((img.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
            pic = Image.fromarray(arr).resize((tile_w, tile_h), Image.NEAREST)
            canvas.paste(pic, (label_w + col * tile_w + (gap if col >= n_train else 0), top))
    canvas.save(path)


def write_card(path: Path, model: TinyFlux, bed: Testbed, stats: dict) -> None:
    """MODEL_CARD.md: architecture, data, training numbers, samples and the command that reproduces them."""
    n_params = sum(p.numel() for p in model.parameters())
    c = model.config
    (height, width), p = bed.size, c.patch_size
    grid_h, grid_w = -(-height // p), -(-width // p)
    lines = [
        f"# TinyFlux testbed model: `{bed.name}`",
        "",
        f"A small FLUX-architecture rectified-flow transformer trained from scratch on {bed.summary}, so that",
        "caching methods can be benchmarked without downloading weights. Own implementation; the state dict",
        "has the same keys and shapes as ComfyUI's `comfy.ldm.flux.model.Flux` with the same parameters.",
        "",
        "## Architecture",
        f"- {c.depth} double-stream + {c.depth_single_blocks} single-stream blocks, hidden {c.hidden_size}, "
        f"{c.num_heads} heads (RoPE axes {c.axes_dim}, theta {c.theta}), MLP ratio {c.mlp_ratio}, QK RMSNorm, adaLN.",
        f"- Works on pixels: {c.in_channels} channels, patch {p} -> {grid_h}x{grid_w} = {grid_h * grid_w} image "
        f"tokens at {height}x{width} (H x W); {bed.tokens} text tokens (context dim {c.context_in_dim}), pooled vector dim {c.vec_in_dim}.",
        f"- Parameters: {n_params:,}; weights file {stats['file_bytes'] / 1e6:.2f} MB (fp16, load as fp32).",
        f"- Config: `{json.dumps(asdict(c))}`",
        "",
        "## Data",
        *(f"- {line}" for line in bed.data_lines),
        f"- Training image seeds >= {TRAIN_SEED_BASE:,}; seeds below are held out.",
        f"- Prompt conditioning (`prompts.safetensors`): a learned context [{bed.tokens}, {c.context_in_dim}] and "
        f"pooled vector [{c.vec_in_dim}] per prompt.",
        "",
        "## Training",
        f"- Rectified flow, velocity target noise - x0, t ~ logit-normal(0, 1); AdamW lr {stats['lr']} "
        f"(100 warm-up iterations, cosine to 5%), batch {stats['batch']}, grad clip 1, EMA 0.995 (shipped).",
        f"- Iterations: {stats['iters_done']} of {stats['iters']}"
        + (" (STOPPED EARLY by the --minutes cap)" if stats["stopped_early"] else "") + f"; seed {stats['seed']}.",
        f"- Wall time: {stats['wall_s'] / 60:.1f} min on {stats['threads']} CPU thread"
        f"{'s' if stats['threads'] != 1 else ''} (torch {torch.__version__}); results can differ in the last bits "
        "with another thread count.",
        f"- Final training loss (mean of the last 100 iterations): {stats['final_loss']:.4f}.",
        f"- Held-out flow loss (EMA weights after the fp16 round trip): {stats['eval_flow_loss']:.4f}; "
        f"x0-prediction MSE at t = 0.5: {stats['x0_mse_t05']:.4f} (zero predictor: {stats['zero_mse']:.4f}).",
        "",
        "## Files",
        "`tinyflux.safetensors` (weights, config in its metadata), `prompts.safetensors` (prompt table), "
        "`heldout.safetensors` (32 held-out images: prompt ids and x0, fp16, seeds 0-31), `samples.png`.",
        "",
        "## Samples",
        f"`samples.png`: per prompt, training images (left) and samples from held-out noise seeds (right), "
        f"{GRID_STEPS} Euler steps, shift {GRID_SHIFT}, CFG {GRID_CFG}.",
        "",
        "## Reproduce",
        f"`python -m freqca_lab.testbed.train --testbed {bed.name} --iters {stats['iters']} --seed {stats['seed']} "
        f"--batch {stats['batch']} --lr {stats['lr']} --threads {stats['threads']}`",
        "",
    ]
    path.write_text("\n".join(lines))


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    bed = get_testbed(args.testbed)
    data = bed.training_data()
    config = bed.config
    model = TinyFlux(config)
    table = PromptTable.create(data.prompts, bed.tokens, config.context_in_dim, config.vec_in_dim, seed=args.seed)
    params = list(model.parameters()) + list(table.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    ema_model, ema_table = copy.deepcopy(model).requires_grad_(False), copy.deepcopy(table).requires_grad_(False)
    ema_params = list(ema_model.parameters()) + list(ema_table.parameters())
    losses: list[float] = []
    start = time.time()
    it = 0
    for it in range(args.iters):
        if time.time() - start > args.minutes * 60:
            print(f"stopping at iteration {it}: --minutes {args.minutes} cap reached", flush=True)
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(it, args.iters, args.lr)
        loss = flow_loss(model, table, *training_batch(it, args, data, bed.size, table.null_id))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.995, (1 + it) / (10 + it))
        torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - decay)
        losses.append(loss.item())
        if (it + 1) % args.log_every == 0 or it == 0:
            recent = float(np.mean(losses[-args.log_every:]))
            print(f"iter {it + 1:5d}/{args.iters}  loss {recent:.4f}  lr {lr_at(it, args.iters, args.lr):.2e}  "
                  f"{time.time() - start:7.1f}s", flush=True)
    else:
        it = args.iters
    wall = time.time() - start

    out = args.out or bed.weights_dir
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "tinyflux.safetensors"
    save_model(ema_model, weights)
    ema_table.save(out / "prompts.safetensors")
    save_heldout(data, bed.size, out / "heldout.safetensors")
    model, table = load_model(weights), PromptTable.load(out / "prompts.safetensors")
    stats = {"iters": args.iters, "iters_done": it, "stopped_early": it < args.iters, "batch": args.batch,
             "lr": args.lr, "seed": args.seed, "threads": args.threads, "wall_s": wall,
             "final_loss": float(np.mean(losses[-100:])), "file_bytes": weights.stat().st_size,
             **evaluate(model, table, data, bed.size)}
    print(json.dumps(stats), flush=True)
    save_grid(model, table, bed, data, out / "samples.png")
    write_card(out / "MODEL_CARD.md", model, bed, stats)


def main(argv: list[str] | None = None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    main()
