"""MarDini's staged training (train.model='mardini'): a run's stage, its masks, what it trains.

The paper trains MarDini progressively: the planner alone on masked reconstruction, then
the generator alone, then both jointly, while the clips grow longer (4 -> 9 -> 17 frames),
the share of kept frames falls (35-100% -> 6-30%) and the resolution rises
(256 -> 512 -> 1024). Here each stage is one trainer run (big_vision style):
`mardini.curriculum.<stage>` holds its steps, kept-share range, clip length and resolution,
`train.mardini_stage` picks the stage of a run, and `train.init_from` starts it from the
previous stage's workdir (its newest checkpoint's params).

- 'planner': the planner and `MarDini.recon_head` learn to predict the generated frames'
  low-res latents from the planning signals (MSE on those frames); nothing else changes.
- 'generator': the generator and the null signal learn the masked v-loss; the planner is
  frozen: its signals are under stop_gradient AND its parameters are labelled frozen for
  the optimiser (`optax.set_to_zero`), so AdamW's weight decay does not move them either.
  The checkpoint still holds every parameter, so the next stage reads the planner from it.
- 'joint': planner, generator and null signal together on the masked v-loss.
(`recon_head` is trained by the planner stage only.)

A stage's `steps`, `num_frames` and `resolution` take the place of train.num_steps,
mardini.num_frames and the pipeline's output resolution (0: keep those); `resolve` writes
the first two into the run's config, so the checkpoint's config says what the run did.
Frames are stored at data.resolution and resized to the stage's (`data_windows` in the
trainer, pipeline `resolution`), so the stages of a curriculum share one frame store
rendered at the largest.

What a clip is (`mardini.train_levels`, `trains_local_levels`): 'consecutive', num_frames
frames at stride 1 (`clip_plan`); 'local', the windows of the hierarchy's local levels
1..depth-1 at their strides, mixed in one stream exactly as the shared local MTD trains,
so that MarDini as `hierarchy.local_backbone` sees at every level the frame spacing it
fills at generation. 'local' applies to a stage whose num_frames is
hierarchy.frames_per_call (a clip is a segment); a stage of other length (e.g. a 4-frame
planner stage) falls back to consecutive clips. The kept masks below ignore the windows'
level and the pipeline's cond_mask either way.

Masks are drawn inside the jitted step (`kept_masks`): per example a kept share uniform in
[kept_min, kept_max], round(share * L) frames clipped to [1, L-1] (at least one kept and one
generated) at random positions; a `mardini.task_share` of the examples instead take one of
the named task masks `mardini.train_tasks` (nuwa_jax.tasks: interpolation, image_to_video,
video_expansion keeping the first half), drawn uniformly, so the model sees the exact masks
it is used with.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nuwa_jax import tasks
from nuwa_jax.hierarchy import HierarchyPlan

STAGES = ("planner", "generator", "joint")
TRAIN_LEVELS = ("consecutive", "local")  # mardini.train_levels
# The top-level MarDini parameter groups each stage trains; the others are frozen.
TRAINED = {
    "planner": ("planner", "recon_head"),
    "generator": ("generator", "null_signal"),
    "joint": ("planner", "generator", "null_signal"),
}
MODULE = "mardini"  # the name the trainer gives MarDini (checkpoints, init_from, export)


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of the curriculum, its zero fields resolved."""

    name: str
    steps: int
    kept_min: float
    kept_max: float
    num_frames: int
    resolution: int


def stage(config: Any) -> Stage:
    """The stage `train.mardini_stage` of `config.mardini.curriculum`, checked; a field left
    at 0 takes train.num_steps, mardini.num_frames (or its size's) or data.resolution."""
    from nuwa_jax.models.mardini import dims

    name = config.train.mardini_stage
    curriculum = config.mardini.curriculum
    if name not in STAGES or name not in curriculum:
        raise ValueError(
            f"train.mardini_stage={name!r} is not a stage of mardini.curriculum "
            f"({', '.join(s for s in STAGES if s in curriculum)})"
        )
    s = curriculum[name]
    key = f"mardini.curriculum.{name}"
    out = Stage(
        name=name,
        steps=int(s.steps) or int(config.train.num_steps),
        kept_min=float(s.kept_min),
        kept_max=float(s.kept_max),
        num_frames=int(s.num_frames) or dims(config.mardini).num_frames,
        resolution=int(s.resolution) or int(config.data.resolution),
    )
    if not 0.0 <= out.kept_min <= out.kept_max <= 1.0:
        raise ValueError(
            f"{key}: kept_min={out.kept_min}, kept_max={out.kept_max} must satisfy "
            "0 <= kept_min <= kept_max <= 1"
        )
    if out.num_frames < 3:
        raise ValueError(f"{key}.num_frames={out.num_frames} must be >= 3")
    return out


def resolve(config: Any) -> Any:
    """`config` for a MarDini run: a copy with train.num_steps and mardini.num_frames set
    from its stage (other models: `config` itself)."""
    if config.train.model != MODULE:
        return config
    s = stage(config)
    out = config.copy_and_resolve_references()
    out.train.num_steps = s.steps
    out.mardini.num_frames = s.num_frames
    return out


def clip_plan(s: Stage) -> HierarchyPlan:
    """The pipeline's window spec of a MarDini clip: a depth-1 plan, whose one level is
    `num_frames` consecutive frames (stride 1)."""
    return HierarchyPlan.full(s.num_frames, 1)


def trains_local_levels(config: Any, s: Stage) -> bool:
    """Whether stage `s` trains on the hierarchy's local-level windows rather than
    consecutive clips: mardini.train_levels='local' and s.num_frames ==
    hierarchy.frames_per_call (see the module docstring). Checks mardini.train_levels."""
    value, h = config.mardini.train_levels, config.hierarchy
    if value not in TRAIN_LEVELS:
        raise ValueError(f"mardini.train_levels={value!r} must be one of {TRAIN_LEVELS}")
    if value == "consecutive":
        return False
    if h.depth < 2:
        raise ValueError(
            f"mardini.train_levels='local' needs local levels: hierarchy.depth={h.depth} has "
            "none (depth >= 2), set it to 'consecutive'"
        )
    return s.num_frames == h.frames_per_call


def task_masks(names: Any, num_frames: int) -> np.ndarray:
    """(len(names), L) bool kept masks of the named tasks (video_expansion: the first half
    kept); each must keep at least one frame and generate at least one."""
    rows = []
    for name in names:
        kw = {"prefix": max(1, num_frames // 2)} if name == "video_expansion" else {}
        mask = tasks.task_mask(name, num_frames, **kw)
        if not 0 < mask.sum() < num_frames:
            raise ValueError(
                f"mardini.train_tasks: {name!r} keeps {int(mask.sum())} of {num_frames} "
                "frames; a training mask needs at least one kept and one generated frame"
            )
        rows.append(mask)
    return np.stack(rows) if rows else np.zeros((0, num_frames), bool)


def kept_masks(
    key: jax.Array,
    batch: int,
    s: Stage,
    task_table: np.ndarray | None = None,
    task_share: float = 0.0,
) -> jax.Array:
    """(B, L) bool kept-frame masks of one training batch (see the module docstring)."""
    L = s.num_frames
    k_share, k_pos, k_use, k_pick = jax.random.split(key, 4)
    share = jax.random.uniform(k_share, (batch,), minval=s.kept_min, maxval=s.kept_max)
    count = jnp.clip(jnp.round(share * L), 1, L - 1)
    order = jax.random.uniform(k_pos, (batch, L))
    ranks = jnp.argsort(jnp.argsort(order, axis=1), axis=1)
    kept = ranks < count[:, None]
    if task_table is not None and len(task_table) and task_share > 0:
        table = jnp.asarray(task_table, bool)
        pick = jax.random.randint(k_pick, (batch,), 0, table.shape[0])
        use = jax.random.bernoulli(k_use, task_share, (batch,))
        kept = jnp.where(use[:, None], table[pick], kept)
    return kept


def trained_labels(params: Any, stage_name: str) -> Any:
    """The params tree (pure dict, {'mardini': {...}}) labelled 'trained' or 'frozen' for
    `optax.multi_transform`: a top-level MarDini group is trained iff the stage trains it."""
    groups = TRAINED[stage_name]

    def label(path, _):
        keys = [getattr(p, "key", None) for p in path]
        trained = len(keys) > 1 and keys[0] == MODULE and keys[1] in groups
        return "trained" if trained else "frozen"

    return jax.tree_util.tree_map_with_path(label, params)
