"""What the trainer tests share: the tiny 16 px benchmark and the tiny trainer config."""

import os

from configs import common
from nuwa_jax.data import synthetic


def render_data(root: os.PathLike) -> str:
    """Two 40-frame episodes of the synthetic benchmark at 16 px under `root`/data."""
    synthetic.write_benchmark(os.path.join(root, "data"), episodes=2, frames=40, resolution=16)
    return os.path.join(root, "data")


def tiny_config(data_dir: str, model: str = "vae"):
    """configs 'tiny' at 16 px with an 8-channel VAE: 40 steps of `model` on `data_dir`."""
    cfg = common.base("tiny")
    cfg.data.data_dir = data_dir
    cfg.data.resolution = 16
    cfg.vae.block_out_channels = (8, 8, 8)
    cfg.train.model = model
    cfg.train.num_steps = 40
    cfg.train.warmup_steps = 2
    cfg.train.checkpoint_replica_parallel = False
    return cfg


def local_mtd_config(data_dir: str):
    """The tiny MTD of local level 1 with a frozen text encoder, computing in bfloat16:
    what test_train.py's frozen-text run and test_train_step.py's bf16 step both train
    (one train step compiled per run for the two)."""
    cfg = tiny_config(data_dir, "mtd")
    cfg.mtd.block_out_channels = (16, 32)
    cfg.train.level = 1
    cfg.text.trainable = False
    cfg.compute.dtype = "bfloat16"
    return cfg
