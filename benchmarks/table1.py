"""NUWA-XL's Table 1 on the synthetic benchmark: Diffusion over Diffusion vs AR, by length.

    python benchmarks/table1.py --checkpoint=checkpoints/demo/demo \\
        --feature_weights=runs/features/synthetic_features.json --frames=16,256,1024 \\
        --videos=4 --work=runs/table1 --markdown=docs/results.md

Held out: `--videos` benchmark episodes never trained on (indices from --first_episode,
rendered once into <work>/reference at the config's resolution, --max(frames) frames
each). Episode e's captions of frames [0, N) are the storyboard of its N-frame video
(<work>/storyboards/<N>/ep<e>.json, captions on absolute frame ranges), so every video has
a real counterpart: the reference episodes are the real distribution that Avg-FID and
B-FVD-16 compare against, and caption adherence checks the generated frames against the
captions they were asked for. For each N and schedule ('dod', 'ar': the same networks,
sampler and seeds) one video per episode is generated (seed = episode index) into
<work>/videos/<schedule>_<N>/ and evaluated with nuwa_jax.evaluate (docs/evaluation.md).

Generation's plan (nuwa_jax.hierarchy.plan.generation_plan): every model at the stride it
was trained for, the full-depth plan pruned to N frames (at 16 frames the global MTD still
makes keyframes 225 frames apart and both local levels fill between the first two). Each
schedule runs once untimed first, so the timed runs exclude compilation; time = mean wall
seconds of one video (sampling and VAE decode, mp4 writing included) on this machine.

Writes benchmarks/results/table1_<preset>_<platform>.json (or --out) and, with --markdown,
the table between the `<!-- table1:begin -->` / `<!-- table1:end -->` markers of that file
(created if missing), with the command that produced it. Videos already generated with
the same weights (their _timings.json present, naming the bundle's path and sha256) are
kept: a rerun after an interruption continues, and new weights make every video again.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from typing import Any

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import report  # noqa: E402
from nuwa_jax import cli, parallel  # noqa: E402
from nuwa_jax.data import synthetic  # noqa: E402

_CONFIG = cli.define_config_flag("configs/demo.py")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "checkpoints/demo/demo", "Hierarchy bundle.")
_RANDOM = flags.DEFINE_bool("random_weights", False, "The config's random initialisation.")
_FRAMES = flags.DEFINE_list("frames", ["16", "256", "1024"], "Video lengths N.")
_VIDEOS = flags.DEFINE_integer("videos", 4, "Held-out episodes = videos per N and schedule.")
_FIRST = flags.DEFINE_integer("first_episode", synthetic.HELD_OUT_FIRST_EPISODE,
                              "First held-out episode index.")  # fmt: skip
_SCHEDULES = flags.DEFINE_list("schedules", ["dod", "ar"], "Schedules to compare.")
_WEIGHTS = flags.DEFINE_string(
    "feature_weights", "", "Synthetic feature networks' .json (empty: no Avg-FID / B-FVD-16)."
)
_WORK = flags.DEFINE_string("work", "runs/table1", "Videos, storyboards and the reference.")
_OUT = flags.DEFINE_string("out", None, "Result JSON (default benchmarks/results/...).")
_MARKDOWN = flags.DEFINE_string("markdown", None, "Markdown file to put the table in.")

BEGIN, END = "<!-- table1:begin -->", "<!-- table1:end -->"
SCHEDULE_NAMES = {"dod": "DoD (NUWA-XL)", "ar": "AR (FDM*)"}


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Table 1's shape: one row per schedule and length."""

    def cell(x: Any, fmt: str = "{:.2f}") -> str:
        return "n/a" if x is None else fmt.format(x)

    lines = [
        "| Method | Frames | Avg-FID ↓ | B-FVD-16 ↓ | Scene ↑ | Characters ↑ | Colours ↑ | "
        "Unnamed colours ↓ | Seam ratio (→ 1) | Time / video (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    three = "{:.3f}"
    columns = [("avg_fid", "{:.2f}"), ("b_fvd16", "{:.2f}"), ("scene_adherence", three),
               ("adherence", three), ("colour_presence", three), ("unnamed_colours", three),
               ("boundary_ratio", three), ("seconds_per_video", "{:.1f}")]  # fmt: skip
    for r in rows:
        cells = [SCHEDULE_NAMES.get(r["schedule"], r["schedule"]), str(r["num_frames"])]
        cells += [cell(r.get(key), fmt) for key, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_markdown(path: str, table: str, command: str, result: dict[str, Any]) -> None:
    """Puts the table between the markers of `path` (atomically), keeping the rest."""
    env = result["device"]
    block = "\n".join(
        [
            BEGIN,
            f"Measured {result['date'][:10]} on a {env['cpus']}-CPU {env['host']} machine "
            f"({env['count']} {env['platform']} device(s): {env['kind']}), weights: "
            f"{result['weights']['source']}"
            + (
                f" (sha256 {result['weights']['sha256'][:16]}...)"
                if result["weights"].get("sha256")
                else ""
            )  # fmt: skip
            + f", {result['videos']} held-out storyboards per row, Avg-FID / B-FVD-16 "
            f"features: {result['feature_weights'] or 'none'}. Produced by:",
            "",
            "```",
            command,
            "```",
            "",
            table,
            END,
        ]
    )
    text = open(path).read() if os.path.exists(path) else "# Results\n\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    tmp = f"{path}.partial"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv: list[str]) -> None:
    del argv
    import jax

    from nuwa_jax import render, storyboard
    from nuwa_jax.data import schema
    from nuwa_jax.evaluate import features
    from nuwa_jax.evaluate import report as eval_report
    from nuwa_jax.evaluate import videos as eval_videos
    from nuwa_jax.hierarchy import bundle

    lengths = sorted(int(n) for n in _FRAMES.value)
    unknown = set(_SCHEDULES.value) - set(SCHEDULE_NAMES)
    if unknown:
        raise SystemExit(f"error: --schedules: unknown {sorted(unknown)}; use dod, ar")
    if _VIDEOS.value < 1 or min(lengths) < 2:
        raise SystemExit("error: --videos must be >= 1 and every --frames >= 2")
    checkpoint = None if _RANDOM.value else _CHECKPOINT.value
    config = render.generation_config(_CONFIG.value, checkpoint)
    work = _WORK.value
    episodes = list(range(_FIRST.value, _FIRST.value + _VIDEOS.value))
    ref_root = os.path.join(work, "reference")
    synthetic.held_out_benchmark(ref_root, episodes=len(episodes), first_episode=_FIRST.value,
                                 frames=max(lengths), resolution=config.data.resolution,
                                 seed=config.data.synthetic_seed)  # fmt: skip
    with schema.FrameStore(ref_root) as store:
        captions = {
            e: list(
                store.read_frames(
                    synthetic.episode_id(e), range(max(lengths)), decode=False
                ).captions
            )  # fmt: skip
            for e in episodes
        }
    extractor = None
    if _WEIGHTS.value:
        extractor = features.load_extractor(
            "synthetic", _WEIGHTS.value, batch_size=config.evaluate.batch_size
        )

    built = render.build(config, checkpoint, random_weights=checkpoint is None)
    weights = bundle.weights_report(built.manifest)  # what each kept video must have used
    warm = os.path.join(work, "warmup")
    for schedule in _SCHEDULES.value:  # compile every function the timed runs call
        render.write_video(built, captions[episodes[0]][: lengths[0]], warm, schedule, seed=0,
                           schedule=schedule, gif=False, progress=False)  # fmt: skip

    rows = []
    for n in lengths:
        boards = os.path.join(work, "storyboards", str(n))
        os.makedirs(boards, exist_ok=True)
        for e in episodes:
            board = storyboard.Storyboard.from_frame_prompts(captions[e][:n], f"episode {e}")
            schema.atomic_write_bytes(os.path.join(boards, f"ep{e}.json"), board.to_json().encode())
        for schedule in _SCHEDULES.value:
            out = os.path.join(work, "videos", f"{schedule}_{n}")
            seconds = []
            for e in episodes:
                done = os.path.join(out, f"ep{e}_timings.json")
                if os.path.exists(done):  # a rerun keeps the videos these weights finished
                    with open(done) as f:
                        previous = json.load(f)
                    wall = previous.get("wall_seconds")
                    if wall is not None and previous.get("weights") == weights:
                        seconds.append(wall)
                        continue
                t0 = time.perf_counter()
                rep = render.write_video(built, captions[e][:n], out, f"ep{e}", seed=e,
                                         schedule=schedule, gif=False, progress=False)  # fmt: skip
                rep["wall_seconds"] = time.perf_counter() - t0
                render.write_json(done, rep)
                seconds.append(rep["wall_seconds"])
            vids = eval_videos.open_videos(out)
            opts = eval_report.EvalOptions.from_config(config)
            opts.schedule = schedule
            episode_of = {os.path.join(out, f"ep{e}.mp4"): e for e in episodes}
            asked = [captions[episode_of[v.path]][:n] for v in vids]  # what each video was told
            result = eval_report.evaluate(
                vids, ref_root, extractor, asked, opts, log=lambda m: None
            )
            eval_report.write_report(os.path.join(out, "report.json"), result)
            row = dict(
                schedule=schedule,
                num_frames=n,
                avg_fid=result["avg_fid"].get("value"),
                b_fvd16=result["b_fvd16"].get("value"),
                adherence=result["adherence"].get("character_adherence"),
                scene_adherence=result["adherence"].get("scene_adherence"),
                colour_presence=result["adherence"].get("colour_presence"),
                unnamed_colours=result["adherence"].get("unnamed_colours"),
                boundary_ratio=result["coherence"]["mean"]["pixels"]["boundary_ratio"],
                reference_boundary_ratio=(
                    result["coherence"].get("reference", {}).get("pixels", {}).get("boundary_ratio")
                ),
                seconds_per_video=sum(seconds) / len(seconds),
                report=os.path.join(out, "report.json"),
            )
            rows.append(row)
            print(
                f"N={n:5d} {schedule:>3}: Avg-FID {row['avg_fid']}  B-FVD-16 {row['b_fvd16']}  "
                f"scene {row['scene_adherence']}  characters {row['adherence']}  "
                f"colours {row['colour_presence']} / {row['unnamed_colours']}  "
                f"seams {row['boundary_ratio']}  "
                f"{row['seconds_per_video']:.1f} s/video",
                flush=True,
            )

    manifest = built.manifest
    result = dict(
        benchmark="table1",
        **report.environment(),
        config=config.preset,
        weights=bundle.weights_report(manifest),
        videos=len(episodes),
        held_out_episodes=episodes,
        feature_weights=_WEIGHTS.value,
        features=extractor.describe() if extractor is not None else None,
        plan_depth=config.hierarchy.depth,  # every DoD row: all levels, training strides
        sampler=dict(
            name=config.diffusion.sampler,
            steps=config.diffusion.num_sampling_steps,
            guidance_scale=config.diffusion.guidance_scale,
        ),  # fmt: skip
        mesh=dict(built.generator.mesh.shape),
        rows=rows,
    )
    name = f"table1_{config.preset}_{jax.devices()[0].platform}"
    path = report.write_result(name, result, _OUT.value)
    print(f"wrote {path}")
    if _MARKDOWN.value:
        command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
        write_markdown(_MARKDOWN.value, markdown_table(rows), command, result)
        print(f"wrote the table into {_MARKDOWN.value}")


if __name__ == "__main__":
    parallel.initialize_distributed()
    cli.run(main)
