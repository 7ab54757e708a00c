"""Input pipeline throughput: training windows/s and frames/s of nuwa_jax.data.pipeline.

Writes a small synthetic frame store (nuwa_jax.data.synthetic) to a temporary directory
unless --data_dir is given, then times the grain pipeline of the chosen preset: every
level mixed (the default stream) and each level alone. The result goes to
benchmarks/results/input_pipeline_<preset>.json with the device, versions and config.

  .venv/bin/python benchmarks/input_pipeline.py --preset demo
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import grain  # noqa: E402
import jax  # noqa: E402

from configs import common  # noqa: E402
from nuwa_jax.data import pipeline, schema, synthetic  # noqa: E402
from nuwa_jax.models.text import ByteTokenizer  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def time_stream(cfg, tokenizer, data_dir: str, levels, warmup: int, batches: int) -> dict:
    """Windows/s and frames/s over `batches` batches after `warmup` (thread start-up)."""
    it = pipeline.make_iterator(
        cfg, tokenizer, levels=levels, data_dir=data_dir, process_index=0, process_count=1
    )
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    windows = frames = 0
    for _ in range(batches):
        batch = next(it)
        windows += batch["frame_index"].shape[0]
        frames += batch["frame_index"].size
    seconds = time.perf_counter() - t0
    return dict(
        levels=list(levels),
        batches=batches,
        seconds=round(seconds, 3),
        windows_per_s=round(windows / seconds, 2),
        frames_per_s=round(frames / seconds, 1),
    )


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="demo", choices=common.PRESETS)
    p.add_argument("--data_dir", default="", help="existing frame store (default: write one)")
    p.add_argument("--episodes", type=int, default=2, help="synthetic episodes to write")
    p.add_argument("--batches", type=int, default=40, help="timed batches per stream")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--worker_count", type=int, default=None, help="override data.worker_count")
    p.add_argument("--read_threads", type=int, default=None, help="override data.read_threads")
    p.add_argument("--out", default="", help="result JSON (default: benchmarks/results/...)")
    args = p.parse_args(argv)

    cfg = common.base(args.preset)
    if args.worker_count is not None:
        cfg.data.worker_count = args.worker_count
    if args.read_threads is not None:
        cfg.data.read_threads = args.read_threads
    tokenizer = ByteTokenizer(cfg.text.max_length)
    plan = pipeline.plan_from_config(cfg)

    with tempfile.TemporaryDirectory() as tmp:
        data_dir, write_s = args.data_dir, None
        if not data_dir:
            data_dir = os.path.join(tmp, "frames")
            t0 = time.perf_counter()
            synthetic.write_benchmark(
                data_dir,
                episodes=args.episodes,
                frames=cfg.data.synthetic_frames,
                resolution=cfg.data.resolution,
                seed=cfg.data.synthetic_seed,
                image_format=cfg.data.image_format,
                frames_per_shard=cfg.data.frames_per_shard,
                index_every=cfg.data.index_every,
            )
            write_s = round(time.perf_counter() - t0, 2)
        meta = schema.load_metadata(data_dir)
        streams = [time_stream(cfg, tokenizer, data_dir, plan.levels, args.warmup, args.batches)]
        for level in plan.levels:
            streams.append(
                time_stream(cfg, tokenizer, data_dir, [level], args.warmup, args.batches)
            )

    result = dict(
        benchmark="input_pipeline",
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        device=dict(
            jax_backend=jax.default_backend(),
            device_kind=jax.devices()[0].device_kind,
            cpu=platform.processor() or platform.machine(),
            cpu_count=os.cpu_count(),
            affinity=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        ),
        versions=dict(
            python=platform.python_version(),
            jax=jax.__version__,
            grain=getattr(grain, "__version__", "unknown"),
        ),
        config=dict(
            preset=args.preset,
            hierarchy=cfg.hierarchy.to_dict(),
            data={k: v for k, v in cfg.data.to_dict().items() if not k.startswith("synthetic")},
            text_max_length=cfg.text.max_length,
        ),
        dataset=dict(
            data_dir=args.data_dir or "(synthetic, temporary)",
            episodes=len(meta.episodes),
            frames=sum(e.num_frames for e in meta.episodes),
            resolution=[meta.height, meta.width],
            image_format=meta.image_format,
            write_seconds=write_s,
        ),
        window=dict(
            frames_per_window=plan.frames_per_call,
            strides=[plan.stride(j) for j in plan.levels],
            spans=[plan.window_span(j) for j in plan.levels],
        ),
        streams=streams,
    )
    out = args.out or os.path.join(RESULTS, f"input_pipeline_{args.preset}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    schema.atomic_write_bytes(out, (json.dumps(result, indent=1) + "\n").encode("utf-8"))
    print(json.dumps(result["streams"], indent=1))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
