"""Calibration: choose a method and its full steps for a model from one recorded, uncached trajectory.

**Recording** (``TrajectoryRecorder``): at every step of an uncached run, the CRF ``[b, L, D]`` of each
stream and the embedding it started from (the image rows entering the first block) are kept on the CPU in
fp16 after a fixed random projection of ``D`` to ``PROJECTED_DIMS`` (64) dimensions (``[b, L, 64]``). Every
candidate's forecast is linear in its history, its band split acts on the token axis and its stored quantity
is the CRF or the CRF minus the embedding, so forecasting the projected tensors equals projecting the
forecast; a Gaussian projection keeps the relative error's scale. Memory for FLUX.1-dev at 1024² (4096 image
tokens, D = 3072, 16 x 128 x 128 latent) and 50 steps, one stream (no CFG): 4096 x 64 x 2 B = 0.5 MiB each of
CRF and embedding per step, **50 MiB per run** (100 MiB with CFG's two streams), against 1.2 GiB per stream for the
unprojected fp16 CRFs alone.

**Scoring** (``calibrate``): open loop, for each ``Candidate`` (a registered method and its parameters) and
a placement of the full steps, each cached step ``j`` is forecast by the method's own weights
(``LinearMethod.band_weights``) from the recorded steps of the full steps before it (the method's
``history_size`` newest), with ``e_j`` its relative L2 error against the recorded CRF (from Gram matrices:
``StepErrors``), times ``step_weights``: ``IMAGE_PER_CRF_ERROR * n * (sigma_j - sigma_j+1)`` (a sampler step
moves the sample by its sigma step times the model's output, whose error follows the CRF's; on average the
weight is the ``0.13 x sigma_0`` measured on the testbed for one cached step). A method that also mixes the
last full output into a cached call's (FRDiff) is scored by its CRF forecast alone (FRDiff's: reuse), the
mixed output counted as the stale CRF it came from: an output's relative error is not in the CRF's units (on
the testbeds it is 0.35-1.0 times the CRF's for the same two steps, so counting it as is favoured FRDiff by
7-20 %), and closed loop FRDiff lands within 0.25 dB of reuse on the same spread steps at every measured
budget (-0.7 to +0.4 dB on regular ones). Averaged over streams, a cached step's cost counts ``m - j``
times, ``m`` the next full step (``compounding``: its drift lasts until a full step corrects it). Measured
on the testbed (``freqca_lab.measure_auto``), this ranks closed-loop results better than counting each step
once or weighting it by its noise level (``noise_weighted``: ``adaptive.noise_weight``, the adaptive
schedule's weight), which make the search leave long cached stretches.

**Placements**: the ``final_full`` last steps of the config (the node: 1) and step 0 are full; the rest of the
budget is placed evenly, either spread (``even_placement``: gaps differ by at most one) or regular
(``regular_placement``: every N steps, the fixed schedule's pattern), the better scored of the two
(``placement="uniform"``, the default); or searched (``"searched"``, ``best_placement``: dynamic programming
over which steps are full for an exact number of full steps, with the state the method's last
``history_size`` full steps, so the cost of every cached step is exact; gaps at most ``max_gap``). Measured
on the two trained testbeds over 16 reported seeds (``freqca_lab.measure_auto``, README "Calibration"): the
uniform choice is the better of its two placements at 8 of the 10 budgets where they differ; the searched
placements win by up to 3.6 dB at some budgets and lose by up to 3.9 dB at others, and the open-loop score
cannot tell which, so they stay an option.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Hashable, Sequence

import torch

from .adaptive import noise_weight
from .forecast import sigma_per_step
from .spectral import TokenLayout
from .validation import check_choice, check_int

if TYPE_CHECKING:  # the registry imports this module (method auto)
    from .methods.base import LinearMethod

PROJECTED_DIMS = 64
IMAGE_PER_CRF_ERROR = 0.13  # image change per unit of sigma x relative CRF error at one cached step (testbed)
PROJECTION_SEED = 16
UNUSABLE_ERROR = 1e6  # the relative error counted for a non-finite forecast (finite: the search adds and subtracts)


@dataclass
class StreamTrajectory:
    """One stream's recorded run: per step, the projected CRF ``[b, L, k]`` (float32) and, if recorded, the
    projected embedding of the image rows entering the first block ``[b, L, k]``."""

    layout: TokenLayout
    crfs: list[torch.Tensor]
    embeddings: list[torch.Tensor] | None
    _stacks: dict = field(default_factory=dict, repr=False, compare=False)

    def stacked(self, name: str) -> torch.Tensor | None:
        """``crfs`` or ``embeddings`` as one ``[n, ...]`` tensor (stacked once: read-only after)."""
        if name not in self._stacks:
            values = getattr(self, name)
            self._stacks[name] = None if values is None else torch.stack(values)
        return self._stacks[name]


@dataclass
class Trajectory:
    """An uncached run: ``sigmas[i]`` of step ``i`` (``n_steps`` values) and each stream's recording."""

    sigmas: list[float]
    streams: dict[Hashable, StreamTrajectory]

    @property
    def n_steps(self) -> int:
        return len(self.sigmas)

    @property
    def nbytes(self) -> int:
        """Bytes of the recording as ``TrajectoryRecorder`` kept it (fp16)."""
        return sum(t.numel() * 2 for s in self.streams.values()
                   for t in s.crfs + (s.embeddings or []))


class TrajectoryRecorder:
    """Collects the CRFs and embeddings (projected, fp16, CPU) of every step of an uncached run."""

    def __init__(self, dims: int = PROJECTED_DIMS, seed: int = PROJECTION_SEED) -> None:
        self.dims = check_int("dims", dims, 1)
        self.seed = seed
        self.sigmas: dict[int, float] = {}
        self.crfs: dict[Hashable, dict[int, torch.Tensor]] = {}
        self.embeddings: dict[Hashable, dict[int, torch.Tensor]] = {}
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
            embedding: torch.Tensor | None = None) -> None:
        """Record the computed CRF ``[b, L, D]`` (and the embedding ``[b, L, D]`` it started from) of ``stream``
        at ``step``."""
        self.sigmas[step] = float(sigma)
        self.layouts[stream] = layout
        self.crfs.setdefault(stream, {})[step] = self.project(crf)
        if embedding is not None and embedding.shape == crf.shape:
            self.embeddings.setdefault(stream, {})[step] = self.project(embedding)

    @property
    def nbytes(self) -> int:
        stores = (*self.crfs.values(), *self.embeddings.values())
        tensors = [t for per in stores for t in per.values()]
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
            streams[key] = StreamTrajectory(self.layouts[key], [crfs[i].float() for i in steps],
                                            _every_step(self.embeddings.get(key, {}), steps))
        return Trajectory([self.sigmas[i] for i in steps], streams)

    def clear(self) -> None:
        for store in (self.sigmas, self.crfs, self.embeddings, self.layouts):
            store.clear()


def _every_step(recorded: dict[int, torch.Tensor], steps: range) -> list[torch.Tensor] | None:
    """The recorded tensors of ``steps`` in float32, or None unless every step has one."""
    return [recorded[i].float() for i in steps] if all(i in recorded for i in steps) else None


@dataclass(frozen=True)
class Candidate:
    """A configuration to score: a registered ``method`` with ``params`` (``CacheConfig`` fields)."""

    label: str
    method: str
    params: dict = field(default_factory=dict)

    def build(self, base, transform: str = "dct") -> LinearMethod:
        """The method as ``base`` (a ``CacheConfig``) with this candidate's method and params builds it (the
        config is passed in: this module is imported by the registry the config imports); TypeError unless
        its forecast is linear in its history (``LinearMethod``), which scoring needs."""
        method = replace(base, method=self.method, choice=None, on_choice=None, **self.params).new_method(
            transform=transform)
        if not callable(getattr(method, "band_weights", None)):
            raise TypeError(f"method {self.method!r} cannot be calibrated: its forecast is not linear in its history")
        return method


# The registered methods whose forecasts are linear in their history (FEB-Cache's attention reuse is not), in
# the order of preference among near ties (``TIE``): the residual forecasts first, because they follow the
# current input in the run, which an open-loop score cannot see (README "Benchmark": res-taylor leads the
# CRF-level methods closed loop at every budget of both trained testbeds).
CANDIDATES = (
    Candidate("res-taylor order 1", "res-taylor", {"taylor_order": 1}),
    Candidate("res-taylor order 2", "res-taylor", {"taylor_order": 2}),
    Candidate("taylor order 1", "taylor", {"taylor_order": 1}),
    Candidate("taylor order 2", "taylor", {"taylor_order": 2}),
    Candidate("reuse", "reuse"),
    Candidate("frdiff", "frdiff"),
    Candidate("freqca", "freqca"),
)
TIE = 0.02  # predicted errors within 2% of the least count as a tie, won by the earlier candidate


Row = Callable[[tuple[int, ...], int], Sequence[float]]
"""``row(history, stop)``: the costs of caching each step ``j`` in ``history[0] + 1 .. stop - 1`` with the full
steps ``history`` (newest first) as the forecast's history."""


def _centred_gram(x: torch.Tensor) -> torch.Tensor:
    """``[n, m]`` -> ``[n + 1, n + 1]`` float64: the inner products of the rows ``x_i - mean`` and of the mean
    (last row). A combination ``sum_i c_i x_i`` is ``sum_i c_i (x_i - mean) + (sum_i c_i) mean``, so its squared
    norm is exact from this matrix, while the float32 products keep their precision on what varies."""
    x = x.float()
    mean = x.mean(0, keepdim=True)
    rows = torch.cat([x - mean, mean])
    return (rows @ rows.T).double()


def step_weights(sigmas: Sequence[float]) -> list[float]:
    """Per step, the image change per unit of relative CRF error: ``IMAGE_PER_CRF_ERROR * n * (sigma_j -
    sigma_j+1)`` (the run ends at sigma 0). A sampler step moves the sample by its sigma step times the model's
    output, whose error follows the CRF's; the weights average to the measured ``IMAGE_PER_CRF_ERROR *
    sigma_0``."""
    n, ends = len(sigmas), list(sigmas[1:]) + [0.0]
    return [IMAGE_PER_CRF_ERROR * n * max(a - b, 0.0) for a, b in zip(sigmas, ends)]


class StepErrors:
    """``row(history, stop)`` (a ``Row``) for a ``LinearMethod`` on ``trajectory``: per cached step ``j``, the
    image error ``IMAGE_PER_CRF_ERROR * n * (sigma_j - sigma_j+1) * e_j`` (``step_weights``; times
    ``noise_weight(sigma_j)`` if ``noise_weighted``) averaged over the streams, ``e_j`` the relative L2 error of
    the method's forecast of the CRF (a method's output mixing, if any, is not scored: see the module docstring).

    The method forecasts its stored quantity ``S`` (``encode`` of the recorded CRF and embedding; its error is
    the CRF's, see ``CacheMethod.decode``) as a linear form per band, and the band split is an orthogonal
    projection, so the squared error is a quadratic form in the Gram matrices of ``low(S)`` and ``high(S)``
    over the steps (``_centred_gram``): the recording is read once here (once per way of encoding and
    splitting with a shared ``cache``) and a row costs ``O(J h^2)`` whatever the model's size. A
    non-finite error counts as ``UNUSABLE_ERROR``; a method that encodes nothing (a residual without a
    recorded embedding) is not ``usable``."""

    def __init__(self, trajectory: Trajectory, method: LinearMethod, noise_weighted: bool = False,
                 cache: dict | None = None) -> None:
        """``cache``: shared by the candidates scored on one ``trajectory``; it keeps the Gram matrices per way
        of encoding and splitting and the CRF norms, each computed once."""
        self.trajectory, self.method = trajectory, method
        n, sigmas = trajectory.n_steps, trajectory.sigmas
        cache = {} if cache is None else cache
        split = method.splitter
        key = ("grams", type(method).encode, None if split is None else (split.cutoff, split.transform))
        if key not in cache:
            cache[key] = self._grams(method)
        self.grams = cache[key]  # [S, bands, n + 1, n + 1] or None
        self.usable = self.grams is not None
        if "norms" not in cache:
            cache["norms"] = torch.stack([torch.linalg.vector_norm(s.stacked("crfs").reshape(n, -1), dim=1,
                                                                   dtype=torch.float64) ** 2
                                          for s in trajectory.streams.values()]).clamp_min(1e-24)  # [S, n]
        self.norms = cache["norms"]
        self.weights = torch.tensor([w * (noise_weight(sigma, sigmas[0]) if noise_weighted else 1.0)
                                     for w, sigma in zip(step_weights(sigmas), sigmas)], dtype=torch.float64)

    def _grams(self, method: LinearMethod) -> torch.Tensor | None:
        """Per stream and band, ``_centred_gram`` of the stored quantities; None if the method stores nothing."""
        n, per_stream = self.trajectory.n_steps, []
        for stream in self.trajectory.streams.values():
            embeddings = stream.stacked("embeddings")
            stored = method.encode(stream.stacked("crfs").flatten(0, 1),
                                   None if embeddings is None else embeddings.flatten(0, 1))  # [n * b, L, k]
            if stored is None:
                return None
            bands = [stored] if method.splitter is None else list(method.splitter.split(stored, stream.layout))
            per_stream.append(torch.stack([_centred_gram(band.reshape(n, -1)) for band in bands]))
        return torch.stack(per_stream)

    def row(self, history: tuple[int, ...], stop: int) -> list[float]:
        sigmas, n = self.trajectory.sigmas, self.trajectory.n_steps
        steps = list(range(history[0] + 1, stop))
        if not steps:
            return []
        if not self.usable:
            raise ValueError(f"{self.method.name} cannot be scored on this recording (no embeddings)")
        known = [sigmas[k] for k in history]
        unit = sigma_per_step(known, history)
        bands = self.grams.shape[1]
        w = torch.tensor([self.method.band_weights(known, unit, sigmas[j])[2 - bands:] for j in steps],
                         dtype=torch.float64)  # [J, bands, h]: one band unsplit (low == high), else (low, high)
        # coefficients over (history..., step j, mean): the forecast minus the truth
        c = torch.cat([w, -torch.ones(*w.shape[:2], 1, dtype=w.dtype), w.sum(-1, keepdim=True) - 1], dim=-1)
        index = torch.tensor([list(history) + [j, n] for j in steps])  # [J, h + 2]
        g = self.grams[:, :, index[:, :, None], index[:, None, :]]  # [S, bands, J, h + 2, h + 2]
        squared = torch.einsum("jbh,sbjhk,jbk->sj", c, g, c)
        e = squared.clamp_min(0).sqrt() / self.norms[:, steps].sqrt()
        e = torch.nan_to_num(e, nan=UNUSABLE_ERROR).clamp_max(UNUSABLE_ERROR).mean(0)
        return (self.weights[steps] * e).tolist()


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
    """``budget`` full steps spread evenly over ``n_steps`` (step 0 first): gaps differ by at most one."""
    return tuple(i * n_steps // budget for i in range(budget))


def regular_placement(n_steps: int, budget: int) -> tuple[int, ...]:
    """``budget`` full steps every ``ceil(n_steps / budget)`` steps from step 0, the ones that would not fit
    moved onto the last steps (the fixed schedule's pattern: warm-up 1, every N, final full steps)."""
    gap = math.ceil(n_steps / budget)
    return tuple(min(i * gap, n_steps - budget + i) for i in range(budget))


@dataclass(frozen=True)
class Choice:
    """What calibration chose: ``method`` with ``params`` on the ``full_steps`` of a run of ``n_steps``;
    ``score`` its predicted error, ``scores`` each candidate's best score (label -> score) and ``even`` the
    chosen method's score on the spread placement (``even_placement``)."""

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
        even = "" if self.even == self.score else f"spread evenly {self.even:.3g}; "
        return (f"{self.label} on {len(self.full_steps)}/{self.n_steps} full steps "
                f"[{','.join(map(str, self.full_steps))}], predicted error {self.score:.3g} ({even}{others})")


def default_max_gap(n_steps: int, budget: int) -> int:
    """The largest gap searched: twice the even spacing (at least 4, and enough to cover the run)."""
    return max(4, 2 * math.ceil(n_steps / budget))


@dataclass(frozen=True)
class Scored:
    """One candidate's chosen placement of the budget and its score, and every placement scored:
    ``placements[kind] = (full_steps, score)``."""

    candidate: Candidate
    full_steps: tuple[int, ...]
    score: float
    placements: dict[str, tuple[tuple[int, ...], float]]

    @property
    def even(self) -> float:
        """The score on the spread placement (``even_placement``)."""
        return self.placements["even"][1]


PLACEMENTS = ("uniform", "even", "regular", "searched")
UNIFORM = ("even", "regular")  # placement "uniform": the better scored of these


def score_candidates(trajectory: Trajectory, budget: int, base, candidates: Sequence[Candidate] = CANDIDATES,
                     placement: str = "uniform", max_gap: int | None = None, transform: str = "dct",
                     noise_weighted: bool = False, compounding: bool = True) -> list[Scored]:
    """Each candidate's score on exactly ``budget`` full steps: the ``base`` config's ``final_full`` last steps
    (as the node runs them; ``base`` is the ``CacheConfig`` the candidates' settings replace) and the rest
    evenly spaced from step 0 (``placement="even"``: ``even_placement``), every N steps (``"regular"``:
    ``regular_placement``), the better scored of those two (``"uniform"``, the default) or placed by
    ``best_placement`` (``"searched"``; band splits by ``transform``; ``noise_weighted`` and ``compounding``:
    see the module docstring). The even and regular placements are scored in every case."""
    check_choice("placement", placement, PLACEMENTS)
    n = trajectory.n_steps
    budget = min(check_int("full steps", budget, 1), n)
    final = min(base.final_full, budget - 1)  # step 0 is full too
    searched, tail = n - final, tuple(range(n - final, n))  # placed: the steps before the final ones
    gap = max_gap if max_gap is not None else default_max_gap(searched, budget - final)
    fixed = {"even": even_placement(searched, budget - final) + tail,
             "regular": regular_placement(searched, budget - final) + tail}
    kinds = UNIFORM if placement == "uniform" else (placement,)
    scored, cache = [], {}
    for candidate in candidates:
        method = candidate.build(base, transform)
        errors = StepErrors(trajectory, method, noise_weighted, cache)
        if not errors.usable:
            scored.append(Scored(candidate, fixed["even"], math.inf,
                                 {kind: (steps, math.inf) for kind, steps in fixed.items()}))
            continue
        placements = {kind: (steps, placement_score(errors.row, steps, n, method.history_size, compounding))
                      for kind, steps in fixed.items()}
        if placement == "searched":
            steps, score = best_placement(errors.row, searched, budget - final, method.history_size, gap,
                                          compounding)
            placements["searched"] = (steps + tail, score)
        steps, score = min((placements[kind] for kind in kinds), key=lambda p: p[1])
        scored.append(Scored(candidate, steps, score, placements))
    return scored


def calibrate(trajectory: Trajectory, budget: int, base, candidates: Sequence[Candidate] = CANDIDATES,
              placement: str = "uniform", max_gap: int | None = None, transform: str = "dct") -> Choice:
    """The candidate and its placement of exactly ``budget`` full steps (``score_candidates``) with the least
    predicted error (the earliest of ``candidates`` within ``TIE`` of it)."""
    scored = score_candidates(trajectory, budget, base, candidates, placement, max_gap, transform)
    least = min(s.score for s in scored)
    best = next(s for s in scored if s.score <= least * (1 + TIE))
    c = best.candidate
    return Choice(c.label, c.method, dict(c.params), best.full_steps, trajectory.n_steps, best.score,
                  {s.candidate.label: s.score for s in scored}, best.even)
