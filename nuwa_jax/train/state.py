"""Train state, optimiser and EMA, sharded by the models' logical axis names.

The trained networks are split once into (graphdef, params, rest): `params` (the
nnx.Param variables, as a pure dict of arrays) is what the optimiser updates; `rest`
(any non-Param state) rides along unchanged. The optimiser state is created by
`jax.jit(tx.init, out_shardings=...)`, its shardings derived from the parameters' with
`optax.tree_map_params`, so Adam's moments are sharded exactly like the weights they
follow (FSDP / tensor parallel) and no host ever holds a full copy.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from nuwa_jax import parallel


@struct.dataclass
class TrainState:
    """Everything a resumed run needs besides the data iterator (a pytree)."""

    step: jax.Array  # int32 scalar: micro-steps done (= batches consumed)
    params: Any  # pure dict of arrays, the trained parameters
    opt_state: Any  # optax state (MultiSteps-wrapped when accumulating)
    ema: Any  # exponential moving average of params (same tree)


def learning_rate_schedule(train: Any) -> optax.Schedule:
    """Linear warm-up from 0 to learning_rate, cosine decay to final_lr_ratio x it."""
    if train.num_steps <= train.warmup_steps:
        raise ValueError(
            f"train.num_steps={train.num_steps} must exceed train.warmup_steps={train.warmup_steps}"
        )
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=train.learning_rate,
        warmup_steps=train.warmup_steps,
        decay_steps=train.num_steps,
        end_value=train.learning_rate * train.final_lr_ratio,
    )


def make_optimizer(train: Any, labels: Any = None) -> optax.GradientTransformation:
    """clip(global norm) -> AdamW(schedule); wrapped in MultiSteps for accumulation.

    With grad_accum_steps = k each train step is a micro-step: gradients are averaged
    over k batches and the parameters change on every k-th step only (the schedule counts
    optimiser updates). `labels`: a tree like the params of 'trained' / 'frozen' (or a
    function of the params giving it): frozen parameters get zero updates (no weight
    decay either, no optimiser state) and are left out of the clipping norm.
    """
    if train.grad_accum_steps < 1:
        raise ValueError(f"train.grad_accum_steps={train.grad_accum_steps} must be >= 1")
    chain = []
    if train.grad_clip_norm > 0:
        chain.append(optax.clip_by_global_norm(train.grad_clip_norm))
    chain.append(
        optax.adamw(
            learning_rate_schedule(train),
            b1=train.adam_b1,
            b2=train.adam_b2,
            eps=train.adam_eps,
            weight_decay=train.weight_decay,
        )
    )
    tx = optax.chain(*chain)
    if labels is not None:
        tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
    if train.grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=train.grad_accum_steps)
    return tx


def ema_update(ema: Any, params: Any, decay: float, updated: jax.Array) -> Any:
    """ema <- decay * ema + (1 - decay) * params, only where the params just changed;
    computed as ema + (1 - decay) * (params - ema), so an EMA equal to its (frozen)
    parameter stays bit-identical."""
    d = jnp.float32(decay)
    return jax.tree.map(
        lambda e, p: jnp.where(updated, (e + (1 - d) * (p - e)).astype(e.dtype), e), ema, params
    )


def split_trainable(modules: dict[str, nnx.Module]) -> tuple[nnx.GraphDef, Any, nnx.State]:
    """(graphdef, params as a pure dict, non-Param rest) of a dict of modules."""
    graphdef, params, rest = nnx.split(nnx.Dict(modules), nnx.Param, ...)
    return graphdef, nnx.to_pure_dict(params), rest


def merge_trainable(graphdef: nnx.GraphDef, params: Any, rest: nnx.State) -> nnx.Dict:
    """Inverse of split_trainable: the modules with `params` in place."""

    def wrap(tree):
        if isinstance(tree, dict):
            return {k: wrap(v) for k, v in tree.items()}
        return nnx.Param(tree)

    return nnx.merge(graphdef, nnx.State(wrap(params)), rest)


def param_shardings(modules: dict[str, nnx.Module], mesh: Mesh, rules: parallel.Rules) -> Any:
    """NamedShardings of the params (pure-dict tree) from their logical names."""
    _, params, _ = nnx.split(nnx.Dict(modules), nnx.Param, ...)
    shardings = parallel.state_shardings(params, mesh, rules)
    return nnx.to_pure_dict(shardings)


def create_train_state(
    params: Any, shardings: Any, tx: optax.GradientTransformation, mesh: Mesh
) -> tuple[TrainState, TrainState]:
    """(state, its shardings): opt state and EMA initialised sharded like the params."""
    replicated = NamedSharding(mesh, PartitionSpec())
    abstract_opt = jax.eval_shape(tx.init, params)
    # Frozen parameters (make_optimizer's labels) are MaskedNodes in the inner states.
    masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
    opt_shardings = optax.tree_map_params(
        tx,
        lambda v, s: v if masked(v) else s,
        abstract_opt,
        shardings,
        transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, NamedSharding) or masked(x),
    )
    state_shardings = TrainState(
        step=replicated, params=shardings, opt_state=opt_shardings, ema=shardings
    )

    def init(p):
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=p,
            opt_state=tx.init(p),
            ema=jax.tree.map(jnp.copy, p),
        )

    with jax.set_mesh(mesh):
        state = jax.jit(init, out_shardings=state_shardings)(params)
    return state, state_shardings
