"""Interpolation on held-out clips: the task of every local level, scored in PSNR.

Given the two end frames of a clip of L frames at a stride, make the L - 2 between. The
ends are encoded by the generator's VAE (posterior mode, each frame on its own, so
nothing of the middle frames leaks in); then
  - `mtd`: the hierarchy's local MTD of the clip's level (the clip's own captions as
    prompts, guidance as configured), as a local level samples its segments;
  - `mardini`: MarDini planning from the two ends, then its sampler (what MarDini
    locals of the hierarchy do);
  - `blend`: (1 - a) x_first + a x_last in pixel space, a = i / (L - 1), from the true
    end frames;
  - `latent_blend`: (1 - a) z_first + a z_last of the encoded ends, decoded: the linear
    blend in the space the latent models work in, from the inputs they are given;
  - `vae`: decode(encode(clip)), the whole true clip through the VAE: the ceiling of any
    latent model, not an interpolation.
Generated frames are decoded, rounded to uint8 and compared with the true middle
frames: the PSNR of the MSE pooled over all clips (the headline), and the mean PSNR over
the clips not reproduced exactly (a blend of a clip where nothing moves is exact). The
same again over the `moving` clips only (some frame differs from another; a still clip
has nothing to interpolate and a blend reproduces it exactly), where every method's mean
is over the same clips: the per-clip mean PSNR of the frame-interpolation literature.
With `wrong_ends`, each sampled method runs again with every clip given ANOTHER clip's
ends (the next clip's, its own prompts kept): a model that reads its given frames scores
far lower then; one that ignores them scores the same (`<method>@wrong_ends`).
Used by benchmarks/interpolation.py and benchmarks/conditioning.py.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np

METHODS = ("mtd", "mardini", "blend", "latent_blend", "vae")


def psnr(mse: float) -> float:
    """PSNR in dB of uint8 images from their mean squared error."""
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def summarise(per_clip_mse: list[float]) -> dict[str, Any]:
    """Pooled PSNR (every clip), and mean PSNR with its standard error over the clips
    not reproduced exactly (`exact_clips` counts those)."""
    values = np.array([psnr(m) for m in per_clip_mse])
    finite = values[np.isfinite(values)]
    return dict(
        psnr_mean=float(finite.mean()) if len(finite) else None,
        psnr_stderr=float(finite.std(ddof=1) / math.sqrt(len(finite))) if len(finite) > 1 else None,
        psnr_pooled=psnr(float(np.mean(per_clip_mse))),  # the headline: no clip is dropped
        clips=len(per_clip_mse),
        exact_clips=int(np.sum(~np.isfinite(values))),
    )


@dataclasses.dataclass
class Clips:
    """Held-out clips of L frames at one stride."""

    truth: np.ndarray  # (C, L, H, W, 3) uint8
    captions: list[str]  # C * L, clip by clip
    starts: list[tuple[int, int]]  # (episode, first frame) of each clip
    stride: int

    @property
    def moving(self) -> np.ndarray:
        """(C,) bool: True where some frame of the clip differs from its first."""
        return np.any(self.truth != self.truth[:, :1], axis=tuple(range(1, self.truth.ndim)))


def held_out_clips(
    root: str | os.PathLike,
    window: np.ndarray,
    clips: int,
    rng: np.random.Generator,
    *,
    first_episode: int,
    episodes: int,
    frames: int,
) -> Clips:
    """`clips` clips with the frame offsets `window` (L frames at a stride) at random
    positions of episodes [first_episode, + episodes) of the frame store `root` (each
    `frames` long; synthetic.held_out_benchmark renders one)."""
    from nuwa_jax.data import schema, synthetic

    window = np.asarray(window)
    if int(window[-1]) >= frames:
        raise ValueError(f"a clip spans {int(window[-1]) + 1} frames, episodes have {frames}")
    store = schema.FrameStore(root)
    chosen = rng.integers(first_episode, first_episode + episodes, clips)
    starts = rng.integers(0, frames - int(window[-1]), clips)
    truth, captions = [], []
    for e, s in zip(chosen, starts, strict=True):
        got = store.read_frames(synthetic.episode_id(int(e)), window + int(s))
        truth.append(np.stack(got.images))
        captions += list(got.captions)
    store.close()
    stride = int(window[1] - window[0]) if len(window) > 1 else 1
    return Clips(np.stack(truth), captions, [(int(e), int(s)) for e, s in zip(chosen, starts)],
                 stride)  # fmt: skip


def _decoded_middles(generator: Any, latent_clips: list[np.ndarray]) -> np.ndarray:
    """Each (L, h, w, c) latent clip decoded as one clip; its L - 2 middle frames, uint8."""
    from nuwa_jax import video_io

    return np.stack([video_io.to_uint8(generator.decode(z)) for z in latent_clips])[:, 1:-1]


SAMPLED = ("mtd", "mardini")


def middle_frames(generator: Any, clips: Clips, method: str, level: int, seed: int = 0,
                  wrong_ends: bool = False) -> tuple[np.ndarray, float | None]:  # fmt: skip
    """(the L - 2 middle frames (C, L - 2, H, W, 3) uint8 that `method` makes, the seconds
    its sampler took (None for the blends and vae)). `level`: the local level the clips are
    at (the MTD's level embedding, the noise keys). `wrong_ends`: clip c is given clip
    c + 1's encoded ends (a sampled method only)."""
    from nuwa_jax.hierarchy.generator import LatentStore

    if method not in METHODS:
        raise ValueError(f"unknown interpolation method {method!r}; use one of {METHODS}")
    truth = clips.truth
    C, L = truth.shape[:2]
    if method == "blend":
        a = (np.arange(1, L - 1) / (L - 1))[None, :, None, None, None]
        out = (1 - a) * truth[:, :1].astype(np.float64) + a * truth[:, -1:].astype(np.float64)
        return np.round(out).astype(np.uint8), None
    if method == "vae":
        return _decoded_middles(generator, [generator.encode(truth[c]) for c in range(C)]), None
    ends = np.stack([generator.encode(truth[c, [i]])[0] for c in range(C) for i in (0, L - 1)])
    ends = ends.reshape(C, 2, *ends.shape[1:])
    if wrong_ends:
        if method not in SAMPLED or C < 2:
            raise ValueError(f"wrong_ends needs a sampled method {SAMPLED} and 2+ clips")
        ends = np.roll(ends, -1, axis=0)
    if method == "latent_blend":
        a = (np.arange(L) / (L - 1))[:, None, None, None]
        mixed = [(1 - a) * ends[c, 0] + a * ends[c, 1] for c in range(C)]
        return _decoded_middles(generator, mixed), None
    index = np.arange(C * L).reshape(C, L)  # each clip's frames in one latent store
    cond = np.zeros((C, L), bool)
    cond[:, 0] = cond[:, -1] = True
    store = LatentStore(C * L, generator.latent_shape)
    store.put(index[:, [0, -1]], np.ones((C, 2), bool), ends)
    timing = generator.sample_segments(method, index, cond, store, seed, level=level,
                                       progress=False, backbone=method, model_level=level,
                                       prompts=clips.captions)  # fmt: skip
    return _decoded_middles(generator, [store.latents[index[c]] for c in range(C)]), timing.seconds


def compare(generator: Any, clips: Clips, methods: list[str] | tuple[str, ...], level: int,
            seed: int = 0, wrong_ends: bool = False) -> dict[str, Any]:  # fmt: skip
    """{method: summarise(...) of its middle frames against the truth, with 'moving':
    the same over the moving clips only}, plus 'seconds' {method: sampler seconds} for the
    sampled ones. `wrong_ends`: also '<method>@wrong_ends' for each sampled method."""
    middle = clips.truth[:, 1:-1].astype(np.float64)
    C = len(middle)
    moving = clips.moving
    result: dict[str, Any] = dict(methods={}, seconds={})
    runs = [(m, False) for m in methods]
    runs += [(m, True) for m in methods if wrong_ends and m in SAMPLED]
    for method, wrong in runs:
        out, seconds = middle_frames(generator, clips, method, level, seed, wrong)
        mse = ((out.astype(np.float64) - middle) ** 2).reshape(C, -1).mean(axis=1)
        name = f"{method}@wrong_ends" if wrong else method
        result["methods"][name] = summarise(mse.tolist())
        result["methods"][name]["moving"] = (
            summarise(mse[moving].tolist()) if moving.any() else None
        )
        if seconds is not None:
            result["seconds"][name] = seconds
    return result
