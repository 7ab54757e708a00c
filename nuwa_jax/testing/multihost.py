"""Start N Python processes that form one JAX world on 127.0.0.1, and always reap them.

Each process gets `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`,
`JAX_PLATFORMS=cpu` and its own number of simulated CPU devices (the environment's other
XLA flags are kept); the worker calls `nuwa_jax.parallel.initialize_distributed()` first
thing (gloo collectives on CPU).
Used by the `multihost` tests; useful by hand to rehearse a pod launch on one machine.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class ProcessResult:
    process_id: int
    returncode: int
    stdout: str
    stderr: str


def run_world(
    argv: Sequence[str],
    num_processes: int = 2,
    local_devices: int = 2,
    timeout_s: float = 180.0,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> list[ProcessResult]:
    """Runs `python *argv` as `num_processes` processes of one JAX world; returns their results.

    All processes are killed and reaped if any of them outlives `timeout_s` (then a
    TimeoutError names the processes still running) or if anything else goes wrong.
    """
    port = free_port()
    procs: list[subprocess.Popen] = []
    base = dict(os.environ if env is None else env)
    # The caller's XLA flags are kept (e.g. the tests' cheap-compile flags), except its
    # simulated device count: each process gets `local_devices`.
    inherited = [
        f
        for f in base.pop("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
    ]
    xla_flags = " ".join([*inherited, f"--xla_force_host_platform_device_count={local_devices}"])
    try:
        for pid in range(num_processes):
            penv = dict(base)
            penv.update(
                JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                JAX_NUM_PROCESSES=str(num_processes),
                JAX_PROCESS_ID=str(pid),
                JAX_PLATFORMS="cpu",
                XLA_FLAGS=xla_flags,
                CUDA_VISIBLE_DEVICES="",
                TF_CPP_MIN_LOG_LEVEL="3",
            )
            procs.append(
                subprocess.Popen(
                    [sys.executable, *argv],
                    env=penv,
                    cwd=cwd,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        results = []
        for pid, p in enumerate(procs):
            try:
                out, err = p.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                running = [i for i, q in enumerate(procs) if q.poll() is None]
                raise TimeoutError(
                    f"multihost world: processes {running} still running after {timeout_s} s"
                ) from None
            results.append(ProcessResult(pid, p.returncode, out, err))
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            for stream in (p.stdout, p.stderr):
                if stream is not None:
                    stream.close()
