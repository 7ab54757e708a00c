"""nuwa_jax.sweep: hyper semantics, point names, checks, results, pinning, the TPU VM launcher
(fake gcloud) and the tiny sweep end to end (configs/sweeps/tiny.py, CPU)."""

import csv
import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from nuwa_jax.sweep import hyper, launchers, results
from nuwa_jax.sweep import points as points_lib
from nuwa_jax.train import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "sweeps", "tiny.py")
h = hyper.Hyper()


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=REPO)


def _sweep(*args, **kw) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "nuwa_jax.sweep", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=kw.pop("env", _env()), **kw)


def _write_config(path, hyper_body: str) -> str:
    """A sweep config on configs/sweeps/tiny.py's get_config with its own get_hyper."""
    path.write_text(
        "from nuwa_jax import cli\n\n"
        f"def get_config(arg=None):\n    return cli.load_config({TINY!r})\n\n"
        f"def get_hyper(h):\n    return {hyper_body}\n"
    )
    return str(path)


# ----------------------------------------------------------------------------------------
# hyper
# ----------------------------------------------------------------------------------------
def test_product_zipit_chainit_fixed():
    a = h.sweep("config.a", [1, 2])
    b = h.sweep("config.b", ["x", "y"])
    assert h.product([a, b]) == [
        {"config.a": 1, "config.b": "x"},
        {"config.a": 1, "config.b": "y"},
        {"config.a": 2, "config.b": "x"},
        {"config.a": 2, "config.b": "y"},
    ]
    assert h.zipit([a, b]) == [{"config.a": 1, "config.b": "x"}, {"config.a": 2, "config.b": "y"}]
    assert h.chainit([a, b]) == a + b
    fixed = h.product([h.fixed("config.c", 0.5), a])
    assert fixed == [{"config.c": 0.5, "config.a": 1}, {"config.c": 0.5, "config.a": 2}]
    assert h.zipit([h.fixed("config.c", 3, length=2), a])[1] == {"config.c": 3, "config.a": 2}


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: h.sweep("train.lr", [1]), "must be 'config."),
        (lambda: h.sweep("config.a", []), "no values"),
        (lambda: h.zipit([h.sweep("config.a", [1, 2]), h.sweep("config.b", [1])]), "lengths"),
        (lambda: h.product([h.fixed("config.a", 1), h.fixed("config.a", 2)]), "given twice"),
        (lambda: h.product([h.sweep("config.a", [1]), "config.b"]), "expected a sweep"),
    ],
)
def test_bad_sweeps(make, words):
    with pytest.raises(hyper.SweepError, match=words):
        make()


def test_point_names():
    pts = h.product([
        h.fixed("config.data.data_dir", "/d"),
        h.sweep("config.train.learning_rate", [1e-3, 3e-4]),
        h.sweep("config.diffusion.prediction", ["eps", "v"]),
    ])  # fmt: skip
    assert hyper.point_names(pts) == [
        "learning_rate=0.001,prediction=eps",
        "learning_rate=0.001,prediction=v",
        "learning_rate=0.0003,prediction=eps",
        "learning_rate=0.0003,prediction=v",
    ]
    # Two keys ending alike are told apart by more of their path; tuples and odd
    # characters become file-name-safe.
    pts = h.zipit([h.sweep("config.vae.dropout", [0.0, 0.1]),
                   h.sweep("config.mtd.dropout", [(1, 2), "a/b c"])])  # fmt: skip
    assert hyper.point_names(pts) == ["vae.dropout=0,mtd.dropout=1-2", "vae.dropout=0.1,"
                                      "mtd.dropout=a-b-c"]  # fmt: skip
    assert hyper.point_names([{"config.a": 1}]) == ["a=1"]
    with pytest.raises(hyper.SweepError, match="same point"):
        hyper.point_names(h.sweep("config.a", [1, 1]))


# ----------------------------------------------------------------------------------------
# points: overrides, checks, state
# ----------------------------------------------------------------------------------------
def test_points_of_the_tiny_sweep(tmp_path):
    pts = points_lib.make_points(TINY, str(tmp_path))
    assert [p.name for p in pts] == ["learning_rate=0.001", "learning_rate=0.003"]
    assert pts[0].workdir == str(tmp_path / "learning_rate=0.001")
    assert pts[0].overrides == [
        f"--config.data.data_dir={tmp_path}/data",
        "--config.train.learning_rate=0.001",
    ]
    configs = points_lib.check(TINY, pts)
    assert [c.train.learning_rate for c in configs] == [1e-3, 3e-3]
    assert configs[1].data.data_dir == f"{tmp_path}/data"
    remote = points_lib.make_points(TINY, str(tmp_path), run_root="/mnt/sweeps/x/")
    assert remote[0].values["config.data.data_dir"] == "/mnt/sweeps/x/data"
    assert remote[0].workdir == pts[0].workdir


@pytest.mark.parametrize(
    "body, words",
    [
        ("h.sweep('config.train.learnin_rate', [1e-3])",
         "point learnin_rate=0.001: --config.train.learnin_rate: unknown config key "
         "'learnin_rate' under train"),
        ("h.sweep('config.train.learning_rate', ['fast'])", "learning_rate=fast.*'fast'"),
        ("h.sweep('config.train.num_steps', [10, 2.5])", "num_steps=2.5.*'2.5'"),
        ("h.sweep('config.train.model', ['vae', 'gan'])", "point model=gan: train.model='gan'"),
        ("h.sweep('config.data.data_dir', ['{nowhere}'])", "bad template"),
    ],
)  # fmt: skip
def test_bad_points_are_named(tmp_path, body, words):
    cfg = _write_config(tmp_path / "sweep.py", body)
    with pytest.raises(hyper.SweepError, match=words):
        points_lib.check(cfg, points_lib.make_points(cfg, str(tmp_path / "root")))


def test_state_and_select(tmp_path):
    p, q = points_lib.make_points(TINY, str(tmp_path))
    assert points_lib.state(p) == points_lib.NEW
    points_lib.record(p, TINY)
    assert points_lib.state(p) == points_lib.PARTIAL
    (tmp_path / p.name / trainer.FINISHED_FILE).write_text("{}")
    assert points_lib.state(p) == points_lib.FINISHED
    changed = points_lib.Point(p.name, p.workdir, {**p.values, "config.train.num_steps": 30})
    assert points_lib.state(changed) == points_lib.CHANGED
    assert points_lib.select([p, q], [q.name]) == [q]
    with pytest.raises(hyper.SweepError, match="no point named nope"):
        points_lib.select([p, q], ["nope"])


def test_dry_run_and_errors_from_the_cli(tmp_path):
    out = _sweep(f"--config={TINY}", f"--workdir={tmp_path}", "--dry_run")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        f"learning_rate=0.001  [new]  --config.data.data_dir={tmp_path}/data "
        "--config.train.learning_rate=0.001",
        f"learning_rate=0.003  [new]  --config.data.data_dir={tmp_path}/data "
        "--config.train.learning_rate=0.003",
    ]
    assert not os.listdir(tmp_path)  # a dry run writes nothing
    bad = _write_config(tmp_path / "bad.py", "h.sweep('config.train.num_steps', [1.5])")
    out = _sweep(f"--config={bad}", f"--workdir={tmp_path}/r", "--dry_run")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: point num_steps=1.5: ")


# ----------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------
def test_results_table(tmp_path):
    pts = points_lib.make_points(TINY, str(tmp_path))
    for p, losses in zip(pts, [[0.9, 0.5, 0.4], [0.8, 0.2, 0.6]], strict=True):
        os.makedirs(p.workdir)
        with open(os.path.join(p.workdir, trainer.METRICS_FILE), "w") as f:
            for step, loss in enumerate(losses, 1):
                f.write(json.dumps({"step": step, "loss": loss}) + "\n")
            f.write('{"step": 4, "lo')  # a line cut short by a crash
    rows = results.gather(pts, "loss", "min", last_n=1)
    assert [(r["loss"], r["min_loss"], r["best"], r["step"]) for r in rows] == [
        (0.4, 0.4, True, 3),
        (0.6, 0.2, False, 3),
    ]
    rows = results.gather(pts, "loss", "min", last_n=2)  # means 0.45, 0.4
    assert [r["best"] for r in rows] == [False, True]
    md = results.write(str(tmp_path), rows, "loss", "min", 2)
    assert "| **learning_rate=0.003** * | partial | 3 | 0.4 | 0.2 |" in md
    assert (tmp_path / "results.md").read_text() == md
    with open(tmp_path / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["best"] for r in table] == ["False", "True"]
    assert table[0]["train.learning_rate"] == "0.001"
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["metric"] == "loss" and data["rows"][1]["best"] is True
    with pytest.raises(ValueError, match="mode"):
        results.gather(pts, "loss", "median")


# ----------------------------------------------------------------------------------------
# local pinning
# ----------------------------------------------------------------------------------------
def test_local_slots(monkeypatch):
    slots = launchers.local_slots(2, "cpu", cpus=[0, 1, 2, 3, 5])
    assert [s.cpus for s in slots] == [(0, 1), (2, 3)] and slots[0].env == {}
    with pytest.raises(ValueError, match="more than the 2 CPU cores"):
        launchers.local_slots(3, "cpu", cpus=[0, 1])
    monkeypatch.setattr(launchers, "gpus", lambda: ["0", "1", "2", "3"])
    slots = launchers.local_slots(2, "gpu", cpus=range(8))
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0,1", "2,3"]
    monkeypatch.setattr(launchers, "tpu_chips", lambda: ["0", "1", "2", "3"])
    slots = launchers.local_slots(4, "tpu", cpus=range(8))
    assert slots[3].env["TPU_VISIBLE_CHIPS"] == "3"
    assert slots[3].env["TPU_CHIPS_PER_PROCESS_BOUNDS"] == "1,1,1"
    assert len({s.env["TPU_PROCESS_PORT"] for s in slots}) == 4
    assert launchers.local_slots(2, "tpu", cpus=range(8))[1].env["TPU_VISIBLE_CHIPS"] == "2,3"
    assert launchers.local_slots(1, "tpu", cpus=range(8))[0].env == {}  # all chips
    with pytest.raises(ValueError, match="1 or 2 chips"):
        monkeypatch.setattr(launchers, "tpu_chips", lambda: [str(i) for i in range(8)])
        launchers.local_slots(2, "tpu", cpus=range(8))
    assert launchers.detect_platform({"JAX_PLATFORMS": "cuda"}) == "gpu"


def test_pinned_child_runs_on_its_cpus():
    cpu = sorted(os.sched_getaffinity(0))[-1]
    argv = launchers.pinned(
        [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"], [cpu]
    )
    assert subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip() == str(
        [cpu]
    )


# ----------------------------------------------------------------------------------------
# TPU VMs with a fake gcloud
# ----------------------------------------------------------------------------------------
FAKE_GCLOUD = """#!/usr/bin/env bash
# Records its argv (one JSON list per line); plays 2 workers; fetch answers with a tar of
# $FAKE_FETCH (a point's run records).
python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@" >> "$GCLOUD_LOG"
case "$*" in
  *" describe "*) echo "10.0.0.1;10.0.0.2" ;;
  *"tar -cf"*) tar -C "$FAKE_FETCH" -cf - . ;;
  *"--worker="[0-9]*) echo "output of $*" ;;
esac
"""


@pytest.fixture
def fake_gcloud(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "gcloud"
    script.write_text(FAKE_GCLOUD)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "gcloud.jsonl"
    fetch = tmp_path / "fetch"
    fetch.mkdir()
    env = dict(_env(), PATH=f"{bin_dir}:{os.environ['PATH']}", GCLOUD_LOG=str(log),
               FAKE_FETCH=str(fetch))  # fmt: skip
    env.pop("TPU_WORKERS", None)

    def calls():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return env, calls, fetch


def test_tpu_vm_script(tmp_path, fake_gcloud):
    env, calls, _ = fake_gcloud
    script = os.path.join(REPO, "launch", "tpu_vm.sh")
    subprocess.run([script, "setup", "vm", "us-z"], env=env, check=True, capture_output=True)
    scp, ssh = calls()
    assert scp[:3] == ["compute", "tpus", "tpu-vm"] and scp[3] == "scp"
    assert ssh[:8] == ["compute", "tpus", "tpu-vm", "ssh", "vm", "--zone", "us-z", "--worker=all"]
    setup = ssh[-1]
    assert "uv venv --seed" in setup and "--python '>=3.11'" in setup
    assert "sys.version_info >= (3, 11)" in setup and "jax[tpu]==0.10.2" in setup
    logdir = tmp_path / "logs"
    out = subprocess.run([script, "run", "vm", "us-z", "--logdir", str(logdir), "--", "-m",
                          "nuwa_jax.train", "--workdir=/w x"], env=env, capture_output=True,
                         text=True, check=True)  # fmt: skip
    runs = sorted((c for c in calls() if c[3] == "ssh" and "--worker=all" not in c),
                  key=lambda c: c[7])  # the workers' ssh calls run at once  # fmt: skip
    assert [c[7] for c in runs] == ["--worker=0", "--worker=1"]
    assert runs[0][-1].endswith(".venv/bin/python -m nuwa_jax.train --workdir=/w\\ x ")
    assert sorted(os.listdir(logdir)) == ["worker-0.log", "worker-1.log"]
    assert "--worker=1" in (logdir / "worker-1.log").read_text()
    assert "--worker=0" in out.stdout  # worker 0 is also shown
    # The run's remote shell records its pid (then execs python): `stop` signals just it.
    assert "echo $$ > ~/nuwa-jax/.run.pid" in runs[0][-1] and "exec .venv/bin/python" in runs[0][-1]
    subprocess.run([script, "stop", "vm", "us-z"], env=env, check=True, capture_output=True)
    stop = calls()[-1]
    assert stop[7] == "--worker=all" and "kill -TERM $(cat ~/nuwa-jax/.run.pid)" in stop[-1]


@pytest.mark.slow(reason="drives the sweep's TPU VM launcher against a fake gcloud")
def test_sweep_on_tpu_vms(tmp_path, fake_gcloud):
    env, calls, fetch = fake_gcloud
    (fetch / trainer.METRICS_FILE).write_text(json.dumps({"step": 20, "loss": 0.25}) + "\n")
    (fetch / trainer.FINISHED_FILE).write_text("{}\n")
    root = tmp_path / "root"
    out = _sweep(f"--config={TINY}", f"--workdir={root}", "--launcher=tpu_vm",
                 "--tpu_names=vm-a", "--zone=z1", "--remote_root=/mnt/sweep", env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    recorded = calls()
    assert recorded[0][3] == "scp" and "uv venv" in recorded[1][-1]  # setup first
    trains = sorted(c[-1] for c in recorded if "nuwa_jax.train" in c[-1])
    assert len(trains) == 4  # 2 points x 2 workers
    assert f"--config={TINY}" in trains[0]
    assert "--workdir=/mnt/sweep/learning_rate=0.001" in trains[0]
    assert "--config.data.data_dir=/mnt/sweep/data" in trains[0]
    assert "--config.train.learning_rate=0.003" in trains[2]
    for name in ("learning_rate=0.001", "learning_rate=0.003"):
        assert sorted(os.listdir(root / name / "logs")) == ["worker-0.log", "worker-1.log"]
        assert (root / name / trainer.FINISHED_FILE).exists()
    assert "| **learning_rate=0.001** * | finished | 20 | 0.25 |" in out.stdout
    # A rerun skips the finished points: nothing but the table.
    n = len(calls())
    out = _sweep(f"--config={TINY}", f"--workdir={root}", "--launcher=tpu_vm",
                 "--tpu_names=vm-a", "--zone=z1", "--remote_root=/mnt/sweep", env=env)  # fmt: skip
    assert out.returncode == 0 and len(calls()) == n


# ----------------------------------------------------------------------------------------
# The tiny sweep end to end: stopped mid-run, resumed, then skipped.
# ----------------------------------------------------------------------------------------
@pytest.mark.slow(reason="two CPU trainers compile and run 20 steps, twice")
def test_tiny_sweep_end_to_end(tmp_path, cache_dir):
    del cache_dir  # the trainers share the session's compilation cache (environment)
    root = tmp_path / "sweep"
    names = ["learning_rate=0.001", "learning_rate=0.003"]
    cmd = [sys.executable, "-m", "nuwa_jax.sweep", f"--config={TINY}", f"--workdir={root}",
           "--parallel=2"]  # fmt: skip
    log = open(tmp_path / "sweep.log", "w")
    proc = subprocess.Popen(cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    # SIGTERM to the sweep once a trainer logs its first step: every trainer checkpoints
    # at its next step boundary and exits; the sweep exits 128 + 15.
    metrics = [root / n / trainer.METRICS_FILE for n in names]
    deadline = time.time() + 240
    while not any(m.exists() and m.stat().st_size for m in metrics):
        assert proc.poll() is None and time.time() < deadline, (tmp_path / "sweep.log").read_text()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    stopped = [n for n in names if not (root / n / trainer.FINISHED_FILE).exists()]
    assert stopped, "a point finished before the SIGTERM reached it"
    for n in stopped:
        assert (root / n / "checkpoints").is_dir()
        assert (
            points_lib.state(points_lib.make_points(TINY, str(root))[names.index(n)]) == "partial"
        )
    # The rerun resumes the stopped points from their checkpoints and finishes them.
    out = _sweep(f"--config={TINY}", f"--workdir={root}", "--parallel=2")
    assert out.returncode == 0, out.stderr[-3000:]
    for n in names:
        assert json.loads((root / n / trainer.FINISHED_FILE).read_text())["step"] == 20
        steps = [json.loads(line)["step"] for line in open(root / n / trainer.METRICS_FILE)]
        assert steps == list(range(1, 21))
        assert any(f.startswith("events.out.tfevents") for f in os.listdir(root / n))
    for n in stopped:
        assert "resumed from step" in (root / n / points_lib.LOG_FILE).read_text()
    rows = json.loads((root / "results.json").read_text())["rows"]
    assert [r["name"] for r in rows] == names and sum(r["best"] for r in rows) == 1
    assert all(r["state"] == "finished" and r["step"] == 20 for r in rows)
    # A second rerun skips both: nothing is started.
    started = time.time()
    out = _sweep(f"--config={TINY}", f"--workdir={root}", "--parallel=2")
    assert out.returncode == 0 and "started" not in out.stderr
    assert out.stderr.count("finished already, skipped") == 2
    assert time.time() - started < 60


@pytest.mark.parametrize(
    "spec, n", [("configs/sweeps/demo.py:runs/demo", 6), ("configs/sweeps/flintstones.py", 6)]
)
def test_shipped_sweeps_check(tmp_path, spec, n):
    """The demo-recipe and paper-scale sweeps: every point parses and passes the trainer's
    config checks (epsilon points are zipped with zero_terminal_snr=False)."""
    pts = points_lib.make_points(os.path.join(REPO, spec), str(tmp_path))
    assert len(pts) == n
    configs = points_lib.check(os.path.join(REPO, spec), pts)
    assert {(c.diffusion.prediction, c.diffusion.zero_terminal_snr) for c in configs} >= {
        ("v", True)
    }
