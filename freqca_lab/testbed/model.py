"""TinyFlux: a small FLUX-architecture diffusion transformer (own implementation of the public design).

Module names and parameter shapes follow the FLUX reference layout (as used by ComfyUI's
``comfy.ldm.flux.model.Flux``), so state dicts are interchangeable. The forward pass is split in three
so a feature cache can skip the blocks: ``embed`` -> ``run_blocks`` (returns the CRF) -> ``final``.

``run_blocks(e, attention_override=override)`` mirrors ComfyUI's ``transformer_options[
"optimized_attention_override"]``: every attention kernel call (one per block, in call order) becomes
``override(attention, q, k, v, pe)`` instead of ``attention(q, k, v, pe)``; the q/k/v and output
projections still run. Without an override the numerics are unchanged.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass
class TinyFluxConfig:
    """Same fields and meaning as ComfyUI's ``FluxParams``."""

    in_channels: int = 3
    out_channels: int = 3
    vec_in_dim: int = 64
    context_in_dim: int = 64
    hidden_size: int = 96
    mlp_ratio: float = 4.0
    num_heads: int = 3
    depth: int = 2
    depth_single_blocks: int = 4
    axes_dim: list[int] = field(default_factory=lambda: [8, 12, 12])
    theta: int = 10_000
    patch_size: int = 2
    qkv_bias: bool = True
    guidance_embed: bool = False


@dataclass
class Embedded:
    """Everything the blocks and the final layer need for one call.

    img [B, N, D] image tokens, txt [B, T, D] text tokens, vec [B, D] timestep/pooled embedding,
    pe [B, 1, T+N, head_dim/2, 2, 2] RoPE rotations (text rows first), grid (h, w) token grid,
    size (H, W) original pixel size.
    """

    img: Tensor
    txt: Tensor
    vec: Tensor
    pe: Tensor
    grid: tuple[int, int]
    size: tuple[int, int]


def timestep_embedding(t: Tensor, dim: int = 256, max_period: float = 10_000.0, factor: float = 1000.0) -> Tensor:
    """Sinusoidal embedding of ``factor * t``: [B] -> [B, dim] (cos half first, then sin)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (factor * t)[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(t.dtype)


def rope(ids: Tensor, axes_dim: list[int], theta: int) -> Tensor:
    """Rotation matrices for positions ids [B, L, n_axes] -> [B, 1, L, sum(axes_dim)/2, 2, 2]."""
    angles = []
    for axis, dim in enumerate(axes_dim):
        omega = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=ids.device) / dim)
        angles.append(ids[..., axis, None].double() * omega)
    a = torch.cat(angles, dim=-1)
    cos, sin = torch.cos(a), torch.sin(a)
    pe = torch.stack([cos, -sin, sin, cos], dim=-1).reshape(*a.shape, 2, 2)
    return pe.unsqueeze(1).float()


def apply_rope(x: Tensor, pe: Tensor) -> Tensor:
    """Rotate consecutive channel pairs of x [B, H, L, Dh] by pe [B, 1, L, Dh/2, 2, 2]."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 1, 2)
    out = pe[..., 0] * pairs[..., 0] + pe[..., 1] * pairs[..., 1]
    return out.reshape(x.shape).type_as(x)


def attention(q: Tensor, k: Tensor, v: Tensor, pe: Tensor) -> Tensor:
    """RoPE + scaled dot-product attention: q, k, v [B, H, L, Dh] -> [B, L, H*Dh]."""
    q, k = apply_rope(q, pe), apply_rope(k, pe)
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).flatten(2)


AttentionOverride = Callable[..., Tensor]  # override(func, q, k, v, pe) -> func's result or a stand-in


def attend(q: Tensor, k: Tensor, v: Tensor, pe: Tensor, override: AttentionOverride | None = None) -> Tensor:
    """``attention(q, k, v, pe)``, routed through ``override(attention, q, k, v, pe)`` when given."""
    if override is None:
        return attention(q, k, v, pe)
    return override(attention, q, k, v, pe)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: LayerNorm(x) * (1 + scale) + shift, x [B, L, D], shift/scale [B, 1, D]."""
    return F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale) + shift


class MLPEmbedder(nn.Module):
    """Linear -> SiLU -> Linear: [B, in_dim] -> [B, hidden]."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden)
        self.out_layer = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_layer(F.silu(self.in_layer(x)))


class RMSNorm(nn.Module):
    """RMS normalisation over the last axis with a learned scale."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.scale.shape, self.scale, eps=1e-6)


class QKNorm(nn.Module):
    """Separate RMSNorms for queries and keys (per head)."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.query_norm = RMSNorm(head_dim)
        self.key_norm = RMSNorm(head_dim)

    def forward(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        return self.query_norm(q), self.key_norm(k)


class SelfAttention(nn.Module):
    """Parameter holder for one stream's attention: qkv projection, QK norm, output projection."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.norm = QKNorm(dim // num_heads)
        self.proj = nn.Linear(dim, dim)

    def qkv_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, L, D] -> normalised q, k and v, each [B, H, L, Dh]."""
        q, k, v = self.qkv(x).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)
        q, k = self.norm(q, k)
        return q, k, v


class Modulation(nn.Module):
    """vec [B, D] -> ``count`` tensors [B, 1, D] (shift, scale, gate, ...)."""

    def __init__(self, dim: int, count: int):
        super().__init__()
        self.count = count
        self.lin = nn.Linear(dim, count * dim)

    def forward(self, vec: Tensor) -> tuple[Tensor, ...]:
        return self.lin(F.silu(vec))[:, None, :].chunk(self.count, dim=-1)


def mlp(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))


class DoubleStreamBlock(nn.Module):
    """Separate weights for image and text tokens, joint attention over [txt, img]."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.img_mod = Modulation(dim, 6)
        self.img_attn = SelfAttention(dim, num_heads, qkv_bias)
        self.img_mlp = mlp(dim, hidden)
        self.txt_mod = Modulation(dim, 6)
        self.txt_attn = SelfAttention(dim, num_heads, qkv_bias)
        self.txt_mlp = mlp(dim, hidden)

    def forward(self, img: Tensor, txt: Tensor, vec: Tensor, pe: Tensor,
                attention_override: AttentionOverride | None = None) -> tuple[Tensor, Tensor]:
        """img [B, N, D], txt [B, T, D], vec [B, D], pe for T+N rows -> (img, txt)."""
        i_shift1, i_scale1, i_gate1, i_shift2, i_scale2, i_gate2 = self.img_mod(vec)
        t_shift1, t_scale1, t_gate1, t_shift2, t_scale2, t_gate2 = self.txt_mod(vec)
        iq, ik, iv = self.img_attn.qkv_heads(modulate(img, i_shift1, i_scale1))
        tq, tk, tv = self.txt_attn.qkv_heads(modulate(txt, t_shift1, t_scale1))
        attn = attend(torch.cat((tq, iq), 2), torch.cat((tk, ik), 2), torch.cat((tv, iv), 2), pe,
                      attention_override)
        t_attn, i_attn = attn[:, : txt.shape[1]], attn[:, txt.shape[1]:]
        img = img + i_gate1 * self.img_attn.proj(i_attn)
        img = img + i_gate2 * self.img_mlp(modulate(img, i_shift2, i_scale2))
        txt = txt + t_gate1 * self.txt_attn.proj(t_attn)
        txt = txt + t_gate2 * self.txt_mlp(modulate(txt, t_shift2, t_scale2))
        return img, txt


class SingleStreamBlock(nn.Module):
    """Shared weights over the joint sequence; attention and MLP in parallel (fused linears)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.num_heads = num_heads
        self.mlp_hidden = int(dim * mlp_ratio)
        self.linear1 = nn.Linear(dim, 3 * dim + self.mlp_hidden)
        self.linear2 = nn.Linear(dim + self.mlp_hidden, dim)
        self.norm = QKNorm(dim // num_heads)
        self.modulation = Modulation(dim, 3)

    def forward(self, x: Tensor, vec: Tensor, pe: Tensor, attention_override: AttentionOverride | None = None) -> Tensor:
        """x [B, L, D] (txt rows first), vec [B, D] -> [B, L, D]."""
        shift, scale, gate = self.modulation(vec)
        qkv, hidden = self.linear1(modulate(x, shift, scale)).split([x.shape[-1] * 3, self.mlp_hidden], dim=-1)
        q, k, v = qkv.unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)
        q, k = self.norm(q, k)
        attn = attend(q, k, v, pe, attention_override)
        out = self.linear2(torch.cat((attn, F.gelu(hidden, approximate="tanh")), dim=-1))
        return x + gate * out


class LastLayer(nn.Module):
    """adaLN + linear projection of image tokens to patch pixels: [B, N, D] -> [B, N, p*p*C]."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: Tensor, vec: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(vec)[:, None, :].chunk(2, dim=-1)
        return self.linear(modulate(x, shift, scale))


class TinyFlux(nn.Module):
    """FLUX-style rectified-flow transformer on pixels (or any C-channel grid).

    ``forward(x [B,C,H,W], sigma [B], context [B,T,Dc], y [B,Dy]) -> velocity [B,C,H,W]``.
    """

    def __init__(self, config: TinyFluxConfig):
        super().__init__()
        c = config
        if c.hidden_size % c.num_heads or sum(c.axes_dim) != c.hidden_size // c.num_heads:
            raise ValueError(f"axes_dim {c.axes_dim} must sum to head dim {c.hidden_size // c.num_heads}")
        self.config = c
        p2 = c.patch_size ** 2
        self.img_in = nn.Linear(c.in_channels * p2, c.hidden_size)
        self.time_in = MLPEmbedder(256, c.hidden_size)
        self.vector_in = MLPEmbedder(c.vec_in_dim, c.hidden_size)
        self.guidance_in = MLPEmbedder(256, c.hidden_size) if c.guidance_embed else nn.Identity()
        self.txt_in = nn.Linear(c.context_in_dim, c.hidden_size)
        self.double_blocks = nn.ModuleList(
            DoubleStreamBlock(c.hidden_size, c.num_heads, c.mlp_ratio, c.qkv_bias) for _ in range(c.depth))
        self.single_blocks = nn.ModuleList(
            SingleStreamBlock(c.hidden_size, c.num_heads, c.mlp_ratio) for _ in range(c.depth_single_blocks))
        self.final_layer = LastLayer(c.hidden_size, p2 * c.out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier linears, and adaLN-Zero: all modulations and the output projection start at zero."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.scale)
        zero = [b.img_mod.lin for b in self.double_blocks] + [b.txt_mod.lin for b in self.double_blocks]
        zero += [b.modulation.lin for b in self.single_blocks]
        zero += [self.final_layer.adaLN_modulation[1], self.final_layer.linear]
        for lin in zero:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def embed(self, x: Tensor, sigma: Tensor, context: Tensor, y: Tensor, guidance: Tensor | None = None) -> Embedded:
        """Patchify x [B,C,H,W] (padded to the patch size), embed sigma [B], context [B,T,Dc], y [B,Dy]."""
        p = self.config.patch_size
        b, _, height, width = x.shape
        x = F.pad(x, (0, -width % p, 0, -height % p), mode="circular")
        h, w = x.shape[-2] // p, x.shape[-1] // p
        img = x.unflatten(2, (h, p)).unflatten(4, (w, p)).permute(0, 2, 4, 1, 3, 5).flatten(3).flatten(1, 2)
        vec = self.time_in(timestep_embedding(sigma.to(x.dtype)))
        if self.config.guidance_embed and guidance is not None:
            vec = vec + self.guidance_in(timestep_embedding(guidance.to(x.dtype)))
        vec = vec + self.vector_in(y[:, : self.config.vec_in_dim])
        ids = torch.zeros(b, context.shape[1] + h * w, 3, device=x.device)
        rows, cols = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
        ids[:, context.shape[1]:, 1] = rows.flatten().float()
        ids[:, context.shape[1]:, 2] = cols.flatten().float()
        pe = rope(ids, self.config.axes_dim, self.config.theta)
        return Embedded(self.img_in(img), self.txt_in(context), vec, pe, (h, w), (height, width))

    def run_blocks(self, e: Embedded, attention_override: AttentionOverride | None = None) -> Tensor:
        """All transformer blocks -> CRF: image-token state after the last single block, [B, N, D].

        ``attention_override(func, q, k, v, pe)`` (optional) replaces every attention kernel call, one per
        block in call order (double blocks, then single blocks), like ComfyUI's attention override."""
        img, txt = e.img, e.txt
        for block in self.double_blocks:
            img, txt = block(img, txt, e.vec, e.pe, attention_override)
        x = torch.cat((txt, img), dim=1)
        for block in self.single_blocks:
            x = block(x, e.vec, e.pe, attention_override)
        return x[:, txt.shape[1]:]

    def final(self, crf: Tensor, e: Embedded) -> Tensor:
        """Final adaLN layer with e.vec on crf [B, N, D], unpatchify, crop -> [B, C, H, W]."""
        p, (h, w), (height, width) = self.config.patch_size, e.grid, e.size
        out = self.final_layer(crf, e.vec)
        out = out.unflatten(1, (h, w)).unflatten(3, (-1, p, p)).permute(0, 3, 1, 4, 2, 5)
        return out.reshape(out.shape[0], -1, h * p, w * p)[:, :, :height, :width]

    def forward(self, x: Tensor, sigma: Tensor, context: Tensor, y: Tensor, guidance: Tensor | None = None,
                attention_override: AttentionOverride | None = None) -> Tensor:
        """Velocity prediction (noise - x0) for x [B,C,H,W] at noise level sigma [B]."""
        e = self.embed(x, sigma, context, y, guidance)
        return self.final(self.run_blocks(e, attention_override), e)


def save_model(model: TinyFlux, path: str | Path) -> None:
    """Write fp16 weights with the config as JSON metadata."""
    tensors = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"config": json.dumps(asdict(model.config))})


def load_model(path: str | Path, device: str | torch.device = "cpu") -> TinyFlux:
    """Read weights written by ``save_model`` into an fp32 model in eval mode."""
    with safe_open(str(path), framework="pt") as f:
        config = TinyFluxConfig(**json.loads(f.metadata()["config"]))
    model = TinyFlux(config)
    model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return model.to(device).eval().requires_grad_(False)
