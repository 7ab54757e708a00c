"""Test setup: 8 simulated CPU devices, set before JAX starts.

Every sharded code path runs on every test run. Nothing here imports jax before the
flags are in place.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # keep TensorFlow off any accelerator

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
