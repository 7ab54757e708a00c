"""Paper scale on TPU VMs: the FlintstonesHD global MTD at 128 px, learning rate x EMA decay.

    launch/tpu_vm.sh create nuwa-0 us-east5-b v5litepod-16     # and nuwa-1, ... if wanted
    python -m nuwa_jax.sweep --config=configs/sweeps/flintstones.py:/mnt/flintstones \\
        --workdir=runs/sweep_flintstones --launcher=tpu_vm --tpu_names=nuwa-0,nuwa-1 \\
        --zone=us-east5-b --remote_root=/mnt/sweeps/flintstones

The argument is where the VMs see the data (a shared mount, e.g. gcsfuse or Filestore, the
same path on every worker): DATA/frames (the converted frame store) and DATA/latents (its
latent store, nuwa_jax.data.latents). --remote_root must be on shared storage too: every
worker of a slice writes its part of each checkpoint there. Each point trains 20k steps.
"""

import os

from nuwa_jax import cli

BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "flintstones.py")


def get_config(arg: str | None = None):
    data = arg or "/mnt/flintstones"
    config = cli.load_config(BASE + ":128")
    config.data.data_dir = os.path.join(data, "frames")
    config.data.latents_dir = os.path.join(data, "latents")
    config.train.model = "mtd"
    config.train.level = 0
    config.train.num_steps = 20000
    config.train.sample_every = 0
    return config


def get_hyper(h):
    return h.product([
        h.sweep("config.train.learning_rate", [5e-5, 1e-4, 2e-4]),
        h.sweep("config.train.ema_decay", [0.999, 0.9999]),
    ])  # fmt: skip
