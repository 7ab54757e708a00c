"""Temporal coherence at the seams of the generation schedule.

Every frame of a generated video comes out of one model call: in Diffusion over
Diffusion one segment of one level (the global level's single call makes the keyframes;
each local segment makes the L-2 frames between two frames of the level above), in the
autoregressive baseline one segment of the chain. A transition t -> t+1 is a BOUNDARY
when frames t and t+1 come from different calls, and INSIDE when one call made both.
If the calls agree with each other (local segments continue their given end frames,
AR segments their context), frames change as much across boundaries as inside segments:

    boundary_ratio = mean change over boundary transitions / mean change inside

is ~1 for a coherent video and > 1 when seams show as jumps. Change is measured as the
mean absolute RGB difference of consecutive frames (0-255 scale) and, when features are
available, as the L2 distance of their image features. DoD boundaries are also split by
the coarser of the two frames' levels (`by_level`: "0" = next to a global keyframe), so a
seam problem of one level shows on its own. The same numbers on real frames under the
same plan (`reference` in the report) give the ratio the data itself has (shot cuts fall
anywhere, so it is ~1 too).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nuwa_jax.hierarchy.plan import HierarchyPlan, generation_plan

SCHEDULES = ("dod", "ar")


def dod_producers(plan: HierarchyPlan) -> tuple[np.ndarray, np.ndarray]:
    """(call id, level) of every frame of a DoD video: which segment of which level made it."""
    call = np.full(plan.num_frames, -1, np.int64)
    level = np.full(plan.num_frames, -1, np.int64)
    next_id = 0
    for j in plan.levels:
        segments, keep = plan.segments(j), plan.keep_mask(j)
        for s in range(segments.shape[0]):
            frames = segments[s][keep[s]]
            call[frames], level[frames] = next_id, j
            next_id += 1
    if (call < 0).any():
        raise ValueError(f"{plan}: frames {np.nonzero(call < 0)[0][:8].tolist()} have no producer")
    return call, level


def ar_producers(
    num_frames: int, frames_per_call: int, context: int
) -> tuple[np.ndarray, np.ndarray]:
    """(call id, level 0) of every frame of the autoregressive baseline's video: segments
    start at 0, L - c, 2(L - c), ...; segment i > 0 makes its last L - c frames (its first
    c are the previous segment's, given), as nuwa_jax.hierarchy.generator does."""
    L, c = frames_per_call, context
    if not 1 <= c < L:
        raise ValueError(f"ar context {c} must be in [1, {L})")
    call = np.full(num_frames, -1, np.int64)
    starts = [0] + list(range(L - c, max(num_frames - c, 1), L - c))
    for i, s in enumerate(starts):
        first = s if i == 0 else s + c
        call[first : min(s + L, num_frames)] = i
    return call, np.zeros(num_frames, np.int64)


def producers(
    schedule: str,
    num_frames: int,
    frames_per_call: int,
    depth: int,
    ar_context: int = 1,
):
    """(call id, level) per frame for a schedule, with generation's plan: all `depth`
    levels pruned to the frames (nuwa_jax.hierarchy.plan.generation_plan)."""
    if schedule == "ar":
        return ar_producers(num_frames, frames_per_call, ar_context)
    if schedule != "dod":
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    return dod_producers(generation_plan(num_frames, frames_per_call, depth))


class TransitionMeter:
    """Mean absolute difference of consecutive frames, fed in chunks (keeps one frame)."""

    def __init__(self):
        self.values: list[np.ndarray] = []
        self._last: np.ndarray | None = None

    def update(self, frames: np.ndarray) -> None:
        x = np.asarray(frames).astype(np.int16)
        if len(x) == 0:
            return
        if self._last is not None:
            x = np.concatenate([self._last[None], x])
        if len(x) > 1:
            self.values.append(np.abs(np.diff(x, axis=0)).mean(axis=(1, 2, 3)))
        self._last = x[-1]

    @property
    def diffs(self) -> np.ndarray:
        return np.concatenate(self.values) if self.values else np.zeros(0)


def feature_distances(features: np.ndarray) -> np.ndarray:
    """L2 distance between the features of consecutive frames, (N, D) -> (N-1,)."""
    f = np.asarray(features, np.float64)
    return np.linalg.norm(np.diff(f, axis=0), axis=1)


def boundary_stats(changes: np.ndarray, call: np.ndarray, level: np.ndarray) -> dict[str, Any]:
    """Mean change at boundary and inside transitions, their ratio, and boundaries by level."""
    changes = np.asarray(changes, np.float64)
    if len(changes) != len(call) - 1:
        raise ValueError(f"{len(changes)} transitions for {len(call)} frames")
    boundary = call[:-1] != call[1:]
    coarse = np.minimum(level[:-1], level[1:])
    mean = lambda m: float(changes[m].mean()) if m.any() else None  # noqa: E731
    inside, at = mean(~boundary), mean(boundary)
    return dict(
        boundary=at,
        inside=inside,
        boundary_ratio=at / inside if at is not None and inside else None,
        boundary_transitions=int(boundary.sum()),
        inside_transitions=int((~boundary).sum()),
        by_level={str(j): mean(boundary & (coarse == j)) for j in np.unique(coarse[boundary])},
    )


def coherence(
    pixel_changes: np.ndarray,
    call: np.ndarray,
    level: np.ndarray,
    feature_changes: np.ndarray | None = None,
) -> dict[str, Any]:
    """The report entry of one video: pixel (and feature) boundary statistics."""
    out = dict(pixels=boundary_stats(pixel_changes, call, level))
    if feature_changes is not None:
        out["features"] = boundary_stats(feature_changes, call, level)
    return out
