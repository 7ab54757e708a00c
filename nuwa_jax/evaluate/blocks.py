"""How a long video is cut into blocks, and the result type of a per-block metric.

NUWA-XL reports its metrics on long videos through 16-frame blocks ("B-FVD-16: the long
video cut into 16-frame blocks, FVD per block, averaged"). Here a video of N frames has
floor(N / B) blocks [bB, (b+1)B), b = 0, 1, ...; the N mod B trailing frames belong to no
block and are reported as `dropped_frames` (N(m) = (L-1)^m + 1 frames of a full hierarchy
at L = 16: 16 -> 1 block, 226 -> 14 blocks + 2 frames, 3376 -> 211 blocks exactly).

A metric is computed per block POSITION b over the set of all generated videos' block b
(the generated distribution at that point of the video), then averaged over positions;
`per_block` keeps the curve (quality along the video), `pooled` the same distance with
all blocks of all videos as one set.
"""

from __future__ import annotations

import dataclasses
from typing import Any

BLOCK_FRAMES = 16


def num_blocks(num_frames: int, block_frames: int = BLOCK_FRAMES) -> int:
    if block_frames < 1:
        raise ValueError(f"block_frames must be >= 1, got {block_frames}")
    return num_frames // block_frames


def check_lengths(lengths: list[int], names: list[str], block_frames: int) -> int:
    """The common frame count of the videos; raises naming the video that differs or is
    shorter than one block."""
    if not lengths:
        raise ValueError("no generated videos")
    for n, name in zip(lengths, names):
        if n < block_frames:
            raise ValueError(f"{name}: {n} frames, fewer than one {block_frames}-frame block")
        if n != lengths[0]:
            raise ValueError(
                f"{name}: {n} frames, but {names[0]} has {lengths[0]}; all generated videos "
                "must have the same length (blocks are compared position by position)"
            )
    return lengths[0]


@dataclasses.dataclass
class BlockMetric:
    """A per-block metric. value: mean of per_block (None when a block set is too small,
    `note` says why); pooled: all blocks of all videos as one set."""

    name: str
    value: float | None
    per_block: list[float] | None
    pooled: float | None
    blocks: int
    block_frames: int
    samples_per_block: int
    dropped_frames: int
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
