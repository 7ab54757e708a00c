"""Test setup: 8 simulated CPU devices, set before JAX starts.

Every sharded code path runs on every test run. Nothing here imports jax before the
flags are in place.
"""

import atexit
import os
import shutil
import tempfile

# Cheap XLA:CPU compiles: tests compile far more than they run (a tiny MTD: 11 s -> 4 s to
# compile, 2x slower to run). Subprocesses started by tests inherit these flags.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8 " + FAST_COMPILE
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # keep TensorFlow off any accelerator

# One persistent compilation cache for the whole session, subprocesses included (they
# inherit the variables): the trainer, latent and bundle tests compile the same tiny train
# steps and samplers many times over. Removed when the session ends.
_CACHE = tempfile.mkdtemp(prefix="nuwa_jax_test_xla_cache_")
atexit.register(shutil.rmtree, _CACHE, True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def cache_dir() -> str:
    """The session's persistent compilation cache: trainer runs with the same config, in
    any module or subprocess, compile their step once."""
    path = os.environ["JAX_COMPILATION_CACHE_DIR"]
    assert jax.config.jax_compilation_cache_dir == path
    return path
