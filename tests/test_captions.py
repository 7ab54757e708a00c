"""A store's captions: recorded by the writer (captions.json + metadata 'captions'), kept
across resumed runs, read from the records of older stores, and checked against a text
context (nuwa_jax.data.captions)."""

import collections
import json
import os

import numpy as np
import pytest

from nuwa_jax.data import captions, schema, synthetic
from nuwa_jax.data.writer import DatasetWriter
from nuwa_jax.models.text import ByteTokenizer

KW = dict(frames=60, resolution=16, frames_per_shard=25)


def _rendered(episodes):
    counts = collections.Counter()
    for e in episodes:
        counts.update(synthetic.simulate_episode(0, e, KW["frames"], KW["resolution"]).captions)
    return counts


def test_benchmark_records_its_captions(tmp_path):
    meta = synthetic.write_benchmark(tmp_path, episodes=2, **KW)
    want = _rendered([0, 1])
    info = schema.load_metadata(tmp_path).captions
    assert info == meta.captions
    assert (info.frames, info.distinct) == (120, len(want))
    assert info.max_utf8_bytes == max(len(t.encode()) for t in want)
    assert info.longest in want and len(info.longest.encode()) == info.max_utf8_bytes
    assert captions.read_file(tmp_path / info.file) == want
    assert captions.store_captions(tmp_path) == (want, captions.SOURCE_FILE)
    report = captions.context_report(tmp_path, ByteTokenizer(8).count, 128)
    assert report.longest_tokens == info.max_utf8_bytes + 2  # BOS, bytes, EOS
    assert report.cut_frames == 0 and report.frames == 120


def test_resumed_episodes_keep_their_counts(tmp_path):
    synthetic.write_benchmark(tmp_path / "a", episodes=2, **KW)
    synthetic.write_benchmark(tmp_path / "b", episodes=1, **KW)
    # A marker written before caption counts were kept: the rerun reads the records.
    marker = tmp_path / "b" / "_episodes" / "synthetic-00000.json"
    obj = json.loads(marker.read_text())
    del obj["captions"]
    marker.write_text(json.dumps(obj))
    synthetic.write_benchmark(tmp_path / "b", episodes=2, **KW)  # resumes episode 0
    for name in ("metadata.json", "captions.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_store_without_summary_still_loads(tmp_path):
    synthetic.write_benchmark(tmp_path, episodes=2, **KW)
    written = (tmp_path / "metadata.json").read_bytes()
    obj = json.loads(written)
    del obj["captions"]
    (tmp_path / "metadata.json").write_text(json.dumps(obj))
    os.remove(tmp_path / "captions.json")
    store = schema.FrameStore(tmp_path)
    assert store.metadata.captions is None
    assert len(store.read_window("synthetic-00001", 0, 3).captions) == 3
    assert captions.store_captions(tmp_path) == (_rendered([0, 1]), captions.SOURCE_SCAN)
    captions.main([str(tmp_path)])  # adds the summary: the store as the writer makes it
    assert (tmp_path / "metadata.json").read_bytes() == written


def _store(root, texts):
    w = DatasetWriter(root, fps=8, height=4, width=4, frames_per_shard=4)
    image = np.zeros((4, 4, 3), np.uint8)
    w.write_episode("e", [(image, t) for t in texts])
    return w.finalize()


def test_context_refused_or_counted(tmp_path):
    long, accents = "x" * 40, "\u00e9" * 20  # 40 and 40 UTF-8 bytes
    _store(tmp_path, ["short"] * 3 + [long] * 2 + [accents])
    count = ByteTokenizer(32).count
    with pytest.raises(captions.TextContextError) as err:
        captions.check_context(tmp_path, count, 32, allow=False)
    message = str(err.value)
    for part in (str(tmp_path), "42 tokens", "text.max_length=42", "text.allow_truncation"):
        assert part in message, message
    report = captions.check_context(tmp_path, count, 32, allow=True)
    assert (report.cut_frames, report.cut_distinct, report.max_dropped) == (3, 2, 10)
    assert (report.frames, report.distinct, report.longest_tokens) == (6, 3, 42)
    assert captions.check_context(tmp_path, count, 42, allow=False).cut_frames == 0
    # A captions file that disagrees with metadata.json is refused, naming it.
    (tmp_path / "captions.json").write_text(
        json.dumps(dict(format=captions.FILE_FORMAT, version=1, frames=1, captions=[["a", 1]]))
    )
    with pytest.raises(schema.DataError, match="captions.json: 1 frames, 1 distinct"):
        captions.store_captions(tmp_path)


def test_bad_caption_summary_is_refused(tmp_path):
    _store(tmp_path, ["a", "bb"])
    obj = json.loads((tmp_path / "metadata.json").read_text())
    obj["captions"]["frames"] = 3
    (tmp_path / "metadata.json").write_text(json.dumps(obj))
    with pytest.raises(schema.DataError, match="captions.frames=3, the episodes hold 2"):
        schema.load_metadata(tmp_path)
