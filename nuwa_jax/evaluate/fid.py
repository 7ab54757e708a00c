"""Avg-FID: NUWA-XL's frame-quality metric for long videos.

The paper: "Avg-FID: mean FID over generated frames" and nothing more. Our reading, chosen
so that the number is comparable across video lengths (16, 256, 1024 frames) and shows
where along a long video quality drops (the point of the paper's Table 1):

    Avg-FID = mean over block positions b of FID(G_b, R)

- G_b: the frames of block b = frames [16b, 16b + 16) of every generated video (16 x V
  frames for V videos; see blocks.py for the cut);
- R: every frame of the reference (real) episodes, one Gaussian for all positions
  (a real episode's frame distribution does not depend on where a clip starts);
- FID: the Fréchet distance of Gaussians fitted to image features (frechet.py).

Block size 1 (`block_frames=1`) gives the per-frame-position reading (needs >= 2 videos).
`pooled` is the plain FID of all generated frames (every block) against R. Per-block sets
are small (16 V frames against D = 2048 Inception dimensions), so each FID_b carries the
usual small-sample bias; it is the same for every method evaluated with the same V and
block size, which is what a comparison needs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nuwa_jax.evaluate import blocks
from nuwa_jax.evaluate.frechet import GaussianStats, frechet_distance_to_samples


def avg_fid(
    frame_features: Sequence[np.ndarray],
    reference: GaussianStats,
    block_frames: int = blocks.BLOCK_FRAMES,
    names: Sequence[str] | None = None,
) -> blocks.BlockMetric:
    """Avg-FID of generated videos against reference frame statistics.

    frame_features: per generated video its (N, D) per-frame features, all the same N
    (arrays or np.memmap: only one block of each is read at a time).
    """
    names = list(names or [f"video {i}" for i in range(len(frame_features))])
    n = blocks.check_lengths([len(f) for f in frame_features], names, block_frames)
    nb = blocks.num_blocks(n, block_frames)
    if reference.count < 2:
        raise ValueError(f"Avg-FID: the reference has {reference.count} frames, need >= 2")
    ref_cov = reference.covariance
    pooled = GaussianStats(reference.dim)
    per_block = []
    for b in range(nb):
        s = slice(b * block_frames, (b + 1) * block_frames)
        x = np.concatenate([np.asarray(f[s], np.float64) for f in frame_features])
        if x.shape[1] != reference.dim:
            raise ValueError(f"Avg-FID: features of {x.shape[1]} dims, reference {reference.dim}")
        pooled.update(x)
        if x.shape[0] < 2:
            per_block = None
            continue
        if per_block is not None:
            per_block.append(frechet_distance_to_samples(x, reference.mean, ref_cov))
    samples = block_frames * len(frame_features)
    return blocks.BlockMetric(
        name="avg_fid",
        value=float(np.mean(per_block)) if per_block else None,
        per_block=per_block,
        pooled=pooled.frechet_distance(reference) if pooled.count >= 2 else None,
        blocks=nb,
        block_frames=block_frames,
        samples_per_block=samples,
        dropped_frames=n - nb * block_frames,
        note="" if per_block else f"a block set has {samples} frame(s); FID needs >= 2",
    )
