"""InceptionV3 as FID uses it (pool3, 2048-d), in Flax NNX, channels last.

The network is the one of TensorFlow's FID code (the 2015-12-05 Inception graph) in the
layout of pytorch-fid: torchvision's `Inception3` module tree, whose blocks Mixed_5b..5d,
Mixed_6b..6e and Mixed_7b / 7c pytorch-fid replaces by FIDInceptionA / C / E_1 / E_2 (same
parameters, different pooling: the average pools of the branch_pool paths exclude the
padding from the count, and Mixed_7c's branch_pool is a 3x3 MAX pool). Weights: the
state dict of pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`, saved as safetensors
(see docs/evaluation.md); the names are torchvision's:

    Conv2d_1a_3x3.conv.weight, Conv2d_1a_3x3.bn.{weight,bias,running_mean,running_var},
    Mixed_5b.branch1x1.conv.weight, Mixed_5b.branch5x5_1..., Mixed_7c.branch_pool.bn...

`fc.*` (the 1008-way classifier), `AuxLogits.*` and `*.num_batches_tracked` are ignored:
FID reads the 2048-d global average pool after Mixed_7c.

Preprocessing (`InceptionV3.features`): uint8 -> [0, 1] -> bilinear resize to 299x299
(align_corners=False, no antialiasing, as pytorch-fid's F.interpolate) -> 2x - 1. The
convolutions are fully convolutional, so any input of at least 75x75 runs (tests use that
size on random weights).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from nuwa_jax.evaluate import netlib

INPUT_SIZE = 299
FEATURE_DIM = 2048
BN_EPS = 1e-3
IGNORED_KEYS = ("fc.*", "AuxLogits.*", "*.num_batches_tracked")


class BasicConv2d(nnx.Module):
    """conv (no bias) -> batch norm (eps 1e-3) -> ReLU; torch's padding is symmetric."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int | Sequence[int],
        *,
        stride: int = 1,
        padding: int | Sequence[int] = 0,
        rngs: nnx.Rngs,
    ):
        k = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
        p = (padding, padding) if isinstance(padding, int) else tuple(padding)
        self.conv = netlib.Conv(
            cin,
            cout,
            k,
            stride=(stride, stride),
            padding=[(p[0], p[0]), (p[1], p[1])],
            bias=False,
            rngs=rngs,
        )
        self.bn = netlib.FrozenBatchNorm(cout, BN_EPS)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.bn(self.conv(x)))


def _avg3(x: jax.Array) -> jax.Array:
    return netlib.avg_pool_exclude_pad(x, (3, 3), (1, 1), [(1, 1), (1, 1)])


def _max3s2(x: jax.Array) -> jax.Array:
    return netlib.max_pool(x, (3, 3), (2, 2))


class InceptionA(nnx.Module):  # Mixed_5b..5d (FIDInceptionA)
    def __init__(self, cin: int, pool_features: int, *, rngs: nnx.Rngs):
        self.branch1x1 = BasicConv2d(cin, 64, 1, rngs=rngs)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1, rngs=rngs)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2, rngs=rngs)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1, rngs=rngs)
        self.branch_pool = BasicConv2d(cin, pool_features, 1, rngs=rngs)

    def __call__(self, x):
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        d = self.branch_pool(_avg3(x))
        return jnp.concatenate([a, b, c, d], axis=-1)


class InceptionB(nnx.Module):  # Mixed_6a
    def __init__(self, cin: int, *, rngs: nnx.Rngs):
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2, rngs=rngs)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2, rngs=rngs)

    def __call__(self, x):
        a = self.branch3x3(x)
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return jnp.concatenate([a, b, _max3s2(x)], axis=-1)


class InceptionC(nnx.Module):  # Mixed_6b..6e (FIDInceptionC)
    def __init__(self, cin: int, c7: int, *, rngs: nnx.Rngs):
        row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))
        self.branch1x1 = BasicConv2d(cin, 192, 1, rngs=rngs)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1, rngs=rngs)
        self.branch7x7_2 = BasicConv2d(c7, c7, row[0], padding=row[1], rngs=rngs)
        self.branch7x7_3 = BasicConv2d(c7, 192, col[0], padding=col[1], rngs=rngs)
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1, rngs=rngs)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, col[0], padding=col[1], rngs=rngs)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, row[0], padding=row[1], rngs=rngs)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, col[0], padding=col[1], rngs=rngs)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, row[0], padding=row[1], rngs=rngs)
        self.branch_pool = BasicConv2d(cin, 192, 1, rngs=rngs)

    def __call__(self, x):
        a = self.branch1x1(x)
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = self.branch7x7dbl_1(x)
        for layer in (
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            c = layer(c)
        d = self.branch_pool(_avg3(x))
        return jnp.concatenate([a, b, c, d], axis=-1)


class InceptionD(nnx.Module):  # Mixed_7a
    def __init__(self, cin: int, *, rngs: nnx.Rngs):
        self.branch3x3_1 = BasicConv2d(cin, 192, 1, rngs=rngs)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2, rngs=rngs)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1, rngs=rngs)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2, rngs=rngs)

    def __call__(self, x):
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b = layer(b)
        return jnp.concatenate([a, b, _max3s2(x)], axis=-1)


class InceptionE(nnx.Module):  # Mixed_7b (FIDInceptionE_1), Mixed_7c (FIDInceptionE_2)
    def __init__(self, cin: int, max_pool_branch: bool, *, rngs: nnx.Rngs):
        self.branch1x1 = BasicConv2d(cin, 320, 1, rngs=rngs)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1, rngs=rngs)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch_pool = BasicConv2d(cin, 192, 1, rngs=rngs)
        self.max_pool_branch = max_pool_branch

    def __call__(self, x):
        a = self.branch1x1(x)
        b = self.branch3x3_1(x)
        b = jnp.concatenate([self.branch3x3_2a(b), self.branch3x3_2b(b)], axis=-1)
        c = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = jnp.concatenate([self.branch3x3dbl_3a(c), self.branch3x3dbl_3b(c)], axis=-1)
        if self.max_pool_branch:
            pooled = netlib.max_pool(x, (3, 3), (1, 1), [(1, 1), (1, 1)])
        else:
            pooled = _avg3(x)
        return jnp.concatenate([a, b, c, self.branch_pool(pooled)], axis=-1)


class InceptionV3(nnx.Module):
    """The FID Inception up to the 2048-d global average pool."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, rngs=rngs)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, rngs=rngs)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1, rngs=rngs)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1, rngs=rngs)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, rngs=rngs)
        self.Mixed_5b = InceptionA(192, 32, rngs=rngs)
        self.Mixed_5c = InceptionA(256, 64, rngs=rngs)
        self.Mixed_5d = InceptionA(288, 64, rngs=rngs)
        self.Mixed_6a = InceptionB(288, rngs=rngs)
        self.Mixed_6b = InceptionC(768, 128, rngs=rngs)
        self.Mixed_6c = InceptionC(768, 160, rngs=rngs)
        self.Mixed_6d = InceptionC(768, 160, rngs=rngs)
        self.Mixed_6e = InceptionC(768, 192, rngs=rngs)
        self.Mixed_7a = InceptionD(768, rngs=rngs)
        self.Mixed_7b = InceptionE(1280, max_pool_branch=False, rngs=rngs)
        self.Mixed_7c = InceptionE(2048, max_pool_branch=True, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(N, H, W, 3) in [-1, 1] (the network's own scale) -> (N, 2048) pool3."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(_max3s2(x)))
        x = _max3s2(x)
        for block in (
            self.Mixed_5b,
            self.Mixed_5c,
            self.Mixed_5d,
            self.Mixed_6a,
            self.Mixed_6b,
            self.Mixed_6c,
            self.Mixed_6d,
            self.Mixed_6e,
            self.Mixed_7a,
            self.Mixed_7b,
            self.Mixed_7c,
        ):
            x = block(x)
        return jnp.mean(x, axis=(1, 2))

    def features(self, images: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
        """uint8 (N, H, W, 3) -> (N, 2048), with pytorch-fid's preprocessing."""
        x = images.astype(jnp.float32) / 255.0
        x = netlib.resize_bilinear(x, (size, size))
        return self(2.0 * x - 1.0)


def load_inception(path: str | os.PathLike) -> InceptionV3:
    """An InceptionV3 with the weights of a pytorch-fid / torchvision-layout safetensors."""
    model = nnx.eval_shape(lambda: InceptionV3(rngs=nnx.Rngs(0)))  # shapes only, no init
    netlib.import_state_dict(model, path, ignore=IGNORED_KEYS)
    return model
