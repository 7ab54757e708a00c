"""MTD: NUWA-XL's Mask Temporal Diffusion, a 3-D UNet (one model per hierarchy level).

Inputs: the noisy latent video x_t (B, L, h, w, c), the diffusion time t (B,), one prompt
per frame (B, L, T, D), the visual condition x0^c (B, L, h, w, c) (latents with the frames
to generate zeroed) and the mask x0^m (B, L) (1 = kept frame). The global model is the
same network fed an all-zero condition and mask. Output (B, L, h, w, c): epsilon or v,
as the diffusion core trains it.

Layout: diffusers' UNet2DConditionModel (SD-1.x: CrossAttnDownBlock2D x3 + DownBlock2D,
UNetMidBlock2DCrossAttn, UpBlock2D + CrossAttnUpBlock2D x3), with every spatial weight
under the same name, so pretrained SD weights import (nuwa_jax.convert.unet). Each block
layer is extended in the paper's order:

    [concat skip]                 (up blocks)
    resnets.i                     layers.ResnetBlock(temporal=True): norm1, silu, conv1,
                                  temporal_conv1, + time_emb_proj(temb), norm2, silu,
                                  dropout, conv2, temporal_conv2, + shortcut
    injections.i                  condition injection (below); where config enables it
    attentions.i                  SpatialTransformer: self-attn, per-frame cross-attn, GEGLU
    temporal_attentions.i         layers.TemporalAttention over the L frames (zero-init out)
    downsamplers.0 / upsamplers.0 stride-2 conv / nearest x2 + conv, each followed by an
                                  identity temporal conv

Plain DownBlock2D / UpBlock2D layers have no attentions (diffusers has none) and no
temporal attention; they keep the injection. The mid block is resnets.0 -> injection ->
attentions.0 -> temporal_attentions.0 -> resnets.1. conv_in, the time embedding,
conv_norm_out and conv_out are diffusers' (frames folded into the batch).

Condition injection (multi-scale injection MI, symmetric injection SI): x0^c and the mask
(broadcast to (B, L, h, w, 1)) each run through a cascade of convolutions
(`condition_cascade`, `mask_cascade`) giving features at every UNet scale s:
f_0 = conv_0(silu(conv_in(x))), f_s = conv_s(silu(f_{s-1})) with conv_s stride 2 and
width block_out_channels[s]. At every injection site zero-initialised convolutions give
(w_c, b_c) = conv_cond(f_s^c) and (w_m, b_m) = conv_mask(f_s^m), and

    h = w_c * h + b_c + h,   then   h = w_m * h + b_m + h,

an identity at initialisation. Sites: every layer of the down blocks (scale = block
index), the mid block (coarsest scale) and every layer of the up blocks. Ablation
switches: `injection_blocks` 'down_up' (SI: down, mid and up), 'up' (up blocks only) or
'none'; `injection_scales` 'all' (MI) or 'highest' (only blocks at latent resolution,
whose cascade is then just scale 0).

Input condition (`condition_input='concat'`, not in the paper): [x0^c, x0^m] also enter at
the UNet's input, through `conv_in_condition`, a zero-initialised 3x3 conv whose output is
added to conv_in's: the same as concatenating them to x_t with zero-initialised extra
input channels (SD-inpainting's way), while conv_in keeps the image UNet's shape and
weights. The injections are per-frame scale/shift at every block; the input path lets the
very first temporal convolution see the given frames' content next to the noisy ones
(docs/models.md has the ablation that chose it).

Level embedding (num_level_embeddings > 0): one shared local model for all local levels,
told its level by a zero-initialised embedding added to the time embedding.

So at initialisation (identity temporal convs, zero-init temporal attention, injection and
level embedding) MTD equals the image UNet applied frame by frame, frame l with prompt l.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from nuwa_jax.models import layers
from nuwa_jax.models.transformer import SpatialTransformer

DOWN_BLOCK_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCK_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")
INJECTION_BLOCKS = ("down_up", "up", "none")
INJECTION_SCALES = ("all", "highest")
CONDITION_INPUTS = ("none", "concat")


def check_config(config: Any) -> None:
    """Raises ValueError naming the first inconsistent field of an `mtd` config section."""
    n = len(config.block_out_channels)
    if n < 1:
        raise ValueError("mtd.block_out_channels must name at least one width")
    for field, allowed in (
        ("down_block_types", DOWN_BLOCK_TYPES),
        ("up_block_types", UP_BLOCK_TYPES),
    ):
        types = tuple(config[field])
        if len(types) != n:
            raise ValueError(f"mtd.{field} has {len(types)} entries but block_out_channels has {n}")
        for t in types:
            if t not in allowed:
                raise ValueError(f"mtd.{field}: {t!r} is not one of {allowed}")
    if config.injection_blocks not in INJECTION_BLOCKS:
        raise ValueError(
            f"mtd.injection_blocks {config.injection_blocks!r} is not one of {INJECTION_BLOCKS}"
        )
    if config.get("condition_input", "none") not in CONDITION_INPUTS:
        raise ValueError(
            f"mtd.condition_input {config.condition_input!r} is not one of {CONDITION_INPUTS}"
        )
    if config.injection_scales not in INJECTION_SCALES:
        raise ValueError(
            f"mtd.injection_scales {config.injection_scales!r} is not one of {INJECTION_SCALES}"
        )
    for c in config.block_out_channels:
        if c % config.norm_num_groups:
            raise ValueError(
                f"mtd.block_out_channels {tuple(config.block_out_channels)}: {c} is not a "
                f"multiple of norm_num_groups={config.norm_num_groups}"
            )
        if c % config.num_attention_heads:
            raise ValueError(
                f"mtd.block_out_channels {tuple(config.block_out_channels)}: {c} is not a "
                f"multiple of num_attention_heads={config.num_attention_heads}"
            )


def injection_sites(config: Any) -> dict[str, bool]:
    """Which blocks inject the condition: {'down_blocks.0': True, ..., 'mid_block': ...}."""
    n = len(config.block_out_channels)
    where, scales = config.injection_blocks, config.injection_scales
    ok_scale = lambda s: scales == "all" or s == 0
    sites = {}
    for i in range(n):
        sites[f"down_blocks.{i}"] = where == "down_up" and ok_scale(i)
    sites["mid_block"] = where == "down_up" and ok_scale(n - 1)
    for j in range(n):
        sites[f"up_blocks.{j}"] = where in ("down_up", "up") and ok_scale(n - 1 - j)
    return sites


# ---------------------------------------------------------------------------------------
# Condition cascade and injection.
# ---------------------------------------------------------------------------------------
class ConditionCascade(nnx.Module):
    """Convolutions bringing a condition video to every UNet scale (multi-scale injection).

    Returns [f_0, ..., f_{S-1}], f_s of shape (B, L, h / 2^s, w / 2^s, widths[s]).
    """

    def __init__(self, in_channels: int, widths: tuple[int, ...], *, rngs: nnx.Rngs, **kw):
        self.conv_in = layers.Conv2D(in_channels, widths[0], 3, rngs=rngs, **kw)
        self.convs = nnx.List(
            [
                layers.Conv2D(
                    widths[max(s - 1, 0)],
                    widths[s],
                    3,
                    stride=1 if s == 0 else 2,
                    padding=1,
                    rngs=rngs,
                    **kw,
                )  # fmt: skip
                for s in range(len(widths))
            ]
        )

    def __call__(self, x: jax.Array) -> list[jax.Array]:
        f = self.conv_in(x)
        feats = []
        for conv in self.convs:
            f = conv(jax.nn.silu(f))
            feats.append(f)
        return feats


class ConditionInjection(nnx.Module):
    """h = w_c h + b_c + h, then h = w_m h + b_m + h; (w, b) from zero-initialised convs."""

    def __init__(
        self,
        channels: int,
        cond_channels: int,
        mask_channels: int,
        kernel_size: int,
        *,
        rngs: nnx.Rngs,
        **kw,
    ):
        self.channels = channels
        self.conv_cond = layers.Conv2D(
            cond_channels, 2 * channels, kernel_size, zero_init=True, rngs=rngs, **kw
        )
        self.conv_mask = layers.Conv2D(
            mask_channels, 2 * channels, kernel_size, zero_init=True, rngs=rngs, **kw
        )

    def __call__(self, h: jax.Array, cond: jax.Array, mask: jax.Array) -> jax.Array:
        w_c, b_c = jnp.split(self.conv_cond(cond), 2, axis=-1)
        h = w_c * h + b_c + h
        w_m, b_m = jnp.split(self.conv_mask(mask), 2, axis=-1)
        return w_m * h + b_m + h


# ---------------------------------------------------------------------------------------
# Blocks.
# ---------------------------------------------------------------------------------------
class _Block(nnx.Module):
    """Shared layer stack: resnet -> [injection] -> [spatial transformer, temporal attn]."""

    def _build_layers(
        self,
        config: Any,
        compute: Any,
        in_channels: list[int],
        out_channels: int,
        temb_channels: int,
        cross_attention: bool,
        inject: bool,
        scale: int,
        rngs: nnx.Rngs,
    ) -> None:
        dtype, param_dtype = layers.compute_dtypes(compute)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        heads, groups = config.num_attention_heads, config.norm_num_groups
        self.resnets = nnx.List(
            [
                layers.ResnetBlock(
                    c,
                    out_channels,
                    temb_channels=temb_channels,
                    groups=groups,
                    eps=config.norm_eps,
                    dropout=config.dropout,
                    temporal=True,
                    temporal_kernel_size=config.temporal_kernel_size,
                    **kw,
                )  # fmt: skip
                for c in in_channels
            ]
        )
        if inject:
            width = config.block_out_channels[scale]
            self.injections = nnx.List(
                [
                    ConditionInjection(
                        out_channels, width, width, config.injection_kernel_size, **kw
                    )
                    for _ in in_channels
                ]
            )
        else:
            self.injections = None
        if cross_attention:
            self.attentions = nnx.List(
                [
                    SpatialTransformer(
                        out_channels,
                        heads=heads,
                        cross_attention_dim=config.cross_attention_dim,
                        norm_num_groups=groups,
                        use_linear_projection=config.use_linear_projection,
                        attention_impl=compute.attention_impl,
                        **kw,
                    )  # fmt: skip
                    for _ in in_channels
                ]
            )
            self.temporal_attentions = nnx.List(
                [
                    layers.TemporalAttention(
                        out_channels,
                        heads=heads,
                        groups=groups,
                        attention_impl=compute.attention_impl,
                        **kw,
                    )  # fmt: skip
                    for _ in in_channels
                ]
            )
        else:
            self.attentions = self.temporal_attentions = None

    def _layer(self, i, h, temb, context, cond, mask):
        h = self.resnets[i](h, temb)
        if self.injections is not None:
            h = self.injections[i](h, cond, mask)
        if self.attentions is not None:
            h = self.attentions[i](h, context)
            h = self.temporal_attentions[i](h)
        return h


class DownBlock(_Block):
    """CrossAttnDownBlock2D / DownBlock2D, 3-D: layers, then an optional downsampler."""

    def __init__(self, config, compute, index: int, temb_channels: int, inject: bool, *, rngs):
        widths = config.block_out_channels
        out = widths[index]
        cin = widths[max(index - 1, 0)]
        n = config.layers_per_block
        cross = config.down_block_types[index] == "CrossAttnDownBlock2D"
        self._build_layers(
            config, compute, [cin] + [out] * (n - 1), out, temb_channels, cross, inject, index, rngs
        )
        dtype, param_dtype = layers.compute_dtypes(compute)
        if index < len(widths) - 1:
            self.downsamplers = nnx.List(
                [
                    layers.Downsample2D(
                        out,
                        padding=1,
                        temporal=True,
                        temporal_kernel_size=config.temporal_kernel_size,
                        dtype=dtype,
                        param_dtype=param_dtype,
                        rngs=rngs,
                    )  # fmt: skip
                ]
            )
        else:
            self.downsamplers = None

    def __call__(self, h, temb, context, cond, mask):
        skips = []
        for i in range(len(self.resnets)):
            h = self._layer(i, h, temb, context, cond, mask)
            skips.append(h)
        if self.downsamplers is not None:
            h = self.downsamplers[0](h)
            skips.append(h)
        return h, tuple(skips)


class MidBlock(_Block):
    """UNetMidBlock2DCrossAttn, 3-D: resnet, [injection], transformer, temporal attn, resnet."""

    def __init__(self, config, compute, temb_channels: int, inject: bool, *, rngs):
        c = config.block_out_channels[-1]
        scale = len(config.block_out_channels) - 1
        self._build_layers(config, compute, [c], c, temb_channels, True, inject, scale, rngs)
        dtype, param_dtype = layers.compute_dtypes(compute)
        self.resnets.append(
            layers.ResnetBlock(
                c,
                c,
                temb_channels=temb_channels,
                groups=config.norm_num_groups,
                eps=config.norm_eps,
                dropout=config.dropout,
                temporal=True,
                temporal_kernel_size=config.temporal_kernel_size,
                dtype=dtype,
                param_dtype=param_dtype,
                rngs=rngs,
            )  # fmt: skip
        )

    def __call__(self, h, temb, context, cond, mask):
        h = self._layer(0, h, temb, context, cond, mask)
        return self.resnets[1](h, temb)


class UpBlock(_Block):
    """CrossAttnUpBlock2D / UpBlock2D, 3-D: (skip concat, layer) x (n + 1), upsampler."""

    def __init__(self, config, compute, index: int, temb_channels: int, inject: bool, *, rngs):
        rev = list(reversed(config.block_out_channels))
        n_blocks = len(rev)
        out = rev[index]
        prev_out = rev[max(index - 1, 0)]
        cin = rev[min(index + 1, n_blocks - 1)]
        n = config.layers_per_block + 1
        ins = []
        for i in range(n):
            skip = cin if i == n - 1 else out
            ins.append((prev_out if i == 0 else out) + skip)
        cross = config.up_block_types[index] == "CrossAttnUpBlock2D"
        self._build_layers(
            config, compute, ins, out, temb_channels, cross, inject, n_blocks - 1 - index, rngs
        )
        dtype, param_dtype = layers.compute_dtypes(compute)
        if index < n_blocks - 1:
            self.upsamplers = nnx.List(
                [
                    layers.Upsample2D(
                        out,
                        temporal=True,
                        temporal_kernel_size=config.temporal_kernel_size,
                        dtype=dtype,
                        param_dtype=param_dtype,
                        rngs=rngs,
                    )  # fmt: skip
                ]
            )
        else:
            self.upsamplers = None

    def __call__(self, h, skips, temb, context, cond, mask):
        for i in range(len(self.resnets)):
            h = jnp.concatenate([h, skips[-1 - i].astype(h.dtype)], axis=-1)
            h = self._layer(i, h, temb, context, cond, mask)
        if self.upsamplers is not None:
            h = self.upsamplers[0](h)
        return h


# ---------------------------------------------------------------------------------------
# The model.
# ---------------------------------------------------------------------------------------
class MTD(nnx.Module):
    """Mask Temporal Diffusion 3-D UNet: `MTD(config.mtd, config.compute, rngs=...)`."""

    def __init__(self, config: Any, compute: Any, *, rngs: nnx.Rngs):
        check_config(config)
        self.config = ml_collections.FrozenConfigDict(config)
        dtype, param_dtype = layers.compute_dtypes(compute)
        self.dtype = dtype
        self.remat_policy = compute.remat_policy
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        widths = tuple(config.block_out_channels)
        n = len(widths)
        temb = 4 * widths[0]
        self.conv_in = layers.Conv2D(config.in_channels, widths[0], 3, **kw)
        self.conv_in_condition = (
            layers.Conv2D(config.in_channels + 1, widths[0], 3, zero_init=True, **kw)
            if config.get("condition_input", "none") == "concat"
            else None
        )
        self.time_embedding = layers.TimestepEmbedding(widths[0], temb, **kw)
        self.level_embedding = (
            layers._param(
                rngs,
                nnx.initializers.zeros_init(),
                (config.num_level_embeddings, temb),
                ("vocab", "time_embed"),  # rows: the levels
                param_dtype,
            )  # fmt: skip
            if config.num_level_embeddings > 0
            else None
        )
        sites = injection_sites(config)
        self.sites = tuple(sites.items())
        scales = 0
        for i in range(n):
            if sites[f"down_blocks.{i}"]:
                scales = max(scales, i + 1)
            if sites[f"up_blocks.{i}"]:
                scales = max(scales, n - i)
        if sites["mid_block"]:
            scales = n
        self.num_injection_scales = scales
        if scales:
            self.condition_cascade = ConditionCascade(config.in_channels, widths[:scales], **kw)
            self.mask_cascade = ConditionCascade(1, widths[:scales], **kw)
        else:
            self.condition_cascade = self.mask_cascade = None
        self.down_blocks = nnx.List(
            [
                DownBlock(config, compute, i, temb, sites[f"down_blocks.{i}"], rngs=rngs)
                for i in range(n)
            ]  # fmt: skip
        )
        self.mid_block = MidBlock(config, compute, temb, sites["mid_block"], rngs=rngs)
        self.up_blocks = nnx.List(
            [
                UpBlock(config, compute, j, temb, sites[f"up_blocks.{j}"], rngs=rngs)
                for j in range(n)
            ]  # fmt: skip
        )
        self.conv_norm_out = layers.GroupNorm(
            config.norm_num_groups, widths[0], eps=config.norm_eps, **kw
        )
        self.conv_out = layers.Conv2D(widths[0], config.out_channels, 3, **kw)

    def _check_inputs(self, x, t, context, cond, mask, level):
        cfg = self.config
        if x.ndim != 5 or x.shape[-1] != cfg.in_channels:
            raise ValueError(
                f"MTD: x_t must be (B, L, h, w, {cfg.in_channels}), got shape {x.shape}"
            )
        b, frames, h, w, _ = x.shape
        factor = 2 ** (len(cfg.block_out_channels) - 1)
        if h % factor or w % factor:
            raise ValueError(
                f"MTD: latent size {h}x{w} must be divisible by {factor} "
                f"({len(cfg.block_out_channels)} UNet scales)"
            )
        if t.shape != (b,):
            raise ValueError(f"MTD: t must be (B,) = ({b},), got shape {t.shape}")
        if context.shape[:2] != (b, frames) or context.ndim != 4:
            raise ValueError(
                f"MTD: prompts must be (B, L, tokens, {cfg.cross_attention_dim}) = "
                f"({b}, {frames}, T, {cfg.cross_attention_dim}), got shape {context.shape}"
            )
        if context.shape[-1] != cfg.cross_attention_dim:
            raise ValueError(
                f"MTD: prompt width {context.shape[-1]} != mtd.cross_attention_dim "
                f"{cfg.cross_attention_dim}"
            )
        if cond.shape != x.shape:
            raise ValueError(f"MTD: condition x0^c {cond.shape} must have x_t's shape {x.shape}")
        if mask.shape != (b, frames):
            raise ValueError(f"MTD: mask x0^m must be (B, L) = ({b}, {frames}), got {mask.shape}")
        if level is not None:
            if self.level_embedding is None:
                raise ValueError("MTD: got `level` but mtd.num_level_embeddings is 0")
            if level.shape != (b,):
                raise ValueError(f"MTD: level must be (B,) = ({b},), got shape {level.shape}")

    def __call__(
        self,
        x_t: jax.Array,
        t: jax.Array,
        context: jax.Array,
        cond: jax.Array,
        mask: jax.Array,
        level: jax.Array | None = None,
    ) -> jax.Array:
        """Predicts epsilon (or v) for x_t (B, L, h, w, c); float32 output, x_t's shape.

        t (B,) diffusion time; context (B, L, T, D) one prompt per frame; cond x0^c
        (B, L, h, w, c); mask x0^m (B, L), 1 where the frame is given; level (B,) int in
        [0, num_level_embeddings) (out-of-range values are clipped).
        """
        t = jnp.asarray(t)
        if t.ndim == 0:
            t = jnp.broadcast_to(t, x_t.shape[:1])
        self._check_inputs(x_t, t, context, cond, mask, level)
        cfg, dtype = self.config, self.dtype
        b, frames, h, w, _ = x_t.shape

        t_emb = layers.timestep_embedding(
            t, cfg.block_out_channels[0], flip_sin_to_cos=cfg.flip_sin_to_cos,
            downscale_freq_shift=float(cfg.freq_shift),
        ).astype(dtype)  # fmt: skip
        temb = self.time_embedding(t_emb)
        if level is not None:
            temb = temb + jnp.take(self.level_embedding[...], level, axis=0, mode="clip").astype(
                temb.dtype
            )

        conds = masks = [None] * len(cfg.block_out_channels)
        if self.condition_cascade is not None:
            m = jnp.broadcast_to(mask.astype(dtype)[:, :, None, None, None], (b, frames, h, w, 1))
            conds = self.condition_cascade(cond.astype(dtype))
            masks = self.mask_cascade(m)
            pad = [None] * (len(cfg.block_out_channels) - len(conds))
            conds, masks = list(conds) + pad, list(masks) + pad

        context = context.astype(dtype)
        remat = lambda fn: layers.maybe_remat(fn, self.remat_policy)
        n = len(cfg.block_out_channels)

        hs = self.conv_in(x_t.astype(dtype))
        if self.conv_in_condition is not None:  # [x0^c, x0^m] at the input too
            m = jnp.broadcast_to(mask.astype(dtype)[:, :, None, None, None], (b, frames, h, w, 1))
            hs = hs + self.conv_in_condition(jnp.concatenate([cond.astype(dtype), m], -1))
        skips = [hs]
        for i, block in enumerate(self.down_blocks):
            hs, block_skips = remat(lambda blk, *a: blk(*a))(
                block, hs, temb, context, conds[i], masks[i]
            )
            skips.extend(block_skips)
        hs = remat(lambda blk, *a: blk(*a))(
            self.mid_block, hs, temb, context, conds[n - 1], masks[n - 1]
        )
        for j, block in enumerate(self.up_blocks):
            k = len(block.resnets)
            block_skips, skips = tuple(skips[-k:]), skips[:-k]
            hs = remat(lambda blk, *a: blk(*a))(
                block, hs, block_skips, temb, context, conds[n - 1 - j], masks[n - 1 - j]
            )
        hs = self.conv_out(jax.nn.silu(self.conv_norm_out(hs)))
        return hs.astype(jnp.float32)


def count_params(model: nnx.Module, under: str | None = None) -> int:
    """Number of parameter scalars, optionally only those whose path contains `under`."""
    total = 0
    for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name = ".".join(str(p) for p in path)
        if under is None or under in name:
            total += math.prod(v.get_value().shape)
    return total
