"""Verified checkpoints: each finished step gets an integrity manifest, and a resume skips a
damaged newest step (bytes flipped, file truncated, orbax failing) for the newest intact one
(CPU, 8 simulated devices; one tiny 4-step VAE run, checkpoints at steps 2 and 4, copied per
test).
"""

import logging
import os
import shutil

import pytest
import trainer_setup
from trainer_setup import tiny_config

from nuwa_jax.train import Checkpointer, NonFiniteError, train
from nuwa_jax.train import checkpoint as ckpt

pytestmark = pytest.mark.faults  # the reliability issue's fault-injection cases


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return trainer_setup.render_data(tmp_path_factory.mktemp("integrity_data"))


def config(data_dir):
    cfg = tiny_config(data_dir)
    cfg.train.checkpoint_every = 2
    return cfg


@pytest.fixture(scope="module")
def run(data_dir, cache_dir, tmp_path_factory):
    """A finished 4-step run (steps 2 and 4 saved asynchronously, each with its manifest)."""
    workdir = tmp_path_factory.mktemp("integrity_run") / "run"
    train(config(data_dir), workdir, max_steps=4)
    return workdir


@pytest.fixture
def workdir(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def array_files(step_dir) -> list[str]:
    """The array data files of the step's `state` item (tensorstore's OCDBT `d/`), biggest
    first. (Some are not read on restore: orbax itself misses damage to those.)"""
    files = [
        os.path.join(root, name)
        for root, _, names in os.walk(os.path.join(step_dir, "state"))
        if os.path.basename(root) == "d"
        for name in names
    ]
    assert files, f"no array data files under {step_dir}/state"
    return sorted(files, key=os.path.getsize, reverse=True)


def largest_array_file(step_dir) -> str:
    return array_files(step_dir)[0]


def flip_bytes(path, n=3) -> None:
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        middle = len(data) // 2
        for i in range(middle, middle + n):
            data[i] ^= 0xFF
        f.seek(0)
        f.write(data)


def truncate(path) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def step_dir(workdir, step) -> str:
    return os.path.join(workdir, ckpt.CHECKPOINT_DIR, str(step))


@pytest.mark.slow(reason="its module fixture trains a tiny run")
def test_manifest_written_for_every_saved_step(run, data_dir):
    assert Checkpointer(run, config(data_dir).train).all_steps() == [2, 4]
    for step in (2, 4):
        assert os.path.exists(os.path.join(step_dir(run, step), ckpt.MANIFEST))
        assert ckpt.verify_step(step_dir(run, step)) is True


@pytest.mark.parametrize("damage", [flip_bytes, truncate])
@pytest.mark.slow(reason="trains and restores a run for each kind of damage")
def test_damaged_newest_step_falls_back(workdir, data_dir, caplog, damage):
    """Bytes flipped / a file truncated in step 4: the resume restores step 2, names the
    damaged step and file, and sets step 4 aside so the run can save it again."""
    bad = largest_array_file(step_dir(workdir, 4))
    damage(bad)
    cfg = config(data_dir)
    assert Checkpointer(workdir, cfg.train).last_good() == "2"
    with caplog.at_level(logging.WARNING):
        state = train(cfg, workdir, max_steps=2)
    assert int(state.step) == 2
    warned = "\n".join(r.getMessage() for r in caplog.records)
    assert "step 4" in warned and bad in warned, warned
    assert os.path.isdir(workdir / ckpt.DAMAGED_DIR / "4")
    assert Checkpointer(workdir, cfg.train).all_steps() == [2]
    state = train(cfg, workdir, max_steps=4)  # no loop: trains on and saves step 4 anew
    assert int(state.step) == 4
    assert ckpt.verify_step(step_dir(workdir, 4)) is True


def test_step_without_manifest_restores_unverified(workdir, data_dir, caplog):
    """Steps from before manifests existed still load, with a warning."""
    for step in (2, 4):
        os.remove(os.path.join(step_dir(workdir, step), ckpt.MANIFEST))
    cfg = config(data_dir)
    assert Checkpointer(workdir, cfg.train).last_good() == "4 (unverified)"
    with caplog.at_level(logging.WARNING):
        state = train(cfg, workdir, max_steps=4)
    assert int(state.step) == 4
    assert "restored unverified" in caplog.text


def test_all_steps_damaged_is_a_clear_error(workdir, data_dir):
    flip_bytes(largest_array_file(step_dir(workdir, 4)))
    truncate(largest_array_file(step_dir(workdir, 2)))
    with pytest.raises(ckpt.DamagedCheckpointError) as err:
        train(config(data_dir), workdir, max_steps=4)
    message = str(err.value)
    assert "no intact checkpoint" in message
    assert "step 4: " in message and "sha256 differs" in message, message
    assert "step 2: " in message and "truncated" in message, message


def test_orbax_failure_on_unverified_step_falls_back(workdir, data_dir, caplog):
    """A step without manifest that orbax cannot read (truncated array files) is skipped too."""
    os.remove(os.path.join(step_dir(workdir, 4), ckpt.MANIFEST))
    for path in array_files(step_dir(workdir, 4)):
        truncate(path)
    with caplog.at_level(logging.WARNING):
        state = train(config(data_dir), workdir, max_steps=2)
    assert int(state.step) == 2
    assert "orbax cannot restore" in caplog.text and "step 4" in caplog.text


@pytest.mark.slow(reason="trains to a poisoned step")
def test_nan_names_the_newest_verified_step(data_dir, cache_dir, tmp_path):
    cfg = config(data_dir)
    cfg.train.debug_nan_at_step = 3  # the 4th step
    with pytest.raises(NonFiniteError, match="last good checkpoint: 2 in"):
        train(cfg, tmp_path)
    assert ckpt.verify_step(step_dir(tmp_path, 2)) is True
