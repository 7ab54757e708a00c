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

Once a save is known finished, process 0 writes `<step>/integrity.json` (sha256 and size of
every file of the step). Restores check it first: a damaged step (a file missing, truncated or
changed, or orbax failing to read it) is skipped with a warning and moved to
`workdir/checkpoints_damaged`, and the newest intact step is restored instead. Steps without
the manifest (runs from before it) are accepted as unverified.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from nuwa_jax.data.schema import atomic_write_bytes

CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "checkpoints_damaged"  # damaged steps set aside (next to CHECKPOINT_DIR)
MANIFEST = "integrity.json"
_CHUNK = 1 << 20


class DamagedCheckpointError(ValueError):
    """A checkpoint step whose files do not match its manifest, or no intact step at all."""


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _step_files(step_dir: str) -> list[str]:
    """Paths (relative to `step_dir`, sorted) of every file of a step but the manifest."""
    files = []
    for root, _, names in os.walk(step_dir):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), step_dir)
            if rel != MANIFEST:
                files.append(rel)
    return sorted(files)


def write_manifest(step_dir: str | os.PathLike) -> None:
    """Writes `step_dir`/integrity.json (atomically): sha256 and size of each file of a
    finished step, so a later restore can tell a damaged step from an intact one."""
    step_dir = os.fspath(step_dir)
    files = {}
    for rel in _step_files(step_dir):
        path = os.path.join(step_dir, rel)
        files[rel] = {"size": os.path.getsize(path), "sha256": _sha256(path)}
    data = json.dumps({"algorithm": "sha256", "files": files}, indent=1, sort_keys=True)
    atomic_write_bytes(os.path.join(step_dir, MANIFEST), data.encode())


def verify_step(step_dir: str | os.PathLike) -> bool:
    """True if every file of `step_dir` matches its manifest, False if the step has no
    manifest (unverified: saved before manifests existed); DamagedCheckpointError naming
    the step directory and the file at fault otherwise."""
    step_dir = os.fspath(step_dir)
    manifest_path = os.path.join(step_dir, MANIFEST)
    if not os.path.exists(manifest_path):
        return False
    try:
        with open(manifest_path, "rb") as f:
            files = json.loads(f.read())["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DamagedCheckpointError(f"{manifest_path}: unreadable manifest: {e}") from e
    for rel, want in sorted(files.items()):
        path = os.path.join(step_dir, rel)
        try:
            size = os.path.getsize(path)
            if size != want["size"]:
                raise DamagedCheckpointError(
                    f"{path}: {size} bytes, the manifest says {want['size']} (truncated?)"
                )
            if _sha256(path) != want["sha256"]:
                raise DamagedCheckpointError(f"{path}: sha256 differs from the manifest")
        except OSError as e:
            raise DamagedCheckpointError(f"{path}: unreadable ({e})") from e
    return True


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
        self._async = bool(train.async_checkpointing)
        self._unrecorded: list[int] = []  # saved steps whose manifest is not yet written
        self._warned_unverified = False

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def latest_step(self) -> int | None:
        """The newest step directory (intact or not: see good_step)."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, iterator: grain.DatasetIterator, config: Any) -> None:
        """Starts saving step `step` (asynchronously when configured). The previous save is
        finished first (orbax would wait for it anyway) and gets its manifest then."""
        self.wait()
        saved = self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(iterator),
                config=ocp.args.JsonSave(config.to_dict()),
            ),
            force=True,
        )
        if saved:
            self._unrecorded.append(step)
        if not self._async:
            self._record()

    def _record(self) -> None:
        """Writes the manifest of every finished save not yet recorded (process 0 only)."""
        steps, self._unrecorded = self._unrecorded, []
        if jax.process_index() != 0:
            return
        for step in steps:
            if os.path.isdir(self.step_dir(step)):  # not already removed by max_to_keep
                write_manifest(self.step_dir(step))

    def _check(self, step: int) -> bool:
        """verify_step of `step` (on process 0, its verdict shared by every process):
        True verified, False unverified (warned once); DamagedCheckpointError if damaged."""
        problem, verified = "", False
        if jax.process_index() == 0:
            try:
                verified = verify_step(self.step_dir(step))
            except DamagedCheckpointError as e:
                problem = str(e)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            code = 2 if problem else int(verified)
            code = int(multihost_utils.broadcast_one_to_all(np.int32(code)))
            if code == 2 and not problem:
                problem = f"{self.step_dir(step)}: damaged (found by process 0)"
            verified = code == 1
        if problem:
            raise DamagedCheckpointError(f"step {step}: {problem}")
        if not verified and not self._warned_unverified:
            self._warned_unverified = True
            logging.warning(
                "%s has no %s (saved before checkpoints were verified): restored unverified",
                self.step_dir(step),
                MANIFEST,
            )
        return verified

    def good_step(self) -> tuple[int, bool] | None:
        """(newest step that passes verification, whether it has a manifest), None if no
        step does: what restore_latest would try first, for messages."""
        for step in sorted(self.all_steps(), reverse=True):
            try:
                return step, self._check(step)
            except DamagedCheckpointError:
                continue
        return None

    def last_good(self) -> str:
        """good_step in words: 'STEP', 'STEP (unverified)' or 'none'."""
        good = self.good_step()
        if good is None:
            return "none"
        return f"{good[0]}" if good[1] else f"{good[0]} (unverified)"

    def restore_latest(
        self, abstract_state: Any, iterator: grain.DatasetIterator | None
    ) -> tuple[int, Any] | None:
        """(step, TrainState) of the newest intact step, None if there is no step at all.

        Newer steps that fail verification or that orbax cannot restore are skipped with a
        warning and moved to `workdir/checkpoints_damaged` (so the resumed run can save those
        steps again); DamagedCheckpointError listing each step and why if none is intact."""
        failures: list[tuple[int, str]] = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                self._check(step)
                state = self.restore(step, abstract_state, iterator)
            except Exception as e:  # noqa: BLE001 - any failure to read a step skips it
                reason = (
                    str(e)
                    if isinstance(e, DamagedCheckpointError)
                    else (
                        f"step {step}: orbax cannot restore {self.step_dir(step)}: "
                        f"{type(e).__name__}: {e}"
                    )
                )
                logging.warning("skipping damaged checkpoint %s", reason)
                failures.append((step, reason))
                continue
            if failures:
                self._set_aside([s for s, _ in failures])
                logging.warning(
                    "restored step %d instead of damaged step(s) %s",
                    step,
                    ", ".join(str(s) for s, _ in failures),
                )
            return step, state
        if not failures:
            return None
        raise DamagedCheckpointError(
            f"{self.directory}: no intact checkpoint:\n" + "\n".join(r for _, r in failures)
        )

    def _set_aside(self, steps: list[int]) -> None:
        """Moves damaged `steps` out of orbax's directory (process 0), kept for inspection."""
        if jax.process_index() == 0:
            aside = os.path.join(os.path.dirname(self.directory), DAMAGED_DIR)
            os.makedirs(aside, exist_ok=True)
            for step in steps:
                target, n = os.path.join(aside, str(step)), 1
                while os.path.exists(target):
                    target, n = os.path.join(aside, f"{step}.{n}"), n + 1
                shutil.move(self.step_dir(step), target)
                logging.warning("moved damaged checkpoint %s to %s", self.step_dir(step), target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("nuwa_jax checkpoint set aside")
        self.manager.reload()

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
        """Blocks until pending async saves are on disk, then writes their manifests."""
        self.manager.wait_until_finished()
        self._record()

    def close(self) -> None:
        self.wait()
        self.manager.close()


def newest_intact_step(directory: str, steps: list[int]) -> int:
    """The first of `steps` (newest first) whose files verify (or that has no manifest);
    damaged ones are skipped with a warning, DamagedCheckpointError if all are damaged."""
    problems = []
    for step in steps:
        try:
            verify_step(os.path.join(directory, str(step)))
            return step
        except DamagedCheckpointError as e:
            logging.warning("skipping damaged checkpoint step %d: %s", step, e)
            problems.append(f"step {step}: {e}")
    raise DamagedCheckpointError(f"{directory}: no intact checkpoint:\n" + "\n".join(problems))


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
        steps = sorted(manager.all_steps(), reverse=True)
        manager.close()
        if not steps:
            raise FileNotFoundError(f"{directory}: no finished checkpoint")
        step = newest_intact_step(directory, steps)
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
        steps = sorted(checkpointer.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"{directory}: no finished checkpoint")
        step = newest_intact_step(directory, steps)
        saved = checkpointer.restore_config(step)
    finally:
        checkpointer.close()
    return workdir, int(step), saved
