"""The trained testbeds: architecture split, ComfyUI Flux equivalence, data, schedule and shipped weights
(the ``photos`` testbed's own checks are in ``test_testbeds.py``)."""
from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import torch

from freqca_lab.testbed.data import PROMPTS, PromptTable, render, render_batch
from freqca_lab.testbed import TESTBEDS, load_testbed
from freqca_lab.testbed.model import WEIGHTS_DIR, TinyFlux, TinyFluxConfig
from freqca_lab.testbed.sampling import euler_sample, flux_sigmas, seeded_noise

SMALL = dict(vec_in_dim=8, context_in_dim=12, hidden_size=32, num_heads=2, depth=1, depth_single_blocks=2,
             axes_dim=[4, 6, 6])


def random_model(**overrides) -> TinyFlux:
    """A TinyFlux with all weights random (no zero-initialised modulations), fp32."""
    torch.manual_seed(0)
    model = TinyFlux(TinyFluxConfig(**{**SMALL, **overrides}))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.eval()


def random_inputs(model: TinyFlux, b: int, h: int, w: int, tokens: int = 5):
    c = model.config
    g = torch.Generator().manual_seed(h * 100 + w)
    return (torch.randn(b, c.in_channels, h, w, generator=g), torch.rand(b, generator=g),
            torch.randn(b, tokens, c.context_in_dim, generator=g), torch.randn(b, c.vec_in_dim, generator=g))


@pytest.fixture(scope="module")
def testbed():
    return load_testbed()


@pytest.mark.parametrize("h, w", [(32, 32), (24, 40), (17, 23)])
def test_shapes_and_split(h, w):
    model = random_model()
    x, sigma, context, y = random_inputs(model, 2, h, w)
    with torch.no_grad():
        e = model.embed(x, sigma, context, y)
        crf = model.run_blocks(e)
        out = model.final(crf, e)
        full = model(x, sigma, context, y)
    gh, gw = (h + 1) // 2, (w + 1) // 2
    assert e.grid == (gh, gw) and e.size == (h, w)
    assert e.img.shape == crf.shape == (2, gh * gw, model.config.hidden_size)
    assert e.txt.shape == (2, 5, model.config.hidden_size)
    assert out.shape == x.shape
    assert torch.equal(out, full)


def test_run_blocks_leaves_embedding_unchanged():
    model = random_model()
    e = model.embed(*random_inputs(model, 1, 16, 16))
    img, txt = e.img.clone(), e.txt.clone()
    with torch.no_grad():
        first, second = model.run_blocks(e), model.run_blocks(e)
    assert torch.equal(e.img, img) and torch.equal(e.txt, txt) and torch.equal(first, second)


def test_data_deterministic_and_in_range():
    a, b = render(3, 11), render(3, 11)
    assert a.dtype == np.float32 and a.shape == (3, 32, 32)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, render(3, 12))
    assert a.min() >= -1 and a.max() <= 1
    wide = render_batch([0, len(PROMPTS) - 1], [5, 6], size=(24, 40))
    assert wide.shape == (2, 3, 24, 40) and wide.abs().max() <= 1


def test_sigmas_schedule():
    sigmas = flux_sigmas(20, shift=3.0)
    assert len(sigmas) == 21 and sigmas[0] == 1 and sigmas[-1] == 0
    assert torch.all(sigmas[1:] < sigmas[:-1])
    assert torch.allclose(flux_sigmas(4, shift=1.0), torch.linspace(1, 0, 5))
    assert torch.all(flux_sigmas(10, 3.0)[1:-1] > flux_sigmas(10, 1.0)[1:-1])


def test_euler_sample_integrates_constant_velocity():
    seen = []
    noise = seeded_noise([1, 2], (4, 6))
    assert torch.equal(noise[1], seeded_noise([2], (4, 6))[0])
    out = euler_sample(lambda x, s: torch.ones_like(x), noise, flux_sigmas(5), lambda i, x: seen.append(i))
    assert seen == list(range(5))
    assert torch.allclose(out, noise - 1)


def test_shipped_weights(testbed):
    model, table = testbed
    assert (WEIGHTS_DIR / "tinyflux.safetensors").stat().st_size <= 8 * 1024 * 1024
    assert all(p.dtype == torch.float32 for p in model.parameters()) and not model.training
    assert table.names == PROMPTS and table.null_id == len(PROMPTS)
    context, y = table([table.index("red circle"), table.null_id])
    assert context.shape[:2] == (2, table.context.shape[1]) and y.shape == (2, model.config.vec_in_dim)
    with torch.no_grad():
        out = euler_sample(lambda x, s: model(x, torch.full((2,), s), context, y),
                           seeded_noise([0, 1], (32, 32)), flux_sigmas(4))
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()


def test_shipped_model_denoises(testbed):
    model, table = testbed
    ids = torch.arange(16) % len(PROMPTS)
    x0 = render_batch(ids, range(500, 516))  # held-out seeds (training uses seeds >= 1e6)
    xt = 0.5 * x0 + 0.5 * seeded_noise(range(16), (32, 32))
    with torch.no_grad():
        x0_hat = xt - 0.5 * model(xt, torch.full((16,), 0.5), *table(ids))
    assert (x0_hat - x0).pow(2).mean() < 0.25 * x0.pow(2).mean()


def test_prompt_table_round_trip(tmp_path):
    table = PromptTable.create(["a", "b"], tokens=3, context_dim=4, pooled_dim=5, seed=1)
    table.save(tmp_path / "p.safetensors")
    loaded = PromptTable.load(tmp_path / "p.safetensors")
    assert loaded.names == ("a", "b") and loaded.index("") == 2
    assert torch.equal(loaded.context, table.context.detach()) and torch.equal(loaded.pooled, table.pooled.detach())


def comfy_flux(config: TinyFluxConfig):
    """ComfyUI's own Flux class with the testbed's config (ComfyUI imported by the ``comfyui`` fixture)."""
    import comfy.ops
    from comfy.ldm.flux.model import Flux

    return Flux(operations=comfy.ops.disable_weight_init, **asdict(config))


@pytest.mark.parametrize("overrides", [{}, {"guidance_embed": True, "qkv_bias": False}])
def test_matches_comfyui_flux(comfyui, overrides):
    model = random_model(**overrides)
    reference = comfy_flux(model.config)
    assert {k: v.shape for k, v in reference.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    reference.load_state_dict(model.state_dict())
    for h, w in [(32, 32), (24, 40), (17, 23)]:
        x, sigma, context, y = random_inputs(model, 2, h, w)
        guidance = torch.tensor([3.5, 1.0]) if model.config.guidance_embed else None
        with torch.no_grad():
            ours = model(x, sigma, context, y, guidance)
            theirs = reference(x, sigma, context, y, guidance=guidance, transformer_options={})
        assert ours.shape == theirs.shape == x.shape
        assert (ours - theirs).abs().max() < 1e-4 * max(1.0, theirs.abs().max().item())


@pytest.mark.parametrize("name", sorted(TESTBEDS))
def test_shipped_model_matches_comfyui_flux(comfyui, name):
    model, table = load_testbed(name=name)
    reference = comfy_flux(model.config)
    reference.load_state_dict(model.state_dict())
    context, y = table([0, table.null_id])
    x = seeded_noise([3, 4], (24, 40))
    sigma = torch.tensor([0.9, 0.3])
    with torch.no_grad():
        diff = (model(x, sigma, context, y) - reference(x, sigma, context, y, transformer_options={})).abs().max()
    assert diff < 1e-4
