"""Converts a folder of captioned videos into a FlintstonesHD-format frame store.

For each video `<name>.<mp4|mkv|avi|webm>` under --videos, the captions are the file
`<name>.<json|csv|srt|vtt>` at the same relative path under --captions:
  - JSON list: one caption per frame of the SOURCE video (decode order);
  - JSON object {frame: caption} or CSV `frame,caption` rows (header optional): a
    caption holds from its source frame until the next listed frame; frame 0 must be
    listed;
  - SRT / WebVTT: timed intervals; an output frame takes the caption of the interval
    holding its timestamp, `gap_caption` ('' by default) where none does.
Frames are decoded with PyAV, turned upright by their rotation metadata (display matrix),
resampled to --fps by timestamp (each output time takes the latest source frame at or
before it; --fps 0 keeps every source frame), resized so the shorter side is
--resolution and centre-cropped to a square.

Caption files may start with a BOM; cue text has tags stripped, then entities decoded;
overlapping cues join their texts (OVERLAP_RULE, with a warning). Errors name the file
and the line or cue (CaptionError): unreadable video, missing or ambiguous caption file,
captions past the video's frames or duration, malformed captions. With --skip_bad such
videos are skipped and listed in the summary instead; the CLI prints bad input as one
line and exits 2. Output is crash-safe and resumable (writer.py): a rerun skips finished
episodes and shards whose sources' fingerprint is unchanged, and converts changed ones
again. A run holds <out>/convert.lock: one converter per output folder.

CLI: python -m nuwa_jax.data.convert_videos --videos DIR --captions DIR --out DIR
     --resolution 128 --fps 8
"""

from __future__ import annotations

import argparse
import bisect
import csv
import dataclasses
import hashlib
import html
import io
import json
import logging
import os
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import av
import numpy as np

from nuwa_jax.data import captions as captions_lib
from nuwa_jax.data import schema
from nuwa_jax.data.writer import DatasetWriter
from nuwa_jax.video_io import resize_and_crop
from nuwa_jax.workdir_lock import WorkdirLock, WorkdirLockedError

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".webm")
CAPTION_EXTENSIONS = (".json", ".csv", ".srt", ".vtt")


class ConversionError(schema.DataError):
    """A video that cannot be converted; the message names the file at fault."""


class CaptionError(ConversionError):
    """A bad caption file: '<file>:<line or cue>: <what is wrong>' (no location when the
    fault is the whole file). Carries the fields for callers that report them."""

    def __init__(self, path: str, where: int | str | None, reason: str):
        self.path, self.where, self.reason = path, where, reason
        super().__init__(
            f"{path}:{where}: {reason}" if where not in (None, "") else f"{path}: {reason}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.path, self.where, self.reason), self.__dict__


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
    intervals: list[tuple[float, float, str]]  # in start order (file order among equals)
    gap_caption: str = ""
    lines: list[int] = dataclasses.field(default_factory=list)  # each cue's timing line

    def at(self, t: float) -> str | None:
        """The caption at time t; None in a gap. Where cues overlap, their distinct texts
        joined by a space in start order (OVERLAP_RULE)."""
        texts = [text for start, end, text in self.intervals if start <= t < end]
        if not texts:
            return None
        return " ".join(dict.fromkeys(texts))


Captions = FrameCaptions | TimedCaptions


# Where timed cues overlap, frames in the overlap take every covering cue's text.
OVERLAP_RULE = (
    "frames where cues overlap take their distinct texts joined by a space, in start order"
)


def _read_text(path: str) -> str:
    """A caption file's text: UTF-8 with or without a byte-order mark (every format)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise CaptionError(path, None, f"not UTF-8 text (byte {e.start}: {e.reason})") from e
    except OSError as e:
        raise CaptionError(path, None, f"cannot read the caption file: {e.strerror or e}") from e


def _frame_key(path: str, key: Any, where: int | str) -> int:
    try:
        frame = int(str(key).strip())
    except ValueError:
        raise CaptionError(path, where, f"frame {key!r} is not an integer") from None
    if frame < 0:
        raise CaptionError(path, where, f"negative frame {frame}")
    return frame


def _from_mapping(path: str, pairs: list[tuple[int, str, int | str]]) -> FrameCaptions:
    """(frame, caption, where it is written) pairs -> FrameCaptions."""
    if not pairs:
        raise CaptionError(path, None, "no captions")
    pairs.sort(key=lambda p: p[0])
    for (f, _, first), (g, _, second) in zip(pairs, pairs[1:]):
        if f == g:
            raise CaptionError(path, second, f"frame {f} captioned twice (also at {first})")
    frames = [f for f, _, _ in pairs]
    if frames[0] != 0:
        raise CaptionError(
            path,
            pairs[0][2],
            f"the first caption is for frame {frames[0]}; frame 0 must have one (a caption "
            "holds until the next listed frame)",
        )
    return FrameCaptions(path, frames, [c for _, c, _ in pairs], frames[-1])


def parse_json_captions(path: str) -> FrameCaptions:
    """A JSON list (a caption per source frame) or {frame: caption} object."""
    try:
        obj = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise CaptionError(path, e.lineno, f"not valid JSON: {e.msg} (column {e.colno})") from e
    if isinstance(obj, list):
        for i, c in enumerate(obj):
            if not isinstance(c, str):
                raise CaptionError(
                    path, f"item {i}", f"caption is {type(c).__name__}, not a string"
                )
        if not obj:
            raise CaptionError(path, None, "no captions")
        return FrameCaptions(path, list(range(len(obj))), list(obj), len(obj) - 1)
    if isinstance(obj, dict):
        pairs = []
        for k, c in obj.items():
            where = f"key {k!r}"
            if not isinstance(c, str):
                raise CaptionError(path, where, f"caption is {type(c).__name__}, not a string")
            pairs.append((_frame_key(path, k, where), c, where))
        return _from_mapping(path, pairs)
    raise CaptionError(path, None, "expected a list of captions or a {frame: caption} object")


def parse_csv_captions(path: str) -> FrameCaptions:
    """`frame,caption` rows (a header row optional)."""
    reader = csv.reader(io.StringIO(_read_text(path)))
    rows, line = [], 1  # (the line a row starts on, row): quoted fields may span lines
    try:
        for row in reader:
            rows.append((line, row))
            line = reader.line_num + 1
    except csv.Error as e:
        raise CaptionError(path, line, f"not valid CSV: {e}") from e
    pairs = []
    for n, row in rows:
        if not row or all(not c.strip() for c in row):
            continue
        if n == 1 and row[0].strip().lower() == "frame":
            continue  # header
        if len(row) != 2:
            raise CaptionError(path, n, f"expected 2 columns (frame,caption), got {len(row)}")
        pairs.append((_frame_key(path, row[0], n), row[1], n))
    return _from_mapping(path, pairs)


_TIME = re.compile(r"^(?:(\d+):)?(\d{1,2}):(\d{2})[,.](\d{3})$")


def _seconds(path: str, line: int, text: str) -> float:
    m = _TIME.match(text.strip())
    if not m:
        raise CaptionError(path, line, f"bad timestamp {text.strip()!r}")
    h, mnt, s, ms = (int(g) if g else 0 for g in m.groups())
    if mnt >= 60 or s >= 60:
        raise CaptionError(path, line, f"bad timestamp {text.strip()!r}")
    return h * 3600 + mnt * 60 + s + ms / 1000


def _cue_text(block: list[str]) -> str:
    """A cue's text lines as one line: inline tags (<i>, <c.x>, <00:01.000>) stripped, then
    character references (&amp; &lt; &#39; ...) decoded, so an escaped '<' stays text."""
    text = " ".join(b.strip() for b in block)
    return html.unescape(re.sub(r"<[^>]+>", "", text))


def _warn_overlaps(path: str, cues: list[tuple[float, float, str, int]]) -> None:
    """Logs one warning naming the overlapping cues (by timing line and times) of a file."""
    pairs, active = [], []
    for cue in cues:  # in start order
        active = [a for a in active if a[1] > cue[0]]
        pairs += [(a, cue) for a in active]
        active.append(cue)
    if not pairs:
        return
    shown = "; ".join(
        f"line {a[3]} ({a[0]:.3f}-{a[1]:.3f} s) and line {b[3]} ({b[0]:.3f}-{b[1]:.3f} s)"
        for a, b in pairs[:5]
    )
    more = f" and {len(pairs) - 5} more" if len(pairs) > 5 else ""
    logging.warning(
        "%s: %d pairs of cues overlap: %s%s; %s", path, len(pairs), shown, more, OVERLAP_RULE
    )


def parse_timed_captions(path: str, gap_caption: str = "") -> TimedCaptions:
    """SRT or WebVTT cues: [index line], 'start --> end [settings]', text lines, blank.
    Overlapping cues are kept (see OVERLAP_RULE) and logged."""
    vtt = path.lower().endswith(".vtt")
    lines = _read_text(path).splitlines()
    n = 0
    if vtt:
        if not lines or not lines[0].startswith("WEBVTT"):
            raise CaptionError(path, 1, "a WebVTT file must start with 'WEBVTT'")
        n = 1
    cues: list[tuple[float, float, str, int]] = []
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
            raise CaptionError(
                path,
                block_start + 1,
                f"expected a cue timing line 'start --> end', got {block[0]!r}",
            )
        if not vtt and timing == 1 and not block[0].strip().isdigit():
            raise CaptionError(path, block_start + 1, f"bad SRT cue number {block[0]!r}")
        line = block_start + timing + 1
        left, _, right = block[timing].partition("-->")
        right_parts = right.split()
        if not right_parts:
            raise CaptionError(path, line, "missing end time")
        start, end = _seconds(path, line, left), _seconds(path, line, right_parts[0])
        if end <= start:
            raise CaptionError(
                path, line, f"cue ends ({end:.3f} s) before it starts ({start:.3f} s)"
            )
        cues.append((start, end, _cue_text(block[timing + 1 :]), line))
    if not cues:
        raise CaptionError(path, None, "no caption cues")
    cues.sort(key=lambda c: (c[0], c[3]))
    _warn_overlaps(path, cues)
    return TimedCaptions(path, [c[:3] for c in cues], gap_caption, [c[3] for c in cues])


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
    raise CaptionError(path, None, f"unknown caption format {ext!r}")


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


def upright_rgb(frame: av.VideoFrame) -> np.ndarray:
    """The frame as RGB, turned as its display matrix says (phone videos are stored
    sideways with a rotation, as ffmpeg's -autorotate would show them). Flips in the matrix
    are not applied; a rotation that is not a multiple of 90 degrees goes to the nearest."""
    rgb = frame.to_ndarray(format="rgb24")
    turns = round(float(getattr(frame, "rotation", 0) or 0) / 90) % 4  # counter-clockwise
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def iter_resampled(
    path: str, fps: float, duration: float
) -> Iterator[tuple[int, float, np.ndarray]]:
    """(source frame index, output time, upright RGB frame) at `fps` (0: every source
    frame)."""
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
                    yield i, ts, upright_rgb(frame)
                    continue
                while prev is not None and j / fps < ts - eps and j / fps < end:
                    yield prev[0], j / fps, upright_rgb(prev[1])
                    j += 1
                if prev is None:
                    while j / fps < ts - eps and j / fps < end:  # before the first frame
                        yield i, j / fps, upright_rgb(frame)
                        j += 1
                prev = (i, frame)
            while fps > 0 and prev is not None and j / fps < end:
                yield prev[0], j / fps, upright_rgb(prev[1])
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
    lines = captions.lines or [None] * len(captions.intervals)
    for (start, end, _), line in zip(captions.intervals, lines):
        if end > info.duration + slack:
            raise CaptionError(
                captions.path,
                line,
                f"caption interval {start:.3f}-{end:.3f} s ends past the end of {info.path} "
                f"({info.duration:.3f} s)",
            )


# ---------------------------------------------------------------------------------------
# Conversion.
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class ConversionSummary:
    converted: list[str] = dataclasses.field(default_factory=list)
    resumed: list[str] = dataclasses.field(default_factory=list)  # finished by an earlier run
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (video, why)
    redone: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # sources changed
    frames: int = 0
    gap_frames: int = 0  # frames that fell between timed captions
    shards_resumed: int = 0

    def __str__(self) -> str:
        lines = [
            f"converted {len(self.converted)} videos ({self.frames} frames), "
            f"{len(self.resumed)} already done, {len(self.redone)} redone (sources changed), "
            f"{len(self.skipped)} skipped, "
            f"{self.shards_resumed} finished shards kept, {self.gap_frames} frames "
            "between timed captions"
        ]
        lines += [f"  redone {v}: {why}" for v, why in self.redone]
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


# ---------------------------------------------------------------------------------------
# Sources: what an episode was converted from, so that a rerun redoes changed ones.
# ---------------------------------------------------------------------------------------
SOURCES_DIR = "_sources"  # <out>/_sources/<episode>.json, written before the episode
LOCK_FILE = "convert.lock"
_MIB = 1 << 20


def _sha256(path: str, ranges: Sequence[tuple[int, int]] | None = None) -> str:
    """sha256 of a file, or of its (offset, length) byte ranges."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if ranges is None:
            for block in iter(lambda: f.read(_MIB), b""):
                h.update(block)
        for offset, length in ranges or ():
            f.seek(offset)
            h.update(f.read(length))
    return h.hexdigest()


def source_fingerprint(
    video_path: str, caption_path: str, captions_dir: str, gap_caption: str
) -> dict[str, Any]:
    """What an episode's frames and captions follow from: the video's size and a hash of
    its first and last MiB (not its mtime: a copy keeps the content), the caption file's
    path, size and sha256, and --gap_caption."""
    try:
        size = os.path.getsize(video_path)
        video = dict(
            size=size,
            sha256_first_last_mib=_sha256(video_path, [(0, _MIB), (max(size - _MIB, 0), _MIB)]),
        )
    except OSError as e:
        raise ConversionError(f"{video_path}: unreadable video: {e.strerror or e}") from e
    try:
        captions = dict(
            file=os.path.relpath(caption_path, captions_dir).replace(os.sep, "/"),
            size=os.path.getsize(caption_path),
            sha256=_sha256(caption_path),
        )
    except OSError as e:
        raise CaptionError(
            caption_path, None, f"cannot read the caption file: {e.strerror or e}"
        ) from e
    return dict(video=video, captions=captions, gap_caption=gap_caption)  # fmt: skip


def _sources_path(out_dir: str, episode: str) -> str:
    return os.path.join(out_dir, SOURCES_DIR, schema.safe_episode_name(episode) + ".json")


def recorded_sources(out_dir: str, episode: str) -> dict[str, Any] | None:
    """The fingerprint an earlier run recorded for the episode; None if none (or unreadable:
    the episode is then redone)."""
    try:
        with open(_sources_path(out_dir, episode), encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(obj, dict) or obj.get("episode") != episode:
        return None
    return obj.get("sources")


def _record_sources(out_dir: str, episode: str, sources: dict[str, Any]) -> None:
    os.makedirs(os.path.join(out_dir, SOURCES_DIR), exist_ok=True)
    data = json.dumps(dict(episode=episode, sources=sources), indent=1).encode("utf-8")
    schema.atomic_write_bytes(_sources_path(out_dir, episode), data)


def describe_change(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    """Why an episode's recorded sources no longer match, in words."""
    if not isinstance(old, dict):
        return (
            "no fingerprint of its sources is recorded (an older converter or an unreadable record)"
        )
    why = []
    if old.get("video") != new["video"]:
        ov, nv = old.get("video") or {}, new["video"]
        what = (
            f"size {ov.get('size')} -> {nv['size']} bytes"
            if ov.get("size") != nv["size"]
            else "content"
        )
        why.append(f"the video changed ({what})")
    oc, nc = old.get("captions") or {}, new["captions"]
    if oc.get("file") != nc["file"]:
        why.append(f"the captions are now {nc['file']} (were {oc.get('file')})")
    elif oc != nc:
        why.append(f"the caption file {nc['file']} changed")
    if old.get("gap_caption") != new["gap_caption"]:
        why.append(f"--gap_caption changed ({old.get('gap_caption')!r} -> {new['gap_caption']!r})")
    return "; ".join(why) or "its recorded sources differ"  # fmt: skip


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
    """Converts every video under `videos_dir`; writes metadata.json last.

    Holds `out_dir`/convert.lock for the run: a second converter into the same folder is
    refused (WorkdirLockedError naming the holder). An episode finished by an earlier run
    is kept only if its sources' fingerprint (source_fingerprint) is unchanged; otherwise
    what was written of it is removed and it is converted again (logged, summary.redone).
    """
    videos = find_videos(videos_dir)
    if not videos:
        raise ConversionError(f"{videos_dir}: no videos ({', '.join(VIDEO_EXTENSIONS)})")
    lock = WorkdirLock(
        out_dir,
        lock_file=LOCK_FILE,
        holder_kind="converter",
        advice="An output folder takes one converter at a time: wait for that run to end, "
        "stop it, or write to another folder",
    )
    with lock:
        return _convert(
            videos, videos_dir, captions_dir, out_dir, resolution=resolution, fps=fps,
            image_format=image_format, jpeg_quality=jpeg_quality,
            frames_per_shard=frames_per_shard, index_every=index_every, skip_bad=skip_bad,
            gap_caption=gap_caption,
        )  # fmt: skip


def _convert(
    videos: list[str],
    videos_dir: str,
    captions_dir: str,
    out_dir: str,
    *,
    resolution: int,
    fps: float,
    image_format: str,
    jpeg_quality: int,
    frames_per_shard: int,
    index_every: int,
    skip_bad: bool,
    gap_caption: str,
) -> tuple[schema.DatasetMetadata, ConversionSummary]:
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
        path = os.path.join(videos_dir, rel)
        try:
            caption_path = find_caption_file(captions_dir, rel)
            sources = source_fingerprint(path, caption_path, captions_dir, gap_caption)
            writer.finished_episode(episode)  # a marker of another layout is refused here
            recorded = recorded_sources(out_dir, episode)
            if recorded == sources:
                if writer.add_finished_episode(episode) is not None:
                    summary.resumed.append(rel)
                    continue
            else:
                if writer.discard_episode(episode):
                    why = describe_change(recorded, sources)
                    logging.warning("%s: converting episode %r again: %s", rel, episode, why)
                    summary.redone.append((rel, why))
                _record_sources(out_dir, episode, sources)  # before any shard of it
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
                           source_fps=info.fps, source_frames=info.num_frames,
                           sources=sources),
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
        first = "; ".join(why for _, why in summary.skipped[:3])
        more = f"; and {len(summary.skipped) - 3} more" if len(summary.skipped) > 3 else ""
        raise ConversionError(
            f"{videos_dir}: every video was skipped ({len(summary.skipped)}): {first}{more}"
        )
    return writer.finalize(), summary


def writer_has_episodes(writer: DatasetWriter) -> bool:
    return writer.stats.episodes_written + writer.stats.episodes_resumed > 0


def main(argv: Sequence[str] | None = None) -> ConversionSummary:
    """The CLI. Bad input (ConversionError, other data errors, a held output folder) ends it
    with one line on stderr, `convert_videos: <file>[:<line or cue>]: <what is wrong>`, and
    exit status 2; any other exception is a bug and keeps its traceback."""
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
    try:
        meta, summary = convert(
            args.videos, args.captions, args.out, resolution=args.resolution, fps=args.fps,
            image_format=args.image_format, jpeg_quality=args.jpeg_quality,
            frames_per_shard=args.frames_per_shard, index_every=args.index_every,
            skip_bad=args.skip_bad, gap_caption=args.gap_caption,
        )  # fmt: skip
    except (schema.DataError, WorkdirLockedError) as e:
        print(f"convert_videos: {' '.join(str(e).splitlines())}", file=sys.stderr)
        raise SystemExit(2) from None
    print(summary)
    print(f"  {captions_lib.describe(meta.captions)}")
    return summary


if __name__ == "__main__":
    main()
