"""Evaluate generated long videos: Avg-FID, B-FVD-16, caption adherence, coherence.

    python -m nuwa_jax.evaluate --config=configs/demo.py \\
        --generated=outputs/eval_videos --reference=data/bench_eval \\
        --storyboard=storyboards/ --features=synthetic \\
        --feature_weights=weights/synthetic_features.json --out=outputs/report.json

--generated: an .mp4, a directory of .mp4s (one per video, all the same length), a frame
store (each episode a video, its captions used) or a directory of .png frames.
--reference: a frame store of real episodes (the synthetic benchmark's held-out episodes).
--storyboard: one storyboard file for every video, or a directory holding <video stem>.json
/ .txt per video; expanded to one prompt per frame, it gives the captions that adherence
checks. --features: 'synthetic' (the trained offline network, --feature_weights = its
.json), 'standard' (InceptionV3 + I3D, --feature_weights = a directory with the converted
safetensors; docs/evaluation.md), or 'none' (no FID / FVD). The hierarchy geometry
(frames_per_call, depth, ar_context_frames) comes from --config; the schedule
from each mp4's <stem>_timings.json (written by nuwa_jax.generate), else --schedule.
The report JSON is written to a temporary name and renamed. Bad inputs exit with status 2
and an error naming the file or value.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from nuwa_jax import cli

_CONFIG = cli.define_config_flag("configs/demo.py")
_GENERATED = flags.DEFINE_string(
    "generated", None, "Generated video(s): mp4, dir of mp4s, frame store or frames dir."
)
_REFERENCE = flags.DEFINE_string("reference", None, "Frame store of real episodes.")
_STORYBOARD = flags.DEFINE_string(
    "storyboard", None, "Storyboard file, or directory of <stem>.json/.txt."
)
_FEATURES = flags.DEFINE_enum(
    "features",
    None,
    ["synthetic", "standard", "none"],
    "Feature extractor (default: config.evaluate.features).",
)
_WEIGHTS = flags.DEFINE_string("feature_weights", None, "Weights of the feature extractor.")
_OUT = flags.DEFINE_string("out", None, "Report JSON path.")
_SCHEDULE = flags.DEFINE_enum(
    "schedule", None, ["dod", "ar"], "Schedule of videos without timings JSON."
)
_BLOCK = flags.DEFINE_integer("block_frames", None, "Frames per block (default 16).")


def _error(message: str) -> SystemExit:
    print(f"error: {message}", file=sys.stderr)
    return SystemExit(2)


def _storyboard_captions(videos, path: str | None):
    """Per video its per-frame prompts from --storyboard, or None (the video's own)."""
    from nuwa_jax import storyboard

    if not path:
        return None
    if os.path.isdir(path):
        out = []
        for v in videos:
            stem = os.path.splitext(os.path.basename(v.path))[0]
            found = [
                os.path.join(path, stem + ext)
                for ext in (".json", ".txt")
                if os.path.isfile(os.path.join(path, stem + ext))
            ]
            if not found:
                raise FileNotFoundError(
                    f"{path}: no storyboard {stem}.json or {stem}.txt for {v.path}"
                )
            out.append(storyboard.load(found[0]).frame_prompts(v.num_frames))
        return out
    board = storyboard.load(path)
    return [board.frame_prompts(v.num_frames) for v in videos]


def main(argv: list[str]) -> None:
    from nuwa_jax.evaluate import features, report, videos

    if len(argv) > 1:
        raise _error(f"unexpected arguments {argv[1:]}")
    if not _GENERATED.value or not _OUT.value:
        raise _error("--generated and --out are required")
    config = _CONFIG.value
    ev = config.evaluate
    kind = _FEATURES.value or ev.features
    weights = _WEIGHTS.value if _WEIGHTS.value is not None else ev.feature_weights
    opts = report.EvalOptions.from_config(config)
    if _SCHEDULE.value:
        opts.schedule = _SCHEDULE.value
    if _BLOCK.value is not None:
        if _BLOCK.value < 1:
            raise _error(f"--block_frames must be >= 1, got {_BLOCK.value}")
        opts.block_frames = _BLOCK.value
    try:
        vids = videos.open_videos(_GENERATED.value)
        if _REFERENCE.value and not os.path.isdir(_REFERENCE.value):
            raise FileNotFoundError(f"{_REFERENCE.value}: no such frame-store directory")
        captions = _storyboard_captions(vids, _STORYBOARD.value)
        extractor = None
        if kind != "none":
            if not weights:
                raise ValueError(f"--features={kind} needs --feature_weights (or --features=none)")
            extractor = features.load_extractor(kind, weights, batch_size=ev.batch_size)
        result = report.evaluate(vids, _REFERENCE.value, extractor, captions, opts)
    except (ValueError, FileNotFoundError) as e:  # DataError, StoryboardError, ... are ValueErrors
        raise _error(str(e)) from None
    result["config"] = config.preset
    report.write_report(_OUT.value, result)
    summary = {k: result[k].get("value") for k in ("avg_fid", "b_fvd16") if "value" in result[k]}
    adh = result["adherence"].get("character_adherence")
    ratio = result["coherence"]["mean"]["pixels"]["boundary_ratio"]
    print(
        f"Avg-FID {summary.get('avg_fid')}  B-FVD-16 {summary.get('b_fvd16')}  "
        f"adherence {adh}  boundary ratio {ratio}  -> {_OUT.value}"
    )


if __name__ == "__main__":
    cli.run(main)
