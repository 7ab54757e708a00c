"""Frame store: round trip, random access at strides, TF compatibility, corruption."""

from __future__ import annotations

import json
import os
import pickle
import struct

import numpy as np
import pytest

from nuwa_jax.data import schema
from nuwa_jax.data.writer import DatasetWriter

H, W = 12, 16


def _frames(episode: int, n: int):
    rng = np.random.default_rng(episode)
    for i in range(n):
        image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        image[0, 0] = (episode, i % 256, i // 256)  # makes every frame identifiable
        yield image, f"episode {episode} frame {i} é"


def _expected(episode: int, n: int):
    return list(_frames(episode, n))


@pytest.fixture()
def store_dir(tmp_path):
    w = DatasetWriter(tmp_path, fps=8, height=H, width=W, frames_per_shard=40, index_every=7)
    w.write_episode("ep-a", _frames(0, 100))
    w.write_episode("ep/b", _frames(1, 33), extra={"source": "x"})
    w.finalize()
    return tmp_path


def test_crc32c_known_values():
    assert schema.crc32c(b"") == 0
    assert schema.crc32c(b"123456789") == 0xE3069283
    rng = np.random.default_rng(0)
    for n in (3, 255, 256, 257, 4096, 20001):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        crc = 0xFFFFFFFF  # bit by bit, the reflected Castagnoli polynomial
        for b in data:
            crc ^= b
            for _ in range(8):
                crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        assert schema.crc32c(data) == crc ^ 0xFFFFFFFF, n
        assert schema.crc32c(memoryview(data)) == schema.crc32c(bytearray(data)), n


def test_round_trip_at_strides(store_dir):
    store = schema.FrameStore(store_dir)
    assert store.episodes == ("ep-a", "ep/b")
    assert store.num_frames("ep-a") == 100 and store.num_frames("ep/b") == 33
    meta = store.metadata
    assert [s.num_frames for s in meta.episodes[0].shards] == [40, 40, 20]
    assert meta.episodes[1].extra == {"source": "x"}
    expected = {"ep-a": _expected(0, 100), "ep/b": _expected(1, 33)}
    for ep, start, length, stride in [
        ("ep-a", 0, 16, 1),
        ("ep-a", 3, 7, 15),
        ("ep-a", 99, 1, 1),
        ("ep-a", 0, 4, 33),
        ("ep/b", 1, 16, 2),
    ]:
        batch = store.read_window(ep, start, length, stride)
        idx = np.arange(start, start + length * stride, stride)
        np.testing.assert_array_equal(batch.indices, idx)
        for k, i in enumerate(idx):
            np.testing.assert_array_equal(batch.images[k], expected[ep][i][0])
            assert batch.captions[k] == expected[ep][i][1]
    # Arbitrary order and repeats.
    batch = store.read_frames("ep-a", [77, 3, 77, 41])
    assert [c.split()[-2] for c in batch.captions] == ["77", "3", "77", "41"]
    enc = store.read_frames("ep-a", [5], decode=False)
    assert isinstance(enc.images[0], bytes) and enc.images[0][:4] == b"\x89PNG"
    with pytest.raises(IndexError, match="100 frames"):
        store.read_frames("ep-a", [100])
    with pytest.raises(KeyError, match="nope"):
        store.num_frames("nope")
    # Pickles without its file handles (grain workers).
    clone = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(
        clone.read_frames("ep-a", [50]).images, store.read_frames("ep-a", [50]).images
    )
    store.close()
    assert schema.read_frames(store_dir, "ep/b", [32]).captions == ["episode 1 frame 32 é"]


def test_jpeg_and_index_every_one(tmp_path):
    w = DatasetWriter(
        tmp_path, fps=4, height=H, width=W, image_format="jpeg", frames_per_shard=8, index_every=1
    )
    w.write_episode("e", _frames(2, 20))
    meta = w.finalize()
    assert len(meta.episodes[0].shards[0].offsets) == 8
    batch = schema.FrameStore(tmp_path).read_window("e", 2, 5, 3)
    assert batch.images.shape == (5, H, W, 3)
    assert batch.captions[1] == "episode 2 frame 5 é"


def test_tensorflow_reads_and_writes_the_same_bytes(store_dir, tmp_path):
    tf = pytest.importorskip("tensorflow")
    shard = os.path.join(store_dir, "ep-a.00001.tfrecord")
    records = list(tf.data.TFRecordDataset(shard).as_numpy_iterator())
    assert records == list(schema.iter_records(shard))
    ex = tf.train.Example.FromString(records[0])
    f = ex.features.feature
    assert f["frame_index"].int64_list.value == [40]
    assert f["episode_id"].bytes_list.value == [b"ep-a"]
    assert f["caption"].bytes_list.value[0].decode() == "episode 0 frame 40 é"
    # Our parser reads protobuf's serialization (its own map order) to the same values.
    assert schema.decode_example(ex.SerializeToString()) == schema.decode_example(records[0])
    ex2 = tf.train.Example()
    ex2.features.feature["neg"].int64_list.value.extend([-5, 2**40])
    ex2.features.feature["fl"].float_list.value.extend([0.5, -2.0])
    ex2.features.feature["b"].bytes_list.value.extend([b"", b"xy"])
    ours = schema.encode_example(
        {"neg": [-5, 2**40], "fl": [0.5, -2.0], "b": [b"", b"xy"]},
        {"neg": "int64", "fl": "float", "b": "bytes"},
    )
    assert tf.train.Example.FromString(ours) == ex2
    assert schema.decode_example(ex2.SerializeToString()) == schema.decode_example(ours)
    assert schema.decode_example(ours) == {"neg": [-5, 2**40], "fl": [0.5, -2.0], "b": [b"", b"xy"]}
    # TF's record writer frames identically.
    path = str(tmp_path / "tf.tfrecord")
    with tf.io.TFRecordWriter(path) as tw:
        tw.write(records[0])
    with open(path, "rb") as fh:
        assert fh.read() == schema.frame_record(records[0])


def _record_span(store_dir, file, record):
    offsets = schema.scan_offsets(os.path.join(store_dir, file))
    return offsets[record], (offsets + [os.path.getsize(os.path.join(store_dir, file))])[record + 1]


def _flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


@pytest.mark.parametrize("where", ["data", "length"])
def test_corrupt_record_names_file_and_record(store_dir, where):
    file = "ep-a.00001.tfrecord"
    path = os.path.join(store_dir, file)
    start, end = _record_span(store_dir, file, 9)  # frame 49
    _flip(path, start + 3 if where == "length" else (start + end) // 2)
    store = schema.FrameStore(store_dir)
    reason = "bad length CRC" if where == "length" else "bad data CRC"
    with pytest.raises(schema.RecordError, match=f"{file}: record 9: {reason}") as e:
        store.read_frames("ep-a", [48, 49])
    assert e.value.path == path and e.value.record_index == 9
    assert store.read_frames("ep-a", [48]).indices.tolist() == [48]
    skipping = schema.FrameStore(store_dir, skip_bad=True)
    batch = skipping.read_window("ep-a", 44, 8)
    expected = [i for i in range(44, 52) if i != 49]
    if where == "length":  # the rest of the index chunk (frames 49..53) is unreachable
        expected = [i for i in range(44, 52) if i < 49]
    assert batch.indices.tolist() == expected
    assert skipping.num_bad == 8 - len(expected)
    assert skipping.bad_records[0][:2] == (path, 9)


def test_truncated_file(store_dir):
    file = "ep-a.00002.tfrecord"
    path = os.path.join(store_dir, file)
    start, end = _record_span(store_dir, file, 19)
    with open(path, "r+b") as f:
        f.truncate(start + 30)
    store = schema.FrameStore(store_dir)
    with pytest.raises(schema.RecordError, match=f"{file}: record 19: truncated"):
        store.read_frames("ep-a", [99])
    store = schema.FrameStore(store_dir, skip_bad=True)
    assert store.read_frames("ep-a", [98, 99]).indices.tolist() == [98]
    assert store.num_bad == 1


def _rewrite_record(store_dir, file, record, data):
    """Replaces one record (validly framed) and fixes the offsets in metadata.json."""
    path = os.path.join(store_dir, file)
    records = list(schema.iter_records(path))
    records[record] = data
    with open(path, "wb") as f:
        for r in records:
            f.write(schema.frame_record(r))
    meta = json.loads(open(os.path.join(store_dir, "metadata.json")).read())
    offsets = schema.scan_offsets(path)
    for ep in meta["episodes"]:
        for s in ep["shards"]:
            if s["file"] == file:
                s["offsets"] = offsets[:: meta["index_every"]]
    with open(os.path.join(store_dir, "metadata.json"), "w") as f:
        json.dump(meta, f)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda f: f.pop("caption"), "missing feature 'caption'"),
        (lambda f: f.update(height=[H + 1]), f"record says {H + 1}x{W}"),
        (lambda f: f.update(frame_index=[3]), "expected 'ep/b' frame 2"),
        (lambda f: f.update(image=[b"not an image"]), "cannot decode image"),
    ],
)
def test_bad_content_names_record(store_dir, mutate, message):
    file = schema.shard_file_name("ep/b", 0)
    features = schema.decode_example(list(schema.iter_records(os.path.join(store_dir, file)))[2])
    mutate(features)
    _rewrite_record(store_dir, file, 2, schema.encode_example(features))
    store = schema.FrameStore(store_dir)
    with pytest.raises(schema.RecordError, match=f"{file}: record 2: .*{message}"):
        store.read_frames("ep/b", [2])
    skipping = schema.FrameStore(store_dir, skip_bad=True)
    assert skipping.read_frames("ep/b", [1, 2, 3]).indices.tolist() == [1, 3]


def test_wrong_image_size_in_pixels(store_dir):
    file = schema.shard_file_name("ep/b", 0)
    features = schema.decode_example(list(schema.iter_records(os.path.join(store_dir, file)))[0])
    features["image"] = [schema.encode_image(np.zeros((H, W + 2, 3), np.uint8))]
    _rewrite_record(store_dir, file, 0, schema.encode_example(features))
    with pytest.raises(schema.RecordError, match=f"record 0: decoded image is {H}x{W + 2}"):
        schema.FrameStore(store_dir).read_frames("ep/b", [0])


def test_malformed_protobuf(store_dir):
    file = schema.shard_file_name("ep/b", 0)
    _rewrite_record(store_dir, file, 1, b"\x0a\xff\xff\x01garbage")
    with pytest.raises(schema.RecordError, match="record 1: malformed tf.train.Example"):
        schema.FrameStore(store_dir).read_frames("ep/b", [1])


def test_bad_metadata(tmp_path, store_dir):
    with pytest.raises(schema.DataError, match="no metadata"):
        schema.FrameStore(tmp_path / "empty")
    meta_path = os.path.join(store_dir, "metadata.json")
    meta = json.loads(open(meta_path).read())
    meta["episodes"][0]["shards"][1]["first_frame"] = 41
    open(meta_path, "w").write(json.dumps(meta))
    with pytest.raises(schema.DataError, match="metadata.json: episode 'ep-a': shard"):
        schema.FrameStore(store_dir)
    open(meta_path, "w").write("{")
    with pytest.raises(schema.DataError, match="metadata.json: not valid JSON"):
        schema.FrameStore(store_dir)


def test_writer_rejects_bad_frames(tmp_path):
    w = DatasetWriter(tmp_path, fps=8, height=H, width=W)
    with pytest.raises(schema.DataError, match=r"episode 'e' frame 1: image is \(4, 4, 3\)"):
        w.write_episode(
            "e", [(np.zeros((H, W, 3), np.uint8), "a"), (np.zeros((4, 4, 3), np.uint8), "b")]
        )
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tfrecord")]
    assert not [n for n in os.listdir(tmp_path) if schema.is_temp_name(n)]


def test_crash_mid_shard_leaves_no_complete_looking_file(tmp_path):
    def crashing():
        yield from _frames(0, 45)
        raise RuntimeError("decoder died")

    w = DatasetWriter(tmp_path, fps=8, height=H, width=W, frames_per_shard=20)
    with pytest.raises(RuntimeError, match="decoder died"):
        w.write_episode("e", crashing())
    names = sorted(os.listdir(tmp_path))
    # Two complete shards, no third, no metadata, no temporary file.
    assert [n for n in names if n.endswith(".tfrecord")] == ["e.00000.tfrecord", "e.00001.tfrecord"]
    assert "metadata.json" not in names and not [n for n in names if schema.is_temp_name(n)]
    # A hard kill leaves a temporary file: the next writer removes it, then resumes.
    stale = tmp_path / ".e.00002.tfrecord.tmp-99999"
    stale.write_bytes(b"partial")
    w = DatasetWriter(tmp_path, fps=8, height=H, width=W, frames_per_shard=20)
    assert w.removed_temp_files == [stale.name] and not stale.exists()
    w.write_episode("e", _frames(0, 50))
    w.finalize()
    assert (w.stats.shards_resumed, w.stats.shards_written) == (2, 1)
    assert schema.FrameStore(tmp_path).read_frames("e", [49]).captions == ["episode 0 frame 49 é"]
    # A finished episode is skipped on rerun; a different layout is refused.
    w = DatasetWriter(tmp_path, fps=8, height=H, width=W, frames_per_shard=20)
    assert w.add_finished_episode("e").num_frames == 50
    with pytest.raises(schema.DataError, match="use a fresh output directory"):
        DatasetWriter(tmp_path, fps=8, height=H, width=W, frames_per_shard=10).add_finished_episode(
            "e"
        )


def test_frame_record_layout():
    rec = schema.frame_record(b"abc")
    assert struct.unpack("<Q", rec[:8])[0] == 3 and rec[12:15] == b"abc" and len(rec) == 19


def _data_error_classes() -> set[type]:
    """Every exception class defined in the modules of nuwa_jax.data."""
    import importlib
    import inspect
    import pkgutil

    import nuwa_jax.data

    found = set()
    for info in pkgutil.iter_modules(nuwa_jax.data.__path__):
        module = importlib.import_module(f"nuwa_jax.data.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == module.__name__:
                found.add(cls)
    return found


@pytest.mark.faults
def test_errors_survive_pickling():
    """Grain worker processes pickle an error to the parent: every data error must come
    back with its message and fields (RecordError once came back as a TypeError)."""
    from nuwa_jax.data import captions, convert_videos

    errors = [
        schema.DataError("store/metadata.json: bad metadata"),
        schema.RecordError("store/ep.00001.tfrecord", 7, "bad data CRC at offset 96"),
        convert_videos.ConversionError("clip.mp4: no video stream"),
        convert_videos.CaptionError("clip.srt", 12, "bad timestamp '00:0x'"),
        captions.TextContextError("captions cut at 77 tokens"),
        schema._WireError("truncated varint"),
    ]
    assert {type(e) for e in errors} == _data_error_classes(), "a new error class: test it here"
    for error in errors:
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error) and str(back) == str(error) and back.args == error.args
        assert vars(back) == vars(error)
    record = pickle.loads(pickle.dumps(errors[1]))
    assert (record.path, record.record_index, record.reason) == (
        "store/ep.00001.tfrecord",
        7,
        "bad data CRC at offset 96",
    )
    assert str(record) == "store/ep.00001.tfrecord: record 7: bad data CRC at offset 96"
