"""Configs load for every preset; CLI overrides are strict and errors name the key."""

import os
import signal
import subprocess
import sys
import time

import pytest

from configs import common
from nuwa_jax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "spec",
    [
        "configs/tiny.py",
        "configs/demo.py",
        "configs/flintstones.py:128",
        "configs/flintstones.py:256",
    ],
)
def test_presets_load(spec):
    config = cli.load_config(spec)
    assert config.preset in common.PRESETS
    for section in ("mesh", "sharding", "compute", "hierarchy"):
        assert section in config


def test_unknown_preset_and_bad_arg():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        common.base("huge")
    with pytest.raises(ValueError, match=":128 or :256"):
        cli.load_config("configs/flintstones.py:512")


def test_override_check_names_unknown_key():
    cli.check_config_overrides(["--config.mesh.ici_fsdp=2"])
    with pytest.raises(KeyError, match="unknown config key 'bogus' under mesh"):
        cli.check_config_overrides(["--config.mesh.bogus=2"])
    with pytest.raises(KeyError, match="'nope' under <top level>"):
        cli.check_config_overrides(["--config=configs/demo.py", "--config.nope.x=1"])
    with pytest.raises(FileNotFoundError, match="missing.py"):
        cli.check_config_overrides(["--config=configs/missing.py", "--config.seed=1"])


def _run_probe(*args):
    code = (
        "from nuwa_jax import cli\n"
        "_C = cli.define_config_flag()\n"
        "def main(argv):\n"
        "    print('ici_fsdp', _C.value.mesh.ici_fsdp, 'dtype', _C.value.compute.dtype)\n"
        "cli.run(main)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        env={**os.environ, "PYTHONPATH": REPO},
    )


def test_help_exits_zero_and_bad_flags_do_not():
    """absl exits 1 after printing help; our CLIs exit 0 (help was asked for and given)."""
    for flag in ("--help", "--helpfull"):
        shown = _run_probe(flag)
        assert shown.returncode == 0, (flag, shown.stderr)
        assert "USAGE" in shown.stdout or "--config" in shown.stdout
    assert _run_probe("--bogus_flag").returncode == 1
    assert not cli.asks_for_help(["prog", "--help=false", "--", "--help"])
    assert cli.asks_for_help(["prog", "--config=configs/tiny.py", "-?"])


def test_cli_overrides_end_to_end():
    ok = _run_probe("--config=configs/flintstones.py:256", "--config.mesh.ici_fsdp=4")
    assert ok.returncode == 0, ok.stderr
    assert "ici_fsdp 4 dtype bfloat16" in ok.stdout
    unknown = _run_probe("--config.mesh.bogus=1")
    assert unknown.returncode == 2 and "unknown config key 'bogus' under mesh" in unknown.stderr
    wrong_type = _run_probe("--config.mesh.ici_fsdp=abc")
    assert wrong_type.returncode != 0 and "config.mesh.ici_fsdp" in wrong_type.stderr


def test_a_stop_dropped_by_a_destructor_is_delivered_again(capsys):
    """A SIGTERM whose handler runs inside a __del__ (as inside JAX's GC callback, where a
    stopped `generate` once went on to exit 0) is dropped by Python; `interruptible`
    delivers it again and the run stops part way, with status 128 + 15 and one message."""

    class Dropper:
        def __del__(self):
            signal.raise_signal(signal.SIGTERM)
            sum(range(10))  # the handler runs here, inside the destructor

    steps = []
    with pytest.raises(SystemExit) as stopped:
        with cli.interruptible():
            Dropper()
            for i in range(500):
                steps.append(i)
                time.sleep(0.01)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert len(steps) < 500, "stopped only when the run had ended"
    assert capsys.readouterr().err.count("error: SIGTERM: stopped") == 1
    assert signal.getsignal(signal.SIGTERM) is not None  # the old handler is back
