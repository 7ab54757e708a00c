"""The synthetic long-video benchmark: procedurally rendered captioned episodes.

A stand-in for FlintstonesHD with structure at every level of a Diffusion-over-
Diffusion hierarchy (strides 225, 15, 1 at L = 16, m = 3):
  - global: an episode is a sequence of SHOTS (150-450 frames) with a persistent
    scenery (beach, forest, city at night, ...) and a CAST drawn from the episode's
    recurring characters;
  - middle: characters enter, leave and change action every few dozen frames;
  - local: smooth motion (walk left/right, jump, bounce) in fixed-point pixels.
One caption per frame, derived from the scene state: "a big red circle and a small
blue square walk left on the beach".

Bit-for-bit deterministic from (seed, episode index): one numpy Generator per
episode, integer-only rasterisation (shapes are integer polygons / discs on a
[-1000, 1000] grid, motion in 1/16 pixel units, integer parabolas), PNG encoding
with fixed settings. The renderer's rules are exposed as data (PALETTE, SHAPES,
SIZES, SCENES, ACTIONS, `benchmark_spec`) and every frame's ground-truth scene state
is returned (`EpisodeState`), so evaluation can detect characters by the same rules.

CLI: python -m nuwa_jax.data.synthetic --out DIR --episodes N --frames 3376
     --resolution 64 --seed 0
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import itertools
import json
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from nuwa_jax.data import captions as captions_lib
from nuwa_jax.data import schema
from nuwa_jax.data.writer import DatasetWriter

# Training renders episodes [0, data.synthetic_episodes); the held-out sets of evaluation
# (benchmarks/table1.py, interpolation.py, vae_detail.py: --first_episode) start here, so
# the two never share an episode (the trainer refuses synthetic_episodes beyond it).
HELD_OUT_FIRST_EPISODE = 100_000

# ---------------------------------------------------------------------------------------
# The renderer's rules, as data.
# ---------------------------------------------------------------------------------------
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 30),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "purple": (140, 50, 190),
    "pink": (240, 110, 180),
    "black": (20, 20, 20),
}

# Shapes on an integer grid [-1000, 1000]^2 (y down): 'disc' (radius), 'box' (half
# side), 'polygon' (vertices, even-odd rule), 'diamond' (|x| + |y| <= r), 'cross'
# (arm half-width, arm half-length).
SHAPES: dict[str, dict[str, Any]] = {
    "circle": {"kind": "disc", "radius": 1000},
    "square": {"kind": "box", "half": 850},
    "triangle": {"kind": "polygon", "vertices": [(0, -950), (950, 850), (-950, 850)]},
    "star": {
        "kind": "polygon",
        "vertices": [
            (0, -1000),
            (235, -324),
            (951, -309),
            (380, 124),
            (588, 809),
            (0, 400),
            (-588, 809),
            (-380, 124),
            (-951, -309),
            (-235, -324),
        ],
    },  # fmt: skip
    "diamond": {"kind": "diamond", "radius": 1000},
    "cross": {"kind": "cross", "half_width": 330, "half_length": 950},
}

# Sprite side in pixels = resolution // divisor (at least `min_px`).
SIZES: dict[str, dict[str, int]] = {
    "small": {"divisor": 8, "min_px": 4},
    "big": {"divisor": 4, "min_px": 6},
}

# Sceneries: a sky gradient (top, bottom colours) down to the horizon, a ground colour
# below it, one feature; the caption phrase places the characters there.
HORIZON_NUM, HORIZON_DEN = 5, 8  # horizon row = H * 5 // 8
SCENES: dict[str, dict[str, Any]] = {
    "beach": {"phrase": "on the beach", "sky": ((120, 180, 230), (200, 225, 240)),
              "ground": (225, 205, 150), "feature": "sea", "feature_colour": (60, 110, 170)},
    "forest": {"phrase": "in the forest", "sky": ((150, 190, 160), (200, 220, 190)),
               "ground": (70, 110, 60), "feature": "trees", "feature_colour": (40, 80, 40)},
    "desert": {"phrase": "in the desert", "sky": ((235, 200, 140), (250, 230, 180)),
               "ground": (200, 160, 100), "feature": "sun", "feature_colour": (255, 240, 200)},
    "city": {"phrase": "in the city at night", "sky": ((20, 20, 50), (40, 40, 90)),
             "ground": (60, 60, 70), "feature": "buildings", "feature_colour": (90, 90, 110)},
    "snow": {"phrase": "in the snow", "sky": ((200, 210, 225), (230, 235, 240)),
             "ground": (245, 245, 250), "feature": "hills", "feature_colour": (215, 220, 235)},
    "meadow": {"phrase": "in the meadow", "sky": ((110, 170, 235), (180, 215, 245)),
               "ground": (110, 170, 80), "feature": "sun", "feature_colour": (255, 250, 210)},
    "cave": {"phrase": "in the cave", "sky": ((60, 50, 45), (90, 75, 60)),
             "ground": (110, 95, 80), "feature": "stalactites", "feature_colour": (45, 38, 34)},
}  # fmt: skip

# Actions, and the verb (singular, plural) a caption uses for each.
ACTIONS: tuple[str, ...] = ("walk_left", "walk_right", "jump", "bounce", "stand")
VERBS: dict[str, tuple[str, str]] = {
    "walk_left": ("walks left", "walk left"),
    "walk_right": ("walks right", "walk right"),
    "jump": ("jumps", "jump"),
    "bounce": ("bounces", "bounce"),
    "stand": ("stands", "stand"),
}
ACTION_PROBS = (0.25, 0.25, 0.15, 0.15, 0.2)
FIX = 16  # positions in 1/16 pixel

# Episode structure (frames).
SHOT_LENGTH = (150, 450)
MIN_LAST_SHOT = 60
ACTION_LENGTH = (16, 80)
ABSENT_LENGTH = (20, 200)
POOL_SIZE = (4, 6)  # recurring characters per episode
CAST_SIZE = (1, 3)  # characters per shot
START_ON_SCREEN = 0.7


def sprite_px(size: str, resolution: int) -> int:
    rule = SIZES[size]
    return max(rule["min_px"], resolution // rule["divisor"])


@dataclasses.dataclass(frozen=True)
class Character:
    shape: str
    colour: str
    size: str

    def describe(self) -> str:
        return f"a {self.size} {self.colour} {self.shape}"


ALL_CHARACTERS: tuple[Character, ...] = tuple(
    Character(shape, colour, size)
    for size, colour, shape in itertools.product(SIZES, PALETTE, SHAPES)
)


def benchmark_spec() -> dict[str, Any]:
    """Every rule of the renderer as JSON-able data (for detectors and metadata)."""
    return dict(
        palette={k: list(v) for k, v in PALETTE.items()},
        shapes=SHAPES,
        sizes=SIZES,
        scenes=SCENES,
        actions=list(ACTIONS),
        verbs={k: list(v) for k, v in VERBS.items()},
        horizon=[HORIZON_NUM, HORIZON_DEN],
        fixed_point=FIX,
    )


# ---------------------------------------------------------------------------------------
# Integer rasterisation.
# ---------------------------------------------------------------------------------------
def _grid(n: int) -> np.ndarray:
    """Integer coordinates in [-1000, 1000] of the n pixel centres of a sprite side."""
    return ((2 * np.arange(n, dtype=np.int64) + 1 - n) * 1000) // n


def _inside_polygon(px: np.ndarray, py: np.ndarray, vertices: Sequence[tuple[int, int]]):
    inside = np.zeros(np.broadcast(px, py).shape, bool)
    for (x1, y1), (x2, y2) in zip(vertices, list(vertices[1:]) + [vertices[0]]):
        crosses = (y1 > py) != (y2 > py)
        dy = y2 - y1
        if dy == 0:
            continue
        lhs, rhs = (px - x1) * dy, (py - y1) * (x2 - x1)
        left_of_edge = lhs < rhs if dy > 0 else lhs > rhs
        inside ^= crosses & left_of_edge
    return inside


@functools.cache
def shape_mask(shape: str, size_px: int) -> np.ndarray:
    """(size_px, size_px) bool mask of a shape, integer arithmetic only."""
    spec = SHAPES[shape]
    g = _grid(size_px)
    px, py = g[None, :], g[:, None]
    kind = spec["kind"]
    if kind == "disc":
        mask = px * px + py * py <= spec["radius"] ** 2
    elif kind == "box":
        mask = (np.abs(px) <= spec["half"]) & (np.abs(py) <= spec["half"])
    elif kind == "diamond":
        mask = np.abs(px) + np.abs(py) <= spec["radius"]
    elif kind == "cross":
        w, length = spec["half_width"], spec["half_length"]
        ax, ay = np.abs(px), np.abs(py)
        mask = ((ax <= w) & (ay <= length)) | ((ay <= w) & (ax <= length))
    elif kind == "polygon":
        mask = _inside_polygon(px, py, spec["vertices"])
    else:
        raise ValueError(f"shape {shape!r}: unknown kind {kind!r}")
    mask = np.broadcast_to(mask, (size_px, size_px)).copy()
    mask.flags.writeable = False
    return mask


def _disc(canvas: np.ndarray, cx: int, cy: int, r: int, colour) -> None:
    h, w = canvas.shape[:2]
    yy, xx = np.ogrid[:h, :w]
    canvas[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = colour


@functools.cache
def render_background(scene: str, resolution: int, variant: int) -> np.ndarray:
    """(H, W, 3) uint8 scenery of a shot; `variant` shifts its feature (integer math)."""
    spec = SCENES[scene]
    h = w = resolution
    horizon = h * HORIZON_NUM // HORIZON_DEN
    top, bottom = (np.array(c, np.int64) for c in spec["sky"])
    rows = np.arange(horizon, dtype=np.int64)[:, None]
    sky = top + (bottom - top) * rows // max(1, horizon - 1)
    canvas = np.empty((h, w, 3), np.int64)
    canvas[:horizon] = sky[:, None, :]
    canvas[horizon:] = spec["ground"]
    colour = spec["feature_colour"]
    feature, u = spec["feature"], max(1, resolution // 16)
    shift = (variant * 7 * u) % w
    if feature == "sea":
        canvas[horizon - 2 * u : horizon] = colour
        canvas[horizon - 2 * u : horizon, shift :: 4 * u] = (200, 220, 240)
    elif feature == "sun":
        _disc(canvas, (w // 4 + shift) % w, horizon // 3, 2 * u, colour)
    elif feature == "trees":
        for x0 in range(shift % (5 * u), w, 5 * u):
            canvas[horizon - 5 * u : horizon, x0 : x0 + u] = (90, 60, 30)
            _disc(canvas, x0 + u // 2, horizon - 5 * u, 2 * u, colour)
    elif feature == "buildings":
        for k, x0 in enumerate(range(-(shift % (4 * u)), w, 4 * u)):
            height = (3 + (k * 5 + variant) % 4) * u
            canvas[horizon - height : horizon, max(0, x0) : x0 + 3 * u] = colour
            canvas[horizon - height + u : horizon - u : 2 * u, max(0, x0 + u) : x0 + 2 * u] = (
                230, 210, 90)  # fmt: skip
    elif feature == "hills":
        xs = np.arange(w, dtype=np.int64)
        for cx in (shift, shift + w // 2, shift - w // 2, shift + w):
            rise = 3 * u - (np.abs(xs - cx) * 3 * u) // max(1, w // 3)
            for x in np.nonzero(rise > 0)[0]:
                canvas[horizon - rise[x] : horizon, x] = colour
    elif feature == "stalactites":
        for x0 in range(shift % (6 * u), w, 6 * u):
            for d in range(3 * u):
                half = (3 * u - d) // 3
                canvas[d, max(0, x0 - half) : x0 + half + 1] = colour
    image = canvas.astype(np.uint8)
    image.flags.writeable = False
    return image


# ---------------------------------------------------------------------------------------
# Episode simulation: the ground-truth scene state of every frame.
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class EpisodeState:
    """Ground truth of one episode. K characters (the episode's recurring pool), S shots.

    present[t, k]: character k is on screen (its centre inside the frame);
    x, y: its sprite centre in pixels (undefined, 0, when absent);
    action: index into ACTIONS, -1 when absent; shot_cast[s, k]: k is cast in shot s
    (present implies cast).
    """

    seed: int
    episode: int
    resolution: int
    characters: list[Character]
    shot_starts: np.ndarray  # (S,) first frame of each shot
    shot_scenes: list[str]  # (S,)
    shot_variants: np.ndarray  # (S,) background variant
    shot_cast: np.ndarray  # (S, K) bool
    shot_id: np.ndarray  # (T,) int32
    present: np.ndarray  # (T, K) bool
    x: np.ndarray  # (T, K) int32
    y: np.ndarray  # (T, K) int32
    action: np.ndarray  # (T, K) int8
    captions: list[str]

    @property
    def num_frames(self) -> int:
        return len(self.shot_id)

    def to_npz_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(
            buf,
            shot_starts=self.shot_starts,
            shot_variants=self.shot_variants,
            shot_cast=self.shot_cast,
            shot_id=self.shot_id,
            present=self.present,
            x=self.x,
            y=self.y,
            action=self.action,
            info=np.frombuffer(
                json.dumps(
                    dict(
                        seed=self.seed,
                        episode=self.episode,
                        resolution=self.resolution,
                        characters=[dataclasses.asdict(c) for c in self.characters],
                        shot_scenes=self.shot_scenes,
                        captions=self.captions,
                    )
                ).encode("utf-8"),
                np.uint8,
            ),
        )
        return buf.getvalue()

    @classmethod
    def from_npz(cls, path: str | os.PathLike) -> EpisodeState:
        with np.load(path) as z:
            info = json.loads(z["info"].tobytes().decode("utf-8"))
            arrays = {k: z[k] for k in z.files if k != "info"}
        return cls(
            seed=info["seed"],
            episode=info["episode"],
            resolution=info["resolution"],
            characters=[Character(**c) for c in info["characters"]],
            shot_scenes=info["shot_scenes"],
            captions=info["captions"],
            **arrays,
        )


def caption(
    characters: Sequence[Character], present: np.ndarray, action: np.ndarray, scene: str
) -> str:
    """The caption of one frame: present characters grouped by action, then the place."""
    phrase = SCENES[scene]["phrase"]
    groups = []
    for a, name in enumerate(ACTIONS):
        who = [characters[k].describe() for k in np.nonzero(present & (action == a))[0]]
        if who:
            groups.append(f"{' and '.join(who)} {VERBS[name][len(who) > 1]}")
    if not groups:
        return f"nobody is {phrase}"
    return f"{', '.join(groups)} {phrase}"


def longest_caption(max_present: int = CAST_SIZE[1]) -> str:
    """The longest caption (in UTF-8 bytes) `caption` can write, from the rules as data.

    A frame shows at most `max_present` characters (a shot's cast, CAST_SIZE[1]), distinct
    members of ALL_CHARACTERS, each doing one of ACTIONS, in one of SCENES. A caption's
    length is the sum of its characters' descriptions plus what the grouping by action
    and the scene phrase add, whoever does what; so the longest uses the `max_present`
    longest descriptions, and every assignment of actions to them (and nobody at all)
    is tried in every scene with `caption` itself. Text encoders must hold it whole
    (configs/common.py text.max_length).
    """
    by_length = sorted(ALL_CHARACTERS, key=lambda c: -len(c.describe().encode("utf-8")))
    best = ""
    for k in range(max_present + 1):
        cast, present = by_length[:k], np.ones(k, bool)
        for acts in itertools.product(range(len(ACTIONS)), repeat=k):
            for scene in SCENES:
                text = caption(cast, present, np.asarray(acts, np.int64), scene)
                if len(text.encode("utf-8")) > len(best.encode("utf-8")):
                    best = text
    return best


def simulate_episode(
    seed: int, episode: int, num_frames: int = 3376, resolution: int = 64
) -> EpisodeState:
    """The scene state of every frame of episode `episode` (deterministic)."""
    if num_frames < 1 or resolution < 16:
        raise ValueError(
            f"need num_frames >= 1 and resolution >= 16, got {num_frames}, {resolution}"
        )
    rng = np.random.default_rng([seed, episode])
    w = h = resolution
    horizon = h * HORIZON_NUM // HORIZON_DEN
    pool = rng.choice(
        len(ALL_CHARACTERS), int(rng.integers(*POOL_SIZE, endpoint=True)), replace=False
    )
    characters = [ALL_CHARACTERS[i] for i in sorted(pool)]
    k_total = len(characters)
    sizes = [sprite_px(c.size, resolution) for c in characters]

    starts = [0]
    while True:
        nxt = starts[-1] + int(rng.integers(*SHOT_LENGTH, endpoint=True))
        if nxt >= num_frames - MIN_LAST_SHOT:
            break
        starts.append(nxt)
    scene_names = list(SCENES)
    shot_scenes, variants = [], []
    for _ in starts:
        choices = [s for s in scene_names if not shot_scenes or s != shot_scenes[-1]]
        shot_scenes.append(choices[int(rng.integers(len(choices)))])
        variants.append(int(rng.integers(8)))
    shot_cast = np.zeros((len(starts), k_total), bool)

    present = np.zeros((num_frames, k_total), bool)
    xs = np.zeros((num_frames, k_total), np.int32)
    ys = np.zeros((num_frames, k_total), np.int32)
    actions = np.full((num_frames, k_total), -1, np.int8)
    shot_id = np.zeros(num_frames, np.int32)
    speed_unit = max(1, resolution // 64)

    for s, start in enumerate(starts):
        stop = starts[s + 1] if s + 1 < len(starts) else num_frames
        shot_id[start:stop] = s
        n_cast = int(rng.integers(CAST_SIZE[0], min(CAST_SIZE[1], k_total), endpoint=True))
        cast = sorted(int(k) for k in rng.choice(k_total, n_cast, replace=False))
        shot_cast[s, cast] = True
        states = {}
        for k in cast:
            size = sizes[k]
            st = dict(
                baseline=int(rng.integers(horizon + size // 2, h - 1, endpoint=True)),
                speed=int(rng.integers(6, 14, endpoint=True)) * speed_unit,
                present=bool(rng.random() < START_ON_SCREEN),
                x=int(rng.integers(size // 2, w - size // 2)) * FIX,
                timer=int(rng.integers(1, 120)),
                action=-1,
                remaining=0,
                elapsed=0,
                length=1,
            )
            states[k] = st
        for t in range(start, stop):
            for k in cast:
                st, size = states[k], sizes[k]
                if not st["present"]:
                    st["timer"] -= 1
                    if st["timer"] > 0:
                        continue
                    from_left = bool(rng.integers(2))
                    st.update(
                        present=True,
                        x=0 if from_left else (w * FIX - 1),
                        action=ACTIONS.index("walk_right" if from_left else "walk_left"),
                        remaining=int(rng.integers(*ACTION_LENGTH, endpoint=True)),
                        elapsed=0,
                    )
                    st["length"] = st["remaining"]
                elif st["remaining"] <= 0:
                    a = int(rng.choice(len(ACTIONS), p=ACTION_PROBS))
                    length = int(rng.integers(*ACTION_LENGTH, endpoint=True))
                    if ACTIONS[a] == "jump":
                        length = int(rng.integers(12, 24, endpoint=True))
                    st.update(action=a, remaining=length, elapsed=0, length=length)
                name = ACTIONS[st["action"]]
                lift = 0
                if name == "walk_left":
                    st["x"] -= st["speed"]
                elif name == "walk_right":
                    st["x"] += st["speed"]
                elif name == "jump":
                    d, p = st["length"], st["elapsed"]
                    lift = 4 * size * p * (d - p) // (d * d)
                elif name == "bounce":
                    period = 8
                    p = st["elapsed"] % period
                    lift = 4 * (size // 3) * p * (period - p) // (period * period)
                st["remaining"] -= 1
                st["elapsed"] += 1
                cx = st["x"] // FIX
                if not 0 <= cx < w:  # walked out of the frame: left the scene
                    st.update(
                        present=False,
                        remaining=0,
                        timer=int(rng.integers(*ABSENT_LENGTH, endpoint=True)),
                    )
                    continue
                present[t, k] = True
                xs[t, k] = cx
                ys[t, k] = st["baseline"] - size // 2 - lift
                actions[t, k] = st["action"]

    captions = [
        caption(characters, present[t], actions[t], shot_scenes[shot_id[t]])
        for t in range(num_frames)
    ]
    return EpisodeState(
        seed=seed, episode=episode, resolution=resolution, characters=characters,
        shot_starts=np.asarray(starts, np.int32), shot_scenes=shot_scenes,
        shot_variants=np.asarray(variants, np.int32), shot_cast=shot_cast, shot_id=shot_id,
        present=present, x=xs, y=ys, action=actions, captions=captions,
    )  # fmt: skip


def render_frame(state: EpisodeState, t: int) -> np.ndarray:
    """Frame t as (H, W, 3) uint8: the shot's scenery, then the present characters,
    nearest to the horizon first."""
    res = state.resolution
    s = int(state.shot_id[t])
    frame = render_background(state.shot_scenes[s], res, int(state.shot_variants[s])).copy()
    ks = np.nonzero(state.present[t])[0]
    bottoms = [int(state.y[t, k]) + sprite_px(state.characters[k].size, res) // 2 for k in ks]
    for k in ks[np.argsort(bottoms, kind="stable")]:
        c = state.characters[k]
        size = sprite_px(c.size, res)
        mask = shape_mask(c.shape, size)
        x0, y0 = int(state.x[t, k]) - size // 2, int(state.y[t, k]) - size // 2
        cx0, cy0 = max(0, x0), max(0, y0)
        cx1, cy1 = min(res, x0 + size), min(res, y0 + size)
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        sub = mask[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
        frame[cy0:cy1, cx0:cx1][sub] = PALETTE[c.colour]
    return frame


def iter_frames(
    state: EpisodeState, start: int = 0, stop: int | None = None
) -> Iterator[tuple[np.ndarray, str]]:
    """(image, caption) of frames [start, stop)."""
    for t in range(start, state.num_frames if stop is None else stop):
        yield render_frame(state, t), state.captions[t]


def render_episode(
    seed: int, episode: int, num_frames: int = 3376, resolution: int = 64
) -> tuple[np.ndarray, EpisodeState]:
    """All frames (T, H, W, 3) uint8 of an episode and its ground-truth state."""
    state = simulate_episode(seed, episode, num_frames, resolution)
    frames = np.empty((num_frames, resolution, resolution, 3), np.uint8)
    for t in range(num_frames):
        frames[t] = render_frame(state, t)
    return frames, state


def episode_id(episode: int) -> str:
    return f"synthetic-{episode:05d}"


STATE_DIR = "scene_state"


def write_benchmark(
    out_dir: str | os.PathLike,
    *,
    episodes: int,
    frames: int = 3376,
    resolution: int = 64,
    seed: int = 0,
    first_episode: int = 0,
    fps: float = 8.0,
    image_format: str = "png",
    frames_per_shard: int = 1024,
    index_every: int = 16,
) -> schema.DatasetMetadata:
    """Renders episodes [first_episode, first_episode + episodes) into a frame store.

    The ground truth of each episode goes to <out_dir>/scene_state/<episode>.npz
    (EpisodeState.from_npz). Finished episodes of an interrupted run are kept.
    """
    extra = dict(
        generator="nuwa_jax.data.synthetic",
        seed=seed,
        resolution=resolution,
        frames=frames,
        first_episode=first_episode,
        spec=benchmark_spec(),
    )
    writer = DatasetWriter(
        out_dir,
        fps=fps,
        height=resolution,
        width=resolution,
        image_format=image_format,
        frames_per_shard=frames_per_shard,
        index_every=index_every,
        extra=extra,
    )
    os.makedirs(os.path.join(os.fspath(out_dir), STATE_DIR), exist_ok=True)
    for e in range(first_episode, first_episode + episodes):
        eid = episode_id(e)
        state_path = os.path.join(os.fspath(out_dir), STATE_DIR, f"{eid}.npz")
        if os.path.exists(state_path) and writer.add_finished_episode(eid) is not None:
            continue
        state = simulate_episode(seed, e, frames, resolution)
        writer.write_episode(
            eid,
            iter_frames(state),
            extra=dict(seed=seed, episode=e, state=f"{STATE_DIR}/{eid}.npz"),
        )
        schema.atomic_write_bytes(state_path, state.to_npz_bytes())
    return writer.finalize()


def held_out_benchmark(
    out_dir: str | os.PathLike,
    *,
    episodes: int,
    first_episode: int,
    frames: int,
    resolution: int,
    seed: int = 0,
) -> schema.DatasetMetadata:
    """Episodes [first_episode, + episodes) at `out_dir`, rendered once (PNG): a held-out
    set for evaluation. An existing store is reused only if it is exactly this set;
    otherwise a ValueError names what it holds and what was asked for."""
    want = dict(first_episode=first_episode, frames=frames, resolution=resolution, seed=seed)
    root = os.fspath(out_dir)
    if os.path.isfile(os.path.join(root, schema.METADATA_FILE)):
        meta = schema.load_metadata(root)
        have = {k: meta.extra.get(k) for k in want}
        if have == want and len(meta.episodes) == episodes:
            return meta
        raise ValueError(
            f"{root}: holds {len(meta.episodes)} episodes {have}, but {episodes} episodes "
            f"{want} were asked for; use another directory or remove it"
        )
    return write_benchmark(root, episodes=episodes, image_format="png", **want)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output frame-store directory")
    p.add_argument("--episodes", type=int, default=1)
    p.add_argument(
        "--first_episode",
        type=int,
        default=0,
        help="index of the first episode (held-out sets: use another range)",
    )
    p.add_argument("--frames", type=int, default=3376)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fps", type=float, default=8.0)
    p.add_argument("--image_format", choices=schema.IMAGE_FORMATS, default="png")
    p.add_argument("--frames_per_shard", type=int, default=1024)
    p.add_argument("--index_every", type=int, default=16)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    meta = write_benchmark(
        args.out,
        episodes=args.episodes,
        frames=args.frames,
        resolution=args.resolution,
        seed=args.seed,
        first_episode=args.first_episode,
        fps=args.fps,
        image_format=args.image_format,
        frames_per_shard=args.frames_per_shard,
        index_every=args.index_every,
    )
    size = sum(s.size_bytes for e in meta.episodes for s in e.shards)
    print(
        f"wrote {len(meta.episodes)} episodes, {sum(e.num_frames for e in meta.episodes)} "
        f"frames, {size / 2**20:.1f} MiB to {args.out} in {time.perf_counter() - t0:.1f} s\n"
        f"  {captions_lib.describe(meta.captions)}"
    )


if __name__ == "__main__":
    main()
