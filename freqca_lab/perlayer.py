"""Per-layer caching baselines on the testbed TinyFlux (written from the papers' descriptions).

- ``PerLayerTaylorSeer``: TaylorSeer's per-layer cache. At a full step every block's *ungated* module
  outputs are stored (double block: image/text attention after its projection and image/text MLP; single
  block: the fused ``linear2`` output), each with its own history. At a cached step no block runs: each
  block adds ``gate * forecast`` of its modules with the *current* adaLN gates (modulations are cheap
  linears of the timestep embedding), starting from the current input embedding. The forecast is the
  paper's Taylor series in sampler steps, ``F + sum_i D_i x^i / i!`` with ``D_i`` from recursive backward
  differences (``taylorseer_weights``), or with ``exact=True`` the interpolating polynomial (Newton form),
  which reproduces a degree-``order`` trajectory exactly (the paper's series is exact to degree 1).
- ``DBCache``: cache-dit's dual-block cache without its back blocks (Bn = 0): the first ``front`` blocks
  run at every step; the residual of the remaining blocks (image rows of the CRF minus the state after the
  front blocks) is stored at full steps and reused (order 0) or forecast (TaylorSeer calibrator, order k)
  at cached steps, added to the fresh front state.

Both follow the runner's ``model_call`` protocol (``start_run``, ``model_call``, ``end_run``) and a step
schedule (``FixedSchedule`` / ``GateSchedule``); every block that runs is a block execution (the front
blocks of DBCache at cached steps included). ``stats.peak_cache_bytes`` counts every stored tensor.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from freqca_core.controller import RunStats
from freqca_core.forecast import TaylorForecaster
from freqca_core.methods.frdiff import GateSchedule
from freqca_core.schedule import StepLocator, StepSchedule
from freqca_core.validation import check_int


def taylorseer_weights(steps: Sequence[int], step: int, order: int) -> list[float]:
    """Weights of the stored features (at sampler ``steps``, newest first) in TaylorSeer's forecast at ``step``.

    ``D_0 = F_0``; ``D_i`` at entry ``j`` is ``(D_{i-1}[j] - D_{i-1}[j+1]) / (steps[j] - steps[j+1])`` (each
    activation divides by its own distance to the previous one); the forecast is ``sum_i D_i[0] x^i / i!``
    with ``x = step - steps[0]``. Uses the highest order the history supports (``len(steps) - 1``)."""
    n = len(steps)
    k = min(order, n - 1)
    # diffs[j]: weights (over the n entries) of D_i at entry j, for the current i
    diffs = [[1.0 if m == j else 0.0 for m in range(n)] for j in range(n)]
    x = step - steps[0]
    out = list(diffs[0])
    for i in range(1, k + 1):
        diffs = [[(a - b) / (steps[j] - steps[j + 1]) for a, b in zip(diffs[j], diffs[j + 1])]
                 for j in range(len(diffs) - 1)]
        c = x ** i / math.factorial(i)
        out = [o + c * d for o, d in zip(out, diffs[0])]
    return out


def spread_steps(n_steps: int, n_full: int, warmup: int, final: int, gamma: float = 1.0) -> list[int]:
    """``n_full`` full steps of ``n_steps``: the first ``warmup``, the last ``final`` and the rest spread in
    between, at fractions ``(j / (k + 1)) ** gamma`` of the span from the last warm-up step to the first final
    step (or to the end without one): equal gaps at ``gamma`` 1, denser towards the end below 1."""
    head = list(range(min(warmup, n_steps)))
    tail = list(range(max(n_steps - final, len(head)), n_steps))
    k = n_full - len(head) - len(tail)
    a, b = len(head) - 1, (n_steps - final if final else n_steps)
    middle = [a + round((j / (k + 1)) ** gamma * (b - a)) for j in range(1, k + 1)] if k > 0 else []
    return sorted(set(head + middle + tail))


def spread_schedule(n_steps: int, n_full: int, warmup: int, final: int, gamma: float = 1.0) -> GateSchedule:
    """``spread_steps`` as a schedule (for runs of ``n_steps`` steps)."""
    return GateSchedule.from_steps(spread_steps(n_steps, n_full, warmup, final, gamma), n_steps,
                                   {"warmup": warmup, "final": final, "full": n_full, "gamma": gamma})


class FeatureHistory:
    """The last ``capacity`` full-step features of one module, newest first, with their sampler steps."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.steps: list[int] = []
        self.features: list[Tensor] = []

    def push(self, step: int, feature: Tensor) -> None:
        if self.features and self.features[0].shape != feature.shape:
            self.steps, self.features = [], []
        if self.steps and self.steps[0] == step:  # a re-run at the same step replaces its entry
            self.steps, self.features = self.steps[1:], self.features[1:]
        self.steps.insert(0, step)
        self.features.insert(0, feature.detach().clone())
        del self.steps[self.capacity:], self.features[self.capacity:]

    def forecast(self, weights: Sequence[float]) -> Tensor:
        out = self.features[0] * weights[0]
        for w, f in zip(weights[1:], self.features[1:]):
            if w != 0.0:
                out = out + f * w
        return out

    @property
    def nbytes(self) -> int:
        return sum(f.numel() * f.element_size() for f in self.features)


class StepCache:
    """Shared machinery: the run's step locator, schedule decisions, module histories and statistics."""

    name = "step-cache"

    def __init__(self, schedule: StepSchedule, order: int, exact: bool = False) -> None:
        self.schedule = schedule
        self.order = check_int("order", order, 0, 3)
        self.exact = bool(exact)
        self.start_run(None)

    def start_run(self, sample_sigmas: Sequence[float] | Tensor | None) -> None:
        if isinstance(sample_sigmas, Tensor):
            sample_sigmas = sample_sigmas.detach().double().cpu().tolist()
        self.locator = StepLocator(sample_sigmas)
        self.run = self.schedule.start_run(self.locator)
        self.stats = RunStats(n_steps=self.locator.n_steps)
        self.histories: dict[Any, FeatureHistory] = {}

    def end_run(self) -> RunStats:
        self.histories.clear()
        return self.stats

    def history(self, key: Any) -> FeatureHistory:
        if key not in self.histories:
            self.histories[key] = FeatureHistory(self.order + 1)
        return self.histories[key]

    def weights(self, history: FeatureHistory, step: int) -> list[float]:
        """Forecast weights for ``history`` at ``step`` (TaylorSeer's series, or the exact polynomial)."""
        if self.exact:
            return TaylorForecaster(min(self.order, len(history.steps) - 1)).weights(
                [float(s) for s in history.steps], float(step), 1.0)
        return taylorseer_weights(history.steps, step, self.order)

    def decide(self, sigma: float, ready: bool) -> tuple[bool, int | None]:
        """``(full, step)`` for a call at ``sigma``; cached only when the schedule says so and ``ready``."""
        step = self.locator.step_of(float(sigma))
        full = step is None or self.run.is_full(step) or not ready
        self.stats.full_calls += full
        self.stats.cached_calls += not full
        if step is not None and self.stats.steps.get(step) != "full":
            self.stats.steps[step] = "full" if full else "cached"
        return full, step

    def count_bytes(self) -> None:
        held = sum(h.nbytes for h in self.histories.values())
        self.stats.peak_cache_bytes = max(self.stats.peak_cache_bytes, held)

    def describe(self) -> dict:
        return {"order": self.order, "exact": self.exact}


def _sigmas(sigma: float, x: Tensor) -> Tensor:
    return torch.full((x.shape[0],), float(sigma), dtype=x.dtype, device=x.device)


def taylorseer_cache_bytes(double: int, single: int, hidden: int, img_tokens: int, txt_tokens: int, order: int,
                           element_size: int = 2, batch: int = 1) -> int:
    """Bytes ``PerLayerTaylorSeer`` stores for a Flux-shaped model: ``order + 1`` copies of every module output
    (double block: two image and two text ``[batch, tokens, hidden]`` outputs; single block: one joint)."""
    per_entry = double * 2 * (img_tokens + txt_tokens) + single * (img_tokens + txt_tokens)
    return (order + 1) * per_entry * batch * hidden * element_size


class PerLayerTaylorSeer(StepCache):
    """TaylorSeer's per-layer cache on a TinyFlux (see the module docstring)."""

    name = "taylorseer"

    @staticmethod
    def modules(model: nn.Module) -> dict[tuple, nn.Module]:
        """The cached modules: ``(kind, block, part) -> module`` whose output is one ungated contribution."""
        out: dict[tuple, nn.Module] = {}
        for i, b in enumerate(model.double_blocks):
            out.update({("double", i, "img_attn"): b.img_attn.proj, ("double", i, "img_mlp"): b.img_mlp,
                        ("double", i, "txt_attn"): b.txt_attn.proj, ("double", i, "txt_mlp"): b.txt_mlp})
        for i, b in enumerate(model.single_blocks):
            out[("single", i, "out")] = b.linear2
        return out

    def model_call(self, model: nn.Module, x: Tensor, sigma: float, context: Tensor, y: Tensor,
                   guidance: Tensor | None = None) -> Tensor:
        """Velocity ``[B, C, H, W]`` for ``x`` at ``sigma``: all blocks (recording) or the per-layer forecast."""
        e = model.embed(x, _sigmas(sigma, x), context, y, guidance)
        modules = self.modules(model)
        ready = all(k in self.histories and self.histories[k].features
                    and self.histories[k].features[0].shape[0] == x.shape[0] for k in modules)
        full, step = self.decide(sigma, ready)
        if full:
            captured: dict[tuple, Tensor] = {}
            handles = [m.register_forward_hook(lambda _m, _i, out, k=k: captured.__setitem__(k, out))
                       for k, m in modules.items()]
            try:
                crf = model.run_blocks(e)
            finally:
                for h in handles:
                    h.remove()
            if step is not None:
                for k, feature in captured.items():
                    self.history(k).push(step, feature)
                self.count_bytes()
            return model.final(crf, e)
        weights = self.weights(next(iter(self.histories.values())), step)
        return model.final(assemble(model, e, lambda key: self.histories[key].forecast(weights)), e)


def assemble(model: nn.Module, e: Any, contribution: Callable[[tuple], Tensor]) -> Tensor:
    """The CRF ``[B, N, D]`` from per-module contributions (``PerLayerTaylorSeer.modules`` keys), each added
    with its block's current adaLN gate to the running state, starting from the current embeddings ``e``."""
    img, txt = e.img, e.txt
    for i, b in enumerate(model.double_blocks):
        _, _, i_gate1, _, _, i_gate2 = b.img_mod(e.vec)
        _, _, t_gate1, _, _, t_gate2 = b.txt_mod(e.vec)
        img = img + i_gate1 * contribution(("double", i, "img_attn")) + i_gate2 * contribution(("double", i, "img_mlp"))
        txt = txt + t_gate1 * contribution(("double", i, "txt_attn")) + t_gate2 * contribution(("double", i, "txt_mlp"))
    h = torch.cat((txt, img), dim=1)
    for i, b in enumerate(model.single_blocks):
        h = h + b.modulation(e.vec)[2] * contribution(("single", i, "out"))
    return h[:, txt.shape[1]:]


class DBCache(StepCache):
    """cache-dit's DBCache (Fn front blocks at every step, Bn = 0) on a TinyFlux (see the module docstring)."""

    name = "dbcache"

    def __init__(self, schedule: StepSchedule, order: int = 1, front: int = 1, exact: bool = False) -> None:
        self.front = check_int("front", front, 1, 1000)
        super().__init__(schedule, order, exact)

    def model_call(self, model: nn.Module, x: Tensor, sigma: float, context: Tensor, y: Tensor,
                   guidance: Tensor | None = None) -> Tensor:
        """Velocity ``[B, C, H, W]``: the front blocks always; the rest run or their residual is forecast."""
        e = model.embed(x, _sigmas(sigma, x), context, y, guidance)
        doubles, singles = list(model.double_blocks), list(model.single_blocks)
        if self.front >= len(doubles) + len(singles):
            raise ValueError(f"front ({self.front}) must be below the model's {len(doubles) + len(singles)} blocks")
        history = self.histories.get("residual")
        ready = bool(history and history.features and history.features[0].shape[0] == x.shape[0])
        full, step = self.decide(sigma, ready)
        img, txt, h, front_img, ran = e.img, e.txt, None, None, 0
        for block in doubles:  # the front blocks; at a full step, all blocks
            if not full and ran >= self.front:
                break
            img, txt = block(img, txt, e.vec, e.pe)
            ran += 1
            front_img = img if ran == self.front else front_img
        if ran == len(doubles):
            h = torch.cat((txt, img), dim=1)
            for block in singles:
                if not full and ran >= self.front:
                    break
                h = block(h, e.vec, e.pe)
                ran += 1
                front_img = h[:, txt.shape[1]:] if ran == self.front else front_img
        crf = h[:, txt.shape[1]:] if h is not None else img
        if full:
            if step is not None:
                self.history("residual").push(step, crf - front_img)
                self.count_bytes()
            return model.final(crf, e)
        return model.final(front_img + history.forecast(self.weights(history, step)), e)

    def describe(self) -> dict:
        return {**super().describe(), "front_blocks": self.front}
