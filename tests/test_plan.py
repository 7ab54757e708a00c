"""The Diffusion-over-Diffusion plan: coverage, causality, strides, pruning, windows."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from configs import common
from nuwa_jax.data import pipeline
from nuwa_jax.hierarchy import (
    HierarchyPlan,
    autoregressive_calls,
    cost_table,
    full_length,
    generation_plan,
)


def check_plan(plan: HierarchyPlan) -> None:
    """Every invariant the docs promise, for one plan."""
    L, m, n = plan.frames_per_call, plan.depth, plan.num_frames
    assert plan.full_frames == (L - 1) ** m + 1 >= n
    produced: dict[int, int] = {}  # frame -> level, for every generated frame (kept or not)
    kept = []
    for level in plan.levels:
        seg = plan.segments(level)
        cond = plan.condition_mask(level)
        s = (L - 1) ** (m - 1 - level)
        assert plan.stride(level) == s
        assert seg.dtype == np.int32 and seg.shape[1] == L
        assert (np.diff(seg, axis=1) == s).all()
        if level == 0:
            assert seg.shape[0] == 1 and seg[0, 0] == 0 and seg[0, -1] == plan.full_frames - 1
            assert not cond.any()
        else:
            above = (L - 1) * s
            assert plan.stride(level - 1) == above
            assert cond.tolist() == [True] + [False] * (L - 2) + [True]
            # One segment per level-(j-1) interval whose left frame is < N-1.
            assert seg.shape[0] == -(-(n - 1) // above)
            assert (seg[:, 0] % above == 0).all() and (seg[:, 0] < n - 1).all()
            assert (seg[:, -1] - seg[:, 0] == above).all()
            # Conditions come from earlier levels.
            for f in seg[:, [0, -1]].ravel().tolist():
                assert f in produced and produced[f] < level, (plan, level, f)
        for f in seg[:, ~cond].ravel().tolist():
            assert f not in produced, (plan, level, f)  # never generated twice
            produced[f] = level
        keep = plan.keep_mask(level)
        assert (keep == (~cond[None] & (seg < n))).all()
        kept.append(plan.generated_frames(level))
    kept = np.concatenate(kept)
    # Every frame 0..N-1 generated exactly once.
    assert np.array_equal(np.sort(kept), np.arange(n))
    assert set(f for f in produced if f < n) == set(range(n))
    level_of = plan.frame_level()
    assert all(level_of[f] == produced[f] for f in range(n))
    # The discarded tail never reaches past the full plan.
    assert max(produced) <= plan.full_frames - 1


@pytest.mark.parametrize("L", range(3, 18))
@pytest.mark.parametrize("m", [1, 2, 3])
def test_full_plans(L, m):
    plan = HierarchyPlan.full(L, m)
    check_plan(plan)
    for level in plan.levels:
        assert plan.num_segments(level) == (L - 1) ** level


def test_paper_lengths():
    assert [full_length(16, m) for m in (1, 2, 3)] == [16, 226, 3376]
    plan = HierarchyPlan.full(16, 3)
    assert [plan.stride(j) for j in plan.levels] == [225, 15, 1]
    assert plan.segments_per_level() == [1, 15, 225]
    assert HierarchyPlan.for_frames(1024, 16).segments_per_level() == [1, 5, 69]


@pytest.mark.parametrize("L", [3, 4, 5, 6])
def test_every_length_exhaustive(L):
    """All N from 2 to N(3) (and beyond, for L=3) through `for_frames`."""
    for n in range(2, full_length(L, 3) + (40 if L == 3 else 1)):
        plan = HierarchyPlan.for_frames(n, L)
        assert plan.depth == 1 or full_length(L, plan.depth - 1) < n  # smallest depth
        check_plan(plan)


@settings(max_examples=300, deadline=None)
@given(L=st.integers(3, 17), m=st.integers(1, 3), data=st.data())
def test_arbitrary_lengths(L, m, data):
    n = data.draw(st.integers(2, full_length(L, m)))
    check_plan(HierarchyPlan(L, m, n))  # any depth that fits, not only the smallest
    plan = HierarchyPlan.for_frames(n, L)
    assert plan.depth <= m
    check_plan(plan)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(2, 5000), L=st.integers(3, 17))
def test_for_frames_up_to_thousands(n, L):
    check_plan(HierarchyPlan.for_frames(n, L))


def test_strides_unchanged_by_pruning():
    full, pruned = HierarchyPlan.full(16, 3), HierarchyPlan.for_frames(1024, 16)
    for level in full.levels:
        assert full.stride(level) == pruned.stride(level)
        k = pruned.num_segments(level)
        assert np.array_equal(full.segments(level)[:k], pruned.segments(level))


@pytest.mark.parametrize("n", [2, 5, 16, 17, 226, 300])
def test_generation_runs_every_model_at_its_training_stride(n):
    """The demo (L=16, depth 3): whatever N, each level's model gets segments at exactly
    the stride of the windows the trainer gave it, the global one included."""
    config = common.base("demo")
    trained = pipeline.plan_from_config(config)  # the plan of the training windows
    h = config.hierarchy
    plan = generation_plan(n, h.frames_per_call, h.depth)
    check_plan(plan)
    assert plan.depth == trained.depth == 3
    for level in trained.levels:
        seg = plan.segments(level)
        assert seg.shape[0] >= 1  # every model runs, even for 2 frames
        assert (np.diff(seg, axis=1) == trained.stride(level)).all()
        assert seg[0].tolist() == trained.window(level, 0).tolist()
    assert plan.segments(0)[0, -1] == 3375  # keyframes 225 apart, past a short video's end
    assert plan.model_calls() == [1, 1, 1]
    if n <= 16:  # a 16-frame video: one segment per level, 48 frames made, 16 kept
        assert plan.segments_per_level() == [1, 1, 1]
        assert cost_table(n, 16, depth=3)["dod_sequential_calls"] == 3


def test_generation_plan_refuses_more_than_the_depth_makes():
    assert generation_plan(3376, 16, 3) == HierarchyPlan.full(16, 3)
    with pytest.raises(ValueError, match="3377 frames need a depth-4 hierarchy at L=16, but "
                       "hierarchy.depth=3"):  # fmt: skip
        generation_plan(3377, 16, 3)
    with pytest.raises(ValueError, match="num_frames=1"):
        generation_plan(1, 16, 3)


def test_small_plan_by_hand():
    plan = HierarchyPlan.for_frames(10, 4)  # N(2) = 10
    assert plan.depth == 2
    assert plan.segments(0).tolist() == [[0, 3, 6, 9]]
    assert plan.segments(1).tolist() == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    plan = HierarchyPlan.for_frames(8, 4)  # pruned: frame 9 generated and discarded
    assert plan.segments(1).tolist() == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    assert plan.keep_mask(0).tolist() == [[True, True, True, False]]
    assert plan.keep_mask(1)[-1].tolist() == [False, True, False, False]
    plan = HierarchyPlan.for_frames(7, 4)  # segment starting at 6 = N-1 is dropped
    assert plan.segments(1).tolist() == [[0, 1, 2, 3], [3, 4, 5, 6]]
    assert plan.frame_level().tolist() == [0, 1, 1, 0, 1, 1, 0]


def test_windows():
    plan = HierarchyPlan.full(4, 3)  # strides 9, 3, 1
    assert plan.window(0, 5).tolist() == [5, 14, 23, 32]
    assert plan.window(1, 2).tolist() == [2, 5, 8, 11]
    assert plan.window(2, 7).tolist() == [7, 8, 9, 10]
    assert [plan.window_span(j) for j in plan.levels] == [28, 10, 4]
    assert plan.window_starts(0, 30).tolist() == [0, 1, 2]
    assert plan.window_starts(0, 27).size == 0
    assert plan.window_starts(1, 30, aligned=True).tolist() == [0, 9, 18]
    assert plan.window_starts(2, 10, aligned=True).tolist() == [0, 3, 6]
    assert plan.window_starts(0, 29, aligned=True).tolist() == [0, 1]  # no grid above
    # A window at an aligned start is exactly a segment of generation.
    for level in plan.levels:
        seg = plan.segments(level)
        starts = plan.window_starts(level, plan.full_frames, aligned=True)
        assert np.array_equal(np.stack([plan.window(level, s) for s in starts]), seg)


def test_model_calls():
    plan = HierarchyPlan.for_frames(1024, 16)
    assert plan.model_calls() == [1, 1, 1]
    assert plan.model_calls(max_segments_per_call=8) == [1, 1, 9]
    assert autoregressive_calls(16, 16) == 1
    assert autoregressive_calls(1024, 16, context_frames=1) == 1 + -(-(1024 - 16) // 15)
    assert autoregressive_calls(1024, 16, context_frames=8) == 1 + -(-(1024 - 16) // 8)
    table = cost_table(1024, 16)
    assert table["dod_sequential_calls"] == 3 and table["ar_sequential_calls"] == 69


@pytest.mark.parametrize(
    "args, match",
    [
        ((2, 2, 2), "frames_per_call=2"),
        ((16, 0, 2), "depth=0"),
        ((16, 2, 1), "num_frames=1"),
        ((16, 2, 227), "num_frames=227"),
    ],
)
def test_validation(args, match):
    with pytest.raises(ValueError, match=match):
        HierarchyPlan(*args)


def test_validation_other():
    with pytest.raises(ValueError, match="num_frames=1"):
        HierarchyPlan.for_frames(1, 16)
    with pytest.raises(ValueError, match="frames_per_call=2"):
        HierarchyPlan.for_frames(10, 2)
    with pytest.raises(TypeError, match="frames_per_call"):
        HierarchyPlan(16.0, 2, 10)
    plan = HierarchyPlan.full(4, 2)
    with pytest.raises(ValueError, match="level=2"):
        plan.segments(2)
    with pytest.raises(ValueError, match="start=-1"):
        plan.window(0, -1)
    with pytest.raises(ValueError, match="context_frames=16"):
        autoregressive_calls(100, 16, context_frames=16)
    assert HierarchyPlan(np.int64(4), 2, 10) == HierarchyPlan(4, 2, 10)


def test_window_start_range():
    plan = HierarchyPlan.full(4, 3)  # strides 9, 3, 1; spans 28, 10, 4
    assert list(plan.window_start_range(1, 40, aligned=True, first_frame=10)) == [18, 27]
    assert list(plan.window_start_range(1, 40, aligned=False, first_frame=29)) == [29, 30]
    assert len(plan.window_start_range(0, 30, first_frame=5)) == 0
    big = plan.window_start_range(2, 10**12, aligned=True, first_frame=7)
    assert len(big) == (10**12 - 4 - 9) // 3 + 1 and big[0] == 9  # lazy
