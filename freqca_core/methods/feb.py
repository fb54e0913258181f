"""FEB-Cache core (arXiv 2503.07120): separate attention/MLP caching driven by a cache table, and
exposure-bias reduction at cached steps. Pure torch; never imports ComfyUI.

- ``CacheTable``: one action per sampler step, ``"full"`` (blocks run, attention kernels computed and
  stored), ``"attn"`` (blocks run, every attention kernel call returns the output stored at the last full
  step: projections and MLPs still run) or ``"skip"`` (attention and MLP outputs of every block reused =
  blocks skipped; since every block is residual this is ``crf_last + (embedding_now - embedding_last)``).
  A table is written for a reference step count and resampled by step fraction for other counts.
- ``default_table``: a fixed pattern for models without measurements (tables derived from measurements:
  ``freqca_lab.feb_tables``).
- ``exposure_scale``: rescale a cached step's prediction (epsilon or flow velocity) by ``1 / delta`` on
  its noise component.
- ``AttentionCache``: attention kernel outputs by (stream, call index), stored at full steps and served at
  ``"attn"`` steps (through an ``optimized_attention_override``-style callable).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Mapping, Sequence

import torch

from ..forecast import ReuseForecaster
from ..schedule import StepSchedule, resampled_index
from ..validation import check_choice, check_float, check_int
from .base import EmbeddingResidual, ForecastMethod, MethodSpec

FULL, ATTN, SKIP = "full", "attn", "skip"
ACTIONS = (FULL, ATTN, SKIP)
LETTERS = {FULL: "F", ATTN: "a", SKIP: "b"}  # b: blocks bypassed
PREDICTIONS = ("eps", "flow")
LEVELS = ("quality", "balanced", "fast")
TABLE_FORMAT = "freqca-feb-table"


# --------------------------------------------------------------------------------------------- cache table

@dataclass
class CacheTable:
    """Per-step actions written for ``len(actions)`` reference steps.

    ``action(step, n_steps)`` maps ``step`` of a run with ``n_steps`` steps to reference index
    ``floor((step + 0.5) * n_ref / n_steps)`` (the reference step whose span holds the step's centre; the
    identity when ``n_steps == n_ref``). Step 0 is always ``"full"`` (nothing is stored before it) and the
    last step is ``"full"`` when ``last_full`` (its output is the image). ``meta`` is free-form (kept in JSON).
    """

    actions: list[str]
    last_full: bool = True
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.actions, str):
            raise ValueError("actions must be a list of action names, not a string (use CacheTable.parse)")
        self.actions = list(self.actions)
        check_int("table steps", len(self.actions), 1, 100_000)
        for i, a in enumerate(self.actions):
            if a not in ACTIONS:
                raise ValueError(f"table action at step {i} must be one of {', '.join(ACTIONS)}; got {a!r}")
        if not isinstance(self.last_full, bool):
            raise ValueError(f"last_full must be true or false, got {self.last_full!r}")
        self.actions[0] = FULL

    @classmethod
    def parse(cls, letters: str, last_full: bool = True, meta: dict | None = None) -> "CacheTable":
        """From a timeline string: ``F`` full, ``a`` attn, ``b`` skip (blocks bypassed; spaces ignored), e.g. ``"FabbFabF"``."""
        back = {v: k for k, v in LETTERS.items()}
        letters = "".join(letters.split())
        bad = sorted({c for c in letters if c not in back})
        if bad:
            raise ValueError(f"table letters must be F (full), a (attn) or b (skip: blocks bypassed); got {''.join(bad)!r}")
        return cls([back[c] for c in letters], last_full, dict(meta or {}))

    @property
    def n_ref(self) -> int:
        return len(self.actions)

    def action(self, step: int, n_steps: int | None = None) -> str:
        """The action of sampler step ``step`` (0-based) in a run of ``n_steps`` (None: the reference)."""
        n = self.n_ref if n_steps is None else check_int("n_steps", n_steps, 1)
        step = check_int("step", step, 0, n - 1)
        if step == 0 or (self.last_full and step == n - 1):
            return FULL
        return self.actions[resampled_index(step, n, self.n_ref)]

    def resolve(self, n_steps: int | None = None) -> list[str]:
        """All actions of a run with ``n_steps`` steps."""
        n = self.n_ref if n_steps is None else check_int("n_steps", n_steps, 1)
        return [self.action(i, n) for i in range(n)]

    def counts(self, n_steps: int | None = None) -> dict[str, int]:
        """``{"full": .., "attn": .., "skip": ..}`` for a run of ``n_steps`` (None: the reference)."""
        acts = self.resolve(n_steps)
        return {a: acts.count(a) for a in ACTIONS}

    def timeline(self, n_steps: int | None = None) -> str:
        """One letter per step: ``F`` full, ``a`` attention reused, ``b`` blocks skipped."""
        return "".join(LETTERS[a] for a in self.resolve(n_steps))

    def to_dict(self) -> dict:
        return {"format": TABLE_FORMAT, "version": 1, "steps": self.n_ref, "last_full": self.last_full,
                "timeline": self.timeline(), "actions": list(self.actions), "meta": self.meta}

    @classmethod
    def from_dict(cls, data: Any, where: str = "cache table") -> "CacheTable":
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
        if data.get("format", TABLE_FORMAT) != TABLE_FORMAT:
            raise ValueError(f"{where}: format is {data.get('format')!r}, expected {TABLE_FORMAT!r}")
        if "actions" not in data:
            raise ValueError(f"{where}: missing 'actions' (a list of {', '.join(ACTIONS)})")
        actions = data["actions"]
        if not isinstance(actions, list):
            raise ValueError(f"{where}: 'actions' must be a list, got {type(actions).__name__}")
        if "steps" in data and data["steps"] != len(actions):
            raise ValueError(f"{where}: 'steps' is {data['steps']} but there are {len(actions)} actions")
        try:
            return cls(actions, data.get("last_full", True), dict(data.get("meta") or {}))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "CacheTable":
        """A table written by ``save`` (clear errors for a missing file, bad JSON or bad contents)."""
        return cls.from_dict(read_json(path), f"cache table {path}")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cache table file not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"cache table file {path} is not valid JSON: {exc}") from None


DEFAULT_PATTERNS = {"quality": "Fa", "balanced": "Fab", "fast": "Fabb"}


def default_table(n_steps: int, level: str = "balanced", last_full: bool = True) -> CacheTable:
    """A table for models without calibration measurements.

    The first ``max(1, round(0.1 * n_steps))`` steps and (``last_full``) the last step are full; the steps
    in between repeat the level's pattern from a full step: quality ``F a`` (attention reused every other
    step, MLP always computed), balanced ``F a b``, fast ``F a b b``. Attention (slow, low-frequency) is
    reused first; the MLP (fast, high-frequency) only after it was recomputed once since the full step.
    """
    n = check_int("n_steps", n_steps, 1, 100_000)
    pattern = DEFAULT_PATTERNS[check_choice("level", level, LEVELS)]
    warm = max(1, round(0.1 * n))
    letters = ["F"] * warm + [pattern[(i - warm) % len(pattern)] for i in range(warm, n)]
    table = CacheTable.parse("".join(letters), last_full,
                             {"rule": "default_table", "level": level, "pattern": pattern, "warmup_steps": warm})
    if last_full:
        table.actions[-1] = FULL
    return table


# ------------------------------------------------------------------------------------------ exposure bias

def exposure_scale(out: torch.Tensor, x: torch.Tensor | None, sigma: float | torch.Tensor, delta: float,
                   prediction: str = "flow") -> torch.Tensor:
    """Reduce exposure bias at a cached step: divide the prediction's *noise* component by ``delta``.

    * ``prediction="eps"``: the output is the noise prediction: ``eps' = out / delta`` (FEB-Cache's public
      code, delta ~ 0.965). ``x`` and ``sigma`` are not used.
    * ``prediction="flow"`` (rectified flow, ``x_t = (1 - s) x0 + s eps``, ``v = eps - x0``): the velocity
      splits exactly into ``eps_hat = x_t + (1 - s) v`` and ``x0_hat = x_t - s v`` (check:
      ``x_t + (1 - s)(eps - x0) = eps``, ``x_t - s(eps - x0) = x0``). Keep ``x0_hat``, scale ``eps_hat`` by
      ``1 / delta`` and recompose: ``v' = eps_hat / delta - x0_hat = v + (1/delta - 1)(x_t + (1 - s) v)``.

    Meaning of ``delta``: ``delta < 1`` *enlarges* the predicted noise (FEB-Cache's setting), ``delta > 1``
    shrinks it (the "epsilon scaling" of Ning et al.), ``delta = 1`` is the identity. In an Euler step
    ``x' = x + (s' - s) v'`` with ``s' < s``, ``delta < 1`` removes ``(s - s')(1/delta - 1) eps_hat`` more
    noise than the unscaled step. ``sigma``: a float or a ``[B]`` tensor (one per batch row).
    """
    delta = check_float("delta", delta, 0.0, 10.0, low_open=True)
    check_choice("prediction", prediction, PREDICTIONS)
    if delta == 1.0:
        return out
    if prediction == "eps":
        return out / delta
    if x is None:
        raise ValueError("exposure_scale: x (the model input x_t) is needed for flow prediction")
    if x.shape != out.shape:
        raise ValueError(f"exposure_scale: x has shape {tuple(x.shape)} but the output {tuple(out.shape)}")
    if isinstance(sigma, torch.Tensor) and sigma.dim() > 0:
        if sigma.numel() != out.shape[0]:
            raise ValueError(f"exposure_scale: sigma has {sigma.numel()} values for a batch of {out.shape[0]}")
        sigma = sigma.to(out).reshape(-1, *([1] * (out.dim() - 1)))
    else:
        sigma = float(sigma)
    eps_hat = x.to(out) + (1 - sigma) * out
    return out + (1.0 / delta - 1.0) * eps_hat


# ---------------------------------------------------------------------------------------- attention cache

class AttentionCache:
    """Attention kernel outputs ``[b, L, ...]`` by ``(stream, call index)``.

    One model call's batch is split evenly over its ``streams`` (uncond/cond chunks, as in
    ``CacheController``). ``override(streams, serve=False)`` returns a callable for one model call with the
    signature of ComfyUI's ``optimized_attention_override`` (``override(func, *args, **kwargs)``), which
    numbers the kernel calls 0, 1, ... in call order: when storing, it runs ``func`` and keeps a copy of
    each stream's chunk; when serving, it returns the stored chunks (a fresh tensor on the device and dtype
    of the call's first tensor argument, never the stored one) and falls back to ``func`` (counted in
    ``misses``) when a chunk is missing or does not fit the call: each chunk must have ``batch / len(streams)``
    rows and all chunks together as many elements as the first tensor argument (the queries: an attention
    output has the queries' rows, tokens and heads, with the values' head dim, equal in these DiTs).
    ``offload_device`` (e.g. ``"cpu"``) keeps the stored tensors there.
    """

    def __init__(self, offload_device: torch.device | str | None = None) -> None:
        self.offload_device = torch.device(offload_device) if offload_device is not None else None
        self.store_: dict[tuple[Hashable, int], torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def store(self, stream: Hashable, index: int, out: torch.Tensor) -> None:
        self.store_[(stream, int(index))] = out.detach().to(device=self.offload_device or out.device, copy=True)

    def has(self, stream: Hashable, index: int) -> bool:
        return (stream, int(index)) in self.store_

    def serve(self, stream: Hashable, index: int, device: torch.device | str | None = None,
              dtype: torch.dtype | None = None) -> torch.Tensor:
        """A fresh copy of the stored output (KeyError if none) on ``device``/``dtype`` (default: stored)."""
        stored = self.store_[(stream, int(index))]
        return stored.to(device=device or stored.device, dtype=dtype or stored.dtype, copy=True)

    def override(self, streams: Sequence[Hashable], serve: bool = False) -> "AttentionCall":
        return AttentionCall(self, tuple(streams) or (0,), serve)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.store_.values())

    def __len__(self) -> int:
        return len(self.store_)

    def clear(self) -> None:
        self.store_.clear()
        self.hits = self.misses = 0


class AttentionCall:
    """The attention override of one model call (see ``AttentionCache.override``)."""

    def __init__(self, cache: AttentionCache, streams: tuple[Hashable, ...], serve: bool) -> None:
        self.cache, self.streams, self.serve, self.index = cache, streams, serve, 0

    def __call__(self, func: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
        index = self.index
        self.index += 1
        n = len(self.streams)
        like = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if self.serve and like is not None and like.shape[0] % n == 0:
            keys = [(s, index) for s in self.streams]
            stored = [self.cache.store_.get(k) for k in keys]
            if all(t is not None and t.shape[0] == like.shape[0] // n for t in stored) and \
                    sum(t.numel() for t in stored) == like.numel():
                self.cache.hits += 1
                parts = [t.to(device=like.device, dtype=like.dtype) for t in stored]
                return torch.cat(parts, dim=0) if n > 1 else parts[0].clone()
            self.cache.misses += 1
        out = func(*args, **kwargs)
        if not self.serve and out.shape[0] % n == 0:
            for stream, chunk in zip(self.streams, out.chunk(n, dim=0)):
                self.cache.store(stream, index, chunk)
        return out


# ----------------------------------------------------------------------------------- method and schedule

class FEBSchedule(StepSchedule):
    """The table as a schedule: the blocks run at ``full`` and ``attn`` steps, not at ``skip`` steps."""

    kind = "table"

    def __init__(self, table: CacheTable) -> None:
        self.table = table

    @property
    def label(self) -> str:
        return f"table {self.table.meta.get('level', 'custom')}"

    def is_full(self, step: int, n_steps: int | None) -> bool:
        if n_steps is None and step >= self.table.n_ref:
            return True  # unknown length, past the table: compute
        return self.table.action(step, n_steps) != SKIP


class FEBMethod(EmbeddingResidual, ForecastMethod):
    """FEB-Cache on the controller. ``skip`` steps: the blocks are skipped and their residuals reused, i.e.
    the stored residual ``crf - embedding`` of the last step whose blocks ran plus the current embedding
    (``encode`` / ``decode``). ``attn`` steps: the blocks run with their attention kernels served from the
    last full step (``full_call_mode``, ``attention_override``). The outputs of calls that reuse features
    are exposure-scaled by ``delta`` (``exposure_scale``; flow prediction, when the model input is known)."""

    def __init__(self, table: CacheTable, delta: float = 1.0) -> None:
        super().__init__("feb", ReuseForecaster())
        self.table = table
        self.delta = check_float("exposure_delta", delta, 0.0, 10.0, low_open=True)
        self.attention = AttentionCache()

    def start_run(self, offload_device: torch.device | None) -> None:
        self.attention = AttentionCache(offload_device)

    def end_run(self) -> dict[str, int]:
        counts = {"attention_served": self.attention.hits, "attention_computed": self.attention.misses}
        self.attention.clear()
        return counts

    def full_call_mode(self, step: int, n_steps: int | None) -> str | None:
        """``"store"`` at full steps, ``"serve"`` at attention-reuse steps (blocks run at both)."""
        if ATTN not in self.table.actions:
            return None  # no step would use stored attention: store none
        if n_steps is None and step >= self.table.n_ref:
            return "store"
        return {FULL: "store", ATTN: "serve"}.get(self.table.action(step, n_steps))

    def attention_override(self, plan) -> AttentionCall | None:
        if plan.attention is None:
            return None
        return self.attention.override(plan.streams, serve=plan.attention == "serve" and len(self.attention) > 0)

    def finish_call(self, plan, out: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        reused = not plan.full or plan.attention == "serve"
        if not reused or self.delta == 1.0 or x is None or plan.step is None:
            return out
        return exposure_scale(out, x[:, : out.shape[1]], plan.sigma, self.delta, "flow")

    @property
    def extra_bytes(self) -> int:
        return self.attention.nbytes

    def describe(self) -> dict:
        return {"table": self.table.timeline(), "delta": self.delta, **{k: v for k, v in self.table.meta.items()
                                                                        if k in ("level", "rule")}}


FEB_REFERENCE_STEPS = 50  # table length when a run's step count is unknown


def build(config, n_steps: int | None, transform: str):
    """FEB-Cache's cache table (``config.feb_level``) is also its schedule."""
    table = config.feb_table if config.feb_table is not None else default_table(n_steps or FEB_REFERENCE_STEPS,
                                                                                config.feb_level)
    return FEBMethod(table, config.exposure_delta), FEBSchedule(table)


SPEC = MethodSpec("feb", "FEB-Cache: attention / block reuse from a cache table, exposure-bias scaling", build,
                  ("feb_level", "exposure_delta"), attention=True)
