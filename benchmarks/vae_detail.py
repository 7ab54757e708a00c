"""Does the T-KLVAE keep the characters? Reconstruction error on character pixels vs scenery.

    python benchmarks/vae_detail.py --config=configs/demo.py --vae_workdir=runs/demo/vae
    python benchmarks/vae_detail.py --vae_bundle=checkpoints/demo/demo.json

The synthetic benchmark's characters are small sprites (4 px at 32 px), a few percent
of the pixels, and a VAE trained on pixel L1 can reach a low mean loss while drawing
none of them: every downstream model then learns videos without characters. This
measures it on held-out episodes (never trained on, indices from --first_episode),
rendered in memory from the renderer's own state: each frame's character pixels are
those where the frame differs from its shot's scenery. Clips of the VAE's frames per
call are reconstructed through the posterior mode (the whole clip at once, as the
T-KLVAE is used), and per set of pixels (all, character, scenery) we report the mean L1
in [-1, 1] units and the PSNR of uint8 frames; `character_recall` is the share of
character pixels whose reconstruction is nearer their true colour than the scenery
colour beneath them (0: the sprites are gone; 1: every sprite pixel is drawn).
Writes benchmarks/results/vae_detail_<preset>_<platform>.json (or --out).
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
from nuwa_jax.data import synthetic  # noqa: E402

_CONFIG = cli.define_config_flag("configs/demo.py")
_VAE_WORKDIR = flags.DEFINE_string("vae_workdir", None, "Trainer run of the T-KLVAE.")
_VAE_BUNDLE = flags.DEFINE_string("vae_bundle", None, "Hierarchy bundle whose VAE to measure.")
_RANDOM = flags.DEFINE_bool("random_weights", False, "The config's random initialisation.")
_CLIPS = flags.DEFINE_integer("clips", 16, "Held-out clips (those with characters on screen).")
_EPISODES = flags.DEFINE_integer("episodes", 2, "Held-out episodes the clips come from.")
_FIRST = flags.DEFINE_integer("first_episode", synthetic.HELD_OUT_FIRST_EPISODE,
                              "First held-out episode index.")  # fmt: skip
_FRAMES = flags.DEFINE_integer("episode_frames", 1024, "Frames simulated per episode.")
_SEED = flags.DEFINE_integer("seed", 0, "Clip positions.")
_OUT = flags.DEFINE_string("out", None, "Result JSON (default benchmarks/results/...).")


def frames_images(state: Any, frames: Any) -> Any:
    """(T, H, W, 3) uint8 frames of an episode's state, rendered in memory."""
    import numpy as np

    return np.stack([synthetic.render_frame(state, int(t)) for t in frames])


def scenery_images(state: Any, frames: Any) -> Any:
    """The same frames without characters: each frame's shot scenery."""
    import numpy as np

    res = state.resolution
    return np.stack([
        synthetic.render_background(state.shot_scenes[int(state.shot_id[t])], res,
                                    int(state.shot_variants[int(state.shot_id[t])]))
        for t in frames
    ])  # fmt: skip


def pixel_stats(recon: Any, truth: Any, scenery: Any, mask: Any) -> dict[str, Any]:
    """L1 / PSNR over all, character and scenery pixels, and the character recall.

    recon, truth, scenery: (N, H, W, 3) uint8; mask: (N, H, W) bool character pixels.
    """
    import numpy as np

    r, x, b = (a.astype(np.float64) for a in (recon, truth, scenery))
    l1 = np.abs(r - x).mean(-1) / 127.5  # per pixel, in [-1, 1] units
    se = ((r - x) ** 2).mean(-1)

    def part(sel: Any) -> dict[str, Any]:
        if not sel.any():
            return dict(pixels=0, l1=None, psnr=None)
        mse = float(se[sel].mean())
        psnr = math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)
        return dict(pixels=int(sel.sum()), l1=float(l1[sel].mean()), psnr=psnr)

    nearer = np.linalg.norm(r - x, axis=-1) < np.linalg.norm(r - b, axis=-1)
    return dict(
        all=part(np.ones_like(mask)),
        character=part(mask),
        scenery=part(~mask),
        character_recall=float(nearer[mask].mean()) if mask.any() else None,
    )


def main(argv: list[str]) -> None:
    del argv
    import jax
    import jax.numpy as jnp
    import numpy as np

    from nuwa_jax import video_io
    from nuwa_jax.data import latents

    given = [bool(_VAE_WORKDIR.value), bool(_VAE_BUNDLE.value), _RANDOM.value]
    if sum(given) != 1:
        raise SystemExit("error: give exactly one of --vae_workdir, --vae_bundle, --random_weights")
    config = _CONFIG.value
    mesh, rules = parallel.make_mesh(config.mesh), parallel.logical_rules(config)
    vae, info = latents.load_vae(
        config,
        mesh,
        rules,
        vae_workdir=_VAE_WORKDIR.value,
        vae_bundle=_VAE_BUNDLE.value,
        random_weights=_RANDOM.value,
    )
    L, res = int(config.hierarchy.frames_per_call), int(config.data.resolution)
    reconstruct = jax.jit(lambda v: vae(v)[0])  # the posterior mode, decoded

    rng = np.random.default_rng(_SEED.value)
    seed = config.data.synthetic_seed
    states = [
        synthetic.simulate_episode(seed, _FIRST.value + e, _FRAMES.value, res)
        for e in range(_EPISODES.value)
    ]
    recon, truth, scenery, masks, clips = [], [], [], [], []
    tries = 0
    while len(clips) < _CLIPS.value:
        tries += 1
        if tries > 100 * _CLIPS.value:
            raise SystemExit(f"error: found only {len(clips)} clips with characters on screen")
        e = int(rng.integers(len(states)))
        start = int(rng.integers(0, _FRAMES.value - L + 1))
        frames = np.arange(start, start + L)
        state = states[e]
        if not state.present[frames].any():
            continue  # nothing to keep: such a clip says nothing about characters
        images = frames_images(state, frames)
        video = jnp.asarray(images[None].astype(np.float32) / 127.5 - 1.0)
        recon.append(video_io.to_uint8(np.asarray(reconstruct(video))[0]))
        truth.append(images)
        scenery.append(scenery_images(state, frames))
        masks.append(np.any(images != scenery[-1], axis=-1))  # the characters' pixels
        clips.append([_FIRST.value + e, start])
    cat = lambda xs: np.concatenate(xs)  # noqa: E731
    stats = pixel_stats(cat(recon), cat(truth), cat(scenery), cat(masks))
    result = dict(
        benchmark="vae_detail",
        **report.environment(),
        config=config.preset,
        vae={k: v for k, v in info.items() if k != "config"},
        clip_frames=L,
        resolution=res,
        clips=clips,
        **stats,
    )
    ch = stats["character"]
    print(
        f"all L1 {stats['all']['l1']:.4f} ({stats['all']['psnr']:.2f} dB); character L1 "
        f"{ch['l1']:.4f} ({ch['psnr']:.2f} dB, {ch['pixels']} px); scenery L1 "
        f"{stats['scenery']['l1']:.4f}; character recall {stats['character_recall']:.3f}"
    )
    name = f"vae_detail_{config.preset}_{jax.devices()[0].platform}"
    print(f"wrote {report.write_result(name, result, _OUT.value)}")


if __name__ == "__main__":
    parallel.initialize_distributed()
    cli.run(main)
