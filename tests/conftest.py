"""Test setup: 8 simulated CPU devices, set before JAX starts.

Every sharded code path runs on every test run. Nothing here imports jax before the
flags are in place.
"""

import os

# Cheap XLA:CPU compiles: tests compile far more than they run (a tiny MTD: 11 s -> 4 s to
# compile, 2x slower to run). Subprocesses started by tests inherit these flags.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8 " + FAST_COMPILE
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # keep TensorFlow off any accelerator

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
