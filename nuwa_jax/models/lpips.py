"""LPIPS (Zhang et al. 2018), the `lpips` package's LPIPS(net='vgg', version='0.1'), in NNX.

d(x, y) = sum over taps l of mean over pixels of  w_l . (f_l(x) / ||f_l(x)|| - f_l(y) / ||...||)^2

- ScalingLayer: (x - shift) / scale with the package's ImageNet-ish constants;
- f_l: torchvision's VGG16 `features` (13 3x3 convs + ReLU, 2x2 max-pools) tapped after
  relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (the package's slice1..slice5);
- per-tap unit normalisation over channels, x / (sqrt(sum x^2) + 1e-10) as the package's
  `normalize_tensor`;
- w_l: the 1x1, bias-free, one-output "lin" convs (lin0..lin4), then the spatial mean.

Images are NHWC in [-1, 1] (any leading axes fold into the batch); the result is one
distance per image. Convolutions run in `compute.dtype`; the normalisation, the lin layers
and the means in float32. Weights come from nuwa_jax.convert.lpips (torchvision VGG16 +
the package's lin weights); the network is a frozen loss network, never optimised.
`widths` are VGG16's (64, 128, 256, 512, 512) unless a (test) weight file says otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from nuwa_jax.models import layers

VGG16_WIDTHS = (64, 128, 256, 512, 512)
STAGE_CONVS = (2, 2, 3, 3, 3)  # 3x3 convs per VGG16 stage; a tap after each stage's last ReLU
SHIFT = (-0.030, -0.088, -0.188)  # lpips.ScalingLayer
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10  # lpips.normalize_tensor


def conv_names() -> list[str]:
    """Our names of VGG16's 13 convs, stage by stage: conv1_1, conv1_2, conv2_1, ... conv5_3."""
    return [f"conv{s + 1}_{i + 1}" for s, n in enumerate(STAGE_CONVS) for i in range(n)]


def normalize(x: jax.Array) -> jax.Array:
    """x / (||x||_channels + eps) in float32, NaN-free gradients where a pixel's features are 0.

    (The sqrt's gradient at 0 is infinite; the double `where` keeps it out of the graph.
    Values equal the package's exactly.)
    """
    x = x.astype(jnp.float32)
    sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
    positive = sq > 0
    norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
    return x / (norm + EPS)


class VGG16Features(nnx.Module):
    """torchvision VGG16 `features[:30]`: the 13 convs (ReLU after each), max-pools between
    stages; returns the five stage outputs (relu1_2 ... relu5_3)."""

    def __init__(
        self,
        widths: Sequence[int] = VGG16_WIDTHS,
        *,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if len(widths) != len(STAGE_CONVS):
            raise ValueError(f"VGG16Features: {len(STAGE_CONVS)} stage widths, got {widths}")
        self.widths = tuple(int(w) for w in widths)
        cin = 3
        for stage, (width, n) in enumerate(zip(self.widths, STAGE_CONVS)):
            for i in range(n):
                conv = layers.Conv2D(
                    cin, width, 3, padding=1, dtype=dtype, param_dtype=param_dtype, rngs=rngs
                )
                setattr(self, f"conv{stage + 1}_{i + 1}", conv)
                cin = width

    def __call__(self, x: jax.Array) -> list[jax.Array]:
        taps = []
        for stage, n in enumerate(STAGE_CONVS):
            if stage:  # 2x2 / 2 max-pool before stages 2..5 (torchvision indices 4, 9, 16, 23)
                x = jax.lax.reduce_window(
                    x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"
                )
            for i in range(n):
                x = jax.nn.relu(getattr(self, f"conv{stage + 1}_{i + 1}")(x))
            taps.append(x)
        return taps


class LPIPS(nnx.Module):
    """Learned perceptual distance, VGG16 trunk, lin layers v0.1; parameters `net.*`, `lin*`.

    Built as LPIPS(compute, rngs=...) with random weights; load real ones with
    nuwa_jax.convert.lpips.load_lpips. Kernels carry the Conv2D logical axis names.
    """

    def __init__(
        self,
        compute: Any = None,
        *,
        widths: Sequence[int] = VGG16_WIDTHS,
        rngs: nnx.Rngs,
    ):
        dtype, param_dtype = (
            (jnp.float32, jnp.float32) if compute is None else layers.compute_dtypes(compute)
        )
        self.net = VGG16Features(widths, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        for k, width in enumerate(self.net.widths):
            lin = layers.Conv2D(
                width, 1, 1, use_bias=False, dtype=jnp.float32, param_dtype=param_dtype, rngs=rngs
            )
            setattr(self, f"lin{k}", lin)
        self.dtype = jnp.dtype(dtype)

    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        """Distances between images x and y (..., H, W, 3) in [-1, 1]: shape (...)."""
        if x.shape != y.shape or x.ndim < 4 or x.shape[-1] != 3:
            raise ValueError(f"LPIPS expects two (..., H, W, 3) arrays alike, got {x.shape}, "
                             f"{y.shape}")  # fmt: skip
        if min(x.shape[-3:-1]) < 16:
            raise ValueError(f"LPIPS: VGG16's four pools need frames of >= 16 px, got {x.shape}")
        lead = x.shape[:-3]
        shift, scale = jnp.asarray(SHIFT, jnp.float32), jnp.asarray(SCALE, jnp.float32)
        both = jnp.concatenate([x.reshape((-1,) + x.shape[-3:]), y.reshape((-1,) + y.shape[-3:])])
        both = ((both.astype(jnp.float32) - shift) / scale).astype(self.dtype)
        n = both.shape[0] // 2
        total = jnp.zeros((n,), jnp.float32)
        for k, feat in enumerate(self.net(both)):
            f = normalize(feat)
            diff = jnp.square(f[:n] - f[n:])
            total = total + jnp.mean(getattr(self, f"lin{k}")(diff)[..., 0], axis=(-2, -1))
        return total.reshape(lead)
