"""Auto-FR: learn FRDiff's per-step reuse gates on the testbed model against the uncached sampler.

``python -m freqca_lab.autofr [--steps 28] [--target-full 10] [--images 3] [--iters 16] [--lr 3]
[--cost-weight 100] [--threads 1] [--out PATH]`` writes a ``GateSchedule`` JSON (default: the shipped
``freqca_lab/testbed/weights/frdiff_gates.json``).

Training (differentiable in the gates only; the model is frozen):

- soft gates ``g_k = sigmoid(θ_k)``, straight-through: the forward pass uses ``round(g_k)``, the backward
  the sigmoid's gradient. Step 0 is always full. ``θ`` starts at ±1 on evenly spaced full steps with the
  target count.
- every step computes the full CRF (cheap on the testbed); the CRF used is
  ``crf_used_k = g_k·crf_k + (1 − g_k)·crf_used_{k−1}``, and the output is
  ``out_k = g_k·final(crf_k) + (1 − g_k)·(λ_k·out_last_full + (1 − λ_k)·final(crf_used_{k−1}))`` (the final
  layer with step ``k``'s embedding; score mixing as ``FRDiffMethod``; ``out_last_full`` follows the same
  gated recursion as the CRF). Written so, the output is linear in ``g_k`` and its gradient is the
  difference between running step ``k`` full and caching it (the form ``final(crf_used_k)`` has the same
  value at rounded gates but a gradient that, at λ = 1, misses the full step). Euler + CFG exactly as
  ``runner.Sampling`` (uncond and cond batched as two streams): with rounded gates the result is the
  image that ``runner.generate`` makes through a ``CacheController(FRDiffMethod(), GateSchedule(...))``.
- loss = ``MSE(final image, uncached image) / MSE_0 + cost_weight · ((Σ_k g_k − target) / steps)²`` with
  ``MSE_0`` the first iteration's MSE (so the cost weight is unit-free) and ``target`` the wanted count of
  full steps. Plain SGD on ``θ`` (steps proportional to each gate's gradient; Adam's per-gate
  normalisation moves unimportant late gates as fast as the decisive early ones); ``θ`` is clamped to
  ``[−2, 2]`` so that no gate saturates.
- the gates written are the best (lowest MSE) rounded gate set with exactly ``target`` full steps seen
  in any iteration's forward pass (the evenly spaced start is one, so there always is one).

Calibration noise seeds and prompts only (``bench.CALIB_SEED_BASE``, ``bench.calib_prompts``), disjoint
from the benchmark's reported ones. Deterministic for given arguments on one thread.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from freqca_core.methods.frdiff import GateSchedule, remaining_fraction, score_mix_weight
from freqca_core.validation import check_float, check_int

from .runner import conditioning, generate, streams_for
from .testbed.model import WEIGHTS_DIR

DEFAULT_GATES = WEIGHTS_DIR / "frdiff_gates.json"  # the shipped 28-step gates, learned on the testbed


THETA_LIMIT = 2.0  # |θ| bound: sigmoid'(2) ≈ 0.1


@dataclass
class AutoFRResult:
    """The learned gates and the training curve (per iteration, with that iteration's rounded gates)."""

    schedule: GateSchedule
    mse: list[float] = field(default_factory=list)        # MSE of the final images vs the uncached ones
    loss: list[float] = field(default_factory=list)       # total loss (normalised MSE + cost)
    full_counts: list[int] = field(default_factory=list)  # full steps of the rounded gates
    best_mse: float = math.inf
    seconds: float = 0.0


def target_count(target: float, steps: int) -> int:
    """Full steps wanted: ``target`` as a fraction of ``steps`` if below 1, else as a count (1..steps)."""
    check_float("target_full", target, 0.0, float(steps), low_open=True)
    count = round(target * steps) if target < 1 else round(target)
    return max(1, min(steps, count))


def evenly_spaced(count: int, steps: int) -> list[int]:
    """``count`` full steps spread evenly over ``steps`` (step 0 first)."""
    return sorted({math.floor(i * steps / count) for i in range(count)})


def gated_sample(model: nn.Module, gates: Tensor, noise: Tensor, context: Tensor, y: Tensor, sigmas: Tensor,
                 cfg: float, mix: Sequence[float]) -> Tensor:
    """Euler + CFG through FRDiff with per-step gates ``gates [steps]`` (1: full step; differentiable).

    ``noise [K, C, H, W]``, ``context``/``y`` the call batch (streams stacked as in ``runner.Sampling``),
    ``mix[k]`` the score-mixing weight λ of step ``k``. Returns the final images ``[K, C, H, W]``."""
    n_streams = context.shape[0] // noise.shape[0]
    x = noise
    used = last_full = None
    for k in range(len(sigmas) - 1):
        s, s_next = float(sigmas[k]), float(sigmas[k + 1])
        x_in = torch.cat([x] * n_streams)
        e = model.embed(x_in, torch.full((x_in.shape[0],), s, dtype=x.dtype), context, y)
        crf = model.run_blocks(e)
        out_full = model.final(crf, e)
        if used is None:
            used, out, last_full = crf, out_full, out_full
        else:
            # linear in g: d out / d g is the difference between running this step full and caching it
            g = gates[k]
            out_cached = mix[k] * last_full + (1 - mix[k]) * model.final(used, e)
            out = g * out_full + (1 - g) * out_cached
            used = g * crf + (1 - g) * used
            last_full = g * out_full + (1 - g) * last_full
        if n_streams == 1:
            v = out
        else:
            v_uncond, v_cond = out.chunk(2)
            v = v_uncond + cfg * (v_cond - v_uncond)
        x = x + (s_next - s) * v
    return x


def learn_gates(model: nn.Module, table: nn.Module, *, steps: int = 28, target: float = 10, images: int = 3,
                iters: int = 16, lr: float = 3.0, cost_weight: float = 100.0, cfg: float = 3.0, shift: float = 2.0,
                size: tuple[int, int] = (32, 32), seed_base: int | None = None,
                prompts: Sequence[int] | None = None, log=None) -> AutoFRResult:
    """Learn gates for ``steps`` steps with ``target`` full steps (fraction if < 1) on ``images`` calibration
    images (noise seeds ``seed_base + i``, prompts ``bench.calib_prompts`` unless given)."""
    from .bench import CALIB_SEED_BASE, calib_prompts
    from .testbed.sampling import flux_sigmas, seeded_noise

    check_int("steps", steps, 2, 1000)
    check_int("images", images, 1, 64)
    check_int("iters", iters, 1, 100_000)
    check_float("lr", lr, 0.0, 100.0, low_open=True)
    check_float("cost_weight", cost_weight, 0.0, 1e6)
    count = target_count(target, steps)
    seeds = [(CALIB_SEED_BASE if seed_base is None else seed_base) + i for i in range(images)]
    prompts = list(prompts) if prompts is not None else calib_prompts(images)
    start = time.perf_counter()

    reference = generate(model, prompts, seeds, steps, cfg, None, table=table, shift=shift, size=size).images
    dtype = next(model.parameters()).dtype
    channels = getattr(getattr(model, "config", None), "in_channels", 3)
    noise = seeded_noise(seeds, size, channels).to(dtype)
    context, y = conditioning(table, prompts, cfg)
    context, y = context.detach().to(dtype), y.detach().to(dtype)
    sigmas = flux_sigmas(steps, shift)
    mix = [score_mix_weight(remaining_fraction(k, steps)) for k in range(steps)]
    assert len(streams_for(cfg)) * images == context.shape[0]

    init = set(evenly_spaced(count, steps))
    theta = torch.tensor([1.0 if k in init else -1.0 for k in range(steps)], requires_grad=True)
    optimizer = torch.optim.SGD([theta], lr=lr)
    first = torch.zeros(steps)
    first[0] = 1.0  # step 0 is always full
    result = AutoFRResult(GateSchedule.from_steps(sorted(init), steps))
    mse0 = None
    for it in range(iters):
        soft = torch.sigmoid(theta)
        hard = (soft > 0.5).to(soft.dtype)
        gates = (hard + soft - soft.detach()) * (1 - first) + first  # straight-through; step 0 full
        with torch.enable_grad():
            images_out = gated_sample(model, gates, noise, context, y, sigmas, cfg, mix)
            mse = (images_out - reference).pow(2).mean()
            if mse0 is None:
                mse0 = float(mse.detach()) or 1.0
            n_full = gates.sum()
            loss = mse / mse0 + cost_weight * ((n_full - count) / steps) ** 2
            (grad,) = torch.autograd.grad(loss, [theta])
        mse, loss = float(mse.detach()), float(loss.detach())
        hard_gates = [bool(g) for g in (hard * (1 - first) + first).tolist()]
        full = sum(hard_gates)
        result.mse.append(mse)
        result.loss.append(loss)
        result.full_counts.append(full)
        if full == count and mse < result.best_mse:
            result.best_mse = mse
            result.schedule = GateSchedule(tuple(hard_gates))
        if log is not None:
            log(f"iter {it + 1}/{iters}: mse {mse:.3e} loss {loss:.4f} full {full} "
                f"{''.join('F' if g else 'c' for g in hard_gates)}")
        optimizer.zero_grad()
        theta.grad = grad
        optimizer.step()
        with torch.no_grad():
            theta.clamp_(-THETA_LIMIT, THETA_LIMIT)  # a gate pushed far away keeps a gradient to come back
    result.seconds = time.perf_counter() - start
    meta = {"learned_by": "freqca_lab.autofr", "model": type(model).__name__, "steps": steps,
            "target_full_steps": count, "full_steps": sum(result.schedule.gates), "images": images,
            "seeds": seeds, "prompts": prompts, "iters": iters, "lr": lr, "cost_weight": cost_weight,
            "cfg": cfg, "shift": shift, "size": list(size), "mse_initial": result.mse[0],
            "mse_best": result.best_mse}
    result.schedule = GateSchedule(result.schedule.gates, meta)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--target-full", type=float, default=10,
                   help="full steps wanted: a fraction of --steps if < 1, else a count (default 10)")
    p.add_argument("--images", type=int, default=3, help="calibration images (seeds 7000, 7001, ...)")
    p.add_argument("--iters", type=int, default=16)
    p.add_argument("--lr", type=float, default=3.0)
    p.add_argument("--cost-weight", type=float, default=100.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=DEFAULT_GATES)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from .testbed import load_testbed

    model, table = load_testbed()
    log = lambda message: print(f"[autofr] {message}", file=sys.stderr, flush=True)  # noqa: E731
    result = learn_gates(model, table, steps=args.steps, target=args.target_full, images=args.images,
                         iters=args.iters, lr=args.lr, cost_weight=args.cost_weight, log=log)
    result.schedule.save(args.out)
    gates = "".join("F" if g else "c" for g in result.schedule.gates)
    print(f"{args.out}: {gates} ({sum(result.schedule.gates)}/{args.steps} full), MSE {result.mse[0]:.3e} "
          f"-> {result.best_mse:.3e}, {result.seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
