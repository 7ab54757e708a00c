"""Interpolation on held-out clips: MarDini vs the local MTD vs a linear blend, in PSNR.

    python benchmarks/interpolation.py --checkpoint=runs/demo/demo_mardini \\
        --clips=64 --levels=1,2 --work=runs/interpolation

The task of every local level of Diffusion over Diffusion: given two frames s_{j-1}
apart, make the L-2 frames between them at stride s_j. Held out: clips of level j (L
frames at its stride) at random positions in benchmark episodes never trained on
(indices from --first_episode, rendered once into <work>/reference). For each clip the
two end frames are encoded by the bundle's VAE (posterior mode, each frame on its own, so
nothing of the middle frames leaks in) and given; then
- `mtd`: the hierarchy's local MTD for level j (the clip's true captions as prompts,
  classifier-free guidance as configured), sampled as a local level samples its segments;
- `mardini`: MarDini planning from the two ends, then its sampler with
  mardini.guidance.interpolation (what MarDini locals of the hierarchy do);
- `blend`: (1 - a) x_first + a x_last in pixel space, a = i / (L - 1);
- `vae`: decode(encode(clip)), the whole true clip through the VAE: the ceiling of any
  latent model, not an interpolation.
Generated frames are decoded, rounded to uint8 and compared with the true middle frames:
the PSNR of the MSE pooled over all clips (the headline), and the mean PSNR over clips
(with its standard error) of the clips not reproduced exactly (`exact_clips` counts those:
a blend of a clip where nothing moves is exact).
Writes benchmarks/results/interpolation_<preset>_<platform>.json (or --out).
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import report  # noqa: E402
from nuwa_jax import cli, parallel  # noqa: E402

_CONFIG = cli.define_config_flag("configs/demo.py")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Bundle with the local MTD and MarDini.")
_RANDOM = flags.DEFINE_bool("random_weights", False, "The config's random initialisation.")
_METHODS = flags.DEFINE_list("methods", ["mtd", "mardini", "blend", "vae"], "What to compare.")
_LEVELS = flags.DEFINE_list("levels", None, "Local levels (default: every local level).")
_CLIPS = flags.DEFINE_integer("clips", 32, "Held-out clips per level.")
_EPISODES = flags.DEFINE_integer("episodes", 4, "Held-out episodes the clips come from.")
_FIRST = flags.DEFINE_integer("first_episode", 100_000, "First held-out episode index.")
_SEED = flags.DEFINE_integer("seed", 0, "Clip positions and sampling noise.")
_WORK = flags.DEFINE_string("work", "runs/interpolation", "Where the reference is rendered.")
_OUT = flags.DEFINE_string("out", None, "Result JSON (default benchmarks/results/...).")

METHODS = ("mtd", "mardini", "blend", "vae")


def psnr(mse: float) -> float:
    """PSNR in dB of uint8 images from their mean squared error."""
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def summarise(per_clip_mse: list[float]) -> dict[str, Any]:
    import numpy as np

    values = np.array([psnr(m) for m in per_clip_mse])
    finite = values[np.isfinite(values)]
    return dict(
        psnr_mean=float(finite.mean()) if len(finite) else None,
        psnr_stderr=float(finite.std(ddof=1) / math.sqrt(len(finite))) if len(finite) > 1 else None,
        psnr_pooled=psnr(float(np.mean(per_clip_mse))),  # the headline: no clip is dropped
        clips=len(per_clip_mse),
        exact_clips=int(np.sum(~np.isfinite(values))),  # MSE 0 (e.g. a blend of a still clip)
    )


def main(argv: list[str]) -> None:
    del argv
    import jax
    import numpy as np

    from nuwa_jax import render, video_io
    from nuwa_jax.data import schema, synthetic
    from nuwa_jax.hierarchy import HierarchyPlan, bundle
    from nuwa_jax.hierarchy.generator import LatentStore

    methods = list(_METHODS.value)
    if set(methods) - set(METHODS):
        raise SystemExit(f"error: --methods: unknown {sorted(set(methods) - set(METHODS))}")
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
    store = schema.FrameStore(root)
    rng = np.random.default_rng(_SEED.value)
    rows = []
    for j in levels:
        window = plan.window(j, 0)
        episodes = rng.integers(_FIRST.value, _FIRST.value + _EPISODES.value, _CLIPS.value)
        starts = rng.integers(0, frames - int(window[-1]), _CLIPS.value)
        truth, captions = [], []
        for e, s in zip(episodes, starts):
            got = store.read_frames(synthetic.episode_id(int(e)), window + int(s))
            truth.append(np.stack(got.images))
            captions += list(got.captions)
        truth = np.stack(truth)  # (C, L, H, W, 3) uint8
        C = len(truth)
        index = np.arange(C * L).reshape(C, L)  # each clip's frames in one latent store
        cond = np.zeros((C, L), bool)
        cond[:, 0] = cond[:, -1] = True
        given = LatentStore(C * L, gen.latent_shape)
        ends = np.stack([gen.encode(truth[c, [i]])[0] for c in range(C) for i in (0, L - 1)])
        given.put(index[:, [0, -1]], np.ones((C, 2), bool), ends.reshape(C, 2, *ends.shape[1:]))
        middle = truth[:, 1:-1].astype(np.float64)
        row: dict[str, Any] = dict(level=j, stride=plan.stride(j), clips=C, methods={})
        row["clip_starts"] = [[int(e), int(s)] for e, s in zip(episodes, starts)]  # episode, frame
        for method in methods:
            if method == "blend":
                a = (np.arange(1, L - 1) / (L - 1))[None, :, None, None, None]
                out = np.round((1 - a) * truth[:, :1] + a * truth[:, -1:])
            elif method == "vae":
                out = np.stack([video_io.to_uint8(gen.decode(gen.encode(truth[c])))
                                for c in range(C)])[:, 1:-1]  # fmt: skip
            else:
                st = LatentStore(C * L, gen.latent_shape)
                st.latents[:], st.done[:] = given.latents, given.done
                timing = gen.sample_segments(method, index, cond, st, _SEED.value, level=j,
                                             progress=False, backbone=method, model_level=j,
                                             prompts=captions)  # fmt: skip
                out = np.stack([video_io.to_uint8(gen.decode(st.latents[index[c]]))
                                for c in range(C)])[:, 1:-1]  # fmt: skip
                row.setdefault("seconds", {})[method] = timing.seconds
            mse = ((out.astype(np.float64) - middle) ** 2).reshape(C, -1).mean(axis=1)
            row["methods"][method] = summarise(mse.tolist())
        rows.append(row)
        line = ", ".join(f"{m} {r['psnr_pooled']:.2f} dB" for m, r in row["methods"].items())
        print(f"level {j} (stride {row['stride']}, {C} clips): {line}", flush=True)

    result = dict(
        benchmark="interpolation",
        **report.environment(),
        config=config.preset,
        weights=bundle.weights_report(built.manifest),
        held_out_episodes=[_FIRST.value, _FIRST.value + _EPISODES.value - 1],
        sampler=dict(
            name=config.diffusion.sampler,
            steps=config.diffusion.num_sampling_steps,
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
