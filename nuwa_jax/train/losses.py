"""Model-specific training losses, vdm style: each returns (loss, dict of named terms).

- `vae_loss`: T-KLVAE, L1 reconstruction + kl_weight * KL(q(z|x) || N(0, I)), plus
  perceptual_weight * LPIPS and an optional patch-GAN term (with the discriminator's own
  hinge loss); `check_vae_loss_terms` checks their config.
- `training_latents`: a batch's diffusion latents, encoded by the frozen VAE or sampled
  from a latent store's posterior moments.
- `mtd_loss`: NUWA-XL's MTD on one level's windows: frozen-VAE latents, prompt dropout
  for classifier-free guidance, q_sample (the given frames kept clean in x_t with
  diffusion.given_frames='clean'), MTD(x_t, t, context, x0^c, x0^m), and the denoising
  MSE on the generated frames only.
- `mardini_loss`: MarDini on clips with kept-frame masks, by curriculum stage: the
  planner's masked reconstruction, or the masked v-loss (planning signals replaced by the
  learned null signal with probability signal_dropout).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from nuwa_jax import diffusion
from nuwa_jax.models import discriminator as discriminator_lib
from nuwa_jax.models.discriminator import PatchDiscriminator
from nuwa_jax.models.lpips import LPIPS
from nuwa_jax.models.mardini import MarDini, low_res_latents
from nuwa_jax.models.mtd import MTD
from nuwa_jax.models.text import TextEncoder
from nuwa_jax.models.vae import KLVAE, DiagonalGaussian, diffusion_latents

LATENT_KEYS = ("latent_mean", "latent_logvar")  # batches read from a latent store


def check_vae_loss_terms(config: Any) -> None:
    """Clear errors for VAE loss settings that cannot work (train.model='vae' only).

    perceptual_weight > 0 needs `train.perceptual_weights`, an existing LPIPS file written
    by `python -m nuwa_jax.convert.lpips`; adversarial_weight > 0 needs frames large enough
    for the discriminator's `train.discriminator_layers`.
    """
    t = config.train
    if t.model != "vae":
        return
    for name in ("kl_weight", "perceptual_weight", "adversarial_weight"):
        if float(t[name]) < 0:
            raise ValueError(f"train.{name}={t[name]} must be >= 0")
    if float(t.perceptual_weight) > 0:
        path = t.perceptual_weights
        how = (
            "convert torchvision's VGG16 and the lpips package's lin weights with "
            "`python -m nuwa_jax.convert.lpips --vgg=... --lin=... --out=...` (docs/training.md)"
        )
        if not path:
            raise ValueError(
                f"train.perceptual_weight={t.perceptual_weight} needs train.perceptual_weights, "
                f"the converted LPIPS weights, which is empty: {how}"
            )
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"train.perceptual_weights={path!r}: no such file (train.perceptual_weight="
                f"{t.perceptual_weight}); {how}"
            )
    if float(t.adversarial_weight) > 0:
        if t.adversarial_start_step < 0:
            raise ValueError(
                f"train.adversarial_start_step={t.adversarial_start_step} must be >= 0"
            )
        size = config.data.resolution
        if discriminator_lib.output_size(size, t.discriminator_layers) < 1:
            raise ValueError(
                f"train.discriminator_layers={t.discriminator_layers} is too deep for "
                f"data.resolution={size} px frames: the patch logits would be empty"
            )


def hard_pixel_l1(recon: jax.Array, video: jax.Array, fraction: float) -> jax.Array:
    """Mean L1 of each frame's worst `fraction` of pixels (at least one), over frames.

    Online hard-example mining at the pixel level: a sprite of 16 pixels in a 32 x 32
    frame is 1.6 % of the mean L1, which a VAE can minimise while drawing no sprite at all
    (benchmarks/vae_detail.py); among the worst pixels of its frame it is most of the term.
    recon, video: (..., H, W, C).
    """
    err = jnp.mean(jnp.abs(recon - video), axis=-1)  # (..., H, W)
    flat = err.reshape(-1, err.shape[-2] * err.shape[-1])
    k = max(1, int(round(fraction * flat.shape[-1])))
    return jnp.mean(jax.lax.top_k(flat, k)[0])


def vae_loss(
    vae: KLVAE,
    video: jax.Array,
    key: jax.Array,
    kl_weight: float,
    *,
    lpips: LPIPS | None = None,
    perceptual_weight: float = 0.0,
    discriminator: PatchDiscriminator | None = None,
    adversarial_weight: float = 0.0,
    adversarial_factor: jax.Array | float = 1.0,
    hard_pixel_weight: float = 0.0,
    hard_pixel_fraction: float = 0.02,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The T-KLVAE's loss on video (B, L, H, W, 3); returns (objective, named terms).

    vae_loss = L1(recon, video) + kl_weight * KL + perceptual_weight * mean LPIPS(recon,
    video) over frames + adversarial_factor * adversarial_weight * (-mean D(recon)), recon
    the decoding of a posterior sample. LPIPS runs when `lpips` is given and its weight is
    not 0, the adversarial part when `discriminator` is given and its weight is not 0.
    `hard_pixel_weight` > 0 adds that times `hard_pixel_l1` (the worst pixels of each
    frame), so small objects that the mean L1 can ignore still cost.

    The discriminator is trained in the same step on its hinge loss d_loss (real frames
    vs. reconstructions), gated by the same `adversarial_factor` (LDM's disc_start: 0
    before train.adversarial_start_step, then 1). The returned objective is
    vae_loss + adversarial_factor * d_loss, built so that its gradient holds exactly the
    two separate gradients: the generator term sees the discriminator's parameters through
    stop_gradient (no VAE-loss gradient reaches D) and d_loss sees stop_gradient(recon) (no
    D-loss gradient reaches the VAE). So one value_and_grad fills one gradient tree for
    the one optimiser. terms['vae_loss'] is the VAE's loss alone. The weight is fixed (no
    LDM adaptive weight from the decoder's last-layer gradient norms).
    """
    recon, posterior = vae(video, rng=key)
    recon32, video32 = recon.astype(jnp.float32), video.astype(jnp.float32)
    l1 = jnp.mean(jnp.abs(recon32 - video32))
    kl = jnp.mean(posterior.kl())  # summed per frame, averaged over frames
    loss = l1 + kl_weight * kl
    terms = {"l1": l1, "kl": kl}
    if hard_pixel_weight:
        hard = hard_pixel_l1(recon32, video32, hard_pixel_fraction)
        loss = loss + hard_pixel_weight * hard
        terms["hard_l1"] = hard
    if lpips is not None and perceptual_weight:
        perceptual = jnp.mean(lpips(recon, video))  # one distance per frame, (B, L)
        loss = loss + perceptual_weight * perceptual
        terms["lpips"] = perceptual
    objective = loss
    if discriminator is not None and adversarial_weight:
        factor = jnp.asarray(adversarial_factor, jnp.float32)
        graphdef, state = nnx.split(discriminator)
        fixed_d = nnx.merge(graphdef, jax.lax.stop_gradient(state))
        g_loss = discriminator_lib.generator_loss(fixed_d(recon))
        loss = loss + factor * adversarial_weight * g_loss
        both = jnp.concatenate([video, jax.lax.stop_gradient(recon).astype(video.dtype)])
        logits = discriminator(both)  # GroupNorm is per frame: one call, as two
        real, fake = logits[: video.shape[0]], logits[video.shape[0] :]
        d_loss = discriminator_lib.hinge_d_loss(real, fake)
        objective = loss + factor * d_loss
        terms.update(
            g_loss=g_loss,
            d_loss=d_loss,
            logits_real=jnp.mean(real),
            logits_fake=jnp.mean(fake),
            adversarial_factor=factor,
        )
    terms["vae_loss"] = loss
    return objective, terms


def training_latents(
    batch: dict[str, jax.Array],
    key: jax.Array,
    vae_config: Any,
    vae: KLVAE | None = None,
    sample: bool = True,
) -> jax.Array:
    """Diffusion latents (B, L, h, w, c) of a batch, without gradient; a posterior sample,
    or its mean with `sample=False` (train.sample_posterior).

    From a latent store (data.latents_dir): a sample of the stored posterior moments
    'latent_mean' / 'latent_logvar' (float16 on the host, float32 here), shifted and
    scaled by `vae_config` exactly like `KLVAE.encode_to_latents`; no VAE is needed.
    Otherwise the frozen `vae` encodes 'video' (the strided window as one clip).
    """
    if LATENT_KEYS[0] in batch:
        posterior = DiagonalGaussian.from_mean_logvar(batch[LATENT_KEYS[0]], batch[LATENT_KEYS[1]])
        z = diffusion_latents(posterior, vae_config.shift_factor, vae_config.scaling_factor,
                              key if sample else None)  # fmt: skip
    elif vae is None:
        raise ValueError("training_latents: the batch has no latents and no VAE was given")
    else:
        z = vae.encode_to_latents(batch["video"], rng=key if sample else None)
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
    level_id: int | jax.Array | None = None,
    given_frames: str = "noised",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Denoising loss of one level's MTD.

    latents (B, L, h, w, c): frozen-VAE latents of the window; tokens (B, L, T) the
    per-frame prompts; cond_mask (B, L) bool, True where a frame is given (x0^m);
    level_id: a shared local MTD's level-embedding id, one int or one per example (B,);
    given_frames: 'noised' (every frame of x_t noised, the paper) or 'clean' (the given
    frames clean in x_t, as sampling then re-imposes them: diffusion.given_frames).
    """
    k_drop, k_t, k_noise = jax.random.split(key, 3)
    b = latents.shape[0]
    tokens = diffusion.drop_condition(k_drop, tokens, uncond_tokens, prompt_dropout)
    context = text(tokens)
    t = jax.random.randint(k_t, (b,), 0, schedule.num_timesteps)
    noise = jax.random.normal(k_noise, latents.shape, jnp.float32)
    x_t = diffusion.q_sample(schedule, latents, t, noise)
    if diffusion.check_given_frames(given_frames) == "clean":
        x_t = diffusion.KnownFrames(latents, cond_mask).insert(x_t)
    mask = cond_mask.astype(latents.dtype)
    cond = latents * mask[:, :, None, None, None]  # x0^c: given frames, zeros elsewhere
    level = None if level_id is None else jnp.broadcast_to(jnp.asarray(level_id, jnp.int32), (b,))
    out = mtd(x_t, t, context, cond, mask, level=level)
    terms = diffusion.denoising_loss(
        out, latents, noise, t, ~cond_mask, schedule=schedule, prediction=prediction
    )
    return terms.loss, {
        "x0_mse": terms.x0_mse,
        "generated_fraction": terms.generated_fraction,
    }


def _masked_mse(err: jax.Array, frame_mask: jax.Array) -> jax.Array:
    """Mean of err^2 over the frames where frame_mask (B, L) is 1 (all of their elements)."""
    mask = frame_mask.astype(jnp.float32).reshape(frame_mask.shape + (1,) * (err.ndim - 2))
    count = jnp.sum(mask) * (err[0, 0].size)
    return jnp.sum(jnp.square(err.astype(jnp.float32)) * mask) / jnp.maximum(count, 1.0)


def mardini_loss(
    model: MarDini,
    latents: jax.Array,
    kept: jax.Array,
    key: jax.Array,
    *,
    stage: str,
    schedule: diffusion.NoiseSchedule,
    prediction: str = "v",
    signal_dropout: float = 0.1,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """MarDini's loss at a curriculum stage (nuwa_jax.train.curriculum).

    latents (B, L, h, w, c): frozen-VAE latents of the clips; kept (B, L) bool, True where
    a frame is given. Only the generated frames (~kept) count.
    'planner': MSE of `model.reconstruct(plan)` against the low-res latents.
    'generator' / 'joint': the planning signals (under stop_gradient for 'generator')
    replaced by the null signal with probability `signal_dropout`, the generated frames
    noised (q_sample; kept frames clean), and the `prediction` loss of the generator.
    """
    kept = jnp.asarray(kept, bool)
    generated = jnp.mean((~kept).astype(jnp.float32))
    signals = model.plan(latents, kept)
    if stage == "planner":
        target = low_res_latents(latents, model.low_res_factor)
        recon = model.reconstruct(signals, target.shape)
        mse = _masked_mse(recon - target.astype(jnp.float32), ~kept)
        return mse, {"recon_mse": mse, "generated_fraction": generated}
    if stage not in ("generator", "joint"):
        raise ValueError(f"mardini_loss: unknown stage {stage!r}")
    if stage == "generator":
        signals = jax.lax.stop_gradient(signals)
    k_drop, k_t, k_noise = jax.random.split(key, 3)
    signals = model.drop_signal(k_drop, signals, signal_dropout)
    t = jax.random.randint(k_t, (latents.shape[0],), 0, schedule.num_timesteps)
    noise = jax.random.normal(k_noise, latents.shape, jnp.float32)
    x_t = diffusion.q_sample(schedule, latents, t, noise)
    x_t = diffusion.KnownFrames(latents, kept).insert(x_t)
    out = model.denoise(x_t, t, signals, kept)
    terms = diffusion.denoising_loss(
        out, latents, noise, t, ~kept, schedule=schedule, prediction=prediction
    )
    return terms.loss, {"x0_mse": terms.x0_mse, "generated_fraction": terms.generated_fraction}
