"""MarDini's tasks as masks, from the user's frames: interpolation, image-to-video, video
expansion, arbitrary masks and slow motion -> an mp4, a contact sheet and a report; and
interpolation of a hierarchy level with either local backbone (the local MTD or MarDini).

    python -m nuwa_jax.generate --task=interpolation --inputs=first.png,last.png \\
        --random_weights --out=outputs/interp
    python -m nuwa_jax.generate --task=slow_motion --factor=4 --inputs=clip.mp4 ...
    python -m nuwa_jax.generate --task=interpolation --backbone=mtd --level=1 \\
        --inputs=a.png,b.png --checkpoint=BUNDLE --prompt="..." --save_frames

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
`<name>_frames.png` (contact sheet, up to 64 frames) and `<name>_timings.json`;
`save_frames` adds `<name>.npy`, every frame as uint8 (F, H, W, 3).

Interpolation at a hierarchy level (`level` K, 1 .. hierarchy.depth - 1): the two images
are the ends of a level-K segment of Diffusion over Diffusion, s_{K-1} = (L-1) s_K source
frames apart; the output is that segment, L = hierarchy.frames_per_call frames at stride
s_K, the given ends first and last. `backbone='mtd'`: the level's local MTD (a shared
local MTD told K by its level embedding), sampled by `sample_level` with one prompt for
every frame (none: the empty prompt, guidance's unconditional input), guidance
diffusion.guidance_scale, noise keyed as the hierarchy's first segment of level K.
`backbone='mardini'`: the task above, unchanged (its clip must be a segment:
mardini.num_frames == L); K only names the stride in the report. Default backbone:
MarDini when the weights hold one (random weights build one), else the local MTD. Either
way the given ends are the VAE round trip of the images: their latents kept exactly and
decoded with the clip.
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
BACKBONES = ("mtd", "mardini")  # interpolation's models: the local MTD of a level, MarDini
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
# Backbone and hierarchy level (interpolation).
# ---------------------------------------------------------------------------------------
def bundle_components(checkpoint: str) -> set[str]:
    """The component names of a bundle (its manifest's parameter counts), e.g. {'vae',
    'mtd_global', 'mtd_local1', 'mardini'}."""
    from nuwa_jax.hierarchy import bundle

    return set(bundle.read_manifest(checkpoint).get("parameters", {}))


def choose_backbone(task: str, backbone: str | None, held: set[str] | None) -> str:
    """`backbone` ('mtd' or 'mardini'), or its default: MarDini when the weights hold one
    (`held`: a bundle's component names; None: random weights, which build one), else the
    local MTD. Only interpolation has an MTD backbone (TaskError naming --backbone)."""
    if backbone is not None and backbone not in BACKBONES:
        raise TaskError(f"--backbone={backbone!r}: choose one of {', '.join(BACKBONES)}")
    if backbone is None:
        backbone = "mardini" if held is None or "mardini" in held else "mtd"
    if backbone == "mtd" and task != "interpolation":
        raise TaskError(
            f"--backbone=mtd: the local MTD only interpolates (--task=interpolation --level=K);"
            f" --task={task} is MarDini's"
        )
    return backbone


@dataclasses.dataclass(frozen=True)
class ClipModel:
    """The model that fills a task's clip: `backbone`, the hierarchy `level` it stands for
    (None: a MarDini task at no level), `frames` per clip and, at a level, `stride` (s_K,
    source frames between output frames) and `ends_apart` (s_{K-1} = (L-1) s_K)."""

    backbone: str
    level: int | None
    frames: int
    stride: int | None = None
    ends_apart: int | None = None


def clip_model(config: Any, task: str, backbone: str, level: int | None,
               prompt: str | None = None) -> ClipModel:  # fmt: skip
    """Checks --level (and --prompt) against the task, the backbone and the hierarchy
    (TaskError naming the flag and the config keys); the clip the backbone fills."""
    from nuwa_jax.hierarchy.plan import HierarchyPlan
    from nuwa_jax.models.mardini import dims

    if prompt is not None and backbone != "mtd":
        raise TaskError(
            f"--prompt: only the local MTD reads a prompt (--backbone=mtd); --backbone={backbone}"
            " has no text input"
        )
    h = config.hierarchy
    if level is None:
        if backbone == "mtd":
            raise TaskError(
                f"--backbone=mtd needs --level=K (1 .. hierarchy.depth - 1 = {h.depth - 1}): the "
                "local level whose MTD fills between the two frames (with no MarDini in the "
                "weights, mtd is the default backbone)"
            )
        return ClipModel(backbone, None, dims(config.mardini).num_frames)
    if task != "interpolation":
        raise TaskError(f"--level is an option of --task=interpolation, not of --task={task}")
    if isinstance(level, bool) or not isinstance(level, int | np.integer):
        raise TaskError(f"--level={level!r}: give an int, a local level")
    if not 1 <= level < h.depth:
        local = f"1 .. {h.depth - 1}" if h.depth > 1 else "none"
        raise TaskError(
            f"--level={level}: the local levels of this hierarchy are {local} "
            f"(hierarchy.depth={h.depth}; level 0 is the global model, which makes keyframes "
            "from text, not frames between given ones)"
        )
    L = int(h.frames_per_call)
    if backbone == "mardini" and dims(config.mardini).num_frames != L:
        raise TaskError(
            f"--level={level} --backbone=mardini: a level's segment is one MarDini clip, but "
            f"mardini.num_frames={dims(config.mardini).num_frames} != "
            f"hierarchy.frames_per_call={L}"
        )
    plan = HierarchyPlan.full(L, int(h.depth))
    return ClipModel(backbone, int(level), L, plan.stride(level), plan.stride(level - 1))


def level_inputs(config: Any, model: ClipModel, paths: Sequence[str]) -> TaskInputs:
    """The two ends of a level's segment: 2 image files, or (no paths) synthetic frames
    `model.ends_apart` apart; anything else is a TaskError naming --level and the inputs."""
    res = config.data.resolution
    if not paths:
        return synthetic_inputs(config, 2, model.ends_apart)
    given = read_inputs(paths, res)
    if given.is_video or len(given.frames) != 2:
        raise TaskError(
            f"--level={model.level}: give 2 images, the ends of a level-{model.level} segment "
            f"({model.ends_apart} frames apart); --inputs gave {given.describe()}"
        )
    return given


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


def _check_held(model: ClipModel, held: set[str], where: str) -> None:
    """The weights (`held`: their component names, from `where`) have the backbone's
    network; a BundleError naming the file and the way out otherwise."""
    from nuwa_jax.hierarchy import bundle

    mtds = any(n.startswith("mtd_local") for n in held)
    if model.backbone == "mardini" and "mardini" not in held:
        other = "; its local MTDs interpolate: --backbone=mtd --level=K" if mtds else ""
        raise bundle.BundleError(
            f"{where}: no 'mardini' network in this bundle (export one with python -m "
            f"nuwa_jax.export --mardini_workdir=RUN{other})"
        )
    if model.backbone == "mtd" and not mtds:
        raise bundle.BundleError(
            f"{where}: --backbone=mtd, but no local MTD in this bundle (components: "
            f"{', '.join(sorted(held))}; export one with --mtd_workdirs, or use --backbone=mardini)"
        )


def _load_models(config: Any, mesh, rules, backbone: str, manifest: dict[str, Any] | None):
    """The VAE and the backbone's networks: the bundle's (`manifest`, its components checked
    by `_check_held`) or the config's initialisation (MarDini, or the text encoder and MTDs)."""
    from nuwa_jax.hierarchy import bundle
    from nuwa_jax.hierarchy.models import HierarchyModels

    if manifest is None:
        mtd = backbone == "mtd"
        return HierarchyModels.create(config, mesh, rules, mardini=not mtd, mtds=mtd)
    return bundle.load_bundle(manifest["weights_path"], config, mesh, rules)


def _parameter_counts(models: Any, model: ClipModel) -> dict[str, int]:
    """Parameters of the networks the task ran: the VAE and the backbone's."""
    if model.backbone == "mardini":
        nets = [models.vae, models.mardini]
    else:
        nets = [models.vae, models.mtds[model.level], models.text_of(model.level)]
    counts = models.parameter_counts()
    return {n: counts[n] for n, m in models.components().items() if any(m is x for x in nets)}


def run_task(config: Any, task: str, inputs: Sequence[str] = (), out_dir: str = "outputs/task",
             name: str = "video", seed: int = 0, random_weights: bool = False,
             checkpoint: str | None = None, *, keep: Sequence[int] | None = None,
             prefix: int | None = None, factor: int | None = None, gif: bool = True,
             progress: bool = True, models: Any = None, backbone: str | None = None,
             level: int | None = None, prompt: str | None = None,
             save_frames: bool = False) -> TaskResult:  # fmt: skip
    """Runs `task` on the given files (`inputs`; empty: synthetic frames) and writes the
    outputs to `out_dir`. Weights: a bundle (`checkpoint`) or the config's random
    initialisation (`random_weights`), exactly one; or networks already built (`models`,
    a HierarchyModels on the config's mesh: tests, notebooks). `backbone`: 'mardini' or
    (interpolation) 'mtd'; default `choose_backbone`. `level`: interpolate a segment of
    that local level (`clip_model`; needed by 'mtd'); `prompt`: the MTD's, for every frame
    (None: the empty prompt). `save_frames`: also `<name>.npy`, the uint8 frames. The
    inputs and options are checked (TaskError, UnreadableFileError; a bundle without the
    backbone's network: BundleError) before any network is built.
    """
    from nuwa_jax.hierarchy import bundle
    from nuwa_jax.hierarchy.generator import GeneratedVideo, Generator, LatentStore
    from nuwa_jax.models.text import make_tokenizer
    from nuwa_jax.render import MissingWeightsError, write_json

    if models is None and bool(checkpoint) == bool(random_weights):
        raise MissingWeightsError("give exactly one of --checkpoint=BUNDLE and --random_weights")
    manifest = bundle.read_manifest(checkpoint) if models is None and checkpoint else None
    held, where = None, ""
    if models is not None:
        held, where = set(models.components()), "the given networks"
    elif manifest is not None:
        held, where = set(manifest.get("parameters", {})), manifest["weights_path"]
    backbone = choose_backbone(task, backbone, held)
    model = clip_model(config, task, backbone, level, prompt)
    if held is not None:
        _check_held(model, held, where)
    L, res, mtd = model.frames, config.data.resolution, backbone == "mtd"
    if model.level is not None:
        given = level_inputs(config, model, inputs)
    else:
        given = read_inputs(inputs, res) if inputs else synthetic_inputs(config, L)
    plan = plan_task(task, L, given, keep, prefix, factor)
    guidance = float(config.diffusion.guidance_scale if mtd else config.mardini.guidance[task])

    mesh, rules = parallel.make_mesh(config.mesh), parallel.logical_rules(config)
    t0 = time.perf_counter()
    weights = {"source": "given"}
    if models is None:
        models = _load_models(config, mesh, rules, backbone, manifest)
        weights = bundle.weights_report(manifest)
    build_s = time.perf_counter() - t0
    gen = Generator(config, models, mesh, rules, make_tokenizer(config.text) if mtd else None,
                    mardini_guidance=None if mtd else guidance,
                    local_backbone="mtd" if mtd else None)  # fmt: skip

    t0 = time.perf_counter()
    given_latents = gen.encode(given.frames[plan.inputs])
    encode_s = time.perf_counter() - t0
    size = max(plan.num_frames, int(max(p.frames.max() for p in plan.passes)) + 1)
    store = LatentStore(size, gen.latent_shape)
    store.put(plan.positions, np.ones(len(plan.positions), bool), given_latents)
    timings = []
    for number, p in enumerate(plan.passes):
        keep_of = lambda segs, p=p: p.keep[segs.segment_ids]  # noqa: E731
        # One clip in all: unpadded, replicated. Slow motion: every pass padded to the same
        # chunk of clips, sharded over `data`: one compile.
        chunk = 1 if task != "slow_motion" else None
        # The MTD's noise is keyed as the hierarchy's first segment of its level.
        timings.append(gen.sample_segments(
            p.name, p.frames, p.given, store, seed, model.level if mtd else number, keep_of,
            progress, chunk, backbone=backbone, model_level=model.level or 0,
            prompts=[prompt or ""] if mtd else None,
        ))  # fmt: skip
    if not store.done[: plan.num_frames].all():
        raise RuntimeError(f"{task}: frames {np.flatnonzero(~store.done[: plan.num_frames])} "
                           "were not made")  # fmt: skip
    video = GeneratedVideo(gen, store, plan.num_frames, plan.positions, timings, None)

    os.makedirs(out_dir, exist_ok=True)
    g = config.generation
    sheet_at = video_io.filmstrip_indices(plan.num_frames, CONTACT_SHEET_FRAMES)
    gif_at = video_io.filmstrip_indices(plan.num_frames, g.gif_max_frames)
    every = np.arange(plan.num_frames if save_frames else 0)
    stills = np.concatenate([sheet_at, gif_at, every])  # the frames kept past the mp4
    mp4 = os.path.join(out_dir, f"{name}.mp4")
    with video_io.Mp4Writer(mp4, g.fps, res, res, keep=stills) as writer:
        for frames in video.frames():
            writer.write(frames)
    video_io.write_contact_sheet(os.path.join(out_dir, f"{name}_frames.png"), writer.kept(sheet_at))
    if gif:
        video_io.write_gif(os.path.join(out_dir, f"{name}.gif"), writer.kept(gif_at), g.fps,
                           len(gif_at))  # fmt: skip
    if save_frames:
        video_io.write_npy(os.path.join(out_dir, f"{name}.npy"), writer.kept(every))
    report = dict(
        video.timing_report(),
        task=task,
        options=dict(
            keep=None if keep is None else [int(k) for k in keep], prefix=prefix, factor=factor
        ),
        backbone=backbone,
        level=model.level,
        stride=model.stride,
        ends_apart=model.ends_apart,
        prompt=(prompt or "") if mtd else None,
        inputs=list(given.source),
        input_frames=len(given.frames),
        given_positions=plan.positions.tolist(),
        clip_frames=L,
        guidance_scale=guidance,
        sampler=config.diffusion.sampler if mtd else config.mardini.get("sampler", "ddim"),
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
        parameters=_parameter_counts(models, model),
        outputs=sorted(
            {f for f in os.listdir(out_dir) if f.startswith((f"{name}_", f"{name}."))}
            | {f"{name}_timings.json"}
        ),
    )
    write_json(os.path.join(out_dir, f"{name}_timings.json"), report)
    return TaskResult(plan, video.latents, given_latents, report)
