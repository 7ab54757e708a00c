"""Avg-FID and B-FVD-16 semantics: blocks, averaging, pooled values, errors."""

import numpy as np
import pytest

from nuwa_jax.evaluate import blocks, fid, fvd
from nuwa_jax.evaluate.frechet import GaussianStats, frechet_distance


def _fid(x, ref):
    return frechet_distance(
        x.mean(0), np.cov(x, rowvar=False), ref.mean(0), np.cov(ref, rowvar=False)
    )


def test_avg_fid_is_the_mean_of_per_block_fids():
    rng = np.random.default_rng(0)
    d, n = 6, 16 * 5 + 3  # 5 blocks and 3 dropped frames
    ref = rng.normal(size=(400, d))
    videos = [rng.normal(size=(n, d)) + 0.1 * np.arange(n)[:, None] / 16 for _ in range(3)]
    stats = GaussianStats(d).update(ref)
    m = fid.avg_fid(videos, stats)
    assert m.blocks == 5 and m.dropped_frames == 3 and m.samples_per_block == 48
    expected = [
        _fid(np.concatenate([v[16 * b : 16 * b + 16] for v in videos]), ref) for b in range(5)
    ]
    np.testing.assert_allclose(m.per_block, expected, rtol=1e-8)
    assert m.value == pytest.approx(np.mean(expected), rel=1e-9)
    pooled = np.concatenate([v[:80] for v in videos])  # dropped frames are in no block
    assert m.pooled == pytest.approx(_fid(pooled, ref), rel=1e-8)
    # The drift along the video shows in the curve.
    assert m.per_block[-1] > m.per_block[0]


def test_avg_fid_blocks_of_one_and_memmaps(tmp_path):
    rng = np.random.default_rng(1)
    ref = GaussianStats(4).update(rng.normal(size=(100, 4)))
    a = np.lib.format.open_memmap(tmp_path / "a.npy", "w+", np.float32, (32, 4))
    a[:] = rng.normal(size=(32, 4))
    b = rng.normal(size=(32, 4)).astype(np.float32)
    per_frame = fid.avg_fid([a, b], ref, block_frames=1)
    assert per_frame.blocks == 32 and per_frame.samples_per_block == 2
    single = fid.avg_fid([a], ref, block_frames=1)  # one frame per set: no covariance
    assert single.value is None and "FID needs >= 2" in single.note and single.pooled is not None


def test_block_fvd_needs_two_videos_and_averages_blocks():
    rng = np.random.default_rng(2)
    d = 5
    ref_clips = rng.normal(size=(60, d))
    ref = GaussianStats(d).update(ref_clips)
    videos = [rng.normal(size=(4, d)) + 2.0 for _ in range(3)]
    m = fvd.block_fvd(videos, ref, dropped_frames=2)
    assert m.name == "b_fvd16" and m.blocks == 4 and m.samples_per_block == 3
    expected = [_fid(np.stack([v[b] for v in videos]), ref_clips) for b in range(4)]
    np.testing.assert_allclose(m.per_block, expected, rtol=1e-8)
    assert m.value == pytest.approx(np.mean(expected))
    assert m.pooled == pytest.approx(_fid(np.concatenate(videos), ref_clips), rel=1e-8)
    # Shifted generated clips are further from the reference than reference-like ones.
    close = fvd.block_fvd([rng.normal(size=(4, d)) for _ in range(3)], ref)
    assert close.value < m.value
    one = fvd.block_fvd(videos[:1], ref)
    assert one.value is None and one.per_block is None and "needs >= 2" in one.note
    assert one.pooled == pytest.approx(_fid(videos[0], ref_clips), rel=1e-8)


def test_length_errors_name_the_video():
    ref = GaussianStats(3).update(np.random.default_rng(3).normal(size=(10, 3)))
    with pytest.raises(ValueError, match="b.mp4: 20 frames, but a.mp4 has 32"):
        fid.avg_fid([np.zeros((32, 3)), np.zeros((20, 3))], ref, names=["a.mp4", "b.mp4"])
    with pytest.raises(ValueError, match="short.mp4: 15 frames, fewer than one 16-frame block"):
        fid.avg_fid([np.zeros((15, 3))], ref, names=["short.mp4"])
    with pytest.raises(ValueError, match="b has 2 blocks"):
        fvd.block_fvd([np.zeros((3, 3)), np.zeros((2, 3))], ref, names=["a", "b"])
    assert blocks.num_blocks(3376) == 211 and blocks.num_blocks(226) == 14
