"""The testbed registry and the second trained testbed (``photos``): shipped weights, shapes, fidelity.

None of these needs scikit-image (the photos' data set): the shipped weights, prompt table and held-out
images are enough.
"""
from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import load_file

from freqca_lab import bench
from freqca_lab.testbed import TESTBEDS, get_testbed, load_testbed
from freqca_lab.testbed import data as shape_data
from freqca_lab.testbed import photos
from freqca_lab.testbed.sampling import euler_sample, flux_sigmas, seeded_noise

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = {"shapes": shape_data.PROMPTS, "photos": photos.PROMPTS}


@pytest.fixture(scope="module")
def photos_testbed():
    return load_testbed(name="photos")


def test_unknown_testbed_is_a_clear_error():
    with pytest.raises(ValueError, match=r"testbed must be one of \['photos', 'shapes'\], got 'cats'"):
        get_testbed("cats")
    with pytest.raises(SystemExit):
        bench.parse_args(["--testbed", "cats"])


@pytest.mark.parametrize("name", sorted(TESTBEDS))
def test_registry_matches_the_shipped_files(name):
    bed = get_testbed(name)
    model, table = bed.load()
    assert model.config == bed.config and table.names == PROMPTS[name] and bed.n_prompts == len(table.names)
    assert table.context.shape[1] == bed.tokens
    assert (bed.weights_dir / "tinyflux.safetensors").stat().st_size <= 8 * 1024 * 1024
    assert (bed.weights_dir / "MODEL_CARD.md").exists() and (bed.weights_dir / "samples.png").exists()


@pytest.mark.parametrize("name", sorted(TESTBEDS))
def test_report_and_calibration_prompts_are_disjoint(name):
    bed = get_testbed(name)
    for k in range(1, 5):
        report, calib = bed.report_prompts(k), bed.calib_prompts(k)
        assert len(set(report)) == len(set(calib)) == k and set(report).isdisjoint(calib)
        assert all(0 <= p < bed.n_prompts for p in report + calib)
        assert bench.report_prompts(k, name) == report and bench.calib_prompts(k, name) == calib


def test_the_two_testbeds_differ():
    shapes, photos_bed = get_testbed("shapes"), get_testbed("photos")
    assert photos_bed.size == (24, 40) and shapes.size == (32, 32)
    assert photos_bed.weights_dir != shapes.weights_dir
    a, b = shapes.config, photos_bed.config
    assert (a.depth, a.depth_single_blocks, a.hidden_size) != (b.depth, b.depth_single_blocks, b.hidden_size)


def test_photos_model_has_the_shape_it_claims(photos_testbed):
    model, table = photos_testbed
    c = model.config
    assert (c.depth, c.depth_single_blocks, c.hidden_size, c.num_heads) == (1, 5, 128, 4)
    assert len(model.double_blocks) == 1 and len(model.single_blocks) == 5
    assert all(p.dtype == torch.float32 for p in model.parameters()) and not model.training
    context, y = table([table.index("cat wide")])
    with torch.no_grad():
        e = model.embed(seeded_noise([0], (24, 40)), torch.full((1,), 0.5), context, y)
    assert e.grid == (12, 20) and e.img.shape == (1, 240, 128) and e.txt.shape == (1, 6, 128)


def test_photos_model_generates_a_finite_image_of_its_size(photos_testbed):
    model, table = photos_testbed
    ids = [table.index("astronaut wide"), table.null_id]
    context, y = table(ids)

    def velocity(x, sigma):
        cond, uncond = model(torch.cat([x, x]), torch.full((2,), sigma), context, y).chunk(2)
        return uncond + 3.0 * (cond - uncond)

    with torch.no_grad():
        out = euler_sample(velocity, seeded_noise([0], (24, 40)), flux_sigmas(12))
    assert out.shape == (1, 3, 24, 40) and torch.isfinite(out).all()
    # an image, not noise: neighbouring pixels are alike (for unit noise the mean step is ~1.13)
    assert (out[..., 1:] - out[..., :-1]).abs().mean() < 0.3 and out.abs().max() < 1.5


def test_photos_model_denoises_held_out_crops(photos_testbed):
    model, table = photos_testbed
    held = load_file(str(get_testbed("photos").weights_dir / "heldout.safetensors"))
    ids, x0 = held["ids"], held["x0"].float()
    assert x0.shape == (32, 3, 24, 40) and ids.tolist() == [i % 16 for i in range(32)]
    xt = 0.5 * x0 + 0.5 * seeded_noise(range(32), (24, 40))
    with torch.no_grad():
        x0_hat = xt - 0.5 * model(xt, torch.full((32,), 0.5), *table(ids))
    assert (x0_hat - x0).pow(2).mean() < 0.25 * x0.pow(2).mean()  # the zero predictor's MSE


def test_photos_needs_scikit_image_only_to_train(monkeypatch, photos_testbed):
    monkeypatch.setitem(sys.modules, "skimage", None)  # as if scikit-image were not installed
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    model, table = load_testbed(name="photos")
    assert torch.equal(model.final_layer.linear.weight, photos_testbed[0].final_layer.linear.weight)
    with pytest.raises(ImportError, match="pip install scikit-image"):
        get_testbed("photos").training_data()
