"""The trained testbeds, by name: ``shapes`` (the first, 32x32 procedural shapes) and ``photos`` (24x40 crops
of photographs). A ``Testbed`` says where its weights are, its image size, architecture, prompt tokens and
sample-grid prompts, and builds its training data on demand (``photos`` then needs scikit-image; loading
the shipped weights never does).
"""
from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import torch
from torch import Tensor

from .data import PromptTable
from .model import WEIGHTS_DIR, TinyFlux, TinyFluxConfig, load_model


class TrainingData(Protocol):
    """What training needs from a data set: prompt texts and a pure ``render_batch``."""

    prompts: tuple[str, ...]

    def render_batch(self, prompts: Sequence[int], seeds: Sequence[int], size: tuple[int, int]) -> Tensor:
        """[B, 3, H, W] float32 in [-1, 1], a pure function of (prompt, seed, size) per row."""
        ...


@dataclass(frozen=True)
class Testbed:
    """One trained testbed: ``size`` (H, W) pixels, ``config`` of its TinyFlux, ``tokens`` text tokens,
    ``n_prompts`` prompts (null prompt not counted). The benchmark's reported and calibration prompts are
    the walks ``(start + stride * i) % n_prompts`` of ``report_walk`` and ``calib_walk`` (disjoint for the
    benchmark's few seeds)."""

    name: str
    weights_dir: Path
    size: tuple[int, int]
    config: TinyFluxConfig
    tokens: int
    n_prompts: int
    report_walk: tuple[int, int]
    calib_walk: tuple[int, int]
    grid_prompts: tuple[str, ...]
    data_module: str  # module of this package holding the data class (imported only when training)
    data_class: str
    summary: str  # what it is trained on, for the MODEL_CARD's first sentence
    data_lines: tuple[str, ...]  # MODEL_CARD "Data" bullet points

    def training_data(self) -> TrainingData:
        """A fresh instance of the data set (may import dev-only packages)."""
        module = importlib.import_module(f"{__package__}.{self.data_module}")
        return getattr(module, self.data_class)()

    def report_prompts(self, k: int) -> list[int]:
        """Prompt ids of the reported (held-out) runs."""
        start, stride = self.report_walk
        return [(start + stride * i) % self.n_prompts for i in range(k)]

    def calib_prompts(self, k: int) -> list[int]:
        """Prompt ids for calibration: a different walk from ``report_prompts``."""
        start, stride = self.calib_walk
        return [(start + stride * i) % self.n_prompts for i in range(k)]

    @property
    def feb_table(self) -> Path:
        """FEB-Cache tables derived for this model by ``febprobe --testbed NAME``."""
        return self.weights_dir / "feb_table.json"

    def load(self, device: str | torch.device = "cpu") -> tuple[TinyFlux, PromptTable]:
        """The shipped trained model (fp32, eval mode) and its prompt table."""
        model = load_model(self.weights_dir / "tinyflux.safetensors", device)
        return model, PromptTable.load(self.weights_dir / "prompts.safetensors", device)


TESTBEDS = {
    "shapes": Testbed(
        name="shapes", weights_dir=WEIGHTS_DIR, size=(32, 32), config=TinyFluxConfig(), tokens=4,
        n_prompts=36, report_walk=(2, 13), calib_walk=(9, 13),  # stride 13 walks over all colours and shapes
        grid_prompts=("red circle", "green square", "blue triangle", "yellow ring", "magenta cross",
                      "cyan stripes", "blue circle", "red cross"),
        data_module="data", data_class="ShapeData", summary="procedural images",
        data_lines=(
            "36 prompts = 6 shapes (circle, square, triangle, ring, cross, stripes) x 6 colours "
            "(red, green, blue, yellow, magenta, cyan), plus a null prompt for CFG (10% condition dropout).",
            "One shape of random size, position and rotation on a muted gradient background with a faint "
            "wave or blob texture; RGB in [-1, 1]. `freqca_lab.testbed.data.render(prompt, seed, size)`.",
        )),
    "photos": Testbed(
        name="photos", weights_dir=WEIGHTS_DIR.parent / "weights_photos", size=(24, 40),
        config=TinyFluxConfig(hidden_size=128, num_heads=4, depth=1, depth_single_blocks=5,
                              axes_dim=[8, 12, 12], mlp_ratio=3.0),
        tokens=6, n_prompts=16, report_walk=(2, 5), calib_walk=(9, 5),
        grid_prompts=("astronaut wide", "cat wide", "cat close", "coffee wide", "rocket wide", "galaxies close",
                      "retina wide", "tissue close", "cameraman wide"),
        data_module="photos", data_class="PhotoData", summary="crops of eight public-domain photographs",
        data_lines=(
            "16 prompts = 8 photographs (astronaut, cat, coffee, rocket, galaxies, retina, tissue, cameraman) "
            "x 2 framings (wide: 55-100% of the largest 3:5 window, close: 15-35%), plus a null prompt for CFG "
            "(10% condition dropout).",
            "Random crop position and horizontal flip, box-filtered down to 24x40; RGB in [-1, 1]. "
            "`freqca_lab.testbed.photos.PhotoData().render(prompt, seed, size)`.",
            "Source: the sample images inside the scikit-image wheel (`skimage.data`: astronaut, chelsea, "
            "coffee, rocket, hubble_deep_field, retina, immunohistochemistry, camera), all public domain or "
            "CC0 per their docstrings. scikit-image is needed only to train, not to load the weights.",
            "Held-out crops are new positions/scales/flips of the same 8 photographs (there are no unseen photos).",
        )),
}


def get_testbed(name: str = "shapes") -> Testbed:
    """The testbed called ``name``; a clear error naming the choices otherwise."""
    if name not in TESTBEDS:
        raise ValueError(f"testbed must be one of {sorted(TESTBEDS)}, got {name!r}")
    return TESTBEDS[name]


def load_testbed(device: str | torch.device = "cpu", name: str = "shapes") -> tuple[TinyFlux, PromptTable]:
    """The shipped trained model of testbed ``name`` (fp32, eval mode) and its prompt table."""
    return get_testbed(name).load(device)


def add_testbed_argument(parser: argparse.ArgumentParser) -> None:
    """``--testbed shapes|photos`` (default shapes) for the scripts that run a testbed."""
    parser.add_argument("--testbed", choices=sorted(TESTBEDS), default="shapes",
                        help="which trained testbed: shapes (32x32 procedural shapes, default) or photos "
                             "(24x40 crops of photographs)")
