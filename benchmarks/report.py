"""What every benchmark records next to its numbers, and how it writes them.

`environment()` says where a figure was measured (device kind and count, host, library
versions, date, load average); `write_result(name, result)` writes the JSON atomically to
benchmarks/results/<name>.json (temporary name, then rename), so an interrupted run never
leaves a result that looks whole.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
from collections.abc import Iterator
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


def compiled_memory(compiled: Any) -> dict[str, int] | None:
    """XLA's planned memory of a compiled step: arguments + outputs + temporaries - aliased."""
    ma = compiled.memory_analysis()
    if ma is None:
        return None
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
              "alias_size_in_bytes", "generated_code_size_in_bytes")  # fmt: skip
    out = {f: int(getattr(ma, f, 0) or 0) for f in fields}
    out["planned_peak_bytes"] = (
        out["argument_size_in_bytes"] + out["output_size_in_bytes"]
        + out["temp_size_in_bytes"] - out["alias_size_in_bytes"]
    )  # fmt: skip
    return out


def device_peak_bytes() -> int | None:
    """The device's peak bytes in use so far, where the backend reports it (not CPU)."""
    import jax

    stats = jax.devices()[0].memory_stats()
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


@contextlib.contextmanager
def exclusive_device() -> Iterator[None]:
    """Holds the file lock named by $NUWA_BENCH_LOCK (if set) around a timed section, so
    benchmarks sharing one accelerator (compiling in parallel) never time concurrently."""
    path = os.environ.get("NUWA_BENCH_LOCK")
    if not path:
        yield
        return
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
