"""The tiny sweep CI runs end to end: 2 learning rates x 20 VAE steps at 16 px (CPU).

    python -m nuwa_jax.sweep --config=configs/sweeps/tiny.py --workdir=/tmp/sweep_tiny

Every point reads one synthetic store in the sweep root ({root}/data, rendered once by
the sweep before the points start).
"""

import os

from nuwa_jax import cli

BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tiny.py")


def get_config(arg: str | None = None):
    del arg
    config = cli.load_config(BASE)
    config.data.resolution = 16
    config.data.synthetic_episodes = 2
    config.data.synthetic_frames = 40
    config.vae.block_out_channels = (8, 8, 8)
    config.train.model = "vae"
    config.train.num_steps = 20
    config.train.warmup_steps = 2
    config.train.checkpoint_every = 10
    config.train.checkpoint_replica_parallel = False  # far fewer compiles on CPU
    return config


def get_hyper(h):
    return h.product([
        h.fixed("config.data.data_dir", "{root}/data"),
        h.sweep("config.train.learning_rate", [1e-3, 3e-3]),
    ])  # fmt: skip
