"""Writes data sets in the frame-store layout of schema.py: shards, then metadata.json.

Crash safety: every shard is written under a temporary name (`.<name>.tmp-<pid>`),
fsynced and renamed when complete; an exception mid-shard removes the temporary file,
and a new writer removes any left by a killed process. A finished episode leaves a
small marker (`_episodes/<episode>.json`, written atomically) so a rerun skips it
without decoding anything; within an unfinished episode, finished shards are
verified (CRCs, record count, first record) and kept; `discard_episode` removes an
episode's marker and shards for a caller whose sources changed (the video converter's
fingerprints). metadata.json is written last,
atomically, by `finalize`: a directory without it is not a data set.

Captions: the writer counts every frame's caption (an episode's counts go into its
marker, so a rerun that skips it still knows them); `finalize` writes captions.json
(every distinct caption and its frames) and the summary in metadata.json's `captions`
(nuwa_jax.data.captions), from which training sizes the text encoder's context.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from nuwa_jax.data import captions as captions_lib
from nuwa_jax.data import schema

EPISODE_MARKERS = "_episodes"


@dataclasses.dataclass
class WriterStats:
    """What one writer did: for reports and the converter's summary."""

    episodes_written: int = 0
    episodes_resumed: int = 0  # already complete, skipped
    shards_written: int = 0
    shards_resumed: int = 0  # already complete within an unfinished episode
    frames_written: int = 0
    bytes_written: int = 0


class DatasetWriter:
    """Streams episodes of (image, caption) frames into shards of one data set directory.

    Every shard holds consecutive frames of one episode (`frames_per_shard` of them, the
    last fewer); metadata.json records the byte offset of every `index_every`-th record.
    One writer per directory at a time.

    With `latent` (a schema.LatentInfo) it writes a latent store instead: frames are
    ((mean, logvar), caption), the (h, w, c) posterior moments stored as float16;
    `height` / `width` are those of the encoded frames. The latent info is part of the
    layout, so a rerun with another VAE or shape in the same directory is refused.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        *,
        fps: float,
        height: int,
        width: int,
        image_format: str = "png",
        jpeg_quality: int = 95,
        frames_per_shard: int = 1024,
        index_every: int = 16,
        extra: dict[str, Any] | None = None,
        latent: schema.LatentInfo | None = None,
    ):
        if latent is not None:
            # JSON-normalised, so the layout compares equal to a marker read back.
            latent = schema.LatentInfo(**json.loads(json.dumps(dataclasses.asdict(latent))))
            latent.validate(os.path.join(os.fspath(out_dir), schema.METADATA_FILE))
            image_format = schema.LATENT_IMAGE_FORMAT
        elif image_format not in schema.IMAGE_FORMATS:
            raise schema.DataError(
                f"image_format must be one of {schema.IMAGE_FORMATS}, got {image_format!r}"
            )
        if frames_per_shard < 1 or index_every < 1:
            raise schema.DataError(
                f"frames_per_shard ({frames_per_shard}) and index_every ({index_every}) "
                "must be >= 1"
            )
        self.out_dir = os.fspath(out_dir)
        self.fps = float(fps)
        self.height, self.width = int(height), int(width)
        self.image_format = image_format
        self.jpeg_quality = int(jpeg_quality)
        self.frames_per_shard = int(frames_per_shard)
        self.index_every = int(index_every)
        self.extra = dict(extra or {})
        self.latent = latent
        self.stats = WriterStats()
        self._episodes: list[schema.EpisodeInfo] = []
        self._captions: dict[str, collections.Counter] = {}  # per episode id
        os.makedirs(os.path.join(self.out_dir, EPISODE_MARKERS), exist_ok=True)
        self.removed_temp_files = self._remove_temp_files()

    # -- layout ---------------------------------------------------------------------------
    @property
    def layout(self) -> dict[str, Any]:
        """What must agree between a run and the run it resumes."""
        layout = dict(
            height=self.height,
            width=self.width,
            fps=self.fps,
            image_format=self.image_format,
            jpeg_quality=self.jpeg_quality,
            frames_per_shard=self.frames_per_shard,
            index_every=self.index_every,
        )
        if self.latent is not None:
            layout["latent"] = dataclasses.asdict(self.latent)
        return layout

    def _remove_temp_files(self) -> list[str]:
        removed = []
        for d in (self.out_dir, os.path.join(self.out_dir, EPISODE_MARKERS)):
            for name in os.listdir(d):
                if schema.is_temp_name(name):
                    os.remove(os.path.join(d, name))
                    removed.append(name)
        return removed

    def _marker_path(self, episode_id: str) -> str:
        name = schema.safe_episode_name(episode_id) + ".json"
        return os.path.join(self.out_dir, EPISODE_MARKERS, name)

    def finished_episode(self, episode_id: str) -> schema.EpisodeInfo | None:
        """The episode's entry if an earlier run finished it with the same layout."""
        found = self._finished(episode_id)
        return None if found is None else found[0]

    def _finished(
        self, episode_id: str
    ) -> tuple[schema.EpisodeInfo, collections.Counter | None] | None:
        """(entry, caption counts or None for a marker written before they were kept) of
        an episode an earlier run finished with the same layout."""
        path = self._marker_path(episode_id)
        if not os.path.exists(path):
            return None
        try:
            with open(path, encoding="utf-8") as f:
                obj = json.load(f)
            layout, entry = obj["layout"], obj["episode"]
            info = schema.EpisodeInfo(
                id=entry["id"],
                num_frames=int(entry["num_frames"]),
                shards=[schema.ShardInfo(**s) for s in entry["shards"]],
                extra=dict(entry.get("extra", {})),
            )
            counts = obj.get("captions")
            if counts is not None:
                counts = collections.Counter({str(k): int(v) for k, v in counts.items()})
        except (OSError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise schema.DataError(f"{path}: unreadable episode marker: {e}") from e
        if layout != self.layout:
            raise schema.DataError(
                f"{path}: episode {episode_id!r} was written with {layout}, this run uses "
                f"{self.layout}; use a fresh output directory"
            )
        if info.id != episode_id:
            raise schema.DataError(f"{path}: marker is for episode {info.id!r}, not {episode_id!r}")
        for s in info.shards:
            shard_path = os.path.join(self.out_dir, s.file)
            if not os.path.exists(shard_path) or os.path.getsize(shard_path) != s.size_bytes:
                return None  # a shard went missing or changed: redo the episode
        if counts is not None and sum(counts.values()) != info.num_frames:
            raise schema.DataError(
                f"{path}: caption counts cover {sum(counts.values())} frames, the episode "
                f"has {info.num_frames}"
            )
        return info, counts

    def discard_episode(self, episode_id: str) -> list[str]:
        """Removes what earlier runs wrote of an episode (its marker first, then every
        shard file of it), so that it is written again from scratch: for a caller whose
        sources changed. Returns the names removed."""
        removed = []
        marker = self._marker_path(episode_id)
        if os.path.exists(marker):
            os.remove(marker)
            removed.append(os.path.join(EPISODE_MARKERS, os.path.basename(marker)))
        shard = re.compile(
            re.escape(schema.safe_episode_name(episode_id))
            + r"\.\d{5,}"
            + re.escape(schema.SHARD_SUFFIX)
        )
        for name in sorted(os.listdir(self.out_dir)):
            if shard.fullmatch(name):
                os.remove(os.path.join(self.out_dir, name))
                removed.append(name)
        return removed

    def add_finished_episode(self, episode_id: str) -> schema.EpisodeInfo | None:
        """Registers an episode finished by an earlier run; None if there is none. Its
        caption counts come from its marker (or, from an older marker, its records)."""
        found = self._finished(episode_id)
        if found is None:
            return None
        info, counts = found
        if counts is None:
            counts = captions_lib.scan_captions(self.out_dir, self._metadata([info]))
        self._register(info, counts)
        self.stats.episodes_resumed += 1
        return info

    def _register(self, info: schema.EpisodeInfo, counts: collections.Counter) -> None:
        if any(e.id == info.id for e in self._episodes):
            raise schema.DataError(f"{self.out_dir}: episode {info.id!r} written twice")
        self._episodes.append(info)
        self._captions[info.id] = counts

    # -- writing --------------------------------------------------------------------------
    def _check_frame(self, episode_id: str, index: int, image: Any, caption: Any) -> Any:
        if not isinstance(caption, str):
            raise schema.DataError(
                f"episode {episode_id!r} frame {index}: caption is {type(caption).__name__}"
            )
        if self.latent is not None:
            return self._check_latent(episode_id, index, image)
        image = np.asarray(image)
        if image.shape != (self.height, self.width, 3) or image.dtype != np.uint8:
            raise schema.DataError(
                f"episode {episode_id!r} frame {index}: image is {image.shape} {image.dtype}, "
                f"expected ({self.height}, {self.width}, 3) uint8"
            )
        return image

    def _check_latent(self, episode_id: str, index: int, moments: Any) -> tuple[Any, Any]:
        """(mean, logvar) as float16 arrays of the store's shape, finite."""
        try:
            mean, logvar = moments
        except (TypeError, ValueError):
            raise schema.DataError(
                f"episode {episode_id!r} frame {index}: a latent store takes (mean, logvar) "
                f"pairs, got {type(moments).__name__}"
            ) from None
        shape = tuple(self.latent.shape)
        out = []
        for name, x in (("mean", mean), ("logvar", logvar)):
            x = np.asarray(x)
            if x.shape != shape:
                raise schema.DataError(
                    f"episode {episode_id!r} frame {index}: latent {name} is {x.shape}, "
                    f"the latent store's shape is {shape}"
                )
            with np.errstate(over="ignore", invalid="ignore"):
                x16 = x.astype(np.float16)
            if not np.isfinite(x16).all():
                raise schema.DataError(
                    f"episode {episode_id!r} frame {index}: latent {name} is not finite "
                    "in float16 (NaN, Inf, or beyond +-65504)"
                )
            out.append(x16)
        return out[0], out[1]

    def _encode(self, episode_id: str, index: int, payload: Any, caption: str) -> bytes:
        """The record payload of one checked frame."""
        if self.latent is not None:
            return schema.encode_latent_frame(episode_id, index, *payload, caption)
        return schema.encode_frame(
            episode_id, index, payload, caption, self.image_format, self.jpeg_quality
        )

    def _existing_shard(
        self, path: str, episode_id: str, first_frame: int
    ) -> tuple[list[int], int] | None:
        """(offset of every record, size) of a finished shard of this episode, else None."""
        if not os.path.exists(path):
            return None
        try:
            offsets = schema.scan_offsets(path)
            first = next(schema.iter_records(path))
            frame = schema.parse_record(first, self._metadata([]), decode=False)
        except (schema.DataError, ValueError, StopIteration):
            os.remove(path)  # damaged: write it again
            return None
        if frame.episode_id != episode_id or frame.frame_index != first_frame:
            raise schema.DataError(
                f"{path}: holds episode {frame.episode_id!r} from frame {frame.frame_index}, "
                f"expected {episode_id!r} from {first_frame}; use a fresh output directory"
            )
        return offsets, os.path.getsize(path)

    def _write_shard(
        self, path: str, episode_id: str, first_frame: int, frames: list[tuple[Any, str]]
    ) -> tuple[list[int], int]:
        tmp = schema.temp_name(path)
        offsets = []
        try:
            with open(tmp, "wb") as f:
                pos = 0
                for j, (payload, caption) in enumerate(frames):
                    record = schema.frame_record(
                        self._encode(episode_id, first_frame + j, payload, caption)
                    )
                    if j % self.index_every == 0:
                        offsets.append(pos)
                    f.write(record)
                    pos += len(record)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        self.stats.shards_written += 1
        self.stats.frames_written += len(frames)
        self.stats.bytes_written += pos
        return offsets, pos

    def write_episode(
        self,
        episode_id: str,
        frames: Iterable[tuple[Any, str]],
        extra: dict[str, Any] | None = None,
    ) -> schema.EpisodeInfo:
        """Writes one episode from an iterable of ((H, W, 3) uint8 image, caption), or of
        ((mean, logvar), caption) for a latent store.

        Finished shards of an earlier, interrupted run of the same episode are checked
        and kept (their frames are consumed from `frames` but not encoded again). On an
        exception no shard file of the unfinished shard remains.
        """
        if any(e.id == episode_id for e in self._episodes):
            raise schema.DataError(f"{self.out_dir}: episode {episode_id!r} written twice")
        shards: list[schema.ShardInfo] = []
        counts: collections.Counter = collections.Counter()
        it: Iterator[tuple[Any, str]] = iter(frames)
        index = 0
        exhausted = False
        while not exhausted:
            batch: list[tuple[Any, str]] = []
            for _ in range(self.frames_per_shard):
                try:
                    image, caption = next(it)
                except StopIteration:
                    exhausted = True
                    break
                batch.append(
                    (self._check_frame(episode_id, index + len(batch), image, caption), caption)
                )
            if not batch:
                break
            counts.update(caption for _, caption in batch)
            name = schema.shard_file_name(episode_id, len(shards))
            path = os.path.join(self.out_dir, name)
            existing = self._existing_shard(path, episode_id, index)
            if existing is not None and len(existing[0]) == len(batch):
                offsets, size = existing[0][:: self.index_every], existing[1]
                self.stats.shards_resumed += 1
            else:
                offsets, size = self._write_shard(path, episode_id, index, batch)
            shards.append(schema.ShardInfo(name, index, len(batch), offsets, size))
            index += len(batch)
        if index == 0:
            raise schema.DataError(f"episode {episode_id!r}: no frames")
        info = schema.EpisodeInfo(episode_id, index, shards, dict(extra or {}))
        marker = dict(layout=self.layout, episode=dataclasses.asdict(info), captions=counts)
        schema.atomic_write_bytes(self._marker_path(episode_id), json.dumps(marker).encode("utf-8"))
        self._register(info, counts)
        self.stats.episodes_written += 1
        return info

    def _metadata(
        self, episodes: list[schema.EpisodeInfo], captions: schema.CaptionInfo | None = None
    ) -> schema.DatasetMetadata:
        return schema.DatasetMetadata(
            fps=self.fps,
            height=self.height,
            width=self.width,
            image_format=self.image_format,
            index_every=self.index_every,
            frames_per_shard=self.frames_per_shard,
            episodes=episodes,
            extra=self.extra,
            latent=self.latent,
            captions=captions,
        )

    def finalize(self) -> schema.DatasetMetadata:
        """Writes captions.json, then metadata.json (atomically, last) for the episodes of
        this run, in order."""
        counts: collections.Counter = collections.Counter()
        for ep in self._episodes:
            counts.update(self._captions[ep.id])
        info = captions_lib.write_file(self.out_dir, counts)
        meta = self._metadata(list(self._episodes), info)
        schema.save_metadata(self.out_dir, meta)
        return meta
