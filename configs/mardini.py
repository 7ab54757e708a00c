"""MarDini training: a preset's config with train.model='mardini' at one curriculum stage.

Usage: --config=configs/mardini.py:PRESET[:STAGE], e.g. `configs/mardini.py:tiny`,
`configs/mardini.py:demo:planner`; STAGE is 'planner', 'generator' or 'joint' (default).
The stages run one after another, each starting from the previous one's workdir:

    python -m nuwa_jax.train --config=configs/mardini.py:demo:planner --workdir=runs/p
    python -m nuwa_jax.train --config=configs/mardini.py:demo:generator --workdir=runs/g \\
        --config.train.init_from=runs/p
    python -m nuwa_jax.train --config=configs/mardini.py:demo:joint --workdir=runs/j \\
        --config.train.init_from=runs/g

MarDini reads no text: the pipeline's captions are tokenised by the offline byte
tokenizer. At paper scale its latents are the VAE's (SD's KL-f8: 4 channels, not the
paper's 16), so mardini.latent_channels follows vae.latent_channels.
"""

from configs import common


def get_config(arg: str | None = None):
    preset, _, stage = (arg or "tiny").partition(":")
    config = common.base(preset)
    config.train.model = "mardini"
    config.train.mardini_stage = stage or "joint"
    config.text.kind = "byte"
    config.mardini.latent_channels = config.vae.latent_channels
    return config
