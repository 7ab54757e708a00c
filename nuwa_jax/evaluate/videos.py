"""The videos an evaluation reads, streamed a chunk of frames at a time (uint8 RGB).

`open_videos(path)` accepts:
- an .mp4 file (what `nuwa_jax.generate` writes; decoded with PyAV);
- a directory of .mp4 files (several generated videos, sorted by name);
- a frame store directory (metadata.json: every episode is a video, with its captions;
  e.g. held-out real episodes, to get the metrics' real-data baseline);
- a directory of .png / .jpg frames (one video, frames in name order).
Every error names the file at fault.
"""

from __future__ import annotations

import abc
import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image

from nuwa_jax.data import schema

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class Video(abc.ABC):
    """A named sequence of (H, W, 3) uint8 frames, read in chunks (subclasses say how)."""

    name: str
    path: str
    num_frames: int
    height: int
    width: int
    captions: list[str] | None = None  # one per frame, when the source has them
    schedule: str | None = None  # 'dod' / 'ar' when the source says how it was generated

    @abc.abstractmethod
    def chunks(self, size: int) -> Iterator[np.ndarray]:
        """The frames in order, `size` at a time, as (k, H, W, 3) uint8 arrays."""

    def _check(self, frames: np.ndarray, where: str) -> np.ndarray:
        if frames.dtype != np.uint8 or frames.shape[1:] != (self.height, self.width, 3):
            raise ValueError(
                f"{where}: frame of {frames.shape[1:]} {frames.dtype}, expected "
                f"({self.height}, {self.width}, 3) uint8"
            )
        return frames


class ArrayVideo(Video):
    """Frames already in memory (library use and tests)."""

    def __init__(
        self,
        name: str,
        frames: np.ndarray,
        captions: list[str] | None = None,
        schedule: str | None = None,
    ):
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.dtype != np.uint8 or frames.shape[-1] != 3:
            raise ValueError(
                f"{name}: expected uint8 (N, H, W, 3), got {frames.dtype} {frames.shape}"
            )
        self.name = self.path = name
        self.frames, self.captions, self.schedule = frames, captions, schedule
        self.num_frames, self.height, self.width = frames.shape[:3]

    def chunks(self, size: int) -> Iterator[np.ndarray]:
        for a in range(0, self.num_frames, size):
            yield self.frames[a : a + size]


def _timings_schedule(mp4: str) -> str | None:
    """The schedule recorded in `<stem>_timings.json` next to a generated mp4, if any."""
    path = os.path.splitext(mp4)[0] + "_timings.json"
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f).get("schedule")
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable timings JSON: {e}") from e


class Mp4Video(Video):
    def __init__(self, path: str):
        import av

        self.path, self.name = path, os.path.basename(path)
        try:
            with av.open(path) as container:
                stream = container.streams.video[0]
                self.height, self.width = stream.codec_context.height, stream.codec_context.width
                count = stream.frames
                if not count:  # not in the header: count the packets
                    count = sum(1 for p in container.demux(stream) if p.size)
        except (av.FFmpegError, IndexError) as e:
            raise ValueError(f"{path}: not a readable video: {e}") from e
        self.num_frames = int(count)
        self.schedule = _timings_schedule(path)

    def chunks(self, size: int) -> Iterator[np.ndarray]:
        import av

        buf = []
        with av.open(self.path) as container:
            for frame in container.decode(video=0):
                buf.append(frame.to_ndarray(format="rgb24"))
                if len(buf) == size:
                    yield self._check(np.stack(buf), self.path)
                    buf = []
        if buf:
            yield self._check(np.stack(buf), self.path)


class ImageDirVideo(Video):
    def __init__(self, path: str, files: list[str]):
        self.path, self.name = path, os.path.basename(os.path.normpath(path))
        self.files = [os.path.join(path, f) for f in files]
        self.num_frames = len(files)
        with Image.open(self.files[0]) as im:
            self.width, self.height = im.size

    def chunks(self, size: int) -> Iterator[np.ndarray]:
        for a in range(0, self.num_frames, size):
            out = []
            for f in self.files[a : a + size]:
                with Image.open(f) as im:
                    out.append(self._check(np.asarray(im.convert("RGB"))[None], f)[0])
            yield np.stack(out)


class FrameStoreVideo(Video):
    def __init__(self, root: str, episode: schema.EpisodeInfo, meta: schema.DatasetMetadata):
        self.root, self.episode_id = root, episode.id
        self.path = f"{root}:{episode.id}"
        self.name = episode.id
        self.num_frames = episode.num_frames
        self.height, self.width = meta.height, meta.width
        self.captions = None  # set by open_videos (read_captions)

    def chunks(self, size: int) -> Iterator[np.ndarray]:
        with schema.FrameStore(self.root) as store:
            for a in range(0, self.num_frames, size):
                batch = store.read_frames(
                    self.episode_id, np.arange(a, min(a + size, self.num_frames))
                )
                yield self._check(batch.images, self.path)

    def read_captions(self) -> list[str]:
        """Every frame's caption (reads the records, decodes no image)."""
        with schema.FrameStore(self.root) as store:
            return store.read_frames(
                self.episode_id, np.arange(self.num_frames), decode=False
            ).captions


def open_videos(path: str) -> list[Video]:
    """The videos at `path` (see the module docstring)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or directory")
    if os.path.isfile(path):
        if not path.lower().endswith(".mp4"):
            raise ValueError(f"{path}: not an .mp4 file (or a directory of videos or frames)")
        return [Mp4Video(path)]
    if os.path.isfile(os.path.join(path, schema.METADATA_FILE)):
        meta = schema.load_metadata(path)
        if meta.latent is not None:
            raise ValueError(f"{path}: a latent store holds no images")
        videos: list[Any] = [FrameStoreVideo(path, ep, meta) for ep in meta.episodes]
        for v in videos:
            v.captions = v.read_captions()
        return videos
    names = sorted(os.listdir(path))
    mp4s = [n for n in names if n.lower().endswith(".mp4") and not n.startswith(".")]
    if mp4s:
        return [Mp4Video(os.path.join(path, n)) for n in mp4s]
    images = [n for n in names if n.lower().endswith(IMAGE_SUFFIXES) and not n.startswith(".")]
    if images:
        return [ImageDirVideo(path, images)]
    raise ValueError(f"{path}: holds no .mp4 files, no frame store and no .png/.jpg frames")
