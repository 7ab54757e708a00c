"""Converts a folder of captioned videos into a FlintstonesHD-format frame store.

For each video `<name>.<mp4|mkv|avi|webm>` under --videos, the captions are the file
`<name>.<json|csv|srt|vtt>` at the same relative path under --captions:
  - JSON list: one caption per frame of the SOURCE video (decode order);
  - JSON object {frame: caption} or CSV `frame,caption` rows (header optional): a
    caption holds from its source frame until the next listed frame; frame 0 must be
    listed;
  - SRT / WebVTT: timed intervals; an output frame takes the caption of the interval
    holding its timestamp, `gap_caption` ('' by default) where none does.
Frames are decoded with PyAV, resampled to --fps by timestamp (each output time takes
the latest source frame at or before it; --fps 0 keeps every source frame), resized
so the shorter side is --resolution and centre-cropped to a square.

Errors name the file (and line, for SRT/VTT): unreadable video, missing or ambiguous
caption file, captions past the video's frames or duration, malformed captions. With
--skip_bad such videos are skipped and listed in the summary instead. Output is
crash-safe and resumable (writer.py): a rerun skips finished episodes and shards.

CLI: python -m nuwa_jax.data.convert_videos --videos DIR --captions DIR --out DIR
     --resolution 128 --fps 8
"""

from __future__ import annotations

import argparse
import bisect
import csv
import dataclasses
import json
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

import av
import numpy as np

from nuwa_jax.data import captions as captions_lib
from nuwa_jax.data import schema
from nuwa_jax.data.writer import DatasetWriter
from nuwa_jax.video_io import resize_and_crop

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".webm")
CAPTION_EXTENSIONS = (".json", ".csv", ".srt", ".vtt")


class ConversionError(schema.DataError):
    """A video that cannot be converted; the message names the file at fault."""


# ---------------------------------------------------------------------------------------
# Captions.
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class FrameCaptions:
    """Captions keyed by source frame: starts[i] begins captions[i] (held to the next)."""

    path: str
    starts: list[int]
    captions: list[str]
    last_frame: int  # the highest frame index the file mentions

    def at(self, frame: int) -> str:
        return self.captions[bisect.bisect_right(self.starts, frame) - 1]


@dataclasses.dataclass
class TimedCaptions:
    """Captions on time intervals [start, end) in seconds (SRT / WebVTT cues)."""

    path: str
    intervals: list[tuple[float, float, str]]
    gap_caption: str = ""

    def at(self, t: float) -> str | None:
        """The caption at time t; None in a gap."""
        for start, end, text in self.intervals:
            if start <= t < end:
                return text
        return None


Captions = FrameCaptions | TimedCaptions


def _frame_key(path: str, key: Any, where: str) -> int:
    try:
        frame = int(str(key).strip())
    except ValueError:
        raise ConversionError(f"{path}: {where}: frame {key!r} is not an integer") from None
    if frame < 0:
        raise ConversionError(f"{path}: {where}: negative frame {frame}")
    return frame


def _from_mapping(path: str, pairs: list[tuple[int, str]]) -> FrameCaptions:
    if not pairs:
        raise ConversionError(f"{path}: no captions")
    pairs.sort()
    frames = [f for f, _ in pairs]
    if len(set(frames)) != len(frames):
        dup = next(f for f, g in zip(frames, frames[1:]) if f == g)
        raise ConversionError(f"{path}: frame {dup} captioned twice")
    if frames[0] != 0:
        raise ConversionError(
            f"{path}: the first caption is for frame {frames[0]}; frame 0 "
            "must have one (a caption holds until the next listed frame)"
        )
    return FrameCaptions(path, frames, [c for _, c in pairs], frames[-1])


def parse_json_captions(path: str) -> FrameCaptions:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(f"{path}: not valid JSON: {e}") from e
    if isinstance(obj, list):
        for i, c in enumerate(obj):
            if not isinstance(c, str):
                raise ConversionError(f"{path}: item {i} is {type(c).__name__}, not a string")
        if not obj:
            raise ConversionError(f"{path}: no captions")
        return FrameCaptions(path, list(range(len(obj))), list(obj), len(obj) - 1)
    if isinstance(obj, dict):
        pairs = []
        for k, c in obj.items():
            if not isinstance(c, str):
                raise ConversionError(f"{path}: key {k!r}: caption is {type(c).__name__}")
            pairs.append((_frame_key(path, k, f"key {k!r}"), c))
        return _from_mapping(path, pairs)
    raise ConversionError(f"{path}: expected a list of captions or a {{frame: caption}} object")


def parse_csv_captions(path: str) -> FrameCaptions:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    pairs = []
    for n, row in enumerate(rows, start=1):
        if not row or all(not c.strip() for c in row):
            continue
        if n == 1 and row[0].strip().lower() == "frame":
            continue  # header
        if len(row) != 2:
            raise ConversionError(f"{path}:{n}: expected 2 columns (frame,caption), got {len(row)}")
        pairs.append((_frame_key(path, row[0], f"line {n}"), row[1]))
    return _from_mapping(path, pairs)


_TIME = re.compile(r"^(?:(\d+):)?(\d{1,2}):(\d{2})[,.](\d{3})$")


def _seconds(path: str, line: int, text: str) -> float:
    m = _TIME.match(text.strip())
    if not m:
        raise ConversionError(f"{path}:{line}: bad timestamp {text.strip()!r}")
    h, mnt, s, ms = (int(g) if g else 0 for g in m.groups())
    if mnt >= 60 or s >= 60:
        raise ConversionError(f"{path}:{line}: bad timestamp {text.strip()!r}")
    return h * 3600 + mnt * 60 + s + ms / 1000


def parse_timed_captions(path: str, gap_caption: str = "") -> TimedCaptions:
    """SRT or WebVTT cues: [index line], 'start --> end [settings]', text lines, blank."""
    vtt = path.lower().endswith(".vtt")
    with open(path, encoding="utf-8-sig") as f:
        lines = f.read().splitlines()
    n = 0
    if vtt:
        if not lines or not lines[0].startswith("WEBVTT"):
            raise ConversionError(f"{path}:1: a WebVTT file must start with 'WEBVTT'")
        n = 1
    intervals: list[tuple[float, float, str]] = []
    while n < len(lines):
        if not lines[n].strip():
            n += 1
            continue
        block_start = n
        block = []
        while n < len(lines) and lines[n].strip():
            block.append(lines[n])
            n += 1
        if vtt and block[0].split()[0] in ("NOTE", "STYLE", "REGION"):
            continue
        timing = next((i for i, b in enumerate(block[:2]) if "-->" in b), None)
        if timing is None:
            raise ConversionError(
                f"{path}:{block_start + 1}: expected a cue timing line "
                f"'start --> end', got {block[0]!r}"
            )
        if not vtt and timing == 1 and not block[0].strip().isdigit():
            raise ConversionError(f"{path}:{block_start + 1}: bad SRT cue number {block[0]!r}")
        line = block_start + timing + 1
        left, _, right = block[timing].partition("-->")
        right_parts = right.split()
        if not right_parts:
            raise ConversionError(f"{path}:{line}: missing end time")
        start, end = _seconds(path, line, left), _seconds(path, line, right_parts[0])
        if end <= start:
            raise ConversionError(
                f"{path}:{line}: cue ends ({end:.3f} s) before it starts ({start:.3f} s)"
            )
        text = " ".join(b.strip() for b in block[timing + 1 :])
        text = re.sub(r"<[^>]+>", "", text)  # WebVTT / SRT inline tags
        intervals.append((start, end, text))
    if not intervals:
        raise ConversionError(f"{path}: no caption cues")
    return TimedCaptions(path, intervals, gap_caption)


def find_caption_file(captions_dir: str, rel_video: str) -> str:
    stem = os.path.splitext(rel_video)[0]
    found = [
        stem + ext
        for ext in CAPTION_EXTENSIONS
        if os.path.exists(os.path.join(captions_dir, stem + ext))
    ]
    if not found:
        raise ConversionError(
            f"{rel_video}: missing caption file: none of "
            f"{', '.join(os.path.join(captions_dir, stem + e) for e in CAPTION_EXTENSIONS)}"
        )
    if len(found) > 1:
        raise ConversionError(f"{rel_video}: ambiguous captions: {', '.join(found)} all exist")
    return os.path.join(captions_dir, found[0])


def load_captions(path: str, gap_caption: str = "") -> Captions:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".json":
        return parse_json_captions(path)
    if ext == ".csv":
        return parse_csv_captions(path)
    if ext in (".srt", ".vtt"):
        return parse_timed_captions(path, gap_caption)
    raise ConversionError(f"{path}: unknown caption format {ext!r}")


# ---------------------------------------------------------------------------------------
# Video.
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class VideoInfo:
    path: str
    num_frames: int  # source frames (from a packet scan, no decoding)
    duration: float  # seconds: last frame's time + one frame
    fps: float  # source average rate


def probe_video(path: str) -> VideoInfo:
    """Frame count and duration by demuxing packets only (cheap): checks captions early."""
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise ConversionError(f"{path}: unreadable video: no video stream")
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
            count, last = 0, None
            for packet in container.demux(stream):
                if packet.size == 0 or packet.pts is None:
                    continue
                count += 1
                t = float(packet.pts * stream.time_base)
                last = t if last is None else max(last, t)
    except ConversionError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise ConversionError(f"{path}: unreadable video: {e}") from e
    if count == 0 or last is None:
        raise ConversionError(f"{path}: unreadable video: no frames")
    return VideoInfo(path, count, last + 1.0 / rate, rate)


def iter_resampled(
    path: str, fps: float, duration: float
) -> Iterator[tuple[int, float, np.ndarray]]:
    """(source frame index, output time, RGB frame) at `fps` (0: every source frame)."""
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            prev: tuple[int, av.VideoFrame] | None = None
            j = 0
            eps = 1e-6  # timestamps from different time bases: ignore float noise
            # Millisecond time bases (mkv, webm) round the last frame's time up to 1 ms.
            end = duration - (min(2e-3, 0.1 / fps) if fps > 0 else 0.0)
            for i, frame in enumerate(container.decode(stream)):
                ts = float(frame.time if frame.time is not None else i / 25.0)
                if fps <= 0:
                    yield i, ts, frame.to_ndarray(format="rgb24")
                    continue
                while prev is not None and j / fps < ts - eps and j / fps < end:
                    yield prev[0], j / fps, prev[1].to_ndarray(format="rgb24")
                    j += 1
                if prev is None:
                    while j / fps < ts - eps and j / fps < end:  # before the first frame
                        yield i, j / fps, frame.to_ndarray(format="rgb24")
                        j += 1
                prev = (i, frame)
            while fps > 0 and prev is not None and j / fps < end:
                yield prev[0], j / fps, prev[1].to_ndarray(format="rgb24")
                j += 1
    except (av.error.FFmpegError, OSError) as e:
        raise ConversionError(f"{path}: unreadable video (while decoding): {e}") from e


def check_captions(captions: Captions, info: VideoInfo) -> None:
    """Captions must lie within the video's frames / duration (half a frame of slack)."""
    if isinstance(captions, FrameCaptions):
        if captions.last_frame >= info.num_frames:
            raise ConversionError(
                f"{captions.path}: caption for frame {captions.last_frame}, but "
                f"{info.path} has {info.num_frames} frames"
            )
        return
    slack = 0.5 / info.fps
    for start, end, _ in captions.intervals:
        if end > info.duration + slack:
            raise ConversionError(
                f"{captions.path}: caption interval {start:.3f}-{end:.3f} s ends past the end "
                f"of {info.path} ({info.duration:.3f} s)"
            )


# ---------------------------------------------------------------------------------------
# Conversion.
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class ConversionSummary:
    converted: list[str] = dataclasses.field(default_factory=list)
    resumed: list[str] = dataclasses.field(default_factory=list)  # finished by an earlier run
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (video, why)
    frames: int = 0
    gap_frames: int = 0  # frames that fell between timed captions
    shards_resumed: int = 0

    def __str__(self) -> str:
        lines = [
            f"converted {len(self.converted)} videos ({self.frames} frames), "
            f"{len(self.resumed)} already done, {len(self.skipped)} skipped, "
            f"{self.shards_resumed} finished shards kept, {self.gap_frames} frames "
            "between timed captions"
        ]
        lines += [f"  skipped {v}: {why}" for v, why in self.skipped]
        return "\n".join(lines)


def find_videos(videos_dir: str) -> list[str]:
    """Video files under `videos_dir` (relative paths, sorted)."""
    if not os.path.isdir(videos_dir):
        raise ConversionError(f"{videos_dir}: not a directory")
    found = []
    for root, _, files in os.walk(videos_dir):
        for name in files:
            if name.lower().endswith(VIDEO_EXTENSIONS):
                found.append(os.path.relpath(os.path.join(root, name), videos_dir))
    return sorted(found)


def episode_frames(
    video: str,
    captions: Captions,
    fps: float,
    resolution: int,
    duration: float,
    gap_count: list[int],
) -> Iterator[tuple[np.ndarray, str]]:
    """(resized frame, caption) of one video at the target fps; counts gap frames."""
    for source_index, t, rgb in iter_resampled(video, fps, duration):
        if isinstance(captions, FrameCaptions):
            text = captions.at(source_index)
        else:
            text = captions.at(t)
            if text is None:
                gap_count[0] += 1
                text = captions.gap_caption
        yield resize_and_crop(rgb, resolution), text


def convert(
    videos_dir: str,
    captions_dir: str,
    out_dir: str,
    *,
    resolution: int = 128,
    fps: float = 8.0,
    image_format: str = "png",
    jpeg_quality: int = 95,
    frames_per_shard: int = 1024,
    index_every: int = 16,
    skip_bad: bool = False,
    gap_caption: str = "",
) -> tuple[schema.DatasetMetadata, ConversionSummary]:
    """Converts every video under `videos_dir`; writes metadata.json last."""
    videos = find_videos(videos_dir)
    if not videos:
        raise ConversionError(f"{videos_dir}: no videos ({', '.join(VIDEO_EXTENSIONS)})")
    writer = DatasetWriter(
        out_dir, fps=fps if fps > 0 else 0.0, height=resolution, width=resolution,
        image_format=image_format, jpeg_quality=jpeg_quality,
        frames_per_shard=frames_per_shard, index_every=index_every,
        extra=dict(converter="nuwa_jax.data.convert_videos", videos=os.path.abspath(videos_dir),
                   captions=os.path.abspath(captions_dir), resample_fps=fps),
    )  # fmt: skip
    summary = ConversionSummary()
    ids = {}
    for rel in videos:
        episode = os.path.splitext(rel)[0].replace(os.sep, "/")
        if episode in ids:
            raise ConversionError(f"{rel} and {ids[episode]} make the same episode {episode!r}")
        ids[episode] = rel
        if writer.add_finished_episode(episode) is not None:
            summary.resumed.append(rel)
            continue
        path = os.path.join(videos_dir, rel)
        try:
            caption_path = find_caption_file(captions_dir, rel)
            captions = load_captions(caption_path, gap_caption)
            info = probe_video(path)
            check_captions(captions, info)
            gaps = [0]
            before = writer.stats.shards_resumed
            ep = writer.write_episode(
                episode,
                episode_frames(path, captions, fps, resolution, info.duration,
                               gaps),
                extra=dict(video=rel, captions=os.path.relpath(caption_path, captions_dir),
                           source_fps=info.fps, source_frames=info.num_frames),
            )  # fmt: skip
        except ConversionError as e:
            if not skip_bad:
                raise
            summary.skipped.append((rel, str(e)))
            continue
        summary.converted.append(rel)
        summary.frames += ep.num_frames
        summary.gap_frames += gaps[0]
        summary.shards_resumed += writer.stats.shards_resumed - before
    if not writer_has_episodes(writer):
        raise ConversionError(f"{videos_dir}: every video was skipped:\n{summary}")
    return writer.finalize(), summary


def writer_has_episodes(writer: DatasetWriter) -> bool:
    return writer.stats.episodes_written + writer.stats.episodes_resumed > 0


def main(argv: Sequence[str] | None = None) -> ConversionSummary:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--videos", required=True, help="folder of videos (searched recursively)")
    p.add_argument("--captions", required=True, help="folder of caption files, same layout")
    p.add_argument("--out", required=True, help="output frame-store directory")
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--fps", type=float, default=8.0, help="target fps; 0 keeps every frame")
    p.add_argument("--image_format", choices=schema.IMAGE_FORMATS, default="png")
    p.add_argument("--jpeg_quality", type=int, default=95)
    p.add_argument("--frames_per_shard", type=int, default=1024)
    p.add_argument("--index_every", type=int, default=16)
    p.add_argument("--gap_caption", default="", help="caption between timed cues")
    p.add_argument("--skip_bad", action="store_true", help="skip bad videos and count them")
    args = p.parse_args(argv)
    meta, summary = convert(
        args.videos, args.captions, args.out, resolution=args.resolution, fps=args.fps,
        image_format=args.image_format, jpeg_quality=args.jpeg_quality,
        frames_per_shard=args.frames_per_shard, index_every=args.index_every,
        skip_bad=args.skip_bad, gap_caption=args.gap_caption,
    )  # fmt: skip
    print(summary)
    print(f"  {captions_lib.describe(meta.captions)}")
    return summary


if __name__ == "__main__":
    main()
