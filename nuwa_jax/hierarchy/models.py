"""The networks of one NUWA-XL hierarchy: prompt encoder, T-KLVAE and one MTD per level.

The paper uses a separate MTD per level (global, local 1, local 2, ...). With
`hierarchy.share_local_models` one local MTD serves every local level and is told its
level through its level embedding. All networks are created sharded over the mesh
(`parallel.create_sharded_model`): no host holds a full copy.

Text encoders: one, shared by every level (a frozen CLIP, random weights), or one per MTD
(`per_level_text`): the trainer trains a byte encoder jointly with each level's MTD
(`text.trainable`), so every MTD comes with the encoder it learned to read, and a hierarchy
built from trained weights keeps them paired (nuwa_jax/hierarchy/bundle.py).

MarDini (optional, `mardini`): with `hierarchy.local_backbone='mardini'` it runs every
local level instead of the local MTDs (which are still built, so one set of networks
renders a storyboard either way); it is also the network of the MarDini tasks
(nuwa_jax/mardini_tasks.py), which need only it and the VAE (`mtds=False`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

from nuwa_jax import parallel
from nuwa_jax.models.mardini import MarDini, dims
from nuwa_jax.models.mtd import MTD
from nuwa_jax.models.text import TextEncoder
from nuwa_jax.models.vae import KLVAE, TKLVAE

LOCAL_BACKBONES = ("mtd", "mardini")
MARDINI_SEED_OFFSET = 100  # a random MarDini's seed: config.seed + this


def local_backbone(config: Any) -> str:
    """`hierarchy.local_backbone` ('mtd' when the config predates it), checked."""
    backbone = config.hierarchy.get("local_backbone", "mtd")
    if backbone not in LOCAL_BACKBONES:
        raise ValueError(f"hierarchy.local_backbone {backbone!r} is not one of {LOCAL_BACKBONES}")
    return backbone


def check_mardini(config: Any, hierarchy: bool) -> None:
    """MarDini must read the VAE's latents; as the hierarchy's local model (`hierarchy`)
    its clip must be a segment: mardini.num_frames == hierarchy.frames_per_call."""
    d = dims(config.mardini)
    if d.latent_channels != config.vae.latent_channels:
        raise ValueError(
            f"mardini.latent_channels={d.latent_channels} != "
            f"vae.latent_channels={config.vae.latent_channels}"
        )
    h = config.hierarchy
    if hierarchy and h.depth > 1 and d.num_frames != h.frames_per_call:
        raise ValueError(
            f"hierarchy.local_backbone='mardini' needs mardini.num_frames ({d.num_frames}) == "
            f"hierarchy.frames_per_call ({h.frames_per_call}): every local segment is one "
            "MarDini clip"
        )


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
    if local_backbone(config) == "mardini":
        check_mardini(config, hierarchy=True)


@dataclasses.dataclass
class HierarchyModels:
    """text encoder, VAE and the MTD of every level (`mtds[level]`, shared objects allowed).

    `level_texts` (optional): the text encoder of each level's MTD (`text_of(level)`); empty
    means `text` serves every level. When set, `text` is level 0's. `mardini` (optional):
    MarDini, the local levels' model with hierarchy.local_backbone='mardini' and the model
    of the MarDini tasks; those need only it and the VAE (then `text` is None, `mtds` ()).
    """

    text: TextEncoder | None
    vae: KLVAE
    mtds: tuple[MTD, ...]
    level_ids: tuple[int | None, ...]  # level-embedding id per level (None: no embedding)
    level_texts: tuple[TextEncoder, ...] = ()
    mardini: MarDini | None = None

    @classmethod
    def create(
        cls,
        config: Any,
        mesh: Mesh,
        rules: parallel.Rules,
        seed: int | None = None,
        per_level_text: bool = False,
        abstract: bool = False,
        mardini: bool | None = None,
        mtds: bool = True,
    ) -> HierarchyModels:
        """Randomly initialised (or identity-initialised temporal) networks, sharded.

        Pretrained parts are imported afterwards (nuwa_jax.convert), trained ones loaded
        from a bundle (nuwa_jax.hierarchy.bundle); both write into these sharded variables.
        `per_level_text`: one text encoder per MTD (shared like the MTDs), each from the
        text seed, as every MTD training run starts its encoder. `abstract`: nothing is
        initialised or allocated; every variable holds a ShapeDtypeStruct carrying its
        target sharding, for a loader to fill (every one of them) with real arrays.
        `mardini`: build a MarDini too (seed + MARDINI_SEED_OFFSET; None: when
        hierarchy.local_backbone is 'mardini'). `mtds=False`: no text encoder and no MTDs,
        only the VAE and the MarDini (the MarDini tasks).
        """
        with_mardini = local_backbone(config) == "mardini" if mardini is None else mardini
        if mtds:
            check_hierarchy(config)
        elif not with_mardini:
            raise ValueError("HierarchyModels.create: mtds=False needs mardini (VAE + MarDini)")
        if with_mardini:
            check_mardini(config, hierarchy=mtds and local_backbone(config) == "mardini")
        seed = config.seed if seed is None else seed

        def make(network, section, s):
            """`network(section, config.compute)` with seed s: created sharded, or abstract
            (each architecture traced once per process, parallel.create_network)."""
            sections = (section, config.compute)
            if not abstract:
                return parallel.create_network(network, sections, mesh, rules, s)
            traced = parallel.abstract_network(network, sections, mesh, rules)
            return nnx.merge(*traced, copy=True)  # new, independent variables each time

        vae = make(vae_class(config), config.vae, seed + 1)
        net = None
        if with_mardini:
            net = make(MarDini, config.mardini, seed + MARDINI_SEED_OFFSET)
        if not mtds:
            return cls(None, vae, (), (), mardini=net)
        new_text = lambda: make(TextEncoder, config.text, seed)  # noqa: E731
        text = new_text()
        new_mtd = lambda s: make(MTD, config.mtd, s)  # noqa: E731
        depth = config.hierarchy.depth
        shared = config.hierarchy.share_local_models and depth > 1
        if shared:
            local = new_mtd(seed + 3)
            level_mtds = (new_mtd(seed + 2),) + (local,) * (depth - 1)
            level_ids = (None,) + tuple(range(depth - 1))
        else:
            level_mtds = tuple(new_mtd(seed + 2 + level) for level in range(depth))
            level_ids = (None,) * depth
        level_texts: tuple[TextEncoder, ...] = ()
        if per_level_text:
            if shared:
                local_text = new_text()
                level_texts = (text,) + (local_text,) * (depth - 1)
            else:
                level_texts = (text,) + tuple(new_text() for _ in range(depth - 1))
        return cls(text, vae, level_mtds, level_ids, level_texts, net)

    def text_of(self, level: int) -> TextEncoder:
        """The text encoder that conditions the MTD of `level`."""
        return self.level_texts[level] if self.level_texts else self.text

    def reshard(self, mesh: Mesh, rules: parallel.Rules) -> HierarchyModels:
        """The same networks on another mesh (shared local models stay shared)."""
        moved: dict[int, Any] = {}

        def move(m):
            if m is None:
                return None
            if id(m) not in moved:
                moved[id(m)] = parallel.reshard_model(m, mesh, rules)
            return moved[id(m)]

        return HierarchyModels(
            move(self.text),
            move(self.vae),
            tuple(move(m) for m in self.mtds),
            self.level_ids,
            tuple(move(t) for t in self.level_texts),
            move(self.mardini),
        )

    def components(self) -> dict[str, Any]:
        """{name: network}, each distinct network once, in a fixed order.

        Names: 'text' (one encoder for all levels) or 'text_global', 'text_local1', ...;
        'vae'; 'mtd_global', 'mtd_local1', ... ('mtd_local' / 'text_local' for one local
        network shared by every local level of a depth >= 3 hierarchy); 'mardini' when
        there is one. A VAE + MarDini set (no MTDs) has just 'vae' and 'mardini'.
        """
        shared = len(self.mtds) > 2 and all(m is self.mtds[1] for m in self.mtds[1:])

        def per_level(prefix: str, nets) -> dict[str, Any]:
            out = {}
            for level, m in enumerate(nets):
                if level == 0:
                    out[f"{prefix}_global"] = m
                elif shared:
                    out[f"{prefix}_local"] = m
                else:
                    out[f"{prefix}_local{level}"] = m
            return out

        out = per_level("text", self.level_texts) if self.level_texts else {"text": self.text}
        if self.text is None:
            out = {}
        out["vae"] = self.vae
        out.update(per_level("mtd", self.mtds))
        if self.mardini is not None:
            out["mardini"] = self.mardini
        return out

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per component (a shared local MTD counted once, as 'mtd_local')."""
        count = lambda m: sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))  # noqa: E731
        return {name: count(m) for name, m in self.components().items()}
