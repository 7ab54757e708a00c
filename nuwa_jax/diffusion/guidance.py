"""Classifier-free guidance (Ho & Salimans): training-time prompt dropout, sampling-time mix.

At sampling the model runs once on [cond; uncond] stacked on the batch axis and
out = uncond + s * (cond - uncond); s = 1 is plain conditional sampling and skips the
unconditional half. The condition is any pytree (prompt embeddings, MarDini's planning
signal); `uncond` has the same structure (empty-prompt embeddings, a learned null signal).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def _concat(a: Any, b: Any) -> Any:
    return jax.tree.map(lambda u, v: jnp.concatenate([u, v], axis=0), a, b)


def guided(model_fn: Callable, scale: float, uncond: Any) -> Callable:
    """model_fn(x, t, cond, known) with classifier-free guidance at `scale` (a Python float).

    `uncond` leaves broadcast to the matching `cond` leaves (one null prompt serves a whole
    batch); `known` (frames given in advance, or None) is duplicated for both halves.
    """
    if isinstance(scale, int | float) and scale == 1:
        return model_fn
    if uncond is None:
        raise ValueError(f"diffusion.guidance_scale={scale} needs an unconditional input")

    def fn(x, t, cond, known=None):
        if jax.tree.structure(cond) != jax.tree.structure(uncond):
            raise ValueError("guidance: cond and uncond must have the same pytree structure")
        null = jax.tree.map(lambda c, u: jnp.broadcast_to(u, c.shape).astype(c.dtype), cond, uncond)
        both_known = None if known is None else _concat(known, known)
        out = model_fn(_concat(x, x), _concat(t, t), _concat(cond, null), both_known)
        out_cond, out_uncond = jnp.split(out, 2, axis=0)
        return out_uncond + scale * (out_cond - out_uncond)

    return fn


def drop_condition(key: jax.Array, cond: Any, uncond: Any, rate: float) -> Any:
    """Replaces each example's condition by `uncond` with probability `rate` (CFG training).

    Every leaf of `cond` has the batch first; the matching leaf of `uncond` broadcasts to
    one example (e.g. cond tokens (B, L, T) and the empty prompt's tokens (T,) or (L, T)).
    One draw per example, shared by all leaves.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"diffusion.prompt_dropout={rate} must be in [0, 1]")
    batch = jax.tree.leaves(cond)[0].shape[0]
    drop = jax.random.bernoulli(key, rate, (batch,))

    def one(c, u):
        d = drop.reshape((batch,) + (1,) * (c.ndim - 1))
        return jnp.where(d, jnp.broadcast_to(u, c.shape[1:]).astype(c.dtype), c)

    return jax.tree.map(one, cond, uncond)
