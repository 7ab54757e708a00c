"""Latent stores (nuwa_jax.data.latents): T-KLVAE posterior moments precomputed into
TFRecords, read by the pipeline and trained from (CPU, 8 simulated devices, 16 px)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import trainer_setup
from flax import nnx

from configs import common
from nuwa_jax import parallel
from nuwa_jax.data import latents, pipeline, schema, synthetic
from nuwa_jax.models.text import make_tokenizer
from nuwa_jax.train import losses
from nuwa_jax.train import trainer as trainer_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMES = 10  # per episode: clips [0, 4), [4, 8) and [6, 10) keeping 8, 9 at L = 4


def tiny_config(data_dir: str = "", latents_dir: str = ""):
    cfg = common.base("tiny")  # L = 4, depth 2: a global window is 10 frames at stride 3
    cfg.data.data_dir = data_dir
    cfg.data.latents_dir = latents_dir
    cfg.data.resolution = 16
    cfg.vae.block_out_channels = (8, 8, 8)  # f4: 4 x 4 x 4 latents
    cfg.train.checkpoint_replica_parallel = False
    return cfg


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent_src")
    synthetic.write_benchmark(root / "frames", episodes=2, frames=FRAMES, resolution=16)
    return str(root / "frames")


@pytest.fixture(scope="module")
def encoder(frames_dir):
    cfg = tiny_config(frames_dir)
    mesh, rules = parallel.make_mesh(cfg.mesh), parallel.logical_rules(cfg)
    vae, info = latents.load_vae(cfg, mesh, rules, random_weights=True)
    # At initialisation a T-KLVAE encodes frame by frame (identity temporal convs, zero
    # temporal attention): perturb every weight so a frame's latent depends on its clip.
    leaves, tree = jax.tree.flatten(nnx.state(vae, nnx.Param))
    rng = np.random.default_rng(1)
    noisy = [
        jax.device_put(np.asarray(x) + 0.05 * rng.standard_normal(x.shape, np.float32), x.sharding)
        for x in leaves
    ]
    nnx.update(vae, jax.tree.unflatten(tree, noisy))
    return cfg, mesh, rules, vae, info


@pytest.fixture(scope="module")
def store_dir(encoder, tmp_path_factory):
    cfg, mesh, rules, vae, info = encoder
    out = str(tmp_path_factory.mktemp("latent_store") / "latents")
    latents.write_latent_store(cfg, out, vae, info, mesh=mesh, rules=rules)
    return out


@nnx.jit
def encode(vae, video):
    posterior = vae.encode(video)
    return posterior.mean, posterior.logvar


@nnx.jit
def encode_to_latents(vae, video, key):
    return vae.encode_to_latents(video, rng=key)


def clip_video(frames_dir: str, episode: str, start: int, stop: int) -> np.ndarray:
    with schema.FrameStore(frames_dir) as src:
        images = src.read_frames(episode, np.arange(start, stop)).images
    return pipeline.normalise(images)[None]  # (1, L, 16, 16, 3), as the pipeline makes it


def test_clip_spans_cover_every_frame_once():
    assert latents.clip_spans(10, 4) == [(0, 4, 0), (4, 8, 4), (6, 10, 8)]
    assert latents.clip_spans(8, 4) == [(0, 4, 0), (4, 8, 4)]
    assert latents.clip_spans(3, 4) == [(0, 3, 0)]
    for n in range(1, 30):
        kept = [i for s, e, k in latents.clip_spans(n, 4) for i in range(k, e)]
        assert kept == list(range(n))


def test_round_trip_equals_encoder_output(encoder, store_dir, frames_dir):
    """Moments read back in a strided window equal vae.encode of each frame's stride-1
    clip (float16 precision); captions and metadata as written; both training paths turn
    the same moments into the same latents."""
    cfg, _, _, vae, info = encoder
    store = schema.FrameStore(store_dir)
    meta = store.metadata
    assert meta.latent.shape == [4, 4, 4] and meta.latent.clip_frames == 4
    assert meta.latent.vae["weights"] == "random"
    assert meta.latent.vae["config_hash"] == pipeline.vae_config_hash(cfg.vae)
    assert meta.image_format == schema.LATENT_IMAGE_FORMAT and meta.height == 16
    episode = store.episodes[1]
    expected_mean, expected_logvar = {}, {}
    for start, stop, keep in [(0, 4, 0), (4, 8, 4), (6, 10, 8)]:
        mean, logvar = encode(vae, clip_video(frames_dir, episode, start, stop))
        for i in range(keep, stop):
            expected_mean[i] = np.asarray(mean[0, i - start])
            expected_logvar[i] = np.asarray(logvar[0, i - start])
    got = store.read_window(episode, start=1, length=3, stride=4)  # frames 1, 5, 9
    assert got.images is None and got.latent_mean.dtype == np.float16
    assert got.latent_mean.shape == (3, 4, 4, 4)
    with schema.FrameStore(frames_dir) as src:
        assert got.captions == src.read_frames(episode, [1, 5, 9]).captions
        assert meta.captions == src.metadata.captions  # the same captions, recorded again
    for j, i in enumerate([1, 5, 9]):
        for have, want in [(got.latent_mean[j], expected_mean[i]),
                           (got.latent_logvar[j], expected_logvar[i])]:  # fmt: skip
            np.testing.assert_allclose(have.astype(np.float32), want, rtol=1e-3, atol=1e-4)
    assert np.abs(np.stack(list(expected_mean.values()))).max() > 1e-2  # not all zeros
    # The clip matters: in the global training window (stride 3, as the on-the-fly path
    # encodes it) frame 9 gets another latent.
    strided, _ = encode(vae, clip_video(frames_dir, episode, 0, 10)[:, [0, 3, 6, 9]])
    assert np.abs(np.asarray(strided[0, -1]) - expected_mean[9]).max() > 1e-2

    # One convention: training_latents on stored moments == encode_to_latents on video.
    video = clip_video(frames_dir, episode, 4, 8)
    moments = store.read_frames(episode, np.arange(4, 8))
    key = jax.random.key(3)
    batch = dict(latent_mean=moments.latent_mean[None], latent_logvar=moments.latent_logvar[None])
    from_store = losses.training_latents(batch, key, cfg.vae)
    from_video = encode_to_latents(vae, video, key)
    np.testing.assert_allclose(np.asarray(from_store), np.asarray(from_video), rtol=2e-3, atol=1e-4)


def test_rerun_skips_finished_episodes_and_refuses_another_vae(encoder, store_dir, tmp_path):
    cfg, mesh, rules, vae, info = encoder
    shards = sorted(f for f in os.listdir(store_dir) if f.endswith(schema.SHARD_SUFFIX))
    before = {f: os.stat(os.path.join(store_dir, f)).st_mtime_ns for f in shards}
    report = latents.write_latent_store(cfg, store_dir, vae, info, mesh=mesh, rules=rules)
    assert report.stats.episodes_resumed == 2 and report.stats.episodes_written == 0
    assert report.frames_encoded == 0
    assert {f: os.stat(os.path.join(store_dir, f)).st_mtime_ns for f in shards} == before
    assert [e.num_frames for e in report.metadata.episodes] == [FRAMES, FRAMES]

    # The same directory with another VAE: refused, naming the episode marker.
    other = dict(info, seed=info["seed"] + 1)
    with pytest.raises(schema.DataError, match=r"_episodes.*use a fresh output directory"):
        latents.write_latent_store(cfg, store_dir, vae, other, mesh=mesh, rules=rules)


def test_mismatched_store_is_refused(store_dir, frames_dir):
    tok = make_tokenizer(tiny_config().text)
    cfg = tiny_config(latents_dir=store_dir)
    cfg.data.resolution = 32  # 8 x 8 latents expected, the store has 4 x 4
    with pytest.raises(schema.DataError, match=r"latents/metadata.json: latent.shape \[4, 4, 4\]"):
        pipeline.make_dataset(cfg, tok, levels=[0], process_index=0, process_count=1)
    cfg = tiny_config(latents_dir=store_dir)
    cfg.vae.temporal_attention = False  # same shapes, another encoder
    with pytest.raises(schema.DataError, match="latent.vae.config differs.*temporal_attention"):
        pipeline.make_dataset(cfg, tok, levels=[0], process_index=0, process_count=1)
    cfg = tiny_config(latents_dir=frames_dir)  # an image store given as latents
    with pytest.raises(schema.DataError, match="is an image frame store, not a latent store"):
        pipeline.make_dataset(cfg, tok, levels=[0], process_index=0, process_count=1)
    cfg = tiny_config(data_dir=store_dir)  # a latent store given as frames
    with pytest.raises(schema.DataError, match="is a latent store; give it as data.latents_dir"):
        pipeline.make_dataset(cfg, tok, levels=[0], process_index=0, process_count=1)
    cfg = tiny_config(latents_dir=store_dir)
    cfg.train.model = "vae"
    with pytest.raises(ValueError, match="data.latents_dir=.*train.model='vae'"):
        trainer_lib.check_config(cfg)


def test_bad_latent_record_names_file_and_record(store_dir, tmp_path):
    data = schema.encode_latent_frame("e", 0, np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), "c")
    frame = schema.parse_latent_frame(data, [4, 4, 4])
    assert frame.latent_mean.shape == (4, 4, 4) and frame.caption == "c"
    with pytest.raises(ValueError, match=r"shape \(4, 4, 4\), latent store's is \(2, 4, 4\)"):
        schema.parse_latent_frame(data, [2, 4, 4])
    bad = schema.encode_example(
        {
            schema.EPISODE_ID: [b"e"],
            schema.FRAME_INDEX: [0],
            schema.CAPTION: [b"c"],
            schema.LATENT_MEAN: [b"\0" * 10],
            schema.LATENT_LOGVAR: [b"\0" * 128],
            schema.LATENT_SHAPE: [4, 4, 4],
        }
    )
    with pytest.raises(ValueError, match="'latent_mean' has 10 bytes"):
        schema.parse_latent_frame(bad, [4, 4, 4])
    # Flip a byte inside a stored record: the store names the shard and record.
    store = schema.FrameStore(store_dir)
    shard, record = store.locate(store.episodes[0], 2)
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in os.listdir(store_dir):
        if os.path.isfile(os.path.join(store_dir, name)):
            with open(os.path.join(store_dir, name), "rb") as f:
                (copy / name).write_bytes(f.read())
    offsets = schema.scan_offsets(copy / shard.file)
    raw = bytearray((copy / shard.file).read_bytes())
    raw[offsets[record] + schema.HEADER_BYTES + 20] ^= 0xFF
    (copy / shard.file).write_bytes(bytes(raw))
    with pytest.raises(schema.RecordError, match=rf"{shard.file}: record {record}: bad data CRC"):
        schema.FrameStore(copy).read_frames(store.episodes[0], [2])


@pytest.mark.slow(reason="encodes a latent store and trains an MTD from it")
def test_mtd_trains_from_latent_store(store_dir, tmp_path):
    """Two MTD steps from the latent store alone (no frame store, no 'video'): finite
    losses; a VAE-weights lookup in that MTD run's workdir is refused."""
    cfg = tiny_config(latents_dir=store_dir)  # data.data_dir stays empty
    cfg.mtd.block_out_channels = (16, 32)
    cfg.train.model, cfg.train.level = "mtd", 0
    cfg.train.num_steps, cfg.train.warmup_steps = 10, 1
    it = pipeline.make_iterator(cfg, make_tokenizer(cfg.text), levels=[0], process_index=0,
                                process_count=1)  # fmt: skip
    batch = next(it)
    assert "video" not in batch
    assert batch["latent_mean"].shape == (8, 4, 4, 4, 4)
    assert batch["latent_logvar"].dtype == np.float16
    state = trainer_lib.train(cfg, tmp_path, max_steps=2)
    assert int(state.step) == 2
    with open(tmp_path / trainer_lib.METRICS_FILE) as f:
        loss = [json.loads(line)["loss"] for line in f]
    assert len(loss) == 2 and np.all(np.isfinite(loss))
    mesh, rules = parallel.make_mesh(cfg.mesh), parallel.logical_rules(cfg)
    with pytest.raises(ValueError, match=r"train.model='mtd', not a 'vae' run"):
        latents.load_vae(cfg, mesh, rules, vae_workdir=str(tmp_path))


@pytest.mark.slow(reason="trains a VAE, then encodes a store with the CLI")
def test_cli_encodes_with_a_trained_vae(frames_dir, tmp_path):
    """A 'vae' run's newest checkpoint: load_vae restores its EMA; the CLI writes a store
    recording that step, and a rerun skips every episode."""
    cfg = trainer_setup.tiny_config(frames_dir, "vae")  # the trainer tests' tiny VAE run:
    state = trainer_lib.train(cfg, tmp_path / "vae", max_steps=2)  # its step compiled once
    mesh, rules = parallel.make_mesh(cfg.mesh), parallel.logical_rules(cfg)
    vae, info = latents.load_vae(cfg, mesh, rules, vae_workdir=str(tmp_path / "vae"))
    assert info["weights"] == "checkpoint" and info["step"] == 2
    restored = nnx.to_pure_dict(nnx.state(vae, nnx.Param))
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state.ema["vae"]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any(
        not np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(state.ema["vae"]), jax.tree.leaves(state.params["vae"]))
    )  # the EMA, not the raw params

    out = tmp_path / "latents"
    cmd = [sys.executable, "-m", "nuwa_jax.data.latents", "--config=configs/tiny.py",
           f"--config.data.data_dir={frames_dir}", "--config.data.resolution=16",
           "--config.vae.block_out_channels=(8,8,8)", f"--vae_workdir={tmp_path / 'vae'}",
           f"--out={out}"]  # fmt: skip
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 encoded, 0 skipped" in run.stdout, run.stdout
    meta = schema.load_metadata(out)
    assert meta.latent.vae["weights"] == "checkpoint" and meta.latent.vae["step"] == 2
    np.testing.assert_allclose(  # the store holds what the restored EMA VAE computes
        schema.FrameStore(out).read_frames(meta.episodes[0].id, [0]).latent_mean[0],
        np.asarray(encode(vae, clip_video(frames_dir, meta.episodes[0].id, 0, 4))[0][0, 0]),
        rtol=1e-3,
        atol=1e-4,
    )
    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and "0 encoded, 2 skipped" in rerun.stdout, rerun.stderr[-3000:]


def test_latent_statistics_give_the_unit_variance_scale(store_dir, frames_dir):
    """latent_statistics: the mean and std of the store's posterior means (every frame with
    every=1), and the shift / scale that take them to zero mean and unit variance; the
    CLI's --stats prints them (from every 7th frame); a frame store is refused naming it."""
    stats = latents.latent_statistics(store_dir, every=1)
    store = schema.FrameStore(store_dir)
    means = np.concatenate([
        np.stack(store.read_frames(ep.id, np.arange(ep.num_frames)).latent_mean).astype(np.float64)
        for ep in store.metadata.episodes
    ])  # fmt: skip
    assert stats["values"] == means.size
    assert stats["mean"] == pytest.approx(means.mean(), rel=1e-6)
    assert stats["std"] == pytest.approx(means.std(), rel=1e-6)
    assert stats["shift_factor"] == stats["mean"] and stats["scaling_factor"] == 1 / stats["std"]
    vae = tiny_config().vae
    vae.shift_factor, vae.scaling_factor = stats["shift_factor"], stats["scaling_factor"]
    assert "diffusion latents have mean 0.000, std 1.000" in latents.describe_statistics(stats, vae)
    run = subprocess.run([sys.executable, "-m", "nuwa_jax.data.latents", "--config=configs/tiny.py",
                          f"--stats={store_dir}"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    sampled = latents.latent_statistics(store_dir)  # the CLI's: every 7th frame
    assert f"vae.scaling_factor={sampled['scaling_factor']:.4f})" in run.stdout, run.stdout
    with pytest.raises(schema.DataError, match=f"{frames_dir}: a frame store"):
        latents.latent_statistics(frames_dir)
