"""Calibration: choose a method and its full steps for a model from one recorded, uncached trajectory.

**Recording** (``TrajectoryRecorder``): at every step of an uncached run, the CRF ``[b, L, D]`` of each
stream is kept on the CPU in fp16 after a fixed random projection of ``D`` to ``PROJECTED_DIMS`` (64)
dimensions (``[b, L, 64]``), with the model output ``[b, ...]`` of the call (for methods that mix outputs).
Every method's forecast is linear in its history and its band split acts on the token axis, so forecasting
the projected CRFs equals projecting the forecast; a Gaussian projection keeps the relative error's scale.
Memory for FLUX.1-dev at 1024² (4096 image tokens, D = 3072, 16 x 128 x 128 latent) and 50 steps, one stream
(no CFG): 4096 x 64 x 2 B = 0.5 MiB of CRF and 0.5 MiB of output per step, **50 MiB per run** (100 MiB with
CFG's two streams), against 1.2 GiB per stream for the unprojected fp16 CRFs.

**Scoring** (``calibrate``): open loop, for each ``Candidate`` (a registered method and its parameters) and
a placement of the full steps, each cached step ``j`` is forecast by the method's own ``predict`` from the
recorded CRFs of the full steps before it (the method's ``history_size`` newest), with ``e_j`` its relative L1
error against the recorded CRF, times ``IMAGE_PER_CRF_ERROR * sigma_0`` (measured on the testbed: caching one
step changes the image by about 0.13 x sigma x the relative CRF error). A method that mixes the last full
output into a cached call's (FRDiff: ``output_weight``) is scored ``(1 - w) e_j + w o_j``, ``o_j`` the
relative error of the last full output against the recorded one. Averaged over streams, a cached step's cost
counts ``m - j`` times, ``m`` the next full step (``compounding``: its drift lasts until a full step corrects
it), and every step alike. Measured on the testbed (``freqca_lab.measure_auto``), this ranks closed-loop
results better than counting each step once or weighting it by its noise level (``noise_weighted``:
``adaptive.noise_weight``, the adaptive schedule's weight), which make the search leave long cached stretches.

**Placements** (``best_placement``): dynamic programming over which steps are full for an exact number of
full steps (step 0 always full), with the state the method's last ``history_size`` full steps (so the cost
of every cached step is exact), gaps between full steps at most ``max_gap``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Hashable, Sequence

import torch

from .adaptive import noise_weight
from .cache import CRFEntry, CRFHistory
from .spectral import TokenLayout
from .validation import check_int

if TYPE_CHECKING:  # the registry imports this module (method auto)
    from .methods.base import CacheMethod

PROJECTED_DIMS = 64
IMAGE_PER_CRF_ERROR = 0.13  # image change per unit of sigma x relative CRF error at one cached step (testbed)
PROJECTION_SEED = 16


@dataclass
class StreamTrajectory:
    """One stream's recorded run: per step, the projected CRF ``[b, L, k]`` (float32) and the output, if any."""

    layout: TokenLayout
    crfs: list[torch.Tensor]
    outputs: list[torch.Tensor] | None


@dataclass
class Trajectory:
    """An uncached run: ``sigmas[i]`` of step ``i`` (``n_steps`` values) and each stream's recording."""

    sigmas: list[float]
    streams: dict[Hashable, StreamTrajectory]

    @property
    def n_steps(self) -> int:
        return len(self.sigmas)


class TrajectoryRecorder:
    """Collects the CRFs (projected, fp16, CPU) and outputs of every step of an uncached run."""

    def __init__(self, dims: int = PROJECTED_DIMS, seed: int = PROJECTION_SEED) -> None:
        self.dims = check_int("dims", dims, 1)
        self.seed = seed
        self.sigmas: dict[int, float] = {}
        self.crfs: dict[Hashable, dict[int, torch.Tensor]] = {}
        self.outputs: dict[Hashable, dict[int, torch.Tensor]] = {}
        self.layouts: dict[Hashable, TokenLayout] = {}
        self._projection: torch.Tensor | None = None

    def project(self, crf: torch.Tensor) -> torch.Tensor:
        """``[b, L, D]`` -> ``[b, L, min(D, dims)]`` fp16 on the CPU (a fixed Gaussian projection when D > dims)."""
        crf = crf.detach()
        width = crf.shape[-1]
        if width > self.dims:
            if self._projection is None or self._projection.shape[0] != width:
                gen = torch.Generator().manual_seed(self.seed)
                self._projection = torch.randn(width, self.dims, generator=gen) / math.sqrt(self.dims)
            crf = crf.float() @ self._projection.to(crf.device)
        return crf.to("cpu", torch.float16)

    def add(self, step: int, sigma: float, stream: Hashable, layout: TokenLayout, crf: torch.Tensor,
            output: torch.Tensor | None = None) -> None:
        """Record the computed CRF ``[b, L, D]`` (and model output ``[b, ...]``) of ``stream`` at ``step``."""
        self.sigmas[step] = float(sigma)
        self.layouts[stream] = layout
        self.crfs.setdefault(stream, {})[step] = self.project(crf)
        if output is not None:
            self.outputs.setdefault(stream, {})[step] = output.detach().to("cpu", torch.float16)

    @property
    def nbytes(self) -> int:
        tensors = [t for per in (*self.crfs.values(), *self.outputs.values()) for t in per.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def trajectory(self, n_steps: int) -> Trajectory | None:
        """The recording as a ``Trajectory`` of ``n_steps`` steps; None unless every stream has every step."""
        steps = range(n_steps)
        if not self.crfs or any(i not in self.sigmas for i in steps):
            return None
        streams = {}
        for key, crfs in self.crfs.items():
            if any(i not in crfs for i in steps):
                return None
            outs = self.outputs.get(key, {})
            outputs = [outs[i].float() for i in steps] if all(i in outs for i in steps) else None
            streams[key] = StreamTrajectory(self.layouts[key], [crfs[i].float() for i in steps], outputs)
        return Trajectory([self.sigmas[i] for i in steps], streams)

    def clear(self) -> None:
        self.sigmas.clear(), self.crfs.clear(), self.outputs.clear(), self.layouts.clear()


@dataclass(frozen=True)
class Candidate:
    """A configuration to score: a registered ``method`` with ``params`` (``CacheConfig`` fields)."""

    label: str
    method: str
    params: dict = field(default_factory=dict)

    def build(self, base, transform: str = "dct") -> CacheMethod:
        """The method as ``base`` (a ``CacheConfig``) with this candidate's method and params builds it (the
        config is passed in: this module is imported by the registry the config imports)."""
        return replace(base, method=self.method, choice=None, on_choice=None, **self.params).new_method(
            transform=transform)


# Registered methods that need only the CRF history (and the last full output): FEB-Cache's attention reuse
# and methods storing residuals need what a CRF recording does not hold.
CANDIDATES = (
    Candidate("reuse", "reuse"),
    Candidate("taylor order 1", "taylor", {"taylor_order": 1}),
    Candidate("taylor order 2", "taylor", {"taylor_order": 2}),
    Candidate("freqca", "freqca"),
    Candidate("frdiff", "frdiff"),
)


def _relative_errors(forecast: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Relative L1 error per leading index: ``[J, ...]`` x ``[J, ...]`` -> ``[J]``."""
    dims = tuple(range(1, truth.dim()))
    return (forecast - truth).abs().mean(dims) / truth.abs().mean(dims).clamp_min(1e-12)


Row = Callable[[tuple[int, ...], int], Sequence[float]]
"""``row(history, stop)``: the costs of caching each step ``j`` in ``history[0] + 1 .. stop - 1`` with the full
steps ``history`` (newest first) as the forecast's history."""


class StepErrors:
    """``row(history, stop)`` (a ``Row``) for ``method`` on ``trajectory``: per cached step ``j``, the weighted
    image error ``IMAGE_PER_CRF_ERROR * sigma_0 * noise_weight(sigma_j) * e_j`` averaged over the streams
    (forecasts from the method's own ``predict_many``)."""

    def __init__(self, trajectory: Trajectory, method: CacheMethod, noise_weighted: bool = False) -> None:
        self.trajectory, self.method, self.noise_weighted = trajectory, method, noise_weighted
        self.mix = getattr(method, "output_weight", None)  # FRDiff-like output mixing, if the method has it
        self.stacked = {key: torch.stack(s.crfs) for key, s in trajectory.streams.items()}  # [n, b, L, k]

    def row(self, history: tuple[int, ...], stop: int) -> list[float]:
        sigmas, n = self.trajectory.sigmas, self.trajectory.n_steps
        steps = list(range(history[0] + 1, stop))
        if not steps:
            return []
        total = torch.zeros(len(steps), dtype=torch.float64)
        for key, stream in self.trajectory.streams.items():
            past = CRFHistory(len(history))
            past.entries = [CRFEntry(sigmas[k], k, stream.crfs[k]) for k in history]
            forecast = self.method.predict_many(past, [sigmas[j] for j in steps], stream.layout)
            e = _relative_errors(forecast.float(), self.stacked[key][steps[0]:stop]).double()
            if self.mix is not None and stream.outputs is not None:
                w = torch.tensor([self.mix(j, n) for j in steps], dtype=torch.float64)
                if bool(w.any()):
                    outputs = torch.stack([stream.outputs[j] for j in steps])
                    o = _relative_errors(stream.outputs[history[0]].expand_as(outputs), outputs).double()
                    e = (1 - w) * e + w * o
            total += torch.nan_to_num(e, nan=float("inf"))
        weights = torch.tensor([IMAGE_PER_CRF_ERROR * sigmas[0] * (
            noise_weight(sigmas[j], sigmas[0]) if self.noise_weighted else 1.0) for j in steps], dtype=torch.float64)
        return (weights * total / len(self.trajectory.streams)).tolist()


def placement_score(row: Row, full: Sequence[int], n_steps: int, history_size: int,
                    compounding: bool = True) -> float:
    """The score of the placement ``full`` (step 0 added): the sum of the costs of its cached steps, each with
    the ``history_size`` newest full steps before it as history (with ``compounding``, the cost of cached step
    ``j`` counts ``m - j`` times, ``m`` the next full step: its drift lasts until a full step)."""
    chosen = sorted(set(full) | {0})
    total, history = 0.0, ()
    for k, stop in zip(chosen, chosen[1:] + [n_steps]):
        history = ((k,) + history)[:history_size]
        costs = row(history, stop)
        total += sum(c * ((stop - j) if compounding else 1) for j, c in zip(range(k + 1, stop), costs))
    return total


def best_placement(row: Row, n_steps: int, budget: int, history_size: int,
                   max_gap: int | None = None, compounding: bool = True) -> tuple[tuple[int, ...], float]:
    """The full steps (exactly ``budget`` of them, step 0 among them, consecutive ones at most ``max_gap``
    apart, the run's end at most ``max_gap`` after the last) that minimise ``placement_score``, and that score.

    Dynamic programming over states = the ``history_size`` newest full steps (newest first): a cached step's
    cost depends on them only, so the optimum is exact. ValueError if no placement fits."""
    n = check_int("n_steps", n_steps, 1)
    budget = check_int("full steps", budget, 1, n)
    h = check_int("history_size", history_size, 1)
    gap = n if max_gap is None else check_int("max_gap", max_gap, 1)
    if budget * gap < n:
        raise ValueError(f"{budget} full steps at most {gap} apart cannot cover {n} steps")
    sums: dict[tuple[int, ...], tuple[list[float], list[float]]] = {}

    def segment(state: tuple[int, ...], m: int) -> float:
        """Cost of caching the steps strictly between ``state[0]`` and ``m`` (one ``row`` per state): prefix
        sums of ``c_j`` and of ``c_j * j``, so that the compounding cost ``sum c_j (m - j)`` is O(1) too."""
        if state not in sums:
            plain, moments = [0.0], [0.0]
            for j, cost in enumerate(row(state, min(n, state[0] + gap)), start=state[0] + 1):
                plain.append(plain[-1] + cost)
                moments.append(moments[-1] + cost * j)
            sums[state] = (plain, moments)
        plain, moments = sums[state]
        i = m - state[0] - 1
        return m * plain[i] - moments[i] if compounding else plain[i]

    layer: dict[tuple[int, ...], tuple[float, tuple[int, ...]]] = {(0,): (0.0, (0,))}
    for count in range(1, budget):
        left = budget - count - 1  # full steps still to place after the next one
        nxt: dict[tuple[int, ...], tuple[float, tuple[int, ...]]] = {}
        for state, (cost, steps) in layer.items():
            for m in range(state[0] + 1, min(n - left, state[0] + gap + 1)):
                total = cost + segment(state, m)
                key = ((m,) + state)[:h]
                if key not in nxt or total < nxt[key][0]:
                    nxt[key] = (total, steps + (m,))
        layer = nxt
    finals = [(cost + segment(state, n), steps) for state, (cost, steps) in layer.items() if n - state[0] <= gap]
    if not finals:
        raise ValueError(f"{budget} full steps at most {gap} apart cannot cover {n} steps")
    cost, steps = min(finals)
    return steps, cost


def even_placement(n_steps: int, budget: int) -> tuple[int, ...]:
    """``budget`` full steps spread evenly over ``n_steps`` (step 0 first)."""
    return tuple(i * n_steps // budget for i in range(budget))


@dataclass(frozen=True)
class Choice:
    """What calibration chose: ``method`` with ``params`` on the ``full_steps`` of a run of ``n_steps``;
    ``score`` its predicted error, ``scores`` each candidate's best score (label -> score) and ``even`` the
    chosen method's score on evenly spaced full steps."""

    label: str
    method: str
    params: dict
    full_steps: tuple[int, ...]
    n_steps: int
    score: float
    scores: dict = field(default_factory=dict)
    even: float = float("nan")

    def to_json(self) -> dict:
        return {"label": self.label, "method": self.method, "params": dict(self.params),
                "full_steps": list(self.full_steps), "n_steps": self.n_steps, "score": self.score,
                "scores": dict(self.scores), "even": self.even}

    @classmethod
    def from_json(cls, data: object, base) -> "Choice":
        """Parse ``to_json``'s output, its params checked by building the method from ``base`` (a
        ``CacheConfig``); ValueError naming the bad field (the caller calibrates again)."""
        if not isinstance(data, dict):
            raise ValueError(f"a calibration choice must be a JSON object, got {type(data).__name__}")
        try:
            choice = cls(str(data["label"]), str(data["method"]), dict(data["params"]),
                         tuple(int(s) for s in data["full_steps"]), int(data["n_steps"]), float(data["score"]),
                         {str(k): float(v) for k, v in dict(data.get("scores", {})).items()},
                         float(data.get("even", float("nan"))))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"calibration choice: missing or bad field ({exc!r})") from None
        allowed = {c.method for c in CANDIDATES}
        if choice.method not in allowed:
            raise ValueError(f"calibration choice: method must be one of {', '.join(sorted(allowed))}, "
                             f"got {choice.method!r}")
        steps = choice.full_steps
        if choice.n_steps < 1 or not steps or steps[0] != 0 or list(steps) != sorted(set(steps)) \
                or steps[-1] >= choice.n_steps:
            raise ValueError(f"calibration choice: full_steps {list(steps)!r:.80} must rise from 0 below "
                             f"n_steps {choice.n_steps}")
        try:
            Candidate(choice.label, choice.method, choice.params).build(base)  # validates the parameters
        except (TypeError, ValueError) as exc:
            raise ValueError(f"calibration choice: bad params ({exc})") from None
        return choice

    def text(self) -> str:
        """One line for a run summary: what was chosen and its predicted error against the alternatives."""
        others = ", ".join(f"{label} {score:.3g}" for label, score in self.scores.items() if label != self.label)
        return (f"{self.label} on {len(self.full_steps)}/{self.n_steps} full steps "
                f"[{','.join(map(str, self.full_steps))}], predicted error {self.score:.3g} "
                f"(evenly spaced {self.even:.3g}; {others})")


def default_max_gap(n_steps: int, budget: int) -> int:
    """The largest gap searched: twice the even spacing (at least 4, and enough to cover the run)."""
    return max(4, 2 * math.ceil(n_steps / budget))


@dataclass(frozen=True)
class Scored:
    """One candidate's best placement of the budget, its score and its score on evenly spaced full steps."""

    candidate: Candidate
    full_steps: tuple[int, ...]
    score: float
    even: float


def score_candidates(trajectory: Trajectory, budget: int, base, candidates: Sequence[Candidate] = CANDIDATES,
                     max_gap: int | None = None, transform: str = "dct", noise_weighted: bool = False,
                     compounding: bool = True) -> list[Scored]:
    """Each candidate's best placement of exactly ``budget`` full steps (band splits by ``transform``; for
    ``noise_weighted`` and ``compounding`` see the module docstring; ``base``: the ``CacheConfig`` the candidates'
    settings replace)."""
    n = trajectory.n_steps
    budget = min(check_int("full steps", budget, 1), n)
    gap = max_gap if max_gap is not None else default_max_gap(n, budget)
    scored = []
    for candidate in candidates:
        method = candidate.build(base, transform)
        row = StepErrors(trajectory, method, noise_weighted).row
        steps, score = best_placement(row, n, budget, method.history_size, gap, compounding)
        even = placement_score(row, even_placement(n, budget), n, method.history_size, compounding)
        scored.append(Scored(candidate, steps, score, even))
    return scored


def calibrate(trajectory: Trajectory, budget: int, base, candidates: Sequence[Candidate] = CANDIDATES,
              max_gap: int | None = None, transform: str = "dct") -> Choice:
    """The candidate and placement of exactly ``budget`` full steps with the least predicted error."""
    scored = score_candidates(trajectory, budget, base, candidates, max_gap, transform)
    best = min(scored, key=lambda s: s.score)
    c = best.candidate
    return Choice(c.label, c.method, dict(c.params), best.full_steps, trajectory.n_steps, best.score,
                  {s.candidate.label: s.score for s in scored}, best.even)
