"""The grain training pipeline: frame store -> this host's files -> DoD training windows.

Stages (one host):

1. `host_runs`: the data set's shard files, in data set order (episode by episode,
   shard by shard), are split into `process_count` contiguous blocks; this host reads
   only its own block. Consecutive shards of one episode form a RUN of consecutive
   frames. An error if there are fewer files than hosts.
2. `WindowIndex`: a random-access index of every training window of the chosen levels
   that fits inside one run: (level, run, start). A window of level j is L frames at the
   plan's stride s_j (`HierarchyPlan.window`): the global window spans a whole clip of
   N(m) frames, a local one (L-1) s_j + 1 frames; starts are any frame, or only the
   level-above grid with `align_windows`. The index is lazy (Python ranges), O(runs).
3. grain: `MapDataset.source(index).shuffle(seed).repeat()` (a new permutation every
   epoch) -> `random_map(LoadWindow)` (read the L records, decode, normalise to
   float32 in [-1, 1], tokenise the L captions) -> `to_iter_dataset` (threads) ->
   `batch` -> optionally `mp_prefetch` (worker processes). The iterator's
   `get_state()` / `set_state()` (and `grain.checkpoint.CheckpointSave/Restore` with
   orbax) resume exactly: everything is a function of (seed, element index).
4. `global_batches`: each host batch becomes global arrays on the mesh
   (`parallel.global_batch`, leading axis 'batch').

A batch: 'video' (B, L, H, W, 3) float32 in [-1, 1]; 'tokens' (B, L, T) int32; 'frame_index'
(B, L) int32 (frame indices within the episode); 'level' (B,) int32; 'cond_mask' (B, L)
bool (`plan.condition_mask(level)`); 'episode' (B,) int32 (index into the data set's
episodes); 'bad_records' (B,) int32 (bad windows skipped to make the example; sum it
for the metrics).

Bad records: the store raises `schema.RecordError` naming the file and record index.
With `data.skip_bad` the window is replaced by another, drawn from the example's own
random stream (so resumption stays exact), and counted in 'bad_records'; `SkippedRecords`
logs which record it was (rate-limited) and, given `skipped_records`, appends it to a
JSON-lines file (the trainer's: workdir/skipped_records.jsonl).

Latents: with `data.latents_dir` set the same pipeline reads a LATENT STORE instead
(a frame store whose records carry the T-KLVAE's posterior moments, written by
nuwa_jax.data.latents; see docs/data.md): nothing is decoded, and examples carry
'latent_mean' and 'latent_logvar' (B, L, h, w, c) float16 instead of 'video'; the
trainer samples latents from them on device. `check_latent_store` refuses a store
whose latent shape or VAE architecture does not match the config, naming the store
and key. Otherwise the trainer encodes 'video' on device after `global_batches`.
`transform(example) -> example` runs on every example after loading and before
batching, in the loader threads / workers; with `decode_images=False` the PNG/JPEG
payloads are not decoded (and 'video' is absent).
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import grain
import numpy as np
from PIL import Image

from nuwa_jax.data import schema
from nuwa_jax.hierarchy import HierarchyPlan

T = TypeVar("T")
Example = dict[str, Any]
Tokenizer = Callable[[list[str]], np.ndarray]
log = logging.getLogger(__name__)

SKIPPED_RECORDS_FILE = "skipped_records.jsonl"  # in a training run's workdir


# ---------------------------------------------------------------------------------------
# Files -> hosts.
# ---------------------------------------------------------------------------------------
def split_files(files: Sequence[T], process_index: int, process_count: int) -> list[T]:
    """This process's contiguous block of `files` (sizes differ by at most one).

    The blocks of processes 0..count-1 are disjoint and cover `files` in order.
    """
    if process_count < 1:
        raise ValueError(f"split_files: process_count={process_count} must be >= 1")
    if not 0 <= process_index < process_count:
        raise ValueError(
            f"split_files: process_index={process_index} is not in [0, {process_count})"
        )
    if len(files) < process_count:
        raise ValueError(
            f"split_files: {len(files)} files cannot be split across {process_count} hosts "
            "(every host needs at least one file of its own); write smaller shards "
            "(data.frames_per_shard) or use fewer hosts"
        )
    lo = process_index * len(files) // process_count
    hi = (process_index + 1) * len(files) // process_count
    return list(files[lo:hi])


@dataclasses.dataclass(frozen=True)
class Run:
    """Consecutive frames [first_frame, stop_frame) of one episode in this host's files."""

    episode: int  # index into metadata.episodes
    episode_id: str
    first_frame: int
    stop_frame: int
    files: tuple[str, ...]

    @property
    def num_frames(self) -> int:
        return self.stop_frame - self.first_frame


def dataset_files(metadata: schema.DatasetMetadata) -> list[tuple[int, schema.ShardInfo]]:
    """(episode index, shard) of every shard file, in data set order."""
    return [(e, s) for e, ep in enumerate(metadata.episodes) for s in ep.shards]


def host_runs(
    metadata: schema.DatasetMetadata, process_index: int, process_count: int
) -> list[Run]:
    """The runs of consecutive frames in this host's block of shard files."""
    mine = split_files(dataset_files(metadata), process_index, process_count)
    runs: list[Run] = []
    for e, shard in mine:
        last = runs[-1] if runs else None
        if last is not None and last.episode == e and last.stop_frame == shard.first_frame:
            runs[-1] = dataclasses.replace(
                last,
                stop_frame=shard.first_frame + shard.num_frames,
                files=last.files + (shard.file,),
            )
        else:
            runs.append(
                Run(
                    e,
                    metadata.episodes[e].id,
                    shard.first_frame,
                    shard.first_frame + shard.num_frames,
                    (shard.file,),
                )
            )
    return runs


# ---------------------------------------------------------------------------------------
# Windows.
# ---------------------------------------------------------------------------------------
class WindowIndex(Sequence[tuple[int, int, int]]):
    """Random access to every training window of `levels` inside `runs`.

    Item i is (level, run index, start frame); the window's frames are
    `plan.window(level, start)`, all inside the run. Lazy: memory O(levels x runs).
    """

    def __init__(
        self,
        plan: HierarchyPlan,
        runs: Sequence[Run],
        levels: Sequence[int],
        aligned: bool = False,
    ):
        self.plan, self.runs, self.aligned = plan, list(runs), bool(aligned)
        self.levels = tuple(int(j) for j in levels)
        if not self.levels:
            raise ValueError("WindowIndex: no levels given")
        self._blocks: list[tuple[int, int, range]] = []
        self._ends: list[int] = []
        total = 0
        for level in self.levels:
            count = 0
            for r, run in enumerate(self.runs):
                starts = plan.window_start_range(level, run.stop_frame, aligned, run.first_frame)
                if len(starts):
                    total += len(starts)
                    count += len(starts)
                    self._blocks.append((level, r, starts))
                    self._ends.append(total)
            if count == 0:
                longest = max((run.num_frames for run in self.runs), default=0)
                raise ValueError(
                    f"no training window of level {level} (span {plan.window_span(level)} "
                    f"frames at stride {plan.stride(level)}) fits this host's runs of "
                    f"consecutive frames (longest: {longest} frames, {len(self.runs)} runs); "
                    "use longer episodes, fewer hosts or a smaller hierarchy"
                )

    def __len__(self) -> int:
        return self._ends[-1]

    def __getitem__(self, i: int) -> tuple[int, int, int]:  # type: ignore[override]
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"WindowIndex: index {i} is not in [0, {len(self)})")
        b = bisect.bisect_right(self._ends, i)
        level, r, starts = self._blocks[b]
        return level, r, starts[i - (self._ends[b - 1] if b else 0)]

    def windows_per_level(self) -> dict[int, int]:
        """Distinct windows (start frames) of each level in this index."""
        out = dict.fromkeys(self.levels, 0)
        for level, _, starts in self._blocks:
            out[level] += len(starts)
        return out


def count_windows(
    plan: HierarchyPlan, runs: Sequence[Run], levels: Sequence[int], aligned: bool = False
) -> dict[int, int]:
    """Distinct training windows (start frames) of each of `levels` inside `runs`: one
    epoch of the stream. 0 where none fits (`WindowIndex` refuses such a level)."""
    return {
        int(j): sum(
            len(plan.window_start_range(j, r.stop_frame, aligned, r.first_frame)) for r in runs
        )  # fmt: skip
        for j in levels
    }


def synthetic_runs(config: Any) -> list[Run]:
    """One run per episode of the synthetic benchmark that `config.data` renders
    (synthetic_episodes x synthetic_frames): its windows, counted without rendering."""
    from nuwa_jax.data import synthetic

    d = config.data
    return [Run(e, synthetic.episode_id(e), 0, int(d.synthetic_frames), ())
            for e in range(int(d.synthetic_episodes))]  # fmt: skip


@dataclasses.dataclass(frozen=True)
class WindowSummary:
    """Distinct training windows per level of a data set: how many different examples a
    level's model can see (e.g. one global window per episode when episodes are exactly
    N(m) frames long)."""

    source: str  # what was counted: a store's path, or the config's synthetic benchmark
    plan: HierarchyPlan
    episodes: int
    frames: int
    windows: dict[int, int]  # level -> distinct windows in the whole data set
    host_windows: dict[int, int] | None = None  # this host's (several hosts only)

    def lines(self) -> list[str]:
        """One line per level, for logs and the CLI."""
        total = sum(self.windows.values())
        out = [f"{self.source}: {self.episodes} episodes, {self.frames} frames"]
        for j, n in self.windows.items():
            line = (
                f"level {j} (stride {self.plan.stride(j)}, span {self.plan.window_span(j)} "
                f"frames): {n:,} distinct windows, {n / max(self.episodes, 1):,.0f} per episode"
            )
            if len(self.windows) > 1:
                line += f", {n / max(total, 1):.1%} of the stream"
            if self.host_windows is not None:
                line += f" (this host: {self.host_windows[j]:,})"
            out.append(line)
        return out


def window_summary(
    config: Any,
    *,
    plan: HierarchyPlan | None = None,
    levels: Sequence[int] | None = None,
    data_dir: str | os.PathLike | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> WindowSummary:
    """The distinct training windows of every level `make_dataset` would mix.

    Counts the frame store `data_dir` (default: data.latents_dir, else data.data_dir) when
    it holds a metadata.json; otherwise, for data.source='synthetic', the benchmark the
    config would render (nothing is rendered). plan, levels: as `make_dataset`.
    With several processes, `host_windows` counts this process's runs too.
    """
    plan = plan_from_config(config) if plan is None else plan
    levels = resolve_levels(config, plan, levels)
    aligned = bool(config.data.align_windows)
    if data_dir is None:
        data_dir = config.data.latents_dir or config.data.data_dir
    root = os.fspath(data_dir) if data_dir else ""
    if root and os.path.isfile(os.path.join(root, schema.METADATA_FILE)):
        meta = schema.load_metadata(root)
        runs = host_runs(meta, 0, 1)
        pid, count = _process(process_index, process_count)
        host = None
        if count > 1:
            host = count_windows(plan, host_runs(meta, pid, count), levels, aligned)
        frames = sum(ep.num_frames for ep in meta.episodes)
        return WindowSummary(root, plan, len(meta.episodes), frames,
                             count_windows(plan, runs, levels, aligned), host)  # fmt: skip
    if config.data.source != "synthetic":
        raise schema.DataError(
            f"{root or 'data.data_dir'}: no metadata.json, and data.source="
            f"{config.data.source!r} renders nothing to count; give a frame store"
        )
    runs = synthetic_runs(config)
    d = config.data
    source = (
        f"synthetic benchmark of the config ({d.synthetic_episodes} episodes x "
        f"{d.synthetic_frames} frames, not rendered)"
    )
    return WindowSummary(source, plan, len(runs), sum(r.num_frames for r in runs),
                         count_windows(plan, runs, levels, aligned))  # fmt: skip


# ---------------------------------------------------------------------------------------
# Latent stores.
# ---------------------------------------------------------------------------------------
# config.vae fields that do not change what the encoder computes: latents are stored
# unshifted and unscaled, and where the weights came from is recorded separately.
VAE_FIELDS_NOT_IN_SIGNATURE = ("scaling_factor", "shift_factor", "pretrained_dir")


def vae_signature(vae_config: Any) -> dict[str, Any]:
    """The architecture fields of config.vae (JSON-normalised): what a latent store records
    of the VAE that encoded it, and what a training run's config must agree with."""
    fields = {k: v for k, v in dict(vae_config).items() if k not in VAE_FIELDS_NOT_IN_SIGNATURE}
    return json.loads(json.dumps(fields, sort_keys=True, default=list))


def vae_config_hash(vae_config: Any) -> str:
    """sha256 (first 16 hex digits) of `vae_signature`."""
    text = json.dumps(vae_signature(vae_config), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def latent_shape(config: Any) -> list[int]:
    """(h, w, c) of one frame's latent under `config` (data.resolution, vae)."""
    factor = 2 ** (len(config.vae.block_out_channels) - 1)
    side = int(config.data.resolution)
    if side % factor:
        raise ValueError(
            f"data.resolution={side} is not divisible by the VAE's downsampling factor {factor}"
        )
    return [side // factor, side // factor, int(config.vae.latent_channels)]


def check_latent_store(metadata: schema.DatasetMetadata, config: Any, root: str) -> None:
    """Raises schema.DataError (naming the store and key) if the latent store at `root`
    cannot feed `config`: not a latent store, another latent shape, another VAE."""
    path = os.path.join(root, schema.METADATA_FILE)
    latent = metadata.latent
    if latent is None:
        raise schema.DataError(
            f"{path}: data.latents_dir={root!r} is an image frame store, not a latent store "
            "(no 'latent' in its metadata); write one with python -m nuwa_jax.data.latents"
        )
    want = latent_shape(config)
    if list(latent.shape) != want:
        raise schema.DataError(
            f"{path}: latent.shape {list(latent.shape)} does not match the config's {want} "
            f"(data.resolution={config.data.resolution}, vae.block_out_channels="
            f"{tuple(config.vae.block_out_channels)}, vae.latent_channels="
            f"{config.vae.latent_channels}); encode the store with this config"
        )
    stored = latent.vae.get("config")
    if stored is not None:
        mine = vae_signature(config.vae)
        diff = sorted(k for k in set(stored) | set(mine) if stored.get(k) != mine.get(k))
        if diff:
            detail = ", ".join(f"{k}: store {stored.get(k)!r} vs {mine.get(k)!r}" for k in diff)
            raise schema.DataError(
                f"{path}: latent.vae.config differs from config.vae ({detail}); the store "
                "was encoded by another VAE architecture"
            )


# ---------------------------------------------------------------------------------------
# Loading one window.
# ---------------------------------------------------------------------------------------
def fit_frame(image: np.ndarray, resolution: int) -> np.ndarray:
    """Centre square crop and bicubic resize to resolution x resolution (uint8)."""
    h, w = image.shape[:2]
    if (h, w) == (resolution, resolution):
        return image
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = Image.fromarray(image[top : top + side, left : left + side])
    return np.asarray(crop.resize((resolution, resolution), Image.Resampling.BICUBIC))


def normalise(frames: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return frames.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)


def skipped_records_path(
    workdir: str | os.PathLike, process_index: int = 0, process_count: int = 1
) -> str:
    """Where a run lists the records data.skip_bad skipped: workdir/SKIPPED_RECORDS_FILE,
    or one file per process when there are several (hosts must not append to one file)."""
    name = SKIPPED_RECORDS_FILE
    if process_count > 1:
        name = name.replace(".jsonl", f".{process_index:05d}.jsonl")
    return os.path.join(os.fspath(workdir), name)


class SkippedRecords:
    """Says which records data.skip_bad skipped, not only how many.

    Each skip is logged for the first `log_first` of this process, then one line per
    `log_every` more says how many were not logged one by one. With `path`, every skip
    is appended to that JSON-lines file ({"file", "record", "reason", "episode", "level",
    "start"}: the bad record and the window that met it) by one small O_APPEND write, so
    grain's worker processes, which each hold a copy of this object, add to one complete
    list without sharing memory. A record met again is listed again; the pipeline reads
    ahead of training, so the list can hold skips of batches not yet trained on.
    """

    def __init__(
        self, path: str | os.PathLike | None = None, *, log_first: int = 10, log_every: int = 100
    ):
        self.path = None if path is None else os.fspath(path)
        self.log_first, self.log_every = int(log_first), max(int(log_every), 1)
        self.count = 0  # skips seen by this process (each worker counts its own)
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def add(self, error: schema.RecordError, episode_id: str, level: int, start: int) -> None:
        """Reports one skipped record (and the window it spoiled)."""
        if self.path is not None:
            entry = dict(file=error.path, record=error.record_index, reason=error.reason,
                         episode=episode_id, level=int(level), start=int(start))  # fmt: skip
            line = (json.dumps(entry) + "\n").encode("utf-8")
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)  # one write: on a local disk, writers never interleave
            finally:
                os.close(fd)
        with self._lock:
            self.count += 1
            n = self.count
        listed = f"; all are listed in {self.path}" if self.path else ""
        if n <= self.log_first:
            log.warning("data.skip_bad: skipped %s (episode %r, level %d window at %d)%s",
                        error, episode_id, level, start, listed)  # fmt: skip
            if n == self.log_first:
                log.warning("data.skip_bad: further skips are logged once per %d%s",
                            self.log_every, listed)  # fmt: skip
        elif (n - self.log_first) % self.log_every == 0:
            log.warning("data.skip_bad: %d bad records skipped by process %d so far, %d of "
                        "them not logged one by one; the latest: %s%s",
                        n, os.getpid(), n - self.log_first, error, listed)  # fmt: skip


class LoadWindow(grain.transforms.RandomMap):
    """(level, run, start) -> one training example (see the module docstring)."""

    def __init__(
        self,
        store: schema.FrameStore,
        plan: HierarchyPlan,
        index: WindowIndex,
        tokenizer: Tokenizer,
        *,
        resolution: int,
        skip_bad: bool = False,
        max_bad_retries: int = 16,
        decode_images: bool = True,
        transform: Callable[[Example], Example] | None = None,
        ar_mask_prob: float = 0.0,
        ar_context_frames: int = 1,
        skipped: SkippedRecords | None = None,
    ):
        if not 0.0 <= ar_mask_prob <= 1.0:
            raise ValueError(f"data.ar_mask_prob={ar_mask_prob} must be in [0, 1]")
        if not 1 <= ar_context_frames < plan.frames_per_call:
            raise ValueError(
                f"generation.ar_context_frames={ar_context_frames} must be in "
                f"[1, {plan.frames_per_call})"
            )
        self.store, self.plan, self.index, self.tokenizer = store, plan, index, tokenizer
        self.ar_mask_prob, self.ar_context_frames = float(ar_mask_prob), int(ar_context_frames)
        self.resolution = int(resolution)
        self.skip_bad, self.max_bad_retries = bool(skip_bad), int(max_bad_retries)
        self.decode_images, self.transform = bool(decode_images), transform
        self.skipped = SkippedRecords() if skipped is None else skipped

    def load(self, level: int, run: int, start: int) -> Example:
        """The example of one window; raises schema.RecordError on a bad record."""
        episode = self.index.runs[run]
        frames = self.plan.window(level, start)
        got = self.store.read_frames(episode.episode_id, frames, decode=self.decode_images)
        L = self.plan.frames_per_call
        tokens = np.asarray(self.tokenizer(list(got.captions)))
        if tokens.ndim != 2 or tokens.shape[0] != L or not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(
                f"tokenizer returned {tokens.shape} {tokens.dtype} for {L} captions; "
                "expected an integer array (n, T)"
            )
        example: Example = dict(
            tokens=tokens.astype(np.int32),
            frame_index=frames,
            level=np.int32(level),
            cond_mask=self.plan.condition_mask(level),
            episode=np.int32(episode.episode),
        )
        if self.store.metadata.latent is not None:
            example["latent_mean"] = got.latent_mean
            example["latent_logvar"] = got.latent_logvar
        elif self.decode_images:
            images = np.stack([fit_frame(im, self.resolution) for im in got.images])
            example["video"] = normalise(images)
        return example

    def random_map(self, element: tuple[int, int, int], rng: np.random.Generator) -> Example:
        bad = 0
        while True:
            try:
                example = self.load(*element)
                break
            except schema.RecordError as e:
                if not self.skip_bad:
                    raise
                level, run, start = element
                self.skipped.add(e, self.index.runs[run].episode_id, level, start)
                bad += 1
                if bad > self.max_bad_retries:
                    raise schema.DataError(
                        f"{bad} bad windows in a row (data.max_bad_retries="
                        f"{self.max_bad_retries}); last: {e}"
                    ) from e
                element = self.index[int(rng.integers(len(self.index)))]
        example["bad_records"] = np.int32(bad)
        if (
            self.ar_mask_prob > 0
            and int(example["level"]) == self.plan.depth - 1
            and rng.random() < self.ar_mask_prob
        ):
            # The AR baseline's calls (Generator._generate_ar) on this same finest-level
            # window: the first k frames given, k uniform in {0 (its first segment), ...,
            # ar_context_frames (every later one)}.
            mask = np.zeros(self.plan.frames_per_call, bool)
            mask[: int(rng.integers(0, self.ar_context_frames + 1))] = True
            example["cond_mask"] = mask
        if self.transform is not None:
            example = self.transform(example)
        return example


# ---------------------------------------------------------------------------------------
# The pipeline.
# ---------------------------------------------------------------------------------------
def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    return int(process_index), int(process_count)


def _ensure_flags_parsed() -> None:
    """grain's worker processes read absl flags; outside an absl app (tests, notebooks)
    nothing has parsed them, so take their defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def plan_from_config(config: Any) -> HierarchyPlan:
    """The complete plan of `config.hierarchy` (training needs only L and m)."""
    return HierarchyPlan.full(config.hierarchy.frames_per_call, config.hierarchy.depth)


def resolve_levels(
    config: Any, plan: HierarchyPlan, levels: Sequence[int] | None = None
) -> tuple[int, ...]:
    """`levels`, else data.levels, else every level of `plan`; each one validated."""
    if levels is None:
        levels = tuple(config.data.levels) or tuple(plan.levels)
    for level in levels:
        plan.stride(level)  # validates, naming the level
    return tuple(int(j) for j in levels)


def make_dataset(
    config: Any,
    tokenizer: Tokenizer,
    *,
    plan: HierarchyPlan | None = None,
    levels: Sequence[int] | None = None,
    data_dir: str | os.PathLike | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    transform: Callable[[Example], Example] | None = None,
    decode_images: bool = True,
    resolution: int | None = None,
    skipped_records: str | os.PathLike | None = None,
) -> grain.IterDataset:
    """This host's infinite, shuffled stream of training batches (a grain IterDataset).

    Args:
      config: the full config (uses `hierarchy`, `data`).
      tokenizer: texts list[str] -> int (n, T) array, e.g. models.text.ByteTokenizer.
      plan: default `plan_from_config(config)`; the plan generation uses has the same
        strides whatever its number of frames.
      levels: levels whose windows are mixed into the stream; default
        `data.levels`, and all levels of the plan when that is empty.
      data_dir: default `data.latents_dir` when set (a latent store: examples carry
        'latent_mean' / 'latent_logvar' instead of 'video'), else `data.data_dir`.
      process_index, process_count: default jax.process_index() / process_count().
      transform: per-example hook (latents; see the module docstring).
      decode_images: False leaves out 'video' (a transform supplies what the model eats).
      resolution: side of the frames in 'video' (default data.resolution; frames are
        centre-cropped and resized to it, e.g. a MarDini curriculum stage's resolution).
      skipped_records: with data.skip_bad, the JSON-lines file every skipped record is
        appended to (`SkippedRecords`; the trainer's is `skipped_records_path(workdir)`).
    """
    data = config.data
    plan = plan_from_config(config) if plan is None else plan
    levels = resolve_levels(config, plan, levels)
    latents = bool(data.latents_dir)
    if data_dir is None:
        data_dir = data.latents_dir if latents else data.data_dir
    root = os.fspath(data_dir)
    if not root:
        raise ValueError("data.data_dir is empty: give the frame store directory")
    pid, count = _process(process_index, process_count)
    if data.batch_size % count:
        raise ValueError(
            f"data.batch_size={data.batch_size} (global) is not divisible by {count} processes"
        )
    local_batch = data.batch_size // count
    store = schema.FrameStore(root, skip_bad=False)  # bad records are handled here
    if latents:
        check_latent_store(store.metadata, config, root)
    elif store.metadata.latent is not None:
        raise schema.DataError(
            f"{os.path.join(root, schema.METADATA_FILE)}: {root!r} is a latent store; "
            "give it as data.latents_dir"
        )
    runs = host_runs(store.metadata, pid, count)
    for f in {f for run in runs for f in run.files}:
        if not os.path.exists(os.path.join(root, f)):
            raise schema.DataError(f"{os.path.join(root, f)}: shard listed in metadata is missing")
    index = WindowIndex(plan, runs, levels, aligned=data.align_windows)
    if skipped_records is not None:
        skipped_records = os.fspath(skipped_records)
        if not os.path.isdir(os.path.dirname(os.path.abspath(skipped_records))):
            raise ValueError(f"{skipped_records}: skipped_records' directory does not exist")
    load = LoadWindow(
        store,
        plan,
        index,
        tokenizer,
        resolution=data.resolution if resolution is None else resolution,
        skip_bad=data.skip_bad,
        max_bad_retries=data.max_bad_retries,
        decode_images=decode_images,
        transform=transform,
        ar_mask_prob=data.ar_mask_prob,
        ar_context_frames=config.generation.ar_context_frames,
        skipped=SkippedRecords(skipped_records),
    )
    # Hosts hold different windows and shuffle with different seeds; uint32 for grain.
    shuffle_seed, load_seed = (
        int(x) for x in np.random.SeedSequence([int(data.shuffle_seed), pid]).generate_state(2)
    )
    ds = grain.MapDataset.source(index).shuffle(seed=shuffle_seed).repeat(None)
    ds = ds.random_map(load, seed=load_seed)
    read = grain.ReadOptions(
        num_threads=data.read_threads, prefetch_buffer_size=data.prefetch_buffer_size
    )
    it = ds.to_iter_dataset(read).batch(local_batch, drop_remainder=True)
    if data.worker_count > 0:
        _ensure_flags_parsed()
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=data.worker_count, per_worker_buffer_size=data.worker_buffer_size
            )
        )
    return it


def make_iterator(config: Any, tokenizer: Tokenizer, **kwargs: Any) -> grain.DatasetIterator:
    """`iter(make_dataset(...))`: checkpointable with get_state/set_state."""
    return iter(make_dataset(config, tokenizer, **kwargs))


def global_batches(
    batches: Iterator[Mapping[str, np.ndarray]], mesh: Any, rules: Any
) -> Iterator[dict[str, Any]]:
    """Host batches -> global jax arrays sharded on the mesh's 'batch' axes."""
    from nuwa_jax import parallel

    for batch in batches:
        yield parallel.global_batch(dict(batch), mesh, rules, leading="batch")


# ---------------------------------------------------------------------------------------
# CLI: distinct training windows per level.
# ---------------------------------------------------------------------------------------
def _define_flags() -> dict[str, Any]:
    from absl import flags

    from nuwa_jax import cli

    return dict(
        config=cli.define_config_flag(),
        data_dir=flags.DEFINE_string(
            "data_dir",
            None,
            "Frame or latent store to count (default: data.latents_dir, else data.data_dir; "
            "neither: the synthetic benchmark the config would render).",
        ),
        levels=flags.DEFINE_list("levels", None, "Levels to count (default: data.levels, or all)."),
    )


def main(argv: list[str], flag_values: dict[str, Any]) -> None:
    """Prints the distinct training windows of every level (`window_summary`)."""
    del argv
    config = flag_values["config"].value
    levels = flag_values["levels"].value
    try:
        summary = window_summary(
            config,
            levels=None if levels is None else [int(j) for j in levels],
            data_dir=flag_values["data_dir"].value,
            process_index=0,
            process_count=1,
        )
    except (schema.DataError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    h = config.hierarchy
    print(f"config {config.preset}: L={h.frames_per_call}, depth={h.depth}, "
          f"align_windows={config.data.align_windows}")  # fmt: skip
    print("\n".join(summary.lines()))


if __name__ == "__main__":
    from nuwa_jax import cli

    _FLAGS = _define_flags()
    cli.run(lambda argv: main(argv, _FLAGS))
