"""Storyboard + config -> a generated video and everything written next to it.

The library behind `nuwa_jax.generate` (the CLI) and `nuwa_jax.demo` (the main job): builds
the hierarchy's networks sharded on the local mesh, generates with the config's schedule,
streams the mp4, and writes the keyframe contact sheet, the filmstrip, the gif and a
JSON report of per-level timings. Every file is written under a temporary name and
renamed when complete.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import time
from typing import Any

from nuwa_jax import parallel, storyboard, video_io


class MissingWeightsError(ValueError):
    """No weights to generate with (no checkpoint, random weights not asked for)."""


class GenerationError(ValueError):
    """A video the config cannot make (frame count, schedule); the message names the flag
    or config field and the value."""


def write_json(path: str, data: Any) -> None:
    """`data` as indented JSON, written under a hidden temporary name and renamed."""

    def save(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2)

    video_io.write_atomically(path, save)


def max_frames(config: Any) -> int | None:
    """The most frames the config's schedule makes: N(depth) = (L-1)^depth + 1 for DoD
    (`plan.generation_plan`), None (no bound) for the autoregressive baseline."""
    from nuwa_jax.hierarchy import full_length

    h = config.hierarchy
    return full_length(h.frames_per_call, h.depth) if config.generation.schedule == "dod" else None


def check_generation(config: Any, board: storyboard.Storyboard) -> list[str]:
    """Everything about a storyboard video that can fail without networks, checked before
    any is built: the schedule, the frame count (`--frames`, generation.num_frames) against
    `max_frames`, the storyboard against that count (absolute ranges must tile it; every
    relative scene must get a frame: storyboard.StoryboardError). Returns one prompt per
    frame; GenerationError names the flag and value at fault."""
    from nuwa_jax.hierarchy import full_length
    from nuwa_jax.hierarchy.generator import SCHEDULES

    h, g = config.hierarchy, config.generation
    if g.schedule not in SCHEDULES:
        raise GenerationError(f"--schedule={g.schedule}: choose one of {', '.join(SCHEDULES)}")
    n = g.num_frames or full_length(h.frames_per_call, h.depth)
    if n < 2:
        raise GenerationError(f"--frames={n}: a video needs at least 2 frames")
    most = max_frames(config)
    if most is not None and n > most:
        raise GenerationError(
            f"--frames={n} (generation.num_frames): the DoD plan of this hierarchy makes at "
            f"most {most} frames ((L-1)^depth + 1 with hierarchy.frames_per_call="
            f"{h.frames_per_call}, hierarchy.depth={h.depth}); give --frames <= {most}"
        )
    if g.schedule == "ar" and not 1 <= g.ar_context_frames < h.frames_per_call:
        raise GenerationError(
            f"generation.ar_context_frames={g.ar_context_frames} must be in "
            f"[1, {h.frames_per_call}) (hierarchy.frames_per_call)"
        )
    return board.frame_prompts(n)


def generation_config(config: Any, checkpoint: str | None, argv: list[str] | None = None) -> Any:
    """The config to generate with: `config` (the --config file's), or with a `checkpoint`
    the bundle's own config plus the command line's `--config.*` overrides (`argv`,
    default sys.argv[1:]; values parsed against `config`)."""
    if not checkpoint:
        return config
    import sys

    from nuwa_jax import cli
    from nuwa_jax.hierarchy import bundle

    argv = sys.argv[1:] if argv is None else argv
    return bundle.generation_config(checkpoint, cli.config_overrides(config, argv))


# Every file write_video makes, after the base name: removed together if the run fails.
OUTPUT_SUFFIXES = (".mp4", "_keyframes.png", "_filmstrip.png", ".gif", "_timings.json")


def remove_outputs(paths: list[str]) -> None:
    """Removes the outputs of a run that failed, finished or partial. The writers remove
    their own temporary files; the sweep of `.<name>.*.partial*` also catches one that a
    signal left between a writer's creation and its `with` block."""
    for path in paths:
        for each in [path, *glob.glob(video_io.partial_pattern(path))]:
            try:
                os.remove(each)
            except FileNotFoundError:
                pass


@dataclasses.dataclass
class Built:
    """A hierarchy's networks, ready to generate: the generator and where its weights came from."""

    generator: Any  # nuwa_jax.hierarchy.generator.Generator
    manifest: dict[str, Any] | None  # the bundle's manifest; None: random weights
    build_seconds: float


def build(config: Any, checkpoint: str | None = None, random_weights: bool = False,
          mardini: bool | None = None, local_backbone: str | None = None) -> Built:  # fmt: skip
    """The networks of `config` sharded on the local mesh, with their weights.

    Weights: `checkpoint`, a hierarchy bundle (nuwa_jax/hierarchy/bundle.py; `config`
    must agree with its architecture fields, e.g. `bundle.generation_config(checkpoint)`),
    or `random_weights` (the config's initialisation); exactly one. `mardini`: random
    weights build a MarDini too (None: when the local backbone is MarDini);
    `local_backbone`: the generator's (None: hierarchy.local_backbone).
    """
    from nuwa_jax.hierarchy import bundle
    from nuwa_jax.hierarchy.generator import Generator
    from nuwa_jax.hierarchy.models import HierarchyModels
    from nuwa_jax.models.text import make_tokenizer

    if checkpoint and random_weights:
        raise MissingWeightsError("give either a checkpoint or random weights, not both")
    if not checkpoint and not random_weights:
        raise MissingWeightsError(
            "no weights: pass --checkpoint=BUNDLE (made by python -m nuwa_jax.export from "
            "trainer runs) or --random_weights to run the real pipeline on randomly "
            "initialised networks"
        )
    mesh, rules = parallel.make_mesh(config.mesh), parallel.logical_rules(config)
    t0 = time.perf_counter()
    manifest = None
    if checkpoint:
        manifest = bundle.read_manifest(checkpoint)
        models = bundle.load_bundle(checkpoint, config, mesh, rules)
    else:
        models = HierarchyModels.create(config, mesh, rules, mardini=mardini)
    build_s = time.perf_counter() - t0
    generator = Generator(config, models, mesh, rules, make_tokenizer(config.text),
                          local_backbone=local_backbone)  # fmt: skip
    return Built(generator, manifest, build_s)


def write_video(
    built: Built,
    prompts: list[str],
    out_dir: str,
    name: str,
    seed: int,
    schedule: str,
    gif: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Generates one video of len(prompts) frames with `schedule` ('dod' or 'ar'), writes
    every output under `out_dir` (mp4, keyframes, filmstrip, gif, <name>_timings.json);
    returns the report. The built generator's jitted functions are reused across calls.

    Frames reach the mp4 as they become final (the generator's `on_frames`). If anything
    fails or the run is interrupted (KeyboardInterrupt, or SystemExit from the CLI's SIGTERM
    handler) every file of this run is removed, finished ones too: no partial set remains."""
    outputs = [os.path.join(out_dir, f"{name}{suffix}") for suffix in OUTPUT_SUFFIXES]
    try:
        return _write_video(built, prompts, out_dir, name, seed, schedule, gif, progress)
    except BaseException:
        remove_outputs(outputs)
        raise


def _write_video(
    built: Built,
    prompts: list[str],
    out_dir: str,
    name: str,
    seed: int,
    schedule: str,
    gif: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """write_video's work; its temporary files are removed by the writers on failure."""
    import numpy as np

    from nuwa_jax.hierarchy import bundle

    generator = built.generator
    config, g, n = generator.config, generator.config.generation, len(prompts)
    mesh = generator.mesh
    os.makedirs(out_dir, exist_ok=True)
    mp4 = os.path.join(out_dir, f"{name}.mp4")
    res = config.data.resolution
    strip_at = video_io.filmstrip_indices(n, g.filmstrip_frames)
    gif_at = video_io.filmstrip_indices(n, g.gif_max_frames)
    keep = np.concatenate([strip_at, gif_at])  # the few frames the filmstrip and gif show

    with video_io.Mp4Writer(mp4, g.fps, res, res, keep=keep) as writer:

        def on_frames(start: int, frames: np.ndarray) -> None:
            if start != writer.frames_written:
                raise RuntimeError(f"frames from {start} arrived after {writer.frames_written}")
            writer.write(frames)

        video = generator.generate(prompts, seed, schedule, progress, on_frames)

    video_io.write_contact_sheet(os.path.join(out_dir, f"{name}_keyframes.png"), video.keyframes())
    video_io.write_filmstrip(os.path.join(out_dir, f"{name}_filmstrip.png"), writer.kept(strip_at))
    if gif:
        video_io.write_gif(os.path.join(out_dir, f"{name}.gif"), writer.kept(gif_at), g.fps,
                           len(gif_at))  # fmt: skip
    report = dict(
        video.timing_report(),
        schedule=schedule,
        local_backbone=generator.local_backbone,
        config=config.preset,
        seed=seed,
        random_weights=built.manifest is None,
        weights=bundle.weights_report(built.manifest),
        devices=[str(d) for d in mesh.devices.flat],
        mesh=dict(mesh.shape),
        chunk_segments=generator.chunk,
        build_seconds=built.build_seconds,
        parameters=generator.models.parameter_counts(),
        # Prompts longer than the text context (each logged): what the model read of them.
        truncated_prompts=[dataclasses.asdict(t) for t in video.truncated_prompts],
        outputs=sorted(
            f for f in os.listdir(out_dir) if f.startswith(name + "_") or f.startswith(name + ".")
        ),
    )
    write_json(os.path.join(out_dir, f"{name}_timings.json"), report)
    return report


def run_generation(config: Any, board: storyboard.Storyboard, out_dir: str, name: str,
                   seed: int, random_weights: bool, gif: bool = True, progress: bool = True,
                   checkpoint: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Checks the request (`check_generation`: GenerationError, StoryboardError), builds the
    models (`build`), generates `config.generation.num_frames` frames (default N(depth)) of
    `board` with the config's schedule, writes every output; returns the report."""
    prompts = check_generation(config, board)
    built = build(config, checkpoint, random_weights)
    return write_video(built, prompts, out_dir, name, seed, config.generation.schedule, gif,
                       progress)  # fmt: skip
