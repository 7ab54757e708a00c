"""One process of the two-process world of tests/test_multihost.py (not a test module).

Forms the world, builds a global batch from per-process data and reduces it; prints a
JSON line with what it saw.
"""

import json
import sys

from nuwa_jax import parallel  # noqa: I001  (initialize before any other JAX call)

parallel.initialize_distributed()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import common  # noqa: E402


def main() -> None:
    config = common.base("tiny")
    mesh = parallel.make_mesh(config.mesh)
    rules = parallel.logical_rules(config)
    pid, count = jax.process_index(), jax.process_count()
    per_process = 4
    # Process p holds rows [p*4, p*4+4) of a global (8, 3) batch: row r is r+1 everywhere.
    rows = np.arange(pid * per_process, (pid + 1) * per_process, dtype=np.float32) + 1
    local = np.repeat(rows[:, None], 3, axis=1)
    batch = parallel.global_batch({"x": local}, mesh, rules)
    total = jax.jit(lambda b: jnp.sum(b["x"]))(batch)
    weighted = jax.jit(lambda b: jnp.sum(b["x"][:, 0] * jnp.arange(b["x"].shape[0])))(batch)
    print(
        json.dumps(
            dict(
                process=pid,
                processes=count,
                global_devices=jax.device_count(),
                local_devices=jax.local_device_count(),
                mesh=dict(mesh.shape),
                global_shape=list(batch["x"].shape),
                total=float(total),
                weighted=float(weighted),
            )
        )
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
