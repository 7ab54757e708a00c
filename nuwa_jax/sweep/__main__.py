"""`python -m nuwa_jax.sweep --config=configs/sweeps/FILE.py[:ARG] --workdir=ROOT ...`

Runs every point of the config file's get_hyper(h) (docs/sweeps.md): checks them all, skips
finished ones, resumes partial ones, then writes ROOT/results.{md,csv,json}.
"""

import logging
import os
import shlex
import sys

import jax
from absl import flags

from nuwa_jax import cli
from nuwa_jax.sweep import hyper, launchers, results
from nuwa_jax.sweep import points as points_lib
from nuwa_jax.train import trainer

# This process never touches an accelerator (a TPU chip is held by one process): its JAX
# (data preparation) runs on CPU, set before any backend starts; the trainers it starts
# get the environment unchanged.
jax.config.update("jax_platforms", "cpu")
CHILD_ENV = dict(os.environ)

_CONFIG = flags.DEFINE_string("config", None, "Sweep config file `path.py[:arg]` with "
                              "get_config(arg) and get_hyper(h).")  # fmt: skip
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep root: ROOT/<point name> per point.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print each point's name and overrides only.")
_LAUNCHER = flags.DEFINE_enum("launcher", "local", ["local", "tpu_vm"], "Where points run.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "local: points run at once.")
_PLATFORM = flags.DEFINE_enum("platform", "auto", ["auto", "cpu", "gpu", "tpu"],
                              "local: what each point is pinned to.")  # fmt: skip
_ONLY = flags.DEFINE_multi_string("only", [], "Run only the point(s) of this name.")
_METRIC = flags.DEFINE_string("metric", "loss", "metrics.jsonl key the results rank by.")
_MODE = flags.DEFINE_enum("mode", "min", ["min", "max"], "Best point: min or max metric.")
_LAST_N = flags.DEFINE_integer("last_n", 1, "Average the metric's last n logged values.")
_GATHER_ONLY = flags.DEFINE_bool("gather_only", False, "Write the results table only.")
_TPU_NAMES = flags.DEFINE_list("tpu_names", [], "tpu_vm: TPU VMs (one point at a time each).")
_ZONE = flags.DEFINE_string("zone", "", "tpu_vm: the TPU VMs' zone.")
_REMOTE_ROOT = flags.DEFINE_string("remote_root", "", "tpu_vm: sweep root on the VMs "
                                   "(shared storage for multi-host slices).")  # fmt: skip
_TPU_SETUP = flags.DEFINE_bool("tpu_setup", True, "tpu_vm: run `tpu_vm.sh setup` first.")
flags.mark_flags_as_required(["config", "workdir"])


def dry_run_lines(points: list[points_lib.Point]) -> list[str]:
    """'NAME [state]: --config.a=v ...' per point (shell-quoted, ready to paste)."""
    width = max(len(p.name) for p in points)
    return [f"{p.name:<{width}}  [{points_lib.state(p)}]  "
            + " ".join(shlex.quote(o) for o in p.overrides) for p in points]  # fmt: skip


def prepare_data(configs: list) -> None:
    """Renders each synthetic store the points read once, here, before they start (points
    running at once would otherwise render the same store together)."""
    done = set()
    for config in configs:
        d = config.data
        if d.source == "synthetic" and not d.latents_dir and d.data_dir not in done:
            trainer.ensure_data(config)
            done.add(d.data_dir)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}")
    spec, root = _CONFIG.value, os.path.abspath(_WORKDIR.value)
    tpu = _LAUNCHER.value == "tpu_vm"
    if tpu and not (_TPU_NAMES.value and _ZONE.value and _REMOTE_ROOT.value):
        raise ValueError("--launcher=tpu_vm needs --tpu_names, --zone and --remote_root")
    every = points_lib.make_points(spec, root, _REMOTE_ROOT.value if tpu else None)
    chosen = points_lib.select(every, _ONLY.value)
    configs = points_lib.check(spec, every)  # every point, before anything runs
    if _DRY_RUN.value:
        print("\n".join(dry_run_lines(chosen)))
        return 0
    signum = 0
    outcome: dict[str, str] = {}
    if not _GATHER_ONLY.value:
        todo = [p for p in chosen if points_lib.state(p) != points_lib.FINISHED]
        for p in chosen:
            if p not in todo:
                logging.info("%s: finished already, skipped", p.name)
        if todo and tpu:
            outcome, signum = launchers.run_tpu_vms(
                spec, todo, names=_TPU_NAMES.value, zone=_ZONE.value,
                remote_root=_REMOTE_ROOT.value, setup=_TPU_SETUP.value)  # fmt: skip
        elif todo:
            platform = _PLATFORM.value
            if platform == "auto":
                platform = launchers.detect_platform(CHILD_ENV)
            slots = launchers.local_slots(_PARALLEL.value, platform)
            prepare_data([c for p, c in zip(every, configs, strict=True) if p in todo])
            outcome, signum = launchers.run_local(spec, todo, slots, env=CHILD_ENV)
    rows = results.gather(every, _METRIC.value, _MODE.value, _LAST_N.value)
    print(results.write(root, rows, _METRIC.value, _MODE.value, _LAST_N.value), end="")
    print(f"results: {os.path.join(root, results.RESULTS)}.{{md,csv,json}}; "
          f"tensorboard --logdir {root}")  # fmt: skip
    failed = {n: o for n, o in outcome.items() if o.startswith(launchers.FAILED)}
    for name, o in failed.items():
        print(f"error: point {name}: {o}", file=sys.stderr)
    if signum:
        return 128 + signum
    return 1 if failed else 0


def _main(argv: list[str]) -> None:
    try:
        code = main(argv)
    except (hyper.SweepError, ValueError, FileNotFoundError, AttributeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)


if __name__ == "__main__":
    cli.run(_main)
