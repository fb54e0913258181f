"""Would a semi-closed-loop score choose better than ``auto``'s open-loop one? ``python3 -m freqca_lab.measure_replay
[--testbed shapes|photos] [--steps 50] [--budgets 18 14 10 8] [--seeds 2] [--json PATH]``.

A research probe for issue 16, not used by the node. The uncached run on the calibration seeds and prompts records,
per step, what the blocks add to the image rows (``crf - embedding``, full size). A *replay* then samples each
candidate configuration (method x placement: spread, regular, searched, the benchmark's spread steps; the last step
full) with only the cheap parts of the model: the embedding of the current input and the final layer run for real,
and the blocks' contribution at a full step is the recorded one (at a cached step the method forecasts it as usual).
So the drift of the input through the run is simulated, which the open-loop score cannot see, while the blocks'
response to that drift is not. Printed per budget: the rank correlation of replay PSNR and true PSNR on the
calibration images, and on the reported seeds the PSNR of the replay's pick, of ``auto``'s pick (open loop, as the
node chooses), of the best of these configurations and of the node's fixed default.
"""
from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn

from freqca_core import CacheConfig, CacheController
from freqca_core.calibration import CANDIDATES, calibrate, score_candidates
from freqca_core.methods.auto import AllFull, RecordingMethod
from freqca_core.methods.frdiff import GateSchedule

from .bench import CALIB_SEED_BASE, CFG, REPORT_SEED_BASE, SHIFT, node_default
from .measure_auto import spearman
from .metrics import fidelity
from .report import write_json
from .perlayer import spread_steps
from .runner import generate
from .testbed.testbeds import add_testbed_argument, get_testbed

METHODS = ("res-taylor order 1", "res-taylor order 2", "taylor order 1", "reuse", "frdiff")


class BlockReplay(nn.Module):
    """The testbed model whose blocks add what they added in a recorded run (``replay``) or record it (not
    ``replay``): ``run_blocks(e) = e.img + added[sigma]``, ``added`` ``[B, L, D]`` per sigma."""

    def __init__(self, model: nn.Module, replay: bool = False, added: dict | None = None) -> None:
        super().__init__()
        self.model, self.replay = model, replay
        self.added: dict[float, Tensor] = {} if added is None else added
        self.double_blocks, self.single_blocks = model.double_blocks, model.single_blocks
        self.sigma = 0.0  # of the call in flight (calls are sequential)

    def embed(self, x: Tensor, sigma: Tensor, *args):
        self.sigma = round(float(sigma[0]), 6)
        return self.model.embed(x, sigma, *args)

    def run_blocks(self, embedded, attention_override=None) -> Tensor:
        if self.replay:
            return embedded.img + self.added[self.sigma]
        crf = self.model.run_blocks(embedded, attention_override=attention_override)
        self.added[self.sigma] = (crf - embedded.img).detach()
        return crf

    def final(self, crf: Tensor, embedded) -> Tensor:
        return self.model.final(crf, embedded)

    def forward(self, x: Tensor, sigma: Tensor, context: Tensor, y: Tensor, guidance: Tensor | None = None) -> Tensor:
        embedded = self.embed(x, sigma, context, y, guidance)
        return self.final(self.run_blocks(embedded), embedded)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--budgets", type=int, nargs="+", default=[18, 14, 10, 8])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--json", type=str, default=None)
    add_testbed_argument(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    bed = get_testbed(args.testbed)
    model, table = bed.load("cpu")
    n, base = args.steps, CacheConfig(final_full=1)
    calib = [CALIB_SEED_BASE + i for i in range(args.seeds)], bed.calib_prompts(args.seeds)
    report = [REPORT_SEED_BASE + i for i in range(args.seeds)], bed.report_prompts(args.seeds)

    def run(net, images, controller) -> Tensor:
        return generate(net, images[1], images[0], n, CFG, controller, table=table, shift=SHIFT, size=bed.size).images

    def psnr(images: Tensor, reference: Tensor) -> float:
        return sum(fidelity(images, reference)["psnr"]) / args.seeds

    recorder = BlockReplay(model)
    calib_reference = run(recorder, calib, None)
    replay = BlockReplay(model, replay=True, added=recorder.added)
    recording = RecordingMethod(n, None, CacheConfig())
    run(model, calib, CacheController(recording, AllFull()))
    report_reference = run(model, report, None)
    candidates = [c for c in CANDIDATES if c.label in METHODS]
    result = {"testbed": bed.name, "steps": n, "seeds": args.seeds, "budgets": []}
    for budget in args.budgets:
        rows = []
        for s in score_candidates(recording.trajectory, budget, base, candidates, placement="searched"):
            placed = {kind: steps for kind, (steps, _) in s.placements.items()}
            for kind, steps in (*placed.items(), ("spread", tuple(spread_steps(n, budget, 1, 1)))):
                def controller(c=s.candidate, steps=steps) -> CacheController:
                    return CacheController(c.build(base), GateSchedule.from_steps(steps, n))
                rows.append({"candidate": s.candidate.label, "placement": kind, "full_steps": list(steps),
                             "replay": psnr(run(replay, calib, controller()), calib_reference),
                             "true": psnr(run(model, calib, controller()), calib_reference),
                             "reported": psnr(run(model, report, controller()), report_reference)})
        pick = max(rows, key=lambda r: r["replay"])
        chosen = calibrate(recording.trajectory, budget, base, candidates)
        auto = next(r for r in rows if r["candidate"] == chosen.label and r["full_steps"] == list(chosen.full_steps))
        best = max(rows, key=lambda r: r["reported"])
        node = node_default(budget, n)
        entry = {"budget": budget, "spearman_calibration": spearman([r["replay"] for r in rows], [r["true"] for r in rows]),
                 "replay_pick": pick, "auto_pick": auto, "best": best,
                 "node_default": psnr(run(model, report, node), report_reference), "rows": rows}
        result["budgets"].append(entry)
        print(f"{bed.name}, {budget}/{n} full: replay vs true on the calibration images rho "
              f"{entry['spearman_calibration']:+.2f}; reported seeds: replay's pick {pick['candidate']}/"
              f"{pick['placement']} {pick['reported']:.2f} dB, auto's {auto['candidate']} {auto['reported']:.2f}, "
              f"best {best['candidate']}/{best['placement']} {best['reported']:.2f}, node default "
              f"{entry['node_default']:.2f}", flush=True)
    if args.json:
        write_json(result, args.json)
    return result


if __name__ == "__main__":
    main()
