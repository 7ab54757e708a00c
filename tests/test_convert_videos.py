"""Video converter: small PyAV-written videos, SRT / VTT / JSON / CSV captions, errors,
--skip_bad, resuming, crash safety."""

from __future__ import annotations

import collections
import os

import av
import numpy as np
import pytest

from nuwa_jax.data import captions, schema
from nuwa_jax.data import convert_videos as cv
from nuwa_jax.workdir_lock import WorkdirLock, WorkdirLockedError


def write_video(path, num_frames, rate, codec="mpeg4", size=(40, 32), rotation=None):
    """Frame i is a flat grey of level 8 * i (so resampling can be checked by value); with
    `rotation` (display matrix, degrees counter-clockwise) the left half is black and the
    right half white instead."""
    w, h = size
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=rate)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.bit_rate = 20_000_000  # near-lossless: grey levels survive to +-1
        if rotation is not None:
            s.set_display_rotation(rotation)
        for i in range(num_frames):
            image = np.full((h, w, 3), 8 * i, np.uint8)
            if rotation is not None:
                image[:, : w // 2], image[:, w // 2 :] = 0, 255
            frame = av.VideoFrame.from_ndarray(image, "rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


SRT = """1
00:00:00,000 --> 00:00:01,500
<i>first</i> caption

2
00:00:01,500 --> 00:00:03,000
second
"""


@pytest.fixture()
def dirs(tmp_path):
    videos, caps = tmp_path / "videos", tmp_path / "captions"
    videos.mkdir()
    caps.mkdir()
    write_video(videos / "a.mp4", 30, 10)  # 3.0 s
    (caps / "a.srt").write_text(SRT)
    write_video(videos / "b.mkv", 24, 12)  # 2.0 s
    (caps / "b.json").write_text('{"0": "start", "12": "middle"}')
    return videos, caps, tmp_path / "out"


def test_convert_srt_and_json(dirs):
    videos, caps, out = dirs
    meta, summary = cv.convert(
        str(videos), str(caps), str(out), resolution=16, fps=5, frames_per_shard=4, index_every=2
    )
    assert summary.converted == ["a.mp4", "b.mkv"] and not summary.skipped
    assert [(e.id, e.num_frames) for e in meta.episodes] == [("a", 15), ("b", 10)]
    store = schema.FrameStore(out)
    a = store.read_frames("a", range(15))
    assert a.images.shape == (15, 16, 16, 3)
    assert a.captions == ["first caption"] * 8 + ["second"] * 7
    # Output frame j (t = 0.2 j) shows source frame 2 j (grey level 16 j).
    np.testing.assert_allclose(a.images.mean(axis=(1, 2, 3)), 16 * np.arange(15), atol=3)
    b = store.read_window("b", 0, 10)
    src = np.floor(np.arange(10) * 0.2 * 12 + 1e-6).astype(int)
    assert b.captions == ["start" if i < 12 else "middle" for i in src]
    np.testing.assert_allclose(b.images.mean(axis=(1, 2, 3)), 8 * src, atol=3)
    assert meta.episodes[1].extra["source_frames"] == 24
    assert meta.episodes[1].extra["captions"] == "b.json"
    # The converter records the captions: the longest, and every caption's frames.
    assert (meta.captions.longest, meta.captions.max_utf8_bytes) == ("first caption", 13)
    want = collections.Counter(a.captions + b.captions)
    assert captions.read_file(out / meta.captions.file) == want
    # A rerun skips finished episodes.
    _, again = cv.convert(
        str(videos), str(caps), str(out), resolution=16, fps=5, frames_per_shard=4, index_every=2
    )
    assert again.resumed == ["a.mp4", "b.mkv"] and not again.converted


def test_webm_vtt_csv_and_native_fps(tmp_path):
    videos, caps = tmp_path / "v", tmp_path / "c"
    videos.mkdir()
    caps.mkdir()
    write_video(videos / "w.webm", 12, 6, codec="libvpx", size=(32, 48))
    (caps / "w.vtt").write_text(
        "WEBVTT\n\nNOTE a note\n\ncue-1\n00:00.000 --> 00:01.000 align:start\nhello\n\n"
        "00:01.500 --> 00:02.000\nworld\n"
    )
    write_video(videos / "c.avi", 6, 6)
    (caps / "c.csv").write_text('frame,caption\n0,zero\n3,"three, with comma"\n')
    meta, summary = cv.convert(str(videos), str(caps), str(tmp_path / "o"), resolution=16, fps=0)
    store = schema.FrameStore(tmp_path / "o")
    w = store.read_frames("w", range(12))
    assert w.captions == ["hello"] * 6 + [""] * 3 + ["world"] * 3 and summary.gap_frames == 3
    assert store.read_frames("c", range(6)).captions == ["zero"] * 3 + ["three, with comma"] * 3


def _expect_error(dirs, message, **kw):
    videos, caps, out = dirs
    with pytest.raises(cv.ConversionError, match=message):
        cv.convert(str(videos), str(caps), str(out), resolution=16, fps=5, **kw)


def test_errors_name_the_file(dirs):
    videos, caps, out = dirs
    (videos / "c.mp4").write_bytes(os.urandom(2000))
    (caps / "c.json").write_text('["x"]')
    _expect_error(dirs, r"c\.mp4: unreadable video")
    (videos / "c.mp4").unlink()
    write_video(videos / "d.avi", 10, 10)
    _expect_error(dirs, r"d\.avi: missing caption file: none of .*d\.json")
    (caps / "d.srt").write_text("1\n00:00:00,000 --> 00:00:01,800\nlate\n")  # video is 1.0 s
    _expect_error(dirs, r"d\.srt:2: caption interval 0\.000-1\.800 s ends past the end of .*d\.avi")
    (caps / "d.srt").write_text("1\n00:00:00,000 --> 00:00:00,500\nok\n\n2\n00:00:00,5 -> 1\nx\n")
    _expect_error(dirs, r"d\.srt:5: expected a cue timing line")
    (caps / "d.srt").write_text("1\n00:00:00,000 --> 00:00:0x,500\nbad\n")
    _expect_error(dirs, r"d\.srt:2: bad timestamp '00:00:0x,500'")
    (caps / "d.srt").unlink()
    (caps / "d.json").write_text('{"0": "a", "10": "b"}')  # 10 frames: 0..9
    _expect_error(dirs, r"d\.json: caption for frame 10, but .*d\.avi has 10 frames")
    (caps / "d.csv").write_text("0,a\n")
    _expect_error(dirs, r"d\.avi: ambiguous captions")
    assert not (out / "metadata.json").exists()


def test_skip_bad_counts_and_cli(dirs, capsys):
    videos, caps, out = dirs
    (videos / "c.mp4").write_bytes(b"\x00" * 500)
    (caps / "c.json").write_text('["x"]')
    write_video(videos / "d.avi", 10, 10)
    (videos / "e.mp4").write_bytes((videos / "a.mp4").read_bytes())
    (caps / "e.srt").write_text("1\n00:00:00,000 --> 00:00:09,000\ntoo long\n")
    summary = cv.main(
        [
            "--videos",
            str(videos),
            "--captions",
            str(caps),
            "--out",
            str(out),
            "--resolution",
            "16",
            "--fps",
            "5",
            "--skip_bad",
        ]
    )
    assert summary.converted == ["a.mp4", "b.mkv"]
    assert [v for v, _ in summary.skipped] == ["c.mp4", "d.avi", "e.mp4"]
    printed = capsys.readouterr().out
    assert "3 skipped" in printed and "skipped d.avi: d.avi: missing caption file" in printed
    assert schema.FrameStore(out).episodes == ("a", "b")


def test_crash_mid_shard_then_resume(dirs, monkeypatch):
    videos, caps, out = dirs
    kw = dict(resolution=16, fps=5, frames_per_shard=4, index_every=2)
    real = cv.resize_and_crop
    calls = [0]

    def dying(image, resolution):
        calls[0] += 1
        if calls[0] == 10:  # frame 9 of episode 'a': shards 0, 1 done, shard 2 half done
            raise RuntimeError("killed")
        return real(image, resolution)

    monkeypatch.setattr(cv, "resize_and_crop", dying)
    with pytest.raises(RuntimeError, match="killed"):
        cv.convert(str(videos), str(caps), str(out), **kw)
    names = sorted(os.listdir(out))
    assert [n for n in names if n.endswith(".tfrecord")] == ["a.00000.tfrecord", "a.00001.tfrecord"]
    assert "metadata.json" not in names and not [n for n in names if schema.is_temp_name(n)]
    monkeypatch.setattr(cv, "resize_and_crop", real)
    meta, summary = cv.convert(str(videos), str(caps), str(out), **kw)
    assert summary.shards_resumed == 2 and summary.converted == ["a.mp4", "b.mkv"]
    clean_meta, _ = cv.convert(str(videos), str(caps), str(out) + "_clean", **kw)
    for e, c in zip(meta.episodes, clean_meta.episodes):
        assert e.num_frames == c.num_frames
        for s in e.shards:
            assert (out / s.file).read_bytes() == (out.parent / "out_clean" / s.file).read_bytes()
    assert schema.FrameStore(out).read_frames("a", [9]).captions == ["second"]


def test_caption_parsers(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('{"2": "b", "0": "a"}')
    caps = cv.parse_json_captions(str(p))
    assert [caps.at(i) for i in range(4)] == ["a", "a", "b", "b"]
    p.write_text('{"1": "b"}')
    with pytest.raises(
        cv.ConversionError, match="x.json:key '1': the first caption is for frame 1"
    ):
        cv.parse_json_captions(str(p))
    p.write_text('["a", 3]')
    with pytest.raises(cv.ConversionError, match="x.json:item 1: caption is int"):
        cv.parse_json_captions(str(p))
    p = tmp_path / "x.csv"
    p.write_text("0,a\nzz,b\n")
    with pytest.raises(cv.ConversionError, match="x.csv:2: frame 'zz' is not an integer"):
        cv.parse_csv_captions(str(p))
    p = tmp_path / "x.vtt"
    p.write_text("00:00.000 --> 00:01.000\nhi\n")
    with pytest.raises(cv.ConversionError, match="x.vtt:1: a WebVTT file must start"):
        cv.parse_timed_captions(str(p))
    p = tmp_path / "x.srt"
    p.write_text("1\n00:00:02,000 --> 00:00:01,000\nbackwards\n")
    with pytest.raises(cv.ConversionError, match="x.srt:2: cue ends"):
        cv.parse_timed_captions(str(p))
    frame = np.zeros((30, 50, 3), np.uint8)
    frame[:, 25:] = 255
    out = cv.resize_and_crop(frame, 12)
    assert out.shape == (12, 12, 3) and out[:, :5].max() == 0 and out[:, 7:].min() == 255


def test_tfds_flintstones_hd_builder(dirs, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    from nuwa_jax.data import tfds_builders

    videos, caps, _ = dirs
    manual = tmp_path / "manual"
    manual.mkdir()
    os.rename(videos, manual / "videos")
    os.rename(caps, manual / "captions")
    (manual / "test.txt").write_text("b.mkv\n")
    builder = tfds_builders.FlintstonesHd(config="r128", data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual))
    )
    assert builder.info.splits["train"].num_examples == 24  # a.mp4: 3 s at 8 fps
    assert builder.info.splits["test"].num_examples == 16  # b.mkv: 2 s at 8 fps
    test = sorted(
        tfds.as_numpy(builder.as_dataset(split="test")), key=lambda e: int(e["frame_index"])
    )
    assert test[0]["image"].shape == (128, 128, 3)
    assert [e["caption"].decode() for e in test] == ["start"] * 8 + ["middle"] * 8


# ---------------------------------------------------------------------------------------
# Reliability: entities, overlaps, BOMs, one-line CLI errors, source fingerprints, lock.
# ---------------------------------------------------------------------------------------
def test_cue_text_entities_decoded_after_tags(tmp_path):
    p = tmp_path / "x.srt"
    p.write_text(
        "1\n00:00:00,000 --> 00:00:01,000\n<i>Tom &amp; Jerry</i> &lt;b&gt; it&#39;s &#x263A;\n"
    )
    # '&lt;b&gt;' is text: decoded after the tags are stripped, so it is not taken for one.
    assert cv.parse_timed_captions(str(p)).at(0.5) == "Tom & Jerry <b> it's \u263a"
    p = tmp_path / "x.vtt"
    p.write_text("WEBVTT\n\n00:00.000 --> 00:01.000\n<c.loud>fish &amp; chips</c>&nbsp;!\n")
    assert cv.parse_timed_captions(str(p)).at(0.5) == "fish & chips\xa0!"


def test_overlapping_cues_take_both_texts_and_warn(tmp_path, caplog):
    p = tmp_path / "x.srt"
    p.write_text(  # the later-starting cue first in the file; a third cue repeats a text
        "1\n00:00:01,000 --> 00:00:03,000\nsecond\n\n"
        "2\n00:00:00,000 --> 00:00:02,000\nfirst\n\n"
        "3\n00:00:02,500 --> 00:00:04,000\nsecond\n\n"
        "4\n00:00:05,000 --> 00:00:06,000\nalone\n"
    )
    with caplog.at_level("WARNING"):
        caps = cv.parse_timed_captions(str(p))
    got = [caps.at(t) for t in (0.5, 1.5, 2.2, 2.7, 3.5, 4.5, 5.5)]
    assert got == ["first", "first second", "second", "second", "second", None, "alone"]
    warning = caplog.text
    assert str(p) in warning and "2 pairs of cues overlap" in warning
    assert "line 6 (0.000-2.000 s) and line 2 (1.000-3.000 s)" in warning
    assert "line 2 (1.000-3.000 s) and line 10 (2.500-4.000 s)" in warning
    assert "joined by a space, in start order" in warning
    caplog.clear()
    p.write_text("1\n00:00:00,000 --> 00:00:01,000\na\n\n2\n00:00:01,000 --> 00:00:02,000\nb\n")
    with caplog.at_level("WARNING"):
        caps = cv.parse_timed_captions(str(p))  # touching cues do not overlap
    assert [caps.at(t) for t in (0.5, 1.0, 1.5)] == ["a", "b", "b"] and not caplog.text


@pytest.mark.faults
@pytest.mark.parametrize(
    "name, text",
    [
        ("x.json", '{"0": "zero", "2": "two"}'),
        ("x.csv", "frame,caption\n0,zero\n2,two\n"),
        ("x.srt", "1\n00:00:00,000 --> 00:00:02,000\nzero\n"),
        ("x.vtt", "WEBVTT\n\n00:00.000 --> 00:02.000\nzero\n"),
    ],
)
def test_a_bom_is_accepted_in_every_caption_format(tmp_path, name, text):
    p = tmp_path / name
    p.write_bytes(b"\xef\xbb\xbf" + text.encode())
    caps = cv.load_captions(str(p))
    assert caps.at(0 if isinstance(caps, cv.FrameCaptions) else 0.5) == "zero"


@pytest.mark.faults
def test_caption_errors_carry_file_and_line(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text('frame,caption\n0,"a\nb"\nzz,c\n')  # a quoted caption spans lines 2-3
    with pytest.raises(cv.CaptionError) as e:
        cv.parse_csv_captions(str(p))
    assert (e.value.path, e.value.where) == (str(p), 4) and str(e.value).startswith(f"{p}:4: ")
    p.write_text("0,a\n0,b\n")
    with pytest.raises(cv.CaptionError, match=r"x\.csv:2: frame 0 captioned twice \(also at 1\)"):
        cv.parse_csv_captions(str(p))
    p = tmp_path / "x.json"
    p.write_text('{"0": "a",\n "1": }')
    with pytest.raises(cv.CaptionError, match=r"x\.json:2: not valid JSON"):
        cv.parse_json_captions(str(p))
    p = tmp_path / "x.srt"
    p.write_bytes(b"1\n00:00:00,000 --> 00:00:01,000\n\xff\xfe\n")
    with pytest.raises(cv.CaptionError, match=r"x\.srt: not UTF-8 text"):
        cv.parse_timed_captions(str(p))


def _cli(videos, caps, out, *extra):
    args = ["--videos", str(videos), "--captions", str(caps), "--out", str(out)]
    return cv.main(args + ["--resolution", "16", "--fps", "5", *extra])


@pytest.mark.faults
def test_cli_bad_input_is_one_line_and_status_2(dirs, capsys, monkeypatch):
    videos, caps, out = dirs
    cases = [
        ("b.json", '{"0": "a", "x": "b"}', f"{caps / 'b.json'}:key 'x': frame 'x' is not an"),
        ("a.srt", "1\n00:00:00,000 --> 00:00:0x,000\nbad\n", f"{caps / 'a.srt'}:2: bad timestamp"),
        ("a.srt", "1\n00:00:00,000 --> 00:00:09,000\nlong\n", f"{caps / 'a.srt'}:2: caption"),
    ]
    for name, text, want in cases:
        (caps / name).write_text(text)
        with pytest.raises(SystemExit) as e:
            _cli(videos, caps, out)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1, err
        assert err.startswith(f"convert_videos: {want}") and "Traceback" not in err, err
    (caps / "a.srt").write_text(SRT)
    (caps / "b.json").write_text('{"0": "start"}')
    (videos / "c.mp4").write_bytes(b"\x00" * 500)
    (caps / "c.json").write_text('["x"]')
    with pytest.raises(SystemExit) as e:
        _cli(videos, caps, out)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"convert_videos: {videos / 'c.mp4'}: unreadable")
    assert err.count("\n") == 1
    # Every video skipped: still one line.
    with pytest.raises(SystemExit):
        _cli(videos / "..", caps, tmp := out.parent / "only_bad", "--skip_bad")
    assert capsys.readouterr().err.count("\n") == 1 and not (tmp / "metadata.json").exists()
    # Any other exception is a bug: it is not caught.
    (videos / "c.mp4").unlink()
    monkeypatch.setattr(cv, "resize_and_crop", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        _cli(videos, caps, out.parent / "fresh")


@pytest.mark.faults
def test_cli_module_exits_2_without_a_traceback(tmp_path):
    import subprocess
    import sys

    videos, caps = tmp_path / "v", tmp_path / "c"
    videos.mkdir()
    caps.mkdir()
    write_video(videos / "a.mp4", 5, 5)
    (caps / "a.csv").write_text("0,a\n1,b,c\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run(
        [sys.executable, "-m", "nuwa_jax.data.convert_videos", "--videos", str(videos),
         "--captions", str(caps), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=root), timeout=300,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        f"convert_videos: {caps / 'a.csv'}:2: expected 2 columns (frame,caption), got 3"
    )
    assert "Traceback" not in run.stderr


def test_changed_sources_are_converted_again(dirs, caplog):
    videos, caps, out = dirs
    kw = dict(resolution=16, fps=5, frames_per_shard=4, index_every=2)
    meta, _ = cv.convert(str(videos), str(caps), str(out), **kw)
    fp = meta.episodes[0].extra["sources"]
    assert fp["captions"]["file"] == "a.srt" and fp["video"]["size"] > 0
    store_a = lambda: schema.FrameStore(out).read_frames("a", range(15)).captions  # noqa: E731
    # The captions change, timings and size kept: only 'a' is redone.
    (caps / "a.srt").write_text(SRT.replace("first", "FIRST"))
    with caplog.at_level("WARNING"):
        _, s = cv.convert(str(videos), str(caps), str(out), **kw)
    assert [v for v, _ in s.redone] == ["a.mp4"] and s.converted == ["a.mp4"]
    assert s.resumed == ["b.mkv"] and "the caption file a.srt changed" in s.redone[0][1]
    assert "a.mp4: converting episode 'a' again: the caption file a.srt changed" in caplog.text
    assert store_a() == ["FIRST caption"] * 8 + ["second"] * 7
    assert "redone a.mp4" in str(s)
    # A shorter video: the old episode's extra shard files go too.
    write_video(videos / "a.mp4", 10, 10)  # 1.0 s: 5 frames, 2 shards (was 15, 4 shards)
    (caps / "a.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nshort\n")
    _, s = cv.convert(str(videos), str(caps), str(out), **kw)
    assert "the video changed" in s.redone[0][1]
    assert sorted(n for n in os.listdir(out) if n.startswith("a.")) == [
        "a.00000.tfrecord",
        "a.00001.tfrecord",
    ]
    assert schema.FrameStore(out).read_frames("a", range(5)).captions == ["short"] * 5
    # --gap_caption is part of the sources; so is the caption file's name.
    _, s = cv.convert(str(videos), str(caps), str(out), gap_caption="-", **kw)
    assert sorted(v for v, _ in s.redone) == ["a.mp4", "b.mkv"]
    (caps / "b.json").rename(caps / "b.csv")
    (caps / "b.csv").write_text("0,start\n12,middle\n")
    _, s = cv.convert(str(videos), str(caps), str(out), gap_caption="-", **kw)
    assert s.redone == [("b.mkv", "the captions are now b.csv (were b.json)")]
    # A store without a recorded fingerprint (an older converter) is redone, once.
    os.remove(out / cv.SOURCES_DIR / "a.json")
    _, s = cv.convert(str(videos), str(caps), str(out), gap_caption="-", **kw)
    assert [v for v, _ in s.redone] == ["a.mp4"] and "no fingerprint" in s.redone[0][1]
    _, s = cv.convert(str(videos), str(caps), str(out), gap_caption="-", **kw)
    assert s.resumed == ["a.mp4", "b.mkv"] and not s.redone and not s.converted


@pytest.mark.faults
def test_changed_captions_of_an_interrupted_episode_do_not_keep_its_shards(dirs, monkeypatch):
    videos, caps, out = dirs
    kw = dict(resolution=16, fps=5, frames_per_shard=4, index_every=2)
    real, calls = cv.resize_and_crop, [0]

    def dying(image, resolution):
        calls[0] += 1
        if calls[0] == 10:  # episode 'a' killed with shards 0 and 1 finished
            raise RuntimeError("killed")
        return real(image, resolution)

    monkeypatch.setattr(cv, "resize_and_crop", dying)
    with pytest.raises(RuntimeError, match="killed"):
        cv.convert(str(videos), str(caps), str(out), **kw)
    monkeypatch.setattr(cv, "resize_and_crop", real)
    (caps / "a.srt").write_text(SRT.replace("first", "FIRST"))
    _, s = cv.convert(str(videos), str(caps), str(out), **kw)
    assert s.shards_resumed == 0 and [v for v, _ in s.redone] == ["a.mp4"]
    assert schema.FrameStore(out).read_frames("a", [0, 8]).captions == ["FIRST caption", "second"]


@pytest.mark.faults
def test_a_second_converter_into_one_folder_is_refused(dirs, capsys):

    videos, caps, out = dirs
    holder = WorkdirLock(out, lock_file=cv.LOCK_FILE)
    with holder:  # a live converter holds the folder (flock: per open file, so this works)
        (out / "_episodes").mkdir()
        (out / "_episodes" / schema.temp_name("a.json").split("/")[-1]).write_text("x")
        with pytest.raises(
            WorkdirLockedError, match=f"held by a live converter: pid {os.getpid()}"
        ):
            cv.convert(str(videos), str(caps), str(out), resolution=16, fps=5)
        with pytest.raises(SystemExit) as e:
            _cli(videos, caps, out)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1
        assert err.startswith(f"convert_videos: {out} is held by a live converter") and (
            str(out / cv.LOCK_FILE) in err
        )
        # The holder's files were left alone (a writer removes temp files it finds).
        assert [n for n in os.listdir(out / "_episodes") if schema.is_temp_name(n)]
    meta, _ = cv.convert(str(videos), str(caps), str(out), resolution=16, fps=5)
    assert len(meta.episodes) == 2 and not (out / cv.LOCK_FILE).exists()


@pytest.mark.parametrize("ext, codec", [("mp4", "mpeg4"), ("webm", "libvpx")])
def test_rotation_metadata_is_honoured(tmp_path, ext, codec):
    videos, caps = tmp_path / "v", tmp_path / "c"
    videos.mkdir()
    caps.mkdir()
    # Stored 40x32 with the left half black; as a phone stores portrait video: 90 degrees
    # clockwise (-90), 90 counter-clockwise, upside down, and none.
    for name, rotation in [("cw", -90), ("ccw", 90), ("flip", 180), ("none", 0)]:
        write_video(videos / f"{name}.{ext}", 3, 5, codec=codec, rotation=rotation)
        (caps / f"{name}.json").write_text('["x", "x", "x"]')
    cv.convert(str(videos), str(caps), str(tmp_path / "o"), resolution=16, fps=0)
    store = schema.FrameStore(tmp_path / "o")

    def dark_side(name):
        image = store.read_frames(name, [0]).images[0].mean(axis=-1)
        sides = dict(top=image[:4], bottom=image[-4:], left=image[:, :4], right=image[:, -4:])
        return min(sides, key=lambda k: sides[k].mean())

    # Displayed upright, the stored left edge is at the top (turned clockwise), at the
    # bottom (counter-clockwise), at the right (half a turn), at the left (no rotation).
    assert [dark_side(n) for n in ("cw", "ccw", "flip", "none")] == [
        "top",
        "bottom",
        "right",
        "left",
    ]
