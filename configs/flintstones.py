"""Paper scale (NUWA-XL on FlintstonesHD): SD-1.x widths, CLIP ViT-L/14 text, L = 16, m = 3.

Usage: --config=configs/flintstones.py:128  (or :256 for the 256 px model)
"""

from configs import common


def get_config(arg: str | None = "128"):
    resolution = arg or "128"
    if resolution not in ("128", "256"):
        raise ValueError(f"configs/flintstones.py takes :128 or :256, got {arg!r}")
    return common.base(f"flintstones_{resolution}")
