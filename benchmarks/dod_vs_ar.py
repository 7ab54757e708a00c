"""Wall time of Diffusion over Diffusion vs the autoregressive baseline, same models, one run.

    python benchmarks/dod_vs_ar.py --config=configs/tiny.py --frames=16,256,1024

For each N: the DoD schedule (each level one batched call over its segments, in chunks of
max_segments_per_device x data devices) and the AR schedule (FDM*: segments one after
another, each conditioned on the last frame of the previous one), both on the same
randomly initialised networks (speed does not depend on the weights). Every compiled
function is warmed up first, so the times are steady-state sampling, decode excluded.
Per-level call times are recorded so that docs/performance.md can project the latency on
D devices. Writes benchmarks/results/dod_vs_ar_<preset>_<device>.json.

The hierarchy depth is raised to the smallest that covers the longest N (with one local
MTD shared across local levels, so the number of networks stays two); every N runs at
that depth (generation's plan: each model at its training stride).
"""

from __future__ import annotations

import os
import sys
import time

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import report  # noqa: E402
from nuwa_jax import cli, parallel  # noqa: E402

_CONFIG = cli.define_config_flag("configs/tiny.py")
_FRAMES = flags.DEFINE_list("frames", ["16", "256", "1024"], "Video lengths to time.")
_SEGMENTS = flags.DEFINE_integer("max_segments_per_device", 8, "DoD chunk size per device.")
_OUT = flags.DEFINE_string("out", None, "JSON path (default benchmarks/results/...).")


def main(argv: list[str]) -> None:
    del argv
    import jax
    import numpy as np

    from nuwa_jax.hierarchy import HierarchyPlan, full_length
    from nuwa_jax.hierarchy.generator import Generator
    from nuwa_jax.hierarchy.models import HierarchyModels
    from nuwa_jax.models.text import make_tokenizer

    config = _CONFIG.value
    lengths = sorted(int(n) for n in _FRAMES.value)
    L = config.hierarchy.frames_per_call
    depth = HierarchyPlan.for_frames(max(lengths), L).depth
    with config.unlocked():
        config.hierarchy.depth = depth
        config.hierarchy.share_local_models = depth > 2
        config.mtd.num_level_embeddings = max(config.mtd.num_level_embeddings, depth - 1)
        config.generation.max_segments_per_device = _SEGMENTS.value
    mesh, rules = parallel.make_mesh(config.mesh), parallel.logical_rules(config)
    models = HierarchyModels.create(config, mesh, rules)
    gen = Generator(config, models, mesh, rules, make_tokenizer(config.text))
    prompt = "a big red circle walks right on the beach"

    # Warm-up: compile every sampler the timed runs call. A two-level plan runs the global
    # MTD and the (shared) local one; deeper local levels reuse the local one's function.
    gen.generate([prompt] * full_length(L, min(depth, 2)), seed=0, schedule="dod",
                 progress=False)  # fmt: skip
    gen.generate([prompt] * (2 * L - 1), seed=0, schedule="ar", progress=False)

    rows = []
    for n in lengths:
        row = dict(num_frames=n, depth=depth, frames_per_call=L)
        for schedule in ("dod", "ar"):
            t0 = time.perf_counter()
            video = gen.generate([prompt] * n, seed=1, schedule=schedule, progress=False)
            jax.block_until_ready(video.latents)
            row[schedule] = dict(
                seconds=time.perf_counter() - t0,
                levels=[t.as_dict() for t in video.timings],
                calls=sum(t.calls for t in video.timings),
                segments=sum(t.segments for t in video.timings),
            )
        row["ar_over_dod"] = row["ar"]["seconds"] / row["dod"]["seconds"]
        rows.append(row)
        print(f"N={n:5d}: DoD {row['dod']['seconds']:8.2f} s ({row['dod']['calls']} calls), "
              f"AR {row['ar']['seconds']:8.2f} s ({row['ar']['calls']} calls), "
              f"AR/DoD {row['ar_over_dod']:.2f}")  # fmt: skip

    # Latency projection on D devices. The unit is the measured time of one sampler call
    # with ONE segment per device (the AR calls: batch 1). A DoD level of S segments on D
    # devices takes ceil(S / D) such calls, if one segment per device per call costs the
    # same on every device and the gather between levels is negligible; AR stays
    # sequential whatever D is.
    per_call = float(np.median([lv["seconds"] / lv["calls"] for r in rows
                                for lv in r["ar"]["levels"]]))  # fmt: skip
    for r in rows:
        segs = [lv["segments"] for lv in r["dod"]["levels"]]
        r["projection"] = {
            str(d): dict(
                dod_seconds=per_call * sum(-(-s // d) for s in segs),
                ar_seconds=per_call * r["ar"]["calls"],
            )
            for d in (1, 8, 64, 256)
        }
        for p in r["projection"].values():
            p["ar_over_dod"] = p["ar_seconds"] / p["dod_seconds"]
    print(f"projection from {per_call:.3f} s per one-segment call (AR/DoD on D devices):")
    for r in rows:
        ratios = ", ".join(f"D={d}: {p['ar_over_dod']:.1f}x" for d, p in r["projection"].items())
        print(f"  N={r['num_frames']:5d}: {ratios}")
    result = dict(
        benchmark="dod_vs_ar",
        **report.environment(),
        config=config.preset,
        overrides=dict(
            depth=depth,
            share_local_models=config.hierarchy.share_local_models,
            max_segments_per_device=_SEGMENTS.value,
        ),  # fmt: skip
        sampler=dict(
            name=config.diffusion.sampler,
            steps=config.diffusion.num_sampling_steps,
            guidance_scale=config.diffusion.guidance_scale,
        ),  # fmt: skip
        mesh=dict(mesh.shape),
        chunk_segments=gen.chunk,
        seconds_per_one_segment_call=per_call,
        rows=rows,
    )
    name = f"dod_vs_ar_{config.preset}_{jax.devices()[0].platform}"
    print(f"wrote {report.write_result(name, result, _OUT.value)}")


if __name__ == "__main__":
    parallel.initialize_distributed()
    cli.run(main)
