"""The feature-extractor protocol every metric runs on, and batching helpers.

An extractor maps frames to vectors: `image_features` (N, H, W, 3) uint8 -> (N, D) for
FID-style metrics, `clip_features` (N, T, H, W, 3) uint8 -> (N, D') for FVD-style ones
(T = `clip_frames`, 16 for B-FVD-16). Inputs are uint8 RGB in every implementation
(generated [-1, 1] frames go through `nuwa_jax.video_io.to_uint8` first, exactly as when
they are written to mp4), and each extractor does its own resizing and scaling.

Implementations:
- `nuwa_jax.evaluate.synthetic_net.SyntheticFeatures`: the offline default, a small network
  trained on the synthetic benchmark's ground truth (penultimate layers);
- `nuwa_jax.evaluate.standard.StandardFeatures`: InceptionV3 (pool3, 2048-d, FID) and
  I3D (Kinetics-400 logits, FVD), with weights converted from PyTorch layouts.
`load_extractor(kind, weights)` builds either from a path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np

FEATURE_KINDS = ("synthetic", "standard")


@runtime_checkable
class FeatureExtractor(Protocol):
    """What the metrics need from a feature network (see the module docstring)."""

    name: str
    clip_frames: int

    def image_features(self, images: np.ndarray) -> np.ndarray: ...

    def clip_features(self, clips: np.ndarray) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


def check_frames(x: np.ndarray, ndim: int, what: str) -> np.ndarray:
    """`x` as a uint8 array of rank `ndim` with 3 channels last, else a ValueError."""
    x = np.asarray(x)
    if x.dtype != np.uint8 or x.ndim != ndim or x.shape[-1] != 3:
        shape = "(N, H, W, 3)" if ndim == 4 else "(N, T, H, W, 3)"
        raise ValueError(f"{what}: expected uint8 {shape}, got {x.dtype} {x.shape}")
    return x


def run_batched(fn: Callable[[np.ndarray], Any], x: np.ndarray, batch: int) -> np.ndarray:
    """fn over `x` in batches of exactly `batch` rows (the last one zero-padded), so a
    jitted `fn` compiles once; returns the rows of the concatenated outputs for `x`."""
    n = x.shape[0]
    if n == 0:
        raise ValueError("run_batched: no inputs")
    outs = []
    for a in range(0, n, batch):
        chunk = x[a : a + batch]
        k = chunk.shape[0]
        if k < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - k, *chunk.shape[1:]), chunk.dtype)])
        outs.append(np.asarray(fn(chunk), np.float32)[:k])
    return np.concatenate(outs)


class BatchedFeatures:
    """The shared half of the extractors: uint8 frames -> features in fixed-size batches.

    Subclasses set `_image` (N, H, W, 3) -> (N, D) and `_clip` (N, T, H, W, 3) -> (N, D)
    (jitted), `batch_size` (frames per image call; clip calls take batch_size //
    clip_frames clips) and `clip_frames`, and write their own `describe`.
    """

    _image: Callable[[np.ndarray], Any]
    _clip: Callable[[np.ndarray], Any]
    batch_size: int
    clip_frames: int

    def image_features(self, images: np.ndarray) -> np.ndarray:
        images = check_frames(images, 4, f"{type(self).__name__}.image_features")
        return run_batched(self._image, images, self.batch_size)

    def clip_features(self, clips: np.ndarray) -> np.ndarray:
        clips = check_frames(clips, 5, f"{type(self).__name__}.clip_features")
        if clips.shape[1] != self.clip_frames:
            raise ValueError(
                f"{type(self).__name__}: clips must have {self.clip_frames} frames, "
                f"got {clips.shape[1]}"
            )
        return run_batched(self._clip, clips, max(1, self.batch_size // self.clip_frames))


def load_extractor(kind: str, weights: str, **kw: Any) -> FeatureExtractor:
    """'synthetic': `weights` is the trained network's JSON (or its .safetensors);
    'standard': a directory with the converted InceptionV3 and I3D safetensors files."""
    if kind == "synthetic":
        from nuwa_jax.evaluate.synthetic_net import SyntheticFeatures

        return SyntheticFeatures.load(weights, **kw)
    if kind == "standard":
        from nuwa_jax.evaluate.standard import StandardFeatures

        return StandardFeatures.load(weights, **kw)
    raise ValueError(f"features: unknown kind {kind!r}; choose one of {FEATURE_KINDS}")
