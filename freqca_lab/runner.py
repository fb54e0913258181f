"""The one integration of the cache core with the testbed model (used by the benchmark and its tests).

``cached_velocity`` is the per-call recipe every adapter follows: embed, ask the controller for a plan, run
the blocks and record the CRF on a full call or take the forecast on a cached one, then the final layer
with the *current* embedding. ``generate`` samples images with CFG (uncond and cond batched as the two
streams ``("uncond", "cond")``; only ``("cond",)`` at ``cfg == 1``) using the testbed's Euler sampler, and
counts what ran: block executions (forward hooks on every block), full and cached calls, wall and CPU time.

``method`` may be ``None`` (uncached), a ``CacheController`` (CRF caching: FreqCa, reuse, taylor), a cache
inside the blocks (``perlayer``: anything with ``start_run(sigmas)``, ``model_call(model, x, sigma, context,
y, guidance) -> v`` and ``end_run() -> RunStats``) or an output-space cache
(``baselines.AdaptiveOutputCache``: anything with ``start_run(sigmas)``,
``__call__(x, sigma, compute) -> v`` and ``end_run() -> RunStats``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from freqca_core.controller import CacheController, RunStats
from freqca_core.spectral import TokenLayout

UNCOND, COND = "uncond", "cond"


def streams_for(cfg: float) -> tuple[str, ...]:
    """Stream names of one model call: uncond first (ComfyUI's usual order), cond alone at ``cfg == 1``."""
    return (COND,) if cfg == 1.0 else (UNCOND, COND)


def _sigma_tensor(sigma: float, batch: int, like: Tensor) -> Tensor:
    return torch.full((batch,), float(sigma), dtype=like.dtype, device=like.device)


def cached_velocity(model: nn.Module, controller: CacheController, x: Tensor, sigma: float, context: Tensor,
                    y: Tensor, streams: Sequence[str], guidance: Tensor | None = None) -> Tensor:
    """One model call through the cache: ``x [B, C, H, W]`` at ``sigma`` -> velocity ``[B, C, H, W]``."""
    e = model.embed(x, _sigma_tensor(sigma, x.shape[0], x), context, y, guidance)
    plan = controller.plan(float(sigma), streams, x.shape[0], TokenLayout.grid(*e.grid), embedding=e.img)
    if plan.full:
        crf = model.run_blocks(e, attention_override=controller.attention_override(plan))
        controller.record(plan, crf, embedding=e.img)
    else:
        crf = plan.crf
    return controller.finish_call(plan, model.final(crf, e), x)


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks (double then single stream) of a TinyFlux-like model."""
    return list(getattr(model, "double_blocks", [])) + list(getattr(model, "single_blocks", []))


class BlockCounter:
    """Counts block executions with forward hooks (``with BlockCounter(model) as counter: ...``)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.count = 0
        self.n_blocks = len(blocks_of(model))
        self._handles: list[Any] = []

    def _hook(self, *_: Any) -> None:
        self.count += 1

    def __enter__(self) -> "BlockCounter":
        self._handles = [b.register_forward_hook(self._hook) for b in blocks_of(self.model)]
        return self

    def __exit__(self, *_: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _sdpa_flops(query, key, value, *_, out_shape=None, **__) -> int:
    from torch.utils.flop_counter import sdpa_flop_count
    return sdpa_flop_count(query, key, value)


def flop_counter() -> Any:
    """A ``FlopCounterMode`` that also counts CPU scaled-dot-product attention.

    On CPU, ``F.scaled_dot_product_attention`` lowers to ``_scaled_dot_product_flash_attention_for_cpu``,
    which torch's registry does not count (it would report attention as free); the same formula as for
    the GPU kernels (two batched matmuls) is added locally through ``custom_mapping``.
    """
    from torch.utils.flop_counter import FlopCounterMode
    mapping = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        mapping[op] = _sdpa_flops
    return FlopCounterMode(display=False, custom_mapping=mapping)


@dataclass
class Generation:
    """Result of ``generate``: images ``[K, C, H, W]`` (raw sampler output, nominally in [-1, 1])."""

    images: Tensor
    stats: RunStats
    wall_s: float
    cpu_s: float
    block_calls: int
    n_blocks: int
    model_calls: int
    call_flops: list[tuple[bool, int]] = field(default_factory=list)  # (full?, FLOPs) per call if counted
    call_times: list[tuple[bool, float]] = field(default_factory=list)  # (full?, wall seconds) per call

    @property
    def full_steps(self) -> int:
        return self.stats.full_steps

    @property
    def cache_bytes(self) -> int:
        return self.stats.peak_cache_bytes


def conditioning(table: nn.Module, prompts: Sequence[int], cfg: float) -> tuple[Tensor, Tensor]:
    """Context and pooled vectors of one call's batch: ``[null] * K + prompts`` (or ``prompts`` at cfg 1)."""
    ids = list(prompts) if cfg == 1.0 else [table.null_id] * len(prompts) + list(prompts)
    return table(ids)


class Sampling:
    """One sampling run (Euler + CFG with the testbed sampler), advanced one step at a time.

    ``generate`` runs it to the end; the benchmark advances several runs in lockstep (step ``i`` of every
    configuration before step ``i + 1`` of any) so that changing load on a shared machine hits them alike.
    Use one ``Sampling`` at a time per step: they share the model (block hooks are attached per step).
    Each step is ``euler_sample`` over ``sigmas[i:i + 2]``: the same arithmetic as one uninterrupted call.
    Wall and CPU time, block executions and (optionally) FLOPs are counted per step, for this run only.
    """

    def __init__(self, model: nn.Module, prompts: Sequence[int], seeds: Sequence[int], steps: int, cfg: float,
                 method: Any = None, *, table: nn.Module, shift: float = 2.0, size: tuple[int, int] = (32, 32),
                 guidance: float | None = None, count_flops: bool = False, dtype: torch.dtype | None = None):
        from .testbed.sampling import flux_sigmas, seeded_noise

        if len(prompts) != len(seeds):
            raise ValueError("one prompt per seed")
        self.model, self.method, self.cfg, self.count_flops = model, method, float(cfg), count_flops
        channels = getattr(getattr(model, "config", None), "in_channels", 3)
        dtype = dtype or next(model.parameters()).dtype
        self.streams = streams_for(cfg)
        self.sigmas = flux_sigmas(steps, shift)
        self.steps = steps
        self.x = seeded_noise(seeds, size, channels).to(dtype)
        context, y = conditioning(table, prompts, cfg)
        self.context, self.y = context.to(dtype), y.to(dtype)
        self.batch = len(self.streams) * len(seeds)
        self.guidance = None if guidance is None else torch.full((self.batch,), float(guidance), dtype=dtype)
        self.counter = BlockCounter(model)
        self.call_flops: list[tuple[bool, int]] = []
        self.call_times: list[tuple[bool, float]] = []
        self.wall_s = self.cpu_s = 0.0
        self.i = 0
        self.stats = RunStats(n_steps=steps)
        if method is not None:
            method.start_run(self.sigmas)

    @property
    def done(self) -> bool:
        return self.i >= self.steps

    def _model_call(self, x: Tensor, sigma: float) -> Tensor:
        model, method = self.model, self.method
        if method is None:
            out = model(x, _sigma_tensor(sigma, self.batch, x), self.context, self.y, self.guidance)
            self.stats.full_calls += 1
            self.stats.steps[len(self.stats.steps)] = "full"
            return out
        if isinstance(method, CacheController):
            return cached_velocity(model, method, x, sigma, self.context, self.y, self.streams, self.guidance)
        if hasattr(method, "model_call"):  # caches inside the blocks (``perlayer``)
            return method.model_call(model, x, sigma, self.context, self.y, self.guidance)
        return method(x, sigma, lambda: model(x, _sigma_tensor(sigma, self.batch, x), self.context, self.y,
                                              self.guidance))

    def _full_calls(self) -> int:
        """Full model calls so far (a call is full or cached by the method's own count: DBCache's cached
        calls run their front blocks)."""
        return (self.method.stats if self.method is not None else self.stats).full_calls

    def _velocity(self, x: Tensor, sigma: float) -> Tensor:
        x_in = torch.cat([x] * len(self.streams))
        before, start = self._full_calls(), time.perf_counter()
        if self.count_flops:
            with flop_counter() as mode:
                out = self._model_call(x_in, sigma)
            self.call_flops.append((self._full_calls() > before, mode.get_total_flops()))
        else:
            out = self._model_call(x_in, sigma)
        self.call_times.append((self._full_calls() > before, time.perf_counter() - start))
        if len(self.streams) == 1:
            return out
        v_uncond, v_cond = out.chunk(2)
        return v_uncond + self.cfg * (v_cond - v_uncond)

    def step(self) -> None:
        from .testbed.sampling import euler_sample

        with torch.inference_mode(), self.counter:
            t_cpu, t_wall = time.process_time(), time.perf_counter()
            self.x = euler_sample(self._velocity, self.x, self.sigmas[self.i:self.i + 2])
            self.wall_s += time.perf_counter() - t_wall
            self.cpu_s += time.process_time() - t_cpu
        self.i += 1

    def finish(self) -> Generation:
        while not self.done:
            self.step()
        stats = self.method.end_run() if self.method is not None else self.stats
        return Generation(images=self.x.float(), stats=stats, wall_s=self.wall_s, cpu_s=self.cpu_s,
                          block_calls=self.counter.count, n_blocks=self.counter.n_blocks, model_calls=self.steps,
                          call_flops=self.call_flops, call_times=self.call_times)


def generate(model: nn.Module, prompts: Sequence[int], seeds: Sequence[int], steps: int, cfg: float,
             method: Any = None, *, table: nn.Module, shift: float = 2.0, size: tuple[int, int] = (32, 32),
             guidance: float | None = None, count_flops: bool = False,
             dtype: torch.dtype | None = None) -> Generation:
    """Sample ``len(seeds)`` images (prompt ``prompts[i]``, noise seed ``seeds[i]``) with Euler + CFG.

    ``count_flops`` counts each model call's FLOPs (``flop_counter``) into ``Generation.call_flops``;
    it slows the run, so time with it off.
    """
    return Sampling(model, prompts, seeds, steps, cfg, method, table=table, shift=shift, size=size,
                    guidance=guidance, count_flops=count_flops, dtype=dtype).finish()


def flops_per_sample(call_flops: Sequence[tuple[bool, int]], n_samples: int) -> tuple[float, float]:
    """Mean FLOPs of a full call and of a cached call per sample (0.0 for a kind that never ran)."""
    full = [f for is_full, f in call_flops if is_full]
    cached = [f for is_full, f in call_flops if not is_full]
    mean = lambda xs: (sum(xs) / len(xs) / n_samples) if xs else 0.0  # noqa: E731
    return mean(full), mean(cached)


def median_call_seconds(call_times: Sequence[tuple[bool, float]]) -> tuple[float, float]:
    """Median wall time of a full call and of a cached call (0.0 for a kind that never ran)."""
    def median(xs: list[float]) -> float:
        xs = sorted(xs)
        return 0.0 if not xs else (xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2)
    return median([t for f, t in call_times if f]), median([t for f, t in call_times if not f])


def run_cost(full_calls: int, cached_calls: int, per_call: tuple[float, float]) -> float:
    """Cost of a run from its call counts and per-call costs ``(full, cached)``: FLOPs per sample (every
    call of a kind has the same shapes within a run, so this equals counting the whole run) or seconds."""
    return full_calls * per_call[0] + cached_calls * per_call[1]


def randomize(model: nn.Module, seed: int = 0, std: float = 0.02) -> nn.Module:
    """Random weights everywhere (adaLN-Zero initialisation makes an untrained TinyFlux output zeros)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("scale"):  # RMSNorm scales
                p.fill_(1.0)
            else:
                fan_in = p.shape[-1] if p.dim() > 1 else 1
                p.copy_(torch.randn(p.shape, generator=g) * (std if p.dim() == 1 else fan_in ** -0.5))
    return model
