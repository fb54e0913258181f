"""Benchmark: ``python -m freqca_lab.bench [--quick] [--steps N] [--seeds K] [--json PATH] [--out DIR]
[--model testbed|flux-timing] [--testbed shapes|photos] [--repeats R] [--threads T]``.

``--model testbed`` (default): a shipped trained TinyFlux, held-out noise seeds and prompts, CFG 3;
``--testbed`` picks which (``shapes``: 32x32 procedural shapes, the default; ``photos``: 24x40 photo crops,
a different architecture; see ``testbed/testbeds.py``). Image size and prompts follow the testbed. FEB-Cache
rows need tables derived for the model (``febprobe --testbed``, shipped for both); a testbed without them
gets no FEB rows and the JSON's ``skipped`` says so.
Runs ``none`` (uncached), FreqCa, reuse (FORA-like) and Taylor-2 (TaylorSeer-like) at warm-up 3 and
intervals N (the same schedules, so the same full steps), and the output-space adaptive baseline with its
threshold calibrated on *other* seeds and prompts to each of those full-step budgets. Fidelity (PSNR,
SSIM, relative L1, float64, images in [0, 1]) is against the uncached image of the same seed and prompt,
averaged over seeds; the uncached run's own PSNR is infinite and written as ``null`` in the JSON (SSIM 1,
rel L1 0). Speedups are ratios within this process: wall clock (minimum over ``--repeats`` interleaved
rounds), FLOPs (``torch.utils.flop_counter.FlopCounterMode``, per sample) and, robust to a busy machine,
``median_call_speedup``: the model-call time predicted from each run's median full-call and cached-call
times (sampler arithmetic excluded).

``--model flux-timing``: a larger random-weight Flux-shaped TinyFlux (hidden 512, 2 double + 6 single
blocks, 1024 image + 64 text tokens, guidance-distilled so no CFG) for the speedup ratios alone: block
fraction, wall speedup and its ratio to the ideal ``steps / full_steps``. Timing only; fidelity fields
are ``null``.

Default (no flag): the full testbed run (50 steps, 4 seeds, N = 3, 4, 6, 9); ``--quick``: 28 steps,
2 seeds, N = 3 and 6, one timing round (under a minute on 2 CPU cores). Outputs go to ``--out`` (default ``bench_out/``):
``results.json``, ``table.md``, ``grid.png``, ``pareto.png``; the table is printed.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from freqca_core import CacheConfig, CacheController
from freqca_core.calibration import Candidate, calibrate as choose
from freqca_core.methods.auto import AllFull, RecordingMethod, chosen
from freqca_core.methods.feb import LEVELS as FEB_LEVELS

from . import report
from .baselines import AdaptiveOutputCache, BudgetExceeded, calibrate_threshold
from .feb_tables import load_tables, pick_table
from .metrics import fidelity
from .perlayer import DBCache, PerLayerTaylorSeer, spread_schedule
from .runner import Generation, Sampling, flops_per_sample, generate, median_call_seconds, randomize, run_cost
from .testbed.testbeds import TESTBEDS, add_testbed_argument, get_testbed
from freqca_core.schedule import FixedSchedule, StepSchedule

WARMUP = 3
ADAPTIVE_MAX_GAP = 12  # the adaptive schedule's largest interval in the benchmark
FEB_DELTA = 0.965  # FEB-Cache's exposure scale (the node's default)
CFG = 3.0
SHIFT = 2.0
REPORT_SEED_BASE = 100     # reported noise seeds: 100, 101, ...
CALIB_SEED_BASE = 7000     # calibration noise seeds: disjoint from the reported ones
N_PROMPTS = TESTBEDS["shapes"].n_prompts


def report_prompts(k: int, testbed: str = "shapes") -> list[int]:
    """Held-out prompt ids for the reported seeds (``Testbed.report_prompts``)."""
    return get_testbed(testbed).report_prompts(k)


def calib_prompts(k: int, testbed: str = "shapes") -> list[int]:
    """Calibration prompt ids: a different walk, so no (prompt, seed) pair is shared with the report."""
    return get_testbed(testbed).calib_prompts(k)


@dataclass
class Spec:
    """What to run; the defaults are the full testbed benchmark."""

    model: str = "testbed"
    testbed: str = "shapes"  # which trained testbed (``testbeds.TESTBEDS``) when model == "testbed"
    steps: int = 50
    seeds: int = 4
    intervals: tuple[int, ...] = (3, 4, 6, 9)
    methods: tuple[str, ...] = ("freqca", "reuse", "taylor", "frdiff", "adaptive", "feb", "auto")
    adaptive_schedule: tuple[str, ...] = ("freqca", "reuse")  # methods also run on the adaptive schedule
    budgeted: tuple[str, ...] = ("taylorseer-o1", "taylorseer-o2", "dbcache-F1", "taylorseer-o1-w1",
                                 "taylorseer-o2-w1", "res-taylor-o1", "res-taylor-o1-spread",
                                 "res-taylor-o2-w2")  # see ``BUDGETED``
    repeats: int = 2
    calib_iters: int = 10
    cfg: float = CFG
    shift: float = SHIFT


@dataclass
class Config:
    method: str
    params: dict
    budget: int
    make: Callable[[], Any] = field(repr=False)
    probe: Callable[[], Any] | None = field(default=None, repr=False)  # a cache whose step 1 of 2 is cached


@dataclass(frozen=True)
class Budgeted:
    """A method run at each full-step budget ``B``: ``warmup`` first and ``final`` last steps full, the rest
    spread evenly (``schedule="spread"``) or every ``N`` steps with the smallest interval ``N`` that fits
    (``"fixed"``, the node's ``FixedSchedule``). ``front`` blocks also run at cached steps, so fewer full
    steps fit in the ``B * blocks`` block executions of the budget."""

    make: Callable[[StepSchedule], Any]
    warmup: int = 3
    final: int = 1
    front: int = 0
    schedule: str = "spread"
    params: dict = field(default_factory=dict)

    def full_steps(self, budget: int, steps: int, n_blocks: int) -> int:
        """Full steps whose block executions (front blocks at the other steps included) fit ``budget``."""
        if not self.front:
            return budget
        return (budget * n_blocks - steps * self.front) // (n_blocks - self.front)

    def step_schedule(self, steps: int, n_full: int, warmup: int) -> tuple[StepSchedule, dict]:
        """The schedule with at most ``n_full`` full steps of ``steps``, and its parameters."""
        params = {"warmup": warmup, "final_full_steps": self.final, "schedule": self.schedule,
                  "target_full_steps": n_full}
        if self.schedule == "spread":
            return spread_schedule(steps, n_full, warmup, self.final), params
        schedule = fixed_fitting(warmup, self.final, n_full, steps)
        return schedule, {**params, "interval": schedule.interval}


def fixed_fitting(warmup: int, final: int, budget: int, steps: int) -> FixedSchedule:
    """The node's fixed schedule with the smallest interval whose full steps of ``steps`` fit ``budget``
    (interval ``steps`` if none does)."""
    interval = next((n for n in range(1, steps + 1)
                     if len(FixedSchedule(warmup, n, final).full_steps(steps)) <= budget), steps)
    return FixedSchedule(warmup, interval, final)


def _res_taylor(order: int) -> Callable[[StepSchedule], CacheController]:
    return lambda s: CacheController(CacheConfig(method="res-taylor", taylor_order=order).new_method(), s)


def node_default(budget: int, steps: int) -> CacheController:
    """The node's fixed default within ``budget`` full steps of ``steps``: ``res-taylor`` order 1, warm-up 1,
    every N steps, the last step full, the smallest N that fits (its ``schedule.label`` names N)."""
    return _res_taylor(1)(fixed_fitting(1, 1, budget, steps))


BUDGETED = {
    # per-layer baselines with the papers' first/last-step handling (TaylorSeer: 3 first, last full) ...
    "taylorseer-o1": Budgeted(lambda s: PerLayerTaylorSeer(s, 1), params={"order": 1, "forecast": "per layer"}),
    "taylorseer-o2": Budgeted(lambda s: PerLayerTaylorSeer(s, 2), params={"order": 2, "forecast": "per layer"}),
    "dbcache-F1": Budgeted(lambda s: DBCache(s, 1, front=1), final=0, front=1,
                           params={"order": 1, "front_blocks": 1, "back_blocks": 0}),
    # ... and with warm-up 1, the last step full and the rest spread evenly, which suits them better
    "taylorseer-o1-w1": Budgeted(lambda s: PerLayerTaylorSeer(s, 1), 1, 1,
                                 params={"order": 1, "forecast": "per layer"}),
    "taylorseer-o2-w1": Budgeted(lambda s: PerLayerTaylorSeer(s, 2), 1, 1,
                                 params={"order": 2, "forecast": "per layer"}),
    # res-taylor: on the node's fixed schedule (warm-up 1, every N, last step full), spread like the above,
    # and at order 2 with warm-up 2
    "res-taylor-o1": Budgeted(_res_taylor(1), 1, 1, schedule="fixed", params={"order": 1}),
    "res-taylor-o1-spread": Budgeted(_res_taylor(1), 1, 1, params={"order": 1}),
    "res-taylor-o2-w2": Budgeted(_res_taylor(2), 2, 1, params={"order": 2}),
}


class Progress:
    """Plain progress lines on stderr."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(f"[bench {time.perf_counter() - self.start:6.1f}s] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------- configs
def schedule_configs(spec: Spec) -> list[Config]:
    configs = [Config("none", {}, spec.steps, lambda: None)]
    for n in spec.intervals:
        for name in spec.methods:
            if name in ("adaptive", "feb", "auto"):
                continue
            cache = CacheConfig(method=name, warmup=WARMUP, interval=n)
            budget = len(cache.step_schedule().full_steps(spec.steps))
            params = {"warmup": WARMUP, "interval": n, **cache.new_method(spec.steps).describe()}
            configs.append(Config(name, params, budget, lambda c=cache: c.new_controller(spec.steps)))
    return configs


def budgeted_configs(spec: Spec, budgets: list[int], n_blocks: int) -> list[Config]:
    """``spec.budgeted`` methods at each full-step budget (skipped where not even the warm-up fits)."""
    configs = []
    for name in spec.budgeted:
        entry = BUDGETED[name]
        for budget in budgets:
            n_full = min(entry.full_steps(budget, spec.steps, n_blocks), spec.steps)
            warmup = min(entry.warmup, n_full - entry.final)
            if warmup < 1:
                continue
            schedule, params = entry.step_schedule(spec.steps, n_full, warmup)
            params = {**params, **entry.params}
            configs.append(Config(name, params, budget, lambda s=schedule, e=entry: e.make(s),
                                  lambda e=entry: e.make(FixedSchedule(warmup=1, interval=1000))))
    return configs


def feb_configs(spec: Spec, tables_path: Path) -> list[Config]:
    """FEB-Cache with the tables derived for the testbed (``febprobe``), one per speed level, at the
    node's exposure scale; each row's budget is its own count of steps whose blocks run."""
    tables, _ = load_tables(tables_path)
    configs = []
    for level in FEB_LEVELS:
        table = pick_table(tables, level, spec.steps)
        counts = table.counts(spec.steps)
        params = {"level": level, "table": table.timeline(spec.steps), "delta": FEB_DELTA,
                  "table_steps": table.n_ref, **counts}
        cache = CacheConfig(method="feb", feb_table=table, exposure_delta=FEB_DELTA)
        configs.append(Config("feb", params, counts["full"] + counts["attn"],
                              lambda c=cache: c.new_controller(spec.steps)))
    return configs


def auto_configs(model, table, spec: Spec, budgets: list[int], progress: Progress,
                 size: tuple[int, int]) -> list[Config]:
    """Method ``auto`` at each budget, the last step full within it (as the node runs auto): one uncached run
    on the calibration seeds and prompts is recorded (``RecordingMethod``, the node's first run) and the choice
    for each budget made from it; the reported run uses the choice."""
    seeds, prompts = [CALIB_SEED_BASE + i for i in range(spec.seeds)], calib_prompts(spec.seeds, spec.testbed)
    recorder = RecordingMethod(spec.steps, None, CacheConfig())
    progress("recording the calibration run of auto on the calibration seeds")
    recorded = generate(model, prompts, seeds, spec.steps, spec.cfg, CacheController(recorder, AllFull()),
                        table=table, shift=spec.shift, size=size)
    cache = CacheConfig(method="auto", final_full=1)
    configs = []
    for budget in budgets:
        started = time.perf_counter()
        choice = choose(recorder.trajectory, budget, cache)
        choose_s = time.perf_counter() - started
        progress(f"auto for {budget} full steps: {choice.text()} ({choose_s:.2f} s)")
        params = {"final_full_steps": 1, "target_full_steps": budget, "chosen": choice.label,
                  "chosen_full_steps": list(choice.full_steps), "predicted_error": choice.score,
                  "predicted_even": choice.even, "scores": choice.scores, "choose_s": round(choose_s, 3),
                  "recorded_run_s": round(recorded.wall_s, 3), "recording_bytes": recorder.trajectory.nbytes}
        method = Candidate(choice.label, choice.method, choice.params)
        configs.append(Config("auto", params, budget, lambda c=choice: CacheController(*chosen(c, cache)),
                              lambda m=method: CacheController(m.build(cache), FixedSchedule(warmup=1, interval=1000))))
    return configs


def calibrate(model, table, spec: Spec, budgets: list[int], progress: Progress, size: tuple[int, int],
              label: str, make: Callable[[float, int | None], Any]) -> list[tuple[int, float, dict]]:
    """For each budget, the threshold of ``make(threshold, abort_above)`` (a cache for ``generate``) whose
    run takes that many full steps on the calibration seeds/prompts (never the reported ones).
    Returns ``(budget, threshold, params)`` with the calibration record in ``params``."""
    seeds = [CALIB_SEED_BASE + i for i in range(spec.seeds)]
    prompts = calib_prompts(spec.seeds, spec.testbed)
    found, trials = [], []  # trials are shared: every budget searches the same count-vs-threshold curve
    for budget in budgets:
        progress(f"calibrating {label} for {budget} full steps on the calibration seeds")

        def full_steps_at(threshold: float, abort_above: int | None) -> int:
            try:
                return generate(model, prompts, seeds, spec.steps, spec.cfg, make(threshold, abort_above),
                                table=table, shift=spec.shift, size=size).full_steps
            except BudgetExceeded:
                return abort_above + 1

        threshold, got, made = calibrate_threshold(full_steps_at, budget, iters=spec.calib_iters, trials=trials)
        progress(f"calibrated {label} for budget {budget}: {threshold:.4g} -> {got} full steps "
                 f"({made} calibration runs)")
        found.append((budget, threshold, {"warmup": WARMUP, "target_full_steps": budget,
                                          "calibration_full_steps": got, "calibration_runs": made}))
    return found


def calibrate_adaptive(model, table, spec: Spec, budgets: list[int], progress: Progress,
                       size: tuple[int, int]) -> list[Config]:
    """The output-space adaptive baseline, its threshold calibrated to each budget."""
    found = calibrate(model, table, spec, budgets, progress, size, "the adaptive baseline",
                      lambda t, abort: AdaptiveOutputCache(t, WARMUP, abort_above=abort))
    return [Config("adaptive", {"threshold": t, **params}, budget, lambda t=t: AdaptiveOutputCache(t, WARMUP))
            for budget, t, params in found]


def calibrate_schedules(model, table, spec: Spec, budgets: list[int], progress: Progress,
                        size: tuple[int, int]) -> list[Config]:
    """Each of ``spec.adaptive_schedule`` methods on the adaptive schedule, its tolerance calibrated to each
    budget (the schedule has no abort: it is cheap enough to run to the end)."""
    configs = []
    for name in spec.adaptive_schedule:
        def controller(tolerance: float, abort_above: int | None = None, name: str = name) -> CacheController:
            return CacheConfig(method=name, schedule="adaptive", tolerance=tolerance, warmup=WARMUP,
                               interval=ADAPTIVE_MAX_GAP).new_controller(spec.steps)

        found = calibrate(model, table, spec, budgets, progress, size, f"{name} on the adaptive schedule", controller)
        for budget, t, params in found:
            params = {"tolerance": t, "max_gap": ADAPTIVE_MAX_GAP, **params,
                      **CacheConfig(method=name).new_method(spec.steps).describe()}
            configs.append(Config(f"{name}-adaptive", params, budget, lambda t=t, c=controller: c(t)))
    return configs


# ------------------------------------------------------------------------------------------- running
def measure_flops(model, table, method_name: str, prompt: int, seed: int, spec: Spec, size: tuple[int, int],
                  guidance: float | None, full_flops: float | None = None,
                  probe: Callable[[], Any] | None = None) -> tuple[float, float]:
    """FLOPs of one full and one cached call for one sample (CFG streams included).

    A full call is the model's forward (+ an uncounted CRF copy), the same for every method, so it is
    counted once (``method_name == "none"``) and passed in as ``full_flops``; a cached call is counted
    on a short run of the method whose first steps run uncounted (``probe()``: such a method, if given)."""
    if probe is not None:
        method, steps = probe(), 2
    elif method_name == "none":
        method, steps = None, 1
    elif method_name == "adaptive":
        method, steps = AdaptiveOutputCache(1e9, warmup=2), 3
    else:  # a cached call costs the same on any schedule; FEB's skips the blocks as reuse's does
        base = "reuse" if method_name == "feb" else method_name.removesuffix("-adaptive")
        steps = 2
        method = CacheConfig(method=base, warmup=1, interval=1000).new_controller(steps)
    run = Sampling(model, [prompt], [seed], steps, spec.cfg, method, table=table, shift=spec.shift, size=size,
                   guidance=guidance)
    while run.i < steps - 1:
        run.step()
    run.count_flops = True  # only the last step: the full call for "none", a cached call otherwise
    full, cached = flops_per_sample(run.finish().call_flops, 1)
    return (full, cached) if method_name == "none" else (float(full_flops), cached)


def run_configs(model, table, spec: Spec, configs: list[Config], progress: Progress, *, size: tuple[int, int],
                seeds: list[int], prompts: list[int], guidance: float | None = None,
                fidelity_metrics: bool = True) -> tuple[list[dict], list[torch.Tensor]]:
    """Run every configuration ``spec.repeats`` times: each round advances all runs in lockstep (step ``i``
    of every configuration before step ``i + 1`` of any, in rotating order), so load changes on a shared
    machine affect them alike; the minimum wall and CPU time over rounds is kept.

    Returns the JSON rows and each run's images (same order). ``nfe_ratio`` = full steps / steps;
    ``block_fraction`` = block executions / those of the uncached run."""
    def start(method: Any) -> Sampling:
        return Sampling(model, prompts, seeds, spec.steps, spec.cfg, method, table=table, shift=spec.shift,
                        size=size, guidance=guidance)

    generate(model, prompts[:1], seeds[:1], 2, spec.cfg, None, table=table, shift=spec.shift, size=size,
             guidance=guidance)  # warm-up (allocator, kernels)
    results: list[Generation] = []
    for r in range(spec.repeats):
        progress(f"timing round {r + 1}/{spec.repeats}: {len(configs)} runs of {spec.steps} steps in lockstep")
        runs = [start(config.make()) for config in configs]
        for step in range(spec.steps):
            for k in range(len(runs)):  # rotate who goes first, so no configuration always follows another
                runs[(step + k) % len(runs)].step()
            if (step + 1) % max(1, spec.steps // 4) == 0 and step + 1 < spec.steps:
                progress(f"  step {step + 1}/{spec.steps}")
        done = [run.finish() for run in runs]
        if r == 0:
            results = done
        else:
            for best, g in zip(results, done):
                best.wall_s, best.cpu_s = min(best.wall_s, g.wall_s), min(best.cpu_s, g.cpu_s)
                best.call_times += g.call_times
    progress("counting FLOPs")
    per_call = {"none": measure_flops(model, table, "none", prompts[0], seeds[0], spec, size, guidance)}
    for config in configs:
        if config.method not in per_call:
            per_call[config.method] = measure_flops(model, table, config.method, prompts[0], seeds[0], spec, size,
                                                    guidance, full_flops=per_call["none"][0], probe=config.probe)
    ref = results[0]
    ref_flops = run_cost(ref.stats.full_calls, ref.stats.cached_calls, per_call["none"])
    ref_call_s = run_cost(ref.stats.full_calls, ref.stats.cached_calls, median_call_seconds(ref.call_times))
    runs, images = [], []
    for i, config in enumerate(configs):
        g = results[i]
        flops = run_cost(g.stats.full_calls, g.stats.cached_calls, per_call[config.method])
        run = {
            "method": config.method, "params": config.params, "budget": config.budget,
            "full_steps": g.full_steps, "cached_steps": g.stats.cached_steps,
            "nfe_ratio": g.full_steps / spec.steps,
            "block_calls": g.block_calls, "block_fraction": g.block_calls / max(ref.block_calls, 1),
            "block_ratio": g.block_calls / max(ref.block_calls, 1), "budget_ratio": config.budget / spec.steps,
            "wall_s": g.wall_s, "cpu_s": g.cpu_s,
            "speedup": ref.wall_s / g.wall_s, "cpu_speedup": ref.cpu_s / g.cpu_s,
            "ideal_speedup": spec.steps / max(g.full_steps, 1),
            "flops": flops, "flops_speedup": ref_flops / flops,
            "median_call_speedup": ref_call_s / run_cost(g.stats.full_calls, g.stats.cached_calls,
                                                          median_call_seconds(g.call_times)),
            "cache_bytes": g.cache_bytes, "timeline": g.stats.timeline(), "fallbacks": g.stats.fallbacks,
        }
        run["speedup_vs_ideal"] = run["speedup"] / run["ideal_speedup"]
        if fidelity_metrics:
            fid = fidelity(g.images, ref.images)
            run.update({k: sum(v) / len(v) for k, v in fid.items()})
            run["psnr_min"] = min(fid["psnr"])
            run["psnr_per_seed"] = fid["psnr"]
        else:
            run.update({"psnr": None, "ssim": None, "rel_l1": None})
        runs.append(run)
        images.append(g.images)
    return runs, images


def _header(spec: Spec, model_name: str, size: tuple[int, int], seeds: list[int], prompts: list[str]) -> dict:
    return {"model": model_name, "steps": spec.steps, "seeds": len(seeds), "resolution": list(size),
            "cfg": spec.cfg, "shift": spec.shift, "seed_list": seeds, "prompts": prompts,
            "repeats": spec.repeats, "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def run_testbed(spec: Spec, model, table, progress: Progress) -> tuple[dict, list[torch.Tensor]]:
    bed = get_testbed(spec.testbed)
    size = bed.size
    seeds = [REPORT_SEED_BASE + i for i in range(spec.seeds)]
    prompts = bed.report_prompts(spec.seeds)
    skipped = {}
    if "feb" in spec.methods and not bed.feb_table.exists():
        spec.methods = tuple(m for m in spec.methods if m != "feb")
        skipped["feb"] = f"no FEB-Cache table derived for the {bed.name} testbed ({bed.feb_table.name} absent)"
        progress(f"skipping feb: {skipped['feb']}")
    configs = schedule_configs(spec)
    budgets = sorted({len(FixedSchedule(WARMUP, n).full_steps(spec.steps)) for n in spec.intervals}, reverse=True)
    if "adaptive" in spec.methods:
        configs += calibrate_adaptive(model, table, spec, budgets, progress, size)
    configs += calibrate_schedules(model, table, spec, budgets, progress, size)
    if "feb" in spec.methods:
        configs += feb_configs(spec, bed.feb_table)
    configs += budgeted_configs(spec, budgets, len(model.double_blocks) + len(model.single_blocks))
    if "auto" in spec.methods:
        configs += auto_configs(model, table, spec, budgets, progress, size)
    runs, images = run_configs(model, table, spec, configs, progress, size=size, seeds=seeds, prompts=prompts)
    names = list(getattr(table, "names", []))
    result = _header(spec, "testbed", size, seeds, [names[p] if p < len(names) else str(p) for p in prompts])
    result.update({
        "testbed": bed.name, "timing_only": False, "skipped": skipped,
        "calibration": {"seeds": [CALIB_SEED_BASE + i for i in range(spec.seeds)],
                        "prompts": [names[p] if p < len(names) else str(p) for p in bed.calib_prompts(spec.seeds)]},
        "metrics_note": "float64 on images clamped to [-1, 1] and mapped to [0, 1]; SSIM: 11x11 Gaussian "
                        "(sigma 1.5), valid positions, per channel; mean over seeds; psnr null = identical",
        "flops_note": "FlopCounterMode per sample (CPU attention counted), full/cached call costs x call counts",
        "runs": runs,
    })
    return result, images


FLUX_TIMING = dict(in_channels=3, out_channels=3, vec_in_dim=64, context_in_dim=64, hidden_size=512,
                   mlp_ratio=4.0, num_heads=8, depth=2, depth_single_blocks=6, axes_dim=[16, 24, 24],
                   theta=10_000, patch_size=2, qkv_bias=True, guidance_embed=True)


def run_flux_timing(spec: Spec, progress: Progress, model=None) -> tuple[dict, list[torch.Tensor]]:
    from .testbed.data import PromptTable
    from .testbed.model import TinyFlux, TinyFluxConfig
    size, text_tokens = (64, 64), 64
    config = TinyFluxConfig(**FLUX_TIMING)
    if model is None:
        torch.manual_seed(0)
        model = randomize(TinyFlux(config), seed=0).eval().requires_grad_(False)
    table = PromptTable.create([f"prompt {i}" for i in range(4)], text_tokens, model.config.context_in_dim,
                               model.config.vec_in_dim, seed=0).requires_grad_(False)
    spec.cfg = 1.0
    spec.methods = ("freqca",)
    configs = schedule_configs(spec)
    seeds = [REPORT_SEED_BASE + i for i in range(spec.seeds)]
    runs, images = run_configs(model, table, spec, configs, progress, size=size, seeds=seeds,
                               prompts=[0] * len(seeds), guidance=3.5, fidelity_metrics=False)
    p = model.config.patch_size
    result = _header(spec, "flux-timing", size, seeds, ["random"] * len(seeds))
    result.update({"timing_only": True, "note": report.TIMING_NOTE, "model_config": asdict(model.config),
                   "image_tokens": (size[0] // p) * (size[1] // p), "text_tokens": text_tokens,
                   "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
                   "params": sum(t.numel() for t in model.parameters()), "runs": runs})
    return result, images


# ----------------------------------------------------------------------------------------------- CLI
def load_testbed_model(name: str = "shapes"):
    """The shipped trained testbed ``name`` (model, prompt table) on the CPU."""
    return get_testbed(name).load("cpu")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m freqca_lab.bench", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="28 steps, 2 seeds, N = 3 and 6, one timing round (under a minute)")
    p.add_argument("--steps", type=int, help="sampler steps (default 50; --quick 28)")
    p.add_argument("--seeds", type=int, help="held-out seeds (default 4; --quick 2; flux-timing 1)")
    p.add_argument("--intervals", type=str, help="comma-separated full-step intervals (default 3,4,6,9)")
    p.add_argument("--repeats", type=int, help="interleaved timing rounds, min kept (default 2; --quick 1)")
    p.add_argument("--methods", type=str,
                   help="comma-separated rows to run besides the uncached one (default: all): "
                        + ", ".join(all_rows(Spec())))
    p.add_argument("--json", type=Path, help="also write the result JSON here")
    p.add_argument("--out", type=Path, default=Path("bench_out"), help="output folder (default bench_out/)")
    p.add_argument("--model", choices=("testbed", "flux-timing"), default="testbed")
    add_testbed_argument(p)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: reproducible ratios; with several threads a busy machine "
                        "makes OpenMP barriers stall and timings swing by 10x; 0 = torch's default)")
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    return p.parse_args(argv)


def all_rows(spec: Spec) -> list[str]:
    """Every row name ``--methods`` accepts."""
    return (list(spec.methods) + [f"{m}-adaptive" for m in ("freqca", "reuse")] + list(BUDGETED))


def restrict(spec: Spec, names: str) -> None:
    """Keep only the rows named in ``names`` (comma-separated; see ``all_rows``)."""
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in all_rows(spec)]
    if unknown or not chosen:
        raise SystemExit(f"--methods: unknown {', '.join(unknown) or '(empty)'}; "
                         f"allowed: {', '.join(all_rows(spec))}")
    spec.methods = tuple(n for n in spec.methods if n in chosen)
    spec.adaptive_schedule = tuple(m for m in ("freqca", "reuse") if f"{m}-adaptive" in chosen)
    spec.budgeted = tuple(n for n in BUDGETED if n in chosen)


def spec_from_args(args: argparse.Namespace) -> Spec:
    spec = Spec(model=args.model, testbed=args.testbed)
    if args.quick:
        spec.steps, spec.seeds, spec.intervals, spec.repeats, spec.calib_iters = 28, 2, (3, 6), 1, 8
        spec.adaptive_schedule = ("freqca",)
    if args.model == "flux-timing":
        spec.seeds = 1
    if args.steps is not None:
        spec.steps = args.steps
    if args.seeds is not None:
        spec.seeds = args.seeds
    if args.intervals:
        spec.intervals = tuple(int(n) for n in args.intervals.split(","))
    if args.repeats is not None:
        spec.repeats = args.repeats
    if args.methods:
        restrict(spec, args.methods)
    if spec.steps < 1 or spec.seeds < 1 or spec.repeats < 1:
        raise SystemExit("--steps, --seeds and --repeats must be >= 1")
    return spec


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        return _main(args)
    finally:
        torch.set_num_threads(threads)


def _main(args: argparse.Namespace) -> dict:
    spec = spec_from_args(args)
    progress = Progress(not args.no_progress)
    start = time.perf_counter()
    if spec.model == "flux-timing":
        result, images = run_flux_timing(spec, progress)
    else:
        model, table = load_testbed_model(spec.testbed)
        result, images = run_testbed(spec, model, table, progress)
    result["wall_total_s"] = time.perf_counter() - start
    table_md = report.markdown_table(result)
    print(table_md)
    if args.json:
        report.write_json(result, args.json)
    if args.out:
        report.write_outputs(result, images, args.out, table_md)
    progress(f"done in {result['wall_total_s']:.1f}s")
    return result


if __name__ == "__main__":
    main()
