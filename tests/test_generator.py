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


@pytest.mark.slow(reason="compiles the tiny hierarchy's samplers for 1 and 8 devices")
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


@pytest.mark.slow(reason="generates a whole tiny hierarchy on 8 devices")
def test_frames_stream_once_in_order(eight_device_run):
    gen, video, streamed = eight_device_run
    assert gen.plan(len(PROMPTS)).depth == 2 and video.store.done[:9].all()
    starts = [s for s, _ in streamed]
    frames = np.concatenate([f for _, f in streamed])
    assert starts == sorted(starts) and starts[0] == 0 and frames.shape == (9, 16, 16, 3)
    np.testing.assert_allclose(frames, gen.decode(video.latents), atol=1e-5)
    assert np.abs(frames).max() <= 1.0


@pytest.mark.slow(reason="generates the AR baseline on 8 devices")
def test_autoregressive_baseline_chains_segments(eight_device_run):
    gen, _, _ = eight_device_run
    video = gen.generate(PROMPTS, seed=3, schedule="ar", progress=False)
    (timing,) = video.timings
    # L = 4, one context frame: segments start at 0, 3, 6 -> 3 sequential calls.
    assert timing.level == "ar" and timing.calls == 3 and timing.segments == 3
    assert video.store.done[:9].all() and video.latents.shape[0] == 9
    with pytest.raises(ValueError, match="unknown 'zigzag'"):
        gen.generate(PROMPTS, seed=3, schedule="zigzag")


@pytest.mark.slow(reason="generates a tiny hierarchy on 8 devices")
def test_a_prompt_longer_than_the_context_is_reported(eight_device_run, caplog):
    gen, _, _ = eight_device_run
    long = ", ".join(["a small orange triangle walks left"] * 4)  # 142 bytes, 144 tokens
    with caplog.at_level(logging.WARNING):
        video = gen.generate([long] * 2 + PROMPTS[:2], seed=3, progress=False)
    (cut,) = video.truncated_prompts
    assert gen.config.text.max_length == 128 and (cut.prompt, cut.dropped) == (long, 16)
    warned = [r.getMessage() for r in caplog.records if long in r.getMessage()]
    assert len(warned) == 1 and "16 tokens dropped" in warned[0]


@pytest.mark.slow(reason="runs the generate CLI end to end in a subprocess")
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


@pytest.mark.slow(reason="generates several short videos on 8 devices")
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


# ---------------------------------------------------------------------------------------
# Faults: bad requests fail before any network; failed or stopped runs leave no files.
# ---------------------------------------------------------------------------------------
@pytest.mark.faults
def test_requests_are_checked_before_any_network_is_built(monkeypatch, tmp_path):
    from nuwa_jax import render, storyboard

    def no_networks(*args, **kw):
        raise AssertionError("networks built")

    monkeypatch.setattr(render, "build", no_networks)
    prompt = storyboard.Storyboard.from_prompt("a red circle")

    def run(config, board=prompt, frames=None, schedule="dod"):
        with config.unlocked():
            config.generation.num_frames, config.generation.schedule = frames, schedule
        return render.run_generation(config, board, str(tmp_path / "out"), "video", 0, True)

    # tiny: L = 4, depth 2 -> at most 10 frames; demo: L = 16, depth 3 -> 3376.
    with pytest.raises(render.GenerationError, match=r"--frames=11 \(generation.num_frames\): "
                       "the DoD plan of this hierarchy makes at most 10 frames"):  # fmt: skip
        run(small_config(), frames=11)
    with pytest.raises(render.GenerationError, match="--frames=3377 .* at most 3376 frames"):
        run(common.base("demo"), frames=3377)
    with pytest.raises(render.GenerationError, match="--frames=1: .* at least 2 frames"):
        run(small_config(), frames=1)
    ranges = storyboard.parse_text("0-9 | a\n10-19 | b\n", "board.txt")
    with pytest.raises(storyboard.StoryboardError, match="board.txt: its frame ranges cover "
                       "frames 0-19, but the video has 9 frames"):  # fmt: skip
        run(small_config(), ranges, frames=9)
    scenes = storyboard.parse_text("1 | a\n0.1 | b\n", "board.txt")
    with pytest.raises(storyboard.StoryboardError, match=r"board.txt: scene 2 of 2 \('b'"):
        run(small_config(), scenes, frames=5)
    with pytest.raises(AssertionError, match="networks built"):  # ar: no bound on frames
        run(small_config(), frames=11, schedule="ar")
    assert not (tmp_path / "out").exists()


def run_cli(*args, timeout=300):
    cmd = [sys.executable, "-m", "nuwa_jax.generate", "--config=configs/tiny.py",
           "--config.data.resolution=16", "--steps=2", "--progress=false", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": REPO})  # fmt: skip


@pytest.mark.faults
def test_cli_refuses_bad_requests_in_one_line(tmp_path):
    board = tmp_path / "board.txt"
    board.write_text("0-19 | a red circle\n")
    dot = tmp_path / "dot.png"
    from PIL import Image

    Image.new("RGB", (1, 1)).save(dot)
    cases = [
        (["--prompt=a red circle", "--frames=11"], "error: --frames=11 (generation.num_frames)"),
        ([f"--storyboard={board}", "--frames=9"], f"error: {board}: its frame ranges cover"),
        (["--task=interpolation", f"--inputs={dot},{dot}"], f"error: {dot}: 1x1 pixels"),
    ]
    for args, message in cases:
        run = run_cli(*args, "--random_weights", f"--out={tmp_path / 'out'}")
        assert run.returncode == 2, run.stderr[-3000:]
        assert run.stderr.strip().splitlines() == [run.stderr.strip()], run.stderr[-3000:]
        assert run.stderr.startswith(message), run.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.faults
def test_mp4_writer_flushes_packets_as_the_encoder_emits_them(tmp_path):
    from nuwa_jax import video_io

    x = np.linspace(-1, 1, 32)
    writer = video_io.Mp4Writer(str(tmp_path / "v.mp4"), 8.0, 32, 32)
    sizes = []
    with writer:
        for t in range(0, 96, 8):  # a moving gradient, 8 frames at a time
            phase = (t + np.arange(8))[:, None, None, None] * 0.1
            writer.write(np.sin(3 * x[None, None, :, None] + x[None, :, None, None] + phase)
                         * np.ones((8, 32, 32, 3)))  # fmt: skip
            sizes.append(os.path.getsize(writer._tmp))
    # libx264 holds back ~40 frames (rc-lookahead); every packet after that is on disk at
    # once (without flush_packets the 32 KiB I/O buffer held all ~6 KB until close).
    assert sizes[3] == 0 or sizes[3] <= 48  # 32 frames: inside the encoder still
    assert sizes[-1] > 1000 and all(b > a for a, b in zip(sizes[6:], sizes[7:])), sizes
    assert os.listdir(tmp_path) == ["v.mp4"]


@pytest.mark.slow(reason="generates videos with write failures injected")
@pytest.mark.faults
def test_frames_reach_the_writer_as_final_and_a_failed_run_leaves_no_file(models8, tmp_path,
                                                                          monkeypatch):  # fmt: skip
    from nuwa_jax import render, video_io

    gen = generator(models8, small_config(), jax.devices()[:1])  # one segment per call
    built = render.Built(gen, None, 0.0)
    calls, writes = [], []
    run_chunk = gen._run_chunk

    def counted(*args, **kw):
        if len(calls) == fail_at:
            raise RuntimeError("injected fault")
        calls.append(1)
        return run_chunk(*args, **kw)

    gen._run_chunk = counted
    write = video_io.Mp4Writer.write

    def recorded(self, frames):  # (segment calls so far, frames) of each write
        writes.append((len(calls), len(frames)))
        write(self, frames)

    monkeypatch.setattr(video_io.Mp4Writer, "write", recorded)

    fail_at = None  # 9 frames: the global call, then local1's 3 segments one call each
    render.write_video(built, PROMPTS, str(tmp_path / "ok"), "video", 3, "dod", progress=False)
    # Decoded 4 frames (L) at a time: frames 0-3 after the first segment, the rest at the end.
    assert len(calls) == 4 and writes == [(2, 4), (4, 4), (4, 1)]
    assert len(os.listdir(tmp_path / "ok")) == 5

    fail_at, writes[:], calls[:] = 3, [], []  # the last segment: frames 0-3 are written
    with pytest.raises(RuntimeError, match="injected fault"):
        render.write_video(built, PROMPTS, str(tmp_path / "mid"), "video", 3, "dod",
                           progress=False)  # fmt: skip
    assert writes == [(2, 4)] and os.listdir(tmp_path / "mid") == []

    fail_at = None  # after the mp4 is complete: it goes too

    def disk_full(*args, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(video_io, "write_gif", disk_full)
    with pytest.raises(OSError, match="No space left"):
        render.write_video(built, PROMPTS, str(tmp_path / "late"), "video", 3, "dod",
                           progress=False)  # fmt: skip
    assert os.listdir(tmp_path / "late") == []


@pytest.mark.slow(reason="generate and the demo in subprocesses, stopped by SIGTERM")
@pytest.mark.faults
@pytest.mark.parametrize("entry", ["generate", "demo"])
def test_sigterm_during_generation_removes_every_file(tmp_path, entry):
    import signal
    import time

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", f"nuwa_jax.{entry}", "--config=configs/tiny.py",
           "--config.data.resolution=16", "--steps=2", "--frames=10", "--random_weights",
           f"--out={out}"]  # fmt: skip
    if entry == "generate":
        cmd += ["--progress=false", "--prompt=a circle"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": REPO})  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not (out.exists() and any(".partial" in f for f in os.listdir(out))):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no partial mp4 within 300 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # generation has started: the mp4 writer is open
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "error: SIGTERM: stopped; the run's output files are removed" in stderr
    assert os.listdir(out) == []
