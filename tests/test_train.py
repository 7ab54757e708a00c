"""The trainer: a falling loss, exact resume, SIGTERM, NaN stop, samples, profile, bad-record
counts, shared local levels (CPU, 8 simulated devices; the jitted step alone: test_train_step).

Tiny models at 16 px, global batch 8. Compiles go through the session's persistent compilation
cache, and `train` calls with one config share one train step per worker (tests/conftest.py).
"""

import glob
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import trainer_setup
from PIL import Image
from trainer_setup import tiny_config

import nuwa_jax  # noqa: F401
from configs import common
from nuwa_jax import parallel, video_io
from nuwa_jax.data import captions, pipeline, schema
from nuwa_jax.models.text import make_tokenizer
from nuwa_jax.train import Checkpointer, NonFiniteError, train
from nuwa_jax.train import samples as samples_lib
from nuwa_jax.train import trainer as trainer_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return trainer_setup.render_data(tmp_path_factory.mktemp("train_data"))


def losses(workdir) -> list[float]:
    with open(os.path.join(workdir, trainer_lib.METRICS_FILE)) as f:
        return [json.loads(line)["loss"] for line in f]


@pytest.mark.slow(reason="trains a tiny MTD until its loss falls")
def test_mtd_loss_falls(data_dir, cache_dir, tmp_path):
    """The global MTD's denoising loss on the synthetic benchmark falls within 40 steps."""
    cfg = tiny_config(data_dir, "mtd")
    cfg.mtd.block_out_channels = (16, 32)
    cfg.train.num_steps = 40
    cfg.train.warmup_steps = 5
    train(cfg, tmp_path)
    loss = losses(tmp_path)
    assert len(loss) == 40
    context = json.loads((tmp_path / trainer_lib.TEXT_CONTEXT_FILE).read_text())
    assert context["cut_frames"] == 0 and context["max_length"] == cfg.text.max_length
    ratio = np.mean(loss[-20:]) / np.mean(loss[:20])
    assert ratio < 0.75, (ratio, loss)


@pytest.mark.slow(reason="trains 6 steps, and 3 + 3 with a resume, and compares the states")
def test_exact_resume(data_dir, cache_dir, tmp_path):
    """k steps + stop + N-k steps == N steps uninterrupted, bit for bit (params and EMA),
    with gradient accumulation (MultiSteps state) and the data position in the checkpoint."""
    cfg = tiny_config(data_dir)
    cfg.train.grad_accum_steps = 2
    cfg.train.checkpoint_every = 100
    full = train(cfg, tmp_path / "full", max_steps=6)
    first = train(cfg, tmp_path / "split", max_steps=3)
    assert int(first.step) == 3
    assert Checkpointer(tmp_path / "split", cfg.train).all_steps() == [3]
    resumed = train(cfg, tmp_path / "split", max_steps=6)
    assert int(resumed.step) == int(full.step) == 6
    for a, b in zip(
        jax.tree.leaves((full.params, full.ema)), jax.tree.leaves((resumed.params, resumed.ema))
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert losses(tmp_path / "full") == losses(tmp_path / "split")


@pytest.mark.slow(reason="trains to a poisoned step, then resumes from the last good one")
def test_nan_stops_and_keeps_last_good_checkpoint(data_dir, cache_dir, tmp_path):
    cfg = tiny_config(data_dir)
    cfg.train.checkpoint_every = 2
    cfg.train.debug_nan_at_step = 3  # the 4th step
    with pytest.raises(NonFiniteError, match="step 4"):
        train(cfg, tmp_path)
    ckpt = Checkpointer(tmp_path, cfg.train)
    assert ckpt.latest_step() == 2
    cfg.train.debug_nan_at_step = -1
    state = train(cfg, tmp_path, max_steps=3)  # resumes from the good checkpoint
    assert int(state.step) == 3
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))


def test_bad_config_is_refused(data_dir):
    cfg = tiny_config(data_dir)
    cfg.train.perceptual_weight = 0.1
    with pytest.raises(ValueError, match="perceptual_weight"):
        trainer_lib.check_config(cfg)
    cfg = tiny_config(data_dir, "mtd")
    cfg.train.level = 5
    with pytest.raises(ValueError, match="train.level=5"):
        trainer_lib.check_config(cfg)
    cfg = tiny_config(data_dir)
    cfg.data.synthetic_episodes = 100_001  # would reach the held-out episodes
    with pytest.raises(ValueError, match="synthetic_episodes=100001 would train on held-out"):
        trainer_lib.check_config(cfg)


def test_text_context_that_cuts_captions_is_refused_or_counted(data_dir, tmp_path):
    """An 'mtd' run refuses a text.max_length that cuts its store's captions before it
    builds anything; text.allow_truncation counts the cut captions and reports them."""
    counts, _ = captions.store_captions(data_dir)
    longest = max(len(t.encode()) for t in counts) + 2  # byte tokens: BOS, bytes, EOS
    cfg = tiny_config(data_dir, "mtd")
    cfg.text.max_length = 16
    with pytest.raises(captions.TextContextError) as err:
        train(cfg, tmp_path / "refused")
    for part in (data_dir, f"longest caption is {longest} tokens", f"text.max_length={longest}"):
        assert part in str(err.value), str(err.value)
    assert not os.path.exists(tmp_path / "refused" / "checkpoints")
    cfg.text.allow_truncation = True
    report = trainer_lib.check_text_context(cfg, make_tokenizer(cfg.text), tmp_path)
    cut = sum(n for t, n in counts.items() if len(t.encode()) + 2 > 16)
    assert report.cut_frames == cut > 0 and report.frames == 80
    written = json.loads((tmp_path / trainer_lib.TEXT_CONTEXT_FILE).read_text())
    assert written["cut_frames"] == cut and written["longest_tokens"] == longest
    whole = tiny_config(data_dir, "mtd")  # the preset's context holds every caption
    assert trainer_lib.check_text_context(whole, make_tokenizer(whole.text)).cut_frames == 0


@pytest.mark.slow(reason="a trainer subprocess is stopped by SIGTERM, then resumed")
def test_sigterm_saves_and_exits_zero_then_resumes(data_dir, cache_dir, tmp_path):
    workdir = tmp_path / "run"
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    args = [
        sys.executable,
        "-m",
        "nuwa_jax.train",
        "--config=configs/tiny.py",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        "--config.data.resolution=16",
        "--config.vae.block_out_channels=(8,8,8)",
        "--config.train.model=vae",
        "--config.train.num_steps=1000",
        "--config.train.warmup_steps=2",
        "--config.train.checkpoint_replica_parallel=False",
    ]
    proc = subprocess.Popen(args, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    metrics = workdir / trainer_lib.METRICS_FILE
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    step = Checkpointer(workdir, tiny_config(data_dir).train).latest_step()
    assert step is not None and step >= 2
    assert len(metrics.read_text().splitlines()) == step
    done = subprocess.run(
        args + [f"--max_steps={step + 1}"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert Checkpointer(workdir, tiny_config(data_dir).train).latest_step() == step + 1


@pytest.mark.slow(reason="trains a tiny local-level MTD with frozen text")
def test_local_level_mtd_with_frozen_text(data_dir, cache_dir, tmp_path, caplog):
    """Level 1 windows (bf16 compute): the given first/last frames are left out of the
    loss; a frozen text encoder is not among the trained params. The run logs its distinct
    windows, and that its store is not the benchmark the config would render."""
    cfg = trainer_setup.local_mtd_config(data_dir)  # in bf16: test_bf16_compute_trains' step
    with caplog.at_level(logging.INFO):
        state = train(cfg, tmp_path, max_steps=2)
    assert set(state.params) == {"mtd"}
    windows = [r.getMessage() for r in caplog.records if "training windows" in r.getMessage()]
    # 2 episodes of 40 frames, level 1 windows span 4 frames: 37 starts each; level 0 untrained.
    assert windows[1:] == ["training windows: level 1 (stride 1, span 4 frames): 74 distinct "
                           "windows, 37 per episode"]  # fmt: skip
    assert any("synthetic_frames: store 40, config 226" in r.getMessage() for r in caplog.records)
    with open(os.path.join(tmp_path, trainer_lib.METRICS_FILE)) as f:
        records = [json.loads(line) for line in f]
    L = cfg.hierarchy.frames_per_call
    assert [r["generated_fraction"] for r in records] == [(L - 2) / L] * 2
    assert all(np.isfinite(r["loss"]) for r in records)


def corrupt_records(src: str, dst: str, records) -> None:
    """A copy of the data set `src` in `dst` with `records` of episode 0's first shard
    failing their CRC check."""
    shutil.copytree(src, dst)
    path = os.path.join(dst, schema.load_metadata(dst).episodes[0].shards[0].file)
    offsets = schema.scan_offsets(path)
    with open(path, "r+b") as f:
        for r in records:
            f.seek(offsets[r] + schema.HEADER_BYTES + 20)
            byte = f.read(1)
            f.seek(offsets[r] + schema.HEADER_BYTES + 20)
            f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.slow(reason="trains with samples, a profile and corrupt records")
def test_samples_profile_and_bad_records(data_dir, cache_dir, tmp_path):
    """sample_every: filmstrip PNGs (the first batch's first clip above its reconstruction)
    at steps 2 and 4, also logged as images; profile_steps: a trace under workdir; the
    logged bad_records: the pipeline's own count of skipped windows per log interval."""
    root = str(tmp_path / "bad")
    corrupt_records(data_dir, root, (3, 13, 23, 33))
    cfg = tiny_config(root)
    cfg.data.skip_bad = True
    cfg.train.log_every = 2
    cfg.train.checkpoint_every = 100
    cfg.train.sample_every = 2
    cfg.train.profile_steps = 1
    cfg.train.profile_first_step = 1
    run = tmp_path / "run"
    train(cfg, run, max_steps=4)

    # What the pipeline yields for these 4 steps (it is deterministic).
    it = pipeline.make_iterator(cfg, make_tokenizer(cfg.text), levels=None)
    batches = [next(it) for _ in range(4)]
    expected = [sum(int(b["bad_records"].sum()) for b in batches[i : i + 2]) for i in (0, 2)]
    with open(run / trainer_lib.METRICS_FILE) as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records] == [2, 4]
    assert [r["bad_records"] for r in records] == expected
    assert sum(expected) > 0
    # ... and which records they were (the pipeline reads ahead: at least as many).
    with open(run / pipeline.SKIPPED_RECORDS_FILE) as f:
        skipped = [json.loads(line) for line in f]
    assert len(skipped) >= sum(expected)
    shard = schema.load_metadata(root).episodes[0].shards[0].file
    assert {(os.path.basename(x["file"]), x["record"]) for x in skipped} <= {
        (shard, r) for r in (3, 13, 23, 33)
    }

    L, s = cfg.hierarchy.frames_per_call, cfg.data.resolution
    assert sorted(os.listdir(run / samples_lib.SAMPLES_DIR)) == [
        "00000002_filmstrip.png",
        "00000004_filmstrip.png",
    ]
    png = np.asarray(Image.open(run / samples_lib.SAMPLES_DIR / "00000004_filmstrip.png"))
    assert png.shape == (2 * (s + 2) + 2, L * (s + 2) + 2, 3)
    held = video_io.to_uint8(batches[0]["video"][0])
    for i in range(L):
        np.testing.assert_array_equal(
            png[2 : 2 + s, 2 + i * (s + 2) : 2 + i * (s + 2) + s], held[i]
        )
    recon = png[s + 4 : 2 * s + 4, 2 : 2 + s].astype(int)
    assert np.abs(recon - held[0].astype(int)).mean() > 1  # a (poor) reconstruction, not a copy

    from tensorboard.backend.event_processing import event_accumulator

    events = event_accumulator.EventAccumulator(str(run), size_guidance={"tensors": 0})
    events.Reload()
    assert "samples/filmstrip" in events.Tags()["tensors"]
    assert [e.step for e in events.Tensors("samples/filmstrip")] == [2, 4]
    assert glob.glob(str(run / "plugins" / "profile" / "*" / "*.xplane.pb"))


class _Images:
    """A metric writer that keeps the images it is given."""

    def __init__(self):
        self.images = {}

    def write_images(self, step, images):
        self.images[step] = images


@pytest.mark.slow(reason="trains a tiny MTD and samples with its compiled sampler")
def test_mtd_sampler_compiles_once_and_samples_the_held_clip(data_dir, cache_dir, tmp_path):
    """A shared local MTD (level embedding): the sampler (guided DDIM through the
    generator's sample_level, VAE decode) is traced once for all calls, is deterministic
    for fixed weights, follows the weights, and writes what it logs."""
    cfg = tiny_config(data_dir, "mtd")
    cfg.mtd.block_out_channels = (16, 32)
    cfg.hierarchy.share_local_models = True
    cfg.train.level = 1
    cfg.train.sample_steps = 2
    mesh, rules = parallel.make_mesh(cfg.mesh), parallel.logical_rules(cfg)
    tokenizer = make_tokenizer(cfg.text)
    step, state = trainer_lib.make_train_step(cfg, mesh, rules, tokenizer)
    assert step.level_id == 0
    batch = trainer_lib.synthetic_batch(cfg, mesh, rules, tokenizer)
    L = cfg.hierarchy.frames_per_call
    with jax.set_mesh(mesh):
        sampler = samples_lib.Sampler(cfg, step, batch, tokenizer, mesh)
        first = sampler.images(state.ema)
        again = sampler.images(state.ema)
        other = sampler.images(jax.tree.map(lambda x: x * 1.1, state.ema))
        writer = _Images()
        paths = sampler.write(7, state.ema, writer, str(tmp_path))
    assert sampler.traces == 1
    film, columns = first["filmstrip"]
    assert film.shape == (2 * L, 16, 16, 3) and columns == L
    np.testing.assert_array_equal(film[:L], np.asarray(batch["video"])[0])
    assert np.abs(film[L:]).max() <= 1.0
    np.testing.assert_array_equal(first["keyframes"][0], film[L:])
    np.testing.assert_array_equal(again["filmstrip"][0], film)  # fixed noise key
    assert not np.allclose(other["filmstrip"][0][L:], film[L:])
    assert sorted(writer.images[7]) == ["samples/filmstrip", "samples/keyframes"]
    for name in ("filmstrip", "keyframes"):
        png = np.asarray(Image.open(paths[name]))
        np.testing.assert_array_equal(png, writer.images[7][f"samples/{name}"][0])
    assert np.asarray(Image.open(paths["keyframes"])).shape == (2 * 18 + 2, 2 * 18 + 2, 3)


@pytest.mark.parametrize(
    "share, level, want", [(True, 0, [0]), (True, 2, [1, 2]), (True, 1, [1, 2]), (False, 2, [2])]
)
def test_shared_local_mtd_trains_on_every_local_level(share, level, want):
    """hierarchy.share_local_models: the local run reads the windows of every local level,
    and its batches carry each window's level (the level embedding's id is level - 1)."""
    cfg = common.base("tiny")
    cfg.hierarchy.depth = 3
    cfg.hierarchy.share_local_models = share
    cfg.train.level = level
    _, levels, _ = trainer_lib.data_windows(cfg)
    assert levels == want
    assert trainer_lib.shares_local_model(cfg) == (share and level > 0)
    assert "level" in trainer_lib.BATCH_KEYS
