"""Discrete noise schedules: the forward process q(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I).

A schedule is one table, `alphas_cumprod` (alpha-bar_t for t = 0 .. T-1), from which
alpha_t = sqrt(alpha-bar_t) and sigma_t = sqrt(1 - alpha-bar_t) follow. Everything else in
`nuwa_jax.diffusion` reads the schedule through that table only, so a schedule is swapped by
building another `NoiseSchedule` (vdm's "the schedule is a module").

Betas are computed as diffusers computes them (scaled_linear is Stable Diffusion's), in float64
then stored as float32 betas; alpha-bar is their float64 cumulative product, stored float32.
That matches diffusers' `alphas_cumprod` to about 1e-6 relative.

`zero_terminal_snr` (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps
are Flawed") rescales sqrt(alpha-bar) linearly so that the last step keeps no signal at all:
SD's scaled_linear keeps alpha-bar = 0.0047 at t = T-1, so a model trained on it never sees
pure noise, yet sampling starts there. With it, alpha-bar_{T-1} = 0 and epsilon prediction
cannot recover x_0 at that step: it needs v-prediction
(`parameterization.check_prediction_schedule`).
"""

from __future__ import annotations

import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def _cosine_alpha_bar(s: float) -> float:
    """Nichol & Dhariwal's alpha-bar(s) for s in [0, 1] (offset 0.008)."""
    return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2


def beta_schedule(
    kind: str, num_timesteps: int, beta_start: float = 0.00085, beta_end: float = 0.012
) -> np.ndarray:
    """The betas (num_timesteps,) float32 of a named schedule, as diffusers defines them.

    - 'linear': betas evenly spaced from beta_start to beta_end;
    - 'scaled_linear': sqrt(betas) evenly spaced (Stable Diffusion: 0.00085 .. 0.012);
    - 'squaredcos_cap_v2': the cosine schedule, betas capped at 0.999 (start/end unused).
    """
    if num_timesteps < 1:
        raise ValueError(f"diffusion.num_train_timesteps must be >= 1, got {num_timesteps}")
    if kind == "linear":
        betas = np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
    elif kind == "scaled_linear":
        betas = np.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=np.float64) ** 2
    elif kind == "squaredcos_cap_v2":
        edges = [_cosine_alpha_bar(i / num_timesteps) for i in range(num_timesteps + 1)]
        betas = np.array([min(1 - b / a, 0.999) for a, b in zip(edges[:-1], edges[1:])])
    else:
        raise ValueError(
            f"diffusion.schedule: unknown beta schedule {kind!r}; use {BETA_SCHEDULES}"
        )
    return betas.astype(np.float32)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Betas whose alpha-bar ends at exactly 0 (Lin et al. 2024, Algorithm 1; diffusers'
    `rescale_zero_terminal_snr`): sqrt(alpha-bar) shifted so its last value is 0 and scaled
    so its first is unchanged."""
    abar_sqrt = np.sqrt(np.cumprod(1.0 - betas.astype(np.float64)))
    first, last = abar_sqrt[0], abar_sqrt[-1]
    abar_sqrt = (abar_sqrt - last) * first / (first - last)
    abar = abar_sqrt**2
    alphas = np.concatenate([abar[:1], abar[1:] / abar[:-1]])
    return (1.0 - alphas).astype(np.float32)


def _expand(a: jax.Array, x: jax.Array) -> jax.Array:
    """`a` with trailing unit axes appended so it broadcasts against `x` from the left."""
    a = jnp.asarray(a)
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


@flax.struct.dataclass
class NoiseSchedule:
    """alpha-bar_t for integer t in [0, T); a pytree, so it passes into jit as data.

    Index -1 stands for "before step 0" (the clean end of the chain) and reads `final`
    (1.0, or alpha-bar_0 where diffusers' `set_alpha_to_one=False`).
    """

    alphas_cumprod: jax.Array  # (T,) float32
    final: jax.Array  # () float32: alpha-bar at t = -1

    @classmethod
    def create(
        cls,
        kind: str = "scaled_linear",
        num_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        set_alpha_to_one: bool = True,
        zero_terminal_snr: bool = False,
    ) -> NoiseSchedule:
        """The schedule of a named beta schedule (see `beta_schedule`), optionally rescaled
        to zero terminal SNR."""
        betas = beta_schedule(kind, num_timesteps, beta_start, beta_end)
        if zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
        abar = np.cumprod(1.0 - betas.astype(np.float64)).astype(np.float32)
        final = np.float32(1.0) if set_alpha_to_one else abar[0]
        return cls(jnp.asarray(abar), jnp.asarray(final))

    @classmethod
    def from_config(cls, config: Any) -> NoiseSchedule:
        """The schedule of a `diffusion` config section (configs/common.py)."""
        return cls.create(
            config.schedule,
            config.num_train_timesteps,
            config.beta_start,
            config.beta_end,
            config.set_alpha_to_one,
            bool(config.get("zero_terminal_snr", False)),
        )

    @property
    def num_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    def alpha_bar(self, t: jax.Array) -> jax.Array:
        """alpha-bar_t, elementwise over integer `t`; t < 0 reads `final`."""
        t = jnp.asarray(t)
        return jnp.where(t >= 0, self.alphas_cumprod[jnp.maximum(t, 0)], self.final)

    def alpha(self, t: jax.Array) -> jax.Array:
        """Signal scale alpha_t = sqrt(alpha-bar_t)."""
        return jnp.sqrt(self.alpha_bar(t))

    def sigma(self, t: jax.Array) -> jax.Array:
        """Noise scale sigma_t = sqrt(1 - alpha-bar_t)."""
        return jnp.sqrt(1.0 - self.alpha_bar(t))

    def snr(self, t: jax.Array) -> jax.Array:
        """Signal-to-noise ratio alpha_t^2 / sigma_t^2."""
        abar = self.alpha_bar(t)
        return abar / (1.0 - abar)
