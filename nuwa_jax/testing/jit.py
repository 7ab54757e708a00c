"""`jit_module`: a module method jitted over the module's state, compiled once per graph."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import nnx


def jit_module(fn: Callable[..., Any]) -> Callable[..., Any]:
    """fn(module, *args) -> jitted call taking the module; one compile per module graph.

    Modules of the same structure (a model and its converted twin, sharded or not) share
    the compiled function, since only their state differs.
    """
    cache: dict[Any, Callable[..., Any]] = {}

    def call(module: nnx.Module, *args: Any) -> Any:
        graphdef, state = nnx.split(module)
        if graphdef not in cache:
            cache[graphdef] = jax.jit(lambda s, *a: fn(nnx.merge(graphdef, s), *a))
        return cache[graphdef](state, *args)

    return call
