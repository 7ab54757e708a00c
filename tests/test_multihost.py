"""A two-process JAX world on 127.0.0.1 assembles one global batch from per-process data."""

import json
import os

import numpy as np
import pytest

from nuwa_jax.testing import multihost

pytestmark = pytest.mark.multihost

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_two_process_global_batch_reduces_to_the_right_value():
    results = multihost.run_world(
        [os.path.join(REPO, "tests", "multihost_worker.py")],
        num_processes=2,
        local_devices=2,
        timeout_s=240,
        env={**os.environ, "PYTHONPATH": REPO},
        cwd=REPO,
    )
    for r in results:
        assert r.returncode == 0, f"process {r.process_id} failed:\n{r.stderr[-3000:]}"
    seen = [json.loads(r.stdout.strip().splitlines()[-1]) for r in results]
    rows = np.arange(8, dtype=np.float64) + 1
    for s in seen:
        assert s["processes"] == 2 and s["global_devices"] == 4 and s["local_devices"] == 2
        assert s["global_shape"] == [8, 3]
        assert s["total"] == pytest.approx(3 * rows.sum())
        # Row order is process order: process 0's rows come first.
        assert s["weighted"] == pytest.approx(float((rows * np.arange(8)).sum()))
    assert sorted(s["process"] for s in seen) == [0, 1]
