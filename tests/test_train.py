"""The trainer: a falling loss, exact resume, SIGTERM, NaN stop (CPU, 8 simulated devices).

Tiny models at 16 px, global batch 8. Compiles go through a persistent compilation cache
shared by the tests of this file (the trainer is re-jitted by every `train` call).
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import nuwa_jax  # noqa: F401
from configs import common
from nuwa_jax.data import synthetic
from nuwa_jax.train import Checkpointer, NonFiniteError, train
from nuwa_jax.train import trainer as trainer_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_data")
    synthetic.write_benchmark(root / "data", episodes=2, frames=40, resolution=16)
    return str(root / "data")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """A persistent compilation cache for this module (restored afterwards)."""
    path = str(tmp_path_factory.mktemp("jax_cache"))
    old = (
        jax.config.jax_compilation_cache_dir,
        jax.config.jax_persistent_cache_min_compile_time_secs,
    )
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield path
    jax.config.update("jax_compilation_cache_dir", old[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])


def tiny_config(data_dir: str, model: str = "vae"):
    cfg = common.base("tiny")
    cfg.data.data_dir = data_dir
    cfg.data.resolution = 16
    cfg.vae.block_out_channels = (8, 8, 8)
    cfg.train.model = model
    cfg.train.num_steps = 40
    cfg.train.warmup_steps = 2
    cfg.train.checkpoint_replica_parallel = False
    return cfg


def losses(workdir) -> list[float]:
    with open(os.path.join(workdir, trainer_lib.METRICS_FILE)) as f:
        return [json.loads(line)["loss"] for line in f]


@pytest.mark.slow
def test_mtd_loss_falls(data_dir, cache_dir, tmp_path):
    """The global MTD's denoising loss on the synthetic benchmark falls within 40 steps."""
    cfg = tiny_config(data_dir, "mtd")
    cfg.mtd.block_out_channels = (16, 32)
    cfg.train.num_steps = 40
    cfg.train.warmup_steps = 5
    train(cfg, tmp_path)
    loss = losses(tmp_path)
    assert len(loss) == 40
    ratio = np.mean(loss[-20:]) / np.mean(loss[:20])
    assert ratio < 0.75, (ratio, loss)


def test_exact_resume(data_dir, cache_dir, tmp_path):
    """k steps + stop + N-k steps == N steps uninterrupted, bit for bit (params and EMA),
    with gradient accumulation (MultiSteps state) and the data position in the checkpoint."""
    cfg = tiny_config(data_dir)
    cfg.train.grad_accum_steps = 2
    cfg.train.checkpoint_every = 100
    full = train(cfg, tmp_path / "full", max_steps=6)
    first = train(cfg, tmp_path / "split", max_steps=3)
    assert int(first.step) == 3
    assert Checkpointer(tmp_path / "split", cfg.train).all_steps() == [3]
    resumed = train(cfg, tmp_path / "split", max_steps=6)
    assert int(resumed.step) == int(full.step) == 6
    for a, b in zip(
        jax.tree.leaves((full.params, full.ema)), jax.tree.leaves((resumed.params, resumed.ema))
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert losses(tmp_path / "full") == losses(tmp_path / "split")


def test_nan_stops_and_keeps_last_good_checkpoint(data_dir, cache_dir, tmp_path):
    cfg = tiny_config(data_dir)
    cfg.train.checkpoint_every = 2
    cfg.train.debug_nan_at_step = 3  # the 4th step
    with pytest.raises(NonFiniteError, match="step 4"):
        train(cfg, tmp_path)
    ckpt = Checkpointer(tmp_path, cfg.train)
    assert ckpt.latest_step() == 2
    cfg.train.debug_nan_at_step = -1
    state = train(cfg, tmp_path, max_steps=3)  # resumes from the good checkpoint
    assert int(state.step) == 3
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))


def test_bad_config_is_refused(data_dir):
    cfg = tiny_config(data_dir)
    cfg.train.perceptual_weight = 0.1
    with pytest.raises(ValueError, match="perceptual_weight"):
        trainer_lib.check_config(cfg)
    cfg = tiny_config(data_dir, "mtd")
    cfg.train.level = 5
    with pytest.raises(ValueError, match="train.level=5"):
        trainer_lib.check_config(cfg)


@pytest.mark.slow
def test_sigterm_saves_and_exits_zero_then_resumes(data_dir, cache_dir, tmp_path):
    workdir = tmp_path / "run"
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    args = [
        sys.executable,
        "-m",
        "nuwa_jax.train",
        "--config=configs/tiny.py",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        "--config.data.resolution=16",
        "--config.vae.block_out_channels=(8,8,8)",
        "--config.train.model=vae",
        "--config.train.num_steps=1000",
        "--config.train.warmup_steps=2",
        "--config.train.checkpoint_replica_parallel=False",
    ]
    proc = subprocess.Popen(args, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    metrics = workdir / trainer_lib.METRICS_FILE
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    step = Checkpointer(workdir, tiny_config(data_dir).train).latest_step()
    assert step is not None and step >= 2
    assert len(metrics.read_text().splitlines()) == step
    done = subprocess.run(
        args + [f"--max_steps={step + 1}"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert Checkpointer(workdir, tiny_config(data_dir).train).latest_step() == step + 1


@pytest.mark.slow
def test_local_level_mtd_with_frozen_text(data_dir, cache_dir, tmp_path):
    """Level 1 windows: the given first/last frames are left out of the loss; a frozen
    text encoder is not among the trained params."""
    cfg = tiny_config(data_dir, "mtd")
    cfg.mtd.block_out_channels = (16, 32)
    cfg.train.level = 1
    cfg.text.trainable = False
    state = train(cfg, tmp_path, max_steps=2)
    assert set(state.params) == {"mtd"}
    with open(os.path.join(tmp_path, trainer_lib.METRICS_FILE)) as f:
        records = [json.loads(line) for line in f]
    L = cfg.hierarchy.frames_per_call
    assert [r["generated_fraction"] for r in records] == [(L - 2) / L] * 2
    assert all(np.isfinite(r["loss"]) for r in records)
