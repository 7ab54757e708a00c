"""Samples during training (train.sample_every): images in TensorBoard, PNGs in workdir/samples.

The subject is one clip, the first example of the run's first batch (kept on device,
replicated), so successive samples show the same clip; the networks are the EMA weights.

- 'vae': `filmstrip`, the clip's frames (top row) above their T-KLVAE reconstructions
  (posterior mode, bottom row).
- 'mtd': a clip of the trained level sampled by `hierarchy.generator.sample_level` (the
  generator's own sampling, classifier-free guidance included) from the clip's prompts and
  its given frames (cond_mask: none at the global level, first and last at a local one),
  with `train.sample_steps` reverse steps (0: diffusion.num_sampling_steps) and a fixed
  noise key; decoded by the frozen VAE. `filmstrip`: the data clip (top) above the sample
  (bottom); `keyframes`: the sampled frames as a contact sheet.
- 'mardini': the clip's middle frames interpolated from its first and last
  (`hierarchy.generator.sample_mardini_level`: plan, then the generator's reverse steps with
  v-prediction and mardini.guidance.interpolation), decoded; the same two images.

The sampling function is jitted once per run (same shapes every time). PNGs are written
atomically (`video_io`) by process 0 as `samples/<step>_<name>.png`.
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from nuwa_jax import tasks, video_io
from nuwa_jax.hierarchy.generator import (
    mardini_diffusion_config,
    sample_level,
    sample_mardini_level,
)

SAMPLES_DIR = "samples"
SAMPLE_KEYS = ("video", "tokens", "cond_mask")
_NOISE_SALT = 0x5A3D1E  # folded into key(seed): the sample noise, fixed for the whole run


def _host(x: jax.Array) -> np.ndarray:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


class Sampler:
    """Makes and writes the samples of one run (see the module docstring).

    train_step: the run's `trainer.TrainStep` (its `modules(params)` rebuilds the
    networks); batch: a global batch with SAMPLE_KEYS, whose first example is kept.
    """

    def __init__(self, config: Any, train_step: Any, batch: dict, tokenizer: Any, mesh: Any):
        self.model = config.train.model
        self.frames_per_call = config.hierarchy.frames_per_call
        if self.model == "mardini":  # the run's clips (its stage's, curriculum.resolve)
            self.frames_per_call = batch["video"].shape[1]
        self.traces = 0  # times the sampling function was traced (once per run)
        replicated = NamedSharding(mesh, PartitionSpec())
        clip = {k: batch[k] for k in SAMPLE_KEYS}
        self.clip = jax.jit(lambda b: jax.tree.map(lambda x: x[:1], b), out_shardings=replicated)(
            clip
        )
        dcfg = ml_collections.ConfigDict(config.diffusion.to_dict())
        if config.train.sample_steps > 0:
            dcfg.num_sampling_steps = int(config.train.sample_steps)
        null = jnp.asarray(np.asarray(tokenizer([""]))[0])
        level_id = train_step.level_id
        seed = config.seed
        if self.model == "mardini":
            mcfg = mardini_diffusion_config(config, config.mardini.guidance.interpolation)
            mcfg.num_sampling_steps = dcfg.num_sampling_steps
            kept = jnp.asarray(tasks.interpolation(self.frames_per_call))[None]

        def run(params, frozen_state, clip):
            self.traces += 1
            nets = train_step.modules(params, frozen_state)
            vae, video = nets["vae"], clip["video"]
            if self.model == "vae":
                recon, _ = vae(video)
                return video, jnp.clip(recon, -1.0, 1.0)
            latents = vae.encode_to_latents(video)
            keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), _NOISE_SALT), 1)
            if self.model == "mardini":
                known = jnp.where(kept[:, :, None, None, None], latents, 0)
                z = sample_mardini_level(nets["mardini"], known, kept, keys, mcfg)
                return video, jnp.clip(vae.decode_latents(z), -1.0, 1.0)
            levels = None if level_id is None else jnp.full((1,), level_id, jnp.int32)
            z = sample_level(nets["mtd"], nets["text"], clip["tokens"], latents,
                             clip["cond_mask"], keys, null, dcfg, levels)  # fmt: skip
            return video, jnp.clip(vae.decode_latents(z), -1.0, 1.0)

        self._run = jax.jit(run, out_shardings=(replicated, replicated))
        self._frozen_state = train_step.frozen_state

    def images(self, params: Any) -> dict[str, tuple[np.ndarray, int]]:
        """{name: (frames (N, H, W, 3) in [-1, 1], grid columns)} of the networks with
        `params` (e.g. the EMA)."""
        real, made = (_host(x)[0] for x in self._run(params, self._frozen_state, self.clip))
        L = self.frames_per_call
        out = {"filmstrip": (np.concatenate([real, made]), L)}
        if self.model in ("mtd", "mardini"):
            out["keyframes"] = (made, math.ceil(math.sqrt(L)))
        return out

    def write(self, step: int, params: Any, writer: Any, workdir: str) -> dict[str, str]:
        """Logs the images at `step` and writes them as PNGs (process 0); returns the paths."""
        images = self.images(params)
        grids = {f"samples/{k}": video_io.grid(f, c)[None] for k, (f, c) in images.items()}
        writer.write_images(step, grids)
        paths = {k: os.path.join(workdir, SAMPLES_DIR, f"{step:08d}_{k}.png") for k in images}
        if jax.process_index() == 0:
            for k, (frames, columns) in images.items():
                video_io.write_contact_sheet(paths[k], frames, columns)  # the same grid
        return paths
