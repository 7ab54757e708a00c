"""Device mesh, logical-axis sharding, sharded model creation, global batches, multi-host.

MaxText-style: the mesh has axes `data`, `fsdp`, `tensor`; models name their axes with
logical names only (see configs/common.py:sharding_config) and the config's rules map
those names to mesh axes. At generation time the segments of one infill level are the
batch, so they land on `data` (and `fsdp`), and a pod fills a whole level at once.

Mesh axes are `AxisType.Auto` on purpose: jax 0.10's `make_mesh` defaults to Explicit
(sharding in types), but our models are written pjit-style, with shardings on the
inputs, outputs and parameters and XLA's propagation in between.

Flax's eager variable sharding is off (nuwa_jax/__init__.py): models can be built
without a mesh (unit tests, conversion), and `create_sharded_model` shards them here,
abstractly first, so that no host ever holds a full copy of a large model.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
Rules = tuple[tuple[str, Any], ...]
M = TypeVar("M", bound=nnx.Module)


# ---------------------------------------------------------------------------------------
# Mesh.
# ---------------------------------------------------------------------------------------
def _fill(sizes: Sequence[int], total: int, what: str) -> tuple[int, ...]:
    """Replaces the one -1 in `sizes` so their product is `total`; checks the result."""
    sizes = [int(s) for s in sizes]
    named = ", ".join(f"{a}={s}" for a, s in zip(MESH_AXES, sizes))
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh: at most one {what} size may be -1, got {named}")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh: {what} sizes must be positive or -1, got {named}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if total % known:
            raise ValueError(
                f"mesh: {what} sizes {named} cannot fill {total} devices "
                f"({total} is not divisible by {known})"
            )
        sizes[sizes.index(-1)] = total // known
    if math.prod(sizes) != total:
        raise ValueError(
            f"mesh: {what} sizes {named} multiply to {math.prod(sizes)}, "
            f"but there are {total} devices"
        )
    return tuple(sizes)


def num_slices(devices: Sequence[jax.Device]) -> int:
    """Number of TPU slices (1 off multi-slice TPU)."""
    return len({getattr(d, "slice_index", 0) for d in devices})


def mesh_shape(mesh_config: Mapping[str, int], num_devices: int, slices: int = 1):
    """(ici_shape, dcn_shape) for `num_devices` devices in `slices` slices.

    ici sizes multiply to the devices of one slice; dcn sizes to the number of slices.
    """
    if num_devices % slices:
        raise ValueError(f"mesh: {num_devices} devices do not split into {slices} slices")
    dcn = _fill([mesh_config[f"dcn_{a}"] for a in MESH_AXES], slices, "dcn (across-slice)")
    ici = _fill(
        [mesh_config[f"ici_{a}"] for a in MESH_AXES], num_devices // slices, "ici (in-slice)"
    )
    return ici, dcn


def make_mesh(mesh_config: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The (data, fsdp, tensor) mesh of `config.mesh` over `devices` (default: all)."""
    devices = list(jax.devices() if devices is None else devices)
    slices = num_slices(devices)
    ici, dcn = mesh_shape(mesh_config, len(devices), slices)
    if slices > 1:
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices=devices)
    elif len(devices) == len(jax.devices()):
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(ici, devices=devices)
    else:  # a subset of devices (tests, tools): keep their order
        grid = np.asarray(devices, dtype=object).reshape(ici)
    shape = tuple(i * d for i, d in zip(ici, dcn))
    return Mesh(np.asarray(grid).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


# ---------------------------------------------------------------------------------------
# Logical axes.
# ---------------------------------------------------------------------------------------
def logical_rules(config: Any) -> Rules:
    """The logical-axis rules of a config (its `sharding.logical_axis_rules`)."""
    rules = config.sharding.logical_axis_rules if hasattr(config, "sharding") else config
    out = []
    for rule in rules:
        if len(rule) != 2:
            raise ValueError(f"sharding.logical_axis_rules: {rule!r} is not (name, mesh_axes)")
        name, axes = rule
        for a in (axes,) if isinstance(axes, str) else (axes or ()):
            if a not in MESH_AXES:
                raise ValueError(
                    f"sharding.logical_axis_rules: {name!r} maps to unknown mesh axis {a!r}"
                )
        out.append((str(name), tuple(axes) if isinstance(axes, list) else axes))
    return tuple(out)


def logical_to_spec(
    names: Sequence[str | None] | None,
    rules: Rules,
    mesh: Mesh,
    shape: Sequence[int] | None = None,
) -> PartitionSpec:
    """PartitionSpec for logical axis `names`.

    Each name takes the mesh axes its rule gives, minus those of size 1, minus those an
    earlier dimension already took, minus those that do not divide the dimension (when
    `shape` is known). Unknown names are an error, naming the name.
    """
    if names is None:
        return PartitionSpec()
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for i, name in enumerate(names):
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise KeyError(
                f"logical axis {name!r} has no rule in sharding.logical_axis_rules "
                f"(known: {sorted(table)})"
            )
        axes = table[name]
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        kept, size = [], 1
        for a in axes:
            n = mesh.shape[a]
            if n == 1 or a in used:
                continue
            if shape is not None and shape[i] % (size * n):
                continue
            kept.append(a)
            size *= n
        used.update(kept)
        spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    while spec and spec[-1] is None:
        spec.pop()
    return PartitionSpec(*spec)


def logical_to_sharding(
    names: Sequence[str | None] | None,
    rules: Rules,
    mesh: Mesh,
    shape: Sequence[int] | None = None,
) -> NamedSharding:
    """NamedSharding for logical axis `names` (see `logical_to_spec`)."""
    return NamedSharding(mesh, logical_to_spec(names, rules, mesh, shape))


def state_shardings(abstract_state: nnx.State, mesh: Mesh, rules: Rules) -> nnx.State:
    """NamedShardings for every variable of an (abstract) nnx state, from its metadata."""

    def one(v):
        if isinstance(v, nnx.Variable):
            names = v.get_metadata().get("out_sharding")
            return v.replace(logical_to_sharding(names, rules, mesh, v.get_value().shape))
        return logical_to_sharding(None, rules, mesh)

    return jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def constrain(x: jax.Array, names: Sequence[str | None], rules: Rules, mesh: Mesh) -> jax.Array:
    """`with_sharding_constraint` by logical names (for activations inside jit)."""
    return jax.lax.with_sharding_constraint(x, logical_to_sharding(names, rules, mesh, x.shape))


# ---------------------------------------------------------------------------------------
# Sharded model creation.
# ---------------------------------------------------------------------------------------
# What one process has traced of each network architecture, keyed by
# (network_key(...), mesh, rules): an init is traced and lowered once, not once per model
# built (a generator's MTDs of every level, the same network in a trainer and a probe).
_INITS: dict[Any, tuple[Callable[[jax.Array], Any], nnx.GraphDef]] = {}
_ABSTRACTS: dict[Any, tuple[nnx.GraphDef, Any]] = {}


def network_key(cls: type, *sections: Any) -> tuple:
    """A hashable naming what `cls(*sections, rngs=...)` builds: the class and the values
    of its config sections (two configs equal in these build the same network)."""
    values = (repr(s.to_dict()) if hasattr(s, "to_dict") else repr(s) for s in sections)
    return (cls.__module__, cls.__qualname__, *values)


def abstract_model(make_model: Callable[[], M], mesh: Mesh, rules: Rules, architecture: Any = None):
    """(graphdef, abstract state with target shardings); nothing is allocated.

    `architecture` (a network_key): the result is kept for this process and returned for
    every later call with the same key, mesh and rules, without tracing make_model again.
    """
    key = None if architecture is None else (architecture, mesh, repr(rules))
    if key in _ABSTRACTS:
        return _ABSTRACTS[key]
    graphdef, abstract = nnx.split(nnx.eval_shape(make_model))
    shardings = state_shardings(abstract, mesh, rules)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    if key is not None:
        _ABSTRACTS[key] = graphdef, abstract
    return graphdef, abstract


def create_sharded_model(
    make_model: Callable[[nnx.Rngs], M],
    mesh: Mesh,
    rules: Rules,
    seed: int,
    architecture: Any = None,
) -> M:
    """Builds `make_model(nnx.Rngs(seed))` with every variable created directly in its
    sharding.

    One jitted init: each variable's logical names give its target sharding, applied as a
    sharding constraint on the freshly initialised value, so each device computes only its
    own shards and no host ever holds a full copy. The seed enters as an argument (its
    key; nnx.Rngs(seed) draws the same streams), so every seed of one architecture runs
    the same compiled init. `architecture` (a network_key naming exactly what make_model
    builds): that jitted init is kept for the process, so every later model of the same
    key, mesh and rules is built without tracing or lowering again (the MTDs of a
    hierarchy's levels, the networks a generator rebuilds).
    """
    key = None if architecture is None else (architecture, mesh, repr(rules))
    if key in _INITS:
        jitted, graphdef = _INITS[key]
        with jax.set_mesh(mesh):
            return nnx.merge(graphdef, jitted(jax.random.key(seed)))
    built: dict[str, Any] = {}

    def init(key: jax.Array):
        graphdef, state = nnx.split(make_model(nnx.Rngs(key)))
        built["graphdef"] = graphdef
        shardings = state_shardings(state, mesh, rules)
        return jax.tree.map(jax.lax.with_sharding_constraint, state, shardings)

    jitted = jax.jit(init)
    with jax.set_mesh(mesh):
        state = jitted(jax.random.key(seed))
    if key is not None:
        _INITS[key] = jitted, built["graphdef"]
    return nnx.merge(built["graphdef"], state)


def create_network(cls: type[M], sections: Sequence[Any], mesh: Mesh, rules: Rules, seed: int) -> M:
    """`cls(*sections, rngs=nnx.Rngs(seed))`, created sharded (create_sharded_model) with
    its init traced once per process for each (class, sections, mesh, rules)."""
    return create_sharded_model(
        lambda r: cls(*sections, rngs=r), mesh, rules, seed, network_key(cls, *sections)
    )


def abstract_network(cls: type[M], sections: Sequence[Any], mesh: Mesh, rules: Rules):
    """abstract_model of `cls(*sections, rngs=nnx.Rngs(0))`, kept for the process by
    (class, sections, mesh, rules). Callers merge it with copy=True for new variables."""
    return abstract_model(
        lambda: cls(*sections, rngs=nnx.Rngs(0)), mesh, rules, network_key(cls, *sections)
    )


def reshard_model(model: M, mesh: Mesh, rules: Rules) -> M:
    """The same model with its variables moved to `mesh` by their logical names (e.g. weights
    made on one device layout, used on another)."""
    graphdef, state = nnx.split(model)
    state = jax.device_put(state, state_shardings(state, mesh, rules))
    return nnx.merge(graphdef, state)


# ---------------------------------------------------------------------------------------
# Global batches from per-process data.
# ---------------------------------------------------------------------------------------
def global_batch(local: Any, mesh: Mesh, rules: Rules, leading: str = "batch") -> Any:
    """Global arrays from this process's part of a batch (a pytree of numpy arrays).

    Each leaf's first axis carries the logical name `leading` ('batch' for training,
    'segments' for generation); the global batch is the processes' parts in process
    order. Never `device_put` a per-host batch with a global sharding: this is the way.
    """

    def one(x):
        x = np.asarray(x)
        names = (leading,) + (None,) * (x.ndim - 1)
        global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
        sharding = logical_to_sharding(names, rules, mesh, global_shape)
        return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return jax.tree.map(one, local)


def batch_divisor(mesh: Mesh, rules: Rules, leading: str = "batch") -> int:
    """How many ways the mesh splits the leading axis; global batches must be a multiple."""
    axes = dict(rules)[leading]
    axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes)


# ---------------------------------------------------------------------------------------
# Distributed initialisation.
# ---------------------------------------------------------------------------------------
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def _on_tpu_vm() -> bool:
    return any(k in os.environ for k in ("TPU_WORKER_HOSTNAMES", "TPU_ACCELERATOR_TYPE"))


def initialize_distributed(env: Mapping[str, str] | None = None) -> str:
    """Forms the multi-process JAX world, before any other JAX call. Returns how.

    - `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` set: those
      (GPU clusters, CPU tests; on CPU the collectives go through gloo);
    - on a TPU VM (its metadata in the environment): automatic;
    - otherwise a single process, nothing to do.
    """
    env = os.environ if env is None else env
    if ENV_COORDINATOR in env:
        missing = [k for k in (ENV_NUM_PROCESSES, ENV_PROCESS_ID) if k not in env]
        if missing:
            raise ValueError(f"{ENV_COORDINATOR} is set but {', '.join(missing)} is not")
        try:
            count, pid = int(env[ENV_NUM_PROCESSES]), int(env[ENV_PROCESS_ID])
        except ValueError as e:
            raise ValueError(
                f"{ENV_NUM_PROCESSES} and {ENV_PROCESS_ID} must be integers: {e}"
            ) from None
        if not 0 <= pid < count:
            raise ValueError(f"{ENV_PROCESS_ID}={pid} is not in [0, {ENV_NUM_PROCESSES}={count})")
        if env.get("JAX_PLATFORMS", "") == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(env[ENV_COORDINATOR], num_processes=count, process_id=pid)
        how = f"env: process {pid} of {count} via {env[ENV_COORDINATOR]}"
    elif _on_tpu_vm():
        jax.distributed.initialize()
        how = f"tpu: process {jax.process_index()} of {jax.process_count()}"
    else:
        how = "single process"
    logging.info("distributed: %s", how)
    return how
