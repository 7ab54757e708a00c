"""The training loop: one flat, readable function, big_vision style.

    python -m nuwa_jax.train --config=configs/tiny.py --workdir=/tmp/run \\
        --config.train.model=mtd --config.train.level=1

`train.model` 'vae' trains the T-KLVAE; 'mtd' trains the MTD of `train.level` on that
level's windows (frozen VAE; the byte text encoder trains with it when
text.trainable). A rerun in the same workdir resumes from the newest checkpoint;
SIGTERM saves at the next step boundary and exits 0; a NaN / Inf loss or gradient
stops the run with an error naming the step, leaving the last good checkpoint intact.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from nuwa_jax import diffusion, parallel
from nuwa_jax.data import pipeline, schema, synthetic
from nuwa_jax.hierarchy.models import check_hierarchy, vae_class
from nuwa_jax.models.mtd import MTD
from nuwa_jax.models.text import TextEncoder, make_tokenizer
from nuwa_jax.train import checkpoint as ckpt
from nuwa_jax.train import losses
from nuwa_jax.train import state as state_lib

MODELS = ("vae", "mtd")
BATCH_KEYS = ("video", "tokens", "cond_mask")
METRICS_FILE = "metrics.jsonl"


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
    losses.check_unavailable_terms(t)
    state_lib.learning_rate_schedule(t)  # checks num_steps > warmup_steps


def ensure_data(config: Any) -> None:
    """data.source='synthetic': renders the benchmark into data.data_dir if it is empty."""
    d = config.data
    if not d.data_dir:
        raise ValueError("data.data_dir is empty: give the frame store directory")
    if d.source == "synthetic" and not os.path.exists(os.path.join(d.data_dir, "metadata.json")):
        if jax.process_index() == 0:
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
    elif not os.path.exists(os.path.join(d.data_dir, "metadata.json")):
        raise schema.DataError(f"{d.data_dir}: no metadata.json (data.source={d.source!r})")


def build_models(config: Any, mesh, rules) -> tuple[dict, dict, int | None]:
    """(trained modules, frozen modules, level-embedding id) for train.model, sharded.

    Only the networks the run needs are built, with the seeds HierarchyModels.create
    gives them (text: seed, VAE: seed + 1, MTD of level j: seed + 2 + j, or seed + 3
    for a shared local MTD), so trained pieces drop into a hierarchy unchanged.
    """
    check_hierarchy(config)
    t, seed = config.train, config.seed
    make = lambda ctor, s: parallel.create_sharded_model(  # noqa: E731
        lambda: ctor(nnx.Rngs(s)), mesh, rules
    )
    vae = make(lambda r: vae_class(config)(config.vae, config.compute, rngs=r), seed + 1)
    if config.vae.pretrained_dir:
        from nuwa_jax.convert import common as convert_common
        from nuwa_jax.convert import vae as convert_vae

        path = os.path.join(config.vae.pretrained_dir, convert_vae.WEIGHTS_FILE)
        convert_vae.import_vae_weights(vae, convert_common.load_safetensors(path), source=path)
        vae = parallel.reshard_model(vae, mesh, rules)
    if t.model == "vae":
        return {"vae": vae}, {}, None
    text = make(lambda r: TextEncoder(config.text, config.compute, rngs=r), seed)
    if config.text.kind == "clip":
        from nuwa_jax.convert.clip import load_clip_weights

        load_clip_weights(text, config.text.clip_dir)
        text = parallel.reshard_model(text, mesh, rules)
    shared = config.hierarchy.share_local_models and config.hierarchy.depth > 1 and t.level > 0
    mtd_seed = seed + 3 if shared else seed + 2 + t.level
    mtd = make(lambda r: MTD(config.mtd, config.compute, rngs=r), mtd_seed)
    trained, frozen = {"mtd": mtd}, {"vae": vae}
    (trained if config.text.trainable else frozen)["text"] = text
    return trained, frozen, (t.level - 1 if shared else None)


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


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def train(config: Any, workdir: str | os.PathLike, *, max_steps: int | None = None):
    """Trains until train.num_steps (or `max_steps`, or SIGTERM); returns the TrainState.

    Resumes from the newest checkpoint in workdir/checkpoints if there is one.
    """
    # -----------------------------------------------------------------------------------
    # Config, mesh, data.
    # -----------------------------------------------------------------------------------
    check_config(config)
    t = config.train
    workdir = os.path.abspath(os.fspath(workdir))
    os.makedirs(workdir, exist_ok=True)
    stop_at = t.num_steps if max_steps is None else min(int(max_steps), t.num_steps)
    mesh = parallel.make_mesh(config.mesh)
    rules = parallel.logical_rules(config)
    divisor = parallel.batch_divisor(mesh, rules)
    if config.data.batch_size % divisor:
        raise ValueError(
            f"data.batch_size={config.data.batch_size} is not a multiple of the {divisor} "
            "devices that split the batch (mesh data x fsdp)"
        )
    ensure_data(config)
    tokenizer = make_tokenizer(config.text)
    levels = [t.level] if t.model == "mtd" else None
    iterator = pipeline.make_iterator(config, tokenizer, levels=levels)
    uncond_tokens = jnp.asarray(tokenizer([""])[0])

    # -----------------------------------------------------------------------------------
    # Models: trained ones (params) and frozen ones (passed as a state).
    # -----------------------------------------------------------------------------------
    trained, frozen, level_id = build_models(config, mesh, rules)
    graphdef, params, rest = state_lib.split_trainable(trained)
    frozen_graphdef, frozen_state = nnx.split(nnx.Dict(frozen))
    tx = state_lib.make_optimizer(t)
    schedule_fn = state_lib.learning_rate_schedule(t)
    state, state_shardings = state_lib.create_train_state(
        params, state_lib.param_shardings(trained, mesh, rules), tx, mesh
    )
    del params, trained, frozen  # the state holds the only copy of the trained weights
    noise_schedule = diffusion.NoiseSchedule.from_config(config.diffusion)
    base_key = jax.random.key(config.seed)

    # -----------------------------------------------------------------------------------
    # The train step: one jit, the state donated.
    # -----------------------------------------------------------------------------------
    def loss_fn(params, frozen_state, batch, key):
        modules = state_lib.merge_trainable(graphdef, params, rest)
        if t.model == "vae":
            return losses.vae_loss(modules["vae"], batch["video"], key, t.kl_weight)
        fixed = nnx.merge(frozen_graphdef, frozen_state)
        k_latent, k_loss = jax.random.split(key)
        latents = fixed["vae"].encode_to_latents(batch["video"], rng=k_latent)
        latents = jax.lax.stop_gradient(latents)
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
            level_id=level_id,
        )

    def train_step(state: state_lib.TrainState, frozen_state, batch):
        key = jax.random.fold_in(base_key, state.step)  # same key for a step on resume
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, frozen_state, batch, key
        )
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
            **aux,
        )
        new = state_lib.TrainState(state.step + 1, params, opt_state, ema)
        return new, metrics

    replicated = NamedSharding(mesh, PartitionSpec())
    step_fn = jax.jit(train_step, out_shardings=(state_shardings, replicated), donate_argnums=(0,))

    # -----------------------------------------------------------------------------------
    # Resume.
    # -----------------------------------------------------------------------------------
    checkpointer = ckpt.Checkpointer(workdir, t)
    latest = checkpointer.latest_step()
    if latest is not None:
        abstract = ckpt.abstract_like(state, state_shardings)
        del state
        state = checkpointer.restore(latest, abstract, iterator)
        logging.info("resumed from step %d in %s", latest, checkpointer.directory)
    step = int(state.step)

    # -----------------------------------------------------------------------------------
    # Metrics.
    # -----------------------------------------------------------------------------------
    from clu import metric_writers, periodic_actions

    lead = jax.process_index() == 0
    writer = metric_writers.create_default_writer(workdir, just_logging=not lead)
    progress = periodic_actions.ReportProgress(num_train_steps=t.num_steps, writer=writer)
    jsonl = os.path.join(workdir, METRICS_FILE)
    if step == 0 and lead:
        writer.write_hparams({k: v for k, v in config.train.items() if not isinstance(v, dict)})

    # -----------------------------------------------------------------------------------
    # The loop.
    # -----------------------------------------------------------------------------------
    batches = pipeline.global_batches(
        ({k: b[k] for k in BATCH_KEYS} for b in iterator), mesh, rules
    )
    tick, tick_step = time.perf_counter(), step
    try:
        with _Preemption() as preemption, jax.set_mesh(mesh):
            while step < stop_at and not preemption.requested:
                batch = next(batches)
                state, metrics = step_fn(state, frozen_state, batch)
                step += 1
                metrics = jax.device_get(metrics)
                if not (np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])):
                    checkpointer.wait()
                    raise NonFiniteError(
                        f"step {step}: non-finite loss={metrics['loss']} or grad_norm="
                        f"{metrics['grad_norm']}; stopped, last good checkpoint: "
                        f"{checkpointer.latest_step()} in {checkpointer.directory}"
                    )
                progress(step, time.time())
                if step % t.log_every == 0 or step == stop_at:
                    now = time.perf_counter()
                    scalars = {k: float(v) for k, v in metrics.items()}
                    scalars["steps_per_sec"] = (step - tick_step) / max(now - tick, 1e-9)
                    tick, tick_step = now, step
                    writer.write_scalars(step, scalars)
                    if lead:
                        _write_jsonl(jsonl, {"step": step, **scalars})
                if step % t.checkpoint_every == 0 or step == stop_at or preemption.requested:
                    checkpointer.save(step, state, iterator, config)
        if checkpointer.latest_step() != step:  # e.g. resumed at the end already
            checkpointer.save(step, state, iterator, config)
    finally:
        checkpointer.close()
        writer.flush()
    return state
