"""One run per workdir (train.lock), refused config changes on resume, and metrics.jsonl
without repeated steps after a crash and resume."""

import json
import logging
import os
import subprocess
import sys

import pytest
import trainer_setup
from trainer_setup import tiny_config

from nuwa_jax import workdir_lock
from nuwa_jax.hierarchy import bundle
from nuwa_jax.train import Checkpointer, train
from nuwa_jax.train import trainer as trainer_lib
from nuwa_jax.workdir_lock import LOCK_FILE, WorkdirLock, WorkdirLockedError

pytestmark = pytest.mark.faults  # the reliability issue's fault-injection cases


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return trainer_setup.render_data(tmp_path_factory.mktemp("lock_data"))


def steps(workdir) -> list[int]:
    with open(os.path.join(workdir, trainer_lib.METRICS_FILE)) as f:
        return [json.loads(line)["step"] for line in f]


# -----------------------------------------------------------------------------------------
# The lock.
# -----------------------------------------------------------------------------------------
def test_held_lock_refuses_a_second_holder_naming_the_first(tmp_path):
    first = WorkdirLock(tmp_path)
    first.acquire()
    path = str(tmp_path / LOCK_FILE)
    assert json.loads(open(path).read())["pid"] == os.getpid()
    with pytest.raises(WorkdirLockedError) as err:
        WorkdirLock(tmp_path).acquire()
    message = str(err.value)
    for part in (f"pid {os.getpid()}", first.holder["host"], first.holder["started"], path):
        assert part in message, message
    first.release()
    assert not os.path.exists(path)
    with WorkdirLock(tmp_path) as again:  # free once released
        assert again.held


def test_lock_held_by_another_live_process_is_refused(tmp_path):
    """flock across processes: a live holder in another process refuses this one."""
    script = (
        "import sys; from nuwa_jax.workdir_lock import WorkdirLock; "
        f"WorkdirLock({str(tmp_path)!r}).acquire(); print('held', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkdirLockedError, match=f"pid {holder.pid} on "):
            WorkdirLock(tmp_path).acquire()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    with WorkdirLock(tmp_path):  # released when the holder exited
        pass


def test_dead_holders_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    """A lock file whose holder died (no flock on it) is taken over, naming the old holder."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    old = dict(pid=int(dead.stdout), host="gone-host", started="2026-01-01T00:00:00+00:00")
    (tmp_path / LOCK_FILE).write_text(json.dumps(old))
    with caplog.at_level(logging.WARNING), WorkdirLock(tmp_path) as lock:
        assert lock.held and lock.holder["pid"] == os.getpid()
        on_disk = json.loads((tmp_path / LOCK_FILE).read_text())
        assert on_disk["pid"] == os.getpid()
    warned = [r.getMessage() for r in caplog.records if "taking over" in r.getMessage()]
    assert warned and f"pid {old['pid']} on gone-host" in warned[0], caplog.text


def test_hold_releases_on_exceptions_and_only_process_0_holds(tmp_path):
    with pytest.raises(KeyError):
        with workdir_lock.hold(tmp_path):
            assert (tmp_path / LOCK_FILE).exists()
            raise KeyError("boom")
    assert not (tmp_path / LOCK_FILE).exists()
    with workdir_lock.hold(tmp_path), workdir_lock.hold(tmp_path, enabled=False) as other:
        assert other is None  # another process of the same run: no contention


# -----------------------------------------------------------------------------------------
# metrics.jsonl after a crash.
# -----------------------------------------------------------------------------------------
def test_truncate_metrics_drops_lines_past_the_step(tmp_path):
    path = str(tmp_path / trainer_lib.METRICS_FILE)
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in (1, 2, 3, 4)]
    with open(path, "w") as f:
        f.write("\n".join(lines) + '\n{"step": 5, "lo')  # the crash cut the last line
    assert trainer_lib.truncate_metrics(path, 2) == 3
    assert [json.loads(x)["step"] for x in open(path)] == [1, 2]
    assert trainer_lib.truncate_metrics(path, 2) == 0
    assert trainer_lib.truncate_metrics(str(tmp_path / "none.jsonl"), 0) == 0


# -----------------------------------------------------------------------------------------
# The trainer.
# -----------------------------------------------------------------------------------------
@pytest.mark.slow(reason="trains one run four times over")
def test_trainer_holds_the_lock_refuses_config_changes_and_keeps_one_line_per_step(
    data_dir, cache_dir, tmp_path
):
    cfg = tiny_config(data_dir)
    cfg.train.checkpoint_every = 2
    run = tmp_path / "run"
    with WorkdirLock(run):  # a live trainer holds the workdir
        with pytest.raises(WorkdirLockedError, match=f"pid {os.getpid()}"):
            train(cfg, run, max_steps=2)
    assert not (run / "checkpoints").exists()

    train(cfg, run, max_steps=3)  # checkpoints at 2 and 3
    assert not (run / LOCK_FILE).exists()  # released at the end
    # A crash after step 3's checkpoint: steps 4 and 5 logged, never saved.
    with open(run / trainer_lib.METRICS_FILE, "a") as f:
        for s in (4, 5):
            f.write(json.dumps({"step": s, "loss": 0.0}) + "\n")

    changed = tiny_config(data_dir)
    changed.vae.block_out_channels = (8, 8, 16)
    changed.train.num_steps = 80  # never matters
    with pytest.raises(bundle.ConfigMismatchError) as err:
        train(changed, run, max_steps=4)
    for part in (str(run), "step 3", "vae.block_out_channels: config [8, 8, 16], saved [8, 8, 8]",
                 "train.allow_config_change"):  # fmt: skip
        assert part in str(err.value), str(err.value)
    assert "num_steps" not in str(err.value)
    assert not (run / LOCK_FILE).exists()  # released on the error

    cfg.train.log_every = 5  # frequencies may change
    state = train(cfg, run, max_steps=5)
    assert int(state.step) == 5
    assert steps(run) == [1, 2, 3, 5]  # 4 and 5 of the crashed run dropped, 5 logged again
    assert Checkpointer(run, cfg.train).latest_step() == 5


def test_resume_fields_and_the_allow_flag(data_dir, caplog):
    """Which fields matter per model, and train.allow_config_change, without training."""
    cfg = tiny_config(data_dir, "mtd")
    saved = bundle.config_to_dict(cfg)
    fields = trainer_lib.resume_fields(cfg, saved)
    want = ("train.model", "train.level", "data.resolution", "diffusion.prediction")
    want += ("mtd.block_out_channels", "hierarchy.frames_per_call", "vae.latent_channels")
    for f in want:
        assert f in fields, f
    for f in ("train.num_steps", "train.log_every", "data.data_dir", "data.worker_count"):
        assert f not in fields, f
    vae_fields = trainer_lib.resume_fields(tiny_config(data_dir), saved)
    assert "vae.block_out_channels" in vae_fields and "mtd.block_out_channels" not in vae_fields

    trainer_lib.check_resume_config(cfg, saved, 7, "run")  # the same config resumes
    changed = tiny_config(data_dir, "mtd")
    changed.train.level = 1
    changed.diffusion.prediction = "epsilon" if cfg.diffusion.prediction == "v" else "v"
    with pytest.raises(
        bundle.ConfigMismatchError,
        match="(?s)run: resuming step 7 .*train.level: config 1, saved 0",
    ):
        trainer_lib.check_resume_config(changed, saved, 7, "run")
    changed.train.allow_config_change = True
    with caplog.at_level(logging.WARNING):
        trainer_lib.check_resume_config(changed, saved, 7, "run")
    assert "diffusion.prediction" in caplog.text and "train.level" in caplog.text
