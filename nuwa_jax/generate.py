"""Generate a long video: storyboard or prompt -> mp4, gif, keyframe contact sheet, filmstrip.

    python -m nuwa_jax.generate --config=configs/demo.py --prompt="a red circle walks" \\
        --frames=226 --schedule=dod --out=outputs/demo --random_weights

Diffusion over Diffusion (`--schedule=dod`): global keyframes, then every local level as
one batched call over its segments, sharded over the mesh's `data` axis. `--schedule=ar`
runs the autoregressive baseline on the same models. A progress bar per level; per-level
timings are printed and written to `timings.json` next to the video. The mp4 is streamed
as frames become final and, like every output, written under a temporary name and
renamed when complete.

Before any network is built or loaded, the request is checked: --frames against the most
the hierarchy makes, the storyboard against --frames, --inputs' image sizes; a failure
exits with status 2 and one line naming the flag, file or value. SIGTERM or SIGINT
during a run removes every file it started (status 143 or 130).

Weights: `--checkpoint=PATH` loads a hierarchy bundle (`python -m nuwa_jax.export` makes
one from trainer runs; its sha256 is verified first). The config then comes from the
bundle's manifest: `--config=FILE` is not read, `--config.a.b=v` overrides and the flags
below apply on top, and an override of a field the weights fix (architecture, noise
schedule, parameterisation) must equal the bundle's. `--random_weights` builds the
config's networks from its seed (the shapes, sharding and speed are real; the pictures
are noise). The timings JSON records which (`weights`: bundle path and sha256, or random).

MarDini tasks (`--task`, nuwa_jax/mardini_tasks.py) instead of a storyboard: one
MarDini clip (or, for slow motion, batches of clips) from the given frames:

    python -m nuwa_jax.generate --task=interpolation --inputs=a.png,b.png --random_weights
    python -m nuwa_jax.generate --task=image_to_video --inputs=a.png --checkpoint=BUNDLE
    python -m nuwa_jax.generate --task=video_expansion --inputs=clip.mp4 --prefix=3 ...
    python -m nuwa_jax.generate --task=arbitrary --keep=0,4,8 --inputs=a.png,b.png,c.png ...
    python -m nuwa_jax.generate --task=slow_motion --factor=4 --inputs=clip.mp4 ...

`--inputs`: image files (comma-separated, in order) or one video file; without it, frames
of the synthetic benchmark. With `--task`, `--guidance` sets mardini.guidance.<task> and
`--sampler` mardini.sampler; `--checkpoint` needs a bundle holding a MarDini (but see
`--backbone=mtd` below).

Interpolation of a hierarchy level, with either local backbone:

    python -m nuwa_jax.generate --checkpoint=BUNDLE --task=interpolation --backbone=mtd \\
        --level=1 --inputs=a.png,b.png --out=outputs/interp --save_frames [--prompt="..."]

`--level=K` (1 .. hierarchy.depth - 1): the two images are the ends of a level-K segment
(s_{K-1} = (L-1) s_K frames apart); the output is its L = hierarchy.frames_per_call frames,
the given ends first and last (their VAE latents, decoded with the clip), the L-2 between
generated. `--backbone=mtd`: the bundle's local MTD of level K (a shared one told K by its
level embedding), conditioned on `--prompt` at every frame or, without it, on the empty
prompt (guidance's unconditional input); `--guidance` and `--sampler` then set the
`diffusion` section. `--backbone=mardini`: the MarDini task above (`--level` is checked
and reported; mardini.num_frames must be L). Default backbone: MarDini when the weights
hold one (random weights do), else the local MTD, which needs `--level`. `--save_frames`
(any --task) also writes `<name>.npy`, the uint8 frames (F, H, W, 3), beside the mp4.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from absl import flags, logging

from nuwa_jax import cli, parallel, storyboard, tasks
from nuwa_jax.render import (
    GenerationError,
    MissingWeightsError,
    check_generation,
    generation_config,
    run_generation,
)

_CONFIG = cli.define_config_flag("configs/demo.py")
_STORYBOARD = flags.DEFINE_string("storyboard", None, "Storyboard file (.json or text).")
_PROMPT = flags.DEFINE_string(
    "prompt", None,
    "One prompt for the whole video; with --task=interpolation --backbone=mtd the local "
    "MTD's prompt at every frame (without it: the empty prompt, guidance's null input).",
)  # fmt: skip
_FRAMES = flags.DEFINE_integer("frames", None, "Frames to generate (default N(depth)).")
_SCHEDULE = flags.DEFINE_enum("schedule", None, ["dod", "ar"], "dod (NUWA-XL) or ar (FDM*).")
_SAMPLER = flags.DEFINE_enum("sampler", None, ["ddpm", "ddim"], "Overrides diffusion.sampler.")
_STEPS = flags.DEFINE_integer("steps", None, "Overrides diffusion.num_sampling_steps.")
_GUIDANCE = flags.DEFINE_float("guidance", None, "Overrides diffusion.guidance_scale.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed (the video depends on it alone).")
_OUT = flags.DEFINE_string("out", "outputs/generate", "Output directory.")
_NAME = flags.DEFINE_string("name", "video", "Base name of the output files.")
_RANDOM = flags.DEFINE_bool("random_weights", False, "Use randomly initialised networks.")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Hierarchy bundle (<name>.json / .safetensors, or its stem)."
)
_GIF = flags.DEFINE_bool("gif", True, "Also write an animated gif.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Progress bar per level.")
_TASK = flags.DEFINE_enum(
    "task", None, list(tasks.TASKS), "A MarDini task on given frames instead of a storyboard."
)
_INPUTS = flags.DEFINE_list(
    "inputs", None, "--task: image files (in order) or one video file (default: synthetic)."
)
_KEEP = flags.DEFINE_list("keep", None, "--task=arbitrary: the given clip positions, e.g. 0,8.")
_FACTOR = flags.DEFINE_integer("factor", None, "--task=slow_motion: 2, 4, ... (default 2).")
_PREFIX = flags.DEFINE_integer("prefix", None, "--task=video_expansion: frames given.")
_BACKBONE = flags.DEFINE_enum(
    "backbone", None, ["mtd", "mardini"],
    "--task=interpolation: the model between the two frames: mtd (the bundle's local MTD of "
    "--level; reads --prompt, or the empty prompt without it) or mardini. Default: mardini "
    "when the weights hold one (random weights do), else mtd.",
)  # fmt: skip
_LEVEL = flags.DEFINE_integer(
    "level", None,
    "--task=interpolation: the local level K (1 .. hierarchy.depth-1) whose segment the two "
    "images end; output: its hierarchy.frames_per_call frames. Needed by --backbone=mtd.",
)  # fmt: skip
_SAVE_FRAMES = flags.DEFINE_bool(
    "save_frames", False, "--task: also write the uint8 frames (F, H, W, 3) as <name>.npy."
)
TASK_ONLY = ("inputs", "keep", "factor", "prefix", "backbone", "level", "save_frames")
NOT_WITH_TASK = ("storyboard", "frames", "schedule")  # --prompt: the MTD's (--backbone=mtd)


def apply_flags(config: Any, backbone: str | None = None) -> Any:
    """The CLI's convenience flags written into the (unlocked) config. `--sampler` and
    `--guidance` set MarDini's with a --task on MarDini (`backbone`), else the MTDs'."""
    with config.unlocked():
        if _FRAMES.value is not None:
            config.generation.num_frames = _FRAMES.value
        if _SCHEDULE.value is not None:
            config.generation.schedule = _SCHEDULE.value
        task = _TASK.value if backbone != "mtd" else None
        if _SAMPLER.value is not None:
            (config.mardini if task else config.diffusion).sampler = _SAMPLER.value
        if _STEPS.value is not None:
            config.diffusion.num_sampling_steps = _STEPS.value
        if _GUIDANCE.value is not None:
            if task:
                config.mardini.guidance[task] = _GUIDANCE.value
            else:
                config.diffusion.guidance_scale = _GUIDANCE.value
    return config


def load_storyboard() -> storyboard.Storyboard:
    if (_STORYBOARD.value is None) == (_PROMPT.value is None):
        raise app_error("give exactly one of --storyboard and --prompt")
    if _PROMPT.value is not None:
        return storyboard.Storyboard.from_prompt(_PROMPT.value)
    return storyboard.load(_STORYBOARD.value)


def app_error(message: str) -> SystemExit:
    print(f"error: {message}", file=sys.stderr)
    return SystemExit(2)


def base_config(checkpoint: str | None) -> Any:
    """The --config file's config, or with a checkpoint the bundle's plus the command line's
    `--config.*` overrides (their values as parsed against the --config file)."""
    return generation_config(_CONFIG.value, checkpoint)


def main(argv: list[str]) -> None:
    with cli.interruptible():
        _main(argv)


def _main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app_error(f"unexpected arguments {argv[1:]}")
    if _CHECKPOINT.value and _RANDOM.value:
        raise app_error("give either --checkpoint or --random_weights, not both")
    try:
        config = base_config(_CHECKPOINT.value)
        backbone = task_backbone() if _TASK.value else None
        config = apply_flags(config, backbone)
    except (ValueError, FileNotFoundError) as e:  # a bad bundle, or overrides it refuses
        raise app_error(str(e)) from None
    if _TASK.value:
        return main_task(config, backbone)
    given = [f"--{f}" for f in TASK_ONLY if flags.FLAGS[f].present]
    if given:
        raise app_error(f"{', '.join(given)}: options of --task (a clip from given frames)")
    try:
        board = load_storyboard()
        check_generation(config, board)  # before any network is built
    except (storyboard.StoryboardError, GenerationError) as e:
        raise app_error(str(e)) from None
    try:
        report = run_generation(config, board, _OUT.value, _NAME.value, _SEED.value,
                                _RANDOM.value, _GIF.value, _PROGRESS.value,
                                checkpoint=_CHECKPOINT.value)  # fmt: skip
    except (MissingWeightsError, FileNotFoundError) as e:
        raise app_error(str(e)) from None
    except ValueError as e:  # checksum, keys and shapes of a bundle
        from nuwa_jax.convert.common import WeightImportError
        from nuwa_jax.hierarchy.bundle import BundleError

        if isinstance(e, BundleError | WeightImportError):
            raise app_error(str(e)) from None
        raise
    for level in report["levels"]:
        logging.info("%s", level)
    print(
        f"{report['num_frames']} frames ({report['schedule']}) in {report['total_seconds']:.1f} s "
        f"-> {os.path.join(_OUT.value, _NAME.value)}.mp4"
    )
    weights = report["weights"]
    if weights["source"] == "bundle":
        print(f"  weights: {weights['path']} (sha256 {weights['sha256'][:16]}...)")
    else:
        print("  weights: random (the config's initialisation)")
    for level in report["levels"]:
        print(
            f"  {level['level']:>8}: {level['segments']:5d} segments, {level['calls']:4d} calls,"
            f" {level['seconds']:.2f} s (first call {level['first_call_seconds']:.2f} s)"
        )
    for cut in report["truncated_prompts"]:
        print(
            f"  cut prompt: {cut['prompt']!r} is {cut['tokens']} tokens, text.max_length="
            f"{cut['max_length']}: {cut['dropped']} dropped, the model read {cut['kept']!r}"
        )


def task_backbone() -> str:
    """--backbone, or its default for the weights given (mardini_tasks.choose_backbone)."""
    from nuwa_jax import mardini_tasks

    held = mardini_tasks.bundle_components(_CHECKPOINT.value) if _CHECKPOINT.value else None
    return mardini_tasks.choose_backbone(_TASK.value, _BACKBONE.value, held)


def main_task(config: Any, backbone: str) -> None:
    """--task: a MarDini task on the given frames, or interpolation of a hierarchy level
    with either local backbone (nuwa_jax.mardini_tasks)."""
    from nuwa_jax import mardini_tasks
    from nuwa_jax.convert.common import WeightImportError
    from nuwa_jax.hierarchy.bundle import BundleError
    from nuwa_jax.video_io import UnreadableFileError

    clash = [f"--{f}" for f in NOT_WITH_TASK if flags.FLAGS[f].present]
    if clash:
        raise app_error(f"{', '.join(clash)}: not used with --task (one clip from given frames)")
    try:
        keep = None if _KEEP.value is None else [int(k) for k in _KEEP.value]
    except ValueError:
        raise app_error(f"--keep={','.join(_KEEP.value)}: give clip positions, e.g. 0,8") from None
    try:
        result = mardini_tasks.run_task(
            config, _TASK.value, _INPUTS.value or (), _OUT.value, _NAME.value, _SEED.value,
            _RANDOM.value, _CHECKPOINT.value, keep=keep, prefix=_PREFIX.value,
            factor=_FACTOR.value, gif=_GIF.value, progress=_PROGRESS.value, backbone=backbone,
            level=_LEVEL.value, prompt=_PROMPT.value, save_frames=_SAVE_FRAMES.value,
        )  # fmt: skip
    except (mardini_tasks.TaskError, UnreadableFileError, MissingWeightsError, BundleError,
            WeightImportError, FileNotFoundError) as e:  # fmt: skip
        raise app_error(str(e)) from None
    report = result.report
    at = ""
    if report["level"] is not None:
        at = f" at level {report['level']}, stride {report['stride']}"
    print(
        f"{_TASK.value}: {report['num_frames']} frames by {report['backbone']}{at} "
        f"({report['input_frames']} input frames, given at {report['given_positions']}) in "
        f"{report['total_seconds']:.1f} s -> {os.path.join(_OUT.value, _NAME.value)}.mp4"
    )
    for level in report["levels"]:
        print(f"  {level['level']}: {level['segments']} clips, {level['calls']} calls, "
              f"{level['seconds']:.2f} s")  # fmt: skip


def run() -> None:
    """Console-script entry point."""
    parallel.initialize_distributed()
    cli.run(main)


if __name__ == "__main__":
    run()
