"""The Diffusion-over-Diffusion plan: which frames every level of NUWA-XL generates.

With L frames per model call and depth m (one global level and m-1 local levels) a
full video has N(m) = (L-1)^m + 1 frames. Level j has stride s_j = (L-1)^(m-1-j):

- level 0 (global) generates L keyframes 0, s_0, ..., (L-1) s_0 = N(m)-1 from nothing;
- level j >= 1 fills, for every pair of adjacent frames (a, a + s_{j-1}) of level j-1,
  one SEGMENT of L frames a, a + s_j, ..., a + (L-1) s_j: first and last are given
  (conditions), the L-2 middle ones are generated. The segments of one level are
  independent, so they are the batch of one model call.

Arbitrary N >= 2 at depth m (N <= N(m)): the N(m)-frame plan with its strides
unchanged, pruned to the segments whose left endpoint is < N-1. Frames >= N that a kept
segment still produces (the tail of the global level, or of the last segment of a level)
are generated, may serve as conditions of the next level, and are discarded from the
video.

Generation's rule (`generation_plan`): a trained hierarchy always runs at its own depth
(hierarchy.depth), however short the video, so every level's model sees at inference
exactly the frame spacing it was trained on. A 16-frame video of the L=16, depth-3 demo
is three calls (global keyframes 225 apart, level 1 at stride 15, level 2 at stride 1),
not the global model alone at stride 1, which it never trained for. `for_frames` (the
smallest depth that covers N) sizes a hierarchy one would train for N frames; it is not
how a trained one runs.

The same plan object drives training (`window`, `window_starts`: the frames one
training example of a level sees) and generation (`segments`, `condition_mask`,
`keep_mask`), so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np


def full_length(frames_per_call: int, depth: int) -> int:
    """N(m) = (L-1)^m + 1: the frames of a complete depth-m hierarchy."""
    return (frames_per_call - 1) ** depth + 1


def _depth_for(num_frames: int, frames_per_call: int) -> int:
    """The smallest depth m with N(m) >= num_frames."""
    m = 1
    while full_length(frames_per_call, m) < num_frames:
        m += 1
    return m


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"HierarchyPlan: {name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"HierarchyPlan: {name} must be >= {minimum}, got {name}={value}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class HierarchyPlan:
    """NUWA-XL's coarse-to-fine generation order for a video of `num_frames` frames.

    Attributes:
      frames_per_call: L, frames of one model call (one segment); >= 3.
      depth: m, number of levels (1 global + m-1 local); >= 1.
      num_frames: N, frames of the video; 2 <= N <= N(m).
    """

    frames_per_call: int
    depth: int
    num_frames: int

    def __post_init__(self):
        L = _check_int("frames_per_call", self.frames_per_call, 3)
        m = _check_int("depth", self.depth, 1)
        n = _check_int("num_frames", self.num_frames, 2)
        if n > full_length(L, m):
            raise ValueError(
                f"HierarchyPlan: num_frames={n} exceeds N(m)=(L-1)^m+1={full_length(L, m)} "
                f"for frames_per_call={L}, depth={m}; {n} frames need depth >= "
                f"{_depth_for(n, L)}"
            )
        # Normalise numpy integers so equality and hashing behave.
        object.__setattr__(self, "frames_per_call", L)
        object.__setattr__(self, "depth", m)
        object.__setattr__(self, "num_frames", n)

    # -- construction ------------------------------------------------------------------
    @classmethod
    def for_frames(cls, num_frames: int, frames_per_call: int) -> HierarchyPlan:
        """The plan at the smallest depth m with N(m) >= `num_frames`: the hierarchy one
        would train for that length. A trained hierarchy generates at its own depth
        (`generation_plan`)."""
        L = _check_int("frames_per_call", frames_per_call, 3)
        n = _check_int("num_frames", num_frames, 2)
        return cls(L, _depth_for(n, L), n)

    @classmethod
    def full(cls, frames_per_call: int, depth: int) -> HierarchyPlan:
        """The complete plan of N(m) frames."""
        return cls(frames_per_call, depth, full_length(frames_per_call, depth))

    # -- geometry ----------------------------------------------------------------------
    @property
    def full_frames(self) -> int:
        """N(m): frames of the unpruned plan; the global level spans all of them."""
        return full_length(self.frames_per_call, self.depth)

    @property
    def levels(self) -> range:
        """Level indices: 0 is global, 1..m-1 local."""
        return range(self.depth)

    def _level(self, level: int) -> int:
        if isinstance(level, bool) or not isinstance(level, int | np.integer):
            raise TypeError(f"HierarchyPlan: level must be an int, got {level!r}")
        if not 0 <= level < self.depth:
            raise ValueError(
                f"HierarchyPlan: level={level} is not in [0, depth={self.depth}) "
                f"(0 is global, 1..{self.depth - 1} local)"
            )
        return int(level)

    def stride(self, level: int) -> int:
        """s_j = (L-1)^(m-1-j): spacing of the frames of one segment at level j."""
        return (self.frames_per_call - 1) ** (self.depth - 1 - self._level(level))

    def window_span(self, level: int) -> int:
        """Frames from the first to the last of one segment, inclusive: (L-1) s_j + 1."""
        return (self.frames_per_call - 1) * self.stride(level) + 1

    def is_global(self, level: int) -> bool:
        return self._level(level) == 0

    # -- generation --------------------------------------------------------------------
    @functools.cache  # noqa: B019 (frozen, hashable, and plans are few)
    def _segments(self, level: int) -> np.ndarray:
        L, s = self.frames_per_call, self.stride(level)
        offsets = s * np.arange(L, dtype=np.int64)
        if level == 0:
            starts = np.zeros(1, np.int64)
        else:
            above = self.stride(level - 1)  # = (L-1) * s: spacing of level j-1
            starts = np.arange(0, self.num_frames - 1, above, dtype=np.int64)
        seg = (starts[:, None] + offsets[None, :]).astype(np.int32)
        seg.setflags(write=False)
        return seg

    def segments(self, level: int) -> np.ndarray:
        """(n_segments, L) int32 absolute frame indices of every segment of `level`.

        Level 0 has one segment (the keyframes). Level j >= 1 has one segment per pair
        of adjacent level-(j-1) frames whose left frame is < N-1. Indices may exceed
        N-1 at the tail (generated and discarded).
        """
        return self._segments(self._level(level))

    def num_segments(self, level: int) -> int:
        """Segments of `level`: the batch size of that level's model call."""
        return int(self.segments(level).shape[0])

    def condition_mask(self, level: int) -> np.ndarray:
        """(L,) bool: True where the frame is given. Global: none; local: first and last."""
        mask = np.zeros(self.frames_per_call, bool)
        if self._level(level) > 0:
            mask[0] = mask[-1] = True
        return mask

    def keep_mask(self, level: int) -> np.ndarray:
        """(n_segments, L) bool: the outputs of `level` that enter the video.

        A frame is kept when the level generates it (not a condition) and it is < N.
        """
        seg = self.segments(level)
        return ~self.condition_mask(level)[None, :] & (seg < self.num_frames)

    def generated_frames(self, level: int) -> np.ndarray:
        """Sorted int32 frame indices (< N) that `level` contributes to the video."""
        seg = self.segments(level)
        return np.sort(seg[self.keep_mask(level)]).astype(np.int32)

    def frame_level(self) -> np.ndarray:
        """(N,) int32: the level that generates each frame of the video."""
        out = np.full(self.num_frames, -1, np.int32)
        for level in self.levels:
            out[self.generated_frames(level)] = level
        return out

    # -- training ----------------------------------------------------------------------
    def window(self, level: int, start: int) -> np.ndarray:
        """(L,) int32 frame indices of one training example of `level` starting at `start`.

        The global window spans N(m) frames at stride s_0; a local window L frames at
        stride s_j. Indices are relative to whatever `start` is relative to (an episode).
        """
        if start < 0:
            raise ValueError(f"HierarchyPlan.window: start={start} must be >= 0")
        return (int(start) + self.stride(level) * np.arange(self.frames_per_call)).astype(np.int32)

    def window_start_range(
        self, level: int, stop_frame: int, aligned: bool = False, first_frame: int = 0
    ) -> range:
        """Every start of a `level` window within frames [first_frame, stop_frame).

        A lazy `range` (O(1) length and indexing, however long the episode). `aligned`:
        local windows start only on the level-above grid (multiples of s_{j-1}, counted
        from frame 0 of the episode), as the segments of generation do; the global
        level has no grid above and ignores it. Empty when the frames are fewer than
        the window span.
        """
        if first_frame < 0:
            raise ValueError(f"HierarchyPlan.window_start_range: first_frame={first_frame} < 0")
        span = self.window_span(level)
        step = self.stride(level - 1) if aligned and level > 0 else 1
        first = -(-first_frame // step) * step
        return range(first, max(first, stop_frame - span + 1), step)

    def window_starts(self, level: int, episode_frames: int, aligned: bool = False) -> np.ndarray:
        """int64 array of every start of a `level` window in an episode of that many frames."""
        return np.asarray(self.window_start_range(level, episode_frames, aligned), np.int64)

    # -- cost --------------------------------------------------------------------------
    def model_calls(self, max_segments_per_call: int | None = None) -> list[int]:
        """Sequential model calls per level (each a full diffusion sampling loop).

        With every segment of a level in one batch (`max_segments_per_call=None`) it is
        one call per level, m in all; with a cap B, ceil(n_segments / B) per level.
        """
        out = []
        for level in self.levels:
            n = self.num_segments(level)
            out.append(1 if max_segments_per_call is None else -(-n // max_segments_per_call))
        return out

    def segments_per_level(self) -> list[int]:
        """Segments per level: total work (segment evaluations) of generation."""
        return [self.num_segments(level) for level in self.levels]


def generation_plan(num_frames: int, frames_per_call: int, depth: int) -> HierarchyPlan:
    """The plan a trained depth-`depth` hierarchy generates `num_frames` frames with.

    Always all `depth` levels, pruned to N, so level j runs at stride (L-1)^(depth-1-j),
    the stride its model was trained on, short videos included (a 16-frame video at L=16,
    depth 3: three calls of one segment each). More than N(depth) frames is a ValueError
    naming `hierarchy.depth` and the depth those frames would need.
    """
    L = _check_int("frames_per_call", frames_per_call, 3)
    m = _check_int("depth", depth, 1)
    n = _check_int("num_frames", num_frames, 2)
    if n > full_length(L, m):
        raise ValueError(
            f"{n} frames need a depth-{_depth_for(n, L)} hierarchy at L={L}, but "
            f"hierarchy.depth={m} (at most {full_length(L, m)} frames)"
        )
    return HierarchyPlan(L, m, n)


def autoregressive_calls(num_frames: int, frames_per_call: int, context_frames: int = 1) -> int:
    """Sequential model calls of the autoregressive baseline for `num_frames` frames.

    The first call makes L frames; every later call conditions on the last
    `context_frames` frames and makes L - context_frames new ones. Every call waits
    for the one before, so calls, work and latency all grow linearly in N.
    """
    n = _check_int("num_frames", num_frames, 1)
    L = _check_int("frames_per_call", frames_per_call, 2)
    c = _check_int("context_frames", context_frames, 0)
    if c >= L:
        raise ValueError(f"autoregressive_calls: context_frames={c} must be < frames_per_call={L}")
    if n <= L:
        return 1
    return 1 + math.ceil((n - L) / (L - c))


def cost_table(
    num_frames: int, frames_per_call: int, context_frames: int = 1, depth: int | None = None
) -> dict:
    """Model calls of Diffusion over Diffusion vs the autoregressive baseline (docs).

    `depth`: the trained hierarchy's (`generation_plan`); None: the smallest that covers
    `num_frames` (`HierarchyPlan.for_frames`, a hierarchy sized for that length).
    """
    if depth is None:
        plan = HierarchyPlan.for_frames(num_frames, frames_per_call)
    else:
        plan = generation_plan(num_frames, frames_per_call, depth)
    return dict(
        num_frames=num_frames,
        frames_per_call=frames_per_call,
        depth=plan.depth,
        dod_segments_per_level=plan.segments_per_level(),
        dod_sequential_calls=len(plan.model_calls()),
        dod_total_segments=sum(plan.segments_per_level()),
        ar_sequential_calls=autoregressive_calls(num_frames, frames_per_call, context_frames),
    )
