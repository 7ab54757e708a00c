"""Caption adherence: the caption grammar, the rule-based detector on rendered ground
truth (exact, blurred, with other captions), shape and size discrimination."""

import numpy as np
import pytest
import scipy.ndimage

from nuwa_jax.data import synthetic
from nuwa_jax.evaluate import adherence


@pytest.fixture(scope="module")
def episode():
    frames, state = synthetic.render_episode(0, 3, 160, 64)
    return frames, state


def test_parse_caption_recovers_the_ground_truth(episode):
    _, state = episode
    for t in range(0, 160, 7):
        chars, scene = adherence.parse_caption(state.captions[t])
        truth = {state.characters[k] for k in np.nonzero(state.present[t])[0]}
        assert set(chars) == truth and len(chars) == len(truth)
        assert scene == state.shot_scenes[state.shot_id[t]]
    assert adherence.parse_caption("a dog runs on a sofa") == ([], None)


def _blur(frames, sigma):
    out = scipy.ndimage.gaussian_filter(frames.astype(np.float64), (0, sigma, sigma, 0))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def test_ground_truth_frames_adhere_and_other_captions_do_not(episode):
    frames, state = episode
    truth = adherence.AdherenceMeter(64)
    ok = np.concatenate(
        [truth.update(frames[a : a + 64], state.captions[a : a + 64]) for a in range(0, 160, 64)]
    )
    r = truth.result()
    assert r["frames_with_characters"] > 50 and r["frames"] == 160
    assert r["character_adherence"] == 1.0 and r["character_recall"] == 1.0 and ok.sum() > 50
    assert r["scene_adherence"] == 1.0
    assert r["colour_presence"] > 0.9 and r["unnamed_colours"] == 0.0
    # Slight blur (Gaussian, sigma 0.5 px) and colour noise: still found.
    noisy = _blur(frames, 0.5).astype(int) + np.random.default_rng(0).integers(-8, 9, frames.shape)
    blurred = adherence.AdherenceMeter(64)
    blurred.update(np.clip(noisy, 0, 255).astype(np.uint8), state.captions)
    assert blurred.result()["character_adherence"] > 0.95
    # Another episode's captions (other characters, other places) on these frames.
    other = synthetic.simulate_episode(0, 5, 160, 64)
    wrong = adherence.AdherenceMeter(64)
    wrong.update(frames, other.captions)
    assert wrong.result()["character_adherence"] < 0.2 < r["character_adherence"]
    assert wrong.result()["scene_adherence"] < 0.5
    assert wrong.result()["colour_presence"] < 0.5 < wrong.result()["unnamed_colours"]


def _frame_with(character, resolution=64, x=30):
    """One frame of the beach with `character` standing at x."""
    state = synthetic.EpisodeState(
        seed=0,
        episode=0,
        resolution=resolution,
        characters=[character],
        shot_starts=np.zeros(1, np.int32),
        shot_scenes=["beach"],
        shot_variants=np.zeros(1, np.int32),
        shot_cast=np.ones((1, 1), bool),
        shot_id=np.zeros(1, np.int32),
        present=np.ones((1, 1), bool),
        x=np.full((1, 1), x, np.int32),
        y=np.full((1, 1), resolution - 12, np.int32),
        action=np.zeros((1, 1), np.int8),
        captions=[""],
    )
    return synthetic.render_frame(state, 0)[None]


def test_detector_tells_shapes_sizes_and_colours_apart():
    big_square = synthetic.Character("square", "red", "big")
    meter = adherence.AdherenceMeter(64)
    frame = _frame_with(big_square)
    cap = "a {} stands on the beach"
    assert meter.update(frame, [cap.format("a big red square")[2:]]).tolist() == [True]
    for wrong in ("small red square", "big red circle", "big red star", "big blue square"):
        assert meter.update(frame, [cap.format("a " + wrong)[2:]]).tolist() == [False], wrong
    # At 32 px a small circle, diamond and cross are the same 4x4 pixels: all three fit.
    small = _frame_with(synthetic.Character("circle", "green", "small"), 32, 12)
    meter32 = adherence.AdherenceMeter(32)
    for shape, expected in (("diamond", True), ("cross", True), ("star", False)):
        got = meter32.update(small, [f"a small green {shape} stands on the beach"])
        assert got.tolist() == [expected], shape


def test_bad_frames_are_refused():
    det = adherence.CharacterDetector(64)
    with pytest.raises(ValueError, match=r"frames must be \(B, 64, 64, 3\)"):
        det.detect(np.zeros((1, 32, 32, 3), np.uint8), "red")
    with pytest.raises(ValueError, match="2 frames but 1 captions"):
        adherence.AdherenceMeter(64).update(np.zeros((2, 64, 64, 3), np.uint8), ["x"])
