"""Tiny config: CPU tests and smoke runs, seconds per step on 2 cores.

Usage: --config=configs/tiny.py
"""

from configs import common


def get_config(arg: str | None = None):
    del arg
    return common.base("tiny")
