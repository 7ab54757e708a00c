"""Generate a long video: storyboard or prompt -> mp4, gif, keyframe contact sheet, filmstrip.

    python -m nuwa_jax.generate --config=configs/demo.py --prompt="a red circle walks" \\
        --frames=226 --schedule=dod --out=outputs/demo --random_weights

Diffusion over Diffusion (`--schedule=dod`): global keyframes, then every local level as
one batched call over its segments, sharded over the mesh's `data` axis. `--schedule=ar`
runs the autoregressive baseline on the same models. A progress bar per level; per-level
timings are printed and written to `timings.json` next to the video. The mp4 is streamed
as frames become final and, like every output, written under a temporary name and
renamed when complete.

Weights: `--checkpoint=PATH` loads a hierarchy bundle (`python -m nuwa_jax.export` makes
one from trainer runs; its sha256 is verified first). The config then comes from the
bundle's manifest: `--config=FILE` is not read, `--config.a.b=v` overrides and the flags
below apply on top, and an override of a field the weights fix (architecture, noise
schedule, parameterisation) must equal the bundle's. `--random_weights` builds the
config's networks from its seed (the shapes, sharding and speed are real; the pictures
are noise). The timings JSON records which (`weights`: bundle path and sha256, or random).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from absl import flags, logging

from nuwa_jax import cli, parallel, storyboard
from nuwa_jax.render import MissingWeightsError, run_generation

_CONFIG = cli.define_config_flag("configs/demo.py")
_STORYBOARD = flags.DEFINE_string("storyboard", None, "Storyboard file (.json or text).")
_PROMPT = flags.DEFINE_string("prompt", None, "One prompt for the whole video.")
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


def apply_flags(config: Any) -> Any:
    """The CLI's convenience flags written into the (unlocked) config."""
    with config.unlocked():
        if _FRAMES.value is not None:
            config.generation.num_frames = _FRAMES.value
        if _SCHEDULE.value is not None:
            config.generation.schedule = _SCHEDULE.value
        if _SAMPLER.value is not None:
            config.diffusion.sampler = _SAMPLER.value
        if _STEPS.value is not None:
            config.diffusion.num_sampling_steps = _STEPS.value
        if _GUIDANCE.value is not None:
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
    if not checkpoint:
        return _CONFIG.value
    from nuwa_jax.hierarchy import bundle

    return bundle.generation_config(checkpoint, cli.config_overrides(_CONFIG.value, sys.argv[1:]))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app_error(f"unexpected arguments {argv[1:]}")
    if _CHECKPOINT.value and _RANDOM.value:
        raise app_error("give either --checkpoint or --random_weights, not both")
    try:
        config = apply_flags(base_config(_CHECKPOINT.value))
    except (ValueError, FileNotFoundError) as e:  # a bad bundle, or overrides it refuses
        raise app_error(str(e)) from None
    try:
        board = load_storyboard()
    except storyboard.StoryboardError as e:
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


def run() -> None:
    """Console-script entry point."""
    parallel.initialize_distributed()
    cli.run(main)


if __name__ == "__main__":
    run()
