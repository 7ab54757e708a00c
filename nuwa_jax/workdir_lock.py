"""A workdir belongs to one training run: `<workdir>/train.lock`, held for the run's life.

The lock is an exclusive `fcntl.flock` on an open descriptor of the lock file. The kernel
drops it when the holder's process ends in any way (exit, exception, SIGKILL, a crash),
so a lock file left by a dead holder is free: the next run takes it over and logs a
warning naming the old holder. A live holder's lock refuses the next run with an error
naming the holder (pid, host, start time) and the lock file. The holder is recorded in
the file as JSON only for those messages; the flock alone decides who holds the workdir.
Multi-host: only process 0 of a run takes the lock (the trainer passes `enabled`), so the
processes of one run do not contend. Other tools that own a folder for their run (the
video converter: `<out>/convert.lock`) use the same class with their own file and words.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

LOCK_FILE = "train.lock"
ADVICE = "A workdir belongs to one run: wait for that run to end, stop it, or use another workdir"


class WorkdirLockedError(RuntimeError):
    """Another live trainer holds the workdir (the message names it and the lock file)."""


def describe_holder(holder: dict[str, Any] | None) -> str:
    """'pid 123 on host, started 2026-...' for a holder record (unknown when None)."""
    if not holder:
        return "an unknown holder (the lock file records none)"
    return (
        f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
        f"started {holder.get('started', '?')}"
    )


def _read_holder(fd: int) -> dict[str, Any] | None:
    """The holder record in the open lock file, or None if it is empty or unreadable."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 65536)
        record = json.loads(data.decode()) if data.strip() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


class WorkdirLock:
    """The lock of one workdir: `acquire` it before the run touches the workdir and
    `release` it at the end (or use it as a context manager). `lock_file`, `holder_kind`
    and `advice` name the file and word the refusal for tools other than the trainer."""

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        lock_file: str = LOCK_FILE,
        holder_kind: str = "trainer",
        advice: str = ADVICE,
    ):
        self.path = os.path.join(os.path.abspath(os.fspath(workdir)), lock_file)
        self.holder_kind, self.advice = holder_kind, advice
        self._fd: int | None = None
        self.holder: dict[str, Any] | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Takes the lock (making the workdir if needed) or raises WorkdirLockedError
        naming the live holder."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: already held by this WorkdirLock")
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise WorkdirLockedError(
                    f"{os.path.dirname(self.path)} is held by a live {self.holder_kind}: "
                    f"{describe_holder(holder)} (lock file {self.path}). {self.advice}"
                ) from None
            except BaseException:
                os.close(fd)
                raise
            # A holder that released between our open and flock unlinked the file we
            # opened: lock the one now at the path instead.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_holder(fd)
        if previous is not None:
            logging.warning(
                "%s: taking over the lock of a %s that is no longer running (%s)",
                self.path,
                self.holder_kind,
                describe_holder(previous),
            )
        self.holder = dict(
            pid=os.getpid(),
            host=socket.gethostname(),
            started=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        )
        data = (json.dumps(self.holder) + "\n").encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Removes the lock file and drops the lock (nothing when not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.unlink(self.path)  # while still locked: no other run holds this file
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def hold(workdir: str | os.PathLike, enabled: bool = True) -> Iterator[WorkdirLock | None]:
    """Holds `workdir`'s lock for the block (released on exit and on exceptions); nothing
    when not `enabled` (the processes other than 0 of a multi-host run)."""
    if not enabled:
        yield None
        return
    with WorkdirLock(workdir) as lock:
        yield lock
