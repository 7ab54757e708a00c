"""Where a sweep's points run: `local` (subprocesses on this machine, N at once, each pinned
to its share of CPUs and accelerators) or `tpu_vm` (launch/tpu_vm.sh, one point at a time
per TPU VM, the VMs working through the points in parallel).

Local pinning, per platform (--platform, 'auto' reads JAX_PLATFORMS, then looks for TPU
chips /dev/accel* or /dev/vfio/N, then nvidia-smi):
  cpu: each point is bound (sched_setaffinity) to an equal share of this process's cores.
  gpu: the same, plus CUDA_VISIBLE_DEVICES = its share of the GPUs.
  tpu: the same, plus TPU_VISIBLE_CHIPS = its share of the host's chips, with
       TPU_CHIPS_PER_PROCESS_BOUNDS / TPU_PROCESS_BOUNDS and its own TPU_PROCESS_PORT
       (1, 2 or all chips per point).
Each point's trainer writes stdout + stderr to <workdir>/train.log. SIGTERM or Ctrl-C to
the sweep sends SIGTERM to every running trainer (each saves a checkpoint at its next step
boundary and exits) and starts no more points; a second signal kills them.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from nuwa_jax import cli
from nuwa_jax.sweep import points as points_lib

TPU_PORT = 8476  # the first point's TPU_PROCESS_PORT; the next get 8477, ...
FINISHED, STOPPED, FAILED = "finished", "stopped", "failed"


@dataclasses.dataclass(frozen=True)
class Slot:
    """What one concurrently running point gets: CPU cores and environment variables."""

    index: int
    cpus: tuple[int, ...]
    env: dict[str, str]


def detect_platform(env: dict[str, str] | None = None) -> str:
    """'cpu', 'gpu' or 'tpu' for --platform=auto (`env`: the children's environment),
    without starting JAX here."""
    env = os.environ if env is None else env
    wanted = env.get("JAX_PLATFORMS", "").split(",")[0].strip().lower()
    if wanted in ("cpu", "tpu"):
        return wanted
    if wanted in ("cuda", "gpu", "rocm"):
        return "gpu"
    if tpu_chips():
        return "tpu"
    return "gpu" if gpus() else "cpu"


def tpu_chips() -> list[str]:
    """This host's TPU chips (their device files: /dev/accel* or /dev/vfio/<n>)."""
    chips = glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*")
    return [str(i) for i in range(len(chips))]


def gpus() -> list[str]:
    """The GPUs a child may use: CUDA_VISIBLE_DEVICES if set, else `nvidia-smi -L`."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d for d in visible.split(",") if d.strip()]
    if not shutil.which("nvidia-smi"):
        return []
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU")]


def _share(items: Sequence[Any], parts: int, i: int) -> list[Any]:
    per = len(items) // parts
    return list(items[i * per : (i + 1) * per])


def local_slots(parallel: int, platform: str, cpus: Sequence[int] | None = None) -> list[Slot]:
    """One Slot per concurrently running point; its share of cores and devices."""
    if parallel < 1:
        raise ValueError(f"--parallel={parallel} must be >= 1")
    cpus = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
    if parallel > len(cpus):
        raise ValueError(f"--parallel={parallel} is more than the {len(cpus)} CPU cores here")
    devices = {"gpu": gpus, "tpu": tpu_chips}.get(platform, list)()
    if platform in ("gpu", "tpu") and len(devices) < parallel:
        raise ValueError(f"--parallel={parallel}: only {len(devices)} {platform} device(s)")
    per = len(devices) // parallel if devices else 0
    if platform == "tpu" and parallel > 1 and per not in (1, 2):
        raise ValueError(f"--parallel={parallel} gives {per} TPU chips per point; the TPU "
                         "runtime splits a host into 1 or 2 chips per process")  # fmt: skip
    slots = []
    for i in range(parallel):
        env: dict[str, str] = {}
        mine = _share(devices, parallel, i)
        if platform == "gpu":
            env["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
        elif platform == "tpu" and parallel > 1:
            env.update(
                TPU_VISIBLE_CHIPS=",".join(mine),
                TPU_CHIPS_PER_PROCESS_BOUNDS="1,1,1" if per == 1 else "1,2,1",
                TPU_PROCESS_BOUNDS="1,1,1",
                TPU_PROCESS_PORT=str(TPU_PORT + i),
                TPU_PROCESS_ADDRESSES=f"localhost:{TPU_PORT + i}",
            )
        slots.append(Slot(i, tuple(_share(cpus, parallel, i)), env))
    return slots


class _Signals:
    """SIGTERM / SIGINT -> `on_signal(count)` in the main thread (old handlers restored)."""

    def __init__(self, on_signal: Callable[[int, int], None]):
        self.on_signal, self.count, self.signum, self._old = on_signal, 0, 0, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        del frame
        self.count += 1
        self.signum = self.signum or signum
        self.on_signal(signum, self.count)

    def __exit__(self, *exc):
        for s, handler in self._old.items():
            signal.signal(s, handler)


def pinned(argv: Sequence[str], cpus: Sequence[int]) -> list[str]:
    """`argv` (a Python command) run bound to `cpus`: a small Python prelude sets the
    affinity, then execs argv, so every thread of the child starts on its share. (Popen's
    preexec_fn would fork this process, whose JAX runs threads: unsafe.)"""
    prelude = (f"import os, sys; os.sched_setaffinity(0, {sorted(cpus)!r}); "
               "os.execv(sys.argv[1], sys.argv[1:])")  # fmt: skip
    return [sys.executable, "-c", prelude, *argv]


def _child_env(base: dict[str, str] | None, extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ if base is None else base, **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [cli.repo_root(), env.get("PYTHONPATH")]))
    return env


def run_local(spec: str, points: Sequence[points_lib.Point], slots: Sequence[Slot],
              env: dict[str, str] | None = None,
              poll_s: float = 0.2) -> tuple[dict[str, str], int]:  # fmt: skip
    """Runs the points on the slots as `python -m nuwa_jax.train` subprocesses (`env`:
    their environment, default this process's, plus each slot's variables).

    Returns ({name: 'finished' | 'stopped' | 'failed (exit N)'}, the signal that stopped
    the sweep or 0)."""
    pending = list(points)
    free = list(slots)
    running: dict[str, tuple[subprocess.Popen, Slot, Any]] = {}
    outcome: dict[str, str] = {}

    def on_signal(signum: int, count: int) -> None:
        sig = signal.SIGTERM if count == 1 else signal.SIGKILL
        logging.warning("%s: %s to %d running point(s)%s", signal.Signals(signum).name,
                        sig.name, len(running), "" if count > 1 else
                        " (they checkpoint and exit; a second signal kills them)")  # fmt: skip
        for proc, _, _ in running.values():
            if proc.poll() is None:
                proc.send_signal(sig)

    with _Signals(on_signal) as signals:
        while pending or running:
            while pending and free and not signals.count:
                point, slot = pending.pop(0), free.pop(0)
                points_lib.record(point, spec)
                argv = [sys.executable, "-m", "nuwa_jax.train", *point.train_args(spec)]
                cpus = sorted(slot.cpus)
                log = open(os.path.join(point.workdir, points_lib.LOG_FILE), "ab")
                log.write(
                    f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} slot {slot.index} cpus "
                    f"{list(slot.cpus)} {slot.env}\n=== {' '.join(argv)}\n".encode()
                )
                log.flush()
                proc = subprocess.Popen(
                    pinned(argv, cpus), stdout=log, stderr=subprocess.STDOUT,
                    env=_child_env(env, slot.env),
                    start_new_session=True,  # Ctrl-C reaches the sweep only; it relays SIGTERM
                )  # fmt: skip
                running[point.name] = (proc, slot, log)
                logging.info("started %s (slot %d, cpus %s): log %s", point.name, slot.index,
                             cpus, log.name)  # fmt: skip
            if signals.count and pending:
                for point in pending:
                    outcome[point.name] = STOPPED
                pending = []
            for name, (proc, slot, log) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                log.close()
                del running[name]
                free.append(slot)
                free.sort(key=lambda s: s.index)
                point = next(p for p in points if p.name == name)
                outcome[name] = _outcome(point, rc)
                logging.info("%s: %s", name, outcome[name])
            if running:
                time.sleep(poll_s)
    return outcome, signals.signum


def _outcome(point: points_lib.Point, rc: int) -> str:
    if rc != 0:
        return f"{FAILED} (exit {rc}, log {os.path.join(point.workdir, points_lib.LOG_FILE)})"
    return FINISHED if points_lib.state(point) == points_lib.FINISHED else STOPPED


# ---------------------------------------------------------------------------------------
# TPU VMs: launch/tpu_vm.sh.
# ---------------------------------------------------------------------------------------
def tpu_vm_script() -> str:
    return os.path.join(cli.repo_root(), "launch", "tpu_vm.sh")


def run_tpu_vms(
    spec: str,
    points: Sequence[points_lib.Point],
    *,
    names: Sequence[str],
    zone: str,
    remote_root: str,
    setup: bool,
) -> tuple[dict[str, str], int]:
    """Runs the points on the TPU VMs `names` (each VM one point at a time, the VMs in
    parallel): `tpu_vm.sh setup` once per VM when `setup`, then per point `tpu_vm.sh run`
    (logs per worker in <workdir>/logs) and `tpu_vm.sh fetch` of its metrics.jsonl and
    finished marker from worker 0 into the local workdir. Returns as run_local does."""
    script = tpu_vm_script()
    todo: queue.Queue = queue.Queue()
    for p in points:
        todo.put(p)
    outcome: dict[str, str] = {}
    procs: dict[str, subprocess.Popen] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def call(vm: str, argv: list[str], log_path: str | None = None) -> int:
        with lock:
            if stop.is_set():
                return -signal.SIGTERM
            out = open(log_path, "ab") if log_path else None
            proc = subprocess.Popen([script, *argv], stdout=out, stderr=subprocess.STDOUT
                                    if out else None, start_new_session=True)  # fmt: skip
            procs[vm] = proc
        rc = proc.wait()
        if out:
            out.close()
        return rc

    def worker(vm: str) -> None:
        if setup and call(vm, ["setup", vm, zone]) != 0:
            logging.error("%s: setup failed; its points are left to the other VMs", vm)
            return
        while not stop.is_set():
            try:
                point = todo.get_nowait()
            except queue.Empty:
                return
            points_lib.record(point, spec)
            remote = f"{remote_root.rstrip('/')}/{point.name}"
            args = ["-m", "nuwa_jax.train", *point.train_args(spec, remote)]
            logdir = os.path.join(point.workdir, "logs")
            logging.info("%s: %s", vm, point.name)
            rc = call(vm, ["run", vm, zone, "--logdir", logdir, "--", *args])
            call(vm, ["fetch", vm, zone, remote, point.workdir])
            with lock:
                outcome[point.name] = _outcome(point, rc) if rc >= 0 else STOPPED

    def on_signal(signum: int, count: int) -> None:
        del signum
        stop.set()
        with lock:
            for vm in names:
                subprocess.run([script, "stop", vm, zone], check=False)
            if count > 1:
                for proc in procs.values():
                    if proc.poll() is None:
                        proc.kill()

    threads = [threading.Thread(target=worker, args=(vm,), daemon=True) for vm in names]
    with _Signals(on_signal) as signals:
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            time.sleep(0.2)
    while not todo.empty():
        outcome.setdefault(todo.get_nowait().name, STOPPED)
    return outcome, signals.signum
