"""Issue 17 measurements on the trained testbed inside ComfyUI: FreqCa with Skip Layer Guidance (ComfyUI's
``SkipLayerGuidanceDiT``), with a ControlNet that starts or ends mid-run (ComfyUI's ``ControlNetApplyAdvanced``)
and with few-step runs, each against the same workflow uncached.

    COMFYUI_PATH=/path/to/ComfyUI python3 -m freqca_lab.comfy.measure_compat

Prints PSNR (dB) to the uncached run of the same workflow; for SLG also the cosine between the cached and the
uncached SLG effect (output with SLG minus output without).
"""
from __future__ import annotations

import torch

from .env import find_comfyui, load_pack
from .harness import apply_node, import_comfyui, sample
from .harness import latent_psnr as psnr

RUN = dict(cfg=3.0, seed=5)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def accelerate(model, **inputs):
    """The nodes at the settings measured here (freqca, warm-up 3, interval 6), ``inputs`` replacing some."""
    return apply_node(model, **{"method": "freqca", "interval": 6, "warmup_steps": 3, **inputs})


def skip_layer_guidance(model, start: float, end: float, double: str = "1", single: str = "1, 2", scale=3.0):
    """ComfyUI's own SkipLayerGuidanceDiT node applied to ``model``."""
    from comfy_extras.nodes_slg import SkipLayerGuidanceDiT

    return SkipLayerGuidanceDiT.execute(model, scale, start, end, double_layers=double, single_layers=single,
                                        rescaling_scale=0.0).result[0]


def projection_control(hidden: int, channels: int, seed: int = 17):
    """A ``comfy.controlnet.ControlBase`` (no weights needed) with a real ControlNet's timing: its residuals,
    a fixed random projection of the noisy latent's 2x2 patches to ``hidden`` per double block (``input``)
    and single block (``output``), are given only inside its start/end range, after any chained ControlNet."""
    import comfy.controlnet

    class ProjectionControl(comfy.controlnet.ControlBase):
        def __init__(self, projection: torch.Tensor) -> None:
            super().__init__()
            self.projection = projection

        def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
            prev = None
            if self.previous_controlnet is not None:
                prev = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, transformer_options)
            if self.timestep_range is not None and (t[0] > self.timestep_range[0] or t[0] < self.timestep_range[1]):
                return prev
            b, c, h, w = x_noisy.shape
            tokens = x_noisy.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * 4)
            residual = tokens @ self.projection.to(tokens) * self.strength
            return {"input": [residual, residual * 0.5], "output": [residual * 0.25, None, residual * 0.5]}

        def copy(self):
            copied = ProjectionControl(self.projection)
            self.copy_to(copied)
            return copied

    generator = torch.Generator().manual_seed(seed)
    return ProjectionControl(torch.randn(channels * 4, hidden, generator=generator) * 0.3)


def apply_control(conds: tuple[list, list], control, start: float, end: float) -> tuple[list, list]:
    """ComfyUI's ControlNetApplyAdvanced node: ``control`` on both conditionings from ``start`` to ``end``."""
    from .harness import _comfy_nodes

    hint = torch.zeros(1, 32, 32, 3)
    return _comfy_nodes().ControlNetApplyAdvanced().apply_controlnet(conds[0], conds[1], control, hint, 1.0,
                                                                      start, end)


def control_numbers(testbed, conds, latent, steps: int = 28) -> dict:
    """Relative L1 of FreqCa to the uncached run, a ControlNet over the whole run and one ending at 50%."""
    from .harness import rel_l1

    run = dict(RUN, steps=steps, latent=latent)
    control = projection_control(96, 3)
    numbers = {}
    for start, end in ((0.0, 1.0), (0.0, 0.5), (0.5, 1.0)):
        controlled = apply_control(conds, control, start, end)
        numbers[f"{start:.0%}-{end:.0%}"] = rel_l1(sample(accelerate(testbed), *controlled, **run),
                                                   sample(testbed, *controlled, **run))
    return numbers


def slg_numbers(testbed, conds, latent, start: float, end: float, steps: int = 28) -> dict:
    """PSNR of FreqCa without and with SLG (each to its uncached run) and the SLG effect's cosine."""
    run = dict(RUN, steps=steps, latent=latent)
    plain, slg = testbed, skip_layer_guidance(testbed, start, end)
    ref_plain, ref_slg = sample(plain, *conds, **run), sample(slg, *conds, **run)
    fast_plain, fast_slg = sample(accelerate(plain), *conds, **run), sample(accelerate(slg), *conds, **run)
    return {"psnr_plain": psnr(fast_plain, ref_plain), "psnr_slg": psnr(fast_slg, ref_slg),
            "effect_cosine": cosine(fast_slg - fast_plain, ref_slg - ref_plain),
            "slg_applied_after": psnr(sample(skip_layer_guidance(accelerate(plain), start, end), *conds, **run),
                                      ref_slg)}


def main() -> None:
    torch.set_num_threads(1)
    import_comfyui(find_comfyui())
    load_pack()
    from .testbed_in_comfy import build_testbed_flux, pixel_latent, prompt_conditioning

    testbed, conds, latent = build_testbed_flux(), prompt_conditioning(0), pixel_latent()
    for start, end in ((0.01, 0.15), (0.01, 0.6)):
        numbers = slg_numbers(testbed, conds, latent, start, end)
        print(f"SLG {start:.0%}-{end:.0%}: " + ", ".join(f"{k} {v:.2f}" for k, v in numbers.items()))
    numbers = control_numbers(testbed, conds, latent)
    print("ControlNet rel L1 to uncached: " + ", ".join(f"{k} {v:.3f}" for k, v in numbers.items()))
    for steps in (4, 7, 8, 12, 28):
        run = dict(RUN, steps=steps, latent=latent)
        fast, reference = sample(accelerate(testbed), *conds, **run), sample(testbed, *conds, **run)
        print(f"{steps} steps, defaults: {psnr(fast, reference):.1f} dB")


if __name__ == "__main__":
    main()
