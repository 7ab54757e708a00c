"""The training loop: one flat, readable function, big_vision style.

    python -m nuwa_jax.train --config=configs/tiny.py --workdir=/tmp/run \\
        --config.train.model=mtd --config.train.level=1

`train.model` 'vae' trains the T-KLVAE; 'mtd' trains the MTD of `train.level` on that
level's windows (frozen VAE; the byte text encoder trains with it when
text.trainable); 'mardini' trains MarDini at curriculum stage `train.mardini_stage` on
clips of consecutive frames or the hierarchy's local-level windows (mardini.train_levels;
frozen VAE; nuwa_jax.train.curriculum). `train.init_from`
starts a fresh run from another run's newest params (e.g. the previous stage's) or from a
hierarchy bundle's weights of the networks it trains (continuing a shipped bundle).
An 'mtd' run first checks that text.max_length holds every caption of its store whole
(`check_text_context`: refused otherwise, unless text.allow_truncation, which counts and
reports the cut captions in text_context.json).
A workdir belongs to one run (process 0 holds workdir/train.lock, `workdir_lock`: a second
live trainer on it is refused, naming the holder). A rerun in the same workdir resumes
from the newest checkpoint (refused when the config differs from the saved one in a field
that matters, `resume_fields`, unless train.allow_config_change; metrics.jsonl loses the
lines past the resumed step, so it never repeats a step);
SIGTERM saves at the next step boundary and exits 0; a NaN / Inf loss or gradient
(checked at each log, checkpoint and sample step, the only steps where the host waits for
the device) stops the run with an error naming the step, leaving the last good
checkpoint intact.
Every `train.sample_every` steps the EMA weights make samples (nuwa_jax.train.samples);
`train.profile_steps` > 0 traces steps into workdir (clu Profile, process 0). The jitted
step itself is built by `make_train_step` (benchmarks/train_step.py times exactly it).
Multi-host: every process runs this same loop; only process 0 writes metrics.jsonl,
samples and profiles, all take part in checkpoints, and a SIGTERM on any one of them
stops all at the same step.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from nuwa_jax import diffusion, parallel, workdir_lock
from nuwa_jax.data import captions, pipeline, schema, synthetic
from nuwa_jax.hierarchy import bundle
from nuwa_jax.hierarchy.models import (
    MARDINI_SEED_OFFSET,
    check_hierarchy,
    check_mardini,
    vae_class,
)
from nuwa_jax.models.discriminator import PatchDiscriminator
from nuwa_jax.models.mardini import MarDini
from nuwa_jax.models.mtd import MTD
from nuwa_jax.models.text import TextEncoder, make_tokenizer
from nuwa_jax.train import checkpoint as ckpt
from nuwa_jax.train import curriculum, losses, metric_log, samples
from nuwa_jax.train import state as state_lib

MODELS = ("vae", "mtd", "mardini")
# 'video', or 'latent_mean' + 'latent_logvar' when reading a latent store (data.latents_dir).
# 'level': each window's hierarchy level (a shared local MTD is told it per example).
BATCH_KEYS = (
    "video",
    "latent_mean",
    "latent_logvar",
    "tokens",
    "cond_mask",
    "level",
    "bad_records",
)
METRICS_FILE = "metrics.jsonl"
INIT_FROM_FILE = "init_from.json"  # what train.init_from gave the run (read by export)
TEXT_CONTEXT_FILE = "text_context.json"  # the store's captions against text.max_length
# Written (atomically, process 0) when a run has trained all train.num_steps and saved its
# final checkpoint; removed when a run starts that has steps left. Sweeps skip such points.
FINISHED_FILE = "finished.json"


class NonFiniteError(FloatingPointError):
    """The loss or the gradient norm of a step was NaN or Inf."""


def check_config(config: Any) -> None:
    """Clear errors for train-section values that cannot work."""
    t = config.train
    if t.model not in MODELS:
        raise ValueError(f"train.model={t.model!r} must be one of {MODELS}")
    if t.model == "mtd" and not 0 <= t.level < config.hierarchy.depth:
        raise ValueError(
            f"train.level={t.level} is not a level of hierarchy.depth={config.hierarchy.depth}"
        )
    if config.data.latents_dir and t.model == "vae":
        raise ValueError(
            f"data.latents_dir={config.data.latents_dir!r} holds latents: train.model="
            f"{t.model!r} needs video frames (only 'mtd' and 'mardini' train from a latent "
            "store)"
        )
    if t.model == "mardini":
        _check_mardini_config(config)
    dc = config.diffusion
    ztsnr = bool(dc.get("zero_terminal_snr", False))
    if t.model == "mtd":
        diffusion.check_given_frames(dc.given_frames)
        diffusion.check_prediction_schedule(dc.prediction, ztsnr, "diffusion.prediction")
    if t.model == "mardini":
        diffusion.check_prediction_schedule(config.mardini.prediction, ztsnr, "mardini.prediction")
    d = config.data
    if d.source == "synthetic" and d.synthetic_episodes > synthetic.HELD_OUT_FIRST_EPISODE:
        raise ValueError(
            f"data.synthetic_episodes={d.synthetic_episodes} would train on held-out episodes "
            f"(evaluation's start at {synthetic.HELD_OUT_FIRST_EPISODE})"
        )
    if t.hard_pixel_weight < 0 or not 0 < t.hard_pixel_fraction <= 1:
        raise ValueError(
            f"train.hard_pixel_weight={t.hard_pixel_weight} must be >= 0 and "
            f"train.hard_pixel_fraction={t.hard_pixel_fraction} in (0, 1]"
        )
    if config.data.latents_dir and t.sample_every > 0:
        raise ValueError(
            "train.sample_every > 0 samples from video clips; with data.latents_dir set it to 0"
        )
    losses.check_vae_loss_terms(config)  # LPIPS file, discriminator depth
    state_lib.learning_rate_schedule(t)  # checks num_steps > warmup_steps


def _check_mardini_config(config: Any) -> None:
    """train.model='mardini': the stage, the task masks, the latents MarDini reads."""
    s = curriculum.stage(config)
    check_mardini(config, hierarchy=False)  # mardini.latent_channels == vae.latent_channels
    curriculum.trains_local_levels(config, s)  # mardini.train_levels
    curriculum.task_masks(config.mardini.train_tasks, s.num_frames)
    if not 0.0 <= float(config.mardini.task_share) <= 1.0:
        raise ValueError(f"mardini.task_share={config.mardini.task_share} must be in [0, 1]")
    if config.data.latents_dir and s.resolution != config.data.resolution:
        raise ValueError(
            f"mardini.curriculum.{s.name}.resolution={s.resolution}: a latent store "
            f"(data.latents_dir) holds latents of data.resolution={config.data.resolution} "
            "px frames only"
        )


def ensure_data(config: Any) -> None:
    """data.source='synthetic': renders the benchmark into data.data_dir if it is empty."""
    d = config.data
    if d.latents_dir:  # a latent store replaces the frame store (nuwa_jax.data.latents)
        if not os.path.exists(os.path.join(d.latents_dir, "metadata.json")):
            raise schema.DataError(f"{d.latents_dir}: no metadata.json (data.latents_dir)")
        return
    if not d.data_dir:
        raise ValueError("data.data_dir is empty: give the frame store directory")
    metadata = os.path.join(d.data_dir, "metadata.json")
    if d.source == "synthetic":
        # Every process takes part in the barrier: one that starts late may already see
        # the metadata that process 0 wrote, and must not skip the sync process 0 waits in.
        if jax.process_index() == 0 and not os.path.exists(metadata):
            synthetic.write_benchmark(
                d.data_dir,
                episodes=d.synthetic_episodes,
                frames=d.synthetic_frames,
                resolution=d.resolution,
                seed=d.synthetic_seed,
                fps=d.fps,
                image_format=d.image_format,
                frames_per_shard=d.frames_per_shard,
                index_every=d.index_every,
            )
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("nuwa_jax.train.ensure_data")
    if not os.path.exists(metadata):
        raise schema.DataError(f"{d.data_dir}: no metadata.json (data.source={d.source!r})")
    if d.source == "synthetic":
        stale = synthetic_store_differences(schema.load_metadata(d.data_dir), config)
        if stale:
            logging.warning(
                "%s already holds a synthetic benchmark other than the config's (%s); it is "
                "trained on as it is. Render the config's into a fresh data.data_dir, or set "
                "data.synthetic_* to what the store holds", d.data_dir, "; ".join(stale),
            )  # fmt: skip


def synthetic_store_differences(metadata: schema.DatasetMetadata, config: Any) -> list[str]:
    """'key: store X, config Y' for each way a rendered synthetic store differs from what
    config.data would render (episodes, frames, seed, resolution); [] when it matches or
    the store is not the synthetic benchmark."""
    extra, d = metadata.extra, config.data
    if extra.get("generator") != "nuwa_jax.data.synthetic":
        return []
    frames = sorted({ep.num_frames for ep in metadata.episodes})
    have = dict(
        synthetic_episodes=len(metadata.episodes),
        synthetic_frames=frames[0] if len(frames) == 1 else frames,
        synthetic_seed=extra.get("seed"),
        resolution=extra.get("resolution"),
        first_episode=extra.get("first_episode", 0),
    )
    want = dict(
        synthetic_episodes=int(d.synthetic_episodes),
        synthetic_frames=int(d.synthetic_frames),
        synthetic_seed=int(d.synthetic_seed),
        resolution=int(d.resolution),
        first_episode=0,
    )
    return [f"{k}: store {have[k]}, config {want[k]}" for k in want if have[k] != want[k]]


def check_text_context(
    config: Any, tokenizer: Any, workdir: str | os.PathLike | None = None
) -> captions.ContextReport:
    """The training store's captions (data.latents_dir, else data.data_dir) against the
    text context, counted with the run's tokenizer (nuwa_jax.data.captions).

    A text.max_length that cuts any caption raises captions.TextContextError naming the
    store, the longest caption's tokens and the field, unless text.allow_truncation; then
    the cut captions are logged. Process 0 writes the report to `workdir`/TEXT_CONTEXT_FILE.
    """
    d = config.data
    root = d.latents_dir or d.data_dir
    report = captions.check_context(
        root, tokenizer.count, config.text.max_length, allow=config.text.allow_truncation
    )
    if report.source == captions.SOURCE_SCAN:
        logging.info("%s: captions read from %s; add the summary once with python -m "
                     "nuwa_jax.data.captions %s", root, report.source, root)  # fmt: skip
    if report.cut_frames:
        logging.warning("text.allow_truncation=True: %s", report.describe())
    else:
        logging.info("text context: %d tokens hold every caption of %s (longest %d tokens)",
                     report.max_length, root, report.longest_tokens)  # fmt: skip
    if workdir is not None and jax.process_index() == 0:
        data = (json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n").encode()
        schema.atomic_write_bytes(os.path.join(os.fspath(workdir), TEXT_CONTEXT_FILE), data)
    return report


def local_levels(config: Any) -> list[int]:
    """The hierarchy's local levels 1..depth-1, whose windows one model trained for every
    local level reads mixed (a shared local MTD, MarDini with mardini.train_levels='local')."""
    return list(range(1, config.hierarchy.depth))


def shares_local_model(config: Any) -> bool:
    """Whether an 'mtd' run trains the one local MTD shared by every local level
    (hierarchy.share_local_models, train.level >= 1): it then trains on the windows of all
    local levels, each told its level through the level embedding."""
    h = config.hierarchy
    return bool(h.share_local_models and h.depth > 1 and config.train.level > 0)


def build_models(config: Any, mesh, rules) -> tuple[dict, dict, int | None]:
    """(trained modules, frozen modules, level-embedding id) for train.model, sharded.

    Only the networks the run needs are built, with the seeds HierarchyModels.create
    gives them (text: seed, VAE: seed + 1, MTD of level j: seed + 2 + j, or seed + 3
    for a shared local MTD, MarDini: seed + MARDINI_SEED_OFFSET), so trained pieces drop
    into a hierarchy unchanged. MarDini has no text conditioning (no text encoder).
    """
    check_hierarchy(config)
    t, seed = config.train, config.seed
    make = lambda ctor, s: parallel.create_sharded_model(ctor, mesh, rules, s)  # noqa: E731
    network = lambda cls, section, s: parallel.create_network(  # noqa: E731
        cls, (section, config.compute), mesh, rules, s
    )
    vae = network(vae_class(config), config.vae, seed + 1)
    if config.vae.pretrained_dir:
        from nuwa_jax.convert import common as convert_common
        from nuwa_jax.convert import vae as convert_vae

        path = os.path.join(config.vae.pretrained_dir, convert_vae.WEIGHTS_FILE)
        convert_vae.import_vae_weights(vae, convert_common.load_safetensors(path), source=path)
        vae = parallel.reshard_model(vae, mesh, rules)
    if t.model == "vae":
        trained, frozen = {"vae": vae}, {}
        if float(t.adversarial_weight) > 0:  # trained from scratch; seed + 1000: not a level
            trained["discriminator"] = make(
                lambda r: PatchDiscriminator(
                    config.compute,
                    channels=t.discriminator_channels,
                    n_layers=t.discriminator_layers,
                    rngs=r,
                ),
                seed + 1000,
            )
        if float(t.perceptual_weight) > 0:  # frozen: passed as state, never optimised
            from nuwa_jax.convert.lpips import load_lpips

            lpips = load_lpips(t.perceptual_weights, config.compute)
            frozen["lpips"] = parallel.reshard_model(lpips, mesh, rules)
        return trained, frozen, None
    if t.model == "mardini":
        net = network(MarDini, config.mardini, seed + MARDINI_SEED_OFFSET)
        return {"mardini": net}, {"vae": vae}, None
    text = network(TextEncoder, config.text, seed)
    if config.text.kind == "clip":
        from nuwa_jax.convert.clip import load_clip_weights

        load_clip_weights(text, config.text.clip_dir)
        text = parallel.reshard_model(text, mesh, rules)
    shared = shares_local_model(config)
    mtd_seed = seed + 3 if shared else seed + 2 + t.level
    mtd = network(MTD, config.mtd, mtd_seed)
    trained, frozen = {"mtd": mtd}, {"vae": vae}
    (trained if config.text.trainable else frozen)["text"] = text
    return trained, frozen, (t.level - 1 if shared else None)


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """The jitted train step of a config, and what it needs besides the state and batch.

    `fn(state, frozen_state, batch) -> (state, metrics)`: one jit, the state donated, the
    new state sharded like `state_shardings`, the metrics replicated; calling the
    TrainStep passes the frozen networks. The trainer and benchmarks/train_step.py run
    exactly this step.
    """

    fn: Callable
    state_shardings: state_lib.TrainState
    frozen_state: nnx.State  # the frozen networks' weights (VAE, a frozen text encoder)
    graphdef: nnx.GraphDef  # the trained networks ...
    rest: nnx.State  # ... and their non-Param state
    frozen_graphdef: nnx.GraphDef
    level_id: int | None  # level embedding of a shared local MTD (None: not used)

    def __call__(self, state: state_lib.TrainState, batch: dict[str, jax.Array]):
        return self.fn(state, self.frozen_state, batch)

    def modules(self, params: Any, frozen_state: nnx.State | None = None) -> dict:
        """Every network of the run by name, the trained ones with `params` (e.g. the EMA)."""
        frozen_state = self.frozen_state if frozen_state is None else frozen_state
        fixed = nnx.merge(self.frozen_graphdef, frozen_state)
        trained = state_lib.merge_trainable(self.graphdef, params, self.rest)
        return {**dict(fixed.items()), **dict(trained.items())}


def make_train_step(
    config: Any, mesh, rules, tokenizer: Callable
) -> tuple[TrainStep, state_lib.TrainState]:
    """Builds the run's networks (sharded), its jitted train step and the step-0 state.

    The step takes a batch of global arrays with BATCH_KEYS (`pipeline.global_batches`);
    `tokenizer` gives the empty prompt's tokens (prompt dropout). 'mardini': the config's
    stage applies (curriculum.resolve), the stage's frozen parameters get no updates.
    """
    config = curriculum.resolve(config)
    t = config.train
    uncond_tokens = jnp.asarray(tokenizer([""])[0])
    # Models: trained ones (params) and frozen ones (passed as a state).
    trained, frozen, level_id = build_models(config, mesh, rules)
    graphdef, params, rest = state_lib.split_trainable(trained)
    frozen_graphdef, frozen_state = nnx.split(nnx.Dict(frozen))
    stage = curriculum.stage(config) if t.model == "mardini" else None
    labels = None if stage is None else curriculum.trained_labels(params, stage.name)
    tx = state_lib.make_optimizer(t, labels)
    schedule_fn = state_lib.learning_rate_schedule(t)
    state, state_shardings = state_lib.create_train_state(
        params, state_lib.param_shardings(trained, mesh, rules), tx, mesh
    )
    del params, trained, frozen  # the state holds the only copy of the trained weights
    noise_schedule = diffusion.NoiseSchedule.from_config(config.diffusion)
    base_key = jax.random.key(config.seed)
    if stage is not None:
        task_table = curriculum.task_masks(config.mardini.train_tasks, stage.num_frames)

    # The train step: one jit, the state donated.
    def loss_fn(params, frozen_state, batch, key, step):
        modules = state_lib.merge_trainable(graphdef, params, rest)
        fixed = nnx.merge(frozen_graphdef, frozen_state)
        if t.model == "vae":  # (objective, terms): see losses.vae_loss for the GAN objective
            return losses.vae_loss(
                modules["vae"], batch["video"], key, t.kl_weight,
                lpips=fixed["lpips"] if "lpips" in fixed else None,
                perceptual_weight=t.perceptual_weight,
                discriminator=modules["discriminator"] if "discriminator" in modules else None,
                adversarial_weight=t.adversarial_weight,
                adversarial_factor=(step >= t.adversarial_start_step).astype(jnp.float32),
                hard_pixel_weight=t.hard_pixel_weight, hard_pixel_fraction=t.hard_pixel_fraction,
            )  # fmt: skip
        k_latent, k_loss = jax.random.split(key)
        vae = fixed["vae"] if "vae" in fixed else None  # unused (pruned) on a latent store
        latents = losses.training_latents(batch, k_latent, config.vae, vae, t.sample_posterior)
        if stage is not None:  # MarDini: kept-frame masks drawn here, per example
            k_kept, k_loss = jax.random.split(k_loss)
            kept = curriculum.kept_masks(
                k_kept, latents.shape[0], stage, task_table, config.mardini.task_share
            )
            return losses.mardini_loss(
                modules["mardini"], latents, kept, k_loss, stage=stage.name,
                schedule=noise_schedule, prediction=config.mardini.prediction,
                signal_dropout=config.mardini.signal_dropout,
            )  # fmt: skip
        text = modules["text"] if "text" in modules else fixed["text"]
        return losses.mtd_loss(
            modules["mtd"],
            text,
            latents,
            batch["tokens"],
            batch["cond_mask"],
            k_loss,
            schedule=noise_schedule,
            prediction=config.diffusion.prediction,
            uncond_tokens=uncond_tokens,
            prompt_dropout=config.diffusion.prompt_dropout,
            # A shared local MTD trains on every local level: each window's own embedding.
            level_id=None if level_id is None else batch["level"] - 1,
            given_frames=config.diffusion.given_frames,
        )

    def train_step(state: state_lib.TrainState, frozen_state, batch):
        key = jax.random.fold_in(base_key, state.step)  # same key for a step on resume
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, frozen_state, batch, key, state.step
        )
        loss = aux.pop("vae_loss", loss)  # VAE + GAN: log the VAE's loss (d_loss is a term)
        if t.debug_nan_at_step >= 0:  # tests: poison one step's loss and gradients
            poison = jnp.where(state.step == t.debug_nan_at_step, jnp.nan, 1.0)
            loss = loss * poison
            grads = jax.tree.map(lambda g: g * poison, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if isinstance(opt_state, optax.MultiStepsState):
            updated = optax.MultiSteps(tx, t.grad_accum_steps).has_updated(opt_state)
        else:
            updated = jnp.bool_(True)
        ema = state_lib.ema_update(state.ema, params, t.ema_decay, updated)
        metrics = dict(
            loss=loss,
            grad_norm=optax.tree.norm(grads),
            lr=schedule_fn(state.step // t.grad_accum_steps),
            bad_records=jnp.sum(batch["bad_records"]),  # bad windows skipped in this batch
            **aux,
        )
        new = state_lib.TrainState(state.step + 1, params, opt_state, ema)
        return new, metrics

    replicated = NamedSharding(mesh, PartitionSpec())
    fn = jax.jit(train_step, out_shardings=(state_shardings, replicated), donate_argnums=(0,))
    parts = TrainStep(fn, state_shardings, frozen_state, graphdef, rest, frozen_graphdef, level_id)
    return parts, state


def data_windows(config: Any) -> tuple[Any, list[int] | None, int]:
    """(plan, levels, frame side) of the run's training examples for the pipeline: the
    hierarchy's windows (an MTD's level, every local level for a shared local MTD, the
    VAE data.levels' or every level's), or for MarDini at its stage's resolution either
    the local levels' windows (curriculum.trains_local_levels) or clips of its stage's
    num_frames consecutive frames."""
    t = config.train
    if t.model == "mardini":
        s = curriculum.stage(config)
        if curriculum.trains_local_levels(config, s):
            return pipeline.plan_from_config(config), local_levels(config), s.resolution
        return curriculum.clip_plan(s), [0], s.resolution
    levels = None
    if t.model == "mtd":
        levels = local_levels(config) if shares_local_model(config) else [t.level]
    return pipeline.plan_from_config(config), levels, int(config.data.resolution)


def synthetic_batch(config: Any, mesh, rules, tokenizer: Callable, seed: int = 0) -> dict:
    """A global batch of BATCH_KEYS shaped like the pipeline's, without reading data.

    Video uniform in [-1, 1], one caption's tokens on every frame, the cond_mask of the
    trained level, no bad records: for benchmarks and tests of the step alone.
    """
    config = curriculum.resolve(config)
    plan, levels, side = data_windows(config)
    d, L = config.data, plan.frames_per_call
    b = d.batch_size // jax.process_count()
    rng = np.random.default_rng(seed + jax.process_index())
    tokens = np.asarray(tokenizer(["a red circle moves right on the beach"]), np.int32)
    mask = plan.condition_mask(levels[0] if levels else 0)
    local = dict(
        video=rng.uniform(-1, 1, (b, L, side, side, 3)).astype(np.float32),
        tokens=np.broadcast_to(tokens, (b, L, tokens.shape[-1])).copy(),
        cond_mask=np.broadcast_to(mask, (b, L)).copy(),
        level=np.full((b,), levels[0] if levels else 0, np.int32),
        bad_records=np.zeros((b,), np.int32),
    )
    return parallel.global_batch(local, mesh, rules)


def is_bundle(path: str | os.PathLike) -> bool:
    """Whether train.init_from names a hierarchy bundle (its .json, .safetensors or stem)
    rather than a trainer workdir."""
    path = os.fspath(path)
    if path.endswith((bundle.MANIFEST_SUFFIX, bundle.WEIGHTS_SUFFIX)):
        return True
    return not os.path.isdir(path) and os.path.isfile(bundle.bundle_paths(path)[1])


def read_init_from(workdir: str | os.PathLike) -> dict[str, Any] | None:
    """What a run was initialised from (INIT_FROM_FILE in its workdir), or None.

    {'bundle': weights path, 'sha256': ..., or 'workdir': ..., 'step': ...;
    'components': {module: {'component': bundle component, 'steps': steps that module had
    been trained before this run, cumulative}}}.
    """
    path = os.path.join(os.fspath(workdir), INIT_FROM_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def prior_steps(workdir: str | os.PathLike, module: str) -> int:
    """Steps `module` of the run in `workdir` had been trained before that run began."""
    record = read_init_from(workdir) or {}
    return int(record.get("components", {}).get(module, {}).get("steps", 0))


def _write_init_from(workdir: str, record: dict[str, Any]) -> None:
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        data = (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()
        schema.atomic_write_bytes(os.path.join(workdir, INIT_FROM_FILE), data)


def init_from(
    config: Any,
    train_step: TrainStep,
    state: state_lib.TrainState,
    workdir: str | os.PathLike | None = None,
):
    """`state` with params and EMA replaced by train.init_from's weights; step 0, a fresh
    optimiser. Errors name the run or bundle and what does not fit.

    train.init_from is a trainer workdir (its newest checkpoint's params; a run of the same
    train.model, e.g. the previous MarDini stage) or a hierarchy bundle (the components
    this run trains, `bundle.component_name`, rounded to the bundle's 16 bits and cast to
    compute.param_dtype; a trained network without a component, a VAE's discriminator,
    keeps its init). What it came from, with the steps each module had already been
    trained, goes to `workdir`/INIT_FROM_FILE for export's provenance.
    """
    t = config.train
    trained = state_lib.merge_trainable(train_step.graphdef, state.params, train_step.rest)
    modules = dict(trained.items())
    if is_bundle(t.init_from):
        record = _init_from_bundle(config, modules)
    else:
        source, step, saved = ckpt.read_run(t.init_from, t)
        theirs = saved.get("train", {}).get("model")
        if theirs != t.model:
            raise ValueError(
                f"train.init_from={t.init_from!r}: step {step} of a train.model={theirs!r} "
                f"run, not {t.model!r}"
            )
        ckpt.restore_ema(source, modules, step, item="params")
        record = dict(workdir=source, step=step, components={
            name: dict(steps=step + prior_steps(source, name)) for name in modules
        })  # fmt: skip
        stage = saved.get("train", {}).get("mardini_stage") if t.model == "mardini" else None
        logging.info("initialised from step %d of %s%s", step, source,
                     f" (stage {stage!r})" if stage else "")  # fmt: skip
    if workdir is not None:
        _write_init_from(os.fspath(workdir), record)
    params = nnx.to_pure_dict(nnx.state(trained, nnx.Param))
    ema = jax.tree.map(jnp.copy, params)  # own buffers: the state is donated
    return state.replace(params=params, ema=ema)


def _init_from_bundle(config: Any, modules: dict[str, Any]) -> dict[str, Any]:
    """Writes the bundle components of the run's trained `modules` into them; returns the
    INIT_FROM_FILE record."""
    manifest, tensors = bundle.read_bundle(config.train.init_from)
    layout = manifest["text_layout"]
    names = {m: bundle.component_name(config, m, layout) for m in modules if m != "discriminator"}
    bundle.assign_components(
        manifest,
        tensors,
        config,
        {names[m]: modules[m] for m in names},
        hint=f"train.init_from: the run's train.model={config.train.model!r} networks must "
        "be the bundle's",
        latent_scale=False,  # weights that learned another latent scale adapt to this one
    )
    ours, theirs = bundle.config_to_dict(config), manifest["config"]
    for field, mine, its in bundle.differing_fields(ours, theirs, bundle.LATENT_FIELDS):
        logging.warning("train.init_from=%s: %s is %r here, %r in the bundle: its weights "
                        "learned latents at another scale and train on at this one",
                        config.train.init_from, field, mine, its)  # fmt: skip
    sources = manifest.get("sources", {})
    components = {
        m: dict(component=c, steps=bundle.trained_steps(sources.get(c))) for m, c in names.items()
    }
    done = ", ".join(f"{m} <- {c['component']} ({c['steps']} steps)" for m, c in components.items())
    logging.info("initialised %s from bundle %s (sha256 %s)", done, manifest["weights_path"],
                 manifest["sha256"])  # fmt: skip
    if config.train.model != "vae" and not config.data.latents_dir:
        logging.warning(
            "train.init_from=%s: the frozen VAE is the config's, not the bundle's; train on a "
            "latent store the bundle's VAE encoded (nuwa_jax.data.latents --vae_bundle)",
            config.train.init_from,
        )
    return dict(bundle=manifest["weights_path"], sha256=manifest["sha256"], components=components)


# What each train.model's saved weights and data fix besides its networks' architecture
# fields (bundle.component_fields): resuming with other values trains another thing.
RESUME_FIELDS: dict[str, tuple[str, ...]] = {
    "vae": ("train.model", "data.resolution", "hierarchy.frames_per_call"),
    "mtd": ("train.model", "train.level", "data.resolution"),
    "mardini": ("train.model", "train.mardini_stage", "mardini.num_frames", "data.resolution"),
}
# The networks whose fields a run of each train.model depends on (trained and frozen).
RESUME_COMPONENTS = {"vae": ("vae",), "mtd": ("mtd", "text"), "mardini": ("mardini",)}


def resume_fields(config: Any, saved: dict[str, Any]) -> list[str]:
    """The dotted config fields a resumed run must share with its saved config: the
    architecture of the networks it trains and reads (bundle.component_fields: a frozen VAE
    included, the latent scale, the diffusion recipe), the model kind, the level or stage
    and the frames it trains on. Not step counts, frequencies, paths or worker counts."""
    model = config.train.model
    ours = bundle.config_to_dict(config)
    fields = bundle.component_fields(RESUME_COMPONENTS[model], ours, saved)
    return fields + [f for f in RESUME_FIELDS[model] if f not in fields]


def check_resume_config(config: Any, saved: dict[str, Any], step: int, source: str) -> None:
    """Refuses to resume step `step` of the run in `source` (its checkpoints) with a config
    that differs from the one that step saved, `saved`, in a field that matters
    (`resume_fields`), naming each field with the config's and the saved value;
    train.allow_config_change logs them instead."""
    diff = bundle.differing_fields(config, saved, resume_fields(config, saved))
    if not diff:
        return
    lines = "".join(f"\n  {f}: config {a!r}, saved {b!r}" for f, a, b in diff)
    where = f"{source}: resuming step {step} with a config that differs from the run's at"
    names = ", ".join(f for f, _, _ in diff)
    if config.train.get("allow_config_change", False):
        logging.warning("%s %s (train.allow_config_change=True):%s", where, names, lines)
        return
    raise bundle.ConfigMismatchError(
        f"{where} {names}:{lines}\n(set train.allow_config_change=True to resume anyway, "
        "or start the new config in a fresh workdir)"
    )


def truncate_metrics(path: str, step: int) -> int:
    """Drops the lines of metrics.jsonl at `path` past `step` (the step a run resumes
    from: a crashed run logged them after its last checkpoint, and trains those steps
    again), rewriting the file atomically, so no step is logged twice. Lines that are not
    JSON records (a write cut short by the crash) go too. Returns the lines dropped."""
    if not os.path.exists(path):
        return 0
    with open(path, "rb") as f:
        data = f.read()
    kept = []
    for line in data.splitlines():
        try:
            if int(json.loads(line)["step"]) <= step:
                kept.append(line + b"\n")
        except (ValueError, TypeError, KeyError):
            pass
    dropped = len(data.splitlines()) - len(kept)
    if b"".join(kept) != data:  # lines dropped, or a last line without its newline
        schema.atomic_write_bytes(path, b"".join(kept))
    if dropped:
        logging.warning("%s: dropped %d line(s) past step %d, the step the run resumes from",
                        path, dropped, step)  # fmt: skip
    return dropped


def _write_jsonl(path: str, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


class _Preemption:
    """SIGTERM -> a flag read at step boundaries (main thread only)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if _in_main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        logging.warning("SIGTERM: saving at the next step boundary, then exiting")
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _any_process(flag: bool) -> bool:
    """True if `flag` is True on any process (a SIGTERM may reach one host first)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def _stop_trace() -> None:
    try:
        jax.profiler.stop_trace()
    except RuntimeError:  # no trace running: the profile had already ended
        pass


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def train(config: Any, workdir: str | os.PathLike, *, max_steps: int | None = None,
          devices: Sequence[jax.Device] | None = None):  # fmt: skip
    """Trains until train.num_steps (or `max_steps`, or SIGTERM); returns the TrainState.

    Resumes from the newest checkpoint in workdir/checkpoints if there is one (refused when
    the config differs from the saved one in `resume_fields`, unless
    train.allow_config_change; metrics.jsonl loses its lines past the resumed step);
    otherwise starts from the params of train.init_from's newest checkpoint when it is set.
    The workdir is held by process 0 (workdir_lock: a second live run on it is refused).
    `devices`: the mesh's devices (default: all; a subset for tools and tests).
    """
    config = curriculum.resolve(config)  # 'mardini': the stage's steps and clip length
    check_config(config)
    workdir = os.path.abspath(os.fspath(workdir))
    os.makedirs(workdir, exist_ok=True)
    # One run per workdir: process 0 holds workdir/train.lock until the run ends.
    with workdir_lock.hold(workdir, enabled=jax.process_index() == 0):
        return _train(config, workdir, max_steps, devices)


def _train(config: Any, workdir: str, max_steps: int | None,
           devices: Sequence[jax.Device] | None) -> state_lib.TrainState:  # fmt: skip
    """The body of `train`, run while the workdir's lock is held."""
    # -----------------------------------------------------------------------------------
    # Config, mesh, data.
    # -----------------------------------------------------------------------------------
    t = config.train
    stop_at = t.num_steps if max_steps is None else min(int(max_steps), t.num_steps)
    mesh = parallel.make_mesh(config.mesh, devices)
    rules = parallel.logical_rules(config)
    divisor = parallel.batch_divisor(mesh, rules)
    if config.data.batch_size % divisor:
        raise ValueError(
            f"data.batch_size={config.data.batch_size} is not a multiple of the {divisor} "
            "devices that split the batch (mesh data x fsdp)"
        )
    ensure_data(config)
    tokenizer = make_tokenizer(config.text)
    if t.model == "mtd":  # the only model that reads the captions
        check_text_context(config, tokenizer, workdir)
    plan, levels, side = data_windows(config)
    skipped = pipeline.skipped_records_path(workdir, jax.process_index(), jax.process_count())
    iterator = pipeline.make_iterator(config, tokenizer, plan=plan, levels=levels, resolution=side,
                                      skipped_records=skipped)  # fmt: skip
    # How many different examples each trained level can see (docs/data.md).
    for line in pipeline.window_summary(config, plan=plan, levels=levels).lines():
        logging.info("training windows: %s", line)

    # -----------------------------------------------------------------------------------
    # Models and the train step (one jit, the state donated): see make_train_step.
    # -----------------------------------------------------------------------------------
    train_step, state = make_train_step(config, mesh, rules, tokenizer)

    # -----------------------------------------------------------------------------------
    # Resume.
    # -----------------------------------------------------------------------------------
    checkpointer = ckpt.Checkpointer(workdir, t)
    if checkpointer.latest_step() is not None:
        # Before restoring (another architecture would fail inside orbax, and a step orbax
        # fails on is set aside as damaged): the config the newest intact step saved must
        # agree with this one where it matters.
        good = checkpointer.good_step()
        if good is not None:
            try:
                saved = checkpointer.restore_config(good[0])
                check_resume_config(config, saved, good[0], checkpointer.directory)
            except BaseException:
                checkpointer.close()
                raise
        abstract = ckpt.abstract_like(state, train_step.state_shardings)
        del state
        latest, state = checkpointer.restore_latest(abstract, iterator)
        logging.info("resumed from step %d in %s", latest, checkpointer.directory)
    elif t.init_from:
        state = init_from(config, train_step, state, workdir)
    step = int(state.step)

    # -----------------------------------------------------------------------------------
    # Metrics, samples, profiler.
    # -----------------------------------------------------------------------------------
    lead = jax.process_index() == 0
    writer, progress = metric_log.create(workdir, lead, t.num_steps)
    jsonl = os.path.join(workdir, METRICS_FILE)
    if lead:  # lines a crashed run wrote after its last checkpoint are trained again
        truncate_metrics(jsonl, step)
    finished = os.path.join(workdir, FINISHED_FILE)
    if lead and step < t.num_steps and os.path.exists(finished):
        os.remove(finished)  # e.g. resumed with a longer num_steps: not finished any more
    if step == 0 and lead:
        writer.write_hparams({k: v for k, v in config.train.items() if not isinstance(v, dict)})
    profile = None
    if t.profile_steps > 0 and lead:  # traces steps profile_first_step + 1 .. + profile_steps
        if not metric_log.have_clu_writers():
            raise ValueError(
                f"train.profile_steps={t.profile_steps} needs clu's Profile, whose package "
                "imports TensorFlow (not installed here); set --config.train.profile_steps=0"
            )
        from clu import periodic_actions

        profile = periodic_actions.Profile(
            logdir=workdir,
            num_profile_steps=t.profile_steps,
            profile_duration_ms=None,
            first_profile=t.profile_first_step,
            every_steps=None,
            every_secs=None,
        )

    # -----------------------------------------------------------------------------------
    # The loop.
    # -----------------------------------------------------------------------------------
    batches = pipeline.global_batches(
        ({k: b[k] for k in BATCH_KEYS if k in b} for b in iterator), mesh, rules
    )
    sampler = None
    if t.sample_every > 0 and step < stop_at:  # samples start from the run's first batch
        first = next(batches)
        sampler = samples.Sampler(config, train_step, first, tokenizer, mesh)
        batches = itertools.chain([first], batches)
    tick, tick_step, bad_records, stop = time.perf_counter(), step, 0, False
    try:
        with _Preemption() as preemption, jax.set_mesh(mesh):
            while step < stop_at and not stop:
                batch = next(batches)
                state, metrics = train_step(state, batch)
                step += 1
                bad_records = bad_records + metrics.pop("bad_records")  # stays on device
                checkpoint_now = step % t.checkpoint_every == 0 or step == stop_at
                log_now = step % t.log_every == 0 or step == stop_at
                sample_now = sampler is not None and step % t.sample_every == 0
                progress(step, time.time())
                if profile is not None:
                    profile(step)
                stop = _any_process(preemption.requested)  # every process stops together
                if not (log_now or checkpoint_now or sample_now or stop):
                    continue  # no host sync: the next step is dispatched at once
                # The finite check runs before every write and every save, so a checkpoint
                # never holds a non-finite state.
                metrics = jax.device_get(metrics)
                if not (np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])):
                    checkpointer.wait()
                    raise NonFiniteError(
                        f"step {step}: non-finite loss={metrics['loss']} or grad_norm="
                        f"{metrics['grad_norm']}; stopped, last good checkpoint: "
                        f"{checkpointer.last_good()} in {checkpointer.directory}"
                    )
                if log_now:
                    now = time.perf_counter()
                    scalars = {k: float(v) for k, v in metrics.items()}
                    scalars["steps_per_sec"] = (step - tick_step) / max(now - tick, 1e-9)
                    scalars["bad_records"] = int(bad_records)  # since the previous log line
                    tick, tick_step, bad_records = now, step, 0
                    writer.write_scalars(step, scalars)
                    if lead:
                        _write_jsonl(jsonl, {"step": step, **scalars})
                if sample_now:
                    started = time.perf_counter()
                    sampler.write(step, state.ema, writer, workdir)
                    tick += time.perf_counter() - started  # steps_per_sec: training only
                if checkpoint_now or stop:
                    checkpointer.save(step, state, iterator, config)
        if checkpointer.latest_step() != step:  # e.g. resumed at the end already
            checkpointer.save(step, state, iterator, config)
    finally:
        if profile is not None:
            _stop_trace()  # a run that ends inside the traced steps
        checkpointer.close()
        writer.flush()
    if lead and step >= t.num_steps:  # after the final checkpoint is committed (close)
        record = dict(step=step, num_steps=int(t.num_steps), time=time.time())
        schema.atomic_write_bytes(finished, (json.dumps(record) + "\n").encode())
    return state
