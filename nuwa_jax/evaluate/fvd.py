"""B-FVD-16: NUWA-XL's video-quality metric for long videos.

The paper: "the long video cut into 16-frame blocks, FVD per block, averaged". Ours:

    B-FVD-16 = mean over block positions b of FVD(G_b, R)

- G_b: block b (frames [16b, 16b + 16)) of every generated video, one clip feature each
  (V clips for V videos), so it needs V >= 2 videos (a Gaussian needs two samples);
- R: every aligned 16-frame block [16k, 16k + 16) of every reference episode;
- FVD: the Fréchet distance of Gaussians fitted to clip features (I3D logits for the
  standard FVD, the synthetic clip network's features offline).

`pooled` treats all blocks of all generated videos as one set (FVD-16 of the long
video(s) as a whole); unlike `value` it exists for a single video of >= 32 frames. With
V < 2 `value` is None and `note` says why.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nuwa_jax.evaluate import blocks
from nuwa_jax.evaluate.frechet import GaussianStats, frechet_distance_to_samples


def block_fvd(
    clip_features: Sequence[np.ndarray],
    reference: GaussianStats,
    block_frames: int = blocks.BLOCK_FRAMES,
    names: Sequence[str] | None = None,
    dropped_frames: int = 0,
) -> blocks.BlockMetric:
    """B-FVD of generated videos against reference clip statistics.

    clip_features: per generated video its (num_blocks, D) features, row b = the clip of
    block b; all videos with the same number of blocks.
    """
    v = len(clip_features)
    names = list(names or [f"video {i}" for i in range(v)])
    counts = [len(f) for f in clip_features]
    for c, name in zip(counts, names):
        if c < 1 or c != counts[0]:
            raise ValueError(
                f"B-FVD: {name} has {c} blocks, {names[0]} {counts[0]}; need the same "
                "number (>= 1) for every video"
            )
    if reference.count < 2:
        raise ValueError(f"B-FVD: the reference has {reference.count} clips, need >= 2")
    nb = counts[0]
    ref_cov = reference.covariance
    pooled = GaussianStats(reference.dim)
    per_block = [] if v >= 2 else None
    for b in range(nb):
        x = np.stack([np.asarray(f[b], np.float64) for f in clip_features])
        if x.shape[1] != reference.dim:
            raise ValueError(f"B-FVD: features of {x.shape[1]} dims, reference {reference.dim}")
        pooled.update(x)
        if per_block is not None:
            per_block.append(frechet_distance_to_samples(x, reference.mean, ref_cov))
    return blocks.BlockMetric(
        name=f"b_fvd{block_frames}",
        value=float(np.mean(per_block)) if per_block else None,
        per_block=per_block,
        pooled=pooled.frechet_distance(reference) if pooled.count >= 2 else None,
        blocks=nb,
        block_frames=block_frames,
        samples_per_block=v,
        dropped_frames=dropped_frames,
        note=""
        if per_block
        else (
            f"{v} generated video: a block position has one clip, FVD needs >= 2 "
            "(generate several videos); `pooled` uses all blocks as one set"
        ),
    )
