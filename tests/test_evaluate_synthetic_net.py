"""The offline feature networks: labels from the renderer's ground truth, weights that
round-trip with a checked sha256, and (slow) training to well above chance followed by a
full `python -m nuwa_jax.evaluate` run with the trained weights."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from nuwa_jax.data import synthetic
from nuwa_jax.evaluate import synthetic_net as snet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = snet.NetConfig(
    input_size=32,
    widths=(8, 16, 16, 16),
    frame_widths=(8, 8, 16),
    temporal_widths=(16, 16),
    feature_dim=24,
)


def test_frame_labels_follow_the_episode_state():
    state = synthetic.simulate_episode(0, 1, 200, 32)
    frames = np.arange(0, 200, 9)
    lab = snet.frame_labels(state, frames)
    for row, t in enumerate(frames):
        assert snet.SCENE_NAMES[lab["scene"][row]] == state.shot_scenes[state.shot_id[t]]
        on = {snet.CHARACTERS[i] for i in np.nonzero(lab["present"][row])[0]}
        assert on == {state.characters[k] for k in np.nonzero(state.present[t])[0]}
        for k, c in enumerate(state.characters):
            expected = state.action[t, k] if state.present[t, k] else -1
            assert lab["action"][row, snet.CHARACTER_INDEX[c]] == expected
    assert (lab["action"] >= 0).sum() == lab["present"].sum()


@pytest.mark.slow(reason="builds, saves and reloads the evaluation networks")
def test_weights_round_trip_and_tampering_is_refused(tmp_path):
    image_net, clip_net = snet.build(SMALL, seed=3)
    path = snet.save(tmp_path / "w" / "feat", image_net, clip_net, {"note": "untrained"})
    assert path.endswith("feat.json") and os.path.isfile(tmp_path / "w" / "feat.safetensors")
    meta = json.loads(open(path).read())
    assert meta["config"]["feature_dim"] == 24 and meta["train"] == {"note": "untrained"}
    ex = snet.SyntheticFeatures.load(tmp_path / "w" / "feat.safetensors", batch_size=8)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    ours = ex.image_features(images)
    direct = np.asarray(image_net.features(images))
    np.testing.assert_allclose(ours, direct, rtol=1e-5, atol=1e-6)
    clips = rng.integers(0, 256, (2, 16, 64, 64, 3), dtype=np.uint8)  # resized to 32 px
    assert ex.clip_features(clips).shape == (2, 24)
    with pytest.raises(ValueError, match="SyntheticFeatures: clips must have 16 frames, got 8"):
        ex.clip_features(clips[:, :8])
    with pytest.raises(ValueError, match=r"expected uint8 \(N, H, W, 3\)"):
        ex.image_features(images.astype(np.float32))
    # Flip one byte of the weights: the sha256 no longer matches.
    st = tmp_path / "w" / "feat.safetensors"
    data = bytearray(st.read_bytes())
    data[-1] ^= 1
    st.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="feat.safetensors: sha256 .* does not match"):
        snet.load(path)
    with pytest.raises(FileNotFoundError, match="other.json: no synthetic feature network"):
        snet.load(tmp_path / "w" / "other")


def _run(module, *args):
    env = {**os.environ, "PYTHONPATH": REPO, "XLA_FLAGS": ""}  # XLA's defaults: one
    # device (not the tests' eight simulated ones) for these single-host tools
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
        env=env,
    )


@pytest.mark.slow(reason="trains the synthetic evaluation networks")
def test_trained_networks_beat_chance_and_drive_the_evaluation(tmp_path):
    data, ref = str(tmp_path / "bench"), str(tmp_path / "ref")
    synthetic.write_benchmark(data, episodes=2, frames=64, resolution=32, seed=0)
    synthetic.write_benchmark(ref, episodes=2, frames=64, resolution=32, seed=0, first_episode=8)
    weights = str(tmp_path / "weights" / "feat")
    # Procedural training (fresh episodes every step), scored on the held-out store.
    trained = _run(
        "nuwa_jax.evaluate.train_features",
        "--config=configs/tiny.py",
        f"--eval_data={ref}",
        f"--out={weights}",
        "--steps=600",
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    print(trained.stdout)
    metrics = json.loads(open(weights + ".json").read())["train"]["metrics"]
    for kind in ("image", "clip"):  # at most half the errors of the best constant guess
        model, chance = metrics[kind]["model"], metrics[kind]["chance"]
        assert 1 - model["scene_accuracy"] <= 0.5 * (1 - chance["scene_accuracy"]), kind
    # Colours of 4-8 px sprites on unseen episodes: at most half the missing F1 of chance.
    image = metrics["image"]
    assert 1 - image["model"]["colour_f1"] <= 0.5 * (1 - image["chance"]["colour_f1"]), image
    # The evaluation CLI with the trained networks: held-out real episodes against other
    # real episodes give finite FID / FVD; the report is complete.
    out = tmp_path / "report.json"
    ev = _run(
        "nuwa_jax.evaluate",
        "--config=configs/tiny.py",
        f"--generated={ref}",
        f"--reference={data}",
        "--features=synthetic",
        f"--feature_weights={weights}.json",
        f"--out={out}",
        "--config.hierarchy.frames_per_call=16",
    )
    assert ev.returncode == 0, ev.stderr[-3000:]
    rep = json.loads(out.read_text())
    assert rep["features"]["kind"] == "synthetic" and rep["avg_fid"]["blocks"] == 4
    assert np.isfinite(rep["avg_fid"]["value"]) and np.isfinite(rep["b_fvd16"]["value"])
    assert rep["adherence"]["character_adherence"] == 1.0
    assert rep["coherence"]["mean"]["features"]["inside"] > 0


def test_training_sources_pair_frames_with_their_labels(tmp_path):
    from nuwa_jax.evaluate import train_features as tf

    root = str(tmp_path / "b")
    synthetic.write_benchmark(root, episodes=2, frames=40, resolution=32, seed=0)
    train, held = tf.Benchmark(root).split(0.25)
    assert train.ranges == [(0, 30), (0, 30)] and held.ranges == [(30, 40), (30, 40)]
    x, lab = held.all_images()
    frames, state = synthetic.render_episode(0, 1, 40, 32)
    np.testing.assert_array_equal(x[10:], frames[30:])
    np.testing.assert_array_equal(
        lab["present"][10:], snet.frame_labels(state, range(30, 40))["present"]
    )
    clips, clab = train.sample_clips(np.random.default_rng(0), 3, 16)
    assert clips.shape == (3, 16, 32, 32, 3) and clab["action"].shape == (3, 96)
    # Procedural samples: each image is a frame of the next fresh episode, with its labels.
    proc = tf.ProceduralEpisodes(32, seed=5, first_episode=100, frames=24, images_per_episode=2)
    images, labels = proc.sample_images(np.random.default_rng(1), 3)
    for i, episode in enumerate((100, 100, 101)):
        state = synthetic.simulate_episode(5, episode, 24, 32)
        t = [t for t in range(24) if np.array_equal(synthetic.render_frame(state, t), images[i])]
        assert t, i
        expected = snet.frame_labels(state, [t[0]])
        assert labels["scene"][i] == expected["scene"][0]
        np.testing.assert_array_equal(labels["colour"][i], expected["colour"][0])
    assert proc._next == 102
