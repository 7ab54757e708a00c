"""`describe`: parameter counts agree with the built networks; FLOPs scale with the shapes."""

import jax
import pytest
from flax import nnx

from configs import common
from nuwa_jax import cli, parallel
from nuwa_jax.describe import describe
from nuwa_jax.hierarchy.models import HierarchyModels, check_hierarchy
from nuwa_jax.models.mardini import MarDini


def test_counts_match_built_models_and_flops_scale():
    """The networks are built abstractly (their constructors traced, nothing initialised
    or compiled): counts need shapes only."""
    config = common.base("tiny")
    table = describe(config)
    mesh, rules = parallel.make_mesh(config.mesh), parallel.logical_rules(config)
    built = HierarchyModels.create(config, mesh, rules, abstract=True).parameter_counts()
    assert table["text"]["parameters"] == built["text"]
    assert table["vae"]["parameters"] == built["vae"]
    assert table["mtd"]["parameters"] == built["mtd_global"] == built["mtd_local1"]
    assert all(table[k]["forward_gflops"] > 0 for k in ("text", "vae_encode", "vae_decode", "mtd"))
    assert table["mardini_planner"]["forward_gflops"] > 0
    assert table["mardini_generator"]["forward_gflops"] > 0
    md = nnx.eval_shape(lambda: MarDini(config.mardini, config.compute, rngs=nnx.Rngs(0)))
    count = lambda m: sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))  # noqa: E731
    assert table["mardini_planner"]["parameters"] == count(md.planner) + count(md.recon_head)
    assert table["mardini_generator"]["parameters"] == count(md) - count(md.planner) - count(
        md.recon_head
    )
    config.data.resolution *= 2  # 4x the pixels: 4x for convolutions, 16x for self-attention
    bigger = describe(config)
    assert 4.0 < bigger["mtd"]["forward_gflops"] / table["mtd"]["forward_gflops"] < 8.0
    assert bigger["mtd"]["parameters"] == table["mtd"]["parameters"]


def test_mismatched_sections_are_named():
    config = common.base("tiny")
    config.mtd.cross_attention_dim = 48
    with pytest.raises(ValueError, match="mtd.cross_attention_dim=48 != text.width=32"):
        check_hierarchy(config)
    config = common.base("tiny")
    config.hierarchy.share_local_models = True
    config.hierarchy.depth = 4
    with pytest.raises(ValueError, match="num_level_embeddings >= depth - 1 = 3"):
        check_hierarchy(config)


def test_mardini_on_other_latents_fails_before_tracing():
    """MarDini reads the VAE's latents: describe names the mismatch at once (the paper-scale
    config's 16-channel MarDini on a 4-channel VAE failed after minutes, inside the planner)."""
    config = cli.load_config("configs/tiny.py")
    config.mardini.latent_channels = config.vae.latent_channels * 4
    with pytest.raises(ValueError, match=r"mardini.latent_channels=16 != vae.latent_channels=4"):
        describe(config)
