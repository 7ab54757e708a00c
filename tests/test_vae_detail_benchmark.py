"""benchmarks/vae_detail.py: the VAE's reconstruction on character pixels vs scenery."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from nuwa_jax.data import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow(reason="runs benchmarks/vae_detail.py")
def test_vae_detail_counts_the_characters_pixels(tmp_path):
    out = tmp_path / "detail.json"
    args = [sys.executable, "benchmarks/vae_detail.py", "--config=configs/tiny.py",
            "--random_weights", "--clips=2", "--episodes=1", "--episode_frames=48",
            f"--out={out}"]  # fmt: skip
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["vae"]["weights"] == "random"
    # The character pixels, recounted here from the renderer for the clips the JSON names.
    L, res = result["clip_frames"], result["resolution"]
    count = 0
    for episode, start in result["clips"]:
        state = synthetic.simulate_episode(0, episode, 48, res)
        for t in range(start, start + L):
            s = int(state.shot_id[t])
            scenery = synthetic.render_background(
                state.shot_scenes[s], res, int(state.shot_variants[s])
            )
            count += int(np.any(synthetic.render_frame(state, t) != scenery, axis=-1).sum())
    assert count > 0 and result["character"]["pixels"] == count
    assert result["all"]["pixels"] == len(result["clips"]) * L * res * res
    assert result["character"]["pixels"] + result["scenery"]["pixels"] == result["all"]["pixels"]
    assert 0.0 <= result["character_recall"] <= 1.0
    assert result["all"]["l1"] == pytest.approx(
        (
            result["character"]["l1"] * count
            + result["scenery"]["l1"] * (result["all"]["pixels"] - count)
        )
        / result["all"]["pixels"]
    )
