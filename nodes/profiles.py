"""Calibration profiles of method ``auto``: what a run's calibrated choice is keyed by, read and stored.

A profile is valid for one model, step count, sigma schedule (the sampler's scheduler, denoise and shift),
resolution bucket and number of full steps (the node's speed), so its key holds each: the diffusion model's class and a hash of a few of its weights
and of the weight patches (LoRAs) on the ModelPatcher; the number of steps and a hash of the sigmas; the
latent's size rounded up to ``BUCKET`` latent cells per side; the full-step count. Files go through ``files.write_profile`` /
``read_profile`` (hashed names in ComfyUI's user directory). A missing, unreadable or corrupt profile never
fails a run: the run calibrates (every step full) and the message says why.
"""
from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import replace
from typing import Sequence

import torch

from ..freqca_core import CacheConfig
from ..freqca_core.calibration import Choice
from ..freqca_core.methods.auto import budget_of
from .files import read_profile, write_profile

log = logging.getLogger("freqca")

BUCKET = 16  # latent cells per side of a resolution bucket (128 px for an 8x VAE)
VERSION = 2  # of the calibration a profile came from: 2 weighs steps by their sigma step and picks among two
# uniform placements, so a version-1 profile (another scoring) is not used and the run calibrates again
SAMPLED_WEIGHTS = 3  # parameters (first, middle, last) whose leading values identify the model
VALUES = 256  # leading values hashed per sampled parameter


def model_identity(patcher) -> dict:
    """The model's class and a hash of a few of its weights and of the weight patches on ``patcher``."""
    model = patcher.get_model_object("diffusion_model")
    params = list(model.named_parameters())
    picks = sorted({0, len(params) // 2, len(params) - 1}) if params else []
    digest = hashlib.sha256()
    for i in picks[:SAMPLED_WEIGHTS]:
        name, weight = params[i]
        values = weight.detach().flatten()[:VALUES].to("cpu", torch.float32)
        digest.update(f"{name}{tuple(weight.shape)}".encode())
        digest.update(values.numpy().tobytes())
    for key in sorted(getattr(patcher, "patches", {}) or {}):
        strengths = [p[0] for p in patcher.patches[key] if isinstance(p, tuple) and p]
        digest.update(f"{key}{strengths}".encode())
    return {"class": type(model).__name__, "weights": digest.hexdigest()[:16]}


def profile_key(patcher, sigmas: Sequence[float], latent_shape: Sequence[int], cache: CacheConfig) -> dict:
    """The key of a run's profile: model identity, step count, sigma hash, resolution bucket and the number of
    full steps ``cache`` pays for (its interval, warm-up and final full steps)."""
    rounded = ",".join(f"{float(s):.5f}" for s in sigmas)
    bucket = "x".join(str(math.ceil(int(n) / BUCKET) * BUCKET) for n in latent_shape[2:])
    steps = len(sigmas) - 1
    return {"version": VERSION, **model_identity(patcher), "steps": steps,
            "sigmas": hashlib.sha256(rounded.encode()).hexdigest()[:16], "bucket": bucket,
            "full_steps": budget_of(cache, steps)}


class RunProfile:
    """One run's profile: read at the start (``config``), stored when the run calibrated (``store``);
    ``notes`` say what happened, for the run summary."""

    def __init__(self, key: dict) -> None:
        self.key = key
        self.notes: list[str] = []

    def load(self, base: CacheConfig) -> Choice | None:
        data, message = read_profile(self.key)
        if data is None:
            if "none stored" not in message:
                self.notes.append(f"auto: {message}")
            return None
        try:
            if not isinstance(data, dict) or data.get("key") != self.key:
                raise ValueError("its key is not this run's")
            choice = Choice.from_json(data.get("choice"), base)
            if (choice.n_steps, len(choice.full_steps)) != (self.key["steps"], self.key["full_steps"]):
                raise ValueError(f"made for {len(choice.full_steps)} of {choice.n_steps} steps full")
        except ValueError as exc:
            self.notes.append(f"auto: stored profile unusable ({exc}); this run calibrates again")
            return None
        self.notes.append(f"auto: profile of this model: {choice.text()}")
        return choice

    def config(self, cache: CacheConfig, stored: bool = True) -> CacheConfig:
        """``cache`` with the stored choice (None, or not ``stored``: this run calibrates) and ``store`` as its
        receiver."""
        choice = self.load(cache) if stored else None
        if not stored:
            self.notes.append("auto: recalibrate is on: this run computes every step (calibration) and replaces "
                              "the profile; turn recalibrate off to use it")
        elif choice is None:
            self.notes.append("auto: no profile for this model, steps, schedule and size: this run computes "
                              "every step (calibration) and chooses for the next runs")
        return replace(cache, choice=choice, on_choice=self.store)

    def store(self, choice: Choice) -> None:
        """Keep ``choice`` as this key's profile (a write failure is a note: the next run calibrates again)."""
        try:
            write_profile(self.key, {"key": self.key, "choice": choice.to_json()})
            saved = "saved"
        except (OSError, ValueError) as exc:
            saved = f"not saved ({exc})"
            log.warning("FreqCa auto: profile not saved (%s)", exc)
        self.notes.append(f"auto: calibrated: {choice.text()}; profile {saved}")
