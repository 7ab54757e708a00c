"""The `get_hyper(h)` vocabulary of a sweep config file: sweep, product, zipit, chainit, fixed.

A sweep is a list of points; a point is a dict {'config.a.b': value}. The building blocks
follow the long-standing `hyper` conventions:

    h.sweep('config.train.learning_rate', [1e-3, 3e-4])   # one point per value
    h.fixed('config.train.num_steps', 20)                 # one point (every point gets it)
    h.product([s1, s2])   # every combination; later factors vary fastest
    h.zipit([s1, s2])     # element-wise (equal lengths)
    h.chainit([s1, s2])   # one after the other

`get_hyper(h)` returns the whole sweep, e.g. h.product([h.fixed(...), h.sweep(...)]).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

Point = dict[str, Any]
PREFIX = "config."


class SweepError(ValueError):
    """A sweep that cannot be run (bad key, mismatched lengths, clashing values, ...)."""


def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not key.startswith(PREFIX) or len(key) == len(PREFIX):
        raise SweepError(f"sweep key {key!r} must be 'config.<section>.<field>'")
    return key


def _merge(parts: Iterable[Point]) -> Point:
    out: Point = {}
    for part in parts:
        for k, v in part.items():
            if k in out and out[k] != v:
                raise SweepError(f"{k} is given twice in one point: {out[k]!r} and {v!r}")
            out[k] = v
    return out


def _points(sweep: Any, where: str) -> list[Point]:
    if not isinstance(sweep, list) or not all(isinstance(p, dict) for p in sweep):
        raise SweepError(f"{where}: expected a sweep (a list of dicts from h.sweep etc.), "
                         f"got {type(sweep).__name__}")  # fmt: skip
    return sweep


def sweep(key: str, values: Sequence[Any]) -> list[Point]:
    """One point per value of `key`."""
    _check_key(key)
    values = list(values)
    if not values:
        raise SweepError(f"h.sweep({key!r}, []): no values")
    return [{key: v} for v in values]


def fixed(key: str, value: Any, length: int = 1) -> list[Point]:
    """`length` points with `key` = `value` (a product with it sets the key everywhere)."""
    _check_key(key)
    return [{key: value} for _ in range(length)]


def product(sweeps: Sequence[list[Point]]) -> list[Point]:
    """Every combination of the sweeps' points (the last sweep varies fastest)."""
    parts = [_points(s, "h.product") for s in sweeps]
    return [_merge(combo) for combo in itertools.product(*parts)]


def zipit(sweeps: Sequence[list[Point]]) -> list[Point]:
    """The sweeps' points merged element-wise; the sweeps must have equal lengths."""
    parts = [_points(s, "h.zipit") for s in sweeps]
    lengths = sorted({len(p) for p in parts})
    if len(lengths) > 1:
        raise SweepError(f"h.zipit: sweeps of different lengths {[len(p) for p in parts]}")
    return [_merge(combo) for combo in zip(*parts, strict=True)]


def chainit(sweeps: Sequence[list[Point]]) -> list[Point]:
    """The sweeps' points one after the other."""
    return [p for s in sweeps for p in _points(s, "h.chainit")]


class Hyper:
    """The `h` that get_hyper(h) receives."""

    sweep = staticmethod(sweep)
    fixed = staticmethod(fixed)
    product = staticmethod(product)
    zipit = staticmethod(zipit)
    chainit = staticmethod(chainit)


def format_value(value: Any) -> str:
    """A value as a `--config.a.b=` command-line string config_flags parses back to it."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        value = tuple(value)
    return repr(value)


def _short(value: Any) -> str:
    text = format_value(value)
    if isinstance(value, float):
        text = f"{value:g}"
    if isinstance(value, tuple | list):
        text = "-".join(_short(v) for v in value)
    return "".join(c if c.isalnum() or c in "._+-" else "-" for c in text) or "empty"


def point_names(points: Sequence[Point]) -> list[str]:
    """A readable, file-system-safe name per point: `field=value` of each key whose value
    differs between points (the shortest dotted suffix that tells the keys apart), joined
    by ','. Raises SweepError if two points are identical."""
    varies = lambda k: len({repr(p.get(k, "<unset>")) for p in points}) > 1  # noqa: E731
    keys = [k for k in dict.fromkeys(k for p in points for k in p) if len(points) == 1 or varies(k)]
    labels = {}
    for k in keys:
        parts = k[len(PREFIX) :].split(".")
        for n in range(1, len(parts) + 1):
            label = ".".join(parts[-n:])
            others = [o[len(PREFIX) :] for o in keys if o != k]
            if not any(o == label or o.endswith("." + label) for o in others):
                break
        labels[k] = label
    names = [",".join(f"{labels[k]}={_short(p[k])}" for k in keys if k in p) or "point"
             for p in points]  # fmt: skip
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise SweepError(f"points {seen[name]} and {i} are the same point ({name})")
        seen[name] = i
    return names
