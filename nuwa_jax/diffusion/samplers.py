"""Reverse-process samplers as pure JAX functions (jit / scan friendly).

- `ddpm_step`: ancestral sampling (Ho et al.; NUWA-XL's sampler) with the posterior
  variance beta-tilde ("fixed_small"), over any descending set of timesteps (strided DDPM
  when fewer than T), as diffusers' DDPMScheduler.step.
- `ddim_step`: DDIM (Song et al.) with stochasticity eta, as diffusers' DDIMScheduler.step.
- `sample`: runs every step in one `lax.scan`. Known frames (in-painting in time): the model
  receives them through `known` (the MTD's x0^c and x0^m), and with `replace_known=True`
  they are re-inserted clean after every step (MarDini's [REF] frames).

Noise is an argument of the step functions, never drawn inside them, so one step equals
diffusers' for the same noise and `sample` owns all randomness through one key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from nuwa_jax.diffusion import guidance
from nuwa_jax.diffusion.parameterization import (
    check_prediction,
    check_prediction_schedule,
    predict_x0_eps,
)
from nuwa_jax.diffusion.schedules import NoiseSchedule, _expand

SAMPLERS = ("ddpm", "ddim")
SPACINGS = ("leading", "trailing")


def timesteps(
    num_train_timesteps: int, num_steps: int, spacing: str = "leading", steps_offset: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(t, t_prev) int32 arrays of the `num_steps` reverse steps, descending.

    'leading' (diffusers' default, SD uses steps_offset=1): t = k * (T // n) + offset;
    'trailing': t = round(T - k * T / n) - 1. t_prev is the next step's t, -1 after the last.
    """
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(
            f"diffusion.num_sampling_steps={num_steps} must be in [1, {num_train_timesteps}]"
        )
    if spacing == "leading":
        ts = np.arange(num_steps)[::-1] * (num_train_timesteps // num_steps) + steps_offset
    elif spacing == "trailing":
        ratio = num_train_timesteps / num_steps
        ts = np.round(np.arange(num_train_timesteps, 0, -ratio)).astype(np.int64) - 1
    else:
        raise ValueError(f"diffusion.timestep_spacing: unknown {spacing!r}; use {SPACINGS}")
    if ts.max() >= num_train_timesteps:
        raise ValueError(
            f"diffusion.steps_offset={steps_offset} pushes timestep {ts.max()} past "
            f"num_train_timesteps={num_train_timesteps}"
        )
    prev = np.concatenate([ts[1:], [-1]])
    return ts.astype(np.int32), prev.astype(np.int32)


def _x0_eps(prediction, model_out, x_t, abar_t, clip_sample, clip_range):
    """(x_0, eps) from the model output, x_0 optionally clipped (eps left unclipped)."""
    alpha, sigma = jnp.sqrt(abar_t), jnp.sqrt(1.0 - abar_t)
    x0, eps = predict_x0_eps(prediction, model_out, x_t, alpha, sigma)
    if clip_sample:
        x0 = jnp.clip(x0, -clip_range, clip_range)
    return x0, eps


def ddpm_posterior(
    schedule: NoiseSchedule, t: jax.Array, t_prev: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(coef_x0, coef_xt, variance) of q(x_{t_prev} | x_t, x_0) between two timesteps.

    mean = coef_x0 * x_0 + coef_xt * x_t; variance is beta-tilde (clamped at 1e-20).
    alpha-bar before step 0 is 1, as in diffusers' DDPM.
    """
    abar_t = schedule.alpha_bar(t)
    abar_prev = jnp.where(t_prev >= 0, schedule.alpha_bar(t_prev), 1.0)
    alpha_t = abar_t / abar_prev  # the step's alpha (1 - beta) over a possibly strided gap
    beta_t = 1.0 - alpha_t
    coef_x0 = jnp.sqrt(abar_prev) * beta_t / (1.0 - abar_t)
    coef_xt = jnp.sqrt(alpha_t) * (1.0 - abar_prev) / (1.0 - abar_t)
    variance = jnp.maximum((1.0 - abar_prev) / (1.0 - abar_t) * beta_t, 1e-20)
    return coef_x0, coef_xt, variance


def ddpm_step(
    schedule: NoiseSchedule,
    model_out: jax.Array,
    t: jax.Array,
    t_prev: jax.Array,
    x_t: jax.Array,
    noise: jax.Array,
    *,
    prediction: str = "epsilon",
    clip_sample: bool = False,
    clip_range: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """One ancestral step x_t -> x_{t_prev}; returns (x_prev, predicted x_0).

    x_prev = posterior mean + sqrt(beta-tilde) * noise, with no noise at t = 0.
    `t`, `t_prev`: scalars or (B,) integer timesteps.
    """
    abar_t = _expand(schedule.alpha_bar(t), x_t)
    x0, _ = _x0_eps(prediction, model_out, x_t, abar_t, clip_sample, clip_range)
    coef_x0, coef_xt, var = (_expand(c, x_t) for c in ddpm_posterior(schedule, t, t_prev))
    mean = coef_x0 * x0 + coef_xt * x_t
    noise_scale = jnp.where(_expand(jnp.asarray(t), x_t) > 0, jnp.sqrt(var), 0.0)
    return (mean + noise_scale * noise).astype(x_t.dtype), x0


def ddim_step(
    schedule: NoiseSchedule,
    model_out: jax.Array,
    t: jax.Array,
    t_prev: jax.Array,
    x_t: jax.Array,
    noise: jax.Array | None = None,
    *,
    prediction: str = "epsilon",
    eta: float = 0.0,
    clip_sample: bool = False,
    clip_range: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """One DDIM step x_t -> x_{t_prev}; returns (x_prev, predicted x_0).

    x_prev = sqrt(abar_prev) x_0 + sqrt(1 - abar_prev - s^2) eps + s * noise, with
    s = eta * sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)); alpha-bar at
    t_prev = -1 is the schedule's `final`. eta = 0 is deterministic (noise may be None).
    """
    abar_t = _expand(schedule.alpha_bar(t), x_t)
    abar_prev = _expand(schedule.alpha_bar(t_prev), x_t)
    x0, eps = _x0_eps(prediction, model_out, x_t, abar_t, clip_sample, clip_range)
    std = eta * jnp.sqrt((1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev))
    x_prev = jnp.sqrt(abar_prev) * x0 + jnp.sqrt(1.0 - abar_prev - std**2) * eps
    if noise is not None:
        x_prev = x_prev + std * noise
    elif not (isinstance(eta, int | float) and eta == 0):
        raise ValueError("ddim_step: eta > 0 needs `noise`")
    return x_prev.astype(x_t.dtype), x0


@flax.struct.dataclass
class KnownFrames:
    """Frames given in advance: clean latents and a (B, L) mask, 1 where a frame is known.

    The model receives them as condition (NUWA-XL: x0^c = latents * mask, x0^m = mask).
    """

    latents: jax.Array  # (B, L, h, w, c)
    mask: jax.Array  # (B, L)

    def insert(self, x: jax.Array) -> jax.Array:
        """`x` with the known frames replaced by their clean latents."""
        m = _expand(self.mask, x).astype(bool)
        return jnp.where(m, self.latents.astype(x.dtype), x)


# model_fn(x_t (B, ...), t (B,) int32, cond pytree, known KnownFrames | None) -> model output.
ModelFn = Callable[[jax.Array, jax.Array, Any, "KnownFrames | None"], jax.Array]


def _is_key_batch(key: jax.Array, batch: int) -> bool:
    """True for a batch of `batch` keys (typed (B,) or raw uint32 (B, 2)), one per example."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key.ndim == 1 and key.shape[0] == batch
    return key.ndim == 2 and key.shape[0] == batch


def _normal(key: jax.Array, shape: tuple[int, ...], dtype: Any, per_example: bool) -> jax.Array:
    if per_example:
        return jax.vmap(lambda k: jax.random.normal(k, shape[1:], dtype))(key)
    return jax.random.normal(key, shape, dtype)


def sample(
    model_fn: ModelFn,
    shape: tuple[int, ...],
    key: jax.Array,
    config: Any,
    *,
    schedule: NoiseSchedule | None = None,
    cond: Any = None,
    uncond: Any = None,
    known: KnownFrames | None = None,
    replace_known: bool = False,
    dtype: Any = jnp.float32,
) -> jax.Array:
    """Draws x_0 of `shape` by running every reverse step of `config` in one lax.scan.

    config: a `diffusion` config section (sampler, num_sampling_steps, eta, prediction,
        clip_sample, clip_sample_range, timestep_spacing, steps_offset, guidance_scale, and
        the schedule fields when `schedule` is None).
    cond / uncond: pytrees passed through to model_fn; with guidance_scale != 1 both are
        needed and the model sees them stacked on the batch axis (`guidance.guided`).
    known: frames given in advance, passed to model_fn; with `replace_known` they are also
        written back clean into x after every step (and into the initial noise).
    key: one key for the whole batch, or a batch of keys (one per example): then each
        example's noise depends on its key alone, so the result of an example does not
        change with the batch it is sampled in (chunking, padding, device count).
    """
    sampler = config.sampler
    if sampler not in SAMPLERS:
        raise ValueError(f"diffusion.sampler: unknown {sampler!r}; use {SAMPLERS}")
    prediction = check_prediction(config.prediction)
    check_prediction_schedule(
        prediction, bool(config.get("zero_terminal_snr", False)), "diffusion.prediction"
    )
    if replace_known and known is None:
        raise ValueError("sample: replace_known=True needs `known` frames")
    schedule = NoiseSchedule.from_config(config) if schedule is None else schedule
    ts, prevs = timesteps(
        schedule.num_timesteps,
        config.num_sampling_steps,
        config.timestep_spacing,
        config.steps_offset,
    )
    model = guidance.guided(model_fn, config.guidance_scale, uncond)
    clip = dict(clip_sample=config.clip_sample, clip_range=config.clip_sample_range)
    stochastic = sampler == "ddpm" or config.eta > 0

    per_example = _is_key_batch(key, shape[0])
    if per_example:  # one key per example: its noise never depends on its batch neighbours
        keys = jax.vmap(lambda k: jax.random.split(k, len(ts) + 1))(key)  # (B, S+1)
        init_key, step_keys = keys[:, 0], jnp.swapaxes(keys[:, 1:], 0, 1)  # (B,), (S, B)
    else:
        init_key, step_key = jax.random.split(key)
        step_keys = jax.random.split(step_key, len(ts))
    x = _normal(init_key, shape, dtype, per_example)
    if replace_known:
        x = known.insert(x)

    def step(x, inputs):
        t, t_prev, k = inputs
        t_vec = jnp.full((shape[0],), t, jnp.int32)
        out = model(x, t_vec, cond, known).astype(x.dtype)
        noise = _normal(k, shape, dtype, per_example) if stochastic else None
        if sampler == "ddpm":
            x, _ = ddpm_step(schedule, out, t, t_prev, x, noise, prediction=prediction, **clip)
        else:
            x, _ = ddim_step(
                schedule, out, t, t_prev, x, noise, prediction=prediction, eta=config.eta, **clip
            )
        if replace_known:
            x = known.insert(x)
        return x, None

    x, _ = jax.lax.scan(step, x, (jnp.asarray(ts), jnp.asarray(prevs), step_keys))
    return x
