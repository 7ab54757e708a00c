"""losses.hard_pixel_l1: the worst pixels of each frame, so that small sprites cost."""

import numpy as np
import pytest
from trainer_setup import tiny_config

from nuwa_jax.train import losses
from nuwa_jax.train import trainer as trainer_lib


def test_hard_pixel_l1_is_the_mean_of_each_frames_worst_pixels():
    rng = np.random.default_rng(0)
    recon = rng.uniform(-1, 1, (2, 3, 8, 8, 3)).astype(np.float32)
    video = rng.uniform(-1, 1, (2, 3, 8, 8, 3)).astype(np.float32)
    err = np.abs(recon - video).mean(-1).reshape(6, 64)
    k = round(0.1 * 64)
    want = np.sort(err, axis=1)[:, -k:].mean()
    got = float(losses.hard_pixel_l1(recon, video, 0.1))
    assert got == pytest.approx(want, rel=1e-6)


def test_a_missing_sprite_dominates_the_hard_term():
    video = np.zeros((1, 1, 32, 32, 3), np.float32)
    video[..., 10:14, 10:14, :] = 1.0  # a 4 x 4 sprite: 1.6 % of the frame
    recon = np.zeros_like(video)  # the scenery alone: no sprite drawn
    assert float(np.abs(recon - video).mean()) == pytest.approx(16 / 1024)
    assert float(losses.hard_pixel_l1(recon, video, 16 / 1024)) == pytest.approx(1.0)


@pytest.mark.parametrize("field,value", [("hard_pixel_fraction", 0.0), ("hard_pixel_weight", -1.0)])
def test_bad_hard_pixel_settings_are_refused(field, value):
    config = tiny_config("unused")
    config.train.model = "vae"
    config.train[field] = value
    with pytest.raises(ValueError, match=field):
        trainer_lib.check_config(config)
