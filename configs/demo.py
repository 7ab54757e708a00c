"""Demo config: the synthetic benchmark, trainable on 2 CPU cores in well under an hour.

Usage: --config=configs/demo.py
"""

from configs import common


def get_config(arg: str | None = None):
    del arg
    return common.base("demo")
