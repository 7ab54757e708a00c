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
_GLOBAL = flags.DEFINE_bool(
    "global_level", False, "Train the global model: scene adherence, not interpolation."
)
_CLIPS = flags.DEFINE_integer("clips", 32, "Held-out clips.")
_WORK = flags.DEFINE_string("work", "runs/conditioning", "Data and runs (reused on rerun).")
_OUT = flags.DEFINE_string("out", None, "Result JSON (default benchmarks/results/...).")

TRAIN_EPISODES, HELD_OUT_EPISODES = 32, 16


def main(argv: list[str]) -> None:
    del argv
    import jax

    from nuwa_jax.evaluate.conditioning import HELD_OUT, Setting
    from nuwa_jax.train import train

    unknown = set(_VARIANTS.value) - set(conditioning.VARIANTS)
    if unknown:
        raise SystemExit(
            f"error: --variants: unknown {sorted(unknown)}; {list(conditioning.VARIANTS)}"
        )
    devices = jax.devices()[:1]  # the runs are about learning, not sharding
    suffix = ":global" if _GLOBAL.value else ""
    base = conditioning.get_config("paper" + suffix)
    setting = Setting.prepare(
        base,
        _WORK.value,
        DEMO_BUNDLE,
        train_episodes=TRAIN_EPISODES,
        held_out_episodes=HELD_OUT_EPISODES,
        clips=_CLIPS.value,
        devices=devices,
    )

    def line(name: str, r: dict[str, Any]) -> str:
        return f"{name} {r['psnr_pooled']:.2f} dB"

    reference = {} if _GLOBAL.value else setting.reference(base)["methods"]
    print(", ".join(line(m, r) for m, r in reference.items()), flush=True)
    rows = []
    for name in _VARIANTS.value:
        cfg = setting.train_config(conditioning.get_config(name + suffix))
        cfg.train.update(
            num_steps=_STEPS.value,
            checkpoint_every=_STEPS.value,
            warmup_steps=min(cfg.train.warmup_steps, _STEPS.value // 4),
        )
        run = os.path.join(os.path.abspath(_WORK.value), f"{name}{suffix[1:]}_{_STEPS.value}")
        start = time.perf_counter()
        train(cfg, run, devices=devices)
        seconds = time.perf_counter() - start
        row = dict(
            variant=name + suffix,
            recipe=conditioning.VARIANTS[name],
            steps=_STEPS.value,
            train_seconds=round(seconds, 1),
        )
        if _GLOBAL.value:
            own, other = setting.scene_adherence(cfg, run, shifts=(0, 1))
            row.update(scene_adherence=own, scene_adherence_other_captions=other)
            print(
                f"{name}: scene adherence {own:.2f} (own captions), {other:.2f} (another clip's)",
                flush=True,
            )
        else:
            row.update(setting.probe(cfg, run))
            true, wrong = row["methods"]["mtd"], row["methods"]["mtd@wrong_ends"]
            print(
                f"{name}: {line('true ends', true)}, {line('wrong ends', wrong)}, "
                f"gap {true['psnr_pooled'] - wrong['psnr_pooled']:.2f} dB",
                flush=True,
            )
        rows.append(row)

    clips = setting.clips
    result = dict(
        benchmark="conditioning",
        **report.environment(),
        setting=dict(
            config="configs/conditioning.py",
            level=setting.level,
            stride=clips.stride,
            frames_per_call=base.hierarchy.frames_per_call,
            clips=len(clips.truth),
            moving_clips=int(clips.moving.sum()),
            train_episodes=TRAIN_EPISODES,
            held_out_episodes=[HELD_OUT, HELD_OUT + HELD_OUT_EPISODES - 1],
            sampler=f"{base.diffusion.num_sampling_steps} DDIM steps, guidance "
            f"{base.diffusion.guidance_scale}",
            vae=os.path.relpath(DEMO_BUNDLE, REPO),
        ),
        reference=reference,
        rows=rows,
    )
    name = f"conditioning{'_global' if _GLOBAL.value else ''}_{jax.devices()[0].platform}"
    print(f"wrote {report.write_result(name, result, _OUT.value)}")


if __name__ == "__main__":
    cli.run(main)
