"""Synthetic benchmark: determinism, scene-state consistency, captions, CLI, speed."""

from __future__ import annotations

import os

import numpy as np
import pytest

from nuwa_jax.data import schema, synthetic


def _shard_bytes(d):
    return {
        n: open(os.path.join(d, n), "rb").read()
        for n in sorted(os.listdir(d))
        if n.endswith(".tfrecord")
    }


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    kw = dict(episodes=2, frames=120, resolution=32, frames_per_shard=50)
    synthetic.write_benchmark(tmp_path / "a", seed=3, **kw)
    synthetic.write_benchmark(tmp_path / "b", seed=3, **kw)
    synthetic.write_benchmark(tmp_path / "c", seed=4, **kw)
    a, b, c = (_shard_bytes(tmp_path / x) for x in "abc")
    assert len(a) == 6 and a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a)
    assert (tmp_path / "a/metadata.json").read_bytes() == (
        tmp_path / "b/metadata.json"
    ).read_bytes()


def test_scene_state_consistency():
    state = synthetic.simulate_episode(seed=0, episode=1, num_frames=3376, resolution=64)
    t_total, k_total = state.present.shape
    assert t_total == 3376 and len(state.characters) == k_total
    assert len(set(state.characters)) == k_total  # captions identify characters
    # Shots change every few hundred frames, and the scenery changes with them.
    lengths = np.diff(np.append(state.shot_starts, t_total))
    assert len(lengths) >= 6 and lengths.min() >= synthetic.MIN_LAST_SHOT
    assert lengths[:-1].min() >= synthetic.SHOT_LENGTH[0]
    assert all(a != b for a, b in zip(state.shot_scenes, state.shot_scenes[1:]))
    np.testing.assert_array_equal(
        np.diff(state.shot_id) != 0, np.isin(np.arange(1, t_total), state.shot_starts)
    )
    # The cast persists through a shot: only cast members are ever present.
    assert not (state.present & ~state.shot_cast[state.shot_id]).any()
    # Characters enter and leave within shots, and their motion is smooth.
    changes = (np.diff(state.present.astype(int), axis=0) != 0) & (np.diff(state.shot_id) == 0)[
        :, None
    ]
    assert changes.sum() >= 4
    both = state.present[1:] & state.present[:-1] & (np.diff(state.shot_id) == 0)[:, None]
    dx = np.abs(np.diff(state.x, axis=0))[both]
    dy = np.abs(np.diff(state.y, axis=0))[both]
    assert dx.max() <= 1 and dy.max() <= 16
    assert set(np.unique(state.action[state.present])) == set(range(len(synthetic.ACTIONS)))
    assert (state.action[~state.present] == -1).all()
    # Captions mention exactly the present characters, with their action and place.
    for t in range(0, t_total, 7):
        cap = state.captions[t]
        for k, ch in enumerate(state.characters):
            assert (ch.describe() in cap) == bool(state.present[t, k]), (t, cap)
        assert cap.endswith(synthetic.SCENES[state.shot_scenes[state.shot_id[t]]]["phrase"])
        for k in np.nonzero(state.present[t])[0]:
            verbs = synthetic.VERBS[synthetic.ACTIONS[state.action[t, k]]]
            assert verbs[0] in cap or verbs[1] in cap
    assert len(set(state.captions)) > 20


def test_render_matches_state_and_rules():
    frames, state = synthetic.render_episode(seed=1, episode=0, num_frames=300, resolution=64)
    assert frames.shape == (300, 64, 64, 3) and frames.dtype == np.uint8
    for t in range(0, 300, 13):
        for k in np.nonzero(state.present[t])[0]:
            ch = state.characters[k]
            x, y = int(state.x[t, k]), int(state.y[t, k])
            size = synthetic.sprite_px(ch.size, 64)
            mask = synthetic.shape_mask(ch.shape, size)
            # The pixel at the sprite centre carries the character's colour unless a
            # nearer character overlaps it.
            if 0 <= y < 64 and mask[size // 2, size // 2]:
                others = [
                    j
                    for j in np.nonzero(state.present[t])[0]
                    if j != k
                    and abs(int(state.x[t, j]) - x) < size
                    and abs(int(state.y[t, j]) - y) < size
                ]
                if not others:
                    assert tuple(frames[t, y, x]) == synthetic.PALETTE[ch.colour]
    empty = [t for t in range(300) if not state.present[t].any()]
    if empty:
        t = empty[0]
        s = state.shot_id[t]
        np.testing.assert_array_equal(
            frames[t],
            synthetic.render_background(state.shot_scenes[s], 64, int(state.shot_variants[s])),
        )
    # Shapes differ and sizes are as the rules say.
    masks = {s: synthetic.shape_mask(s, 16) for s in synthetic.SHAPES}
    assert len({m.tobytes() for m in masks.values()}) == len(masks)
    assert synthetic.sprite_px("small", 64) == 8 and synthetic.sprite_px("big", 128) == 32
    spec = synthetic.benchmark_spec()
    assert set(spec["palette"]) == set(synthetic.PALETTE) and spec["actions"][0] == "walk_left"


def test_longest_caption_bounds_every_rendered_caption():
    """The bound from the rules holds every caption of 24 full demo-length episodes (brute
    force), is what `caption` writes, and with one character on screen equals the longest
    over every character, action and scene."""
    bound = synthetic.longest_caption()
    size = len(bound.encode())
    assert size == 125 and bound.endswith(synthetic.SCENES["city"]["phrase"])
    rendered = {c for e in range(24) for c in synthetic.simulate_episode(0, e, 3376, 32).captions}
    longest = max(len(c.encode()) for c in rendered)
    assert 100 <= longest <= size, longest
    one = [
        synthetic.caption([ch], np.ones(1, bool), np.array([a]), scene)
        for ch in synthetic.ALL_CHARACTERS
        for a in range(len(synthetic.ACTIONS))
        for scene in synthetic.SCENES
    ]
    assert synthetic.longest_caption(max_present=1) == max(one, key=lambda c: len(c.encode()))


@pytest.mark.parametrize("preset", ["tiny", "demo"])
def test_synthetic_presets_read_every_caption_whole(preset):
    """tiny and demo train on synthetic captions: their byte context holds the longest."""
    from configs import common
    from nuwa_jax.models.text import ByteTokenizer

    cfg = common.base(preset).text
    assert cfg.kind == "byte" and not cfg.allow_truncation
    bound = synthetic.longest_caption()
    tok = ByteTokenizer(cfg.max_length)
    assert tok.count([bound])[0] == len(bound.encode()) + 2 <= cfg.max_length
    assert tok.decode(tok([bound])) == [bound]


def test_full_episode_cli_writes_a_store(tmp_path):
    """A full 3376-frame episode through the CLI (its render time is in docs/data.md)."""
    synthetic.main(
        [
            "--out",
            str(tmp_path),
            "--episodes",
            "1",
            "--frames",
            "3376",
            "--resolution",
            "64",
            "--seed",
            "0",
        ]
    )
    store = schema.FrameStore(tmp_path)
    assert store.episodes == ("synthetic-00000",)
    assert store.num_frames("synthetic-00000") == 3376
    batch = store.read_window("synthetic-00000", 0, 16, 225)
    state = synthetic.EpisodeState.from_npz(tmp_path / "scene_state/synthetic-00000.npz")
    assert batch.captions == [state.captions[i] for i in batch.indices]
    for j, t in enumerate(batch.indices[:4]):
        np.testing.assert_array_equal(batch.images[j], synthetic.render_frame(state, int(t)))
    assert store.metadata.extra["spec"]["shapes"]["circle"]["kind"] == "disc"
    # A rerun keeps the finished episode and adds the next.
    meta = synthetic.write_benchmark(tmp_path, episodes=2, frames=3376, resolution=64, seed=0)
    assert [e.id for e in meta.episodes] == ["synthetic-00000", "synthetic-00001"]


def test_tfds_builder_tiny(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    from nuwa_jax.data import tfds_builders

    builder = tfds_builders.NuwaSynthetic(config="tiny", data_dir=str(tmp_path))
    builder.download_and_prepare()
    assert builder.info.splits["train"].num_examples == 80
    assert builder.info.splits["test"].num_examples == 40
    examples = list(tfds.as_numpy(builder.as_dataset(split="test")))
    state = synthetic.simulate_episode(0, 2, 40, 32)
    by_index = {int(e["frame_index"]): e for e in examples}
    assert sorted(by_index) == list(range(40))
    for t in (0, 17, 39):
        assert by_index[t]["episode_id"].decode() == "synthetic-00002"
        assert by_index[t]["caption"].decode() == state.captions[t]
        np.testing.assert_array_equal(by_index[t]["image"], synthetic.render_frame(state, t))
