"""Search: CRF-level configurations against per-layer baselines at equal block-execution budgets.

``python -m freqca_lab.measure_perlayer [--steps 50] [--seeds 4] [--calibration] [--json PATH]
[--testbed shapes|photos]``

For each full-step budget ``B`` (the benchmark's: warm-up 3 and N = 3, 4, 6, 9) every method runs on a
family of schedules with at most ``B`` full steps (``spread_schedule``: ``warmup`` first steps, ``final``
last steps, the rest spread evenly in between); each method's best PSNR per budget is printed. Methods
whose cached steps run blocks (DBCache) get as many full steps as fit in ``B`` times the block count.
``--calibration`` uses the benchmark's calibration seeds and prompts instead of the reported ones.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

from freqca_core.controller import CacheController
from freqca_core.forecast import ReuseForecaster, TaylorForecaster
from freqca_core.methods import ForecastMethod
from freqca_core.methods.base import EmbeddingResidual
from freqca_core.methods.freqca import FreqCaMethod
from freqca_core.methods.restaylor import ResidualBandTaylorMethod, ResidualTaylorMethod
from freqca_core.schedule import FixedSchedule
from freqca_core.spectral import BandSplitter

from . import bench
from .metrics import fidelity
from .perlayer import DBCache, PerLayerTaylorSeer, spread_schedule, taylorseer_weights
from .runner import generate
from .testbed.sampling import flux_sigmas
from .testbed.testbeds import add_testbed_argument, get_testbed

STEPS = [50]  # the run length of the search (step-unit forecasters map sigmas to steps with it)


def budgets(steps: int) -> list[int]:
    return sorted({len(FixedSchedule(warmup=3, interval=n).full_steps(steps)) for n in (3, 4, 6, 9)}, reverse=True)


class SeriesForecaster(TaylorForecaster):
    """TaylorSeer's series (recursive backward differences, ``x^i / i!``) in sigma, on the CRF."""

    name = "series"

    def weights(self, sigmas, sigma, step_size):
        used = taylorseer_weights(list(sigmas[: self.needs]), sigma, self.order)
        return used + [0.0] * (len(sigmas) - len(used))


class StepSeriesForecaster(TaylorForecaster):
    """TaylorSeer's series in sampler steps (sigmas mapped to their step in ``sigmas``), on the CRF."""

    name = "step-series"

    def __init__(self, order: int, sigmas) -> None:
        super().__init__(order)
        self.sigmas = [float(s) for s in sigmas]

    def step(self, sigma: float) -> int:
        return min(range(len(self.sigmas)), key=lambda i: abs(self.sigmas[i] - sigma))

    def weights(self, sigmas, sigma, step_size):
        used = taylorseer_weights([self.step(s) for s in sigmas[: self.needs]], self.step(sigma), self.order)
        return used + [0.0] * (len(sigmas) - len(used))


class ResidualBands(EmbeddingResidual, FreqCaMethod):
    """Per-band forecasters on ``crf - embedding`` (the current embedding added back at cached steps)."""


def crf(name: str, forecaster, residual: bool = False):
    """The whole CRF (or, with ``residual``, ``crf - embedding``) from one forecaster."""
    if residual:
        return banded(forecaster, forecaster, residual=True)
    return lambda s: CacheController(ForecastMethod(name, forecaster), s)


def banded(low, high, residual: bool = False):
    """Low and high band (DCT, cutoff 0.1) from their own forecasters."""
    cls = ResidualBands if residual else FreqCaMethod
    return lambda s: CacheController(cls(BandSplitter(0.1, "dct"), high, low), s)


METHODS: dict[str, Callable[[Any], Any]] = {
    "res-taylor-1": lambda s: CacheController(ResidualTaylorMethod(1), s),
    "res-taylor-2": lambda s: CacheController(ResidualBandTaylorMethod(BandSplitter(0.1, "dct"), 2), s),
    "taylorseer-1": lambda s: PerLayerTaylorSeer(s, 1),
    "taylorseer-2": lambda s: PerLayerTaylorSeer(s, 2),
    "taylorseer-2-exact": lambda s: PerLayerTaylorSeer(s, 2, exact=True),
    "dbcache-F1-1": lambda s: DBCache(s, 1, front=1),
    "crf-taylor-1": crf("taylor", TaylorForecaster(1)),
    "crf-taylor-2": crf("taylor", TaylorForecaster(2)),
    "crf-taylor-1-res": crf("taylor", TaylorForecaster(1), residual=True),
    "crf-series-2": crf("series", SeriesForecaster(2)),
    "crf-series-2-res": crf("series", SeriesForecaster(2), residual=True),
    "crf-low-s2-high-s1": banded(SeriesForecaster(2), SeriesForecaster(1)),
    "crf-low-s2-high-0": banded(SeriesForecaster(2), ReuseForecaster()),
    "crf-low-t2-high-s2": banded(TaylorForecaster(2), SeriesForecaster(2)),
    "crf-stepseries-2": lambda s: crf("series", StepSeriesForecaster(2, flux_sigmas(STEPS[0], bench.SHIFT)))(s),
    "crf-low-t2-high-ss2": lambda s: banded(TaylorForecaster(2),
                                            StepSeriesForecaster(2, flux_sigmas(STEPS[0], bench.SHIFT)))(s),
    "crf-low1-high0": banded(TaylorForecaster(1), ReuseForecaster()),
    "crf-low2-high1": banded(TaylorForecaster(2), TaylorForecaster(1)),
    "crf-low1-high1-res": banded(TaylorForecaster(1), TaylorForecaster(1), residual=True),
    "crf-low2-high1-res": banded(TaylorForecaster(2), TaylorForecaster(1), residual=True),
    "crf-low-t2-high-s2-res": banded(TaylorForecaster(2), SeriesForecaster(2), residual=True),
}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m freqca_lab.measure_perlayer")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--calibration", action="store_true")
    p.add_argument("--methods", type=str, default="taylorseer-1,taylorseer-2,dbcache-F1-1,res-taylor-1,res-taylor-2",
                   help=f"comma-separated, from: {', '.join(METHODS)}")
    p.add_argument("--warmups", type=str, default="1,2,3")
    p.add_argument("--finals", type=str, default="0,1,2")
    p.add_argument("--gammas", type=str, default="1")
    p.add_argument("--budgets", type=str, help="comma-separated full-step budgets (default: the benchmark's)")
    p.add_argument("--json", type=Path)
    add_testbed_argument(p)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    STEPS[0] = args.steps
    model, table = bench.load_testbed_model(args.testbed)
    size = get_testbed(args.testbed).size
    base = bench.CALIB_SEED_BASE if args.calibration else bench.REPORT_SEED_BASE
    seeds = [base + i for i in range(args.seeds)]
    prompts = (bench.calib_prompts if args.calibration else bench.report_prompts)(args.seeds, args.testbed)
    ref = generate(model, prompts, seeds, args.steps, bench.CFG, None, table=table, shift=bench.SHIFT, size=size)
    n_blocks = ref.block_calls // args.steps
    rows = []
    for name in args.methods.split(","):
        make = METHODS[name]
        chosen = [int(b) for b in args.budgets.split(",")] if args.budgets else budgets(args.steps)
        for budget in chosen:
            best = None
            for warmup in (int(w) for w in args.warmups.split(",")):
                for final, gamma in ((int(f), float(g)) for f in args.finals.split(",")
                                     for g in args.gammas.split(",")):
                    n_full = budget
                    if name.startswith("dbcache"):  # front block at cached steps: fewer full steps fit
                        front = 1
                        n_full = (budget * n_blocks - args.steps * front) // (n_blocks - front)
                    if n_full < warmup + final or n_full < 1:
                        continue
                    sched = spread_schedule(args.steps, n_full, warmup, final, gamma)
                    t = time.perf_counter()
                    g = generate(model, prompts, seeds, args.steps, bench.CFG, make(sched), table=table,
                                 shift=bench.SHIFT, size=size)
                    psnr = sum(fidelity(g.images, ref.images)["psnr"]) / len(seeds)
                    row = {"method": name, "budget": budget, "warmup": warmup, "final": final, "gamma": gamma,
                           "full_steps": g.full_steps, "block_ratio": g.block_calls / ref.block_calls,
                           "psnr": psnr, "cache_bytes": g.cache_bytes, "s": time.perf_counter() - t}
                    rows.append(row)
                    if row["block_ratio"] <= budget / args.steps + 1e-9 and (best is None or psnr > best["psnr"]):
                        best = row
            if best:
                print(f"{name:22s} B={budget:2d} best {best['psnr']:6.2f} dB (w={best['warmup']} f={best['final']} "
                      f"g={best['gamma']} "
                      f"full={best['full_steps']} ratio={best['block_ratio']:.3f})", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return {"rows": rows}


if __name__ == "__main__":
    main()
