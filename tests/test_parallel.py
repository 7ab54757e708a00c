"""The parallel core: mesh shapes and errors, logical-axis rules, sharded == unsharded."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs import common
from nuwa_jax import parallel


def mesh_cfg(**kw):
    cfg = common.mesh_config()
    cfg.update(kw)
    return cfg


@pytest.mark.parametrize(
    "n, kw, want",
    [
        (1, {}, (1, 1, 1)),
        (2, {}, (2, 1, 1)),
        (2, dict(ici_data=1, ici_fsdp=-1), (1, 2, 1)),
        (8, {}, (8, 1, 1)),
        (8, dict(ici_fsdp=2, ici_tensor=2), (2, 2, 2)),
        (8, dict(ici_data=2, ici_fsdp=-1, ici_tensor=2), (2, 2, 2)),
        (8, dict(ici_data=1, ici_fsdp=8), (1, 8, 1)),
    ],
)
def test_mesh_shapes(n, kw, want):
    mesh = parallel.make_mesh(mesh_cfg(**kw), jax.devices()[:n])
    assert tuple(mesh.shape[a] for a in parallel.MESH_AXES) == want
    assert mesh.axis_names == parallel.MESH_AXES
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize(
    "n, kw, match",
    [
        (8, dict(ici_data=3), "multiply to 3, but there are 8 devices"),
        (8, dict(ici_fsdp=3), "not divisible by 3"),
        (8, dict(ici_data=-1, ici_fsdp=-1), "at most one ici"),
        (8, dict(ici_tensor=0), "positive or -1"),
        (2, dict(ici_data=4), "ici_data|data=4"),
    ],
)
def test_mesh_errors_name_the_sizes(n, kw, match):
    with pytest.raises(ValueError, match=match):
        parallel.make_mesh(mesh_cfg(**kw), jax.devices()[:n])


def test_multislice_shape_arithmetic():
    ici, dcn = parallel.mesh_shape(mesh_cfg(ici_fsdp=-1, ici_data=1, dcn_data=-1), 16, slices=4)
    assert ici == (1, 4, 1) and dcn == (4, 1, 1)
    with pytest.raises(ValueError, match="dcn"):
        parallel.mesh_shape(mesh_cfg(dcn_data=3), 16, slices=4)


def test_logical_to_spec_rules():
    mesh = parallel.make_mesh(mesh_cfg(ici_fsdp=2, ici_tensor=2))
    rules = parallel.logical_rules(common.base("tiny"))
    P = jax.sharding.PartitionSpec
    assert parallel.logical_to_spec(("embed", "mlp"), rules, mesh, (8, 8)) == P("fsdp", "tensor")
    assert parallel.logical_to_spec(("batch", None), rules, mesh, (8, 3)) == P(("data", "fsdp"))
    # A dimension an axis does not divide stays replicated on that axis.
    assert parallel.logical_to_spec(("embed", "mlp"), rules, mesh, (3, 8)) == P(None, "tensor")
    assert parallel.logical_to_spec(("batch",), rules, mesh, (2,)) == P("data")
    # A mesh axis is used once per array.
    assert parallel.logical_to_spec(("conv_in", "embed"), rules, mesh, (4, 4)) == P("fsdp")
    with pytest.raises(KeyError, match="'nonsense'"):
        parallel.logical_to_spec(("nonsense",), rules, mesh)
    with pytest.raises(ValueError, match="unknown mesh axis 'model'"):
        parallel.logical_rules((("embed", "model"),))


class TwoLayer(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        init = nnx.initializers.lecun_normal()
        self.w1 = nnx.Param(nnx.with_partitioning(init, ("embed", "mlp"))(rngs.params(), (16, 32)))
        self.w2 = nnx.Param(nnx.with_partitioning(init, ("mlp", "embed"))(rngs.params(), (32, 16)))
        self.scale = nnx.Param(jnp.ones((16,)), out_sharding=("norm",))

    def __call__(self, x):
        return jnp.tanh(x @ self.w1[...]) @ self.w2[...] * self.scale[...]


def test_sharded_model_and_computation_equal_unsharded():
    cfg = common.base("tiny")
    cfg.mesh.update(ici_fsdp=2, ici_tensor=2)
    mesh, rules = parallel.make_mesh(cfg.mesh), parallel.logical_rules(cfg)
    sharded = parallel.create_sharded_model(TwoLayer, mesh, rules, 0)
    plain = TwoLayer(nnx.Rngs(0))
    assert sharded.w1[...].sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert len(sharded.w1[...].addressable_shards) == 8
    assert sharded.w1[...].addressable_shards[0].data.shape == (8, 16)
    x = np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)
    xg = parallel.global_batch(x, mesh, rules)
    assert xg.sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
    y_sharded = jax.jit(lambda m, x: m(x))(sharded, xg)
    y_plain = plain(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(y_sharded), np.asarray(y_plain), rtol=1e-5, atol=1e-6)


def test_abstract_model_allocates_nothing_and_carries_shardings():
    cfg = common.base("tiny")
    cfg.mesh.update(ici_fsdp=4)
    mesh, rules = parallel.make_mesh(cfg.mesh), parallel.logical_rules(cfg)
    _, abstract = parallel.abstract_model(lambda: TwoLayer(nnx.Rngs(0)), mesh, rules)
    leaves = jax.tree.leaves(abstract)
    assert all(isinstance(a, jax.ShapeDtypeStruct) for a in leaves)
    assert {a.sharding.spec for a in leaves} >= {jax.sharding.PartitionSpec("fsdp")}


class Sized(nnx.Module):
    """A network whose shape comes from a config section; counts its constructions."""

    built = 0

    def __init__(self, section, rngs: nnx.Rngs):
        Sized.built += 1
        init = nnx.initializers.normal()
        self.w = nnx.Param(
            nnx.with_partitioning(init, ("embed", "mlp"))(rngs.params(), (16, section.width))
        )


def test_create_network_traces_each_architecture_once():
    """create_network == create_sharded_model for every seed; a second network of one
    (class, sections, mesh, rules) runs the kept init (the constructor is not called
    again), a different section value or mesh builds anew."""
    cfg = common.base("tiny")
    cfg.mesh.update(ici_fsdp=2, ici_tensor=2)
    mesh, rules = parallel.make_mesh(cfg.mesh), parallel.logical_rules(cfg)
    section = ml_collections.ConfigDict(dict(width=32))
    first = parallel.create_network(Sized, (section,), mesh, rules, 1)
    built = Sized.built
    second = parallel.create_network(Sized, (section,), mesh, rules, 2)
    assert Sized.built == built  # no new trace
    for seed, net in ((1, first), (2, second)):
        want = parallel.create_sharded_model(lambda r: Sized(section, r), mesh, rules, seed)
        np.testing.assert_array_equal(np.asarray(net.w[...]), np.asarray(want.w[...]))
        assert net.w[...].sharding == want.w[...].sharding
    assert not np.array_equal(np.asarray(first.w[...]), np.asarray(second.w[...]))
    assert first.w is not second.w
    wider = parallel.create_network(Sized, (ml_collections.ConfigDict(dict(width=48)),),
                                    mesh, rules, 1)  # fmt: skip
    assert wider.w[...].shape == (16, 48)
    one = parallel.make_mesh(cfg.mesh.copy_and_resolve_references(), jax.devices()[:4])
    on_four = parallel.create_network(Sized, (section,), one, rules, 1)
    assert len(on_four.w[...].sharding.device_set) == 4
    _, abstract = parallel.abstract_network(Sized, (section,), mesh, rules)
    assert parallel.abstract_network(Sized, (section,), mesh, rules)[1] is abstract


def test_batch_divisor():
    cfg = common.base("tiny")
    cfg.mesh.update(ici_fsdp=2, ici_tensor=2)
    mesh, rules = parallel.make_mesh(cfg.mesh), parallel.logical_rules(cfg)
    assert parallel.batch_divisor(mesh, rules, "batch") == 4
    assert parallel.batch_divisor(mesh, rules, "segments") == 4


@pytest.mark.parametrize(
    "env, match",
    [
        ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1"}, "JAX_NUM_PROCESSES, JAX_PROCESS_ID"),
        (
            {"JAX_COORDINATOR_ADDRESS": "x:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "a"},
            "must be integers",
        ),
        (
            {"JAX_COORDINATOR_ADDRESS": "x:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
            r"JAX_PROCESS_ID=2 is not in \[0, JAX_NUM_PROCESSES=2\)",
        ),
    ],
)
def test_distributed_env_errors(env, match):
    with pytest.raises(ValueError, match=match):
        parallel.initialize_distributed(env)


def test_single_process_needs_no_initialisation():
    assert parallel.initialize_distributed({}) == "single process"
