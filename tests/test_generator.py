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
from nuwa_jax.hierarchy.generator import Generator
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
def test_smallest_plan_and_the_model_of_each_level(eight_device_run):
    gen, _, _ = eight_device_run  # tiny: L = 4, hierarchy.depth = 2 (up to 10 frames)
    short = gen.plan(4)
    assert short.depth == 1 and gen.model_level(short, 0) == 0
    video = gen.generate(PROMPTS[:4], seed=3, progress=False)  # 4 frames: the global level only
    assert [t.level for t in video.timings] == ["global"] and video.timings[0].calls == 1
    full = gen.plan(9)
    assert full.depth == 2 and [gen.model_level(full, j) for j in full.levels] == [0, 1]
    with pytest.raises(ValueError, match="11 frames need a depth-3 hierarchy"):
        gen.plan(11)
    gen.config.generation.plan_depth = "config"
    try:
        assert gen.plan(4).depth == 2  # every model at its training stride, pruned to 4 frames
    finally:
        gen.config.generation.plan_depth = "smallest"
