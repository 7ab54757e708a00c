"""Video files: writing generated videos (mp4 streamed, gif, keyframe contact sheet,
filmstrip, the uint8 frames as .npy) and reading the user's images and videos (generation
from given frames).

Everything is written under a temporary name in the target directory and renamed when
complete, so a crash or a preemption never leaves a file that looks whole. The mp4 writer
takes frames as they become final (generation finishes the last level chunk by chunk, in
time order) so long videos never sit in memory whole, and flushes every packet the encoder
has emitted to the partial file: libx264 holds back about 40 frames (its rc-lookahead,
plus one per frame thread), so the file trails the final frames by that much. Readers
raise `UnreadableFileError` naming the file; input images and videos must have sides
within [MIN_INPUT_SIDE, MAX_INPUT_SIDE] pixels, checked from the header before decoding.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import signal
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from fractions import Fraction

import numpy as np
from PIL import Image


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """[-1, 1] floats (any leading axes, channels last) -> uint8 RGB."""
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        return frames
    return np.clip(np.round((frames + 1.0) * 127.5), 0, 255).astype(np.uint8)


def partial_pattern(path: str) -> str:
    """The glob of the temporary files `_temp_path(path)` makes (for a caller's cleanup)."""
    directory = os.path.dirname(os.path.abspath(path))
    base, ext = os.path.splitext(os.path.basename(path))
    return os.path.join(glob.escape(directory), f".{glob.escape(base)}.*.partial{ext}")


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGTERM / SIGINT wait (are blocked, then delivered) while a temporary file is created
    and its name handed over, so a signal never leaves a file no cleanup knows of."""
    held = {signal.SIGTERM, signal.SIGINT}
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _temp_path(path: str) -> str:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base, ext = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".partial{ext}", dir=directory)
    try:
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would outlive the rename
    except BaseException:
        os.remove(tmp)
        raise
    return tmp


class Mp4Writer:
    """Streams uint8 or [-1, 1] frames (H, W, 3) to an H.264 mp4, renamed into place on close.

    Use as a context manager; an exception inside (KeyboardInterrupt and SystemExit too)
    removes the partial file. Every packet the encoder emits is flushed to the partial
    file at once (the muxer's `flush_packets`; by default it sits in a 32 KiB buffer, which
    held a whole short video until close); libx264 itself emits a frame's packet about
    40 frames later (rc-lookahead 40, plus one frame per encoder thread). `keep`: frame
    indices whose (uint8) frames are kept in memory as they stream by, for the stills
    (contact sheet, filmstrip, gif) written next to the mp4: `kept(indices)`.
    """

    def __init__(self, path: str, fps: float, height: int, width: int, crf: int = 18,
                 keep: Iterable[int] = ()):  # fmt: skip
        import av

        if height % 2 or width % 2:
            raise ValueError(f"{path}: H.264 needs even frame sizes, got {height}x{width}")
        self.path, self._tmp = path, None
        try:
            with _signals_held():
                self._tmp = _temp_path(path)
            self._container = av.open(self._tmp, mode="w", format="mp4",
                                      container_options={"flush_packets": "1"})  # fmt: skip
        except BaseException:
            if self._tmp is not None:
                os.remove(self._tmp)
            raise
        try:
            self._stream = self._container.add_stream(
                "libx264", rate=Fraction(fps).limit_denominator(1000)
            )
            self._stream.height, self._stream.width = height, width
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = {"crf": str(crf)}
        except BaseException:
            self.abort()
            raise
        self.frames_written = 0
        self._keep = {int(i) for i in keep}
        self._kept: dict[int, np.ndarray] = {}

    def write(self, frames: np.ndarray) -> None:
        """Appends frames (N, H, W, 3) or one frame (H, W, 3)."""
        import av

        frames = to_uint8(frames)
        for frame in frames[None] if frames.ndim == 3 else frames:
            for packet in self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                self._container.mux(packet)
            if self.frames_written in self._keep:
                self._kept[self.frames_written] = frame
            self.frames_written += 1

    def kept(self, indices: Iterable[int]) -> np.ndarray:
        """The kept frames at `indices` (each given in `keep`), stacked (N, H, W, 3) uint8."""
        return np.stack([self._kept[int(i)] for i in indices])

    def close(self) -> None:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        try:
            self._container.close()
        finally:
            if os.path.exists(self._tmp):
                os.remove(self._tmp)

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_mp4(path: str, frames: Iterable[np.ndarray], fps: float) -> int:
    """Writes an iterable of frame batches (N, H, W, 3) to `path`; returns the frame count."""
    writer = None
    try:
        for chunk in frames:
            chunk = to_uint8(chunk)
            chunk = chunk[None] if chunk.ndim == 3 else chunk
            if writer is None:
                writer = Mp4Writer(path, fps, chunk.shape[1], chunk.shape[2])
            writer.write(chunk)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is None:
        raise ValueError(f"{path}: no frames to write")
    writer.close()
    return writer.frames_written


def write_atomically(path: str, write: Callable[[str], None]) -> None:
    """`write(tmp)` writes the file under a temporary name, then it is renamed to `path`."""
    tmp = None
    try:
        with _signals_held():
            tmp = _temp_path(path)
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        raise


def _save_image(path: str, image: Image.Image, **kw) -> None:
    write_atomically(path, lambda tmp: image.save(tmp, format=kw.pop("format"), **kw))


def write_npy(path: str, frames: np.ndarray) -> None:
    """Frames (uint8 or [-1, 1]) as a uint8 .npy array (N, H, W, 3): exact pixels, no codec."""
    frames = to_uint8(frames)

    def save(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, frames)

    write_atomically(path, save)


def write_gif(path: str, frames: np.ndarray, fps: float, max_frames: int = 512) -> None:
    """An animated gif of up to `max_frames` frames, evenly subsampled from `frames`."""
    frames = to_uint8(frames)
    if len(frames) > max_frames:
        frames = frames[np.linspace(0, len(frames) - 1, max_frames).round().astype(int)]
    images = [Image.fromarray(f) for f in frames]
    _save_image(
        path,
        images[0],
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=max(20, round(1000 / fps)),
        loop=0,
    )


def grid(frames: np.ndarray, columns: int, pad: int = 2) -> np.ndarray:
    """Tiles frames (N, H, W, 3) into a (rows x columns) uint8 image with white padding."""
    frames = to_uint8(frames)
    n, h, w, c = frames.shape
    rows = math.ceil(n / columns)
    out = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 255, np.uint8)
    for i, f in enumerate(frames):
        r, q = divmod(i, columns)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        out[y : y + h, x : x + w] = f
    return out


def write_contact_sheet(path: str, keyframes: np.ndarray, columns: int | None = None) -> None:
    """A PNG grid of the keyframes (the global level's frames)."""
    columns = columns or math.ceil(math.sqrt(len(keyframes)))
    _save_image(path, Image.fromarray(grid(keyframes, columns)), format="PNG")


def filmstrip_indices(num_frames: int, count: int) -> np.ndarray:
    """`count` frame indices spread evenly over a video (first and last included)."""
    return np.unique(np.linspace(0, num_frames - 1, min(count, num_frames)).round().astype(int))


def write_filmstrip(path: str, frames: np.ndarray | Sequence[np.ndarray]) -> None:
    """A PNG strip of frames in one row (callers pick them with `filmstrip_indices`)."""
    frames = np.asarray(frames)
    _save_image(path, Image.fromarray(grid(frames, len(frames))), format="PNG")


# ---------------------------------------------------------------------------------------
# Reading.
# ---------------------------------------------------------------------------------------
class UnreadableFileError(ValueError):
    """An input image or video cannot be read (the message names the file and why)."""


# Input frames are resized to data.resolution (<= 256 in every config): smaller than 16 px
# is no picture, larger than 4096 px only costs memory (10000x10000: 300 MB of RGB alone).
MIN_INPUT_SIDE, MAX_INPUT_SIDE = 16, 4096


def check_input_size(path: str, width: int, height: int) -> None:
    """UnreadableFileError naming `path` unless both sides are within the input limits."""
    if min(width, height) < MIN_INPUT_SIDE or max(width, height) > MAX_INPUT_SIDE:
        raise UnreadableFileError(
            f"{path}: {width}x{height} pixels; input frames need sides of {MIN_INPUT_SIDE} to "
            f"{MAX_INPUT_SIDE} pixels"
        )


def resize_and_crop(image: np.ndarray, resolution: int) -> np.ndarray:
    """Shorter side to `resolution` (bicubic), then a centred square crop."""
    h, w = image.shape[:2]
    scale = resolution / min(h, w)
    nh, nw = max(resolution, round(h * scale)), max(resolution, round(w * scale))
    im = Image.fromarray(image).resize((nw, nh), Image.Resampling.BICUBIC)
    top, left = (nh - resolution) // 2, (nw - resolution) // 2
    return np.asarray(im.crop((left, top, left + resolution, top + resolution)))


def read_image(path: str) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB; its size is checked (`check_input_size`) from
    the header, before the pixels are decoded (Image.open reads only the header)."""
    if not os.path.isfile(path):
        raise UnreadableFileError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():  # our limit, far below PIL's, applies instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            check_input_size(path, *im.size)
            return np.asarray(im.convert("RGB"))
    except Image.DecompressionBombError as e:  # PIL refuses before giving the size
        raise UnreadableFileError(
            f"{path}: too large ({e}); input frames need sides of at most {MAX_INPUT_SIDE} pixels"
        ) from e
    except (OSError, ValueError) as e:
        if isinstance(e, UnreadableFileError):
            raise
        raise UnreadableFileError(f"{path}: unreadable image: {e}") from e


def read_video(path: str, max_frames: int | None = None) -> np.ndarray:
    """Every frame (or the first `max_frames`) of a video file as (N, H, W, 3) uint8 RGB."""
    import av

    if not os.path.isfile(path):
        raise UnreadableFileError(f"{path}: no such file")
    frames = []
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise UnreadableFileError(f"{path}: unreadable video: no video stream")
            codec = container.streams.video[0].codec_context
            check_input_size(path, codec.width, codec.height)
            for frame in container.decode(container.streams.video[0]):
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except UnreadableFileError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise UnreadableFileError(f"{path}: unreadable video: {e}") from e
    if not frames:
        raise UnreadableFileError(f"{path}: unreadable video: no frames")
    return np.stack(frames)
