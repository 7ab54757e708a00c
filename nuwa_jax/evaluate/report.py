"""One evaluation pass: generated videos + reference frame store -> every metric, as JSON.

Streaming throughout: each video is read once, a chunk of whole 16-frame blocks at a
time; per-frame image features and per-block clip features go to memory-mapped files in
a temporary directory (Avg-FID and B-FVD then read one block position at a time), the
reference goes through `GaussianStats` accumulators. Nothing holds a whole video.

Metrics (each documented in its module):
- avg_fid (fid.py), b_fvd16 (fvd.py): need a feature extractor and the reference;
- adherence (adherence.py): needs captions (a storyboard, or the frame store's own)
  and frames of the synthetic benchmark;
- coherence (coherence.py): needs the schedule (dod / ar) and the hierarchy geometry;
  with a reference, the same statistics of real episodes under the same plan.
A metric that cannot be computed is reported as {"skipped": reason}.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from nuwa_jax.data import schema
from nuwa_jax.evaluate import adherence, blocks, coherence, fid, fvd
from nuwa_jax.evaluate.features import FeatureExtractor
from nuwa_jax.evaluate.frechet import GaussianStats
from nuwa_jax.evaluate.videos import Video


def _log(message: str) -> None:
    print(message, flush=True)


@dataclasses.dataclass
class EvalOptions:
    block_frames: int = blocks.BLOCK_FRAMES
    chunk_blocks: int = 4  # blocks read (and featurised) per chunk
    schedule: str = "dod"  # used when a video does not say (its _timings.json)
    frames_per_call: int = 16
    depth: int = 3
    ar_context: int = 1
    detector: adherence.DetectorConfig = dataclasses.field(default_factory=adherence.DetectorConfig)

    @classmethod
    def from_config(cls, config: Any) -> EvalOptions:
        ev = config.evaluate
        return cls(
            block_frames=ev.block_frames,
            schedule=ev.schedule,
            frames_per_call=config.hierarchy.frames_per_call,
            depth=config.hierarchy.depth,
            ar_context=config.generation.ar_context_frames,
            detector=adherence.DetectorConfig(
                colour_tolerance=ev.colour_tolerance, iou_threshold=ev.iou_threshold
            ),
        )


def _skipped(reason: str) -> dict[str, str]:
    return {"skipped": reason}


def is_synthetic(meta: schema.DatasetMetadata | None) -> bool:
    return meta is not None and meta.extra.get("generator") == "nuwa_jax.data.synthetic"


class _VideoPass:
    """Everything computed while reading one video."""

    def __init__(self, video: Video, index: int, workdir: str, extractor, meter, opts):
        self.video, self.opts = video, opts
        n, b = video.num_frames, opts.block_frames
        self.blocks = blocks.num_blocks(n, b)
        self.transitions = coherence.TransitionMeter()
        self.meter = meter
        self.image = self.clip = None
        self.extractor = extractor
        self.captions = video.captions
        self._path = os.path.join(workdir, f"{index:05d}")

    def run(self) -> None:
        v, b, ex = self.video, self.opts.block_frames, self.extractor
        done, size = 0, b * self.opts.chunk_blocks
        for chunk in v.chunks(size):
            k = len(chunk)
            if done % size:
                raise ValueError(f"{v.path}: a chunk of {k} frames before the last one")
            self.transitions.update(chunk)
            if ex is not None:
                f = ex.image_features(chunk)
                if self.image is None:
                    self.image = np.lib.format.open_memmap(
                        self._path + "_image.npy", "w+", np.float32, (v.num_frames, f.shape[1])
                    )
                self.image[done : done + k] = f
                first = -(-done // b)  # whole blocks inside this chunk
                last = (done + k) // b
                if last > first:
                    clips = np.stack(
                        [chunk[j * b - done : (j + 1) * b - done] for j in range(first, last)]
                    )
                    c = ex.clip_features(clips)
                    if self.clip is None:
                        self.clip = np.lib.format.open_memmap(
                            self._path + "_clip.npy", "w+", np.float32, (self.blocks, c.shape[1])
                        )
                    self.clip[first:last] = c
            if self.meter is not None and self.captions is not None:
                self.meter.update(chunk, self.captions[done : done + k])
            done += k
        if done != v.num_frames:
            raise ValueError(f"{v.path}: read {done} frames, expected {v.num_frames}")


def _reference_pass(root: str, extractor, opts: EvalOptions, n_frames: int, calls):
    """Reference image / clip statistics, and coherence of each episode's first n_frames
    under the generated videos' plan (episodes that long)."""
    meta = schema.load_metadata(root)
    b = opts.block_frames
    image = clip = None
    coh = []
    with schema.FrameStore(root) as store:
        for ep in meta.episodes:
            meter = coherence.TransitionMeter() if ep.num_frames >= n_frames else None
            # Without an extractor only the first n_frames (coherence) are needed.
            stop = ep.num_frames if extractor is not None else (n_frames if meter else 0)
            feats = []
            step = b * opts.chunk_blocks
            for a in range(0, stop, step):
                frames = store.read_frames(ep.id, np.arange(a, min(a + step, stop))).images
                if meter is not None and a < n_frames:
                    meter.update(frames[: n_frames - a])
                if extractor is None:
                    continue
                f = extractor.image_features(frames)
                if image is None:
                    image = GaussianStats(f.shape[1])
                image.update(f)
                if meter is not None and a < n_frames:
                    feats.append(f[: n_frames - a])
                whole = len(frames) // b
                if whole:
                    c = extractor.clip_features(
                        frames[: whole * b].reshape(whole, b, *frames.shape[1:])
                    )
                    if clip is None:
                        clip = GaussianStats(c.shape[1])
                    clip.update(c)
            if meter is not None:
                fc = coherence.feature_distances(np.concatenate(feats)) if feats else None
                coh.append(coherence.coherence(meter.diffs, *calls, fc))
    return image, clip, coh


def _mean_coherence(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Statistics pooled over videos (all share one plan, so the transition counts are
    equal and the mean of per-video means is the pooled mean); ratio of the pooled means."""
    out: dict[str, Any] = {}
    for kind in entries[0]:
        stats: dict[str, Any] = {}
        for key in ("boundary", "inside"):
            vals = [e[kind][key] for e in entries if e[kind][key] is not None]
            stats[key] = float(np.mean(vals)) if vals else None
        b, i = stats["boundary"], stats["inside"]
        stats["boundary_ratio"] = b / i if b is not None and i else None
        levels = sorted({lv for e in entries for lv in e[kind]["by_level"]})
        stats["by_level"] = {
            lv: float(
                np.mean(
                    [
                        e[kind]["by_level"][lv]
                        for e in entries
                        if e[kind]["by_level"].get(lv) is not None
                    ]
                )
            )
            for lv in levels
        }
        stats["boundary_transitions"] = entries[0][kind]["boundary_transitions"]
        stats["inside_transitions"] = entries[0][kind]["inside_transitions"]
        out[kind] = stats
    return out


def evaluate(
    videos: Sequence[Video],
    reference: str | None,
    extractor: FeatureExtractor | None,
    captions: Sequence[list[str] | None] | None = None,
    opts: EvalOptions | None = None,
    log=_log,
) -> dict[str, Any]:
    """Every metric for `videos` (all the same length and frame size) against the
    `reference` frame store; `captions[i]` (one per frame) overrides video i's own."""
    opts = opts or EvalOptions()
    t0 = time.perf_counter()
    names = [v.path for v in videos]
    n = blocks.check_lengths([v.num_frames for v in videos], names, opts.block_frames)
    size = (videos[0].height, videos[0].width)
    for v in videos:
        if (v.height, v.width) != size:
            raise ValueError(
                f"{v.path}: frames are {v.height}x{v.width}, {names[0]}'s {size[0]}x{size[1]}"
            )
    ref_meta = schema.load_metadata(reference) if reference else None
    if ref_meta is not None:
        if ref_meta.latent is not None:
            raise ValueError(f"{reference}: a latent store, not frames; give the image frame store")
        if (ref_meta.height, ref_meta.width) != size:
            raise ValueError(
                f"{names[0]}: frames are {size[0]}x{size[1]}, but the reference {reference} has "
                f"{ref_meta.height}x{ref_meta.width}"
            )
    if captions is not None:
        for v, c in zip(videos, captions):
            if c is not None:
                if len(c) != v.num_frames:
                    raise ValueError(f"{v.path}: {len(c)} captions for {v.num_frames} frames")
                v.captions = list(c)
    has_captions = all(v.captions is not None for v in videos)
    meter = (
        adherence.AdherenceMeter(size[0], opts.detector)
        if has_captions and size[0] == size[1]
        else None
    )

    schedules = {v.schedule or opts.schedule for v in videos}
    if len(schedules) > 1:
        raise ValueError(f"the videos were generated with different schedules {sorted(schedules)}")
    schedule = schedules.pop()
    calls = coherence.producers(schedule, n, opts.frames_per_call, opts.depth, opts.ar_context)

    report: dict[str, Any] = dict(
        generated=dict(
            videos=names,
            count=len(videos),
            frames=n,
            height=size[0],
            width=size[1],
            schedule=schedule,
        ),
        reference=reference,
        features=extractor.describe() if extractor is not None else None,
        options=dict(dataclasses.asdict(opts)),
    )
    with tempfile.TemporaryDirectory(prefix="nuwa_eval_") as work:
        passes = []
        for i, v in enumerate(videos):
            log(f"reading {v.path} ({v.num_frames} frames)")
            p = _VideoPass(v, i, work, extractor, meter, opts)
            p.run()
            passes.append(p)
        coh = []
        for p in passes:
            fc = coherence.feature_distances(p.image) if p.image is not None else None
            coh.append(coherence.coherence(p.transitions.diffs, *calls, fc))
        ref_coh = []
        ref_image = ref_clip = None
        if reference:
            log(f"reading the reference {reference}")
            ref_image, ref_clip, ref_coh = _reference_pass(reference, extractor, opts, n, calls)
        if extractor is None:
            report["avg_fid"] = report["b_fvd16"] = _skipped(
                "no feature extractor (--features=none)"
            )
        elif not reference:
            report["avg_fid"] = report["b_fvd16"] = _skipped("no reference frame store")
        else:
            dropped = n - passes[0].blocks * opts.block_frames
            report["avg_fid"] = fid.avg_fid(
                [p.image for p in passes], ref_image, opts.block_frames, names
            ).as_dict()
            if ref_clip is None or ref_clip.count < 2:
                report["b_fvd16"] = _skipped(
                    f"the reference has fewer than 2 {opts.block_frames}-frame blocks"
                )
            else:
                report["b_fvd16"] = fvd.block_fvd(
                    [p.clip for p in passes], ref_clip, opts.block_frames, names, dropped
                ).as_dict()
        if meter is not None:
            report["adherence"] = meter.result()
            if not is_synthetic(ref_meta) and ref_meta is not None:
                report["adherence"]["note"] = "the reference is not the synthetic benchmark"
        else:
            report["adherence"] = _skipped(
                "no captions (give --storyboard)" if not has_captions else "frames are not square"
            )
        report["coherence"] = dict(
            mean=_mean_coherence(coh),
            per_video=dict(zip(names, coh)),
            reference=_mean_coherence(ref_coh)
            if ref_coh
            else _skipped(f"no reference episode has {n} frames" if reference else "no reference"),
        )
    report["seconds"] = time.perf_counter() - t0
    return report


def write_report(path: str, report: dict[str, Any]) -> None:
    """The report as JSON, written to a temporary name and renamed (atomic)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    schema.atomic_write_bytes(path, json.dumps(report, indent=1, default=_json_default).encode())


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")
