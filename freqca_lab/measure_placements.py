"""Out of sample for ``auto``: its two placements against the fixed default over many budgets. ``python3 -m
freqca_lab.measure_placements [--testbed shapes|photos] [--plan 50:6,7,9 40:8,12 ...] [--report-seeds 16]
[--json PATH]``.

``measure_auto`` measures four budgets at 50 steps and two at 28, the ones its decisions were studied on. This
probe measures budgets and step counts it did not see (default: 13 budgets at 50 steps, 7 at 40, 6 at 20): per
step count one calibration run on the benchmark's two calibration seeds and prompts (as the node's first run);
per budget ``auto``'s choice with the default placement (``uniform``: the better scored of the spread and the
regular full steps) and with ``placement="searched"`` (dynamic programming on the score), and the node's fixed
default (``res-taylor`` order 1, warm-up 1, every N steps, last step full, the smallest N that fits the budget),
each run closed loop on the reported seeds and prompts with its PSNR against the uncached images. Printed per
budget and summarised per testbed: the mean PSNR of each, the mean difference to the fixed default and the
number of budgets where it is more than 0.5 dB below it.
"""
from __future__ import annotations

import argparse
import statistics

import torch

from freqca_core import CacheConfig, CacheController
from freqca_core.calibration import Choice, calibrate
from freqca_core.methods.auto import AllFull, RecordingMethod, chosen

from .bench import CALIB_SEED_BASE, CFG, REPORT_SEED_BASE, SHIFT, node_default
from .metrics import fidelity
from .report import write_json
from .runner import generate
from .testbed.testbeds import add_testbed_argument, get_testbed

DEFAULT_PLAN = {50: [6, 7, 9, 11, 12, 13, 15, 16, 17, 19, 20, 22, 24], 40: [6, 8, 10, 12, 14, 16, 18],
                20: [5, 6, 7, 8, 9, 10]}
KINDS = ("uniform", "searched", "default")
LOSS_DB = 0.5  # a budget counts as a loss when more than this below the fixed default


def parse_plan(items: list[str]) -> dict[int, list[int]]:
    """``["50:6,7", "20:5"]`` -> ``{50: [6, 7], 20: [5]}``; ValueError naming the bad item."""
    plan = {}
    for item in items:
        head, _, tail = item.partition(":")
        try:
            steps, budgets = int(head), [int(b) for b in tail.split(",")]
        except ValueError:
            raise ValueError(f"--plan items are STEPS:BUDGET,BUDGET,... (integers), got {item!r}") from None
        if not all(1 <= b <= steps for b in budgets):
            raise ValueError(f"--plan {item!r}: budgets must lie in 1..{steps}")
        plan[steps] = budgets
    return plan


def summary(entries: list[dict]) -> dict:
    """Per kind: mean PSNR over the budgets, mean difference to the fixed default and the budgets more than
    ``LOSS_DB`` below it."""
    out = {}
    for kind in KINDS:
        diffs = [e[kind]["psnr"] - e["default"]["psnr"] for e in entries]
        out[kind] = {"mean_db": statistics.fmean(e[kind]["psnr"] for e in entries),
                     "minus_default_db": statistics.fmean(diffs),
                     "losses": [f"{e['budget']}/{e['steps']}" for e, d in zip(entries, diffs) if d < -LOSS_DB]}
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plan", nargs="+", default=None, help="STEPS:BUDGET,BUDGET,... (default: see above)")
    parser.add_argument("--report-seeds", type=int, default=16)
    parser.add_argument("--json", type=str, default=None)
    add_testbed_argument(parser)
    args = parser.parse_args(argv)
    plan = DEFAULT_PLAN if args.plan is None else parse_plan(args.plan)
    torch.set_num_threads(1)
    bed = get_testbed(args.testbed)
    model, table = bed.load("cpu")
    base = CacheConfig(final_full=1)  # as the node runs auto: the last step full
    report = [REPORT_SEED_BASE + i for i in range(args.report_seeds)], bed.report_prompts(args.report_seeds)
    entries = []
    for n, budgets in plan.items():
        def run(images, controller) -> torch.Tensor:
            return generate(model, images[1], images[0], n, CFG, controller, table=table, shift=SHIFT,
                            size=bed.size).images

        recorder = RecordingMethod(n, None, CacheConfig())
        run(([CALIB_SEED_BASE, CALIB_SEED_BASE + 1], bed.calib_prompts(2)), CacheController(recorder, AllFull()))
        reference = run(report, None)

        def measured(controller: CacheController) -> dict:
            per_seed = fidelity(run(report, controller), reference)["psnr"]
            return {"psnr": statistics.fmean(per_seed), "psnr_per_seed": per_seed}

        def run_choice(choice: Choice) -> dict:
            return {"candidate": choice.label, "full_steps": list(choice.full_steps),
                    **measured(CacheController(*chosen(choice, base)))}

        for budget in budgets:
            uniform = run_choice(calibrate(recorder.trajectory, budget, base))
            searched = calibrate(recorder.trajectory, budget, base, placement="searched")
            same = (searched.label, list(searched.full_steps)) == (uniform["candidate"], uniform["full_steps"])
            node = node_default(budget, n)
            default = {"schedule": node.schedule.label, **measured(node)}
            entry = {"steps": n, "budget": budget, "uniform": uniform,
                     "searched": uniform if same else run_choice(searched), "default": default}
            entries.append(entry)
            print(f"{bed.name} {budget}/{n} full: " + ", ".join(f"{k} {entry[k]['psnr']:.2f}" for k in KINDS)
                  + f" dB; searched steps {list(searched.full_steps)}", flush=True)
    result = {"testbed": bed.name, "report_seeds": args.report_seeds, "budgets": entries,
              "summary": summary(entries)}
    print("\n".join(f"{bed.name} {kind}: mean {s['mean_db']:.2f} dB, {s['minus_default_db']:+.2f} dB vs the "
                    f"fixed default, more than {LOSS_DB} dB below it at {len(s['losses'])}/{len(entries)} "
                    f"({', '.join(s['losses']) or 'none'})" for kind, s in result["summary"].items()))
    if args.json:
        write_json(result, args.json)
    return result


if __name__ == "__main__":
    main()
