"""Folders that every pytest-xdist worker of one test run shares, each filled once.

With `-n 2` a module-scoped fixture runs once per worker that runs one of its tests, so
two workers would each render and encode the same data (worksteal hands a module's tests
to both). A shared folder lives beside the workers' own temporary folders and is filled
under an exclusive `fcntl.flock`: the first worker to take the lock builds what is
missing, the others wait, then find it there and reuse it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
from collections.abc import Iterator

import pytest


def run_folder(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """This run's base temporary folder: under xdist each worker's base is
    <run>/popen-gwN, so their common parent is the run's; without xdist, the base."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def shared_folder(tmp_path_factory: pytest.TempPathFactory, name: str) -> pathlib.Path:
    """<run>/shared/`name`, the same folder for every worker of this run (created here)."""
    path = run_folder(tmp_path_factory) / "shared" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def exclusively(folder: pathlib.Path) -> Iterator[pathlib.Path]:
    """Holds `folder`'s lock (a sibling `<name>.lock`) for the body: one worker at a time
    builds or completes what the folder holds; the others block until it is done."""
    with open(folder.parent / f"{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield folder
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
