"""The conditioning ablation: which diffusion recipe makes a local MTD read its given frames.

    python benchmarks/conditioning.py --variants=paper,v_clean,recipe --steps=600 \\
        --work=runs/conditioning

Each variant of configs/conditioning.py (a tiny local MTD at stride 4 on the frozen demo
T-KLVAE's latents) trains `--steps` steps on one device from the same data and seed, then
interpolates the same held-out clips twice: with their own ends and with another clip's
(`nuwa_jax.evaluate.interpolation`, `wrong_ends`). A model that reads its given frames
scores far better with the true ends. The pixel blend, the latent blend of the encoded
ends and the VAE ceiling are scored once, for reference. Training data (32 synthetic
episodes of 226 frames at 32 px) and each variant's run are kept in --work: a rerun
resumes or skips them. Writes benchmarks/results/conditioning_<platform>.json (or --out).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import report  # noqa: E402
from configs import conditioning  # noqa: E402
from nuwa_jax import cli  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_BUNDLE = os.path.join(REPO, "checkpoints", "demo", "demo.json")

_VARIANTS = flags.DEFINE_list("variants", list(conditioning.VARIANTS), "Which variants.")
_STEPS = flags.DEFINE_integer("steps", 600, "Training steps per variant.")
_CLIPS = flags.DEFINE_integer("clips", 32, "Held-out clips.")
_WORK = flags.DEFINE_string("work", "runs/conditioning", "Data and runs (reused on rerun).")
_OUT = flags.DEFINE_string("out", None, "Result JSON (default benchmarks/results/...).")

TRAIN_EPISODES, TRAIN_FRAMES = 32, 226
HELD_OUT, HELD_OUT_EPISODES, HELD_OUT_FRAMES = 100_000, 16, 128


def main(argv: list[str]) -> None:
    del argv
    import jax
    import numpy as np

    from nuwa_jax import parallel
    from nuwa_jax.data import latents as latents_lib
    from nuwa_jax.data import synthetic
    from nuwa_jax.evaluate import interpolation
    from nuwa_jax.hierarchy import HierarchyPlan
    from nuwa_jax.hierarchy.generator import Generator
    from nuwa_jax.hierarchy.models import HierarchyModels
    from nuwa_jax.models.text import make_tokenizer
    from nuwa_jax.train import checkpoint as ckpt
    from nuwa_jax.train import train

    unknown = set(_VARIANTS.value) - set(conditioning.VARIANTS)
    if unknown:
        raise SystemExit(
            f"error: --variants: unknown {sorted(unknown)}; {list(conditioning.VARIANTS)}"
        )
    work = os.path.abspath(_WORK.value)
    devices = jax.devices()[:1]  # the runs are about learning, not sharding
    base = conditioning.get_config("paper")
    data_dir, latents_dir = os.path.join(work, "data"), os.path.join(work, "latents")
    synthetic.write_benchmark(data_dir, episodes=TRAIN_EPISODES, frames=TRAIN_FRAMES,
                              resolution=base.data.resolution)  # fmt: skip
    mesh, rules = parallel.make_mesh(base.mesh, devices), parallel.logical_rules(base)
    base.data.data_dir = data_dir
    vae, info = latents_lib.load_vae(base, mesh, rules, vae_bundle=DEMO_BUNDLE)
    if not os.path.exists(os.path.join(latents_dir, "metadata.json")):
        latents_lib.write_latent_store(base, latents_dir, vae, info, mesh=mesh, rules=rules)
    held_out = os.path.join(work, "held_out")
    synthetic.held_out_benchmark(held_out, episodes=HELD_OUT_EPISODES, first_episode=HELD_OUT,
                                 frames=HELD_OUT_FRAMES,
                                 resolution=base.data.resolution)  # fmt: skip
    level = base.train.level
    window = HierarchyPlan.full(base.hierarchy.frames_per_call, base.hierarchy.depth).window(
        level, 0
    )
    clips = interpolation.held_out_clips(held_out, window, _CLIPS.value, np.random.default_rng(0),
                                         first_episode=HELD_OUT, episodes=HELD_OUT_EPISODES,
                                         frames=HELD_OUT_FRAMES)  # fmt: skip

    def generator_of(cfg: Any, run: str | None) -> Generator:
        models = HierarchyModels.create(cfg, mesh, rules)
        models.vae = vae
        if run is not None:
            ckpt.restore_ema(run, {"mtd": models.mtds[level], "text": models.text})
        return Generator(cfg, models, mesh, rules, make_tokenizer(cfg.text))

    def line(name: str, r: dict[str, Any]) -> str:
        return f"{name} {r['psnr_pooled']:.2f} dB"

    reference = interpolation.compare(generator_of(base, None), clips,
                                      ["blend", "latent_blend", "vae"], level)  # fmt: skip
    print(", ".join(line(m, r) for m, r in reference["methods"].items()), flush=True)
    rows = []
    for name in _VARIANTS.value:
        cfg = conditioning.get_config(name)
        cfg.data.update(data_dir=data_dir, latents_dir=latents_dir)
        cfg.train.update(num_steps=_STEPS.value, checkpoint_every=_STEPS.value,
                         warmup_steps=min(cfg.train.warmup_steps, _STEPS.value // 4))  # fmt: skip
        run = os.path.join(work, f"{name}_{_STEPS.value}")
        start = time.perf_counter()
        train(cfg, run, devices=devices)
        seconds = time.perf_counter() - start
        result = interpolation.compare(generator_of(cfg, run), clips, ["mtd"], level,
                                       wrong_ends=True)  # fmt: skip
        true, wrong = result["methods"]["mtd"], result["methods"]["mtd@wrong_ends"]
        rows.append(dict(variant=name, recipe=conditioning.VARIANTS[name], steps=_STEPS.value,
                         train_seconds=round(seconds, 1), **result))  # fmt: skip
        print(f"{name}: {line('true ends', true)}, {line('wrong ends', wrong)}, "
              f"gap {true['psnr_pooled'] - wrong['psnr_pooled']:.2f} dB", flush=True)  # fmt: skip

    result = dict(
        benchmark="conditioning",
        **report.environment(),
        setting=dict(
            config="configs/conditioning.py",
            level=level,
            stride=int(window[1] - window[0]),
            frames_per_call=base.hierarchy.frames_per_call,
            clips=len(clips.truth),
            moving_clips=int(clips.moving.sum()),
            train_episodes=TRAIN_EPISODES,
            held_out_episodes=[HELD_OUT, HELD_OUT + HELD_OUT_EPISODES - 1],
            sampler=f"{base.diffusion.num_sampling_steps} DDIM steps, guidance 1",
            vae=DEMO_BUNDLE,
        ),  # fmt: skip
        reference=reference["methods"],
        rows=rows,
    )
    name = f"conditioning_{jax.devices()[0].platform}"
    print(f"wrote {report.write_result(name, result, _OUT.value)}")


if __name__ == "__main__":
    cli.run(main)
