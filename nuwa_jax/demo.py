"""The main job (`make demo`): a long video from the demo storyboard, on CPU, no downloads.

    python -m nuwa_jax.demo [--out=outputs/demo] [--frames=N] [--schedule=dod|ar]

It runs the whole Diffusion-over-Diffusion path of `nuwa_jax.generate` on the demo config
(`configs/demo.py`, every level of the hierarchy, each level one sharded batched call)
and the demo storyboard (`configs/storyboards/demo.txt`), writing the mp4, gif, keyframe
contact sheet, filmstrip and per-level timings to `--out`.

Weights: the demo bundle `checkpoints/demo/demo.{json,safetensors}` when the repository
has it (trained by `make train-demo`, see docs/quickstart.md; its sha256 is verified before
use), else randomly initialised networks, which the outputs say (`video_timings.json`:
"weights": {"source": "random"}): then what runs is the machinery (plan, parallel levels,
streaming decode, outputs) and its speed. `--checkpoint=BUNDLE` picks another bundle
(`python -m nuwa_jax.export`), `--random_weights` forces random ones. With a bundle the
config is the bundle's (with any `--config.*` overrides), and sampling uses its
diffusion.num_sampling_steps unless `--steps` is given.
"""

from __future__ import annotations

import os

from absl import flags

from nuwa_jax import cli, parallel, storyboard
from nuwa_jax.render import generation_config, run_generation

_CONFIG = cli.define_config_flag("configs/demo.py")
_OUT = flags.DEFINE_string("out", "outputs/demo", "Output directory.")
_FRAMES = flags.DEFINE_integer("frames", None, "Frames (default: N(depth) of the config).")
_SCHEDULE = flags.DEFINE_enum("schedule", "dod", ["dod", "ar"], "Generation schedule.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_STEPS = flags.DEFINE_integer(
    "steps",
    None,
    "Sampling steps (default: 4 with random weights, where more only cost time; the "
    "config's with --checkpoint).",
)
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Hierarchy bundle to generate with (default: the demo bundle)."
)
_RANDOM = flags.DEFINE_bool("random_weights", False, "Random networks even if a bundle exists.")
RANDOM_WEIGHTS_STEPS = 4

STORYBOARD = os.path.join(cli.repo_root(), "configs", "storyboards", "demo.txt")
DEMO_BUNDLE = os.path.join(cli.repo_root(), "checkpoints", "demo", "demo")


def default_checkpoint() -> str | None:
    """The shipped demo bundle's stem if both its files are present, else None."""
    if all(os.path.exists(DEMO_BUNDLE + ext) for ext in (".json", ".safetensors")):
        return DEMO_BUNDLE
    return None


def main(argv: list[str]) -> None:
    del argv
    checkpoint = None if _RANDOM.value else (_CHECKPOINT.value or default_checkpoint())
    if _RANDOM.value and _CHECKPOINT.value:
        raise SystemExit("--random_weights and --checkpoint exclude each other")
    config = generation_config(_CONFIG.value, checkpoint)
    with config.unlocked():
        config.generation.schedule = _SCHEDULE.value
        if _STEPS.value is not None:
            config.diffusion.num_sampling_steps = _STEPS.value
        elif not checkpoint:
            config.diffusion.num_sampling_steps = RANDOM_WEIGHTS_STEPS
        if _FRAMES.value is not None:
            config.generation.num_frames = _FRAMES.value
    with cli.interruptible():  # SIGTERM / SIGINT: the run's files are removed
        report = run_generation(config, storyboard.load(STORYBOARD), _OUT.value, "video",
                                _SEED.value, random_weights=not checkpoint,
                                checkpoint=checkpoint)  # fmt: skip
    weights = "random weights" if not checkpoint else f"weights {report['weights']['path']}"
    print(f"\n{report['num_frames']} frames ({report['schedule']}, {weights}) written to "
          f"{_OUT.value}/: {', '.join(report['outputs'])}")  # fmt: skip
    for level in report["levels"]:
        print(f"  {level['level']:>8}: {level['segments']:5d} segments in {level['calls']:4d} "
              f"calls, {level['seconds']:7.2f} s")  # fmt: skip
    print(f"  networks built in {report['build_seconds']:.1f} s; "
          f"generation {report['total_seconds']:.1f} s")  # fmt: skip


def run() -> None:
    """Console-script entry point."""
    parallel.initialize_distributed()
    cli.run(main)


if __name__ == "__main__":
    run()
