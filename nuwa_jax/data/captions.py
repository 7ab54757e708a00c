"""A frame store's captions, and what they ask of the text encoder's context.

Every writer of a store (DatasetWriter: the video converter, the synthetic benchmark,
the latent encoder) counts each frame's caption and writes, before metadata.json,
`captions.json` (schema.CAPTIONS_FILE): every distinct caption with its number of frames.
metadata.json's `captions` (schema.CaptionInfo) summarises it: frames, distinct captions,
the longest caption in UTF-8 bytes and its text. The byte tokenizer's count follows from
the summary alone (bytes + BOS + EOS); `check_context` counts every distinct caption with
the configured tokenizer, so that the longest caption in tokens and the frames a context
of `text.max_length` would cut are exact for any tokenizer kind. Training refuses a
context that cuts captions unless `text.allow_truncation` (nuwa_jax.train.trainer).

Stores written before the summary existed still load: `store_captions` then reads every
record's caption (nothing is decoded), and says so; `python -m nuwa_jax.data.captions DIR`
adds the summary to such a store once.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from nuwa_jax.data import schema

FILE_FORMAT = "nuwa_jax.captions"
FILE_VERSION = 1
SOURCE_FILE = "captions file"
SOURCE_SCAN = "every record (metadata.json has no caption summary)"


def ordered(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    """(caption, frames), most frequent first, ties by text: the file's order."""
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def summarize(counts: Mapping[str, int], file: str = schema.CAPTIONS_FILE) -> schema.CaptionInfo:
    """The metadata summary of caption counts; the longest in UTF-8 bytes is the first such
    caption in file order."""
    longest = ""
    for text, _ in ordered(counts):
        if len(text.encode("utf-8")) > len(longest.encode("utf-8")):
            longest = text
    return schema.CaptionInfo(
        frames=int(sum(counts.values())),
        distinct=len(counts),
        max_utf8_bytes=len(longest.encode("utf-8")),
        longest=longest,
        file=file,
    )


def describe(info: schema.CaptionInfo) -> str:
    """One line for the writers' CLIs: distinct captions and the longest."""
    return (
        f"{info.frames} captioned frames, {info.distinct} distinct captions, the longest "
        f"{info.max_utf8_bytes} UTF-8 bytes ({info.max_utf8_bytes + 2} byte tokens): "
        f"{info.longest!r}"
    )


def write_file(root: str | os.PathLike, counts: Mapping[str, int]) -> schema.CaptionInfo:
    """Writes `root`/captions.json atomically; returns the summary for metadata.json."""
    pairs = ordered(counts)
    data = dict(
        format=FILE_FORMAT,
        version=FILE_VERSION,
        frames=int(sum(n for _, n in pairs)),
        captions=[[text, int(n)] for text, n in pairs],
    )
    path = os.path.join(os.fspath(root), schema.CAPTIONS_FILE)
    schema.atomic_write_bytes(path, json.dumps(data, ensure_ascii=False).encode("utf-8"))
    return summarize(counts)


def read_file(path: str | os.PathLike) -> dict[str, int]:
    """{caption: frames} of a captions.json; DataError naming the file if it is bad."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if data.get("format") != FILE_FORMAT or data.get("version") != FILE_VERSION:
            raise ValueError(
                f"format {data.get('format')!r} version {data.get('version')!r}, expected "
                f"{FILE_FORMAT!r} version {FILE_VERSION}"
            )
        counts = {str(text): int(n) for text, n in data["captions"]}
        if sum(counts.values()) != int(data["frames"]):
            raise ValueError(f"captions count {sum(counts.values())} frames, not {data['frames']}")
    except OSError as e:
        raise schema.DataError(f"{path}: cannot read the caption counts: {e}") from e
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise schema.DataError(f"{path}: bad caption counts: {type(e).__name__}: {e}") from e
    return counts


def scan_captions(
    root: str | os.PathLike,
    metadata: schema.DatasetMetadata,
    episodes: Sequence[schema.EpisodeInfo] | None = None,
) -> collections.Counter:
    """{caption: frames} read from the records of `episodes` (default: all), shard by shard,
    CRCs checked, nothing decoded."""
    counts: collections.Counter = collections.Counter()
    for ep in metadata.episodes if episodes is None else episodes:
        for shard in ep.shards:
            path = os.path.join(os.fspath(root), shard.file)
            for i, data in enumerate(schema.iter_records(path)):
                try:
                    frame = schema.parse_record(data, metadata, decode=False)
                except ValueError as e:
                    raise schema.RecordError(path, i, str(e)) from e
                counts[frame.caption] += 1
    return counts


def store_captions(
    root: str | os.PathLike, metadata: schema.DatasetMetadata | None = None
) -> tuple[dict[str, int], str]:
    """({caption: frames}, where they came from: SOURCE_FILE or SOURCE_SCAN) of a store."""
    root = os.fspath(root)
    metadata = schema.load_metadata(root) if metadata is None else metadata
    info = metadata.captions
    if info is None:
        return dict(scan_captions(root, metadata)), SOURCE_SCAN
    path = os.path.join(root, info.file)
    if not os.path.isfile(path):
        raise schema.DataError(
            f"{path}: missing, but {os.path.join(root, schema.METADATA_FILE)} names it "
            f"(captions.file); rebuild it with python -m nuwa_jax.data.captions {root}"
        )
    counts = read_file(path)
    if sum(counts.values()) != info.frames or len(counts) != info.distinct:
        raise schema.DataError(
            f"{path}: {sum(counts.values())} frames, {len(counts)} distinct captions; "
            f"metadata.json says {info.frames}, {info.distinct}; rebuild it with "
            f"python -m nuwa_jax.data.captions {root}"
        )
    return counts, SOURCE_FILE


def add_summary(root: str | os.PathLike) -> schema.CaptionInfo:
    """Reads every record's caption of the store at `root`, writes captions.json and the
    `captions` summary into its metadata.json (atomically): for stores written before the
    summary existed."""
    root = os.fspath(root)
    metadata = schema.load_metadata(root)
    info = write_file(root, scan_captions(root, metadata))
    schema.save_metadata(root, dataclasses.replace(metadata, captions=info))
    return info


# ---------------------------------------------------------------------------------------
# The text context.
# ---------------------------------------------------------------------------------------
class TextContextError(ValueError):
    """The text context would cut captions of the training data."""


@dataclasses.dataclass(frozen=True)
class ContextReport:
    """A store's captions against a text context of `max_length` tokens.

    longest_tokens: the longest caption's tokens, uncut (special tokens included);
    cut_frames / cut_distinct: frames and distinct captions longer than the context;
    max_dropped: the most tokens one caption loses.
    """

    store: str
    source: str
    max_length: int
    frames: int
    distinct: int
    longest: str
    longest_tokens: int
    cut_frames: int
    cut_distinct: int
    max_dropped: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        share = self.cut_frames / max(self.frames, 1)
        return (
            f"{self.store}: the longest caption is {self.longest_tokens} tokens "
            f"({self.longest!r}); a context of {self.max_length} cuts {self.cut_frames} of "
            f"{self.frames} frames' captions ({share:.1%}; {self.cut_distinct} of "
            f"{self.distinct} distinct), dropping up to {self.max_dropped} tokens"
        )


def context_report(
    root: str | os.PathLike,
    count_tokens: Callable[[list[str]], Any],
    max_length: int,
    metadata: schema.DatasetMetadata | None = None,
) -> ContextReport:
    """The store's captions counted with `count_tokens` (texts -> tokens of each, uncut)."""
    root = os.fspath(root)
    counts, source = store_captions(root, metadata)
    texts = list(counts)
    tokens = np.asarray(count_tokens(texts), np.int64).reshape(-1)
    if len(tokens) != len(texts):
        raise ValueError(f"count_tokens returned {len(tokens)} counts for {len(texts)} texts")
    frames = np.asarray([counts[t] for t in texts], np.int64)
    cut = tokens > max_length
    i = int(np.argmax(tokens)) if len(texts) else -1
    return ContextReport(
        store=root,
        source=source,
        max_length=int(max_length),
        frames=int(frames.sum()),
        distinct=len(texts),
        longest=texts[i] if texts else "",
        longest_tokens=int(tokens[i]) if texts else 0,
        cut_frames=int(frames[cut].sum()),
        cut_distinct=int(cut.sum()),
        max_dropped=int(max(0, tokens.max(initial=0) - max_length)),
    )


def check_context(
    root: str | os.PathLike,
    count_tokens: Callable[[list[str]], Any],
    max_length: int,
    *,
    allow: bool,
    metadata: schema.DatasetMetadata | None = None,
    field: str = "text.max_length",
    flag: str = "text.allow_truncation",
) -> ContextReport:
    """The store's ContextReport; raises TextContextError if the context cuts a caption
    and `allow` is False, naming the store, the longest caption's tokens and `field`."""
    report = context_report(root, count_tokens, max_length, metadata)
    if report.cut_frames and not allow:
        raise TextContextError(
            f"{report.describe()}. The text encoder would never see those captions whole: "
            f"set {field}={report.longest_tokens} or more (a new encoder: the byte "
            f"encoder's position embedding has {field} rows), or {flag}=True to train on "
            "cut captions (they are then counted and reported)"
        )
    return report


def main(argv: Sequence[str] | None = None) -> schema.CaptionInfo:
    p = argparse.ArgumentParser(
        description="Adds the caption summary (captions.json, metadata.json 'captions') to a "
        "frame or latent store written before it was recorded."
    )
    p.add_argument("store", help="frame-store directory (holds metadata.json)")
    args = p.parse_args(argv)
    info = add_summary(args.store)
    print(f"{args.store}: {describe(info)}")
    return info


if __name__ == "__main__":
    main()
