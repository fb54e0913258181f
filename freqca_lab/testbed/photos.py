"""Training data of the ``photos`` testbed: random crops of the photographs scikit-image ships.

Dev-only: scikit-image is imported when ``PhotoData()`` is built (training), never by the shipped model,
its prompt table, the benchmark or the tests. A prompt is (photo, framing): ``"<photo> wide"`` crops
55-100% of the largest window of the testbed's aspect ratio that fits in the photo, ``"<photo> close"``
15-35% of it; position and a horizontal flip are random. Images are RGB in [-1, 1], ``[3, H, W]``;
``render(prompt, seed, size)`` is a pure function of its arguments (numpy PCG64).
"""
from __future__ import annotations

import importlib
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

# (prompt word, scikit-image loader); all inside the scikit-image wheel (no download), public domain or CC0.
PHOTOS = (("astronaut", "astronaut"), ("cat", "chelsea"), ("coffee", "coffee"), ("rocket", "rocket"),
          ("galaxies", "hubble_deep_field"), ("retina", "retina"), ("tissue", "immunohistochemistry"),
          ("cameraman", "camera"))
FRAMINGS = {"wide": (0.55, 1.0), "close": (0.15, 0.35)}
PROMPTS = tuple(f"{word} {framing}" for word, _ in PHOTOS for framing in FRAMINGS)


class PhotoData:
    """The source photos, loaded once from scikit-image; ``render``/``render_batch`` crop them."""

    prompts = PROMPTS

    def __init__(self) -> None:
        try:
            skdata = importlib.import_module("skimage.data")
        except ImportError as exc:  # dev-only dependency: only training needs it
            raise ImportError("training the photos testbed needs scikit-image: "
                              "python3 -m pip install scikit-image") from exc
        self.images = [Image.fromarray(getattr(skdata, loader)()).convert("RGB") for _, loader in PHOTOS]

    def render(self, prompt: int, seed: int, size: tuple[int, int]) -> np.ndarray:
        """Crop of ``PROMPTS[prompt]`` for a seed: float32 [3, H, W] in [-1, 1]."""
        if not 0 <= prompt < len(PROMPTS):
            raise ValueError(f"prompt must be in [0, {len(PROMPTS) - 1}], got {prompt}")
        height, width = size
        photo = self.images[prompt // len(FRAMINGS)]
        low, high = FRAMINGS[PROMPTS[prompt].split(" ")[1]]
        rng = np.random.default_rng(seed)
        max_h = min(photo.height, photo.width * height / width)
        crop_h = rng.uniform(low, high) * max_h
        crop_w = crop_h * width / height
        top = rng.uniform(0, photo.height - crop_h)
        left = rng.uniform(0, photo.width - crop_w)
        crop = photo.resize((width, height), Image.Resampling.BOX, box=(left, top, left + crop_w, top + crop_h))
        arr = np.asarray(crop, dtype=np.float32) / 127.5 - 1.0
        if rng.random() < 0.5:
            arr = arr[:, ::-1]
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def render_batch(self, prompts: Sequence[int], seeds: Sequence[int], size: tuple[int, int]) -> Tensor:
        """Stack of ``render`` results: [B, 3, H, W] float32."""
        return torch.from_numpy(np.stack([self.render(int(p), int(s), size) for p, s in zip(prompts, seeds)]))
