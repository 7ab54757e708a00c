"""benchmarks/interpolation.py and nuwa_jax.evaluate.interpolation: MarDini vs local MTD vs
linear blends on held-out clips."""

import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import common
from nuwa_jax import render, video_io
from nuwa_jax.data import schema, synthetic
from nuwa_jax.evaluate import interpolation
from nuwa_jax.hierarchy import HierarchyPlan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow(reason="trains tiny models and samples every interpolation method")
def test_interpolation_compares_every_method_on_held_out_clips(tmp_path):
    out, work = tmp_path / "interp.json", tmp_path / "work"
    args = [
        sys.executable,
        "benchmarks/interpolation.py",
        "--config=configs/tiny.py",
        "--config.mardini.num_frames=4",  # one MarDini clip = one tiny segment (L = 4)
        "--random_weights",
        "--clips=3",
        "--episodes=2",
        f"--work={work}",
        f"--out={out}",
    ]
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["weights"] == {"source": "random"}
    (row,) = result["rows"]  # tiny: depth 2, one local level
    assert row["level"] == 1 and row["clips"] == 3
    models = {"mtd", "mardini"}
    wrong = {f"{m}@wrong_ends" for m in models}  # --wrong_ends is the default
    assert set(row["methods"]) == models | wrong | {"blend", "latent_blend", "vae"}
    assert set(row["seconds"]) == models | wrong
    for r in row["methods"].values():
        assert r["clips"] == 3 and r["psnr_pooled"] > 0

    # The blend's figure, recomputed here from the clips the JSON names.
    window = HierarchyPlan.full(4, 2).window(1, 0)
    root = str(work / "reference")
    psnrs = []
    for e, s in row["clip_starts"]:
        x = np.stack(schema.read_frames(root, synthetic.episode_id(e), window + s).images)
        a = (np.arange(1, 3) / 3)[:, None, None, None]
        blend = np.round((1 - a) * x[0] + a * x[-1])
        mse = ((blend - x[1:-1].astype(np.float64)) ** 2).mean()
        psnrs.append(10 * math.log10(255**2 / mse) if mse else math.inf)
    blend = row["methods"]["blend"]
    assert blend["exact_clips"] == sum(not math.isfinite(p) for p in psnrs)
    finite = [p for p in psnrs if math.isfinite(p)]
    if finite:
        assert blend["psnr_mean"] == pytest.approx(np.mean(finite))


@pytest.mark.slow(reason="renders held-out episodes and encodes their clips")
def test_held_out_clips_and_the_blends(tmp_path):
    """held_out_clips reads each clip at its window from the store (frames and captions);
    `blend` mixes the true ends in pixels, `latent_blend` the encoded ends in latents,
    decoded as one clip; bad windows and methods are refused naming them."""
    cfg = common.base("tiny")
    cfg.data.resolution, cfg.vae.block_out_channels = 16, (8, 8, 8)
    gen = render.build(cfg, random_weights=True).generator
    root = tmp_path / "reference"
    synthetic.held_out_benchmark(root, episodes=2, first_episode=7, frames=40, resolution=16)
    window = np.array([0, 3, 6, 9])
    rng = np.random.default_rng(0)
    clips = interpolation.held_out_clips(root, window, 5, rng, first_episode=7, episodes=2,
                                         frames=40)  # fmt: skip
    assert clips.truth.shape == (5, 4, 16, 16, 3) and clips.stride == 3
    for c, (e, s) in enumerate(clips.starts):
        assert 7 <= e <= 8 and 0 <= s <= 30
        got = schema.read_frames(str(root), synthetic.episode_id(e), window + s)
        np.testing.assert_array_equal(clips.truth[c], np.stack(got.images))
        assert clips.captions[4 * c : 4 * c + 4] == list(got.captions)

    blend, seconds = interpolation.middle_frames(gen, clips, "blend", level=1)
    x = clips.truth.astype(np.float64)
    np.testing.assert_array_equal(blend[:, 0], np.round(2 / 3 * x[:, 0] + 1 / 3 * x[:, -1]))
    assert seconds is None and blend.dtype == np.uint8
    mixed, _ = interpolation.middle_frames(gen, clips, "latent_blend", level=1)
    for c in range(5):
        z0, z1 = (gen.encode(clips.truth[c, [i]])[0] for i in (0, 3))
        z = np.stack([(1 - a) * z0 + a * z1 for a in np.arange(4) / 3])
        np.testing.assert_array_equal(mixed[c], video_io.to_uint8(gen.decode(z))[1:-1])
    still = dataclasses.replace(clips, truth=np.repeat(clips.truth[:, :1], 4, axis=1))
    scores = interpolation.compare(gen, still, ["blend", "latent_blend"], level=1)["methods"]
    assert scores["blend"]["exact_clips"] == 5 and scores["blend"]["psnr_pooled"] == math.inf
    assert scores["latent_blend"]["exact_clips"] < 5  # the VAE's error
    assert not still.moving.any() and scores["blend"]["moving"] is None
    # 'moving': every method scored on the same clips, the ones where something moves.
    half = dataclasses.replace(clips, truth=np.concatenate([still.truth[:2], clips.truth[2:]]))
    assert list(half.moving) == [False, False] + list(clips.moving[2:]) and half.moving.any()
    moving = interpolation.compare(gen, half, ["blend"], level=1)["methods"]["blend"]["moving"]
    mid = half.truth[half.moving][:, 1:-1].astype(np.float64)
    mse = ((blend[half.moving] - mid) ** 2).reshape(len(mid), -1).mean(axis=1)
    assert moving == interpolation.summarise(mse.tolist())
    assert moving["clips"] == int(half.moving.sum())
    with pytest.raises(ValueError, match="a clip spans 41 frames, episodes have 40"):
        interpolation.held_out_clips(root, np.arange(0, 41, 10), 1, rng, first_episode=7,
                                     episodes=2, frames=40)  # fmt: skip
    with pytest.raises(ValueError, match="unknown interpolation method 'cubic'"):
        interpolation.middle_frames(gen, clips, "cubic", level=1)
