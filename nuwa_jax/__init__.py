"""nuwa-jax: NUWA-XL (Diffusion over Diffusion) and MarDini, masked-frame video diffusion in JAX.

Flax's eager variable sharding is switched off here, for the whole package: models are
built unsharded where no mesh exists (tests, weight conversion) and sharded by
`nuwa_jax.parallel.create_sharded_model`, which reads the same logical-axis metadata.
"""

import flax

flax.config.update("flax_always_shard_variable", False)


def _cheap_tracer_sharding_error() -> None:
    """Makes `getattr(tracer, "sharding", None)` cheap again (model construction under jit).

    Flax's `Variable.set_value` probes `getattr(value, "sharding", None)` on every write,
    e.g. each `rngs.params()` counter step. On a tracer, jax raises AttributeError with a
    message that walks the whole trace to say where the value came from, so building a
    model under `jit`/`eval_shape` is quadratic in its size (a tiny MTD: 15 s of tracing
    instead of 2). The same AttributeError is raised here, without that walk.
    """
    from jax._src import core

    prop = getattr(core.Tracer, "sharding", None)
    if not isinstance(prop, property):
        return

    def sharding(self):
        raise AttributeError(f"The 'sharding' attribute is not available on {self._error_repr()}.")

    core.Tracer.sharding = property(sharding, doc=prop.__doc__)


_cheap_tracer_sharding_error()

__version__ = "0.1.0"
