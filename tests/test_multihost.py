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


@pytest.mark.slow(reason="two JAX processes train, stop and resume")
def test_trainer_runs_unchanged_as_two_processes_and_resumes(tmp_path):
    """`python -m nuwa_jax.train` as a 2-process world (2 CPU devices each, one shard file
    per process): 2 steps and a checkpoint, then a second launch resumes at step 2 and
    trains to 4. Only process 0 writes metrics and sample PNGs; both take part in saves."""
    from configs import common
    from nuwa_jax.train import Checkpointer
    from nuwa_jax.train import trainer as trainer_lib

    workdir, data_dir = tmp_path / "run", tmp_path / "data"
    env = {
        **os.environ,
        "PYTHONPATH": REPO,
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),  # the resume reuses it
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    args = [
        "-m",
        "nuwa_jax.train",
        "--config=configs/tiny.py",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",  # empty: process 0 writes the benchmark
        "--config.data.synthetic_episodes=2",  # 2 shard files: one per process
        "--config.data.synthetic_frames=40",
        "--config.data.resolution=16",
        "--config.vae.block_out_channels=(8,8,8)",
        "--config.train.model=vae",
        "--config.train.num_steps=100",
        "--config.train.warmup_steps=2",
        "--config.train.checkpoint_every=2",
        "--config.train.sample_every=2",
        "--config.train.checkpoint_replica_parallel=False",
    ]

    def launch(max_steps):
        results = multihost.run_world(
            [*args, f"--max_steps={max_steps}"],
            num_processes=2,
            local_devices=2,
            timeout_s=420,
            env=env,
            cwd=REPO,
        )
        for r in results:
            assert r.returncode == 0, f"process {r.process_id} failed:\n{r.stderr[-4000:]}"
        return results

    def checkpoint_steps():
        ckpt = Checkpointer(workdir, common.base("tiny").train)
        try:
            return ckpt.all_steps()
        finally:
            ckpt.close()

    launch(2)
    assert checkpoint_steps() == [2]
    for r in launch(4):
        assert "resumed from step 2" in r.stderr, r.stderr[-3000:]
    assert checkpoint_steps() == [2, 4]
    with open(workdir / trainer_lib.METRICS_FILE) as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # process 0 only, resumed at 2
    assert all(np.isfinite(r["loss"]) and r["bad_records"] == 0 for r in records)
    pngs = sorted(os.listdir(workdir / "samples"))
    assert pngs == ["00000002_filmstrip.png", "00000004_filmstrip.png"]
