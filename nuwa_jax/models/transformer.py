"""The spatial transformer of Stable Diffusion's UNet (diffusers Transformer2DModel), on videos.

    x + proj_out(blocks(proj_in(group_norm(x))))

over the H*W pixels of each frame, where every block is diffusers' BasicTransformerBlock:

    h = h + attn1(norm1(h))             spatial self-attention
    h = h + attn2(norm2(h), prompt)     cross-attention to the frame's own prompt
    h = h + ff(norm3(h))                GEGLU feed-forward (width 4 * dim)

Videos (B, L, H, W, C) fold their frames into the batch; the context is per frame,
(B, L, T, D): frame l attends to prompt l only (NUWA-XL's per-frame cross-attention).
Images (B, H, W, C) with context (B, T, D) work too. The attention layers are
`layers.Attention`; LayerNorm (torch numerics) and GEGLU live here because layers.py has
none. Parameter names follow diffusers (norm, proj_in, transformer_blocks.i.attn1.to_q,
ff.net.0.proj is `ff.proj`, ff.net.2 is `ff.out`), so nuwa_jax.convert.unet maps by name.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from nuwa_jax.models import layers

Dtype = Any


class LayerNorm(nnx.Module):
    """torch.nn.LayerNorm over the last axis, statistics in float32. Scale/bias ("norm",)."""

    def __init__(
        self,
        features: int,
        *,
        eps: float = 1e-5,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.features, self.eps, self.dtype = features, eps, jnp.dtype(dtype)
        self.scale = layers._param(
            rngs, nnx.initializers.ones_init(), (features,), ("norm",), param_dtype
        )
        self.bias = layers._param(
            rngs, nnx.initializers.zeros_init(), (features,), ("norm",), param_dtype
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[-1] != self.features:
            raise ValueError(f"LayerNorm({self.features}) got shape {x.shape}")
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)


class GEGLUFeedForward(nnx.Module):
    """diffusers FeedForward(activation_fn='geglu'): out(a * gelu(g)), [a, g] = proj(x).

    gelu is the exact (erf) one, as torch's default. Hidden width `mult * dim`.
    """

    def __init__(
        self,
        dim: int,
        *,
        mult: int = 4,
        dropout: float = 0.0,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        inner = dim * mult
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.proj = layers.Dense(dim, 2 * inner, names=("embed", "mlp"), **kw)
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
        self.out = layers.Dense(inner, dim, names=("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        a, g = jnp.split(self.proj(x), 2, axis=-1)
        h = a * jax.nn.gelu(g, approximate=False)
        if self.dropout is not None:
            h = self.dropout(h)
        return self.out(h)


class BasicTransformerBlock(nnx.Module):
    """Self-attention, cross-attention and GEGLU feed-forward, each pre-norm and residual."""

    def __init__(
        self,
        dim: int,
        *,
        heads: int,
        head_dim: int,
        cross_attention_dim: int,
        dropout: float = 0.0,
        attention_impl: str = "xla",
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        attn = dict(heads=heads, head_dim=head_dim, attention_impl=attention_impl, **kw)
        self.norm1 = LayerNorm(dim, **kw)
        self.attn1 = layers.Attention(dim, **attn)
        self.norm2 = LayerNorm(dim, **kw)
        self.attn2 = layers.Attention(dim, context_dim=cross_attention_dim, **attn)
        self.norm3 = LayerNorm(dim, **kw)
        self.ff = GEGLUFeedForward(dim, dropout=dropout, **kw)

    def __call__(self, h: jax.Array, context: jax.Array) -> jax.Array:
        h = h + self.attn1(self.norm1(h))
        h = h + self.attn2(self.norm2(h), context.astype(h.dtype))
        return h + self.ff(self.norm3(h))


class SpatialTransformer(nnx.Module):
    """diffusers Transformer2DModel (continuous input) applied to each frame of a video.

    `use_linear_projection`: proj_in / proj_out are dense layers (SD-2.x) instead of 1x1
    convolutions (SD-1.x); the two compute the same map, only the stored weights differ.
    GroupNorm eps is 1e-6 as in diffusers.
    """

    def __init__(
        self,
        channels: int,
        *,
        heads: int,
        cross_attention_dim: int,
        num_layers: int = 1,
        norm_num_groups: int = 32,
        use_linear_projection: bool = False,
        dropout: float = 0.0,
        attention_impl: str = "xla",
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if channels % heads:
            raise ValueError(
                f"SpatialTransformer: {channels} channels do not split into {heads} heads"
            )
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.channels, self.use_linear_projection = channels, use_linear_projection
        self.norm = layers.GroupNorm(norm_num_groups, channels, eps=1e-6, **kw)
        if use_linear_projection:
            self.proj_in = layers.Dense(channels, channels, names=("embed", "heads"), **kw)
            self.proj_out = layers.Dense(channels, channels, names=("heads", "embed"), **kw)
        else:
            self.proj_in = layers.Conv2D(channels, channels, 1, **kw)
            self.proj_out = layers.Conv2D(channels, channels, 1, **kw)
        self.transformer_blocks = nnx.List(
            [
                BasicTransformerBlock(
                    channels,
                    heads=heads,
                    head_dim=channels // heads,
                    cross_attention_dim=cross_attention_dim,
                    dropout=dropout,
                    attention_impl=attention_impl,
                    **kw,
                )  # fmt: skip
                for _ in range(num_layers)
            ]
        )

    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        """x (B, [L,] H, W, C); context (B, [L,] T, D) with the same leading axes as x."""
        if x.shape[-1] != self.channels:
            raise ValueError(f"SpatialTransformer({self.channels}) got activations {x.shape}")
        lead = x.shape[:-3]
        if context.ndim != len(lead) + 2 or context.shape[: len(lead)] != lead:
            raise ValueError(
                f"SpatialTransformer: context {context.shape} must be (*{lead}, tokens, width) "
                f"for activations {x.shape} (one prompt per frame)"
            )
        h, w, c = x.shape[-3:]
        frames = x.reshape((-1, h, w, c))
        ctx = context.reshape((-1,) + context.shape[-2:])
        hs = self.norm(frames)
        if self.use_linear_projection:
            hs = self.proj_in(hs.reshape(-1, h * w, c))
        else:
            hs = self.proj_in(hs).reshape(-1, h * w, c)
        for block in self.transformer_blocks:
            hs = block(hs, ctx)
        if self.use_linear_projection:
            hs = self.proj_out(hs).reshape(-1, h, w, c)
        else:
            hs = self.proj_out(hs.reshape(-1, h, w, c))
        return (frames.astype(hs.dtype) + hs).reshape(x.shape[:-1] + (c,))
