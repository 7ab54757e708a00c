"""Orbax checkpoints of a training run in `workdir/checkpoints`.

Each step directory holds three items (ocp.args.Composite):
- `state`: the TrainState (params, optimiser state, step, EMA), saved sharded, restored
  onto an abstract state that carries the target shardings (no host gathers a model);
- `data`: the grain iterator's position (grain.checkpoint.CheckpointSave / Restore), so a
  resumed run reads exactly the batches an uninterrupted run would have read;
- `config`: the run's config as JSON (what produced these weights).
Saves are asynchronous (train.async_checkpointing); the newest train.keep_checkpoints are
kept. orbax writes each step to a temporary directory and renames it when complete, so
an interrupted save never shadows the last good checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"


class Checkpointer:
    """CheckpointManager of one run: save / restore of state, data position and config."""

    def __init__(self, workdir: str | os.PathLike, train: Any):
        if train.keep_checkpoints < 1:
            raise ValueError(f"train.keep_checkpoints={train.keep_checkpoints} must be >= 1")
        if not train.checkpoint_replica_parallel:
            ocp.type_handlers.register_type_handler(
                jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True
            )
        self.directory = os.path.join(os.path.abspath(os.fspath(workdir)), CHECKPOINT_DIR)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=int(train.keep_checkpoints),
            enable_async_checkpointing=bool(train.async_checkpointing),
            create=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data", "config")
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, iterator: grain.DatasetIterator, config: Any) -> None:
        """Starts saving step `step` (asynchronously when configured)."""
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(iterator),
                config=ocp.args.JsonSave(config.to_dict()),
            ),
            force=True,
        )

    def restore(
        self, step: int, abstract_state: Any, iterator: grain.DatasetIterator | None
    ) -> Any:
        """The TrainState of `step` on the abstract state's shardings; moves `iterator` there."""
        items = dict(state=ocp.args.StandardRestore(abstract_state))
        if iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"]

    def restore_config(self, step: int) -> dict:
        """The config JSON saved with `step`."""
        return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))[
            "config"
        ]

    def wait(self) -> None:
        """Blocks until pending async saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(state: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `state` carrying `shardings` (the restore target)."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
    )


def restore_ema(
    workdir: str | os.PathLike,
    modules: dict[str, Any],
    step: int | None = None,
    item: str = "ema",
) -> int:
    """Writes the EMA weights of a training run into `modules`; returns the step used.
    (`item='params'`: the trained parameters instead, e.g. train.init_from.)

    `modules` maps the names the run trained them under (e.g. {'vae': vae} for
    train.model='vae') to freshly built modules of the same architecture; each variable
    is restored in the sharding it has now, and only the `ema` (`item`) subtree of the
    newest (or `step`) checkpoint is read (an orbax partial restore). Raises FileNotFoundError
    naming the directory if the run has no checkpoint, ValueError naming the missing
    or mismatched entries otherwise.
    """
    from flax import nnx

    directory = os.path.join(os.path.abspath(os.fspath(workdir)), CHECKPOINT_DIR)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory}: no checkpoints (not a training run's workdir?)")
    if step is None:
        manager = ocp.CheckpointManager(
            directory, options=ocp.CheckpointManagerOptions(create=False, read_only=True)
        )
        step = manager.latest_step()
        manager.close()
        if step is None:
            raise FileNotFoundError(f"{directory}: no finished checkpoint")
    target = nnx.Dict(modules)
    params = nnx.state(target, nnx.Param)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
        nnx.to_pure_dict(params),
    )
    if item not in ("ema", "params"):
        raise ValueError(f"restore_ema: item={item!r} must be 'ema' or 'params'")
    target_item = {item: abstract}
    path = os.path.join(directory, str(step), "state")
    try:
        restored = ocp.PyTreeCheckpointer().restore(
            path,
            args=ocp.args.PyTreeRestore(
                item=target_item,
                restore_args=ocp.checkpoint_utils.construct_restore_args(target_item),
                partial_restore=True,
            ),
        )
    except (KeyError, ValueError) as e:
        raise ValueError(
            f"{path}: cannot restore the {item} of {sorted(modules)} from step {step}: {e}"
        ) from e
    nnx.replace_by_pure_dict(params, restored[item])
    nnx.update(target, params)
    return int(step)


def read_run(workdir: str | os.PathLike, train: Any) -> tuple[str, int, dict[str, Any]]:
    """(absolute workdir, newest finished step, that step's saved config JSON) of a trainer
    run; FileNotFoundError naming the directory when it holds no finished checkpoint."""
    workdir = os.path.abspath(os.fspath(workdir))
    directory = os.path.join(workdir, CHECKPOINT_DIR)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory}: no checkpoints (not a trainer run's workdir?)")
    checkpointer = Checkpointer(workdir, train)
    try:
        step = checkpointer.latest_step()
        if step is None:
            raise FileNotFoundError(f"{directory}: no finished checkpoint")
        saved = checkpointer.restore_config(step)
    finally:
        checkpointer.close()
    return workdir, int(step), saved
