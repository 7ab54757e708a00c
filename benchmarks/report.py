"""What every benchmark records next to its numbers, and how it writes them.

`environment()` says where a figure was measured (device kind and count, host, library
versions, date, load average); `write_result(name, result)` writes the JSON atomically to
benchmarks/results/<name>.json (temporary name, then rename), so an interrupted run never
leaves a result that looks whole.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from typing import Any

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def environment() -> dict[str, Any]:
    """Device, host, versions and date of this process's JAX backend."""
    import flax
    import jax

    device = jax.devices()[0]
    return dict(
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        device=dict(
            platform=device.platform,
            kind=device.device_kind,
            count=jax.device_count(),
            processes=jax.process_count(),
            host=platform.processor() or platform.machine(),
            cpus=os.cpu_count(),
        ),
        versions=dict(
            jax=jax.__version__, flax=flax.__version__, python=platform.python_version()
        ),  # fmt: skip
        load_average=os.getloadavg(),
    )


def write_result(name: str, result: dict[str, Any], path: str | None = None) -> str:
    """Writes `result` to `path` (default benchmarks/results/<name>.json) atomically."""
    path = path or os.path.join(RESULTS, f"{name}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.partial"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return path
