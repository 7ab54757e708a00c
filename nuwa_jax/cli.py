"""What every command-line entry point shares: the `--config` flag and its strict checks.

Each CLI does

    _CONFIG = cli.define_config_flag()
    def main(argv): config = _CONFIG.value; ...
    if __name__ == "__main__": cli.run(main)

so `--config=configs/x.py:arg --config.a.b=value` works for every CLI. A module that is
also imported as a library (describe, export, data.latents) defines its flags in a
`_define_flags()` called by its entry point instead, so that importing two of them in one
process (a test session) does not define `--config` twice. ml-collections
already rejects a value of the wrong type (naming the flag); `define_config_flag` adds a
check that
every `--config.a.b` override names a key that exists, with the known keys in the error.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ml_collections
from absl import app, flags
from ml_collections import config_flags

DEFAULT_CONFIG = "configs/tiny.py"


def define_config_flag(default: str = DEFAULT_CONFIG) -> flags.FlagHolder:
    """Defines `--config` (an ml-collections config file with an optional `:arg`).

    config_flags reads the `--config.*` overrides in sys.argv right here, so the check
    that each names an existing key runs first: its error is printed and we exit 2.
    """
    try:
        check_config_overrides(sys.argv[1:], default)
    except (KeyError, FileNotFoundError, AttributeError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        sys.exit(2)
    return config_flags.DEFINE_config_file(
        "config", default, "Config file, `path/to/config.py[:arg]`.", lock_config=True
    )


def repo_root() -> str:
    """The repository root (the parent of the `nuwa_jax` package)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config_module(path: str) -> Any:
    """The module of config file `path` (relative paths: cwd, then the repository)."""
    if not os.path.exists(path) and os.path.exists(os.path.join(repo_root(), path)):
        path = os.path.join(repo_root(), path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location("_nuwa_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads `path/to/config.py[:arg]` as config_flags does (relative paths: cwd, then repo)."""
    path, _, arg = spec.partition(":")
    module = load_config_module(path)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"config file {path!r} has no get_config(arg) function")
    return module.get_config(arg) if arg else module.get_config()


def _config_spec(argv: Sequence[str], default: str) -> str:
    spec = default
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            spec = a.split("=", 1)[1]
        elif a == "--config" and i + 1 < len(argv):
            spec = argv[i + 1]
    return spec


def config_override_keys(argv: Sequence[str]) -> list[str]:
    """The dotted keys of the `--config.a.b[=v]` overrides in argv, in order ('a.b')."""
    return [a[len("--config.") :].split("=", 1)[0] for a in argv if a.startswith("--config.")]


def config_overrides(config: Any, argv: Sequence[str]) -> dict[str, Any]:
    """{'a.b': value} of every `--config.a.b=v` in argv, the values read from `config` (the
    parsed --config flag, overrides applied): to apply the same overrides to another
    config, e.g. a bundle's (nuwa_jax.hierarchy.bundle.generation_config)."""
    out = {}
    for key in config_override_keys(argv):
        node = config
        for part in key.split("."):
            node = node[part]
        out[key] = node
    return out


def check_config_overrides(argv: Sequence[str], default: str = DEFAULT_CONFIG) -> None:
    """Raises a clear error if any `--config.a.b[=v]` in argv names a key that does not exist."""
    overrides = config_override_keys(argv)
    if not overrides:
        return
    spec = _config_spec(argv, default)
    config = load_config(spec)
    for key in overrides:
        node: Any = config
        walked = []
        for part in key.split("."):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                where = ".".join(walked) or "<top level>"
                known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                raise KeyError(
                    f"--config.{key}: unknown config key {part!r} under {where} of {spec} "
                    f"(known: {', '.join(known)})"
                )
            walked.append(part)
            node = node[part]


# absl's help flags print their text and exit with status 1; asked for, help is a success.
HELP_FLAGS = frozenset({"help", "helpshort", "helpfull", "helpxml", "?"})


def asks_for_help(argv: Sequence[str]) -> bool:
    """Whether the command line (flags before any `--`) names one of absl's help flags."""
    for arg in argv[1:]:
        if arg == "--":
            break
        name, _, value = arg.lstrip("-").partition("=")
        if arg.startswith("-") and name in HELP_FLAGS and value.lower() not in ("false", "0"):
            return True
    return False


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, except that a help flag exits with status 0, not absl's 1."""
    try:
        return app.parse_flags_with_usage(argv)
    except SystemExit as e:
        if e.code == 1 and asks_for_help(argv):
            raise SystemExit(0) from None
        raise


def run(main: Callable[[list[str]], Any]) -> None:
    """`absl.app.run(main)`: flags parsed, then main(argv); `--help` exits 0."""
    app.run(main, flags_parser=_parse_flags)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM (and SIGINT) raise SystemExit(128 + signal) in the main thread, so the
    writers' cleanup (`finally`, `except BaseException`) removes every partial and finished
    file of the run; Python's default for SIGTERM ends the process with none of it run.
    Further signals are ignored while that cleanup runs. The old handlers come back after.

    Python runs a signal handler wherever the main thread is, a garbage-collector callback
    or a `__del__` included, and an exception raised there is printed and dropped (a
    stopped `generate` then went on and exited 0). Such a dropped SystemExit reaches
    sys.unraisablehook, which delivers the signal again (10 ms later) until it is raised
    where it propagates; a run that ends first exits 128 + signal all the same."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = (signal.SIGTERM, signal.SIGINT)

    def stop(signum: int, frame: Any) -> None:
        if frame is not None and frame.f_code is unraisable.__code__:
            redeliver(signum)  # raised here it would be dropped too: once the hook is done
            return
        for s in signals:
            signal.signal(s, signal.SIG_IGN)
        if not stopped:
            name = signal.Signals(signum).name
            print(f"error: {name}: stopped; the run's output files are removed", file=sys.stderr)
        stopped.append(signum)
        raise SystemExit(128 + signum)

    def redeliver(signum: int) -> None:
        signal.signal(signum, stop)
        timers.append(threading.Timer(0.01, os.kill, (os.getpid(), signum)))
        timers[-1].start()

    def unraisable(info: Any) -> None:
        if stopped and info.exc_type is SystemExit and info.exc_value.code == 128 + stopped[0]:
            redeliver(stopped[0])  # a dropped stop: deliver the signal again
            return
        old_hook(info)

    stopped: list[int] = []
    timers: list[threading.Timer] = []
    old = {s: signal.signal(s, stop) for s in signals}
    old_hook, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        yield
    finally:
        for timer in timers:
            timer.cancel()
        sys.unraisablehook = old_hook
        for s, handler in old.items():
            signal.signal(s, handler)
    if stopped:  # stopped, but every delivery was dropped until the run had ended
        raise SystemExit(128 + stopped[0])
