"""MarDini's tasks as masks, from the user's frames: interpolation, image-to-video, video
expansion, arbitrary masks and slow motion -> an mp4, a contact sheet and a report.

    python -m nuwa_jax.generate --task=interpolation --inputs=first.png,last.png \\
        --random_weights --out=outputs/interp
    python -m nuwa_jax.generate --task=slow_motion --factor=4 --inputs=clip.mp4 ...

A task is which frames of a MarDini clip (L = mardini.num_frames frames) are given
(nuwa_jax/tasks.py). The given frames are the user's images (in order) or one video
file, resized (shorter side, centre crop) to data.resolution; without inputs, frames of
the synthetic benchmark (episode 0) make a self-contained demo. How they fill the clip:

- interpolation / image_to_video / arbitrary (`keep`) / video_expansion (`prefix`): K
  frames are kept; give K frames (placed at the kept positions in order), or a clip of L
  frames (its kept positions are used). Video expansion from a longer video continues it:
  its last K frames are the prefix (default prefix: the image count, or L // 2 from a
  video).
- slow_motion (`factor`, a power of two): N >= 2 source frames become a clip of
  (N - 1) * factor + 1 frames, source frame j at position j * factor. The missing
  frames are made in log2(factor) hierarchical passes (tasks.slow_motion_passes), each
  halving the stride; a pass cuts its positions into MarDini clips of L that share their
  end frames (every other one given) and samples all of them as ONE batch, sharded over
  the mesh's `data` axis, exactly like a hierarchy level (Generator.sample_segments).

Given frames are encoded by the T-KLVAE; MarDini plans once from them and DDIM samples
the rest with classifier-free guidance on the planning signal (mardini.guidance[task]:
the paper's 2.5 for image-to-video, none for interpolation); the given latents are
written back after every step, so they come out exactly as encoded. Outputs in `out_dir`
(each written under a temporary name, then renamed): `<name>.mp4`, `<name>.gif`,
`<name>_frames.png` (contact sheet, up to 64 frames) and `<name>_timings.json`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from nuwa_jax import parallel, tasks, video_io

TASK_NAMES = tuple(tasks.TASKS)
VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".webm", ".mov", ".m4v")
CONTACT_SHEET_FRAMES = 64


class TaskError(ValueError):
    """The inputs or options do not fit the task (the message names the file or flag)."""


@dataclasses.dataclass(frozen=True)
class TaskInputs:
    """The given frames at the config's resolution and where they came from."""

    frames: np.ndarray  # (N, R, R, 3) uint8
    source: tuple[str, ...]  # the files, or ("synthetic",)
    is_video: bool  # one video file (or the synthetic clip), rather than separate images

    def describe(self) -> str:
        n = len(self.frames)
        what = f"frame{'s' * (n != 1)} of" if self.is_video else f"image{'s' * (n != 1)}:"
        return f"{n} {what} {', '.join(self.source)}"


@dataclasses.dataclass(frozen=True)
class TaskPass:
    """One batch of MarDini clips: `frames` (S, L) positions in the output (those past
    its end are made and dropped), `given` (S, L) bool, `keep` (S, L) bool: the outputs
    that enter the video (each generated position exactly once)."""

    name: str
    frames: np.ndarray
    given: np.ndarray
    keep: np.ndarray


@dataclasses.dataclass(frozen=True)
class TaskPlan:
    """What a task makes: `num_frames` output frames; input frame `inputs[i]` goes to output
    position `positions[i]`; then the passes, in order."""

    task: str
    num_frames: int
    positions: np.ndarray  # (K,) output positions of the given frames
    inputs: np.ndarray  # (K,) indices into TaskInputs.frames
    passes: tuple[TaskPass, ...]


# ---------------------------------------------------------------------------------------
# Inputs.
# ---------------------------------------------------------------------------------------
def read_inputs(paths: Sequence[str], resolution: int) -> TaskInputs:
    """Image files (one frame each, in order) or one video file, resized and centre-cropped
    to `resolution`; video_io.UnreadableFileError names a file that cannot be read."""
    paths = [p for p in paths if p]
    if not paths:
        raise TaskError("--inputs: no files given")
    videos = [p for p in paths if p.lower().endswith(VIDEO_SUFFIXES)]
    if videos and len(paths) > 1:
        raise TaskError(
            f"--inputs: {videos[0]} is a video; give one video file or image files, not both"
        )
    if videos:
        raw = list(video_io.read_video(videos[0]))
    else:
        raw = [video_io.read_image(p) for p in paths]
    frames = np.stack([video_io.resize_and_crop(f, resolution) for f in raw])
    return TaskInputs(frames, tuple(paths), bool(videos))


def synthetic_inputs(config: Any, count: int, stride: int = 2) -> TaskInputs:
    """`count` frames of the synthetic benchmark's episode 0 (every `stride`-th), at
    data.resolution: a demo clip that needs no files."""
    from nuwa_jax.data import synthetic

    frames, _ = synthetic.render_episode(
        config.data.synthetic_seed, 0, count * stride, config.data.resolution
    )
    return TaskInputs(frames[::stride][:count], ("synthetic",), True)


# ---------------------------------------------------------------------------------------
# Plans.
# ---------------------------------------------------------------------------------------
def _task_flags(task: str, keep, prefix, factor) -> None:
    owners = (("--keep", keep, "arbitrary"), ("--prefix", prefix, "video_expansion"),
              ("--factor", factor, "slow_motion"))  # fmt: skip
    for flag, value, owner in owners:
        if value is not None and task != owner:
            raise TaskError(f"{flag} is an option of --task={owner}, not of --task={task}")


def plan_task(
    task: str,
    clip_frames: int,
    inputs: TaskInputs,
    keep: Sequence[int] | None = None,
    prefix: int | None = None,
    factor: int | None = None,
) -> TaskPlan:
    """The plan of `task` on MarDini clips of `clip_frames` frames from `inputs`.

    TaskError (naming the flag or the inputs) when the options or the frame count do
    not fit the task.
    """
    if task not in tasks.TASKS:
        raise TaskError(f"--task={task!r}: choose one of {', '.join(TASK_NAMES)}")
    _task_flags(task, keep, prefix, factor)
    L, n = int(clip_frames), len(inputs.frames)
    if task == "slow_motion":
        return _plan_slow_motion(L, inputs, 2 if factor is None else int(factor))
    kwargs: dict[str, Any] = {}
    if task == "arbitrary":
        if not keep:
            raise TaskError("--task=arbitrary needs --keep=i,j,... (the given clip positions)")
        kwargs["frames"] = [int(k) for k in keep]
    elif task == "video_expansion":
        if prefix is None:
            prefix = n if not inputs.is_video and n < L else L // 2
        kwargs["prefix"] = int(prefix)
    try:
        kept = tasks.task_mask(task, L, **kwargs)
    except ValueError as e:
        flag = {"arbitrary": "--keep", "video_expansion": "--prefix"}.get(task, "--task")
        raise TaskError(f"{flag}: {e} (mardini.num_frames={L})") from None
    positions = np.flatnonzero(kept)
    k = len(positions)
    if n == k:
        chosen = np.arange(k)
    elif n == L:
        chosen = positions  # a whole clip: its kept frames
    elif task == "video_expansion" and inputs.is_video and n > k:
        chosen = np.arange(n - k, n)  # continue the video: its last frames are the prefix
    else:
        clip = f" or a clip of {L} frames" if L != k else ""
        raise TaskError(
            f"--task={task} keeps {k} of the clip's {L} frames (positions "
            f"{positions.tolist()}): give {k} frames{clip}; --inputs gave {inputs.describe()}"
        )
    one = TaskPass(task, np.arange(L)[None], kept[None], ~kept[None])
    return TaskPlan(task, L, positions, chosen, (one,))


def _plan_slow_motion(L: int, inputs: TaskInputs, factor: int) -> TaskPlan:
    n = len(inputs.frames)
    if n < 2:
        raise TaskError(
            f"--task=slow_motion needs at least 2 frames; --inputs gave {inputs.describe()}"
        )
    if L < 3:
        raise TaskError(f"--task=slow_motion needs mardini.num_frames >= 3, got {L}")
    try:
        out = (n - 1) * factor + 1
        passes = tasks.slow_motion_passes(out, factor)
    except ValueError as e:
        raise TaskError(f"--factor: {e}") from None
    step = (L - 1) - (L - 1) % 2  # clips start on given frames (even pass indices)
    made = []
    for number, p in enumerate(passes, 1):
        count = len(p.frames)
        starts = np.arange(0, count - 1, step)
        index = starts[:, None] + np.arange(L)[None]  # (S, L) indices into this pass
        inside = index < count
        given = inside & (index % 2 == 0)  # tasks.slow_motion_passes: every other one known
        owner = index // step == np.arange(len(starts))[:, None]  # each frame once
        keep = inside & ~given & owner
        name = f"slow_motion pass {number}/{len(passes)} (stride {p.stride})"
        made.append(TaskPass(name, index * p.stride, given, keep))
    return TaskPlan("slow_motion", out, np.arange(n) * factor, np.arange(n), tuple(made))


# ---------------------------------------------------------------------------------------
# Running.
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class TaskResult:
    """A task's output: latents (F, h, w, c) of every output frame, the given latents as
    encoded (placed at plan.positions), the plan, and the report written as JSON."""

    plan: TaskPlan
    latents: np.ndarray
    given_latents: np.ndarray
    report: dict[str, Any]


def _load_models(config: Any, mesh, rules, checkpoint: str | None):
    from nuwa_jax.hierarchy import bundle
    from nuwa_jax.hierarchy.models import HierarchyModels

    if not checkpoint:
        return HierarchyModels.create(config, mesh, rules, mardini=True, mtds=False), None
    manifest = bundle.read_manifest(checkpoint)
    models = bundle.load_bundle(checkpoint, config, mesh, rules)
    if models.mardini is None:
        raise bundle.BundleError(
            f"{manifest['weights_path']}: no 'mardini' network in this bundle (export one "
            "with python -m nuwa_jax.export --mardini_workdir=RUN)"
        )
    return models, manifest


def run_task(config: Any, task: str, inputs: Sequence[str] = (), out_dir: str = "outputs/task",
             name: str = "video", seed: int = 0, random_weights: bool = False,
             checkpoint: str | None = None, *, keep: Sequence[int] | None = None,
             prefix: int | None = None, factor: int | None = None, gif: bool = True,
             progress: bool = True, models: Any = None) -> TaskResult:  # fmt: skip
    """Runs `task` on the given files (`inputs`; empty: synthetic frames) and writes the
    outputs to `out_dir`. Weights: a bundle holding a MarDini (`checkpoint`) or the
    config's random initialisation (`random_weights`), exactly one; or networks already
    built (`models`, a HierarchyModels with a MarDini, on the config's mesh: tests,
    notebooks). The inputs and options are checked (TaskError, UnreadableFileError)
    before any network is built.
    """
    from nuwa_jax.hierarchy import bundle
    from nuwa_jax.hierarchy.generator import GeneratedVideo, Generator, LatentStore
    from nuwa_jax.models.mardini import dims
    from nuwa_jax.render import MissingWeightsError, write_json

    if models is None and bool(checkpoint) == bool(random_weights):
        raise MissingWeightsError(
            "give exactly one of --checkpoint=BUNDLE (a bundle holding a MarDini) and "
            "--random_weights"
        )
    L = dims(config.mardini).num_frames
    res = config.data.resolution
    given = read_inputs(inputs, res) if inputs else synthetic_inputs(config, L)
    plan = plan_task(task, L, given, keep, prefix, factor)
    guidance = float(config.mardini.guidance[task])

    mesh, rules = parallel.make_mesh(config.mesh), parallel.logical_rules(config)
    t0 = time.perf_counter()
    weights = {"source": "given"}
    if models is None:
        models, manifest = _load_models(config, mesh, rules, checkpoint)
        weights = bundle.weights_report(manifest)
    build_s = time.perf_counter() - t0
    gen = Generator(config, models, mesh, rules, None, mardini_guidance=guidance)

    t0 = time.perf_counter()
    given_latents = gen.encode(given.frames[plan.inputs])
    encode_s = time.perf_counter() - t0
    size = max(plan.num_frames, int(max(p.frames.max() for p in plan.passes)) + 1)
    store = LatentStore(size, gen.latent_shape)
    store.put(plan.positions, np.ones(len(plan.positions), bool), given_latents)
    timings = []
    for level, p in enumerate(plan.passes):
        keep_of = lambda segs, p=p: p.keep[segs.segment_ids]  # noqa: E731
        # One clip in all: unpadded, replicated. Slow motion: every pass padded to the same
        # chunk of clips, sharded over `data`: one compile.
        chunk = 1 if task != "slow_motion" else None
        timings.append(gen.sample_segments(p.name, p.frames, p.given, store, seed, level,
                                           keep_of, progress, chunk))  # fmt: skip
    if not store.done[: plan.num_frames].all():
        raise RuntimeError(f"{task}: frames {np.flatnonzero(~store.done[: plan.num_frames])} "
                           "were not made")  # fmt: skip
    video = GeneratedVideo(gen, store, plan.num_frames, plan.positions, timings, None)

    os.makedirs(out_dir, exist_ok=True)
    g = config.generation
    sheet_at = video_io.filmstrip_indices(plan.num_frames, CONTACT_SHEET_FRAMES)
    gif_at = video_io.filmstrip_indices(plan.num_frames, g.gif_max_frames)
    stills = np.concatenate([sheet_at, gif_at])  # the frames the contact sheet and gif show
    mp4 = os.path.join(out_dir, f"{name}.mp4")
    with video_io.Mp4Writer(mp4, g.fps, res, res, keep=stills) as writer:
        for frames in video.frames():
            writer.write(frames)
    video_io.write_contact_sheet(os.path.join(out_dir, f"{name}_frames.png"), writer.kept(sheet_at))
    if gif:
        video_io.write_gif(os.path.join(out_dir, f"{name}.gif"), writer.kept(gif_at), g.fps,
                           len(gif_at))  # fmt: skip
    report = dict(
        video.timing_report(),
        task=task,
        options=dict(
            keep=None if keep is None else [int(k) for k in keep], prefix=prefix, factor=factor
        ),
        inputs=list(given.source),
        input_frames=len(given.frames),
        given_positions=plan.positions.tolist(),
        clip_frames=L,
        guidance_scale=guidance,
        sampler=config.mardini.get("sampler", "ddim"),
        steps=int(config.diffusion.num_sampling_steps),
        config=config.preset,
        seed=seed,
        random_weights=weights["source"] == "random",
        weights=weights,
        devices=[str(d) for d in mesh.devices.flat],
        mesh=dict(mesh.shape),
        chunk_segments=gen.chunk,
        build_seconds=build_s,
        encode_seconds=encode_s,
        parameters={k: v for k, v in models.parameter_counts().items() if k in ("vae", "mardini")},
        outputs=sorted(
            {f for f in os.listdir(out_dir) if f.startswith((f"{name}_", f"{name}."))}
            | {f"{name}_timings.json"}
        ),
    )
    write_json(os.path.join(out_dir, f"{name}_timings.json"), report)
    return TaskResult(plan, video.latents, given_latents, report)
