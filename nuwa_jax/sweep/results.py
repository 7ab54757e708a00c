"""A sweep's results: one row per point from its metrics.jsonl, written as
<root>/results.md, results.csv and results.json (atomically), the best point marked.

A point's value is the mean of its last `last_n` logged values of `metric` (the trainer
logs every train.log_every steps); `mode` 'min' or 'max' picks the best point among those
that logged the metric.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from typing import Any

from nuwa_jax.data import schema
from nuwa_jax.sweep import points as points_lib
from nuwa_jax.train import trainer

RESULTS = "results"  # <root>/results.{md,csv,json}


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """The JSON records of workdir/metrics.jsonl ([] without one; broken lines skipped)."""
    path = os.path.join(workdir, trainer.METRICS_FILE)
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def gather(points: Sequence[points_lib.Point], metric: str = "loss", mode: str = "min",
           last_n: int = 1) -> list[dict[str, Any]]:  # fmt: skip
    """One row per point: name, state, step, `metric` (mean of its last `last_n` values),
    best-over-steps, the swept values, and 'best' (True on the best row)."""
    if mode not in ("min", "max"):
        raise ValueError(f"--mode={mode!r} must be 'min' or 'max'")
    if last_n < 1:
        raise ValueError(f"--last_n={last_n} must be >= 1")
    rows = []
    for p in points:
        records = read_metrics(p.workdir)
        values = [float(r[metric]) for r in records if metric in r]
        values = [v for v in values if math.isfinite(v)]
        tail = values[-last_n:]
        row: dict[str, Any] = dict(
            name=p.name,
            state=points_lib.state(p),
            step=int(records[-1]["step"]) if records else 0,
            **{metric: sum(tail) / len(tail) if tail else None},
            **{f"{mode}_{metric}": (min if mode == "min" else max)(values) if values else None},
        )
        row.update({k[len("config.") :]: v for k, v in p.values.items()})
        row["best"] = False
        rows.append(row)
    scored = [r for r in rows if r[metric] is not None]
    if scored:
        pick = min if mode == "min" else max
        pick(scored, key=lambda r: r[metric])["best"] = True
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, tuple | list):
        return str(tuple(value))
    return str(value)


def to_markdown(rows: Sequence[dict[str, Any]], metric: str, mode: str, last_n: int) -> str:
    """A markdown table; the best row's name in bold with a star."""
    if not rows:
        return "(no points)\n"
    cols = [c for c in rows[0] if c != "best"]
    lines = [
        f"Sweep results: {metric} (mean of the last {last_n} logged value(s)), best = "
        f"{mode} (marked *)",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    for r in rows:
        cells = [_cell(r[c]) for c in cols]
        if r["best"]:
            cells[0] = f"**{cells[0]}** *"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _cell(v) for k, v in r.items()})
    return buf.getvalue()


def write(root: str, rows: Sequence[dict[str, Any]], metric: str, mode: str,
          last_n: int) -> str:  # fmt: skip
    """Writes <root>/results.{md,csv,json} atomically; returns the markdown."""
    md = to_markdown(rows, metric, mode, last_n)
    data = dict(metric=metric, mode=mode, last_n=last_n, rows=list(rows))
    files = {
        "md": md,
        "csv": to_csv(rows),
        "json": json.dumps(data, indent=1, default=list) + "\n",
    }
    os.makedirs(root, exist_ok=True)
    for ext, text in files.items():
        schema.atomic_write_bytes(os.path.join(root, f"{RESULTS}.{ext}"), text.encode())
    return md
