"""Coarse-to-fine generation: Diffusion over Diffusion, and the autoregressive baseline.

DoD (NUWA-XL): the global MTD makes L keyframes spanning N(depth) frames from their L
prompts; then every local level fills, for every pair of adjacent frames of the level
above, the L-2 frames between them. The plan always has all hierarchy.depth levels,
pruned to the video's N frames (`plan.generation_plan`): every model runs at the stride
it was trained for, however short the video (16 frames of the L=16, depth-3 demo: three
calls, one segment each). Frames the plan makes beyond N condition frames < N and are
discarded; their prompt is the last one (`frame_prompts`). All segments of a level are
independent: they are the batch of ONE jitted call, their axis sharded over the mesh's
`data` (and `fsdp`) axes, so a pod fills a whole level at once. A level with more
segments than `max_segments_per_device` x (data x fsdp devices) runs in chunks of that
size (padded), which bounds memory; every chunk has the same shape, so each model
compiles once.

AR (the paper's FDM* baseline, "AR over diffusion"): the same finest-level MTD makes
segments of L consecutive frames one after another, each conditioned on the last
`ar_context_frames` frames of the one before (the first on nothing).

MarDini locals (`hierarchy.local_backbone='mardini'`): every local level's segments run
MarDini instead of the local MTD (plan once from the first and last frames, then DDIM with
guidance on the planning signal, `sample_mardini_level`); the global level stays the
text-conditioned MTD. Only the model call differs: plan, chunks, keys, sharding, progress
and timings are the same. MarDini's tasks (nuwa_jax/mardini_tasks.py) run their clips
through the same path (`sample_segments`).

Determinism: the noise of a segment comes from a key folded from (seed, level, segment
index), never from its position in a batch, so the video is the same whatever the device
count and chunk size.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from nuwa_jax import parallel, video_io
from nuwa_jax.diffusion import samplers
from nuwa_jax.diffusion.parameterization import check_given_frames
from nuwa_jax.hierarchy.models import HierarchyModels, check_mardini
from nuwa_jax.hierarchy.models import local_backbone as _local_backbone
from nuwa_jax.hierarchy.plan import HierarchyPlan, generation_plan
from nuwa_jax.models.text import Truncation, warn_truncations

SCHEDULES = ("dod", "ar")
AR_LEVEL = 1_000  # key-folding id of the autoregressive baseline's segments


@dataclasses.dataclass
class LevelTiming:
    """Wall time of one level (or of the AR chain), for reports and benchmarks."""

    level: str
    segments: int
    calls: int
    seconds: float
    first_call_seconds: float  # includes compilation
    backbone: str = "mtd"  # the model that ran it: 'mtd' or 'mardini'

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Segments:
    """One batch of segments: absolute frame indices, the mask of given frames, their keys."""

    frames: np.ndarray  # (S, L) int
    cond_mask: np.ndarray  # (S, L) bool
    segment_ids: np.ndarray  # (S,) int, the index of each segment within its level
    level: int  # key-folding id (plan level, or AR_LEVEL)
    model_level: int  # which MTD (backbone 'mtd')
    backbone: str = "mtd"  # 'mtd' (the level's MTD, prompts) or 'mardini' (no prompts)


def sample_level(
    mtd: Any,
    text: Any,
    tokens: jax.Array,
    cond_latents: jax.Array,
    cond_mask: jax.Array,
    keys: jax.Array,
    null_tokens: jax.Array,
    diffusion_config: Any,
    level_ids: jax.Array | None = None,
) -> jax.Array:
    """Samples a batch of clips of one level's MTD (traceable; callers jit it).

    tokens (S, L, T): one prompt per frame; cond_latents (S, L, h, w, c) and cond_mask
    (S, L) bool: the given frames (the MTD's x0^c = latents * mask and x0^m = mask);
    keys (S,): one key per clip; null_tokens (T,): the empty prompt, the unconditional
    input of classifier-free guidance (diffusion_config.guidance_scale); level_ids (S,)
    int32: the level embedding of a shared local MTD, or None. Returns latents like
    cond_latents. With diffusion_config.given_frames='clean' the given frames are written
    back clean after every step, as the MTD saw them in training. Used by the generator
    and by the trainer's periodic samples.
    """
    context = text(tokens)  # (S, L, T, D): one prompt per frame
    uncond = text(jnp.broadcast_to(null_tokens, tokens.shape[1:])[None])

    def model_fn(x, t, cond, known):  # x may be [cond; uncond] stacked (guidance)
        mask = known.mask.astype(x.dtype)
        x0c = known.latents * mask[:, :, None, None, None]
        reps = x.shape[0] // tokens.shape[0]
        level = None if level_ids is None else jnp.tile(level_ids, reps)
        return mtd(x, t, cond, x0c, mask, level)

    known = samplers.KnownFrames(cond_latents, cond_mask)
    clean = check_given_frames(diffusion_config.get("given_frames", "noised")) == "clean"
    return samplers.sample(
        model_fn, cond_latents.shape, keys, diffusion_config, cond=context, uncond=uncond,
        known=known, replace_known=clean,
    )  # fmt: skip


def mardini_diffusion_config(config: Any, guidance: float) -> Any:
    """The sampling config of MarDini: the `diffusion` section's noise schedule and step
    count, `mardini.sampler` (DDIM), v-prediction (`mardini.prediction` if a config sets
    it) and classifier-free guidance `guidance` on the planning signal."""
    import ml_collections

    out = ml_collections.ConfigDict(config.diffusion.to_dict())
    out.sampler = config.mardini.get("sampler", "ddim")
    out.prediction = config.mardini.get("prediction", "v")
    out.guidance_scale = float(guidance)
    return out


def sample_mardini_level(
    mardini: Any,
    cond_latents: jax.Array,
    cond_mask: jax.Array,
    keys: jax.Array,
    diffusion_config: Any,
) -> jax.Array:
    """Samples a batch of clips with MarDini (traceable; callers jit it).

    cond_latents (S, L, h, w, c) and cond_mask (S, L) bool: the given frames (zeros
    elsewhere); keys (S,). Plans once from the given frames (the planner never sees noisy
    ones), then runs `diffusion_config`'s sampler on the generator with the planning
    signals as condition and the learned null signal as the unconditional input, the
    given frames written back clean after every step. Returns latents like cond_latents.
    """
    kept = cond_mask.astype(bool)
    known = samplers.KnownFrames(cond_latents, kept)
    return samplers.sample(
        mardini.sampler_fn(), cond_latents.shape, keys, diffusion_config,
        cond=mardini.plan(cond_latents, kept), uncond=mardini.null_signal[...], known=known,
        replace_known=True,
    )  # fmt: skip


def frame_prompts(prompts: Sequence[str], frames: np.ndarray) -> list[str]:
    """The prompt of every frame index in `frames`: frame f < N takes prompts[f]; a frame
    at or beyond N = len(prompts) takes the last prompt.

    Frames >= N exist where the plan's segments run past the video's end (the global
    keyframes of a video shorter than N(depth), the tail of a level's last segment): they
    are generated only to be the far end that conditions frames < N, and are discarded.
    The storyboard says nothing about them, so they hold its last moment (the video's
    scene at frame N-1 continues), which keeps the frames < N they condition consistent
    with the prompts those frames were asked for. The AR baseline's last segment runs
    past N the same way.
    """
    if not prompts:
        raise ValueError("frame_prompts: no prompts (a video needs one per frame)")
    last = len(prompts) - 1
    return [prompts[min(int(f), last)] for f in np.asarray(frames).reshape(-1)]


class LatentStore:
    """Host copy of every latent frame generated so far, by absolute frame index."""

    def __init__(self, num_frames: int, latent_shape: tuple[int, ...]):
        self.latents = np.zeros((num_frames, *latent_shape), np.float32)
        self.done = np.zeros(num_frames, bool)

    def gather(self, frames: np.ndarray, cond_mask: np.ndarray) -> np.ndarray:
        """Latents of the given frames (zeros elsewhere): the MTD's x0^c."""
        if not self.done[frames[cond_mask]].all():
            missing = sorted(set(frames[cond_mask][~self.done[frames[cond_mask]]].tolist()))
            raise RuntimeError(f"condition frames {missing[:8]} are not generated yet")
        return self.latents[frames] * cond_mask[..., None, None, None]

    def put(self, frames: np.ndarray, keep: np.ndarray, latents: np.ndarray) -> None:
        self.latents[frames[keep]] = latents[keep]
        self.done[frames[keep]] = True


class Generator:
    """Generates long videos with a `HierarchyModels` bundle on a mesh.

    `tokenizer` may be None when only MarDini segments run (no prompts). `mardini_guidance`:
    the guidance scale of MarDini segments (default mardini.guidance.interpolation, what a
    local level does). `local_backbone`: the model of the local levels (default
    hierarchy.local_backbone).
    """

    def __init__(
        self,
        config: Any,
        models: HierarchyModels,
        mesh: Mesh,
        rules: parallel.Rules,
        tokenizer: Callable[[list[str]], np.ndarray] | None,
        mardini_guidance: float | None = None,
        local_backbone: str | None = None,
    ):
        self.config, self.models, self.mesh, self.rules = config, models, mesh, rules
        self.tokenizer = tokenizer
        self.L = config.hierarchy.frames_per_call
        self.local_backbone = local_backbone or _local_backbone(config)
        if self.local_backbone == "mardini" and models.mtds:
            check_mardini(config, hierarchy=True)
        if self.local_backbone == "mardini" or not models.mtds:
            if models.mardini is None:
                who = "MarDini tasks" if not models.mtds else "hierarchy.local_backbone='mardini'"
                raise ValueError(
                    f"{who}: there is no MarDini network (random weights build one; a bundle "
                    "needs one: python -m nuwa_jax.export --mardini_workdir=RUN)"
                )
        if mardini_guidance is None and "guidance" in config.mardini:
            mardini_guidance = config.mardini.guidance.interpolation
        self.mardini_guidance = 1.0 if mardini_guidance is None else float(mardini_guidance)
        self.chunk = config.generation.max_segments_per_device * parallel.batch_divisor(
            mesh, rules, "segments"
        )
        if self.chunk < 1:
            raise ValueError("generation.max_segments_per_device must be >= 1")
        factor = 2 ** (len(config.vae.block_out_channels) - 1)
        res = config.data.resolution
        self.latent_shape = (res // factor, res // factor, config.vae.latent_channels)
        # The empty prompt, the MTDs' unconditional input (guidance).
        self.null_tokens = None if tokenizer is None else np.asarray(tokenizer([""]))[0]
        self._level_fns: dict[Any, Callable] = {}
        self._decode_fn: Callable | None = None
        self._encode_fn: Callable | None = None

    # -----------------------------------------------------------------------------------
    # Jitted pieces: one sampler call per model, one VAE decode.
    # -----------------------------------------------------------------------------------
    def _sharding(self, ndim: int, batch: int):
        """Segments over the `segments` mesh axes; a batch that does not divide them (the AR
        chain's single segment) is replicated instead."""
        if batch % parallel.batch_divisor(self.mesh, self.rules, "segments"):
            return NamedSharding(self.mesh, PartitionSpec())
        return parallel.logical_to_sharding(("segments",) + (None,) * (ndim - 1), self.rules,
                                            self.mesh)  # fmt: skip

    def _level_fn(self, segs: Segments, chunk: int) -> Callable:
        """The jitted sampler of a batch's model (the level's MTD, or MarDini) for batches of
        `chunk` segments: fn(tokens, cond_latents, cond_mask, keys), tokens None for
        MarDini."""
        if segs.backbone == "mardini":
            return self._mardini_fn(chunk)
        if segs.backbone != "mtd":
            raise ValueError(f"unknown backbone {segs.backbone!r}; use 'mtd' or 'mardini'")
        return self._mtd_fn(segs.model_level, chunk)

    def _mardini_fn(self, chunk: int) -> Callable:
        """MarDini's jitted sampler (plan + the sampler loop) for batches of `chunk`."""
        graphdef, state = nnx.split(self.models.mardini)
        cache_key = ("mardini", graphdef, chunk)
        if cache_key not in self._level_fns:
            dcfg = mardini_diffusion_config(self.config, self.mardini_guidance)

            def run(state, cond_latents, cond_mask, keys):
                return sample_mardini_level(nnx.merge(graphdef, state), cond_latents, cond_mask,
                                            keys, dcfg)  # fmt: skip

            seg = lambda ndim: self._sharding(ndim, chunk)  # noqa: E731
            self._level_fns[cache_key] = jax.jit(
                run, in_shardings=(None, seg(5), seg(2), seg(1)), out_shardings=seg(5)
            )
        fn = self._level_fns[cache_key]
        return lambda tokens, *args: fn(state, *args)

    def _mtd_fn(self, model_level: int, chunk: int) -> Callable:
        """The jitted sampler of one level's MTD for batches of `chunk` segments. Levels whose
        MTDs share an architecture share one compiled function: weights and the level id
        are arguments."""
        mtd, text = self.models.mtds[model_level], self.models.text_of(model_level)
        level_id = self.models.level_ids[model_level]
        graphdef, state = nnx.split((mtd, text))
        cache_key = (graphdef, level_id is None, chunk)
        if cache_key not in self._level_fns:
            self._level_fns[cache_key] = self._compile_level(graphdef, level_id is not None, chunk)
        fn = self._level_fns[cache_key]
        level = np.full((chunk,), -1 if level_id is None else level_id, np.int32)
        return lambda *args: fn(state, *args, self._global(level))

    def _compile_level(self, graphdef: Any, with_level: bool, chunk: int) -> Callable:
        dcfg = self.config.diffusion
        null = jnp.asarray(self.null_tokens)

        def run(state, tokens, cond_latents, cond_mask, keys, level_ids):
            mtd, text = nnx.merge(graphdef, state)
            level_ids = level_ids if with_level else None
            return sample_level(mtd, text, tokens, cond_latents, cond_mask, keys, null, dcfg,
                                level_ids)  # fmt: skip

        seg = lambda ndim: self._sharding(ndim, chunk)  # noqa: E731
        return jax.jit(
            run,
            in_shardings=(None, seg(3), seg(5), seg(2), seg(1), seg(1)),
            out_shardings=seg(5),
        )

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Latents (F, h, w, c) -> frames (F, H, W, 3) in [-1, 1], one clip per call."""
        if self._decode_fn is None:
            graphdef, state = nnx.split(self.models.vae)
            fn = jax.jit(lambda s, z: jnp.clip(nnx.merge(graphdef, s).decode_latents(z), -1.0, 1.0))
            self._decode_fn = lambda z: fn(state, z)
        return self._host(self._decode_fn(jnp.asarray(latents)[None]))[0]

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """Frames (F, H, W, 3), uint8 or [-1, 1], -> the diffusion latents (F, h, w, c) of
        the VAE (posterior mode), encoded as one clip (given frames of the MarDini tasks)."""
        if self._encode_fn is None:
            graphdef, state = nnx.split(self.models.vae)
            fn = jax.jit(lambda s, x: nnx.merge(graphdef, s).encode_to_latents(x))
            self._encode_fn = lambda x: fn(state, x)
        frames = np.asarray(frames)
        if frames.dtype == np.uint8:
            frames = frames.astype(np.float32) / 127.5 - 1.0
        return self._host(self._encode_fn(jnp.asarray(frames, jnp.float32)[None]))[0]

    def _host(self, x: jax.Array) -> np.ndarray:
        if jax.process_count() > 1:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    def _global(self, x: np.ndarray) -> jax.Array:
        """A global array of host data every process holds in full (deterministic inputs)."""
        sharding = self._sharding(x.ndim, x.shape[0])
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    # -----------------------------------------------------------------------------------
    # Running segments.
    # -----------------------------------------------------------------------------------
    def _keys(self, seed: int, level: int, segment_ids: np.ndarray) -> np.ndarray:
        base = jax.random.fold_in(jax.random.key(seed), level)
        keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(segment_ids))
        return np.asarray(jax.random.key_data(keys))

    def _run_chunk(
        self, segs: Segments, prompts: list[str], store: LatentStore, seed: int, chunk: int
    ) -> np.ndarray:
        """Samples one batch of <= chunk segments (padded to chunk); returns (S, L, ...)."""
        n = len(segs.frames)
        pad = chunk - n
        frames = np.concatenate([segs.frames, np.repeat(segs.frames[-1:], pad, 0)])
        mask = np.concatenate([segs.cond_mask, np.repeat(segs.cond_mask[-1:], pad, 0)])
        ids = np.concatenate([segs.segment_ids, np.repeat(segs.segment_ids[-1:], pad)])
        tokens = None
        if segs.backbone == "mtd":
            texts = frame_prompts(prompts, frames.reshape(-1))
            tokens = np.asarray(self.tokenizer(texts)).reshape(chunk, frames.shape[1], -1)
            tokens = self._global(tokens.astype(np.int32))
        cond = store.gather(frames, mask)
        keys = jax.random.wrap_key_data(
            self._global(self._keys(seed, segs.level, ids).astype(np.uint32))
        )
        out = self._level_fn(segs, chunk)(
            tokens,
            self._global(cond.astype(np.float32)),
            self._global(mask),
            keys,
        )
        return self._host(out)[:n]

    def _run_level(
        self,
        name: str,
        batches: list[Segments],
        prompts: list[str],
        store: LatentStore,
        seed: int,
        keep: Callable[[Segments], np.ndarray],
        progress: bool,
        on_chunk: Callable[[Segments], None] | None = None,
        chunk: int | None = None,
    ) -> LevelTiming:
        from tqdm.auto import tqdm

        start, first = time.perf_counter(), None
        bar = tqdm(total=sum(len(b.frames) for b in batches), desc=name, unit="seg",
                   disable=not progress or jax.process_index() > 0, leave=True)  # fmt: skip
        for segs in batches:
            latents = self._run_chunk(segs, prompts, store, seed, chunk or self.chunk)
            store.put(segs.frames, keep(segs), latents)
            if first is None:
                first = time.perf_counter() - start
            bar.update(len(segs.frames))
            if on_chunk is not None:
                on_chunk(segs)
        bar.close()
        segments = sum(len(b.frames) for b in batches)
        backbone = batches[0].backbone if batches else "mtd"
        return LevelTiming(name, segments, len(batches), time.perf_counter() - start, first or 0,
                           backbone)  # fmt: skip

    def _chunks(self, frames, cond_mask, level, model_level, backbone="mtd",
                chunk=None) -> list[Segments]:  # fmt: skip
        ids, chunk = np.arange(len(frames)), chunk or self.chunk
        return [
            Segments(
                frames[i : i + chunk],
                cond_mask[i : i + chunk],
                ids[i : i + chunk],
                level,
                model_level,
                backbone,
            )  # fmt: skip
            for i in range(0, len(frames), chunk)
        ]

    def sample_segments(
        self,
        name: str,
        frames: np.ndarray,
        cond_mask: np.ndarray,
        store: LatentStore,
        seed: int,
        level: int,
        keep: Callable[[Segments], np.ndarray] | None = None,
        progress: bool = True,
        chunk: int | None = None,
        backbone: str = "mardini",
        model_level: int = 0,
        prompts: list[str] | None = None,
    ) -> LevelTiming:
        """Samples clips with MarDini (or, `backbone='mtd'`, the MTD of `model_level`), as
        a hierarchy level samples its segments.

        frames (S, L): absolute frame indices in `store` of each clip; cond_mask (S, L):
        the given ones (already in `store`); prompts: the MTD's, one per index of `store`.
        The clips run `chunk` at a time (default: max_segments_per_device x data devices,
        padded, sharded over `data`); noise keys fold (seed, level, clip index).
        `keep(batch)` -> (s, L) bool: which outputs to store (default: every generated
        frame). Returns the timing.
        """
        chunk = chunk or self.chunk
        if backbone == "mtd" and not prompts:
            raise ValueError("sample_segments: the MTD needs prompts (one per store frame)")
        batches = self._chunks(frames, cond_mask, level, model_level, backbone, chunk)
        keep = keep or (lambda segs: ~segs.cond_mask)
        return self._run_level(name, batches, prompts or [], store, seed, keep, progress,
                               chunk=chunk)  # fmt: skip

    # -----------------------------------------------------------------------------------
    # Schedules.
    # -----------------------------------------------------------------------------------
    def plan(self, num_frames: int) -> HierarchyPlan:
        """The plan for `num_frames` frames: every level of hierarchy.depth, pruned to N, so
        every model runs at the stride it was trained for (`plan.generation_plan`)."""
        h = self.config.hierarchy
        return generation_plan(num_frames, h.frames_per_call, h.depth)

    def generate(
        self,
        prompts: list[str],
        seed: int,
        schedule: str = "dod",
        progress: bool = True,
        on_frames: Callable[[int, np.ndarray], None] | None = None,
    ) -> GeneratedVideo:
        """Generates a len(prompts)-frame video (one prompt per frame) as latents.

        on_frames(start, frames): called with decoded frames [start, start + k) in time
        order as soon as they are final (a clip of `decode_frames` at a time), so a writer
        can stream a long video; every frame is passed exactly once. A prompt longer than
        the text context is logged once, with the tokens dropped, and listed in the
        video's `truncated_prompts`.
        """
        if schedule not in SCHEDULES:
            raise ValueError(f"generation.schedule: unknown {schedule!r}; use {SCHEDULES}")
        if not self.models.mtds:
            raise ValueError(
                "no MTDs to generate a storyboard with: these networks are a VAE and a MarDini "
                "only (a MarDini bundle serves the tasks: python -m nuwa_jax.generate --task=...)"
            )
        n = len(prompts)
        if n < 2:
            raise ValueError(f"a video needs at least 2 frames, got {n} prompts")
        cut = warn_truncations(self.tokenizer, prompts) if hasattr(self.tokenizer, "count") else []
        stream = _FrameStream(self, n, on_frames)
        if schedule == "dod":
            video = self._generate_dod(prompts, n, seed, progress, stream)
        else:
            video = self._generate_ar(prompts, n, seed, progress, stream)
        video.truncated_prompts = cut
        stream.flush(video.store, final=True)
        return video

    def _generate_dod(self, prompts, n, seed, progress, stream) -> GeneratedVideo:
        plan = self.plan(n)
        size = int(max(plan.segments(j).max() for j in plan.levels)) + 1
        store = LatentStore(size, self.latent_shape)
        timings = []
        for j in plan.levels:
            frames = plan.segments(j)
            cond = np.broadcast_to(plan.condition_mask(j), frames.shape)
            backbone = "mtd" if j == 0 else self.local_backbone
            batches = self._chunks(frames, cond, j, j, backbone)  # level j's own MTD
            keep = lambda s: ~s.cond_mask  # noqa: E731  (conditions are already final)
            name = "global" if j == 0 else f"local{j}"
            flush = lambda segs: stream.flush(store)  # noqa: E731
            timings.append(
                self._run_level(name, batches, prompts, store, seed, keep, progress, flush)
            )
        keyframes = plan.segments(0)[0]
        keyframes = keyframes[keyframes < n]
        return GeneratedVideo(self, store, n, keyframes, timings, plan)

    def _generate_ar(self, prompts, n, seed, progress, stream) -> GeneratedVideo:
        L, c = self.L, self.config.generation.ar_context_frames
        if not 1 <= c < L:
            raise ValueError(f"generation.ar_context_frames={c} must be in [1, {L})")
        starts = [0] + list(range(L - c, max(n - c, 1), L - c))
        size = starts[-1] + L
        store = LatentStore(size, self.latent_shape)
        finest = self.config.hierarchy.depth - 1
        batches = []
        for i, s in enumerate(starts):
            mask = np.zeros((1, L), bool)
            if i:
                mask[0, :c] = True
            batches.append(Segments(np.arange(s, s + L)[None], mask, np.array([i]), AR_LEVEL,
                                    finest))  # fmt: skip
        keep = lambda s: ~s.cond_mask  # noqa: E731
        flush = lambda segs: stream.flush(store)  # noqa: E731
        # One segment per call, unpadded: AR is sequential, a wider batch would only add work.
        timing = self._run_level("ar", batches, prompts, store, seed, keep, progress, flush, 1)
        keyframes = video_io.filmstrip_indices(n, L)  # no keyframe level: spread evenly
        return GeneratedVideo(self, store, n, keyframes, [timing], None)


class _FrameStream:
    """Decodes and hands out frames once a prefix of the video is final."""

    def __init__(self, generator: Generator, num_frames: int, sink):
        self.generator, self.num_frames, self.sink = generator, num_frames, sink
        self.clip = generator.config.generation.decode_frames or generator.L
        self.next = 0  # first frame not yet handed out

    def flush(self, store: LatentStore, final: bool = False) -> None:
        if self.sink is None:
            return
        done = store.done[: self.num_frames]
        ready = self.num_frames if done.all() else int(np.argmin(done))
        while ready - self.next >= self.clip or (final and ready > self.next):
            end = min(self.next + self.clip, ready)
            self.sink(self.next, self.generator.decode(store.latents[self.next : end]))
            self.next = end


@dataclasses.dataclass
class GeneratedVideo:
    """Generated latents of an n-frame video, decoded on demand in time order."""

    generator: Generator
    store: LatentStore
    num_frames: int
    keyframe_indices: np.ndarray
    timings: list[LevelTiming]
    plan: HierarchyPlan | None
    truncated_prompts: list[Truncation] = dataclasses.field(default_factory=list)

    @property
    def latents(self) -> np.ndarray:
        return self.store.latents[: self.num_frames]

    def frames(self) -> Iterator[np.ndarray]:
        """Decoded frames (k, H, W, 3) in [-1, 1], in time order, a clip at a time."""
        gen = self.generator
        step = gen.config.generation.decode_frames or gen.L
        for a in range(0, self.num_frames, step):
            yield gen.decode(self.latents[a : min(a + step, self.num_frames)])

    def keyframes(self) -> np.ndarray:
        """The decoded keyframes (global level), for the contact sheet."""
        return self.generator.decode(self.store.latents[self.keyframe_indices])

    def decode(self, indices: np.ndarray) -> np.ndarray:
        return self.generator.decode(self.store.latents[np.asarray(indices)])

    def timing_report(self) -> dict[str, Any]:
        return dict(
            num_frames=self.num_frames,
            levels=[t.as_dict() for t in self.timings],
            total_seconds=math.fsum(t.seconds for t in self.timings),
        )
