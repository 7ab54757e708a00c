"""Does an MTD read its condition? The probes of configs/conditioning.py.

A local model that uses its given frames interpolates held-out clips far better with
their own ends than with another clip's; one that ignores them scores the same with
either (issue 17's finding on the first demo bundle: 11 dB vs 9-9.3 dB). A global model
has nothing but its prompts: the place its frames show must be the place their captions
name. `Setting` renders the training episodes, encodes them with the frozen demo T-KLVAE
and cuts held-out clips at the trained level's stride once; `probe` scores a trained
local run with the true and the wrong ends (`interpolation.compare(..., wrong_ends=
True)`), `scene_adherence` a global run's frames against their captions' places (the
renderer's own scene classifier, nuwa_jax.evaluate.adherence).
Used by benchmarks/conditioning.py (every variant) and tests/test_conditioning.py.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from nuwa_jax import parallel, video_io
from nuwa_jax.data import latents as latents_lib
from nuwa_jax.data import synthetic
from nuwa_jax.evaluate import interpolation
from nuwa_jax.evaluate.adherence import SceneClassifier, parse_caption
from nuwa_jax.hierarchy.generator import Generator, LatentStore
from nuwa_jax.hierarchy.models import HierarchyModels
from nuwa_jax.hierarchy.plan import HierarchyPlan
from nuwa_jax.models.text import make_tokenizer
from nuwa_jax.train import checkpoint as ckpt

HELD_OUT = 100_000  # first held-out episode index (training renders 0, 1, ...)


@dataclasses.dataclass
class Setting:
    """Training data, the frozen VAE and the held-out clips of one probe."""

    data_dir: str
    latents_dir: str
    vae: Any
    clips: interpolation.Clips
    mesh: Any
    rules: Any
    level: int

    @classmethod
    def prepare(
        cls,
        config: Any,
        work: str | os.PathLike,
        vae_bundle: str,
        *,
        train_episodes: int,
        held_out_episodes: int,
        clips: int,
        devices: list[jax.Device] | None = None,
    ) -> Setting:
        """Renders `train_episodes` synthetic episodes of 226 frames, their latent store
        (the VAE of `vae_bundle`) and `clips` clips of level train.level from
        `held_out_episodes` held-out episodes of 128 frames, in `work` (each kept there and
        reused when present)."""
        work = os.path.abspath(os.fspath(work))
        data_dir, latents_dir = os.path.join(work, "data"), os.path.join(work, "latents")
        side = config.data.resolution
        synthetic.write_benchmark(data_dir, episodes=train_episodes, frames=226, resolution=side)
        mesh, rules = parallel.make_mesh(config.mesh, devices), parallel.logical_rules(config)
        config = config.copy_and_resolve_references()
        config.data.data_dir = data_dir
        vae, info = latents_lib.load_vae(config, mesh, rules, vae_bundle=vae_bundle)
        if not os.path.exists(os.path.join(latents_dir, "metadata.json")):
            latents_lib.write_latent_store(config, latents_dir, vae, info, mesh=mesh, rules=rules)
        held_out, frames = os.path.join(work, "held_out"), 128
        synthetic.held_out_benchmark(
            held_out,
            episodes=held_out_episodes,
            first_episode=HELD_OUT,
            frames=frames,
            resolution=side,
        )
        h, level = config.hierarchy, config.train.level
        window = HierarchyPlan.full(h.frames_per_call, h.depth).window(level, 0)
        cut = interpolation.held_out_clips(
            held_out,
            window,
            clips,
            np.random.default_rng(0),
            first_episode=HELD_OUT,
            episodes=held_out_episodes,
            frames=frames,
        )
        return cls(data_dir, latents_dir, vae, cut, mesh, rules, level)

    def train_config(self, config: Any) -> Any:
        """`config` reading this setting's latent store."""
        config = config.copy_and_resolve_references()
        config.data.update(data_dir=self.data_dir, latents_dir=self.latents_dir)
        return config

    def generator(self, config: Any, run: str | os.PathLike | None) -> Generator:
        """A generator with the frozen VAE and, from `run`, the trained MTD of the level
        (random MTDs without a run: enough for the blends)."""
        models = HierarchyModels.create(config, self.mesh, self.rules)
        models.vae = self.vae
        if run is not None:
            ckpt.restore_ema(run, {"mtd": models.mtds[self.level], "text": models.text})
        return Generator(config, models, self.mesh, self.rules, make_tokenizer(config.text))

    def probe(
        self, config: Any, run: str | os.PathLike, references: Sequence[str] = ()
    ) -> dict[str, Any]:
        """interpolation.compare of the run's MTD with the true and the wrong ends:
        methods 'mtd' and 'mtd@wrong_ends', and `references` (e.g. 'latent_blend') on the
        same clips with the same generator (one set of models built, not one per call)."""
        gen = self.generator(config, run)
        methods = ["mtd", *references]
        return interpolation.compare(gen, self.clips, methods, self.level, wrong_ends=True)

    def reference(
        self, config: Any, methods: Sequence[str] = ("blend", "latent_blend", "vae")
    ) -> dict[str, Any]:
        """The baselines on the same clips: by default the pixel blend, the latent blend
        and the VAE ceiling."""
        gen = self.generator(config, None)
        return interpolation.compare(gen, self.clips, list(methods), self.level)

    def scene_adherence(
        self, config: Any, run: str | os.PathLike, shifts: Sequence[int] = (0,)
    ) -> list[float]:
        """For each shift, the share of the frames that a global run samples for the
        held-out clips (nothing given, one caption per frame) whose scenery is the place
        their caption names. Shift s: clip c takes the captions of clip c + s (the same
        noise, other words); 0 is each clip's own. One generator serves every shift."""
        gen = self.generator(config, run)
        clips = self.clips
        C, L = clips.truth.shape[:2]
        index = np.arange(C * L).reshape(C, L)
        shares = []
        for shift in shifts:
            captions = np.roll(np.array(clips.captions, object).reshape(C, L), -shift, axis=0)
            store = LatentStore(C * L, gen.latent_shape)
            gen.sample_segments(
                "probe",
                index,
                np.zeros((C, L), bool),
                store,
                0,
                level=0,
                progress=False,
                backbone="mtd",
                model_level=0,
                prompts=list(captions.reshape(-1)),
            )
            frames = [video_io.to_uint8(gen.decode(store.latents[i])) for i in index]
            frames = np.concatenate(frames)
            shown = SceneClassifier(frames.shape[1]).classify(frames)
            named = [parse_caption(c)[1] for c in captions.reshape(-1)]
            hits = [a == b for a, b in zip(shown, named, strict=True) if b is not None]
            shares.append(float(np.mean(hits)) if hits else float("nan"))
        return shares
