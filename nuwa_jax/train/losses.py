"""Model-specific training losses, vdm style: each returns (loss, dict of named terms).

- `vae_loss`: T-KLVAE, L1 reconstruction + kl_weight * KL(q(z|x) || N(0, I)).
- `training_latents`: a batch's diffusion latents, encoded by the frozen VAE or sampled
  from a latent store's posterior moments.
- `mtd_loss`: NUWA-XL's MTD on one level's windows: frozen-VAE latents, prompt dropout
  for classifier-free guidance, q_sample, MTD(x_t, t, context, x0^c, x0^m), and the
  denoising MSE on the generated frames only.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from nuwa_jax import diffusion
from nuwa_jax.models.mtd import MTD
from nuwa_jax.models.text import TextEncoder
from nuwa_jax.models.vae import KLVAE, DiagonalGaussian, diffusion_latents

LATENT_KEYS = ("latent_mean", "latent_logvar")  # batches read from a latent store


def check_unavailable_terms(train: Any) -> None:
    """Perceptual (LPIPS) and adversarial terms need pretrained networks; none exist offline."""
    for name in ("perceptual_weight", "adversarial_weight"):
        if float(train[name]) != 0.0:
            raise ValueError(
                f"train.{name}={train[name]}: perceptual / adversarial VAE losses need "
                "pretrained LPIPS / discriminator weights, which this project cannot "
                "obtain offline; only 0.0 is supported"
            )


def vae_loss(
    vae: KLVAE, video: jax.Array, key: jax.Array, kl_weight: float
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """L1(decode(z), video) + kl_weight * KL, z a posterior sample; video (B, L, H, W, 3)."""
    recon, posterior = vae(video, rng=key)
    l1 = jnp.mean(jnp.abs(recon.astype(jnp.float32) - video.astype(jnp.float32)))
    kl = jnp.mean(posterior.kl())  # summed per frame, averaged over frames
    loss = l1 + kl_weight * kl
    return loss, {"l1": l1, "kl": kl}


def training_latents(
    batch: dict[str, jax.Array], key: jax.Array, vae_config: Any, vae: KLVAE | None = None
) -> jax.Array:
    """Diffusion latents (B, L, h, w, c) of a batch, without gradient.

    From a latent store (data.latents_dir): a sample of the stored posterior moments
    'latent_mean' / 'latent_logvar' (float16 on the host, float32 here), shifted and
    scaled by `vae_config` exactly like `KLVAE.encode_to_latents`; no VAE is needed.
    Otherwise the frozen `vae` encodes 'video' (the strided window as one clip).
    """
    if LATENT_KEYS[0] in batch:
        posterior = DiagonalGaussian.from_mean_logvar(batch[LATENT_KEYS[0]], batch[LATENT_KEYS[1]])
        z = diffusion_latents(posterior, vae_config.shift_factor, vae_config.scaling_factor, key)
    elif vae is None:
        raise ValueError("training_latents: the batch has no latents and no VAE was given")
    else:
        z = vae.encode_to_latents(batch["video"], rng=key)
    return jax.lax.stop_gradient(z)


def mtd_loss(
    mtd: MTD,
    text: TextEncoder,
    latents: jax.Array,
    tokens: jax.Array,
    cond_mask: jax.Array,
    key: jax.Array,
    *,
    schedule: diffusion.NoiseSchedule,
    prediction: str,
    uncond_tokens: jax.Array,
    prompt_dropout: float,
    level_id: int | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Denoising loss of one level's MTD.

    latents (B, L, h, w, c): frozen-VAE latents of the window; tokens (B, L, T) the
    per-frame prompts; cond_mask (B, L) bool, True where a frame is given (x0^m).
    """
    k_drop, k_t, k_noise = jax.random.split(key, 3)
    b = latents.shape[0]
    tokens = diffusion.drop_condition(k_drop, tokens, uncond_tokens, prompt_dropout)
    context = text(tokens)
    t = jax.random.randint(k_t, (b,), 0, schedule.num_timesteps)
    noise = jax.random.normal(k_noise, latents.shape, jnp.float32)
    x_t = diffusion.q_sample(schedule, latents, t, noise)
    mask = cond_mask.astype(latents.dtype)
    cond = latents * mask[:, :, None, None, None]  # x0^c: given frames, zeros elsewhere
    level = None if level_id is None else jnp.full((b,), level_id, jnp.int32)
    out = mtd(x_t, t, context, cond, mask, level=level)
    terms = diffusion.denoising_loss(
        out, latents, noise, t, ~cond_mask, schedule=schedule, prediction=prediction
    )
    return terms.loss, {
        "x0_mse": terms.x0_mse,
        "generated_fraction": terms.generated_fraction,
    }
