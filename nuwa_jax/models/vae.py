"""KL-VAE (Stable Diffusion's AutoencoderKL) and NUWA-XL's T-KLVAE, on videos.

Architecture: diffusers AutoencoderKL with DownEncoderBlock2D / UpDecoderBlock2D blocks,
parameter names mirroring diffusers' so SD's weights import by name
(nuwa_jax.convert.vae). Videos are (B, L, H, W, 3) in [-1, 1]; latents (B, L, h, w, c).

With `config.temporal` the model is the T-KLVAE of NUWA-XL: all spatial modules are kept,
frames go through them as independent images, and
- an identity-initialised TemporalConv1D follows every spatial convolution. Our reading of
  "every spatial convolution": every conv with a spatial extent (3x3), i.e. conv_in and
  conv_out of encoder and decoder, conv1 and conv2 of every resnet, and the conv of every
  downsampler and upsampler. The 1x1 convs (resnet shortcuts, quant_conv,
  post_quant_conv) mix channels only, not pixels, and get none;
- a zero-initialised TemporalAttention (residual) follows every spatial attention (the
  mid blocks of encoder and decoder), when `config.temporal_attention`.
So at initialisation a T-KLVAE equals the KL-VAE with the same spatial weights applied
frame by frame. Frames are not compressed in time: L latent frames for L video frames.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx, struct

from nuwa_jax.models import layers

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


# ---------------------------------------------------------------------------------------
# Posterior.
# ---------------------------------------------------------------------------------------
@struct.dataclass
class DiagonalGaussian:
    """The encoder's posterior q(z|x) = N(mean, exp(logvar)), per latent element (float32).

    logvar is clipped to [-30, 20] as in latent diffusion.
    """

    mean: jax.Array
    logvar: jax.Array

    @classmethod
    def from_moments(cls, moments: jax.Array) -> DiagonalGaussian:
        """Splits (..., 2c) moments into mean (first c channels) and clipped logvar."""
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return cls.from_mean_logvar(mean, logvar)

    @classmethod
    def from_mean_logvar(cls, mean: jax.Array, logvar: jax.Array) -> DiagonalGaussian:
        """From separate moments (e.g. a latent store's float16 ones): float32, logvar clipped."""
        logvar = jnp.clip(jnp.asarray(logvar, jnp.float32), LOGVAR_MIN, LOGVAR_MAX)
        return cls(jnp.asarray(mean, jnp.float32), logvar)

    @property
    def std(self) -> jax.Array:
        return jnp.exp(0.5 * self.logvar)

    @property
    def var(self) -> jax.Array:
        return jnp.exp(self.logvar)

    def sample(self, key: jax.Array) -> jax.Array:
        """mean + std * eps, eps ~ N(0, 1) from `key`."""
        return self.mean + self.std * jax.random.normal(key, self.mean.shape, self.mean.dtype)

    def mode(self) -> jax.Array:
        return self.mean

    def kl(self) -> jax.Array:
        """KL(q || N(0, 1)) summed over each frame's latent (h, w, c): shape (B, L)."""
        terms = jnp.square(self.mean) + self.var - 1.0 - self.logvar
        return 0.5 * terms.sum(axis=(-3, -2, -1))


def diffusion_latents(
    posterior: DiagonalGaussian,
    shift_factor: float,
    scaling_factor: float,
    rng: jax.Array | None = None,
) -> jax.Array:
    """The latents diffusion models see: (z - shift_factor) * scaling_factor, z the mode
    (rng None) or a sample of the posterior.

    One convention for both training paths: `KLVAE.encode_to_latents` (encode on the fly)
    and the trainer on a latent store (posterior moments precomputed by
    nuwa_jax.data.latents, sampled here on device).
    """
    z = posterior.mode() if rng is None else posterior.sample(rng)
    return (z - shift_factor) * scaling_factor


# ---------------------------------------------------------------------------------------
# Blocks.
# ---------------------------------------------------------------------------------------
def _options(compute: Any) -> dict[str, Any]:
    """dtype and param_dtype keywords from a compute section."""
    dtype, param_dtype = layers.compute_dtypes(compute)
    return dict(dtype=dtype, param_dtype=param_dtype)


class _TemporalAfter(nnx.Module):
    """Mixin helper: applies an optional temporal layer."""

    @staticmethod
    def _t(layer: nnx.Module | None, x: jax.Array) -> jax.Array:
        return x if layer is None else layer(x)


class MidBlock(nnx.Module):
    """diffusers UNetMidBlock2D without time embedding: resnet, attention, resnet.

    T-KLVAE: a TemporalAttention after the spatial attention (`temporal_attentions`).
    """

    def __init__(self, channels: int, config: Any, compute: Any, *, rngs: nnx.Rngs):
        kw = dict(_options(compute), rngs=rngs)
        res = dict(
            groups=config.norm_num_groups,
            eps=config.norm_eps,
            temporal=config.temporal,
            temporal_kernel_size=config.temporal_kernel_size,
        )
        self.remat_policy = compute.remat_policy
        self.resnets = nnx.List(
            [layers.ResnetBlock(channels, channels, **res, **kw) for _ in range(2)]
        )
        self.attentions = (
            nnx.List(
                [
                    layers.SpatialAttentionBlock(
                        channels,
                        groups=config.norm_num_groups,
                        eps=config.norm_eps,
                        attention_impl=compute.attention_impl,
                        **kw,
                    )
                ]
            )
            if config.mid_block_add_attention
            else None
        )
        self.temporal_attentions = (
            nnx.List(
                [
                    layers.TemporalAttention(
                        channels,
                        heads=config.temporal_attention_heads,
                        groups=config.norm_num_groups,
                        eps=config.norm_eps,
                        position_embedding=config.temporal_position_embedding,
                        attention_impl=compute.attention_impl,
                        **kw,
                    )
                ]
            )
            if config.temporal and config.temporal_attention and config.mid_block_add_attention
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        call = layers.maybe_remat(lambda m, h: m(h), self.remat_policy)
        x = call(self.resnets[0], x)
        if self.attentions is not None:
            x = call(self.attentions[0], x)
            if self.temporal_attentions is not None:
                x = call(self.temporal_attentions[0], x)
        return call(self.resnets[1], x)


class DownEncoderBlock(nnx.Module):
    """diffusers DownEncoderBlock2D: resnets, then a stride-2 conv padded (0, 1, 0, 1)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        config: Any,
        compute: Any,
        *,
        add_downsample: bool,
        rngs: nnx.Rngs,
    ):
        kw = dict(_options(compute), rngs=rngs)
        t = dict(temporal=config.temporal, temporal_kernel_size=config.temporal_kernel_size)
        self.remat_policy = compute.remat_policy
        self.resnets = nnx.List(
            [
                layers.ResnetBlock(
                    in_channels if i == 0 else out_channels,
                    out_channels,
                    groups=config.norm_num_groups,
                    eps=config.norm_eps,
                    **t,
                    **kw,
                )
                for i in range(config.layers_per_block)
            ]
        )
        self.downsamplers = (
            nnx.List([layers.Downsample2D(out_channels, padding="asymmetric", **t, **kw)])
            if add_downsample
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        call = layers.maybe_remat(lambda m, h: m(h), self.remat_policy)
        for resnet in self.resnets:
            x = call(resnet, x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class UpDecoderBlock(nnx.Module):
    """diffusers UpDecoderBlock2D: layers_per_block + 1 resnets, then nearest x2 + conv."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        config: Any,
        compute: Any,
        *,
        add_upsample: bool,
        rngs: nnx.Rngs,
    ):
        kw = dict(_options(compute), rngs=rngs)
        t = dict(temporal=config.temporal, temporal_kernel_size=config.temporal_kernel_size)
        self.remat_policy = compute.remat_policy
        self.resnets = nnx.List(
            [
                layers.ResnetBlock(
                    in_channels if i == 0 else out_channels,
                    out_channels,
                    groups=config.norm_num_groups,
                    eps=config.norm_eps,
                    **t,
                    **kw,
                )
                for i in range(config.layers_per_block + 1)
            ]
        )
        self.upsamplers = (
            nnx.List([layers.Upsample2D(out_channels, **t, **kw)]) if add_upsample else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        call = layers.maybe_remat(lambda m, h: m(h), self.remat_policy)
        for resnet in self.resnets:
            x = call(resnet, x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


def _temporal_conv(config: Any, channels: int, kw: dict) -> layers.TemporalConv1D | None:
    if not config.temporal:
        return None
    return layers.TemporalConv1D(channels, config.temporal_kernel_size, **kw)


class Encoder(_TemporalAfter):
    """Video (B, L, H, W, 3) -> moments (B, L, h, w, 2 * latent_channels)."""

    def __init__(self, config: Any, compute: Any, *, rngs: nnx.Rngs):
        kw = dict(_options(compute), rngs=rngs)
        widths = tuple(config.block_out_channels)
        self.conv_in = layers.Conv2D(config.in_channels, widths[0], 3, **kw)
        self.temporal_conv_in = _temporal_conv(config, widths[0], kw)
        blocks, prev = [], widths[0]
        for i, width in enumerate(widths):
            blocks.append(
                DownEncoderBlock(
                    prev, width, config, compute, add_downsample=i < len(widths) - 1, rngs=rngs
                )
            )
            prev = width
        self.down_blocks = nnx.List(blocks)
        self.mid_block = MidBlock(widths[-1], config, compute, rngs=rngs)
        self.conv_norm_out = layers.GroupNorm(
            config.norm_num_groups, widths[-1], eps=config.norm_eps, **kw
        )
        self.conv_out = layers.Conv2D(widths[-1], 2 * config.latent_channels, 3, **kw)
        self.temporal_conv_out = _temporal_conv(config, 2 * config.latent_channels, kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self._t(self.temporal_conv_in, self.conv_in(x))
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        x = self.conv_out(jax.nn.silu(self.conv_norm_out(x)))
        return self._t(self.temporal_conv_out, x)


class Decoder(_TemporalAfter):
    """Latents (B, L, h, w, latent_channels) -> video (B, L, H, W, 3)."""

    def __init__(self, config: Any, compute: Any, *, rngs: nnx.Rngs):
        kw = dict(_options(compute), rngs=rngs)
        widths = tuple(reversed(config.block_out_channels))
        self.conv_in = layers.Conv2D(config.latent_channels, widths[0], 3, **kw)
        self.temporal_conv_in = _temporal_conv(config, widths[0], kw)
        self.mid_block = MidBlock(widths[0], config, compute, rngs=rngs)
        blocks, prev = [], widths[0]
        for i, width in enumerate(widths):
            blocks.append(
                UpDecoderBlock(
                    prev, width, config, compute, add_upsample=i < len(widths) - 1, rngs=rngs
                )
            )
            prev = width
        self.up_blocks = nnx.List(blocks)
        self.conv_norm_out = layers.GroupNorm(
            config.norm_num_groups, widths[-1], eps=config.norm_eps, **kw
        )
        self.conv_out = layers.Conv2D(widths[-1], config.out_channels, 3, **kw)
        self.temporal_conv_out = _temporal_conv(config, config.out_channels, kw)

    def __call__(self, z: jax.Array) -> jax.Array:
        x = self._t(self.temporal_conv_in, self.conv_in(z))
        x = self.mid_block(x)
        for block in self.up_blocks:
            x = block(x)
        x = self.conv_out(jax.nn.silu(self.conv_norm_out(x)))
        return self._t(self.temporal_conv_out, x)


# ---------------------------------------------------------------------------------------
# The autoencoder.
# ---------------------------------------------------------------------------------------
class KLVAE(nnx.Module):
    """KL-regularised video autoencoder; `config.temporal=True` makes it the T-KLVAE.

    Built as KLVAE(config.vae, config.compute, rngs=nnx.Rngs(seed)). Spatial downsampling
    2 ** (len(block_out_channels) - 1); time is not compressed.
    """

    def __init__(self, config: Any, compute: Any, *, rngs: nnx.Rngs):
        widths = tuple(config.block_out_channels)
        if not widths:
            raise ValueError("vae.block_out_channels is empty")
        bad = [w for w in widths if w % config.norm_num_groups]
        if bad:
            raise ValueError(
                f"vae.block_out_channels {widths}: {bad} not divisible by "
                f"vae.norm_num_groups={config.norm_num_groups}"
            )
        kw = dict(_options(compute), rngs=rngs)
        self.temporal = bool(config.temporal)
        self.in_channels, self.latent_channels = config.in_channels, config.latent_channels
        self.downsample_factor = 2 ** (len(widths) - 1)
        self.scaling_factor = float(config.scaling_factor)
        self.shift_factor = float(config.shift_factor)
        c = config.latent_channels
        self.encoder = Encoder(config, compute, rngs=rngs)
        self.decoder = Decoder(config, compute, rngs=rngs)
        self.quant_conv = layers.Conv2D(2 * c, 2 * c, 1, **kw) if config.use_quant_conv else None
        self.post_quant_conv = layers.Conv2D(c, c, 1, **kw) if config.use_post_quant_conv else None

    def _check(self, x: jax.Array, channels: int, what: str) -> None:
        if x.ndim != 5 or x.shape[-1] != channels:
            raise ValueError(f"KLVAE.{what}: expected (B, L, H, W, {channels}), got {x.shape}")

    def encode(self, video: jax.Array) -> DiagonalGaussian:
        """Video (B, L, H, W, 3) in [-1, 1] -> posterior over (B, L, h, w, c) latents."""
        self._check(video, self.in_channels, "encode")
        f = self.downsample_factor
        if video.shape[2] % f or video.shape[3] % f:
            raise ValueError(
                f"KLVAE.encode: frame size {video.shape[2:4]} is not divisible by the "
                f"downsampling factor {f}"
            )
        moments = self.encoder(video)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return DiagonalGaussian.from_moments(moments)

    def decode(self, latents: jax.Array) -> jax.Array:
        """Unscaled latents (B, L, h, w, c) -> video (B, L, H, W, 3)."""
        self._check(latents, self.latent_channels, "decode")
        z = latents
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def __call__(
        self, video: jax.Array, rng: jax.Array | None = None
    ) -> tuple[jax.Array, DiagonalGaussian]:
        """(reconstruction, posterior); decodes a posterior sample (the mode if rng is None)."""
        posterior = self.encode(video)
        z = posterior.mode() if rng is None else posterior.sample(rng)
        return self.decode(z), posterior

    def encode_to_latents(self, video: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        """Diffusion latents: (z - shift_factor) * scaling_factor, z the mode or a sample."""
        return diffusion_latents(self.encode(video), self.shift_factor, self.scaling_factor, rng)

    def decode_latents(self, latents: jax.Array) -> jax.Array:
        """Inverse of `encode_to_latents`: latents / scaling_factor + shift_factor, decoded."""
        return self.decode(latents / self.scaling_factor + self.shift_factor)


class TKLVAE(KLVAE):
    """NUWA-XL's T-KLVAE: KLVAE with `temporal=True` forced (temporal conv and attention)."""

    def __init__(self, config: Any, compute: Any, *, rngs: nnx.Rngs):
        config = ml_collections.ConfigDict(config)  # a copy; frozen configs work too
        config.temporal = True
        super().__init__(config, compute, rngs=rngs)
