"""Shared building blocks (Flax NNX, channels-last) for the VAE, the MTD 3-D UNet and friends.

Layout: images (B, H, W, C), videos (B, L, H, W, C). Spatial layers fold the frames into
the batch (a video is L independent images, as Stable Diffusion applied frame by frame);
temporal layers fold the pixels into the batch (a video is H*W independent sequences of L).

Every temporal layer here starts as an exact identity (NUWA-XL, T-KLVAE and MTD):
`TemporalConv1D` with a centre-tap identity kernel, `TemporalAttention` with a
zero-initialised output projection inside a residual. So a temporal model built on pretrained
spatial weights equals the image model frame by frame at initialisation.

Parameter names mirror diffusers' module names (conv1, norm1, time_emb_proj, to_q, ...), so
the weight importers (nuwa_jax.convert) map paths by name. Every parameter carries logical
axis names (configs/common.py:sharding_config). Parameters are stored in `param_dtype`,
computation runs in `dtype`; norms and softmax compute their statistics in float32.
Random weights follow torch's default init (U(+-1/sqrt(fan_in))) drawn by `hash_uniform`,
a counter hash that compiles far faster than threefry on XLA:CPU (see there).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Dtype = Any
Initializer = Callable[..., jax.Array]

ATTENTION_IMPLS = ("xla", "cudnn")
REMAT_POLICIES = ("none", "full", "dots")


def _fmix32(h: jax.Array) -> jax.Array:
    """murmur3's 32-bit finaliser: a bijection with full avalanche."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def hash_uniform(
    key: jax.Array, shape: Sequence[int], dtype: Dtype = jnp.float32, bound: float = 1.0
) -> jax.Array:
    """U(-bound, bound) from a counter-based hash of the element index, seeded by `key`.

    Used for parameter init instead of jax.random.uniform: XLA:CPU compiles a threefry
    kernel per parameter shape (about 0.4 s each, which dominated model creation and the
    test suite), while this is a few elementwise integer ops on an iota: it compiles in
    milliseconds and, under jit with sharded outputs, each device computes only its shard.
    Same values eagerly and under jit, so sharded and unsharded models built from one seed
    agree. 24 random bits per value, ample for initialisation.
    """
    shape = tuple(int(d) for d in shape)
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    seed = (jax.random.key_data(key) if typed else key).reshape(-1).astype(jnp.uint32)
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
        stride *= shape[axis]
    bits = _fmix32(_fmix32(index ^ seed[0]) + seed[-1])
    unit = (bits >> 8).astype(jnp.float32) * (1.0 / (1 << 24))  # [0, 1)
    return ((2.0 * unit - 1.0) * bound).astype(dtype)


def torch_default_init(key: jax.Array, shape: Sequence[int], dtype: Dtype = jnp.float32):
    """torch's default Conv/Linear init (kaiming_uniform, a=sqrt(5)): U(+-1/sqrt(fan_in)),
    fan_in = product of all but the last (output) axis."""
    fan_in = math.prod(shape[:-1]) if len(shape) > 1 else 1
    return hash_uniform(key, shape, dtype, 1.0 / math.sqrt(max(fan_in, 1)))


def compute_dtypes(compute: Any) -> tuple[jnp.dtype, jnp.dtype]:
    """(dtype, param_dtype) from a `config.compute` section (strings like 'bfloat16')."""
    return jnp.dtype(compute.dtype), jnp.dtype(compute.param_dtype)


def _param(
    rngs: nnx.Rngs,
    init: Initializer,
    shape: Sequence[int],
    names: Sequence[str | None],
    dtype: Dtype,
) -> nnx.Param:
    """A parameter initialised by `init` and annotated with logical axis `names`.

    Eagerly, constants are made in numpy and other initialisers run as one compiled kernel
    per (initialiser, shape) rather than one per primitive (XLA:CPU compiles are the cost of
    building a model eagerly); under a trace (jit, eval_shape) `init` is traced as is.
    """
    key = rngs.params()
    shape, dtype = tuple(int(d) for d in shape), jnp.dtype(dtype)
    if isinstance(key, jax.core.Tracer):
        value = init(key, shape, dtype)
    elif init in _CONSTANTS:
        value = jnp.asarray(np.full(shape, _CONSTANTS[init], dtype))
    else:
        value = _compiled(init)(key, shape, dtype)
    return nnx.Param(value, out_sharding=tuple(names))


def zeros_init(key: jax.Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> jax.Array:
    """All zeros (biases, zero-initialised projections)."""
    del key
    return jnp.zeros(shape, dtype)


def ones_init(key: jax.Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> jax.Array:
    """All ones (norm scales)."""
    del key
    return jnp.ones(shape, dtype)


_CONSTANTS = {zeros_init: 0.0, ones_init: 1.0, jax.nn.initializers.zeros: 0.0,
              jax.nn.initializers.ones: 1.0}  # fmt: skip

param = _param  # public name: param(rngs, init, shape, logical_names, param_dtype)


@functools.lru_cache(maxsize=512)
def _compiled(init: Initializer) -> Callable[..., jax.Array]:
    return jax.jit(init, static_argnums=(1, 2))


# ---------------------------------------------------------------------------------------
# Dense and convolutions.
# ---------------------------------------------------------------------------------------
class Dense(nnx.Module):
    """y = x W + b over the last axis; kernel (in, out) with logical `names`."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        names: tuple[str, str] = ("embed", "mlp"),
        use_bias: bool = True,
        zero_init: bool = False,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        init = zeros_init if zero_init else torch_default_init
        self.in_features, self.out_features = in_features, out_features
        self.kernel = _param(rngs, init, (in_features, out_features), names, param_dtype)
        self.bias = (
            _param(rngs, zeros_init, (out_features,), names[1:], param_dtype) if use_bias else None
        )
        self.dtype = jnp.dtype(dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


def _pairs(padding: Any, kernel_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Explicit ((top, bottom), (left, right)) padding from 'same', an int or pairs."""
    if padding == "same":
        lo = (kernel_size - 1) // 2
        return ((lo, kernel_size - 1 - lo),) * 2
    if isinstance(padding, int):
        return ((padding, padding),) * 2
    (a, b), (c, d) = padding
    return ((int(a), int(b)), (int(c), int(d)))


class Conv2D(nnx.Module):
    """2-D convolution over (H, W); any leading axes (frames of a video) fold into batch.

    `padding`: 'same', an int (both sides), or ((top, bottom), (left, right)); diffusers'
    VAE downsampler uses ((0, 1), (0, 1)). Kernel (kh, kw, cin, cout) named
    ("kernel", "kernel", "conv_in", "conv_out"), bias ("conv_out",).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        padding: Any = "same",
        use_bias: bool = True,
        zero_init: bool = False,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        init = zeros_init if zero_init else torch_default_init
        shape = (kernel_size, kernel_size, in_channels, out_channels)
        self.kernel = _param(rngs, init, shape, ("kernel", "kernel", "conv_in", "conv_out"),
                             param_dtype)  # fmt: skip
        self.bias = (
            _param(rngs, zeros_init, (out_channels,), ("conv_out",), param_dtype)  # fmt: skip
            if use_bias
            else None
        )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride = stride
        self.padding = _pairs(padding, kernel_size)
        self.dtype = jnp.dtype(dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim < 4 or x.shape[-1] != self.in_channels:
            raise ValueError(
                f"Conv2D expects (..., H, W, {self.in_channels}) with a batch axis, "
                f"got shape {x.shape}"
            )
        lead = x.shape[:-3]
        y = jax.lax.conv_general_dilated(
            x.reshape((-1,) + x.shape[-3:]).astype(self.dtype),
            self.kernel[...].astype(self.dtype),
            window_strides=(self.stride, self.stride),
            padding=self.padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y.reshape(lead + y.shape[1:])


def identity_temporal_kernel(key: jax.Array, shape: Sequence[int], dtype: Dtype = jnp.float32):
    """(k, c, c) kernel that is zero except W[(k-1)//2, i, i] = 1: an exact identity."""
    del key
    k, cin, cout = shape
    if cin != cout:
        raise ValueError(f"identity temporal kernel needs cin == cout, got shape {tuple(shape)}")
    return jnp.zeros(shape, dtype).at[(k - 1) // 2].set(jnp.eye(cin, dtype=dtype))


class TemporalConv1D(nnx.Module):
    """1-D convolution over the frames L of (B, L, H, W, C), pixels folded into batch.

    Identity-initialised (NUWA-XL T-KLVAE): kernel (k, c, c) zero except
    W[(k-1)//2, i, i] = 1, bias zero; zero 'same' padding, so L is kept. Kernel named
    ("kernel", "conv_in", "conv_out"), bias ("conv_out",).
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        *,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if kernel_size < 1:
            raise ValueError(f"TemporalConv1D: kernel_size must be >= 1, got {kernel_size}")
        self.kernel = _param(
            rngs,
            identity_temporal_kernel,
            (kernel_size, channels, channels),
            ("kernel", "conv_in", "conv_out"),
            param_dtype,
        )
        self.bias = _param(rngs, zeros_init, (channels,), ("conv_out",),
                           param_dtype)  # fmt: skip
        self.channels, self.kernel_size = channels, kernel_size
        self.dtype = jnp.dtype(dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 5 or x.shape[-1] != self.channels:
            raise ValueError(
                f"TemporalConv1D expects a video (B, L, H, W, {self.channels}), got {x.shape}"
            )
        b, frames, h, w, c = x.shape
        seq = x.transpose(0, 2, 3, 1, 4).reshape(b * h * w, frames, c)
        lo = (self.kernel_size - 1) // 2
        y = jax.lax.conv_general_dilated(
            seq.astype(self.dtype),
            self.kernel[...].astype(self.dtype),
            window_strides=(1,),
            padding=((lo, self.kernel_size - 1 - lo),),
            dimension_numbers=("NWC", "WIO", "NWC"),
        )
        y = y + self.bias[...].astype(self.dtype)
        return y.reshape(b, h, w, frames, c).transpose(0, 3, 1, 2, 4)


# ---------------------------------------------------------------------------------------
# Normalisation.
# ---------------------------------------------------------------------------------------
class GroupNorm(nnx.Module):
    """torch.nn.GroupNorm numerics, channels-last, statistics in float32.

    Statistics are taken per leading index over the `reduce_axes` trailing axes before the
    channels (default 2: H, W) and the channels of one group. So a video (B, L, H, W, C)
    is normalised frame by frame, like SD applied per frame; a sequence (N, T, C) with
    reduce_axes=1 over its T tokens. Scale ("norm",), bias ("norm",).
    """

    def __init__(
        self,
        num_groups: int,
        channels: int,
        *,
        eps: float = 1e-6,
        reduce_axes: int = 2,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if channels % num_groups:
            raise ValueError(
                f"GroupNorm: {channels} channels do not split into {num_groups} groups"
            )
        self.num_groups, self.channels, self.eps = num_groups, channels, eps
        self.reduce_axes = reduce_axes
        self.scale = _param(rngs, ones_init, (channels,), ("norm",), param_dtype)
        self.bias = _param(rngs, zeros_init, (channels,), ("norm",), param_dtype)
        self.dtype = jnp.dtype(dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[-1] != self.channels or x.ndim < self.reduce_axes + 2:
            raise ValueError(
                f"GroupNorm({self.num_groups}, {self.channels}) with {self.reduce_axes} reduced "
                f"axes got shape {x.shape}"
            )
        g = self.num_groups
        xg = x.astype(jnp.float32).reshape(x.shape[:-1] + (g, self.channels // g))
        axes = tuple(range(x.ndim - 1 - self.reduce_axes, x.ndim - 1)) + (x.ndim,)
        mean = xg.mean(axes, keepdims=True)
        var = jnp.square(xg - mean).mean(axes, keepdims=True)
        y = ((xg - mean) * jax.lax.rsqrt(var + self.eps)).reshape(x.shape)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)


# ---------------------------------------------------------------------------------------
# Resnet block, down- and upsampling.
# ---------------------------------------------------------------------------------------
def _expand_temb(temb: jax.Array, x: jax.Array) -> jax.Array:
    """Broadcasts a (B, C) or (B, L, C) projection against x (B, [L,] H, W, C)."""
    t = temb[..., None, None, :]
    while t.ndim < x.ndim:
        t = t[:, None]
    if t.ndim != x.ndim:
        raise ValueError(f"time embedding {temb.shape} does not fit activations {x.shape}")
    return t


class ResnetBlock(nnx.Module):
    """diffusers ResnetBlock2D ('default' time embedding, output_scale_factor 1).

    norm1 -> silu -> conv1 [-> temporal_conv1] -> (+ time_emb_proj(silu(temb))) -> norm2 ->
    silu -> dropout -> conv2 [-> temporal_conv2], plus the input (1x1 conv_shortcut when the
    channels change). `temporal=True` puts an identity-initialised TemporalConv1D after
    each spatial conv, so at init the block equals the 2-D block applied frame by frame.
    temb: (B, D) or (B, L, D).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        *,
        temb_channels: int | None = None,
        groups: int = 32,
        groups_out: int | None = None,
        eps: float = 1e-6,
        dropout: float = 0.0,
        temporal: bool = False,
        temporal_kernel_size: int = 3,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        out_channels = out_channels or in_channels
        groups_out = groups_out or groups
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.in_channels, self.out_channels, self.temporal = in_channels, out_channels, temporal
        self.norm1 = GroupNorm(groups, in_channels, eps=eps, **kw)
        self.conv1 = Conv2D(in_channels, out_channels, 3, **kw)
        self.time_emb_proj = (
            Dense(temb_channels, out_channels, names=("time_embed", "conv_out"), **kw)
            if temb_channels
            else None
        )
        self.norm2 = GroupNorm(groups_out, out_channels, eps=eps, **kw)
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
        self.conv2 = Conv2D(out_channels, out_channels, 3, **kw)
        self.conv_shortcut = (
            Conv2D(in_channels, out_channels, 1, **kw) if in_channels != out_channels else None
        )
        if temporal:
            self.temporal_conv1 = TemporalConv1D(out_channels, temporal_kernel_size, **kw)
            self.temporal_conv2 = TemporalConv1D(out_channels, temporal_kernel_size, **kw)
        else:
            self.temporal_conv1 = self.temporal_conv2 = None

    def __call__(self, x: jax.Array, temb: jax.Array | None = None) -> jax.Array:
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        if self.temporal_conv1 is not None:
            h = self.temporal_conv1(h)
        if temb is not None:
            if self.time_emb_proj is None:
                raise ValueError("ResnetBlock built without temb_channels got a time embedding")
            h = h + _expand_temb(self.time_emb_proj(jax.nn.silu(temb)), h)
        h = jax.nn.silu(self.norm2(h))
        if self.dropout is not None:
            h = self.dropout(h)
        h = self.conv2(h)
        if self.temporal_conv2 is not None:
            h = self.temporal_conv2(h)
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return shortcut.astype(h.dtype) + h


class Downsample2D(nnx.Module):
    """Stride-2 3x3 conv (diffusers Downsample2D with use_conv=True).

    padding='asymmetric': pad bottom/right by one, as diffusers' VAE (padding=0);
    padding=1: symmetric, as the UNet. Optional identity TemporalConv1D after the conv.
    """

    def __init__(
        self,
        channels: int,
        out_channels: int | None = None,
        *,
        padding: int | str = 1,
        temporal: bool = False,
        temporal_kernel_size: int = 3,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        out_channels = out_channels or channels
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if padding == "asymmetric":
            pad = ((0, 1), (0, 1))
        elif isinstance(padding, int):
            pad = padding
        else:
            raise ValueError(
                f"Downsample2D: padding must be 'asymmetric' or an int, got {padding!r}"
            )
        self.conv = Conv2D(channels, out_channels, 3, stride=2, padding=pad, **kw)
        self.temporal_conv = (
            TemporalConv1D(out_channels, temporal_kernel_size, **kw) if temporal else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.conv(x)
        return y if self.temporal_conv is None else self.temporal_conv(y)


class Upsample2D(nnx.Module):
    """Nearest-neighbour x2 then a 3x3 conv (diffusers Upsample2D with use_conv=True).

    Optional identity TemporalConv1D after the conv.
    """

    def __init__(
        self,
        channels: int,
        out_channels: int | None = None,
        *,
        temporal: bool = False,
        temporal_kernel_size: int = 3,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        out_channels = out_channels or channels
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv = Conv2D(channels, out_channels, 3, **kw)
        self.temporal_conv = (
            TemporalConv1D(out_channels, temporal_kernel_size, **kw) if temporal else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=-3), 2, axis=-2)
        y = self.conv(x)
        return y if self.temporal_conv is None else self.temporal_conv(y)


# ---------------------------------------------------------------------------------------
# Attention.
# ---------------------------------------------------------------------------------------
def cudnn_supported(q: jax.Array, k: jax.Array, mask: jax.Array | None) -> bool:
    """Whether cuDNN's fused (flash) attention takes these shapes, as jax checks them:
    half precision, a head dim <= 256 and a multiple of 8, and with a mask (a bias to
    cuDNN) even query and key lengths (its training kernels need them)."""
    head_dim, tq, tk = q.shape[-1], q.shape[1], k.shape[1]
    if q.dtype not in (jnp.bfloat16, jnp.float16) or head_dim > 256 or head_dim % 8:
        return False
    return mask is None or (tq % 2 == 0 and tk % 2 == 0)


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    impl: str = "xla",
) -> jax.Array:
    """softmax(q k^T / sqrt(d)) v on (B, T, heads, head_dim) arrays.

    impl 'xla': plain einsums with float32 logits and softmax (runs everywhere);
    'cudnn': jax.nn.dot_product_attention(implementation='cudnn') (fused, NVIDIA GPUs,
    half precision) where cuDNN's flash kernel takes the shapes (`cudnn_supported`), else
    the 'xla' path, e.g. MarDini's masked temporal attention over an odd frame count.
    `mask`: boolean, True = attend, broadcastable to (B, heads, Tq, Tk).
    """
    if impl == "cudnn" and not cudnn_supported(q, k, mask):
        impl = "xla"
    if impl == "xla":
        scale = 1.0 / math.sqrt(q.shape[-1])
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        return jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    if impl == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")
    raise ValueError(f"attention impl {impl!r} is not one of {ATTENTION_IMPLS}")


class Attention(nnx.Module):
    """Multi-head attention: to_q, to_k, to_v, to_out (diffusers Attention projections).

    Self-attention on x (B, T, C), or cross-attention to `context` (B, S, context_dim).
    `zero_init_out=True` zeroes the output projection (temporal attention starts as a
    no-op inside its residual). Kernels ("embed", "heads") / ("heads", "embed").
    """

    def __init__(
        self,
        query_dim: int,
        *,
        heads: int,
        head_dim: int,
        context_dim: int | None = None,
        qkv_bias: bool = False,
        out_bias: bool = True,
        zero_init_out: bool = False,
        attention_impl: str = "xla",
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention impl {attention_impl!r} is not one of {ATTENTION_IMPLS}")
        inner = heads * head_dim
        context_dim = context_dim or query_dim
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        qkv = dict(names=("embed", "heads"), use_bias=qkv_bias, **kw)
        self.to_q = Dense(query_dim, inner, **qkv)
        self.to_k = Dense(context_dim, inner, **qkv)
        self.to_v = Dense(context_dim, inner, **qkv)
        self.to_out = Dense(
            inner, query_dim, names=("heads", "embed"), use_bias=out_bias,
            zero_init=zero_init_out, **kw,
        )  # fmt: skip
        self.heads, self.head_dim, self.attention_impl = heads, head_dim, attention_impl

    def __call__(
        self, x: jax.Array, context: jax.Array | None = None, *, mask: jax.Array | None = None
    ) -> jax.Array:
        context = x if context is None else context
        split = lambda t: t.reshape(t.shape[:-1] + (self.heads, self.head_dim))
        q, k, v = split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context))
        out = dot_product_attention(q, k, v, mask=mask, impl=self.attention_impl)
        return self.to_out(out.reshape(out.shape[:-2] + (self.heads * self.head_dim,)))


class SpatialAttentionBlock(nnx.Module):
    """The VAE's single-head spatial self-attention (diffusers mid-block Attention).

    x + to_out(attn(group_norm(x))) over the H*W pixels of each frame; works on images
    (B, H, W, C) and videos (B, L, H, W, C). Parameters: group_norm, attn.{to_q,...}.
    """

    def __init__(
        self,
        channels: int,
        *,
        groups: int = 32,
        eps: float = 1e-6,
        head_dim: int | None = None,
        attention_impl: str = "xla",
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        head_dim = head_dim or channels
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.group_norm = GroupNorm(groups, channels, eps=eps, **kw)
        self.attn = Attention(
            channels, heads=channels // head_dim, head_dim=head_dim, qkv_bias=True,
            attention_impl=attention_impl, **kw,
        )  # fmt: skip

    def __call__(self, x: jax.Array) -> jax.Array:
        h, w, c = x.shape[-3:]
        seq = self.group_norm(x).reshape((-1, h * w, c))
        out = self.attn(seq).reshape(x.shape)
        return x.astype(out.dtype) + out


class TemporalAttention(nnx.Module):
    """Self-attention over the L frames of each pixel, inside a residual, identity at init.

    x + to_out(attn(norm(x) + pos)) with pixels folded into the batch. Choices (the papers
    are silent): the norm is a GroupNorm over the L frames of one pixel and the channels of
    a group (the temporal mirror of the spatial attention's norm over H*W); the position
    embedding is a fixed sinusoid over the frame index (diffusers timestep embedding,
    flip_sin_to_cos, shift 0) added to the normed input, so it only enters the attention
    branch; the output projection is zero-initialised, so the layer starts as an identity.
    `position_embedding`: 'sinusoidal' or 'none'. `mask` broadcastable to
    (B*H*W, heads, L, L).
    """

    def __init__(
        self,
        channels: int,
        *,
        heads: int = 1,
        head_dim: int | None = None,
        groups: int = 32,
        eps: float = 1e-6,
        position_embedding: str = "sinusoidal",
        attention_impl: str = "xla",
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if position_embedding not in ("sinusoidal", "none"):
            raise ValueError(
                f"TemporalAttention: position_embedding {position_embedding!r} is not "
                "'sinusoidal' or 'none'"
            )
        head_dim = head_dim or channels // heads
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.channels, self.position_embedding = channels, position_embedding
        self.norm = GroupNorm(groups, channels, eps=eps, reduce_axes=1, **kw)
        self.attn = Attention(
            channels, heads=heads, head_dim=head_dim, qkv_bias=True, zero_init_out=True,
            attention_impl=attention_impl, **kw,
        )  # fmt: skip

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        if x.ndim != 5 or x.shape[-1] != self.channels:
            raise ValueError(
                f"TemporalAttention expects a video (B, L, H, W, {self.channels}), got {x.shape}"
            )
        b, frames, h, w, c = x.shape
        seq = x.transpose(0, 2, 3, 1, 4).reshape(b * h * w, frames, c)
        hs = self.norm(seq)
        if self.position_embedding == "sinusoidal":
            pos = timestep_embedding(jnp.arange(frames), c, flip_sin_to_cos=True,
                                     downscale_freq_shift=0.0)  # fmt: skip
            hs = hs + pos.astype(hs.dtype)
        out = self.attn(hs, mask=mask)
        out = out.reshape(b, h, w, frames, c).transpose(0, 3, 1, 2, 4)
        return x.astype(out.dtype) + out


# ---------------------------------------------------------------------------------------
# Timestep embedding.
# ---------------------------------------------------------------------------------------
def timestep_embedding(
    timesteps: jax.Array,
    dim: int,
    *,
    flip_sin_to_cos: bool = False,
    downscale_freq_shift: float = 1.0,
    scale: float = 1.0,
    max_period: float = 10000.0,
) -> jax.Array:
    """diffusers get_timestep_embedding: sinusoids of `timesteps` (any shape) -> (..., dim).

    Frequencies exp(-log(max_period) * i / (dim/2 - downscale_freq_shift)); [sin, cos]
    (or [cos, sin] with flip_sin_to_cos); zero-padded when dim is odd. float32.
    """
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32)
    freqs = jnp.exp(exponent / (half - downscale_freq_shift))
    args = scale * jnp.asarray(timesteps, jnp.float32)[..., None] * freqs
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if flip_sin_to_cos:
        emb = jnp.concatenate([emb[..., half:], emb[..., :half]], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, [(0, 0)] * (emb.ndim - 1) + [(0, 1)])
    return emb


class TimestepEmbedding(nnx.Module):
    """diffusers TimestepEmbedding: linear_1 -> silu -> linear_2."""

    def __init__(
        self,
        in_channels: int,
        time_embed_dim: int,
        *,
        out_dim: int | None = None,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.linear_1 = Dense(in_channels, time_embed_dim, names=("time_embed", "mlp"), **kw)
        self.linear_2 = Dense(
            time_embed_dim, out_dim or time_embed_dim, names=("mlp", "time_embed"), **kw
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear_2(jax.nn.silu(self.linear_1(x)))


# ---------------------------------------------------------------------------------------
# Rematerialisation.
# ---------------------------------------------------------------------------------------
def maybe_remat(fn: Callable[..., Any], policy: str) -> Callable[..., Any]:
    """`fn` rematerialised by policy name: 'none' (as is), 'full' (save nothing),
    'dots' (save matmul outputs without batch dims). Call it with the module as the first
    argument, e.g. maybe_remat(lambda block, x, t: block(x, t), policy)(block, x, t).

    Functional, not nnx.remat: the module is split, and jax.checkpoint runs a pure
    function that merges it and calls `fn`, returning the output only. The blocks are
    stateless in their forward pass, so no state flows back; and no Variable is mutated
    across trace levels (nnx.remat's write-back fails for a frozen network merged inside
    jit/grad with newer flax: TraceContextError).
    """
    if policy == "none":
        return fn
    if policy not in REMAT_POLICIES:
        raise ValueError(f"remat policy {policy!r} is not one of {REMAT_POLICIES}")
    dots = jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    saveable = None if policy == "full" else dots  # None: save nothing

    def rematerialised(module: nnx.Module, *args: Any) -> Any:
        graphdef, state = nnx.split(module)

        def pure(state: nnx.State, *args: Any) -> Any:
            return fn(nnx.merge(graphdef, state), *args)

        return jax.checkpoint(pure, policy=saveable)(state, *args)

    return rematerialised
