"""nuwa-jax: NUWA-XL (Diffusion over Diffusion) and MarDini, masked-frame video diffusion in JAX.

Flax's eager variable sharding is switched off here, for the whole package: models are
built unsharded where no mesh exists (tests, weight conversion) and sharded by
`nuwa_jax.parallel.create_sharded_model`, which reads the same logical-axis metadata.
"""

import flax

flax.config.update("flax_always_shard_variable", False)

__version__ = "0.1.0"
