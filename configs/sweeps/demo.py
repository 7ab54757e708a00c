"""The demo recipe's global MTD: learning rate x prediction type (6 points, CPU hours each).

    bash launch/train_demo.sh runs/demo        # once: data, VAE and the latent store
    python -m nuwa_jax.sweep --config=configs/sweeps/demo.py:runs/demo \\
        --workdir=runs/sweep_demo --parallel=2 --metric=loss --last_n=50

The argument is train_demo.sh's run directory: every point trains the level-0 MTD on its
latent store (RUN/latents), as the script's global stage does, for 1400 steps.
epsilon prediction cannot train on a zero-terminal-SNR schedule (the last step keeps no
signal), so the prediction type is zipped with the schedule: (v, ztsnr) and (epsilon, not).
"""

import os

from nuwa_jax import cli

BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "demo.py")


def get_config(arg: str | None = None):
    run = arg or "runs/demo"
    config = cli.load_config(BASE)
    config.data.data_dir = os.path.join(run, "data")
    config.data.latents_dir = os.path.join(run, "latents")
    config.train.model = "mtd"
    config.train.level = 0
    config.train.num_steps = 1400
    config.train.sample_every = 0
    return config


def get_hyper(h):
    return h.product([
        h.sweep("config.train.learning_rate", [1e-4, 3e-4, 1e-3]),
        h.zipit([
            h.sweep("config.diffusion.prediction", ["v", "epsilon"]),
            h.sweep("config.diffusion.zero_terminal_snr", [True, False]),
        ]),
    ])  # fmt: skip
