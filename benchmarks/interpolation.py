"""Interpolation on held-out clips: MarDini vs the local MTD vs a linear blend, in PSNR.

    python benchmarks/interpolation.py --checkpoint=runs/demo/demo_mardini \\
        --clips=64 --levels=1,2 --work=runs/interpolation

The task of every local level of Diffusion over Diffusion: given two frames s_{j-1}
apart, make the L-2 frames between them at stride s_j. Held out: clips of level j (L
frames at its stride) at random positions in benchmark episodes never trained on
(indices from --first_episode, rendered once into <work>/reference). The methods (mtd,
mardini, blend, latent_blend, vae) and the scores are nuwa_jax.evaluate.interpolation's;
with --wrong_ends (default) each model is scored again given another clip's ends.
Writes benchmarks/results/interpolation_<preset>_<platform>.json (or --out).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import report  # noqa: E402
from nuwa_jax import cli, parallel  # noqa: E402
from nuwa_jax.data import synthetic  # noqa: E402

_CONFIG = cli.define_config_flag("configs/demo.py")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Bundle with the local MTD and MarDini.")
_RANDOM = flags.DEFINE_bool("random_weights", False, "The config's random initialisation.")
_METHODS = flags.DEFINE_list(
    "methods", ["mtd", "mardini", "blend", "latent_blend", "vae"], "What to compare."
)
_LEVELS = flags.DEFINE_list("levels", None, "Local levels (default: every local level).")
_CLIPS = flags.DEFINE_integer("clips", 32, "Held-out clips per level.")
_EPISODES = flags.DEFINE_integer("episodes", 4, "Held-out episodes the clips come from.")
_FIRST = flags.DEFINE_integer("first_episode", synthetic.HELD_OUT_FIRST_EPISODE,
                              "First held-out episode index.")  # fmt: skip
_SEED = flags.DEFINE_integer("seed", 0, "Clip positions and sampling noise.")
_WRONG = flags.DEFINE_bool(
    "wrong_ends", True, "Also sample each model with another clip's ends (<method>@wrong_ends)."
)
_WORK = flags.DEFINE_string("work", "runs/interpolation", "Where the reference is rendered.")
_OUT = flags.DEFINE_string("out", None, "Result JSON (default benchmarks/results/...).")


def main(argv: list[str]) -> None:
    del argv
    import jax
    import numpy as np

    from nuwa_jax import render
    from nuwa_jax.evaluate import interpolation
    from nuwa_jax.hierarchy import HierarchyPlan, bundle

    methods = list(_METHODS.value)
    if set(methods) - set(interpolation.METHODS):
        raise SystemExit(
            f"error: --methods: unknown {sorted(set(methods) - set(interpolation.METHODS))}"
        )
    if (_CHECKPOINT.value is None) == (not _RANDOM.value):
        raise SystemExit("error: give exactly one of --checkpoint and --random_weights")
    config = render.generation_config(_CONFIG.value, _CHECKPOINT.value)
    h = config.hierarchy
    L, depth = h.frames_per_call, h.depth
    levels = [int(j) for j in _LEVELS.value] if _LEVELS.value else list(range(1, depth))
    if not levels or min(levels) < 1 or max(levels) >= depth:
        raise SystemExit(f"error: --levels must be local levels in [1, {depth - 1}]")
    built = render.build(config, _CHECKPOINT.value, _RANDOM.value, mardini="mardini" in methods,
                         local_backbone="mtd")  # fmt: skip
    gen = built.generator
    if "mardini" in methods and gen.models.mardini is None:
        raise SystemExit(
            f"error: {_CHECKPOINT.value} has no MarDini (export it with --mardini_workdir), "
            "or leave mardini out of --methods"
        )

    plan = HierarchyPlan.full(L, depth)
    span = max(int(plan.window(j, 0)[-1]) + 1 for j in levels)
    frames = max(span, 64)
    root = os.path.join(_WORK.value, "reference")
    synthetic.held_out_benchmark(root, episodes=_EPISODES.value, first_episode=_FIRST.value,
                                 frames=frames, resolution=config.data.resolution,
                                 seed=config.data.synthetic_seed)  # fmt: skip
    rng = np.random.default_rng(_SEED.value)
    rows = []
    for j in levels:
        clips = interpolation.held_out_clips(root, plan.window(j, 0), _CLIPS.value, rng,
                                             first_episode=_FIRST.value,
                                             episodes=_EPISODES.value, frames=frames)  # fmt: skip
        row: dict[str, Any] = dict(level=j, stride=plan.stride(j), clips=len(clips.truth))
        row.update(
            interpolation.compare(
                gen, clips, methods, level=j, seed=_SEED.value, wrong_ends=_WRONG.value
            )
        )
        row["clip_starts"] = [list(s) for s in clips.starts]  # episode, frame
        rows.append(row)
        line = ", ".join(
            f"{m} {r['psnr_pooled']:.2f} dB"
            + (f" (moving clips: mean {r['moving']['psnr_mean']:.2f})" if r["moving"] else "")
            for m, r in row["methods"].items()
        )
        print(f"level {j} (stride {row['stride']}, {row['clips']} clips): {line}", flush=True)

    result = dict(
        benchmark="interpolation",
        **report.environment(),
        config=config.preset,
        weights=bundle.weights_report(built.manifest),
        held_out_episodes=[_FIRST.value, _FIRST.value + _EPISODES.value - 1],
        sampler=dict(
            name=config.diffusion.sampler,
            steps=config.diffusion.num_sampling_steps,
            timestep_spacing=config.diffusion.timestep_spacing,
            mtd_guidance_scale=config.diffusion.guidance_scale,
            mardini_sampler=config.mardini.sampler,
            mardini_guidance=gen.mardini_guidance,
        ),  # fmt: skip
        rows=rows,
    )
    name = f"interpolation_{config.preset}_{jax.devices()[0].platform}"
    print(f"wrote {report.write_result(name, result, _OUT.value)}")


if __name__ == "__main__":
    parallel.initialize_distributed()
    cli.run(main)
