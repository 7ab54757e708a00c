"""The diffusion core: schedules, parameterisations and loss, samplers, guidance."""

from nuwa_jax.diffusion.guidance import drop_condition, guided
from nuwa_jax.diffusion.parameterization import (
    GIVEN_FRAMES,
    DiffusionLoss,
    check_given_frames,
    check_prediction_schedule,
    denoising_loss,
    q_sample,
)
from nuwa_jax.diffusion.samplers import KnownFrames, ddim_step, ddpm_step, sample, timesteps
from nuwa_jax.diffusion.schedules import NoiseSchedule, beta_schedule

__all__ = [
    "GIVEN_FRAMES",
    "DiffusionLoss",
    "KnownFrames",
    "NoiseSchedule",
    "beta_schedule",
    "check_given_frames",
    "check_prediction_schedule",
    "ddim_step",
    "ddpm_step",
    "denoising_loss",
    "drop_condition",
    "guided",
    "q_sample",
    "sample",
    "timesteps",
]
