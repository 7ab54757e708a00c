"""The jitted train step on its own: bf16 compute and benchmarks/train_step.py (CPU, 8
simulated devices). Split from test_train so that the two files run on both test workers."""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trainer_setup
from trainer_setup import tiny_config

from nuwa_jax import parallel
from nuwa_jax.models.text import make_tokenizer
from nuwa_jax.train import trainer as trainer_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return trainer_setup.render_data(tmp_path_factory.mktemp("train_step_data"))


@pytest.mark.slow(reason="compiles bf16 train steps of the VAE and the MTD")
@pytest.mark.parametrize("model", ["vae", "mtd"])
def test_bf16_compute_trains(data_dir, cache_dir, model):
    """compute.dtype='bfloat16': the step's convolutions run in bf16, the params and EMA
    stay float32, and two steps give finite losses that change the weights. The MTD is
    test_train.py's local level with frozen text (trainer_setup.local_mtd_config), which
    trains in bf16 too: one compile of that step per run, not two."""
    cfg = tiny_config(data_dir, model)
    cfg.compute.dtype = "bfloat16"
    if model == "mtd":
        cfg = trainer_setup.local_mtd_config(data_dir)
    mesh, rules = parallel.make_mesh(cfg.mesh), parallel.logical_rules(cfg)
    tokenizer = make_tokenizer(cfg.text)
    step, state = trainer_lib.make_train_step(cfg, mesh, rules, tokenizer)
    batch = trainer_lib.synthetic_batch(cfg, mesh, rules, tokenizer)
    before = [np.asarray(x) for x in jax.tree.leaves(state.params)]
    with jax.set_mesh(mesh):
        hlo = step.fn.lower(state, step.frozen_state, batch).as_text()
        losses = []
        for _ in range(2):
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"]))
    assert re.search(r"stablehlo\.convolution.*xbf16>", hlo)
    assert all(np.isfinite(losses)), losses
    leaves = jax.tree.leaves((state.params, state.ema))
    assert all(x.dtype == jnp.float32 for x in leaves)
    after = [np.asarray(x) for x in jax.tree.leaves(state.params)]
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))


@pytest.mark.slow(reason="runs benchmarks/train_step.py in a subprocess")
def test_train_step_benchmark_writes_its_json(cache_dir, tmp_path):
    """benchmarks/train_step.py on a 16 px VAE and a tiny MarDini: step time, examples/s and
    the step's FLOPs (fwd + bwd + update of the global batch); CPU has no peak, so MFU is
    null."""
    out = tmp_path / "bench.json"
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    done = subprocess.run(
        [
            sys.executable,
            "benchmarks/train_step.py",
            "--models=vae,mardini",
            "--steps=2",
            "--warmup=0",
            f"--out={out}",
            "--config.data.resolution=16",
            "--config.vae.block_out_channels=(8,8,8)",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["device"]["platform"] == "cpu" and result["device"]["count"] == 8
    assert result["peak_bf16_tflops_per_device"] is None
    assert result["overrides"] == [
        "--config.data.resolution=16",
        "--config.vae.block_out_channels=(8,8,8)",
    ]
    assert [r["model"] for r in result["rows"]] == ["vae", "mardini"]
    assert result["rows"][0]["resolution"] == 16  # MarDini's: its curriculum stage's
    for row in result["rows"]:
        assert row["mfu"] is None
        assert len(row["step_seconds_all"]) == 2 and row["step_seconds"] > 0
        assert row["examples_per_s"] == pytest.approx(8 / row["step_seconds"])
        assert np.isfinite(row["loss"]) and row["xla_flops_source"] == "lowered"
        # Model FLOPs (describe's analytic forwards: x3 for what trains, x1 for the frozen
        # VAE encoder; MarDini's joint stage trains planner and generator) against XLA's
        # count of the lowered step (no remat on CPU): the same work, counted two ways.
        assert row["model_flops_per_step"] == pytest.approx(row["xla_flops_per_step"], rel=0.05)
        tflops = row["model_flops_per_step"] / row["step_seconds"] / 8 / 1e12
        assert row["tflops_per_s_per_device"] == pytest.approx(tflops)
    assert result["rows"][1]["mardini_stage"] == "joint"
