"""How well calibration (method ``auto``) chooses on the testbed: ``python3 -m freqca_lab.measure_auto
[--steps 50] [--intervals 3 4 6 9] [--seeds 2] [--report-seeds 16] [--threads 1] [--gap-slack K]
[--noise-weighted] [--no-compounding] [--json PATH] [--testbed shapes|photos]``.

One uncached run on ``--seeds`` of the benchmark's calibration seeds and prompts is recorded
(``RecordingMethod``, the node's first run); at each budget (the full-step count of the fixed schedule, warm-up
3, at each interval) every candidate is scored open loop on three placements of the full steps, the last step
full in each (as the node runs auto): evenly spaced, regular (every N steps) and searched (``best_placement``).
Each (candidate, placement) is then run closed loop on ``--report-seeds`` reported seeds and prompts and its
PSNR measured against the uncached images. Printed per budget: the Spearman rank correlation of score and PSNR
over those runs and over the even placements alone, ``auto``'s PSNR (the candidate and the better scored of the
even and regular placements, as the node runs it; and with the searched placements), the brute-force best over
these configurations twice — the best mean PSNR of all runs (picked and measured on the same seeds, so it
gains from their noise) and held out (picked on one half of the reported seeds, measured on the other, both
ways, averaged) —, the node's fixed default (res-taylor order 1, warm-up 1, every N steps, last step full, the
smallest N that fits the budget) with the standard error of ``auto`` minus it (paired over the seeds), the
better of per-layer TaylorSeer order 1 and 2 (warm-up 1, the last step full, the rest spread, as in the
benchmark), the paper's FreqCa (warm-up 3, every N), each placement's mean PSNR over the candidates, and the
calibration's time and recorded memory against the uncached run.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from freqca_core import CacheConfig, CacheController, FixedSchedule
from freqca_core.calibration import calibrate, score_candidates
from freqca_core.methods.auto import AllFull, RecordingMethod
from freqca_core.methods.frdiff import GateSchedule

from .bench import CALIB_SEED_BASE, CFG, REPORT_SEED_BASE, SHIFT, WARMUP, node_default
from .perlayer import PerLayerTaylorSeer, spread_schedule
from .metrics import fidelity
from .report import write_json
from .runner import generate
from .testbed.testbeds import add_testbed_argument, get_testbed


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    def ranks(xs: list[float]) -> list[float]:
        order = sorted(range(len(xs)), key=lambda i: xs[i])
        out = [0.0] * len(xs)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return cov / var if var else float("nan")


def measured(row: dict, per_seed: list[float]) -> dict:
    """``row`` with its reported seeds' PSNRs and their mean ``psnr``."""
    return {**row, "psnr": sum(per_seed) / len(per_seed), "psnr_per_seed": per_seed}


def held_out_best(rows: list[dict]) -> dict:
    """Brute force without the reported seeds' luck: the row with the best mean PSNR on one half of the seeds
    (even and odd positions), measured on the other half; both ways, ``psnr`` their mean, ``picks`` the rows."""
    seeds = len(rows[0]["psnr_per_seed"])
    halves = [list(range(0, seeds, 2)), list(range(1, seeds, 2))]
    if not halves[1]:
        raise ValueError("the held-out best needs at least 2 reported seeds")

    def mean_on(row: dict, half: list[int]) -> float:
        return sum(row["psnr_per_seed"][i] for i in half) / len(half)

    picks = [max(rows, key=lambda r: mean_on(r, pick_on)) for pick_on in halves]
    values = [mean_on(row, halves[1 - k]) for k, row in enumerate(picks)]
    return {"psnr": sum(values) / 2, "picks": [f"{r['candidate']}/{r['placement']}" for r in picks]}


def paired_difference(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean of ``a - b`` over paired seeds and its standard error (0 for one seed)."""
    d = [x - y for x, y in zip(a, b)]
    return statistics.fmean(d), statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else 0.0


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--intervals", type=int, nargs="+", default=[3, 4, 6, 9])
    parser.add_argument("--seeds", type=int, default=2, help="calibration seeds (the recorded run's batch)")
    parser.add_argument("--report-seeds", type=int, default=16, help="reported seeds (even: halves for held out)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gap-slack", type=int, default=None,
                        help="search gaps of at most ceil(steps / full steps) + this (default: default_max_gap)")
    parser.add_argument("--noise-weighted", action="store_true", help="weigh cached steps by their noise level")
    parser.add_argument("--no-compounding", action="store_true",
                        help="count a cached step's cost once (not until the next full step)")
    parser.add_argument("--json", type=str, default=None)
    add_testbed_argument(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    bed = get_testbed(args.testbed)
    model, table = bed.load("cpu")
    n = args.steps

    def run(prompts, seeds, controller):
        return generate(model, prompts, seeds, n, CFG, controller, table=table, shift=SHIFT, size=bed.size)

    def psnr_of(images) -> list[float]:
        return fidelity(images, reference)["psnr"]

    calib = ([CALIB_SEED_BASE + i for i in range(args.seeds)], bed.calib_prompts(args.seeds))
    report = ([REPORT_SEED_BASE + i for i in range(args.report_seeds)], bed.report_prompts(args.report_seeds))
    recorder = RecordingMethod(n, None, CacheConfig())
    uncached_calib = run(calib[1], calib[0], None)
    recorded = run(calib[1], calib[0], CacheController(recorder, AllFull()))
    trajectory = recorder.trajectory
    reference = run(report[1], report[0], None).images
    result = {"testbed": bed.name, "steps": n, "seeds": args.seeds, "report_seeds": args.report_seeds,
              "threads": args.threads,
              "recording_mb": round(trajectory.nbytes / 2 ** 20, 2),
              "uncached_s": round(uncached_calib.wall_s, 2), "recorded_s": round(recorded.wall_s, 2),
              "budgets": []}
    print(f"calibration run: {recorded.wall_s:.2f} s recorded vs {uncached_calib.wall_s:.2f} s uncached; "
          f"recording {result['recording_mb']} MB (fp16)")
    base = CacheConfig(final_full=1)  # as the node runs auto: the last step full
    for interval in args.intervals:
        budget = len(FixedSchedule(WARMUP, interval).full_steps(n))
        started = time.perf_counter()
        choice = calibrate(trajectory, budget, base)
        choose_s = time.perf_counter() - started
        gap = None if args.gap_slack is None else math.ceil(n / budget) + args.gap_slack
        scored = score_candidates(trajectory, budget, base, placement="searched", max_gap=gap,
                                  noise_weighted=args.noise_weighted, compounding=not args.no_compounding)
        rows = []
        for s in scored:
            for kind, (steps, score) in s.placements.items():
                controller = CacheController(s.candidate.build(base), GateSchedule.from_steps(steps, n))
                rows.append(measured({"candidate": s.candidate.label, "placement": kind, "full_steps": list(steps),
                                      "score": score}, psnr_of(run(report[1], report[0], controller).images)))
        def row_of(chosen) -> dict:
            return next(r for r in rows
                        if r["candidate"] == chosen.label and r["full_steps"] == list(chosen.full_steps))

        auto = row_of(choice)
        auto_searched = row_of(calibrate(trajectory, budget, base, placement="searched"))
        best = max(rows, key=lambda r: r["psnr"])
        node = node_default(budget, n)
        default = measured({"schedule": node.schedule.label}, psnr_of(run(report[1], report[0], node).images))
        per_layer = max((measured({"order": order}, psnr_of(run(report[1], report[0], PerLayerTaylorSeer(
            spread_schedule(n, budget, 1, 1), order)).images)) for order in (1, 2)), key=lambda r: r["psnr"])
        paper = measured({"schedule": FixedSchedule(WARMUP, interval).label}, psnr_of(run(report[1], report[0], (
            CacheConfig(warmup=WARMUP, interval=interval).new_controller(n))).images))
        rho = spearman([-r["score"] for r in rows], [r["psnr"] for r in rows])
        evens = [r for r in rows if r["placement"] == "even"]
        rho_even = spearman([-r["score"] for r in evens], [r["psnr"] for r in evens])
        kinds = dict.fromkeys(r["placement"] for r in rows)
        placement_db = {k: sum(r["psnr"] for r in rows if r["placement"] == k) / len(scored) for k in kinds}
        heldout = held_out_best(rows)
        gap_default, gap_se = paired_difference(auto["psnr_per_seed"], default["psnr_per_seed"])
        entry = {"interval": interval, "budget": budget, "spearman": rho, "spearman_even": rho_even,
                 "choose_s": round(choose_s, 3), "auto": auto, "auto_searched": auto_searched, "best": best,
                 "best_held_out": heldout,
                 "auto_minus_default_db": gap_default, "auto_minus_default_se": gap_se, "node_default": default,
                 "per_layer_best": per_layer,
                 "paper_freqca": paper, "rows": rows,
                 "placement_mean_db": placement_db}
        result["budgets"].append(entry)
        print(f"{budget} full steps (interval {interval}): spearman {rho:+.2f} (even placements {rho_even:+.2f}); "
              f"auto {auto['candidate']} {auto['psnr']:.2f} dB (searched placement: {auto_searched['candidate']} "
              f"{auto_searched['psnr']:.2f} dB); best {best['candidate']}/{best['placement']} "
              f"{best['psnr']:.2f} dB (held out {heldout['psnr']:.2f} dB); node default {default['psnr']:.2f} dB "
              f"(auto - default {gap_default:+.2f} +- {gap_se:.2f} dB); per-layer TaylorSeer order "
              f"{per_layer['order']} {per_layer['psnr']:.2f} dB; paper's FreqCa {paper['psnr']:.2f} dB; "
              f"mean over candidates {', '.join(f'{k} {v:.2f}' for k, v in placement_db.items())} dB; "
              f"choosing took {choose_s:.3f} s")
        for r in sorted(rows, key=lambda r: -r["psnr"]):
            print(f"    {r['candidate']:20s} {r['placement']:8s} score {r['score']:.4f}  PSNR {r['psnr']:.2f}  "
                  f"{r['full_steps']}")
    if args.json:
        write_json(result, args.json)
    return result


if __name__ == "__main__":
    main()
