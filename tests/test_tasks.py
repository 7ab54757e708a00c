"""Tasks as masks: every task's kept frames, frame by frame, for several clip lengths."""

import numpy as np
import pytest

from nuwa_jax import tasks

LENGTHS = (5, 9, 17)


def _frames(kept: np.ndarray) -> list[int]:
    assert kept.dtype == bool and kept.ndim == 1
    return [int(i) for i in np.flatnonzero(kept)]


@pytest.mark.parametrize("n", LENGTHS)
def test_masks_frame_by_frame(n):
    assert _frames(tasks.interpolation(n)) == [0, n - 1]
    assert _frames(tasks.image_to_video(n)) == [0]
    for k in (1, 2, n - 1):
        assert _frames(tasks.video_expansion(n, prefix=k)) == list(range(k))
    assert _frames(tasks.arbitrary(n, frames=(3, 1, -1))) == [1, 3, n - 1]
    assert _frames(tasks.arbitrary(n)) == []
    assert _frames(tasks.slow_motion(n, factor=2)) == list(range(0, n, 2))
    assert _frames(tasks.slow_motion(n, factor=4)) == list(range(0, n, 4))
    for name in tasks.TASKS:
        assert tasks.task_mask(name, n).shape == (n,)


@pytest.mark.parametrize("n", LENGTHS)
def test_slow_motion_passes(n):
    (one,) = tasks.slow_motion_passes(n, factor=2)
    assert one.stride == 1 and list(one.frames) == list(range(n))
    assert list(one.frames[one.kept]) == list(range(0, n, 2))

    first, second = tasks.slow_motion_passes(n, factor=4)
    assert first.stride == 2 and list(first.frames) == list(range(0, n, 2))
    assert list(first.frames[first.kept]) == list(range(0, n, 4))  # the source frames
    assert list(first.frames[~first.kept]) == [i for i in range(2, n, 4)]
    assert second.stride == 1 and list(second.frames) == list(range(n))
    # everything the first pass knew or made is given to the second
    assert list(second.frames[second.kept]) == list(first.frames)
    assert list(second.frames[~second.kept]) == list(range(1, n, 2))

    passes = tasks.slow_motion_passes(n, factor=8)
    assert [p.stride for p in passes] == [4, 2, 1]
    made = set(range(0, n, 8))
    for p in passes:  # each pass keeps exactly what is known by then
        assert set(p.frames[p.kept]) == made
        made |= set(p.frames)
    assert made == set(range(n))


def test_task_registry_and_errors():
    assert set(tasks.TASKS) == {
        "interpolation", "image_to_video", "video_expansion", "arbitrary", "slow_motion",
    }  # fmt: skip
    assert _frames(tasks.task_mask("video_expansion", 9, prefix=3)) == [0, 1, 2]
    with pytest.raises(ValueError, match="unknown task 'outpainting'"):
        tasks.task_mask("outpainting", 9)
    with pytest.raises(ValueError, match="prefix must be in"):
        tasks.video_expansion(5, prefix=5)
    with pytest.raises(ValueError, match="frame 9 is outside a clip of 5"):
        tasks.arbitrary(5, frames=(9,))
    with pytest.raises(ValueError, match="factor must be a power of two"):
        tasks.slow_motion(9, factor=3)
    with pytest.raises(ValueError, match="'interpolation': num_frames"):
        tasks.interpolation(1)


def test_condition_video():
    kept = tasks.interpolation(5)
    clip = np.arange(5 * 2, dtype=np.float32).reshape(5, 2) + 1
    cond = tasks.condition_video(kept, clip)
    np.testing.assert_array_equal(cond[[0, 4]], clip[[0, 4]])
    np.testing.assert_array_equal(cond[1:4], 0)
    given = np.array([[7.0, 7.0], [9.0, 9.0]], np.float32)  # only the kept frames, in order
    cond = tasks.condition_video(kept, given)
    np.testing.assert_array_equal(cond, [[7, 7], [0, 0], [0, 0], [0, 0], [9, 9]])
    with pytest.raises(ValueError, match="got 3 frames for a clip of 5 frames with 2 kept"):
        tasks.condition_video(kept, clip[:3])
