"""The evaluation pass end to end on the synthetic benchmark (a pixel-statistics feature
extractor stands in for the trained networks), input readers, and the CLI's errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from nuwa_jax import video_io
from nuwa_jax.data import schema, synthetic
from nuwa_jax.evaluate import report, videos
from nuwa_jax.evaluate.features import FeatureExtractor, check_frames

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PixelFeatures:
    """Image: 8x8 block means (192-d). Clip: mean image + mean absolute frame difference
    (384-d), so temporal order matters."""

    name = "pixels"
    clip_frames = 16

    def image_features(self, images):
        x = check_frames(images, 4, "pixels").astype(np.float32) / 255.0
        n, h, w, _ = x.shape
        return x.reshape(n, 8, h // 8, 8, w // 8, 3).mean(axis=(2, 4)).reshape(n, -1)

    def clip_features(self, clips):
        clips = check_frames(clips, 5, "pixels")
        n, t = clips.shape[:2]
        f = self.image_features(clips.reshape(n * t, *clips.shape[2:])).reshape(n, t, -1)
        return np.concatenate([f.mean(1), np.abs(np.diff(f, axis=1)).mean(1) * 10], axis=1)

    def describe(self):
        return dict(kind=self.name)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    ref, held = str(root / "ref"), str(root / "held")
    synthetic.write_benchmark(ref, episodes=3, frames=80, resolution=64, seed=0)
    synthetic.write_benchmark(held, episodes=2, frames=48, resolution=64, seed=0, first_episode=3)
    return ref, held


def _opts():
    return report.EvalOptions(frames_per_call=8, depth=3)  # N(2) = 50 >= 48 frames


def test_held_out_real_episodes_beat_degraded_ones(stores):
    ref, held = stores
    assert isinstance(PixelFeatures(), FeatureExtractor)
    real = videos.open_videos(held)
    assert [v.num_frames for v in real] == [48, 48] and real[0].captions is not None
    opts = _opts()
    good = report.evaluate(real, ref, PixelFeatures(), opts=opts, log=lambda *_: None)
    assert good["avg_fid"]["blocks"] == 3 and good["b_fvd16"]["samples_per_block"] == 2
    assert good["adherence"]["character_adherence"] == 1.0
    assert good["adherence"]["scene_adherence"] == 1.0
    # The same frames, each 16-frame block played in a shuffled order, and with noise.
    rng = np.random.default_rng(0)
    bad = []
    for v in real:
        frames = np.concatenate(list(v.chunks(16)))
        order = np.concatenate([rng.permutation(16) + 16 * b for b in range(3)])
        noise = rng.integers(-30, 31, frames.shape)
        noisy = np.clip(0.6 * frames[order] + noise, 0, 255)
        bad.append(videos.ArrayVideo(v.name, noisy.astype(np.uint8), v.captions))
    worse = report.evaluate(bad, ref, PixelFeatures(), opts=opts, log=lambda *_: None)
    assert worse["avg_fid"]["value"] > good["avg_fid"]["value"]
    assert worse["b_fvd16"]["value"] > good["b_fvd16"]["value"]
    assert worse["adherence"]["character_adherence"] < 0.5
    # Coherence on the real episodes: a plan's seams are not special in real video.
    real_ratio = good["coherence"]["mean"]["pixels"]["boundary_ratio"]
    assert good["coherence"]["reference"]["pixels"]["boundary_ratio"] is not None
    assert 0.5 < real_ratio < 2.0
    json.dumps(good)  # JSON-able throughout


def test_mp4_directory_and_storyboard_captions(stores, tmp_path):
    _, held = stores
    store = schema.FrameStore(held)
    out = tmp_path / "gen"
    os.makedirs(out)
    for i, ep in enumerate(store.episodes):
        frames = store.read_frames(ep, np.arange(32)).images
        video_io.write_mp4(str(out / f"v{i}.mp4"), [frames], fps=8)
    (out / "v0_timings.json").write_text(json.dumps({"schedule": "ar"}))
    found = videos.open_videos(str(out))
    assert [v.name for v in found] == ["v0.mp4", "v1.mp4"]
    assert found[0].num_frames == 32 and found[0].schedule == "ar" and found[1].schedule is None
    decoded = np.concatenate(list(found[1].chunks(10)))
    original = store.read_frames(store.episodes[1], np.arange(32)).images
    assert decoded.shape == original.shape
    assert np.abs(decoded.astype(int) - original).mean() < 6  # H.264 at crf 18
    with pytest.raises(ValueError, match="different schedules"):
        report.evaluate(found, None, None, opts=_opts(), log=lambda *_: None)


def test_input_errors_name_the_file(stores, tmp_path):
    ref, held = stores
    with pytest.raises(FileNotFoundError, match="nowhere.mp4: no such file"):
        videos.open_videos(str(tmp_path / "nowhere.mp4"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: holds no .mp4 files"):
        videos.open_videos(str(tmp_path / "empty"))
    small = videos.ArrayVideo("small.mp4", np.zeros((32, 32, 32, 3), np.uint8))
    with pytest.raises(
        ValueError, match=r"small.mp4: frames are 32x32, but the reference .* 64x64"
    ):
        report.evaluate([small], ref, PixelFeatures(), opts=_opts(), log=lambda *_: None)
    short = videos.ArrayVideo("short.mp4", np.zeros((15, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="short.mp4: 15 frames, fewer than one 16-frame block"):
        report.evaluate([short], ref, PixelFeatures(), opts=_opts(), log=lambda *_: None)
    v = videos.ArrayVideo("a.mp4", np.zeros((16, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="a.mp4: 3 captions for 16 frames"):
        report.evaluate([v], ref, None, captions=[["x"] * 3], opts=_opts(), log=lambda *_: None)


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "nuwa_jax.evaluate", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env={**os.environ, "PYTHONPATH": REPO},
    )


def test_cli_writes_the_report_and_refuses_bad_inputs(stores, tmp_path):
    ref, held = stores
    board = tmp_path / "board.txt"
    board.write_text("1 | a big red circle walks left on the beach\n")
    out = tmp_path / "r" / "report.json"
    ok = _cli(
        f"--generated={held}",
        f"--reference={ref}",
        "--features=none",
        f"--storyboard={board}",
        f"--out={out}",
        "--config.hierarchy.frames_per_call=8",
    )
    assert ok.returncode == 0, ok.stderr
    rep = json.loads(out.read_text())
    assert rep["avg_fid"] == {"skipped": "no feature extractor (--features=none)"}
    assert rep["adherence"]["frames"] == 96 and rep["coherence"]["mean"]["pixels"]["inside"] > 0
    assert not [f for f in os.listdir(out.parent) if f != "report.json"]  # no temp file left
    bad = _cli(f"--generated={tmp_path / 'missing.mp4'}", f"--out={out}", "--features=none")
    assert bad.returncode == 2 and "missing.mp4: no such file" in bad.stderr
    weights = _cli(
        f"--generated={held}",
        f"--reference={ref}",
        f"--out={out}",
        "--features=synthetic",
        f"--feature_weights={tmp_path / 'nope.json'}",
    )
    assert weights.returncode == 2 and "nope.json: no synthetic feature network" in weights.stderr
