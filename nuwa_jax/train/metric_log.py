"""Where a training run's scalars and images go: clu's writers, or the log alone.

clu's default writer (TensorBoard event files plus the log) imports TensorFlow, which
the runtime stack installs (tensorflow-cpu) but an accelerator image may lack. There the
run still trains: scalars go to the log (and, as always, to the trainer's
metrics.jsonl), images only to the sample files the sampler writes itself, and progress
(steps/s, ETA) is logged every `every_secs`. The profiler (clu's `Profile`) needs clu.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)


class LogWriter:
    """The scalar half of clu's `MetricWriter` interface, written to the log."""

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        log.info("[%d] %s", step, ", ".join(f"{k}={v:.6g}" for k, v in scalars.items()))

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        log.info("[%d] images %s (kept only in the sample files)", step, sorted(images))

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        log.info("hparams %s", dict(hparams))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class LogProgress:
    """`clu.periodic_actions.ReportProgress` for the log: steps/s and ETA every so often."""

    def __init__(self, num_train_steps: int, every_secs: float = 60.0):
        self.num_train_steps = num_train_steps
        self.every_secs = every_secs
        self._last: tuple[int, float] | None = None

    def __call__(self, step: int, t: float | None = None) -> bool:
        t = time.time() if t is None else t
        if self._last is None:
            self._last = (step, t)
            return False
        step0, t0 = self._last
        if t - t0 < self.every_secs and step != self.num_train_steps:
            return False
        rate = (step - step0) / max(t - t0, 1e-9)
        eta = (self.num_train_steps - step) / rate if rate > 0 else float("inf")
        log.info(
            "step %d/%d (%.1f%%), %.2f steps/s, ETA %.0f min",
            step,
            self.num_train_steps,
            100.0 * step / max(self.num_train_steps, 1),
            rate,
            eta / 60.0,
        )
        self._last = (step, t)
        return True


def have_clu_writers() -> bool:
    """Whether clu's metric writers import here (they import TensorFlow)."""
    try:
        from clu import metric_writers  # noqa: F401
    except ImportError:
        return False
    return True


def create(workdir: str, lead: bool, num_steps: int) -> tuple[Any, Any]:
    """(writer, progress) for a run in `workdir`; `lead`: this process writes files."""
    if have_clu_writers():
        from clu import metric_writers, periodic_actions

        writer = metric_writers.create_default_writer(workdir, just_logging=not lead)
        return writer, periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)
    log.warning(
        "clu's metric writers need TensorFlow, which is not installed: no TensorBoard "
        "event files in %s; scalars go to the log and metrics.jsonl",
        workdir,
    )
    return LogWriter(), LogProgress(num_steps)
