"""Diffusion-over-Diffusion generation: parallel levels, determinism across device counts
and chunk sizes, frame streaming, the autoregressive baseline, and the CLI."""

import json
import logging
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import common
from nuwa_jax import parallel
from nuwa_jax.hierarchy.generator import Generator, frame_prompts
from nuwa_jax.hierarchy.models import HierarchyModels
from nuwa_jax.models.text import make_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["a small red circle walks left"] * 5 + ["a big blue square jumps"] * 4  # N = 9


def small_config(max_segments_per_device=1):
    config = common.base("tiny")
    config.data.resolution = 16
    config.diffusion.num_sampling_steps = 2
    config.generation.max_segments_per_device = max_segments_per_device
    return config


@pytest.fixture(scope="module")
def models8():
    config = small_config()
    mesh, rules = parallel.make_mesh(config.mesh), parallel.logical_rules(config)
    return HierarchyModels.create(config, mesh, rules)


def generator(models, config, devices):
    mesh = parallel.make_mesh(config.mesh, devices)
    rules = parallel.logical_rules(config)
    models = models.reshard(mesh, rules)
    return Generator(config, models, mesh, rules, make_tokenizer(config.text))


@pytest.fixture(scope="module")
def eight_device_run(models8):
    gen = generator(models8, small_config(), jax.devices())
    streamed = []
    video = gen.generate(PROMPTS, seed=3, on_frames=lambda s, f: streamed.append((s, f)),
                         progress=False)  # fmt: skip
    return gen, video, streamed


@pytest.mark.slow
def test_same_video_on_1_and_8_devices_and_any_chunk_size(models8, eight_device_run):
    gen8, video8, _ = eight_device_run
    assert gen8.chunk == 8  # 8 data devices x 1 segment each: a level is one call
    assert [t.calls for t in video8.timings] == [1, 1]
    # One device, 2 segments per call: the 3 local segments take 2 calls, one padded.
    gen1 = generator(models8, small_config(max_segments_per_device=2), jax.devices()[:1])
    video1 = gen1.generate(PROMPTS, seed=3, progress=False)
    assert gen1.chunk == 2 and [t.calls for t in video1.timings] == [1, 2]
    np.testing.assert_allclose(video1.latents, video8.latents, rtol=0, atol=2e-5)
    other = gen8.generate(PROMPTS, seed=4, progress=False)
    assert np.abs(other.latents - video8.latents).max() > 1e-2  # the seed matters


@pytest.mark.slow
def test_frames_stream_once_in_order(eight_device_run):
    gen, video, streamed = eight_device_run
    assert gen.plan(len(PROMPTS)).depth == 2 and video.store.done[:9].all()
    starts = [s for s, _ in streamed]
    frames = np.concatenate([f for _, f in streamed])
    assert starts == sorted(starts) and starts[0] == 0 and frames.shape == (9, 16, 16, 3)
    np.testing.assert_allclose(frames, gen.decode(video.latents), atol=1e-5)
    assert np.abs(frames).max() <= 1.0


@pytest.mark.slow
def test_autoregressive_baseline_chains_segments(eight_device_run):
    gen, _, _ = eight_device_run
    video = gen.generate(PROMPTS, seed=3, schedule="ar", progress=False)
    (timing,) = video.timings
    # L = 4, one context frame: segments start at 0, 3, 6 -> 3 sequential calls.
    assert timing.level == "ar" and timing.calls == 3 and timing.segments == 3
    assert video.store.done[:9].all() and video.latents.shape[0] == 9
    with pytest.raises(ValueError, match="unknown 'zigzag'"):
        gen.generate(PROMPTS, seed=3, schedule="zigzag")


@pytest.mark.slow
def test_a_prompt_longer_than_the_context_is_reported(eight_device_run, caplog):
    gen, _, _ = eight_device_run
    long = ", ".join(["a small orange triangle walks left"] * 4)  # 142 bytes, 144 tokens
    with caplog.at_level(logging.WARNING):
        video = gen.generate([long] * 2 + PROMPTS[:2], seed=3, progress=False)
    (cut,) = video.truncated_prompts
    assert gen.config.text.max_length == 128 and (cut.prompt, cut.dropped) == (long, 16)
    warned = [r.getMessage() for r in caplog.records if long in r.getMessage()]
    assert len(warned) == 1 and "16 tokens dropped" in warned[0]


@pytest.mark.slow
def test_generate_cli_writes_every_output(tmp_path):
    board = tmp_path / "board.txt"
    long = ", ".join(["a small orange triangle walks left"] * 4)  # 144 tokens: 16 cut
    board.write_text(
        f"1 | a small red circle walks left\n1 | a big blue square jumps\n1 | {long}\n"
    )
    cmd = [sys.executable, "-m", "nuwa_jax.generate", "--config=configs/tiny.py",
           "--config.data.resolution=16", f"--storyboard={board}", "--frames=9", "--steps=2",
           "--random_weights", f"--out={tmp_path / 'out'}", "--progress=false"]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600,
                         env={**os.environ, "PYTHONPATH": REPO})  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    out = sorted(os.listdir(tmp_path / "out"))
    assert out == ["video.gif", "video.mp4", "video_filmstrip.png", "video_keyframes.png",
                   "video_timings.json"]  # fmt: skip
    report = json.loads((tmp_path / "out" / "video_timings.json").read_text())
    assert report["num_frames"] == 9 and [lv["level"] for lv in report["levels"]] == [
        "global", "local1"]  # fmt: skip
    assert "9 frames (dod)" in run.stdout
    (cut,) = report["truncated_prompts"]
    assert cut["prompt"] == long and cut["dropped"] == 16 and "cut prompt" in run.stdout


def test_cli_refuses_bad_storyboard_and_missing_weights(tmp_path):
    board = tmp_path / "bad.txt"
    board.write_text("1 | fine\nno bar\n")
    env = {**os.environ, "PYTHONPATH": REPO}
    base = [sys.executable, "-m", "nuwa_jax.generate", "--config=configs/tiny.py"]
    kw = dict(capture_output=True, text=True, cwd=REPO, timeout=300, env=env)
    bad = subprocess.run(base + [f"--storyboard={board}", "--random_weights"], **kw)
    assert bad.returncode == 2 and "bad.txt: line 2" in bad.stderr
    both = subprocess.run(base + ["--prompt=x", f"--storyboard={board}"], **kw)
    assert both.returncode == 2 and "exactly one of --storyboard and --prompt" in both.stderr


@pytest.mark.slow
def test_short_videos_run_every_model_at_its_training_stride(eight_device_run):
    gen, _, _ = eight_device_run  # tiny: L = 4, hierarchy.depth = 2 (up to 10 frames)
    seen = []  # the texts of every model call, in order
    tokenizer = gen.tokenizer
    gen.tokenizer = lambda texts: (seen.append(list(texts)), tokenizer(texts))[1]
    try:  # 3 frames <= L: still the global model at stride 3, then the local one at 1
        video = gen.generate(["at the start", "in the middle", "at the end"], seed=3,
                             progress=False)  # fmt: skip
    finally:
        gen.tokenizer = tokenizer
    plan = video.plan
    assert plan.depth == 2 and [plan.stride(j) for j in plan.levels] == [3, 1]
    assert [(t.level, t.segments, t.calls) for t in video.timings] == [
        ("global", 1, 1), ("local1", 1, 1)]  # fmt: skip
    assert video.latents.shape[0] == 3 and video.store.done[:3].all()
    assert video.keyframe_indices.tolist() == [0]  # keyframes 3, 6, 9 are past the video
    # Frames past the video (keyframes 3, 6, 9; the local segment's end 3) hold the last
    # prompt. Each call tokenises its chunk of 8 segments (the one real segment first).
    global_texts, local_texts = seen
    assert global_texts[:4] == ["at the start"] + ["at the end"] * 3
    assert local_texts[:4] == ["at the start", "in the middle", "at the end", "at the end"]
    with pytest.raises(ValueError, match="11 frames need a depth-3 hierarchy at L=4, but "
                       "hierarchy.depth=2"):  # fmt: skip
        gen.plan(11)


def test_frame_prompts_hold_the_last_prompt_past_the_video():
    prompts = ["a", "b", "c"]
    assert frame_prompts(prompts, np.array([[0, 3], [2, 9]])) == ["a", "c", "c", "c"]
    assert frame_prompts(prompts, np.arange(3)) == prompts
    with pytest.raises(ValueError, match="no prompts"):
        frame_prompts([], np.arange(2))
