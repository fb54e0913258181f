"""FEB-Cache probe on a testbed: ``python -m freqca_lab.febprobe [--steps 28 50] [--seeds 4] [--out PATH]
[--testbed shapes|photos]``.

1. Samples the trained TinyFlux (calibration prompts and seeds of ``bench``, CFG 3, shift 2, the testbed's size) and
   records, per step, every block's attention-kernel output (through the model's attention override) and
   MLP output (forward hooks: ``img_mlp`` of the double blocks; for the single blocks the MLP branch's share
   of ``linear2``), image tokens only.
2. Per block and step: energy share of the low DCT band over the token grid (``BandSplitter``),
   relative change between consecutive steps in the low band, the high band and overall. Prints a summary
   (is attention low-frequency and slow, MLP high-frequency and fast, on this model?).
3. Derives a table per level (``feb.derive_table``) for each step count and writes them, with the
   measurement summary, to the testbed's ``feb_table.json`` (``Testbed.feb_table``).
4. Exposure bias: a simple cache (CRF reused at every other step) with the flow ``exposure_scale`` at the
   cached steps, PSNR against uncached for several deltas; and the derived tables run end to end through
   the ``CacheController`` (``FEBMethod``: attention kernels served at ``attn`` steps, the last computed
   block residuals at ``skip`` steps).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any, Sequence

import torch
from torch import Tensor

from freqca_core import CacheConfig, CacheController, ReuseForecaster
from freqca_core.methods.base import ForecastMethod
from freqca_core.methods.feb import LEVELS, CacheTable, exposure_scale
from freqca_core.schedule import FixedSchedule
from freqca_core.spectral import BandSplitter, TokenLayout

from .bench import CALIB_SEED_BASE, CFG, REPORT_SEED_BASE, SHIFT
from .feb_tables import derive_table, save_tables
from .metrics import psnr, to_unit
from .runner import conditioning, generate, streams_for
from .testbed.sampling import flux_sigmas, seeded_noise
from .testbed.testbeds import add_testbed_argument, get_testbed

DELTAS = (0.95, 0.965, 0.98, 1.0, 1.02, 1.035)


class Run:
    """Inputs of one CFG sampling run (uncond + cond batched, as ``runner.Sampling``)."""

    def __init__(self, model, table, prompts: Sequence[int], seeds: Sequence[int], steps: int,
                 size: tuple[int, int]) -> None:
        self.model, self.steps = model, steps
        self.streams = streams_for(CFG)
        self.sigmas = flux_sigmas(steps, SHIFT)
        self.noise = seeded_noise(seeds, size, model.config.in_channels)
        self.context, self.y = conditioning(table, prompts, CFG)
        self.n_txt = self.context.shape[1]

    def sample(self, model_call) -> Tensor:
        """Euler + CFG; ``model_call(step, x_in [B,..], sigma) -> v [B,..]`` for the batched streams."""
        x = self.noise.clone()
        with torch.inference_mode():
            for i in range(self.steps):
                s, s_next = float(self.sigmas[i]), float(self.sigmas[i + 1])
                v_u, v_c = model_call(i, torch.cat([x, x]), s).chunk(2)
                x = x + (s_next - s) * (v_u + CFG * (v_c - v_u))
        return x

    def embed(self, x_in: Tensor, sigma: float):
        return self.model.embed(x_in, torch.full((x_in.shape[0],), sigma), self.context, self.y)


# ------------------------------------------------------------------------------------------- recording

def record(run: Run) -> tuple[list[list[Tensor]], list[list[Tensor]], tuple[int, int]]:
    """Per step: the attention-kernel and MLP outputs of every block (image rows ``[B, N, C]``)."""
    model, n_txt = run.model, run.n_txt
    attn_steps: list[list[Tensor]] = []
    mlp_steps: list[list[Tensor]] = []
    mlp_now: list[Tensor] = []
    grid: list[tuple[int, int]] = []
    hidden = model.config.hidden_size

    def double_hook(_m, _inp, out):  # img_mlp output: image stream only
        mlp_now.append(out.detach().clone())

    def single_hook(m, inp, _out):  # linear2 input = [attn, gelu(mlp hidden)]; the MLP branch's share
        act = inp[0][..., hidden:]
        mlp_now.append((act @ m.weight[:, hidden:].T)[:, n_txt:].detach().clone())

    handles = [b.img_mlp.register_forward_hook(double_hook) for b in model.double_blocks]
    handles += [b.linear2.register_forward_hook(single_hook) for b in model.single_blocks]

    def call(step: int, x_in: Tensor, sigma: float) -> Tensor:
        e = run.embed(x_in, sigma)
        grid[:] = [e.grid]
        outs: list[Tensor] = []

        def override(func, *args):
            out = func(*args)
            outs.append(out[:, n_txt:].detach().clone())
            return out

        mlp_now.clear()
        crf = model.run_blocks(e, attention_override=override)
        attn_steps.append(outs)
        mlp_steps.append(list(mlp_now))
        return model.final(crf, e)

    try:
        run.sample(call)
    finally:
        for h in handles:
            h.remove()
    return attn_steps, mlp_steps, grid[0]


def band_stats(steps: list[list[Tensor]], layout: TokenLayout, splitter: BandSplitter) -> dict[str, Tensor]:
    """``[n_steps, n_blocks]`` tensors: ``e_low`` (low-band energy share), ``c_low``, ``c_high``, ``c_all``
    (relative change from the previous step in each band / overall; NaN at step 0), ``d_low`` (low-band
    share of the change's energy)."""
    n, nb = len(steps), len(steps[0])
    out = {k: torch.full((n, nb), float("nan"), dtype=torch.float64) for k in
           ("e_low", "c_low", "c_high", "c_all", "d_low")}
    prev = None
    for i, feats in enumerate(steps):
        cur = []
        for b, f in enumerate(feats):
            f = f.double()
            low = splitter.low(f.float(), layout).double()
            high = f - low
            cur.append((f, low, high))
            out["e_low"][i, b] = low.pow(2).sum() / f.pow(2).sum()
            if prev is not None:
                pf, pl, ph = prev[b]
                dl, dh = (low - pl).pow(2).sum(), (high - ph).pow(2).sum()
                out["c_low"][i, b] = dl.sqrt() / pl.pow(2).sum().sqrt()
                out["c_high"][i, b] = dh.sqrt() / ph.pow(2).sum().sqrt()
                out["c_all"][i, b] = (f - pf).norm() / pf.norm()
                out["d_low"][i, b] = dl / (dl + dh)
        prev = cur
    return out


def _mean(t: Tensor) -> float:
    return float(t[~torch.isnan(t)].mean())


def measure(model, table, steps: int, seeds: int, cutoffs: Sequence[float], testbed: str = "shapes") -> dict[str, Any]:
    bed = get_testbed(testbed)
    run = Run(model, table, bed.calib_prompts(seeds), [CALIB_SEED_BASE + i for i in range(seeds)], steps, bed.size)
    attn, mlp, grid = record(run)
    layout = TokenLayout.grid(*grid)
    nd = len(model.double_blocks)
    result: dict[str, Any] = {"steps": steps, "bands": {}}
    for cutoff in cutoffs:
        sp = BandSplitter(cutoff, "dct")
        sa, sm = band_stats(attn, layout, sp), band_stats(mlp, layout, sp)
        summary = {}
        for name, st in (("attn", sa), ("mlp", sm)):
            summary[name] = {k: round(_mean(v), 4) for k, v in st.items()}
            summary[name]["double"] = {k: round(_mean(v[:, :nd]), 4) for k, v in st.items()}
            summary[name]["single"] = {k: round(_mean(v[:, nd:]), 4) for k, v in st.items()}
        result["bands"][str(cutoff)] = summary
        if cutoff == cutoffs[0]:
            # c_all is cutoff-independent: sqrt(e_low c_low^2 + (1 - e_low) c_high^2) per block
            result["attn_change"] = [0.0] + [round(float(v), 5) for v in sa["c_all"][1:].mean(1)]
            result["mlp_change"] = [0.0] + [round(float(v), 5) for v in sm["c_all"][1:].mean(1)]
    return result


# ------------------------------------------------------------------------------------------- sampling

def generate_with(model, ptable, prompts: Sequence[int], seeds: Sequence[int], steps: int,
                  method: Any, size: tuple[int, int]) -> Tensor:
    """Images of one sampling run (``runner.generate``, CFG 3, shift 2) with ``method`` (a controller)."""
    return generate(model, prompts, seeds, steps, CFG, method, table=ptable, shift=SHIFT, size=size).images


class ExposureScaledReuse(ForecastMethod):
    """CRF reuse whose cached calls' flow velocity is exposure-scaled by ``delta`` (FEB's scaling alone)."""

    def __init__(self, delta: float) -> None:
        super().__init__("reuse", ReuseForecaster())
        self.delta = delta

    def finish_call(self, plan, out: Tensor, x: Tensor | None) -> Tensor:
        if plan.full or x is None or self.delta == 1.0:
            return out
        return exposure_scale(out, x[:, : out.shape[1]], plan.sigma, self.delta, "flow")


def reuse_every_other(delta: float) -> CacheController:
    """CRF reused at every other step, the cached steps' velocity exposure-scaled by ``delta``."""
    return CacheController(ExposureScaledReuse(delta), FixedSchedule(warmup=1, interval=2))


def feb(table: CacheTable, delta: float = 1.0) -> CacheController:
    """FEB-Cache with ``table``: attention kernels served at ``attn`` steps, block residuals at ``skip``."""
    return CacheConfig(method="feb", feb_table=table, exposure_delta=delta).new_controller(table.n_ref)


def mean_psnr(a: Tensor, ref: Tensor) -> float:
    return float(psnr(to_unit(a), to_unit(ref)).mean())


# ------------------------------------------------------------------------------------------------ main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, nargs="+", default=[28, 50])
    p.add_argument("--seeds", type=int, default=4, help="calibration seeds (and report seeds for PSNR)")
    p.add_argument("--cutoffs", type=float, nargs="+", default=[0.1, 0.25], help="low-band DCT cutoffs")
    p.add_argument("--out", default=None, help="default: the testbed's feb_table.json")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    add_testbed_argument(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    bed = get_testbed(args.testbed)
    model, ptable = bed.load()
    t0 = time.perf_counter()
    meta: dict[str, Any] = {"model": f"testbed TinyFlux ({bed.name})", "cfg": CFG, "shift": SHIFT,
                            "size": list(bed.size),
                            "calibration_seeds": [CALIB_SEED_BASE + i for i in range(args.seeds)],
                            "calibration_prompts": bed.calib_prompts(args.seeds), "measurements": {},
                            "exposure_sweep": {}, "feb_eval": {}}
    tables: dict[str, list[CacheTable]] = {lv: [] for lv in LEVELS}
    for steps in args.steps:
        m = measure(model, ptable, steps, args.seeds, args.cutoffs, bed.name)
        meta["measurements"][str(steps)] = m
        print(f"\n== {steps} steps: attention kernel vs MLP outputs (image tokens, mean over blocks and steps)")
        print(f"{'cutoff':>6} {'part':>5} {'e_low':>7} {'c_low':>7} {'c_high':>7} {'c_all':>7} {'d_low':>7}"
              f"   [double | single: e_low, c_all]")
        for cutoff, summ in m["bands"].items():
            for name in ("attn", "mlp"):
                s = summ[name]
                print(f"{cutoff:>6} {name:>5} {s['e_low']:7.3f} {s['c_low']:7.3f} {s['c_high']:7.3f} "
                      f"{s['c_all']:7.3f} {s['d_low']:7.3f}   [{s['double']['e_low']:.3f} {s['double']['c_all']:.3f}"
                      f" | {s['single']['e_low']:.3f} {s['single']['c_all']:.3f}]")
        print("per-step change (attn / mlp):",
              " ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(m["attn_change"][1:], m["mlp_change"][1:])))
        for lv in LEVELS:
            t = derive_table(m["attn_change"], m["mlp_change"], level=lv, meta={"steps_measured": steps})
            tables[lv].append(t)
            print(f"{lv:>9}: {t.timeline()}  {t.counts()}")

    print("\n== exposure bias: CRF reused at every other step, flow exposure_scale at cached steps; "
          "PSNR (dB) vs uncached, mean over seeds")
    sets = {"calib": (bed.calib_prompts(args.seeds), [CALIB_SEED_BASE + i for i in range(args.seeds)]),
            "report": (bed.report_prompts(args.seeds), [REPORT_SEED_BASE + i for i in range(args.seeds)])}
    refs: dict[tuple[str, int], Tensor] = {}
    for steps in args.steps:
        for name, (prompts, seeds) in sets.items():
            def images(method: Any, steps: int = steps, prompts=prompts, seeds=seeds) -> Tensor:
                return generate_with(model, ptable, prompts, seeds, steps, method, bed.size)

            refs[(name, steps)] = images(None)
            row = {str(d): round(mean_psnr(images(reuse_every_other(d)), refs[(name, steps)]), 3) for d in DELTAS}
            meta["exposure_sweep"][f"{name}/{steps}"] = row
            print(f"{name:>6} {steps:>3} steps: " + "  ".join(f"d={d}: {v:.2f}" for d, v in row.items()))

    print("\n== FEB tables end to end (PSNR dB vs uncached; cost = blocks-run steps, attention-served steps)")
    for steps in args.steps:
        for lv in LEVELS:
            t = next(t for t in tables[lv] if t.n_ref == steps)
            for name, (prompts, seeds) in sets.items():
                row = {}
                for d in DELTAS:
                    x = generate_with(model, ptable, prompts, seeds, steps, feb(t, d), bed.size)
                    row[str(d)] = round(mean_psnr(x, refs[(name, steps)]), 3)
                meta["feb_eval"][f"{lv}/{name}/{steps}"] = {"psnr": row, "counts": t.counts()}
                print(f"{lv:>9} {name:>6} {steps:>3}: {t.counts()}  " + "  ".join(
                    f"d={d}: {v:.2f}" for d, v in row.items()))
    print("\n== uniform patterns after 3 full steps (last step full): attention-only reuse vs whole-block reuse")
    meta["pattern_check"] = {}
    for steps in args.steps:
        for name, (prompts, seeds) in sets.items():
            row = {}
            for pat in ("Fa", "Fb", "Faa", "Fbb", "Fab"):
                t = CacheTable.parse("FFF" + (pat * steps)[:steps - 4] + "F")
                x = generate_with(model, ptable, prompts, seeds, steps, feb(t), bed.size)
                row[pat] = round(mean_psnr(x, refs[(name, steps)]), 3)
            meta["pattern_check"][f"{name}/{steps}"] = row
            print(f"{name:>6} {steps:>3}: " + "  ".join(f"{p}: {v:.2f}" for p, v in row.items()))
    meta["wall_s"] = round(time.perf_counter() - t0, 1)
    if not args.no_write:
        out = args.out or bed.feb_table
        save_tables(out, tables, meta)
        print(f"\nwrote {out} ({meta['wall_s']} s)")
    return meta


if __name__ == "__main__":
    main()
