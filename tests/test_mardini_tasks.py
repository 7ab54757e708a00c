"""MarDini tasks from the user's frames (nuwa_jax.mardini_tasks) and MarDini as the local
backbone of Diffusion over Diffusion: plans per task, errors naming the file or flag, each
task end to end on tiny random networks (given frames come out exactly as encoded),
sharded == unsharded, the CLI, DoD with MarDini locals (the MTD run's keyframes), and
interpolation of a hierarchy level (--level) with either local backbone (--backbone)."""

import json
import os
import subprocess
import sys

import av
import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from configs import common
from nuwa_jax import mardini_tasks as mt
from nuwa_jax import parallel, video_io
from nuwa_jax.hierarchy.bundle import BundleError
from nuwa_jax.hierarchy.generator import Generator, LatentStore
from nuwa_jax.hierarchy.models import HierarchyModels
from nuwa_jax.models.mtd import MTD
from nuwa_jax.models.text import TextEncoder, make_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
L = 5  # mardini.num_frames of the tiny size = hierarchy.frames_per_call below


def tiny_config():
    cfg = common.base("tiny")
    cfg.data.resolution = 16
    cfg.diffusion.num_sampling_steps = 2
    cfg.hierarchy.frames_per_call = L
    cfg.hierarchy.local_backbone = "mardini"
    # Guidance (a doubled batch) for image-to-video only: one program less to compile.
    cfg.mardini.guidance.video_expansion = cfg.mardini.guidance.arbitrary = 1.0
    return cfg


def fake(n, video=False):
    return mt.TaskInputs(np.zeros((n, 16, 16, 3), np.uint8), ("in.mp4",) if video else
                         tuple(f"{i}.png" for i in range(n)), video)  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Three PNGs (24x32, not square: resized and cropped) and a 7-frame mp4 (20x24)."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    pngs = []
    for i in range(3):
        pngs.append(str(root / f"img{i}.png"))
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), np.uint8)).save(pngs[-1])
    clip = str(root / "clip.mp4")
    video_io.write_mp4(clip, [rng.integers(0, 255, (7, 20, 24, 3), np.uint8)], fps=8)
    return pngs, clip


@pytest.fixture(scope="module")
def models():
    """The VAE and a MarDini (what the tasks need), on 8 devices."""
    cfg = tiny_config()
    mesh, rules = parallel.make_mesh(cfg.mesh), parallel.logical_rules(cfg)
    return HierarchyModels.create(cfg, mesh, rules, mardini=True, mtds=False)


# ---------------------------------------------------------------------------------------
# Plans and input errors (no networks).
# ---------------------------------------------------------------------------------------
def test_plans_place_the_given_frames():
    p = mt.plan_task("interpolation", L, fake(2))
    assert p.num_frames == L and p.positions.tolist() == [0, 4] and p.inputs.tolist() == [0, 1]
    (one,) = p.passes
    assert one.given.tolist() == [[True, False, False, False, True]]
    assert (one.keep == ~one.given).all()
    assert mt.plan_task("interpolation", L, fake(L, video=True)).inputs.tolist() == [0, 4]
    assert mt.plan_task("image_to_video", L, fake(1)).positions.tolist() == [0]
    # Expansion continues a video: its last frames are the prefix (default L // 2).
    p = mt.plan_task("video_expansion", L, fake(7, video=True))
    assert p.positions.tolist() == [0, 1] and p.inputs.tolist() == [5, 6]
    assert mt.plan_task("video_expansion", L, fake(3)).positions.tolist() == [0, 1, 2]
    p = mt.plan_task("arbitrary", L, fake(2), keep=[1, -1])
    assert p.positions.tolist() == [1, 4]


@pytest.mark.parametrize("clip", [3, 4, 5, 9])
def test_slow_motion_passes_make_every_frame_once_from_known_frames(clip):
    for n, factor in ((2, 2), (3, 4), (6, 2), (4, 8)):
        p = mt.plan_task("slow_motion", clip, fake(n), factor=factor)
        assert p.num_frames == (n - 1) * factor + 1
        known = np.zeros(p.num_frames, bool)
        known[p.positions] = True
        assert p.positions.tolist() == list(range(0, p.num_frames, factor))
        for one in p.passes:
            assert one.frames.shape[1] == clip
            assert known[one.frames[one.given]].all()  # given = known before this pass
            made = one.frames[one.keep]
            assert len(set(made.tolist())) == len(made) and not known[made].any()
            known[made] = True
        assert known.all(), (clip, n, factor)


def test_bad_options_and_counts_name_the_flag_or_the_files(files, tmp_path):
    pngs, clip = files
    with pytest.raises(mt.TaskError, match=r"give 2 frames or a clip of 5 frames.*img0\.png"):
        mt.plan_task("interpolation", L, mt.read_inputs(pngs[:1], 16))
    with pytest.raises(mt.TaskError, match="keeps 1 of the clip's 5 frames.*7 frames of"):
        mt.plan_task("image_to_video", L, mt.read_inputs([clip], 16))
    with pytest.raises(mt.TaskError, match="--task=arbitrary needs --keep"):
        mt.plan_task("arbitrary", L, fake(2))
    with pytest.raises(mt.TaskError, match="--keep: .*frame 7 is outside"):
        mt.plan_task("arbitrary", L, fake(2), keep=[0, 7])
    with pytest.raises(mt.TaskError, match="--factor: .*power of two"):
        mt.plan_task("slow_motion", L, fake(3), factor=3)
    with pytest.raises(mt.TaskError, match="--prefix is an option of --task=video_expansion"):
        mt.plan_task("interpolation", L, fake(2), prefix=1)
    with pytest.raises(mt.TaskError, match="at least 2 frames"):
        mt.plan_task("slow_motion", L, fake(1))
    missing = str(tmp_path / "nope.png")
    with pytest.raises(video_io.UnreadableFileError, match=f"{missing}: no such file"):
        mt.read_inputs([pngs[0], missing], 16)
    junk = tmp_path / "junk.png"
    junk.write_text("not an image")
    with pytest.raises(video_io.UnreadableFileError, match="junk.png: unreadable image"):
        mt.read_inputs([str(junk)], 16)
    bad_video = tmp_path / "bad.mp4"
    bad_video.write_text("not a video")
    with pytest.raises(video_io.UnreadableFileError, match="bad.mp4: unreadable video"):
        mt.read_inputs([str(bad_video)], 16)
    with pytest.raises(mt.TaskError, match="clip.mp4 is a video; give one video file"):
        mt.read_inputs([pngs[0], clip], 16)


@pytest.mark.faults
def test_input_sizes_are_checked_from_the_header_before_any_network(files, tmp_path,
                                                                     monkeypatch):  # fmt: skip
    import time
    import warnings

    def no_networks(*args, **kw):
        raise AssertionError("a network was built before the inputs were checked")

    monkeypatch.setattr(mt, "_load_models", no_networks)
    pngs, _ = files
    dot = str(tmp_path / "dot.png")
    Image.new("RGB", (1, 1)).save(dot)
    wide = str(tmp_path / "wide.png")
    Image.new("RGB", (4097, 16)).save(wide)
    huge = str(tmp_path / "huge.png")  # 10^8 pixels: 300 MB decoded, a few KB as 1-bit PNG
    Image.new("1", (10000, 10000)).save(huge)
    for path, size in ((dot, "1x1"), (wide, "4097x16"), (huge, "10000x10000")):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # not PIL's DecompressionBombWarning
            with pytest.raises(video_io.UnreadableFileError,
                               match=f"{path}: {size} pixels; input frames need sides of 16 to "
                               "4096 pixels"):  # fmt: skip
                mt.run_task(tiny_config(), "interpolation", [pngs[0], path], str(tmp_path),
                            random_weights=True, progress=False)  # fmt: skip
        assert time.perf_counter() - t0 < 5  # the header only: nothing decoded
    small = str(tmp_path / "small.mp4")
    video_io.write_mp4(small, [np.zeros((3, 8, 8, 3), np.uint8)], fps=8)
    with pytest.raises(video_io.UnreadableFileError, match="small.mp4: 8x8 pixels"):
        mt.read_inputs([small], 16)
    assert sorted(os.listdir(tmp_path)) == ["dot.png", "huge.png", "small.mp4", "wide.png"]


# ---------------------------------------------------------------------------------------
# Each task end to end (tiny random networks, 2 DDIM steps).
# ---------------------------------------------------------------------------------------
CASES = [  # task, which inputs, options, output frames
    ("interpolation", "pngs:2", {}, L),
    ("image_to_video", "pngs:1", {}, L),
    ("video_expansion", "clip", {}, L),
    ("arbitrary", "pngs:3", {"keep": [0, 2, 4]}, L),
    ("slow_motion", "clip", {"factor": 2}, 13),
]


@pytest.mark.slow(reason="compiles MarDini's sampler for every task")
def test_each_task_keeps_the_given_frames(models, files, tmp_path):
    pngs, clip = files
    cfg = tiny_config()
    mesh, rules = parallel.make_mesh(cfg.mesh), parallel.logical_rules(cfg)
    gen = Generator(cfg, models, mesh, rules, None)
    for task, which, options, frames in CASES:
        paths = [clip] if which == "clip" else pngs[: int(which.split(":")[1])]
        out = tmp_path / task
        result = mt.run_task(cfg, task, paths, str(out), models=models, progress=False,
                             gif=False, **options)  # fmt: skip
        plan = result.plan
        assert result.latents.shape[0] == plan.num_frames == frames
        # The given frames, encoded, sit at their positions exactly (written back every step).
        encoded = gen.encode(mt.read_inputs(paths, 16).frames[plan.inputs])
        np.testing.assert_allclose(result.given_latents, encoded, atol=1e-5)
        np.testing.assert_array_equal(result.latents[plan.positions], result.given_latents)
        generated = np.setdiff1d(np.arange(frames), plan.positions)
        assert np.abs(result.latents[generated]).max() > 0
        assert sorted(os.listdir(out)) == ["video.mp4", "video_frames.png", "video_timings.json"]
        with av.open(str(out / "video.mp4")) as c:
            assert sum(1 for _ in c.decode(video=0)) == frames
        report = json.loads((out / "video_timings.json").read_text())
        assert report["task"] == task and report["given_positions"] == plan.positions.tolist()
        assert report["guidance_scale"] == cfg.mardini.guidance[task]
        assert report["options"]["keep"] == options.get("keep")  # the task's, as given
        assert all(level["backbone"] == "mardini" for level in report["levels"])
    # Slow motion: 13 frames from 7, one pass of 3 clips in one call on 8 devices; the
    # same clips on 1 device, 2 per call (2 calls, one padded), give the same frames.
    assert [(lv["segments"], lv["calls"]) for lv in report["levels"]] == [(3, 1)]
    cfg1 = tiny_config()
    cfg1.generation.max_segments_per_device = 2
    mesh1 = parallel.make_mesh(cfg1.mesh, jax.devices()[:1])
    alone = HierarchyModels(None, models.vae, (), (), mardini=models.mardini).reshard(mesh1, rules)
    gen1 = Generator(cfg1, alone, mesh1, rules, None, mardini_guidance=1.0)
    store = LatentStore(int(plan.passes[0].frames.max()) + 1, gen1.latent_shape)
    store.put(plan.positions, np.ones(len(plan.positions), bool), result.given_latents)
    (one,) = plan.passes
    timing = gen1.sample_segments("x", one.frames, one.given, store, 0, 0,
                                  lambda s: one.keep[s.segment_ids], progress=False)  # fmt: skip
    assert timing.calls == 2
    np.testing.assert_allclose(store.latents[:frames], result.latents, atol=2e-5)


@pytest.mark.slow(reason="runs generate --task in subprocesses")
def test_generate_cli_runs_a_task_and_refuses_bad_inputs(files, tmp_path):
    pngs, _ = files
    env = {**os.environ, "PYTHONPATH": REPO}
    base = [sys.executable, "-m", "nuwa_jax.generate", "--config=configs/tiny.py",
            "--config.data.resolution=16", "--random_weights", "--progress=false"]  # fmt: skip
    kw = dict(capture_output=True, text=True, cwd=REPO, timeout=600, env=env)
    one = subprocess.run(base + ["--task=interpolation", f"--inputs={pngs[0]}"], **kw)
    assert one.returncode == 2 and "give 2 frames" in one.stderr and pngs[0] in one.stderr
    flag = subprocess.run(base + ["--task=interpolation", "--factor=2"], **kw)
    assert flag.returncode == 2 and "--factor is an option of --task=slow_motion" in flag.stderr
    out = tmp_path / "out"
    ok = subprocess.run(base + ["--task=interpolation", f"--inputs={pngs[0]},{pngs[1]}",
                                "--steps=1", f"--out={out}"], **kw)  # fmt: skip
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["video.gif", "video.mp4", "video_frames.png",
                                       "video_timings.json"]  # fmt: skip
    report = json.loads((out / "video_timings.json").read_text())
    assert report["weights"] == {"source": "random"} and report["num_frames"] == L
    assert "interpolation: 5 frames" in ok.stdout


# ---------------------------------------------------------------------------------------
# Diffusion over Diffusion with MarDini locals.
# ---------------------------------------------------------------------------------------
@pytest.mark.slow(reason="generates a hierarchy with MarDini locals")
def test_dod_with_mardini_locals_keeps_the_mtd_keyframes(models):
    cfg = tiny_config()
    cfg.diffusion.guidance_scale = 1.0  # the MTDs' guidance is tested elsewhere
    # 2 data devices: a level's 2 segments are one call, each device one of them.
    mesh, rules = parallel.make_mesh(cfg.mesh, jax.devices()[:2]), parallel.logical_rules(cfg)
    make = lambda ctor, seed: parallel.create_sharded_model(ctor, mesh, rules, seed)  # noqa: E731
    text = make(lambda r: TextEncoder(cfg.text, cfg.compute, rngs=r), 0)
    mtd = make(lambda r: MTD(cfg.mtd, cfg.compute, rngs=r), 2)
    moved = models.reshard(mesh, rules)
    # One MTD at both levels (cheap: one compile); the local one runs only in the MTD run.
    nets = HierarchyModels(text, moved.vae, (mtd, mtd), (None, None), (), moved.mardini)
    gen = Generator(cfg, nets, mesh, rules, make_tokenizer(cfg.text))
    prompts = ["a small red circle walks left"] * 5 + ["a big blue square jumps"] * 4
    video = gen.generate(prompts, seed=3, progress=False)  # depth 2: global + 2 segments
    assert [(t.level, t.backbone, t.segments, t.calls) for t in video.timings] == [
        ("global", "mtd", 1, 1), ("local1", "mardini", 2, 1)]  # fmt: skip
    assert video.store.done[:9].all()
    gen.local_backbone = "mtd"  # the same networks, MTD locals
    mtd_video = gen.generate(prompts, seed=3, progress=False)
    keyframes = video.plan.segments(0)[0]
    np.testing.assert_array_equal(
        video.store.latents[keyframes], mtd_video.store.latents[keyframes]
    )
    middle = np.setdiff1d(np.arange(9), keyframes)
    assert np.abs(video.latents[middle] - mtd_video.latents[middle]).max() > 1e-3
    # A segment must be one MarDini clip; the error names both keys.
    bad = tiny_config()
    bad.mardini.num_frames = 4
    with pytest.raises(ValueError, match=r"mardini.num_frames \(4\) == hierarchy.frames_per_call"):
        Generator(bad, nets, mesh, rules, make_tokenizer(bad.text))
    with pytest.raises(ValueError, match="no MarDini network"):
        Generator(cfg, HierarchyModels(text, moved.vae, (mtd, mtd), (None, None)), mesh, rules,
                  make_tokenizer(cfg.text))  # fmt: skip


# ---------------------------------------------------------------------------------------
# Interpolation of a hierarchy level (--level) with either local backbone (--backbone).
# ---------------------------------------------------------------------------------------
def level_config():
    """Depth 3 (local levels 1 and 2), L = 5 = mardini.num_frames; a small MTD."""
    cfg = tiny_config()
    cfg.hierarchy.depth = 3
    cfg.mtd.block_out_channels = (16, 32)
    return cfg


def test_level_interpolation_errors_name_the_flag_and_value(files, tmp_path):
    """Every bad --level / --backbone / --prompt / --inputs is refused before any network
    is built (random weights: nothing to load), naming the flag and the value."""
    pngs, clip = files
    assert mt.choose_backbone("interpolation", None, None) == "mardini"  # random: both
    assert mt.choose_backbone("interpolation", None, {"vae", "mtd_global", "mtd_local"}) == "mtd"
    assert mt.choose_backbone("interpolation", None, {"vae", "mardini", "mtd_global"}) == "mardini"
    cfg = level_config()

    def refused(match, task="interpolation", paths=pngs[:2], **kw):
        with pytest.raises(mt.TaskError, match=match):
            mt.run_task(cfg, task, paths, str(tmp_path), random_weights=True, **kw)

    refused(r"--level=3: the local levels of this hierarchy are 1 \.\. 2 \(hierarchy.depth=3",
            level=3, backbone="mtd")  # fmt: skip
    refused(r"--level=0: .*level 0 is the global model", level=0)
    refused(r"--backbone=mtd needs --level=K \(1 \.\. hierarchy.depth - 1 = 2\)", backbone="mtd")
    refused("--backbone=mtd: the local MTD only interpolates", task="image_to_video",
            paths=pngs[:1], backbone="mtd")  # fmt: skip
    refused("--level is an option of --task=interpolation, not of --task=image_to_video",
            task="image_to_video", paths=pngs[:1], level=1)  # fmt: skip
    refused("--prompt: only the local MTD reads a prompt", prompt="a red circle")
    refused(r"--level=1: give 2 images.* \(16 frames apart\); --inputs gave 1 image: .*img0\.png",
            paths=pngs[:1], level=1, backbone="mtd")  # fmt: skip
    refused(r"--level=2: give 2 images.*--inputs gave 3 images", paths=pngs, level=2)
    refused(r"--level=1: give 2 images.*--inputs gave 7 frames of .*clip\.mp4", paths=[clip],
            level=1)  # fmt: skip
    wrong = level_config()
    wrong.mardini.num_frames = 4
    with pytest.raises(mt.TaskError, match=r"mardini.num_frames=4 != hierarchy.frames_per_call=5"):
        mt.run_task(wrong, "interpolation", pngs[:2], str(tmp_path), random_weights=True, level=1)
    flat = level_config()
    flat.hierarchy.depth = 1
    with pytest.raises(mt.TaskError, match=r"--level=1: the local levels of this hierarchy are "
                       r"none \(hierarchy.depth=1"):  # fmt: skip
        mt.run_task(flat, "interpolation", pngs[:2], str(tmp_path), random_weights=True, level=1)
    # Weights without the backbone's network: named, before anything runs.
    vae_only = HierarchyModels(None, object(), (), ())
    with pytest.raises(BundleError, match="the given networks: no 'mardini' network"):
        mt.run_task(cfg, "interpolation", pngs[:2], str(tmp_path), models=vae_only,
                    backbone="mardini", level=1)  # fmt: skip
    with pytest.raises(BundleError, match=r"--backbone=mtd, but no local MTD .*components: vae"):
        mt.run_task(cfg, "interpolation", pngs[:2], str(tmp_path), models=vae_only,
                    backbone="mtd", level=1)  # fmt: skip
    assert not os.listdir(tmp_path)


@pytest.fixture(scope="module")
def level_models(models):
    """The fixture's VAE and MarDini, a global MTD, and ONE local MTD shared by levels 1
    and 2 (level ids 0 and 1) with a random level embedding, so the level id matters."""
    cfg = level_config()
    mesh, rules = parallel.make_mesh(cfg.mesh), parallel.logical_rules(cfg)
    make = lambda ctor, seed: parallel.create_sharded_model(ctor, mesh, rules, seed)  # noqa: E731
    text = make(lambda r: TextEncoder(cfg.text, cfg.compute, rngs=r), 0)
    glob, local = (make(lambda r: MTD(cfg.mtd, cfg.compute, rngs=r), s) for s in (2, 3))
    table = local.level_embedding[...]
    local.level_embedding[...] = jax.random.normal(jax.random.key(5), table.shape, table.dtype)
    return HierarchyModels(text, models.vae, (glob, local, local), (None, 0, 1), (),
                           models.mardini)  # fmt: skip


@pytest.mark.slow(reason="samples a level with the MTD and with MarDini")
def test_level_interpolation_keeps_the_given_ends_with_either_backbone(level_models, files,
                                                                        tmp_path):  # fmt: skip
    """--level=2 with the local MTD and with MarDini: an L-frame clip whose first and last
    latents are the images as encoded, the .npy frames are that clip decoded (uint8,
    (L, H, W, 3)); the MTD samples exactly as the hierarchy calls it (sample_level with
    the shared MTD's level id, the prompt at every frame, the level's segment-0 key)."""
    from nuwa_jax.hierarchy.generator import sample_level

    pngs, _ = files
    cfg = level_config()
    mesh, rules = parallel.make_mesh(cfg.mesh), parallel.logical_rules(cfg)
    tokenizer = make_tokenizer(cfg.text)
    gen = Generator(cfg, level_models, mesh, rules, tokenizer, local_backbone="mtd")
    encoded = gen.encode(mt.read_inputs(pngs[:2], 16).frames)
    prompt, seed = "a small red circle walks left", 3
    results = {}
    for backbone in ("mtd", "mardini"):
        out = tmp_path / backbone
        results[backbone] = result = mt.run_task(
            cfg, "interpolation", pngs[:2], str(out), seed=seed, models=level_models,
            backbone=backbone, level=2, prompt=prompt if backbone == "mtd" else None,
            save_frames=True, gif=False, progress=False,
        )  # fmt: skip
        assert result.latents.shape == (L, *gen.latent_shape)
        np.testing.assert_allclose(result.latents[[0, -1]], encoded, atol=1e-5)
        assert np.abs(result.latents[1:-1] - result.latents[[0]]).max() > 1e-3
        frames = np.load(out / "video.npy")
        assert frames.dtype == np.uint8 and frames.shape == (L, 16, 16, 3)
        np.testing.assert_array_equal(frames, video_io.to_uint8(gen.decode(result.latents)))
        assert sorted(os.listdir(out)) == ["video.mp4", "video.npy", "video_frames.png",
                                           "video_timings.json"]  # fmt: skip
        with av.open(str(out / "video.mp4")) as c:
            assert sum(1 for _ in c.decode(video=0)) == L
        report = json.loads((out / "video_timings.json").read_text())
        assert (report["backbone"], report["level"], report["stride"], report["ends_apart"],
                report["given_positions"], report["clip_frames"]) == (backbone, 2, 1, 4, [0, 4],
                                                                      L)  # fmt: skip
        assert [lv["backbone"] for lv in report["levels"]] == [backbone]
    report = json.loads((tmp_path / "mtd" / "video_timings.json").read_text())
    assert report["prompt"] == prompt and set(report["parameters"]) == {"text", "vae", "mtd_local"}

    # The MTD's clip, sampled directly as the hierarchy's level-2 segment 0 would be.
    cond = np.zeros((1, L, *gen.latent_shape), np.float32)
    cond[0, [0, -1]] = encoded
    mask = np.zeros((1, L), bool)
    mask[0, [0, -1]] = True
    tokens = np.asarray(tokenizer([prompt] * L)).reshape(1, L, -1)
    keys = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 2), 0)[None]
    mtd, text = level_models.mtds[2], level_models.text

    @nnx.jit
    def direct(mtd, text, level_ids):
        return sample_level(mtd, text, tokens, cond, mask, keys, gen.null_tokens,
                            cfg.diffusion, level_ids)  # fmt: skip

    expected = np.asarray(direct(mtd, text, np.array([1], np.int32)))[0]
    np.testing.assert_allclose(results["mtd"].latents[1:-1], expected[1:-1], atol=2e-4)
    as_level_1 = np.asarray(direct(mtd, text, np.array([0], np.int32)))[0]
    assert np.abs(as_level_1[1:-1] - expected[1:-1]).max() > 1e-3  # the level id matters
    # MarDini: --level only names the stride; the clip is the plain interpolation task's.
    plain = mt.run_task(cfg, "interpolation", pngs[:2], str(tmp_path / "plain"), seed=seed,
                        models=level_models, backbone="mardini", gif=False,
                        progress=False)  # fmt: skip
    np.testing.assert_array_equal(plain.latents, results["mardini"].latents)
    assert plain.report["level"] is None and plain.report["stride"] is None
