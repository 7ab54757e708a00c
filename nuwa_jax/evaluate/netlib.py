"""Building blocks of the frozen feature networks (InceptionV3, I3D): channels-last
convolutions, inference-mode batch norm and pooling with PyTorch's padding semantics, and
the import of a PyTorch state dict by parameter name.

Every parameter, batch-norm running statistics included, is an `nnx.Param` named like
its PyTorch counterpart (`conv.kernel` <-> `conv.weight`, `bn.scale` <-> `bn.weight`,
`bn.running_mean`, `bn.running_var`), so one name mapping covers a whole network; these
networks are never trained, so "parameter" only means "loaded from the file".
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nuwa_jax.convert import common as convert
from nuwa_jax.models.layers import torch_default_init

Pads = Sequence[tuple[int, int]]


class Conv(nnx.Module):
    """N-d convolution, channels last; kernel (*k, in, out) (torch: (out, in, *k)).

    Init: torch's default U(+-1/sqrt(fan_in)) times `gain` (sqrt(6): He-uniform for ReLU)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: Sequence[int],
        *,
        stride: Sequence[int],
        padding: str | Pads,
        bias: bool,
        rngs: nnx.Rngs,
        gain: float = 1.0,
    ):
        self.kernel = nnx.Param(gain * torch_default_init(rngs.params(), (*kernel, cin, cout)))
        self.bias = (
            nnx.Param(
                torch_default_init(rngs.params(), (cout,)) / math.sqrt(math.prod(kernel) * cin)
            )
            if bias
            else None
        )
        self.stride = tuple(stride)
        self.padding = padding if isinstance(padding, str) else tuple(map(tuple, padding))

    def __call__(self, x: jax.Array) -> jax.Array:
        nd = len(self.stride)
        spec = "N" + "DHW"[3 - nd :] + "C"
        y = jax.lax.conv_general_dilated(
            x,
            self.kernel[...],
            self.stride,
            self.padding,
            dimension_numbers=(spec, spec[1:-1] + "IO", spec),
            precision=jax.lax.Precision.HIGHEST,
        )
        return y if self.bias is None else y + self.bias[...]


class FrozenBatchNorm(nnx.Module):
    """Batch norm with its running statistics (inference only): torch's BatchNorm in eval."""

    def __init__(self, channels: int, eps: float):
        self.scale = nnx.Param(jnp.ones((channels,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))
        self.running_mean = nnx.Param(jnp.zeros((channels,), jnp.float32))
        self.running_var = nnx.Param(jnp.ones((channels,), jnp.float32))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        inv = self.scale[...] * jax.lax.rsqrt(self.running_var[...] + self.eps)
        return (x - self.running_mean[...]) * inv + self.bias[...]


def _window(x: jax.Array, k: Sequence[int], s: Sequence[int]) -> tuple[tuple, tuple]:
    return (1, *k, 1), (1, *s, 1)


def max_pool(x: jax.Array, k: Sequence[int], s: Sequence[int], pads: Pads | None = None):
    """Max pool, padding with -inf (torch max_pool's padding); pads=None: none."""
    dims, strides = _window(x, k, s)
    pads = ((0, 0), *(pads or [(0, 0)] * len(k)), (0, 0))
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, dims, strides, pads)


def avg_pool_exclude_pad(x: jax.Array, k: Sequence[int], s: Sequence[int], pads: Pads):
    """Average pool that divides by the in-bounds count (torch count_include_pad=False,
    TensorFlow's average pool)."""
    dims, strides = _window(x, k, s)
    pads = ((0, 0), *pads, (0, 0))
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, strides, pads)
    ones = jnp.ones((1, *x.shape[1:-1], 1), x.dtype)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, dims, strides, pads)
    return total / count


def same_pads(size: Sequence[int], k: Sequence[int], s: Sequence[int]) -> list[tuple[int, int]]:
    """TensorFlow 'SAME' padding (the smaller half first), as the I3D port computes it."""
    out = []
    for n, kk, ss in zip(size, k, s):
        total = max(kk - ss, 0) if n % ss == 0 else max(kk - n % ss, 0)
        out.append((total // 2, total - total // 2))
    return out


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """(..., H, W, C) -> (..., h, w, C): bilinear with half-pixel centres and no
    antialiasing, as torch's F.interpolate(mode='bilinear', align_corners=False)."""
    if tuple(x.shape[-3:-1]) == tuple(size):
        return x
    shape = (*x.shape[:-3], *size, x.shape[-1])
    return jax.image.resize(x, shape, "bilinear", antialias=False)


# ---------------------------------------------------------------------------------------
# PyTorch state-dict import.
# ---------------------------------------------------------------------------------------
def torch_layout(w: np.ndarray) -> np.ndarray:
    """torch ConvNd weight (out, in, *k) -> (*k, in, out); other tensors unchanged."""
    if w.ndim >= 3:
        return np.moveaxis(w, (0, 1), (-1, -2))
    return w


def import_state_dict(
    module: nnx.Module,
    path: str | os.PathLike,
    ignore: Iterable[str] = ("*.num_batches_tracked",),
) -> None:
    """Loads a safetensors state dict into `module` by name (all or nothing: one error
    listing every missing, unexpected and mis-shaped key and the file)."""
    tensors = convert.load_safetensors(path)
    mapping = {p: (convert.torch_name(p), torch_layout) for p in convert.param_paths(module)}
    convert.assign_weights(module, tensors, mapping, source=os.fspath(path), ignore=tuple(ignore))


def jit_method(module: nnx.Module, fn: str = "__call__", **kw):
    """A jitted x -> getattr(module, fn)(x, **kw), the module's state an argument (so it is
    not baked into the executable as constants)."""
    graphdef, state = nnx.split(module)
    run = jax.jit(lambda state, x: getattr(nnx.merge(graphdef, state), fn)(x, **kw))
    return functools.partial(run, state)
