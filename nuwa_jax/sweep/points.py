"""A sweep's points: read from the config file's get_hyper(h), named, checked, and their state.

Each point becomes `--config.a.b=value` overrides of the sweep's `--config` spec, checked
the way the trainer will parse them (ml-collections config_flags, locked config): an
unknown key or a value of the wrong type is an error naming the point, key and value,
before anything runs. String values may hold `{root}` (the sweep's workdir), `{workdir}`
(the point's) and `{name}` (the point's name), filled in per point.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

from nuwa_jax import cli
from nuwa_jax.data import schema
from nuwa_jax.sweep import hyper
from nuwa_jax.train import curriculum, trainer

POINT_FILE = "sweep_point.json"  # the overrides a point's workdir was last launched with
LOG_FILE = "train.log"  # the local launcher's stdout + stderr of the point's trainer


@dataclasses.dataclass(frozen=True)
class Point:
    """One run of a sweep: its name, workdir and `--config.*` overrides."""

    name: str
    workdir: str
    values: dict[str, Any]  # {'config.a.b': value}, templates filled in

    @property
    def overrides(self) -> list[str]:
        """['--config.a.b=value', ...] in the sweep's key order."""
        return [f"--{k}={hyper.format_value(v)}" for k, v in self.values.items()]

    def train_args(self, spec: str, workdir: str | None = None) -> list[str]:
        """The trainer's arguments (after `python -m nuwa_jax.train`)."""
        return [f"--config={spec}", f"--workdir={workdir or self.workdir}", *self.overrides]


def load_hyper(spec: str) -> list[hyper.Point]:
    """The points of `path.py[:arg]`'s get_hyper(h) (a file without one: a single point)."""
    path = spec.partition(":")[0]
    module = cli.load_config_module(path)
    if not hasattr(module, "get_hyper"):
        return [{}]
    try:
        points = module.get_hyper(hyper.Hyper())
    except hyper.SweepError as e:
        raise hyper.SweepError(f"{path}: get_hyper: {e}") from None
    if not isinstance(points, list) or not points or not all(isinstance(p, dict) for p in points):
        raise hyper.SweepError(f"{path}: get_hyper(h) must return a non-empty list of points "
                               "(h.sweep / h.product / h.zipit / ...)")  # fmt: skip
    return points


def _fill(value: Any, fields: dict[str, str]) -> Any:
    if isinstance(value, str) and "{" in value:
        try:
            return value.format(**fields)
        except (KeyError, IndexError, ValueError) as e:
            raise hyper.SweepError(f"value {value!r}: bad template ({e}); known: "
                                   "{root}, {workdir}, {name}") from None  # fmt: skip
    return value


def make_points(spec: str, root: str, run_root: str | None = None) -> list[Point]:
    """The sweep's points with names and workdirs under `root`; templates are filled with
    `run_root` (where the points run, e.g. a directory on a TPU VM; default `root`)."""
    raw = load_hyper(spec)
    names = hyper.point_names(raw)
    root = os.path.abspath(root)
    run_root = root if run_root is None else run_root.rstrip("/")
    out = []
    for name, values in zip(names, raw, strict=True):
        workdir = os.path.join(root, name)
        fields = dict(root=run_root, workdir=f"{run_root}/{name}", name=name)
        out.append(Point(name, workdir, {k: _fill(v, fields) for k, v in values.items()}))
    return out


def select(points: Sequence[Point], only: Sequence[str]) -> list[Point]:
    """The points named in `only` (all when empty); an unknown name is an error."""
    if not only:
        return list(points)
    names = {p.name for p in points}
    unknown = [n for n in only if n not in names]
    if unknown:
        raise hyper.SweepError(f"--only: no point named {', '.join(unknown)} "
                               f"(points: {', '.join(sorted(names))})")  # fmt: skip
    return [p for p in points if p.name in only]


def _same(a: Any, b: Any) -> bool:
    norm = lambda v: list(v) if isinstance(v, tuple | list) else v  # noqa: E731
    return norm(a) == norm(b)


def parse_config(spec: str, point: Point) -> ml_collections.ConfigDict:
    """The point's config exactly as the trainer's `--config` flag will parse it; errors
    (unknown key, wrong type, a value that does not parse back) name the point."""
    argv = ["nuwa_jax.train", f"--config={spec}", *point.overrides]
    where = f"point {point.name}"
    try:
        cli.check_config_overrides(argv[1:], spec)
    except KeyError as e:
        raise hyper.SweepError(f"{where}: {e.args[0]}") from None
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", spec, "", flag_values=fv, lock_config=True,
                                    sys_argv=argv)  # fmt: skip
    try:
        fv(argv)
        config = fv.config
    except (flags.Error, TypeError, ValueError, KeyError, AttributeError) as e:
        raise hyper.SweepError(f"{where}: {e}") from None
    for key, value in point.values.items():
        node: Any = config
        for part in key[len(hyper.PREFIX) :].split("."):
            node = node[part]
        if not _same(node, value):
            raise hyper.SweepError(
                f"{where}: {key}={value!r} ({type(value).__name__}) parses as {node!r} "
                f"({type(node).__name__}): give a value of the field's type"
            )
    return config


def check(spec: str, points: Sequence[Point]) -> list[ml_collections.ConfigDict]:
    """Parses every point's config and runs the trainer's config checks, before any runs."""
    configs = []
    for point in points:
        config = parse_config(spec, point)
        try:
            trainer.check_config(curriculum.resolve(config))
        except ValueError as e:
            raise hyper.SweepError(f"point {point.name}: {e}") from None
        configs.append(config)
    return configs


# ---------------------------------------------------------------------------------------
# A point's state in its workdir.
# ---------------------------------------------------------------------------------------
NEW, FINISHED, PARTIAL, CHANGED = "new", "finished", "partial", "changed"


def recorded_overrides(workdir: str) -> list[str] | None:
    path = os.path.join(workdir, POINT_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f).get("overrides")


def state(point: Point) -> str:
    """'finished' (the trainer's finished marker, launched with these same overrides),
    'partial' (started: resumes from its checkpoints), 'changed' (finished with other
    overrides: runs again, the trainer checks its resume config) or 'new'."""
    finished = os.path.exists(os.path.join(point.workdir, trainer.FINISHED_FILE))
    recorded = recorded_overrides(point.workdir)
    if finished and recorded == point.overrides:
        return FINISHED
    if finished:
        return CHANGED
    started = ("checkpoints", trainer.METRICS_FILE)
    if recorded is not None or any(os.path.exists(os.path.join(point.workdir, f)) for f in started):
        return PARTIAL
    return NEW


def record(point: Point, spec: str) -> None:
    """Writes the point's overrides to its workdir (read back by `state`)."""
    os.makedirs(point.workdir, exist_ok=True)
    data = dict(name=point.name, config=spec, overrides=point.overrides)
    schema.atomic_write_bytes(os.path.join(point.workdir, POINT_FILE),
                              (json.dumps(data, indent=1) + "\n").encode())  # fmt: skip
