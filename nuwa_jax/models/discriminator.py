"""Patch-GAN discriminator for the VAE's optional adversarial term, and the hinge losses.

taming-transformers / latent-diffusion `NLayerDiscriminator` (pix2pix's PatchGAN):
conv 4x4 / 2 (ndf) -> LeakyReLU(0.2) -> [conv 4x4 / 2 (ndf * min(2^n, 8)) -> norm ->
LeakyReLU(0.2)] for n = 1 .. n_layers - 1 -> conv 4x4 / 1 (ndf * min(2^n_layers, 8)) ->
norm -> LeakyReLU(0.2) -> conv 4x4 / 1 (1 channel); every conv padded by 1. Its output is
a map of per-patch logits. Differences from taming, on purpose:
- GroupNorm (32 groups, or fewer where the channels are fewer) instead of BatchNorm:
  batch statistics under a sharded jit would be per-device or need cross-device
  reductions, and running averages would be mutable state outside the optimised
  parameters. The normalised convs keep taming's `bias=False`;
- torch's default conv init (layers.Conv2D) instead of taming's N(0, 0.02).
Applied frame by frame to videos (B, L, H, W, 3): logits (B, L, h, w).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from nuwa_jax.models import layers


def output_size(size: int, n_layers: int) -> int:
    """Side of the logit map for `size`-pixel frames (n_layers stride-2 convs, then two
    stride-1 4x4 convs, all padded by 1); <= 0 means the frames are too small."""
    for _ in range(n_layers):
        size = (size + 2 - 4) // 2 + 1
    for _ in range(2):
        size = size + 2 - 4 + 1
    return size


class PatchDiscriminator(nnx.Module):
    """NLayerDiscriminator with GroupNorm; parameters conv0 .. conv{n_layers + 1}, norm1 ..."""

    def __init__(
        self,
        compute: Any = None,
        *,
        channels: int = 64,
        n_layers: int = 3,
        in_channels: int = 3,
        rngs: nnx.Rngs,
    ):
        if n_layers < 1:
            raise ValueError(f"PatchDiscriminator: n_layers must be >= 1, got {n_layers}")
        dtype, param_dtype = (
            (jnp.float32, jnp.float32) if compute is None else layers.compute_dtypes(compute)
        )
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.n_layers = n_layers
        self.conv0 = layers.Conv2D(in_channels, channels, 4, stride=2, padding=1, **kw)
        cin = channels
        for n in range(1, n_layers + 1):
            cout = channels * min(2**n, 8)
            stride = 2 if n < n_layers else 1
            conv = layers.Conv2D(cin, cout, 4, stride=stride, padding=1, use_bias=False, **kw)
            setattr(self, f"conv{n}", conv)
            setattr(self, f"norm{n}", layers.GroupNorm(math.gcd(32, cout), cout, eps=1e-5, **kw))
            cin = cout
        self.conv_out = layers.Conv2D(cin, 1, 4, stride=1, padding=1, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Frames (..., H, W, C) in [-1, 1] -> patch logits (..., h, w), float32."""
        lead = x.shape[:-3]
        h = x.reshape((-1,) + x.shape[-3:])
        h = jax.nn.leaky_relu(self.conv0(h), 0.2)
        for n in range(1, self.n_layers + 1):
            h = getattr(self, f"conv{n}")(h)
            h = jax.nn.leaky_relu(getattr(self, f"norm{n}")(h), 0.2)
        logits = self.conv_out(h)[..., 0].astype(jnp.float32)
        return logits.reshape(lead + logits.shape[1:])


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    """taming's hinge_d_loss: (mean relu(1 - D(x)) + mean relu(1 + D(G(z)))) / 2."""
    real = jnp.mean(jax.nn.relu(1.0 - logits_real))
    fake = jnp.mean(jax.nn.relu(1.0 + logits_fake))
    return 0.5 * (real + fake)


def generator_loss(logits_fake: jax.Array) -> jax.Array:
    """The generator's (VAE decoder's) adversarial loss, -mean D(G(z)) (taming / LDM)."""
    return -jnp.mean(logits_fake)
