"""Video outputs: mp4 round trip, atomic writes (no complete-looking file after a crash)."""

import os

import av
import numpy as np
import pytest
from PIL import Image

from nuwa_jax import video_io


def frames(n=12, h=32, w=48):
    t = np.arange(n)[:, None, None, None]
    y = np.arange(h)[None, :, None, None]
    x = np.arange(w)[None, None, :, None]
    c = np.arange(3)[None, None, None, :]
    return ((t * 8 + y * 3 + x * 2 + c * 60) % 256).astype(np.uint8)


def test_mp4_streams_in_chunks_and_round_trips(tmp_path):
    path = str(tmp_path / "v.mp4")
    video = frames()
    n = video_io.write_mp4(path, [video[:5], video[5:]], fps=8)
    assert n == 12 and os.path.exists(path)
    with av.open(path) as c:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert decoded.shape == video.shape
    assert np.abs(decoded.astype(int) - video).mean() < 12  # lossy but the same picture
    assert [p for p in os.listdir(tmp_path) if "partial" in p] == []


def test_crash_mid_video_leaves_no_file(tmp_path):
    path = str(tmp_path / "v.mp4")

    def chunks():
        yield frames()[:4]
        raise RuntimeError("preempted")

    with pytest.raises(RuntimeError, match="preempted"):
        video_io.write_mp4(path, chunks(), fps=8)
    assert os.listdir(tmp_path) == []


def test_float_frames_gif_contact_sheet_filmstrip(tmp_path):
    video = frames().astype(np.float32) / 127.5 - 1
    video_io.write_gif(str(tmp_path / "v.gif"), video, fps=8, max_frames=6)
    with Image.open(tmp_path / "v.gif") as g:
        assert g.n_frames == 6
    video_io.write_contact_sheet(str(tmp_path / "k.png"), video[:5])
    sheet = np.asarray(Image.open(tmp_path / "k.png"))
    assert sheet.shape == (2 * 34 + 2, 3 * 50 + 2, 3)
    idx = video_io.filmstrip_indices(12, 4)
    assert idx.tolist() == [0, 4, 7, 11]
    video_io.write_filmstrip(str(tmp_path / "f.png"), video[idx])
    assert np.asarray(Image.open(tmp_path / "f.png")).shape == (36, 4 * 50 + 2, 3)
    np.testing.assert_array_equal(video_io.to_uint8(video), frames())


def test_odd_sizes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="even frame sizes"):
        video_io.write_mp4(str(tmp_path / "v.mp4"), [frames(h=31)], fps=8)
    assert os.listdir(tmp_path) == []


def test_mp4_writer_keeps_the_frames_asked_for(tmp_path):
    """keep=: the stills' frames, as uint8, by index across write calls; others are not kept."""
    video = frames()
    with video_io.Mp4Writer(str(tmp_path / "v.mp4"), 8, 32, 48, keep=[0, 6, 11]) as writer:
        writer.write(video[:5])
        writer.write(video[5:])
    np.testing.assert_array_equal(writer.kept([6, 0, 11]), video_io.to_uint8(video[[6, 0, 11]]))
    with pytest.raises(KeyError):
        writer.kept([3])
