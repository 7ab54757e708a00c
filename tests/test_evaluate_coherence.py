"""Temporal coherence: which transitions are segment boundaries, and the boundary/inside
ratio on videos with and without jumps at the seams."""

import numpy as np
import pytest

from nuwa_jax.evaluate import coherence
from nuwa_jax.hierarchy.plan import HierarchyPlan


def _boundaries(call):
    return [t for t in range(len(call) - 1) if call[t] != call[t + 1]]


def test_dod_producers_mark_segment_seams():
    # L = 4, m = 2, N = 10: the global call makes 0, 3, 6, 9; three local segments fill
    # 1-2, 4-5, 7-8. Every transition touching a keyframe crosses calls.
    call, level = coherence.dod_producers(HierarchyPlan(4, 2, 10))
    assert level.tolist() == [0, 1, 1, 0, 1, 1, 0, 1, 1, 0]
    assert _boundaries(call) == [0, 2, 3, 5, 6, 8]
    # Pruned plan (N = 8 < N(m) = 10): the segments past the end are dropped.
    call, level = coherence.dod_producers(HierarchyPlan(4, 2, 8))
    assert level.tolist() == [0, 1, 1, 0, 1, 1, 0, 1]
    assert _boundaries(call) == [0, 2, 3, 5, 6]


def test_ar_producers_follow_the_generator_chain():
    # L = 4, context 1, N = 10: segments start at 0, 3, 6; segment i > 0 makes 3 new frames.
    call, level = coherence.ar_producers(10, 4, 1)
    assert call.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2] and not level.any()
    assert _boundaries(call) == [3, 6]
    call, _ = coherence.ar_producers(11, 4, 2)  # starts 0, 2, 4, 6, 8
    assert call.tolist() == [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4]
    with pytest.raises(ValueError, match=r"context 4 must be in \[1, 4\)"):
        coherence.ar_producers(10, 4, 4)


def test_plan_rule_matches_generation_config():
    # 16 frames of an L=16, depth-3 hierarchy: all three levels, as generation runs them.
    call, level = coherence.producers("dod", 16, 16, 3)
    assert level.tolist() == [0] + [2] * 14 + [1]  # keyframe 0, level-1 frame 15, the rest
    assert call.tolist() == [0] + [2] * 14 + [1]  # one segment per level
    with pytest.raises(ValueError, match="depth-3 hierarchy at L=16, but hierarchy.depth=2"):
        coherence.producers("dod", 300, 16, 2)
    with pytest.raises(ValueError, match="schedule must be one of"):
        coherence.producers("bogus", 16, 16, 3)


def _moving_video(n, seams=()):
    """A bar moving one pixel per frame over a gradient. At every transition in `seams`
    the bar also jumps 5 pixels and the brightness toggles (a visible seam)."""
    w = 32
    frames = np.zeros((n, w, w, 3), np.uint8)
    for t in range(n):
        k = sum(1 for s in seams if s < t)  # seams crossed before frame t
        frames[t] = np.linspace(0, 120, w, dtype=np.uint8)[None, :, None] + 40 * (k % 2)
        frames[t, :, (t + 5 * k) % w] = 250
    return frames


def test_boundary_ratio_detects_injected_seams():
    plan = HierarchyPlan(4, 3, 28)  # L = 4, m = 3: 28 frames, strides 9, 3, 1
    call, level = coherence.dod_producers(plan)
    seams = _boundaries(call)
    smooth = _moving_video(28)
    meter = coherence.TransitionMeter()
    for chunk in np.array_split(smooth, [5, 6, 17]):  # streamed in ragged chunks
        meter.update(chunk)
    assert meter.diffs.shape == (27,)
    np.testing.assert_allclose(
        meter.diffs, np.abs(np.diff(smooth.astype(int), axis=0)).mean(axis=(1, 2, 3))
    )
    calm = coherence.coherence(meter.diffs, call, level)["pixels"]
    assert calm["boundary_ratio"] == pytest.approx(1.0, abs=0.05)
    jumpy = _moving_video(28, seams)
    meter = coherence.TransitionMeter()
    meter.update(jumpy)
    feats = jumpy.reshape(28, -1).astype(np.float64)
    out = coherence.coherence(meter.diffs, call, level, coherence.feature_distances(feats))
    assert out["pixels"]["boundary_ratio"] > 3 and out["features"]["boundary_ratio"] > 1
    assert out["pixels"]["boundary_transitions"] == len(seams)
    assert set(out["pixels"]["by_level"]) == {"0", "1"}  # seams next to level-0 and level-1 frames
