"""What the denoiser predicts, and the training objective.

With x_t = alpha_t x_0 + sigma_t eps (alpha_t^2 + sigma_t^2 = 1) the network may predict
- 'epsilon': eps (DDPM; NUWA-XL's MTD), or
- 'v': v = alpha_t eps - sigma_t x_0 (Salimans & Ho; MarDini).
Any one of (eps, x_0, v) and x_t give the other two; the functions below are those identities.

The loss is the MSE between the prediction and its target, averaged over the frames that are
generated only (MarDini masks out its reference frames; NUWA-XL's local models keep their first
and last frames): `denoising_loss`.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from nuwa_jax.diffusion.schedules import NoiseSchedule, _expand

PREDICTIONS = ("epsilon", "v")
# How a masked-frame model sees its given frames: 'noised' (NUWA-XL as written: every frame
# of x_t is noised, the given ones reach the model only as the condition x0^c) or 'clean'
# (MarDini's [REF] frames: given frames are clean in x_t in training and written back clean
# after every sampling step, so the temporal layers carry them, not their noise).
GIVEN_FRAMES = ("noised", "clean")


def check_prediction(prediction: str) -> str:
    """`prediction` if known, else a ValueError naming it."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"diffusion.prediction: unknown {prediction!r}; use {PREDICTIONS}")
    return prediction


def check_given_frames(given_frames: str) -> str:
    """`given_frames` if known, else a ValueError naming it."""
    if given_frames not in GIVEN_FRAMES:
        raise ValueError(f"diffusion.given_frames: unknown {given_frames!r}; use {GIVEN_FRAMES}")
    return given_frames


def check_prediction_schedule(prediction: str, zero_terminal_snr: bool, field: str) -> None:
    """A zero-terminal-SNR schedule keeps no signal at its last step, where x_0 = (x_t -
    sigma eps) / alpha divides by 0: epsilon prediction cannot sample or train there.
    `field` names the prediction's config field in the error."""
    if zero_terminal_snr and check_prediction(prediction) == "epsilon":
        raise ValueError(
            f"diffusion.zero_terminal_snr=True with {field}='epsilon': the last step keeps no "
            f"signal and epsilon cannot give x_0 there; set {field}='v' or "
            "diffusion.zero_terminal_snr=False"
        )


def q_sample(schedule: NoiseSchedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """x_t = alpha_t x_0 + sigma_t eps; `t` (B,) or (B, L) broadcasts from the left."""
    a, s = _expand(schedule.alpha(t), x0), _expand(schedule.sigma(t), x0)
    return (a * x0 + s * noise).astype(x0.dtype)


# Identities between eps, x_0 and v at one (alpha, sigma); alpha, sigma broadcast against x.
def x0_from_eps(x_t: jax.Array, eps: jax.Array, alpha: jax.Array, sigma: jax.Array) -> jax.Array:
    return (x_t - sigma * eps) / alpha


def eps_from_x0(x_t: jax.Array, x0: jax.Array, alpha: jax.Array, sigma: jax.Array) -> jax.Array:
    return (x_t - alpha * x0) / sigma


def v_from_eps_x0(eps: jax.Array, x0: jax.Array, alpha: jax.Array, sigma: jax.Array) -> jax.Array:
    return alpha * eps - sigma * x0


def x0_from_v(x_t: jax.Array, v: jax.Array, alpha: jax.Array, sigma: jax.Array) -> jax.Array:
    return alpha * x_t - sigma * v


def eps_from_v(x_t: jax.Array, v: jax.Array, alpha: jax.Array, sigma: jax.Array) -> jax.Array:
    return sigma * x_t + alpha * v


def predict_x0_eps(
    prediction: str, model_out: jax.Array, x_t: jax.Array, alpha: jax.Array, sigma: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(x_0, eps) implied by the network output under `prediction`."""
    if check_prediction(prediction) == "epsilon":
        return x0_from_eps(x_t, model_out, alpha, sigma), model_out
    return x0_from_v(x_t, model_out, alpha, sigma), eps_from_v(x_t, model_out, alpha, sigma)


def target(
    prediction: str, x0: jax.Array, noise: jax.Array, alpha: jax.Array, sigma: jax.Array
) -> jax.Array:
    """What the network should output for (x_0, eps): eps itself, or v."""
    if check_prediction(prediction) == "epsilon":
        return noise
    return v_from_eps_x0(noise, x0, alpha, sigma)


@flax.struct.dataclass
class DiffusionLoss:
    """Named terms of the denoising objective (all float32 scalars except `per_example`).

    loss: the MSE of prediction vs target over generated frames, what the optimiser minimises.
    per_example: (B,) the same MSE per example (zero for an example with nothing generated).
    x0_mse: MSE of the implied x_0 over generated frames (a diagnostic in latent units).
    generated_fraction: share of frames that count in the loss.
    """

    loss: jax.Array
    per_example: jax.Array
    x0_mse: jax.Array
    generated_fraction: jax.Array


def denoising_loss(
    model_out: jax.Array,
    x0: jax.Array,
    noise: jax.Array,
    t: jax.Array,
    frame_mask: jax.Array | None = None,
    *,
    schedule: NoiseSchedule,
    prediction: str = "epsilon",
) -> DiffusionLoss:
    """MSE(model_out, target) averaged over the generated frames of a batch of videos.

    model_out, x0, noise: (B, L, h, w, c) (any trailing layout after (B, L) works).
    t: (B,) integer timesteps, or (B, L) per frame.
    frame_mask: (B, L), 1 where a frame is GENERATED (counts in the loss), 0 where it is
        known / a reference; None counts every frame. It broadcasts over the trailing axes.
    """
    if model_out.shape != x0.shape or noise.shape != x0.shape:
        raise ValueError(
            f"denoising_loss: model_out {model_out.shape}, x0 {x0.shape} and noise "
            f"{noise.shape} must have one shape"
        )
    x0, noise = x0.astype(jnp.float32), noise.astype(jnp.float32)
    out = model_out.astype(jnp.float32)
    alpha, sigma = _expand(schedule.alpha(t), x0), _expand(schedule.sigma(t), x0)
    if frame_mask is None:
        frame_mask = jnp.ones(x0.shape[:2], jnp.float32)
    if frame_mask.shape != x0.shape[: frame_mask.ndim]:
        raise ValueError(
            f"denoising_loss: frame_mask {frame_mask.shape} does not lead x0 {x0.shape}"
        )
    mask = _expand(frame_mask.astype(jnp.float32), x0)
    per_frame_size = x0.size // frame_mask.size  # elements per masked unit (h * w * c)
    reduce = tuple(range(1, x0.ndim))

    def masked_mse(err: jax.Array) -> tuple[jax.Array, jax.Array]:
        sq = jnp.square(err) * mask
        count = jnp.sum(mask, axis=reduce) * per_frame_size
        per_example = jnp.sum(sq, axis=reduce) / jnp.maximum(count, 1.0)
        return jnp.sum(sq) / jnp.maximum(jnp.sum(count), 1.0), per_example

    loss, per_example = masked_mse(out - target(prediction, x0, noise, alpha, sigma))
    x_t = alpha * x0 + sigma * noise
    x0_mse, _ = masked_mse(predict_x0_eps(prediction, out, x_t, alpha, sigma)[0] - x0)
    return DiffusionLoss(loss, per_example, x0_mse, jnp.mean(frame_mask.astype(jnp.float32)))
