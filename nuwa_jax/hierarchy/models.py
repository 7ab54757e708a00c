"""The networks of one NUWA-XL hierarchy: prompt encoder, T-KLVAE and one MTD per level.

The paper uses a separate MTD per level (global, local 1, local 2, ...). With
`hierarchy.share_local_models` one local MTD serves every local level and is told its
level through its level embedding. All networks are created sharded over the mesh
(`parallel.create_sharded_model`): no host holds a full copy.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

from nuwa_jax import parallel
from nuwa_jax.models.mtd import MTD
from nuwa_jax.models.text import TextEncoder
from nuwa_jax.models.vae import KLVAE, TKLVAE


def vae_class(config: Any) -> type[KLVAE]:
    """T-KLVAE when `vae.temporal` is on, the image KL-VAE otherwise."""
    return TKLVAE if config.vae.temporal else KLVAE


def check_hierarchy(config: Any) -> None:
    """Cross-section checks: the pieces of a hierarchy must fit together."""
    h, mtd = config.hierarchy, config.mtd
    if h.share_local_models and h.depth > 1 and mtd.num_level_embeddings < h.depth - 1:
        raise ValueError(
            f"hierarchy.share_local_models needs mtd.num_level_embeddings >= depth - 1 = "
            f"{h.depth - 1}, got {mtd.num_level_embeddings}"
        )
    if mtd.in_channels != config.vae.latent_channels:
        raise ValueError(
            f"mtd.in_channels={mtd.in_channels} != vae.latent_channels={config.vae.latent_channels}"
        )
    if mtd.cross_attention_dim != config.text.width:
        raise ValueError(
            f"mtd.cross_attention_dim={mtd.cross_attention_dim} != text.width={config.text.width}"
        )


@dataclasses.dataclass
class HierarchyModels:
    """text encoder, VAE and the MTD of every level (`mtds[level]`, shared objects allowed)."""

    text: TextEncoder
    vae: KLVAE
    mtds: tuple[MTD, ...]
    level_ids: tuple[int | None, ...]  # level-embedding id per level (None: no embedding)

    @classmethod
    def create(
        cls, config: Any, mesh: Mesh, rules: parallel.Rules, seed: int | None = None
    ) -> HierarchyModels:
        """Randomly initialised (or identity-initialised temporal) networks, sharded.

        Pretrained parts are imported afterwards (nuwa_jax.convert), trained ones restored
        from a checkpoint (nuwa_jax.train); both write into these sharded variables.
        """
        check_hierarchy(config)
        seed = config.seed if seed is None else seed
        make = lambda ctor, s: parallel.create_sharded_model(  # noqa: E731
            lambda: ctor(nnx.Rngs(s)), mesh, rules
        )
        text = make(lambda r: TextEncoder(config.text, config.compute, rngs=r), seed)
        vae = make(lambda r: vae_class(config)(config.vae, config.compute, rngs=r), seed + 1)
        new_mtd = lambda s: make(lambda r: MTD(config.mtd, config.compute, rngs=r), s)  # noqa: E731
        depth = config.hierarchy.depth
        if config.hierarchy.share_local_models and depth > 1:
            local = new_mtd(seed + 3)
            mtds = (new_mtd(seed + 2),) + (local,) * (depth - 1)
            level_ids = (None,) + tuple(range(depth - 1))
        else:
            mtds = tuple(new_mtd(seed + 2 + level) for level in range(depth))
            level_ids = (None,) * depth
        return cls(text, vae, mtds, level_ids)

    def reshard(self, mesh: Mesh, rules: parallel.Rules) -> HierarchyModels:
        """The same networks on another mesh (shared local models stay shared)."""
        moved: dict[int, Any] = {}
        move = lambda m: moved.setdefault(id(m), parallel.reshard_model(m, mesh, rules))  # noqa: E731
        return HierarchyModels(
            move(self.text), move(self.vae), tuple(move(m) for m in self.mtds), self.level_ids
        )

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per component (a shared local MTD counted once, as 'mtd_local')."""
        count = lambda m: sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))  # noqa: E731
        out = {"text": count(self.text), "vae": count(self.vae)}
        shared = len(self.mtds) > 2 and all(m is self.mtds[1] for m in self.mtds[1:])
        for level, m in enumerate(self.mtds):
            if level == 0:
                out["mtd_global"] = count(m)
            elif shared:
                out["mtd_local"] = count(m)
            else:
                out[f"mtd_local{level}"] = count(m)
        return out
