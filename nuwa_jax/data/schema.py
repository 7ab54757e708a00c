"""The FlintstonesHD-format frame store: one TFRecord record per frame, random access.

FlintstonesHD (NUWA-XL's data set: 166 episodes of ~38,000 captioned frames) was never
released, so users bring their own long videos with per-frame captions (see
convert_videos.py) or use the synthetic benchmark (synthetic.py). Both are written in
the layout below, documented in full in docs/data.md.

Layout of a data set directory:
  metadata.json                      written atomically, last (DatasetMetadata)
  captions.json                      distinct captions and their frame counts (CaptionInfo)
  <episode>.<shard:05d>.tfrecord     consecutive frames of ONE episode

Each record is a serialized `tf.train.Example` with the features in FEATURES (episode
id, frame index, encoded PNG/JPEG image, UTF-8 caption, height, width, image format).
metadata.json stores, per shard, the frame range it covers and the byte offset of every
`index_every`-th record, so a window of L frames at any stride is read as
(episode, frame) -> (shard file, chunk offset) -> skip at most index_every-1 record
headers -> read and parse just that record. Nothing else is decoded.

A LATENT STORE (metadata `latent` set, written by nuwa_jax.data.latents) has the same
layout; its records carry LATENT_FEATURES (the frame's T-KLVAE posterior mean and
log-variance as float16 bytes, their shape, caption and frame index) instead of an image.

No TensorFlow here: the TFRecord framing (u64 length, masked CRC32C of the length,
data, masked CRC32C of the data) and the small subset of the protobuf wire format that
tf.train.Example uses are read and written by this module (tests pin the framing to
TensorFlow's TFRecordWriter byte for byte and the Example codec to TF's protobufs).
CRC32C comes from google-crc32c (C, hardware CRC32 where the CPU has it): every record
read is checked, and the numpy CRC this module had took 68 us per 600-byte latent record
(0.45 us now) and held the grain pipeline to half its batch rate (2 cores, 2026-12-07).
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import os
import re
import struct
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import google_crc32c
import numpy as np
from PIL import Image

FORMAT_NAME = "nuwa_jax.frames"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
CAPTIONS_FILE = "captions.json"  # distinct captions and their frame counts (CaptionInfo)
SHARD_SUFFIX = ".tfrecord"
TEMP_MARKER = ".tmp-"  # files named `.<name>.tmp-<pid>` are unfinished writes
IMAGE_FORMATS = ("png", "jpeg")

# Feature keys of one frame record, and their protobuf list kinds.
EPISODE_ID = "episode_id"
FRAME_INDEX = "frame_index"
IMAGE = "image"
IMAGE_FORMAT = "image_format"
CAPTION = "caption"
HEIGHT = "height"
WIDTH = "width"
FEATURES: dict[str, str] = {
    EPISODE_ID: "bytes",
    FRAME_INDEX: "int64",
    IMAGE: "bytes",
    IMAGE_FORMAT: "bytes",
    CAPTION: "bytes",
    HEIGHT: "int64",
    WIDTH: "int64",
}

# A latent store (metadata `latent` set) holds, instead of the image, the T-KLVAE's
# posterior moments of the frame: raw little-endian float16 bytes of the (h, w, c) mean
# and log-variance, and that shape (three int64). Episode, frame index and caption as above.
LATENT_MEAN = "latent_mean"
LATENT_LOGVAR = "latent_logvar"
LATENT_SHAPE = "latent_shape"
LATENT_DTYPE = "float16"
LATENT_IMAGE_FORMAT = "none"  # metadata image_format of a latent store (no images)
LATENT_FEATURES: dict[str, str] = {
    EPISODE_ID: "bytes",
    FRAME_INDEX: "int64",
    CAPTION: "bytes",
    LATENT_MEAN: "bytes",
    LATENT_LOGVAR: "bytes",
    LATENT_SHAPE: "int64",
}


class DataError(ValueError):
    """Bad data set input: names the file (and key or value) at fault.

    Errors here cross process boundaries (grain worker processes pickle them to the
    parent), so a subclass whose __init__ takes other arguments than the message must
    say how to rebuild itself (`__reduce__`, as RecordError does).
    """


class RecordError(DataError):
    """A bad record: corrupt framing, bad CRC, truncated, unparsable, wrong content."""

    def __init__(self, path: str | os.PathLike, record_index: int, reason: str):
        self.path = os.fspath(path)
        self.record_index = record_index
        self.reason = reason
        super().__init__(f"{self.path}: record {record_index}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        # The default rebuilds from self.args (the message alone), which __init__ refuses:
        # an error raised in a grain worker then reached the caller as a TypeError.
        return type(self), (self.path, self.record_index, self.reason), self.__dict__


# ---------------------------------------------------------------------------------------
# CRC32C (Castagnoli), from google-crc32c (the C library; hardware CRC where the CPU has it).
# ---------------------------------------------------------------------------------------
def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC32C of `data` (init and final xor 0xFFFFFFFF), as TFRecord framing uses."""
    return google_crc32c.value(data if isinstance(data, bytes) else bytes(data))


def masked_crc32c(data: bytes | bytearray | memoryview) -> int:
    """TFRecord's masked CRC: rotate right by 15 and add a constant (mod 2^32)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------
# TFRecord framing.
# ---------------------------------------------------------------------------------------
HEADER_BYTES = 12  # u64 length + u32 masked crc of the length
FOOTER_BYTES = 4  # u32 masked crc of the data


def frame_record(data: bytes) -> bytes:
    """One TFRecord record: length, crc(length), data, crc(data)."""
    length = struct.pack("<Q", len(data))
    return (
        length
        + struct.pack("<I", masked_crc32c(length))
        + data
        + struct.pack("<I", masked_crc32c(data))
    )


def _pread_exact(fd: int, n: int, offset: int, path: str, record_index: int, what: str) -> bytes:
    data = os.pread(fd, n, offset)
    if len(data) != n:
        raise RecordError(
            path,
            record_index,
            f"truncated: {what} needs {n} bytes at offset {offset}, file has {len(data)}",
        )
    return data


def read_header(fd: int, offset: int, path: str, record_index: int) -> int:
    """The data length of the record at `offset`, its length CRC checked."""
    header = _pread_exact(fd, HEADER_BYTES, offset, path, record_index, "record header")
    (length,) = struct.unpack("<Q", header[:8])
    (crc,) = struct.unpack("<I", header[8:])
    if crc != masked_crc32c(header[:8]):
        raise RecordError(path, record_index, f"bad length CRC at offset {offset}")
    return length


def read_record_at(
    fd: int, offset: int, path: str, record_index: int, verify_crc: bool = True
) -> tuple[bytes, int]:
    """(data, offset of the next record) of the record at `offset`."""
    length = read_header(fd, offset, path, record_index)
    size = os.fstat(fd).st_size
    end = offset + HEADER_BYTES + length + FOOTER_BYTES
    if end > size:
        raise RecordError(
            path,
            record_index,
            f"truncated: record of {length} bytes at offset {offset} "
            f"runs past the end of the file ({size} bytes)",
        )
    body = _pread_exact(
        fd, length + FOOTER_BYTES, offset + HEADER_BYTES, path, record_index, "record data"
    )
    data = body[:length]
    if verify_crc:
        (crc,) = struct.unpack("<I", body[length:])
        if crc != masked_crc32c(data):
            raise RecordError(path, record_index, f"bad data CRC at offset {offset}")
    return data, end


def scan_offsets(path: str | os.PathLike, verify_crc: bool = True) -> list[int]:
    """Byte offsets of every record of a TFRecord file, each record's CRCs checked."""
    path = os.fspath(path)
    offsets = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        offset = 0
        while offset < size:
            offsets.append(offset)
            if verify_crc:
                _, offset = read_record_at(fd, offset, path, len(offsets) - 1, True)
            else:
                length = read_header(fd, offset, path, len(offsets) - 1)
                offset += HEADER_BYTES + length + FOOTER_BYTES
                if offset > size:
                    raise RecordError(
                        path,
                        len(offsets) - 1,
                        f"truncated: last record runs past the end of the file ({size} bytes)",
                    )
    finally:
        os.close(fd)
    return offsets


def iter_records(path: str | os.PathLike, verify_crc: bool = True) -> Iterator[bytes]:
    """The records of a TFRecord file, in order (sequential read, CRCs checked)."""
    path = os.fspath(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        offset, index = 0, 0
        while offset < size:
            data, offset = read_record_at(fd, offset, path, index, verify_crc)
            index += 1
            yield data
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------
# tf.train.Example: the subset of the protobuf wire format it uses.
# ---------------------------------------------------------------------------------------
# Example{1: Features{1: map<string, Feature>}}, Feature{oneof 1: BytesList{1: bytes*},
# 2: FloatList{1: float* packed}, 3: Int64List{1: int64* packed}}.
FeatureValue = list[bytes] | list[int] | list[float]


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64 as two's complement, 10 bytes when negative
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _len_field(field: int, payload: bytes) -> bytes:
    return _varint((field << 3) | 2) + _varint(len(payload)) + payload


def encode_example(
    features: Mapping[str, Sequence[bytes] | Sequence[int] | Sequence[float]],
    kinds: Mapping[str, str] | None = None,
) -> bytes:
    """Serializes a tf.train.Example, keys in sorted order (so bytes are reproducible).

    `kinds` maps a key to 'bytes', 'int64' or 'float'; default: FEATURES and
    LATENT_FEATURES, else guessed
    from the first value.
    """
    kinds = dict({**FEATURES, **LATENT_FEATURES} if kinds is None else kinds)
    entries = []
    for key in sorted(features):
        values = list(features[key])
        kind = kinds.get(key)
        if kind is None:
            first = values[0] if values else b""
            kind = (
                "bytes"
                if isinstance(first, bytes)
                else "float"
                if isinstance(first, float)
                else "int64"
            )
        if kind == "bytes":
            inner = b"".join(_len_field(1, bytes(v)) for v in values)
            feature = _len_field(1, inner)
        elif kind == "int64":
            packed = b"".join(_varint(int(v)) for v in values)
            feature = _len_field(3, _len_field(1, packed) if values else b"")
        elif kind == "float":
            packed = struct.pack(f"<{len(values)}f", *values)
            feature = _len_field(2, _len_field(1, packed) if values else b"")
        else:
            raise DataError(f"feature {key!r}: unknown kind {kind!r}")
        entry = _len_field(1, key.encode("utf-8")) + _len_field(2, feature)
        entries.append(_len_field(1, entry))
    return _len_field(1, b"".join(entries))


class _WireError(Exception):
    pass


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise _WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise _WireError("varint too long")


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of a message; LEN values as bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 1:
            if pos + 8 > len(buf):
                raise _WireError("truncated fixed64")
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            if pos + length > len(buf):
                raise _WireError(f"field {field}: length {length} runs past the message")
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            if pos + 4 > len(buf):
                raise _WireError("truncated fixed32")
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise _WireError(f"unsupported wire type {wire}")
        yield field, wire, value


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _decode_feature(buf: bytes) -> FeatureValue:
    result: FeatureValue = []
    for field, wire, value in _fields(buf):
        if wire != 2:
            raise _WireError(f"Feature field {field} has wire type {wire}")
        if field == 1:
            result = [bytes(v) for f, w, v in _fields(value) if f == 1 and w == 2]
        elif field == 2:
            floats: list[float] = []
            for f, w, v in _fields(value):
                if f == 1 and w == 2:
                    floats.extend(struct.unpack(f"<{len(v) // 4}f", v))
                elif f == 1 and w == 5:
                    floats.append(struct.unpack("<f", v)[0])
            result = floats
        elif field == 3:
            ints: list[int] = []
            for f, w, v in _fields(value):
                if f == 1 and w == 2:
                    pos = 0
                    while pos < len(v):
                        x, pos = _read_varint(v, pos)
                        ints.append(_signed64(x))
                elif f == 1 and w == 0:
                    ints.append(_signed64(v))
            result = ints
    return result


def decode_example(data: bytes) -> dict[str, FeatureValue]:
    """Parses a serialized tf.train.Example into {key: list of values}.

    Raises ValueError on malformed protobuf bytes (callers add file and record).
    """
    try:
        features: dict[str, FeatureValue] = {}
        for field, wire, value in _fields(data):
            if field != 1 or wire != 2:
                continue
            for f, w, entry in _fields(value):
                if f != 1 or w != 2:
                    continue
                key, feature = "", b""
                for ef, ew, ev in _fields(entry):
                    if ef == 1 and ew == 2:
                        key = bytes(ev).decode("utf-8")
                    elif ef == 2 and ew == 2:
                        feature = ev
                features[key] = _decode_feature(feature)
        return features
    except (_WireError, UnicodeDecodeError, struct.error) as e:
        raise ValueError(f"malformed tf.train.Example: {e}") from e


# ---------------------------------------------------------------------------------------
# Frames: encode / decode one record.
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Frame:
    """One decoded frame record. image: (H, W, 3) uint8 (None in a latent store, whose
    records carry latent_mean and latent_logvar: (h, w, c) float16)."""

    episode_id: str
    frame_index: int
    image: np.ndarray | None
    caption: str
    latent_mean: np.ndarray | None = None
    latent_logvar: np.ndarray | None = None


def encode_image(image: np.ndarray, image_format: str = "png", jpeg_quality: int = 95) -> bytes:
    """PNG or JPEG bytes of an (H, W, 3) uint8 image (PIL; deterministic for PNG)."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise DataError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    buf = io.BytesIO()
    if image_format == "png":
        Image.fromarray(image).save(buf, format="PNG", compress_level=6)
    elif image_format == "jpeg":
        Image.fromarray(image).save(buf, format="JPEG", quality=int(jpeg_quality))
    else:
        raise DataError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    return buf.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    """(H, W, 3) uint8 of PNG/JPEG bytes."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def encode_frame(
    episode_id: str,
    frame_index: int,
    image: np.ndarray,
    caption: str,
    image_format: str = "png",
    jpeg_quality: int = 95,
) -> bytes:
    """A serialized tf.train.Example for one frame (record payload, unframed)."""
    h, w = np.asarray(image).shape[:2]
    return encode_example(
        {
            EPISODE_ID: [episode_id.encode("utf-8")],
            FRAME_INDEX: [int(frame_index)],
            IMAGE: [encode_image(image, image_format, jpeg_quality)],
            IMAGE_FORMAT: [image_format.encode("ascii")],
            CAPTION: [caption.encode("utf-8")],
            HEIGHT: [int(h)],
            WIDTH: [int(w)],
        }
    )


def _single(features: Mapping[str, FeatureValue], key: str, kind: str) -> Any:
    if key not in features:
        raise ValueError(f"missing feature {key!r}")
    values = features[key]
    if len(values) != 1:
        raise ValueError(f"feature {key!r} has {len(values)} values, expected 1")
    value = values[0]
    if (kind == "bytes") != isinstance(value, bytes):
        raise ValueError(f"feature {key!r} is not a {kind} list")
    return value


def parse_frame(
    data: bytes, expect_size: tuple[int, int] | None = None, decode: bool = True
) -> Frame:
    """Parses and checks one frame record. Raises ValueError saying what is wrong.

    With decode=False the image stays encoded (bytes in `image`), unchecked.
    """
    features = decode_example(data)
    values = {k: _single(features, k, kind) for k, kind in FEATURES.items()}
    height, width = int(values[HEIGHT]), int(values[WIDTH])
    if expect_size is not None and (height, width) != tuple(expect_size):
        raise ValueError(
            f"record says {height}x{width}, data set is {expect_size[0]}x{expect_size[1]}"
        )
    try:
        caption = values[CAPTION].decode("utf-8")
        episode_id = values[EPISODE_ID].decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"caption or episode id is not UTF-8: {e}") from e
    image: Any = values[IMAGE]
    if decode:
        try:
            image = decode_image(image)
        except Exception as e:  # PIL raises several types on bad bytes
            raise ValueError(f"cannot decode image: {e}") from e
        if image.shape != (height, width, 3):
            raise ValueError(
                f"decoded image is {image.shape[0]}x{image.shape[1]}, record says {height}x{width}"
            )
    return Frame(episode_id, int(values[FRAME_INDEX]), image, caption)


def latent_bytes(x: np.ndarray) -> bytes:
    """Raw little-endian float16 bytes of a latent moment (C order)."""
    return np.ascontiguousarray(x, dtype="<f2").tobytes()


def encode_latent_frame(
    episode_id: str,
    frame_index: int,
    mean: np.ndarray,
    logvar: np.ndarray,
    caption: str,
) -> bytes:
    """A serialized tf.train.Example for one latent-store frame (record payload, unframed).

    mean, logvar: (h, w, c) posterior moments, stored as float16.
    """
    mean, logvar = np.asarray(mean), np.asarray(logvar)
    if mean.ndim != 3 or mean.shape != logvar.shape:
        raise DataError(
            f"latent mean {mean.shape} and logvar {logvar.shape} must both be (h, w, c)"
        )
    return encode_example(
        {
            EPISODE_ID: [episode_id.encode("utf-8")],
            FRAME_INDEX: [int(frame_index)],
            CAPTION: [caption.encode("utf-8")],
            LATENT_MEAN: [latent_bytes(mean)],
            LATENT_LOGVAR: [latent_bytes(logvar)],
            LATENT_SHAPE: [int(d) for d in mean.shape],
        },
        LATENT_FEATURES,
    )


def parse_latent_frame(
    data: bytes, expect_shape: Sequence[int] | None = None, decode: bool = True
) -> Frame:
    """Parses and checks one latent-store record. Raises ValueError saying what is wrong.

    With decode=False the moments stay raw bytes, unchecked.
    """
    features = decode_example(data)
    values = {
        k: _single(features, k, kind) for k, kind in LATENT_FEATURES.items() if k != LATENT_SHAPE
    }
    shape = features.get(LATENT_SHAPE)
    if shape is None:
        raise ValueError(f"missing feature {LATENT_SHAPE!r}")
    if len(shape) != 3 or any(not isinstance(d, int) or d < 1 for d in shape):
        raise ValueError(f"feature {LATENT_SHAPE!r} is {shape}, expected three positive ints")
    shape = tuple(int(d) for d in shape)
    if expect_shape is not None and shape != tuple(expect_shape):
        raise ValueError(f"latent shape {shape}, latent store's is {tuple(expect_shape)}")
    try:
        caption = values[CAPTION].decode("utf-8")
        episode_id = values[EPISODE_ID].decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"caption or episode id is not UTF-8: {e}") from e
    mean: Any = values[LATENT_MEAN]
    logvar: Any = values[LATENT_LOGVAR]
    if decode:
        size = 2 * int(np.prod(shape))
        for key, raw in ((LATENT_MEAN, mean), (LATENT_LOGVAR, logvar)):
            if len(raw) != size:
                raise ValueError(
                    f"feature {key!r} has {len(raw)} bytes, {shape} float16 needs {size}"
                )
        mean = np.frombuffer(mean, "<f2").reshape(shape)
        logvar = np.frombuffer(logvar, "<f2").reshape(shape)
    return Frame(episode_id, int(values[FRAME_INDEX]), None, caption, mean, logvar)


# ---------------------------------------------------------------------------------------
# Metadata.
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class ShardInfo:
    """One shard file: frames [first_frame, first_frame + num_frames) of one episode.

    offsets[k] is the byte offset of record k * index_every (the frame
    first_frame + k * index_every).
    """

    file: str
    first_frame: int
    num_frames: int
    offsets: list[int]
    size_bytes: int


@dataclasses.dataclass
class EpisodeInfo:
    id: str
    num_frames: int
    shards: list[ShardInfo]
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class LatentInfo:
    """What a latent store holds (metadata `latent`; absent in an image frame store).

    shape: (h, w, c) of one frame's posterior moments; dtype: their storage type (only
    float16); clip_frames: consecutive frames per encoder call (the T-KLVAE's temporal
    layers make a frame's latent depend on its clip); vae: which VAE produced them
    (`weights` 'checkpoint' with `workdir` and `step`, or 'random' / 'pretrained';
    `config`, the architecture fields of config.vae, and their `config_hash`).
    """

    shape: list[int]
    clip_frames: int
    vae: dict[str, Any] = dataclasses.field(default_factory=dict)
    dtype: str = LATENT_DTYPE

    def validate(self, path: str = METADATA_FILE) -> None:
        shape = list(self.shape)
        if len(shape) != 3 or any(not isinstance(d, int) or d < 1 for d in shape):
            raise DataError(f"{path}: latent.shape {shape} must be three positive ints (h, w, c)")
        if self.dtype != LATENT_DTYPE:
            raise DataError(f"{path}: latent.dtype {self.dtype!r} is not {LATENT_DTYPE!r}")
        if self.clip_frames < 1:
            raise DataError(f"{path}: latent.clip_frames must be >= 1, got {self.clip_frames}")


@dataclasses.dataclass
class CaptionInfo:
    """What a store's captions ask of a text encoder (metadata `captions`; absent in stores
    written before it was recorded: nuwa_jax.data.captions reads their records instead).

    frames: captioned frames; distinct: distinct captions; max_utf8_bytes: UTF-8 bytes of
    the longest caption, `longest` (the byte tokenizer reads it as max_utf8_bytes + 2
    tokens: BOS, bytes, EOS); file: CAPTIONS_FILE, every distinct caption with its number
    of frames, so that any tokenizer's longest caption and cut frames count exactly.
    """

    frames: int
    distinct: int
    max_utf8_bytes: int
    longest: str
    file: str = CAPTIONS_FILE

    def validate(self, path: str = METADATA_FILE) -> None:
        if min(self.frames, self.distinct, self.max_utf8_bytes) < 0 or self.distinct > self.frames:
            raise DataError(
                f"{path}: captions: frames={self.frames}, distinct={self.distinct}, "
                f"max_utf8_bytes={self.max_utf8_bytes} must be >= 0, distinct <= frames"
            )
        if len(self.longest.encode("utf-8")) != self.max_utf8_bytes:
            raise DataError(
                f"{path}: captions.longest is {len(self.longest.encode('utf-8'))} UTF-8 bytes, "
                f"captions.max_utf8_bytes says {self.max_utf8_bytes}"
            )
        if not self.file or os.path.basename(self.file) != self.file:
            raise DataError(f"{path}: captions.file {self.file!r} must be a file name in the store")


@dataclasses.dataclass
class DatasetMetadata:
    """Contents of metadata.json (see docs/data.md).

    `latent` set: a latent store (records carry posterior moments, image_format 'none';
    height and width are those of the frames that were encoded). `captions`: the caption
    summary (CaptionInfo), None in stores written before it was recorded.
    """

    fps: float
    height: int
    width: int
    image_format: str
    index_every: int
    frames_per_shard: int
    episodes: list[EpisodeInfo]
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION
    latent: LatentInfo | None = None
    captions: CaptionInfo | None = None

    def to_json(self) -> dict[str, Any]:
        obj = dataclasses.asdict(self)
        for key in ("latent", "captions"):  # absent: metadata.json exactly as before them
            if obj[key] is None:
                del obj[key]
        return obj

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], path: str = METADATA_FILE) -> DatasetMetadata:
        try:
            if obj.get("format") != FORMAT_NAME:
                raise ValueError(f"format is {obj.get('format')!r}, expected {FORMAT_NAME!r}")
            if obj.get("version") != FORMAT_VERSION:
                raise ValueError(f"version {obj.get('version')!r} is not {FORMAT_VERSION}")
            episodes = [
                EpisodeInfo(
                    id=str(e["id"]),
                    num_frames=int(e["num_frames"]),
                    shards=[ShardInfo(**s) for s in e["shards"]],
                    extra=dict(e.get("extra", {})),
                )
                for e in obj["episodes"]
            ]
            meta = cls(
                fps=float(obj["fps"]),
                height=int(obj["height"]),
                width=int(obj["width"]),
                image_format=str(obj["image_format"]),
                index_every=int(obj["index_every"]),
                frames_per_shard=int(obj["frames_per_shard"]),
                episodes=episodes,
                extra=dict(obj.get("extra", {})),
                latent=LatentInfo(**obj["latent"]) if obj.get("latent") is not None else None,
                captions=(
                    CaptionInfo(**obj["captions"]) if obj.get("captions") is not None else None
                ),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path}: bad metadata: {type(e).__name__}: {e}") from e
        meta.validate(path)
        return meta

    def validate(self, path: str = METADATA_FILE) -> None:
        """Checks shard ranges tile each episode, offset counts fit, the caption summary
        counts every frame."""
        if self.captions is not None:
            self.captions.validate(path)
            total = sum(ep.num_frames for ep in self.episodes)
            if self.captions.frames != total:
                raise DataError(
                    f"{path}: captions.frames={self.captions.frames}, the episodes hold "
                    f"{total} frames"
                )
        if self.latent is not None:
            self.latent.validate(path)
            if self.image_format != LATENT_IMAGE_FORMAT:
                raise DataError(
                    f"{path}: a latent store's image_format must be {LATENT_IMAGE_FORMAT!r}, "
                    f"got {self.image_format!r}"
                )
        elif self.image_format not in IMAGE_FORMATS:
            raise DataError(f"{path}: image_format {self.image_format!r} not in {IMAGE_FORMATS}")
        if self.index_every < 1:
            raise DataError(f"{path}: index_every must be >= 1, got {self.index_every}")
        seen = set()
        for ep in self.episodes:
            if ep.id in seen:
                raise DataError(f"{path}: episode {ep.id!r} listed twice")
            seen.add(ep.id)
            start = 0
            for s in ep.shards:
                if s.first_frame != start or s.num_frames < 1:
                    raise DataError(
                        f"{path}: episode {ep.id!r}: shard {s.file} covers frames "
                        f"from {s.first_frame} ({s.num_frames}), expected from {start}"
                    )
                if len(s.offsets) != -(-s.num_frames // self.index_every):
                    raise DataError(
                        f"{path}: shard {s.file}: {len(s.offsets)} offsets for "
                        f"{s.num_frames} frames at index_every={self.index_every}"
                    )
                start += s.num_frames
            if start != ep.num_frames:
                raise DataError(
                    f"{path}: episode {ep.id!r}: shards cover {start} frames, "
                    f"num_frames is {ep.num_frames}"
                )


def parse_record(data: bytes, metadata: DatasetMetadata, decode: bool = True) -> Frame:
    """One record of the data set described by `metadata`: an image or a latent frame."""
    if metadata.latent is not None:
        return parse_latent_frame(data, metadata.latent.shape, decode)
    return parse_frame(data, (metadata.height, metadata.width), decode)


def load_metadata(root: str | os.PathLike) -> DatasetMetadata:
    path = os.path.join(os.fspath(root), METADATA_FILE)
    if not os.path.exists(path):
        raise DataError(f"{path}: no metadata (not a data set directory, or unfinished write)")
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON: {e}") from e
    return DatasetMetadata.from_json(obj, path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to a temporary name next to `path`, fsyncs, then renames."""
    path = os.fspath(path)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_metadata(root: str | os.PathLike, meta: DatasetMetadata) -> None:
    meta.validate()
    atomic_write_bytes(
        os.path.join(os.fspath(root), METADATA_FILE),
        json.dumps(meta.to_json(), indent=1).encode("utf-8"),
    )


def temp_name(path: str) -> str:
    """The temporary name a file is written under before its atomic rename."""
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}{TEMP_MARKER}{os.getpid()}")


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and TEMP_MARKER in name


_SAFE = re.compile(r"[^A-Za-z0-9_-]")


def safe_episode_name(episode_id: str) -> str:
    """A file-name-safe form of an episode id (unsafe ids get a short hash suffix)."""
    import hashlib

    clean = _SAFE.sub("_", episode_id)[:80] or "episode"
    if clean != episode_id:
        clean += "-" + hashlib.sha1(episode_id.encode("utf-8")).hexdigest()[:8]
    return clean


def shard_file_name(episode_id: str, shard_index: int) -> str:
    return f"{safe_episode_name(episode_id)}.{shard_index:05d}{SHARD_SUFFIX}"


# ---------------------------------------------------------------------------------------
# Random-access reader.
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class FrameBatch:
    """Frames read by FrameStore. indices: the frame indices actually returned (with
    skip_bad, bad ones are left out); images: (n, H, W, 3) uint8 (or a list of encoded
    bytes with decode=False); captions: n strings. A latent store: images None,
    latent_mean and latent_logvar (n, h, w, c) float16 (lists of raw bytes with
    decode=False)."""

    episode_id: str
    indices: np.ndarray
    images: Any
    captions: list[str]
    latent_mean: Any = None
    latent_logvar: Any = None


class FrameStore:
    """Random access to the frames of a data set directory by (episode, frame index).

    Reads only the records asked for: (episode, index) -> shard -> offset of the
    enclosing index chunk -> record headers skipped -> one record read, CRC-checked,
    parsed and checked (episode id, frame index, size). Thread-safe (positional
    reads); picklable (file handles are reopened lazily), so grain workers can hold it.

    skip_bad=False: a bad record raises RecordError naming the file and record index.
    skip_bad=True: it is skipped, counted in `num_bad`, and listed in `bad_records`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        skip_bad: bool = False,
        verify_crc: bool = True,
        max_open_files: int = 64,
    ):
        self.root = os.fspath(root)
        self.skip_bad = skip_bad
        self.verify_crc = verify_crc
        self.max_open_files = max_open_files
        self.metadata = load_metadata(self.root)
        self._episodes = {ep.id: ep for ep in self.metadata.episodes}
        self._starts = {
            ep.id: np.array([s.first_frame for s in ep.shards], np.int64)
            for ep in self.metadata.episodes
        }
        self.bad_records: list[tuple[str, int, str]] = []
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._lock = threading.Lock()
        self._fds: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._chunk_cache: collections.OrderedDict[tuple[str, int], list[int]] = (
            collections.OrderedDict()
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_lock", "_fds", "_chunk_cache"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def __enter__(self) -> FrameStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def episodes(self) -> tuple[str, ...]:
        return tuple(self._episodes)

    @property
    def num_bad(self) -> int:
        return len(self.bad_records)

    def num_frames(self, episode_id: str) -> int:
        return self._episode(episode_id).num_frames

    def _episode(self, episode_id: str) -> EpisodeInfo:
        try:
            return self._episodes[episode_id]
        except KeyError:
            raise KeyError(f"{self.root}: no episode {episode_id!r}") from None

    def _fd(self, path: str) -> int:
        with self._lock:
            fd = self._fds.get(path)
            if fd is not None:
                self._fds.move_to_end(path)
                return fd
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as e:
                raise DataError(f"{path}: cannot open shard: {e}") from e
            self._fds[path] = fd
            while len(self._fds) > self.max_open_files:
                _, old = self._fds.popitem(last=False)
                os.close(old)
            return fd

    def locate(self, episode_id: str, frame_index: int) -> tuple[ShardInfo, int]:
        """(shard, record index within the shard) of a frame."""
        ep = self._episode(episode_id)
        if not 0 <= frame_index < ep.num_frames:
            raise IndexError(
                f"episode {episode_id!r} has {ep.num_frames} frames, asked for frame {frame_index}"
            )
        k = int(np.searchsorted(self._starts[episode_id], frame_index, side="right")) - 1
        shard = ep.shards[k]
        return shard, frame_index - shard.first_frame

    def _record_offset(self, shard: ShardInfo, path: str, fd: int, record: int) -> int:
        every = self.metadata.index_every
        chunk, within = divmod(record, every)
        offset = shard.offsets[chunk]
        if within == 0:
            return offset
        key = (path, chunk)
        with self._lock:
            cached = list(self._chunk_cache.get(key, [offset]))
        if len(cached) <= within:
            # Walk the headers only as far as needed: a bad header further on in the
            # chunk must not make the records before it unreadable.
            first = chunk * every
            while len(cached) <= within:
                j = len(cached)
                length = read_header(fd, cached[-1], path, first + j - 1)
                cached.append(cached[-1] + HEADER_BYTES + length + FOOTER_BYTES)
            with self._lock:
                self._chunk_cache[key] = cached
                self._chunk_cache.move_to_end(key)
                while len(self._chunk_cache) > 4096:
                    self._chunk_cache.popitem(last=False)
        return cached[within]

    def read_record(self, episode_id: str, frame_index: int, decode: bool = True) -> Frame:
        """One frame; raises RecordError (file, record index) if the record is bad."""
        shard, record = self.locate(episode_id, frame_index)
        path = os.path.join(self.root, shard.file)
        fd = self._fd(path)
        offset = self._record_offset(shard, path, fd, record)
        data, _ = read_record_at(fd, offset, path, record, self.verify_crc)
        try:
            frame = parse_record(data, self.metadata, decode)
        except ValueError as e:
            raise RecordError(path, record, str(e)) from e
        if frame.episode_id != episode_id or frame.frame_index != frame_index:
            raise RecordError(
                path,
                record,
                f"holds episode {frame.episode_id!r} frame "
                f"{frame.frame_index}, expected {episode_id!r} frame {frame_index}",
            )
        return frame

    def read_frames(
        self, episode_id: str, indices: Sequence[int] | np.ndarray, decode: bool = True
    ) -> FrameBatch:
        """The frames `indices` of an episode, in the order given."""
        kept, images, captions, means, logvars = [], [], [], [], []
        for i in np.asarray(indices, np.int64).reshape(-1):
            try:
                frame = self.read_record(episode_id, int(i), decode)
            except RecordError as e:
                if not self.skip_bad:
                    raise
                with self._lock:
                    self.bad_records.append((e.path, e.record_index, e.reason))
                continue
            kept.append(int(i))
            images.append(frame.image)
            captions.append(frame.caption)
            means.append(frame.latent_mean)
            logvars.append(frame.latent_logvar)
        indices = np.asarray(kept, np.int64)
        latent = self.metadata.latent
        if latent is not None:
            if decode:
                empty = np.zeros((0, *latent.shape), np.float16)
                means = np.stack(means) if means else empty
                logvars = np.stack(logvars) if logvars else empty
            return FrameBatch(episode_id, indices, None, captions, means, logvars)
        if decode:
            h, w = self.metadata.height, self.metadata.width
            images = np.stack(images) if images else np.zeros((0, h, w, 3), np.uint8)
        return FrameBatch(episode_id, indices, images, captions)

    def read_window(
        self, episode_id: str, start: int, length: int, stride: int = 1, decode: bool = True
    ) -> FrameBatch:
        """Frames start, start + stride, ..., L of them (a hierarchy level's view)."""
        last = start + (length - 1) * stride
        if start < 0 or length < 1 or stride < 1 or last >= self.num_frames(episode_id):
            raise IndexError(
                f"window start={start} length={length} stride={stride} does not "
                f"fit episode {episode_id!r} of {self.num_frames(episode_id)} frames"
            )
        return self.read_frames(episode_id, np.arange(start, last + 1, stride), decode)


def read_frames(
    root: str | os.PathLike, episode_id: str, indices: Sequence[int] | np.ndarray
) -> FrameBatch:
    """One-shot convenience: FrameStore(root).read_frames(episode_id, indices)."""
    with FrameStore(root) as store:
        return store.read_frames(episode_id, indices)
