"""Procedural training data: one coloured shape on a muted textured background, and the prompt table.

A prompt is a class id = (colour, shape); ``PROMPTS[i]`` is its text, e.g. ``"red circle"``. Images are
RGB in [-1, 1], ``[3, H, W]``, any H x W; ``render(prompt, seed, size)`` is a pure function of its
arguments (numpy PCG64). The seed fixes layout, size, rotation and background, so one seed rendered
with several prompts gives the same scene with a different object.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

SHAPES = ("circle", "square", "triangle", "ring", "cross", "stripes")
COLOURS = {
    "red": (0.92, 0.14, 0.10),
    "green": (0.15, 0.80, 0.22),
    "blue": (0.14, 0.32, 0.96),
    "yellow": (0.96, 0.86, 0.12),
    "magenta": (0.90, 0.18, 0.86),
    "cyan": (0.10, 0.86, 0.90),
}
PROMPTS = tuple(f"{colour} {shape}" for shape in SHAPES for colour in COLOURS)


def _coverage(distance: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage from a signed distance in pixels (negative inside)."""
    return np.clip(0.5 - distance, 0.0, 1.0)


def _box(qx: np.ndarray, qy: np.ndarray, hx: float, hy: float) -> np.ndarray:
    return np.maximum(np.abs(qx) - hx, np.abs(qy) - hy)


def _shape_alpha(shape: str, qx: np.ndarray, qy: np.ndarray, r: float) -> np.ndarray:
    """Coverage [H, W] of a shape of radius r (pixels) in rotated local coordinates qx, qy."""
    radius = np.hypot(qx, qy)
    if shape == "circle":
        return _coverage(radius - r)
    if shape == "square":
        return _coverage(_box(qx, qy, 0.8 * r, 0.8 * r))
    if shape == "triangle":
        normals = [(np.cos(a), np.sin(a)) for a in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3)]
        edge = np.max([nx * qx + ny * qy for nx, ny in normals], axis=0)
        return _coverage(edge - 0.55 * r)
    if shape == "ring":
        return _coverage(np.abs(radius - 0.72 * r) - 0.28 * r)
    if shape == "cross":
        arm = 0.3 * r
        return _coverage(np.minimum(_box(qx, qy, r, arm), _box(qx, qy, arm, r)))
    if shape == "stripes":
        period = max(0.7 * r, 3.0)
        stripe = np.abs(np.mod(qx / period, 1.0) - 0.5) * period - period / 4
        return _coverage(radius - r) * _coverage(stripe)
    raise ValueError(f"unknown shape {shape!r}")


def _background(rng: np.random.Generator, height: int, width: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Muted two-colour linear gradient with a faint wave or blob texture, [3, H, W] in [0, 1]."""
    greys = rng.uniform(0.12, 0.55, size=(2, 1))
    colours = np.clip(greys + rng.uniform(-0.1, 0.1, size=(2, 3)), 0.0, 1.0)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * (xx / width - 0.5) + np.sin(angle) * (yy / height - 0.5)) + 0.5
    ramp = np.clip(ramp, 0.0, 1.0)
    bg = colours[0][:, None, None] * (1 - ramp) + colours[1][:, None, None] * ramp
    kind = rng.integers(3)
    amp = rng.uniform(0.02, 0.07)
    if kind == 1:
        freq, phase, tilt = rng.uniform(0.3, 1.0), rng.uniform(0, 2 * np.pi), rng.uniform(0, np.pi)
        bg = bg + amp * np.sin(freq * (np.cos(tilt) * xx + np.sin(tilt) * yy) + phase)
    elif kind == 2:
        coarse = rng.normal(size=(4, 4))
        iy = np.clip((yy / height * 3), 0, 3)
        ix = np.clip((xx / width * 3), 0, 3)
        y0, x0 = np.minimum(iy.astype(int), 2), np.minimum(ix.astype(int), 2)
        fy, fx = iy - y0, ix - x0
        blob = (coarse[y0, x0] * (1 - fy) * (1 - fx) + coarse[y0 + 1, x0] * fy * (1 - fx)
                + coarse[y0, x0 + 1] * (1 - fy) * fx + coarse[y0 + 1, x0 + 1] * fy * fx)
        bg = bg + amp * blob
    return bg


def render(prompt: int, seed: int, size: tuple[int, int] = (32, 32)) -> np.ndarray:
    """Image of ``PROMPTS[prompt]`` for a seed: float32 [3, H, W] in [-1, 1]."""
    colour_name, shape = PROMPTS[prompt].split(" ")
    height, width = size
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    bg = _background(rng, height, width, yy, xx)
    short = min(height, width)
    r = rng.uniform(0.2, 0.34) * short
    cy = rng.uniform(r, height - r) if height > 2 * r else height / 2
    cx = rng.uniform(r, width - r) if width > 2 * r else width / 2
    theta = rng.uniform(0, 2 * np.pi)
    dy, dx = yy - cy, xx - cx
    qx, qy = np.cos(theta) * dx + np.sin(theta) * dy, -np.sin(theta) * dx + np.cos(theta) * dy
    alpha = _shape_alpha(shape, qx, qy, r)
    shade = 1.0 + rng.uniform(0.0, 0.15) * np.clip((dx + dy) / (2 * r), -1, 1)
    colour = np.clip(np.asarray(COLOURS[colour_name]) + rng.uniform(-0.05, 0.05, size=3), 0, 1)
    fg = colour[:, None, None] * shade
    img = bg * (1 - alpha) + fg * alpha
    return (np.clip(img, 0.0, 1.0) * 2 - 1).astype(np.float32)


def render_batch(prompts: Sequence[int], seeds: Sequence[int], size: tuple[int, int] = (32, 32)) -> Tensor:
    """Stack of ``render`` results: [B, 3, H, W] float32."""
    return torch.from_numpy(np.stack([render(int(p), int(s), size) for p, s in zip(prompts, seeds)]))


class PromptTable(nn.Module):
    """Per-prompt conditioning: context [P+1, T, Dc] and pooled vector [P+1, Dy]; row P is the null prompt."""

    def __init__(self, names: Sequence[str], context: Tensor, pooled: Tensor):
        super().__init__()
        if context.shape[0] != len(names) + 1 or pooled.shape[0] != len(names) + 1:
            raise ValueError("context and pooled need one row per prompt plus the null prompt")
        self.names = tuple(names)
        self.context = nn.Parameter(context)
        self.pooled = nn.Parameter(pooled)

    @classmethod
    def create(cls, names: Sequence[str], tokens: int, context_dim: int, pooled_dim: int, seed: int) -> PromptTable:
        """Seeded random initialisation (N(0, 1)); training refines it jointly with the model."""
        g = torch.Generator().manual_seed(seed)
        n = len(names) + 1
        return cls(names, torch.randn(n, tokens, context_dim, generator=g), torch.randn(n, pooled_dim, generator=g))

    @property
    def null_id(self) -> int:
        """Index of the empty prompt (unconditional branch for CFG)."""
        return len(self.names)

    def index(self, name: str) -> int:
        """Prompt id for a text such as ``"red circle"``; ``""`` is the null prompt."""
        return self.null_id if name == "" else self.names.index(name)

    def forward(self, ids: Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
        """Conditioning for prompt ids [B] -> (context [B, T, Dc], y [B, Dy])."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.context.device)
        return self.context[ids], self.pooled[ids]

    def save(self, path: str | Path) -> None:
        tensors = {"context": self.context.detach().cpu().contiguous(), "pooled": self.pooled.detach().cpu().contiguous()}
        save_file(tensors, str(path), metadata={"names": "\n".join(self.names)})

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> PromptTable:
        """Read a table written by ``save`` (fp32, frozen)."""
        with safe_open(str(path), framework="pt") as f:
            names = f.metadata()["names"].split("\n")
            table = cls(names, f.get_tensor("context").float(), f.get_tensor("pooled").float())
        return table.to(device).requires_grad_(False)


class ShapeData:
    """Training data of the ``shapes`` testbed, with the same interface as ``photos.PhotoData``."""

    prompts = PROMPTS
    render_batch = staticmethod(render_batch)
