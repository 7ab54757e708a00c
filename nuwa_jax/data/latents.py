"""Precomputed T-KLVAE latents: encode a frame store once into a LATENT STORE.

    python -m nuwa_jax.data.latents --config=configs/tiny.py --vae_workdir=RUN --out=DIR \\
        [--data_dir=FRAMES] [--clips_per_call=N]
    python -m nuwa_jax.data.latents --config=configs/demo.py --vae_bundle=BUNDLE.json --out=DIR
    python -m nuwa_jax.data.latents --config=configs/tiny.py --random_weights --out=DIR

A latent store is a frame store (schema.py, same shards, offsets index, captions and
frame indices) whose records carry each frame's posterior moments (mean and log-variance,
(h, w, c) float16) instead of its image; metadata.json's `latent` says their shape, the
encoding clip length and which VAE produced them. Training an MTD with
`data.latents_dir=DIR` reads it through the ordinary pipeline (no image decode, no VAE in
the train step) and samples latents from the moments on device (docs/data.md).

The T-KLVAE has temporal layers, so a frame's latent depends on the frames encoded with
it. Each episode is encoded in consecutive, stride-1 clips of `clip_frames` frames
(generation.decode_frames or hierarchy.frames_per_call: the clips the generator decodes
with); when the episode's length is not a multiple, the last clip is the episode's last
`clip_frames` frames and only its frames not yet encoded are kept, so every call has the
same shape and every frame gets a full clip of context. `clips_per_call` clips go
through the encoder at once, sharded over the mesh's batch axes (data x fsdp).

Frames: `--data_dir`, else data.data_dir, which the CLI first renders when
data.source='synthetic' and it is empty (trainer.ensure_data: a run that never trained the
VAE, e.g. the demo continuing a bundle, has no frame store yet).

Weights: `--vae_workdir` takes the EMA parameters of the newest checkpoint of a
`train.model='vae'` run (its saved config.vae must match the architecture of --config);
`--vae_bundle` a hierarchy bundle's frozen VAE (metadata records the bundle's sha256);
`--random_weights` a randomly initialised VAE (tests, benchmarks); otherwise
`vae.pretrained_dir` (SD's VAE, imported). Writing reuses DatasetWriter: shards under
temporary names renamed when complete, per-episode markers, so a rerun skips finished
episodes (a different VAE or shape in the same directory is refused).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from nuwa_jax.data import pipeline, schema
from nuwa_jax.data.writer import DatasetWriter, WriterStats

GENERATOR = "nuwa_jax.data.latents"


def clip_frames(config: Any) -> int:
    """Frames per encoder call: generation.decode_frames or hierarchy.frames_per_call."""
    return int(config.generation.decode_frames or config.hierarchy.frames_per_call)


def clip_spans(num_frames: int, clip: int) -> list[tuple[int, int, int]]:
    """(start, stop, keep_from) of the clips that encode frames [0, num_frames).

    Consecutive clips of `clip` frames; a remainder is covered by the last `clip` frames,
    keeping only those from `keep_from` on. An episode shorter than a clip is one clip.
    Every frame is kept exactly once, in order.
    """
    if num_frames < 1 or clip < 1:
        raise ValueError(f"clip_spans: num_frames={num_frames} and clip={clip} must be >= 1")
    if num_frames <= clip:
        return [(0, num_frames, 0)]
    spans = [(s, s + clip, s) for s in range(0, num_frames - clip + 1, clip)]
    done = spans[-1][1]
    if done < num_frames:
        spans.append((num_frames - clip, num_frames, done))
    return spans


# ---------------------------------------------------------------------------------------
# The encoder.
# ---------------------------------------------------------------------------------------
class ClipEncoder:
    """(k, L, H, W, 3) videos in [-1, 1] -> posterior (mean, logvar), (k, L, h, w, c) float16.

    One jit; the k clips are padded to a multiple of `clips_per_call` (copies of the last
    clip, dropped afterwards) and sharded over the mesh's 'batch' axes.
    """

    def __init__(self, vae: Any, mesh: Any, rules: Any, clips_per_call: int):
        import jax
        import jax.numpy as jnp
        from flax import nnx

        from nuwa_jax import parallel

        divisor = parallel.batch_divisor(mesh, rules)
        if clips_per_call < 1 or clips_per_call % divisor:
            raise ValueError(
                f"clips_per_call={clips_per_call} must be a positive multiple of the "
                f"{divisor} devices that split the batch (mesh data x fsdp)"
            )
        self.mesh, self.rules, self.clips_per_call = mesh, rules, int(clips_per_call)
        graphdef, self._state = nnx.split(vae)

        def encode(state, video):
            posterior = nnx.merge(graphdef, state).encode(video)
            return posterior.mean.astype(jnp.float16), posterior.logvar.astype(jnp.float16)

        self._encode = jax.jit(encode)

    def __call__(self, videos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import jax

        from nuwa_jax import parallel

        k, n = len(videos), self.clips_per_call
        pad = -k % n
        if pad:
            videos = np.concatenate([videos, np.repeat(videos[-1:], pad, axis=0)])
        means, logvars = [], []
        with jax.set_mesh(self.mesh):
            for a in range(0, len(videos), n):
                batch = parallel.global_batch(videos[a : a + n], self.mesh, self.rules)
                mean, logvar = jax.device_get(self._encode(self._state, batch))
                means.append(mean)
                logvars.append(logvar)
        return np.concatenate(means)[:k], np.concatenate(logvars)[:k]


def encode_episode(
    store: schema.FrameStore,
    episode_id: str,
    encode: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    *,
    clip: int,
    resolution: int,
    clips_per_call: int,
) -> Iterator[tuple[tuple[np.ndarray, np.ndarray], str]]:
    """((mean, logvar), caption) of every frame of an episode, in order (for the writer).

    Frames are read, centre-cropped and resized to `resolution` and normalised exactly
    as the training pipeline does (pipeline.fit_frame, pipeline.normalise).
    """
    spans = clip_spans(store.num_frames(episode_id), clip)
    for g in range(0, len(spans), clips_per_call):
        group = spans[g : g + clips_per_call]
        videos, captions = [], []
        for start, stop, _ in group:
            got = store.read_frames(episode_id, np.arange(start, stop))
            frames = np.stack([pipeline.fit_frame(im, resolution) for im in got.images])
            videos.append(pipeline.normalise(frames))
            captions.append(got.captions)
        mean, logvar = encode(np.stack(videos))
        for k, (start, stop, keep) in enumerate(group):
            for i in range(keep - start, stop - start):
                yield (mean[k, i], logvar[k, i]), captions[k][i]


# ---------------------------------------------------------------------------------------
# Weights.
# ---------------------------------------------------------------------------------------
def load_vae(
    config: Any,
    mesh: Any,
    rules: Any,
    *,
    vae_workdir: str | None = None,
    random_weights: bool = False,
    vae_bundle: str | None = None,
) -> tuple[Any, dict[str, Any]]:
    """(the VAE, its provenance for metadata `latent.vae`), built sharded on `mesh`.

    Seed config.seed + 1, as HierarchyModels.create and the trainer give the VAE.
    `vae_bundle`: a hierarchy bundle's 'vae' (its 16-bit weights, cast to
    compute.param_dtype); the provenance is `bundle.vae_identity`.
    """

    from nuwa_jax import parallel
    from nuwa_jax.hierarchy.models import vae_class

    given = [f for f, v in (("--vae_workdir", vae_workdir), ("--random_weights", random_weights),
                            ("--vae_bundle", vae_bundle)) if v]  # fmt: skip
    if len(given) > 1:
        raise ValueError(f"give one of --vae_workdir, --vae_bundle and --random_weights, not "
                         f"{' and '.join(given)}")  # fmt: skip
    if not (given or config.vae.pretrained_dir):
        raise ValueError(
            "no VAE weights: give --vae_workdir=RUN, --vae_bundle=BUNDLE, --random_weights or "
            "--config.vae.pretrained_dir=DIR"
        )
    seed = config.seed + 1
    sections = (config.vae, config.compute)
    vae = parallel.create_network(vae_class(config), sections, mesh, rules, seed)
    info: dict[str, Any] = dict(
        config_hash=pipeline.vae_config_hash(config.vae),
        config=pipeline.vae_signature(config.vae),
    )
    if random_weights:
        return vae, dict(weights="random", seed=seed, **info)
    if vae_bundle:
        from nuwa_jax.hierarchy import bundle

        manifest, tensors = bundle.read_bundle(vae_bundle)
        bundle.assign_components(manifest, tensors, config, {"vae": vae},
                                 hint="--vae_bundle: config.vae must be the bundle's")  # fmt: skip
        return vae, dict(weights="bundle", **bundle.vae_identity(manifest, tensors), **info)
    if not vae_workdir:
        from nuwa_jax.convert import common as convert_common
        from nuwa_jax.convert import vae as convert_vae

        path = os.path.join(config.vae.pretrained_dir, convert_vae.WEIGHTS_FILE)
        convert_vae.import_vae_weights(vae, convert_common.load_safetensors(path), source=path)
        vae = parallel.reshard_model(vae, mesh, rules)
        return vae, dict(weights="pretrained", pretrained_dir=config.vae.pretrained_dir, **info)
    from nuwa_jax.train import checkpoint as ckpt

    try:
        workdir, step, saved = ckpt.read_run(vae_workdir, config.train)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--vae_workdir: {e}") from None
    directory = os.path.join(workdir, ckpt.CHECKPOINT_DIR)
    model = saved.get("train", {}).get("model")
    if model != "vae":
        raise ValueError(
            f"--vae_workdir: {directory}/{step}: train.model={model!r}, not a 'vae' run"
        )
    theirs, mine = pipeline.vae_signature(saved["vae"]), info["config"]
    diff = sorted(k for k in set(theirs) | set(mine) if theirs.get(k) != mine.get(k))
    if diff:
        detail = ", ".join(f"{k}: run {theirs.get(k)!r} vs config {mine.get(k)!r}" for k in diff)
        raise ValueError(f"--vae_workdir: {directory}/{step}: config.vae differs ({detail})")
    step = ckpt.restore_ema(workdir, {"vae": vae}, step)
    return vae, dict(weights="checkpoint", workdir=workdir, step=step, params="ema", **info)


# ---------------------------------------------------------------------------------------
# Writing a latent store.
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class LatentReport:
    metadata: schema.DatasetMetadata
    stats: WriterStats
    seconds: float  # encoding and writing (VAE build excluded)
    frames_encoded: int

    @property
    def frames_per_second(self) -> float:
        return self.frames_encoded / max(self.seconds, 1e-9)


def write_latent_store(
    config: Any,
    out_dir: str | os.PathLike,
    vae: Any,
    vae_info: dict[str, Any],
    *,
    mesh: Any,
    rules: Any,
    data_dir: str | os.PathLike | None = None,
    clips_per_call: int = 0,
    log: Callable[[str], None] | None = None,
) -> LatentReport:
    """Encodes every episode of the frame store `data_dir` (default data.data_dir) into a
    latent store at `out_dir`; a rerun skips the episodes an earlier run finished.

    clips_per_call: clips per encoder call (0: the mesh's batch divisor).
    """
    from nuwa_jax import parallel

    src_dir = os.fspath(config.data.data_dir if data_dir is None else data_dir)
    if not src_dir:
        raise ValueError("no frame store: give --data_dir or data.data_dir")
    src = schema.FrameStore(src_dir)
    if src.metadata.latent is not None:
        raise schema.DataError(
            f"{os.path.join(src_dir, schema.METADATA_FILE)}: is a latent store; "
            "encode the frame store it came from"
        )
    clip = clip_frames(config)
    resolution = int(config.data.resolution)
    clips_per_call = int(clips_per_call) or parallel.batch_divisor(mesh, rules)
    encoder = ClipEncoder(vae, mesh, rules, clips_per_call)
    meta = src.metadata
    writer = DatasetWriter(
        out_dir,
        fps=meta.fps,
        height=resolution,
        width=resolution,
        frames_per_shard=meta.frames_per_shard,
        index_every=meta.index_every,
        latent=schema.LatentInfo(
            shape=pipeline.latent_shape(config), clip_frames=clip, vae=dict(vae_info)
        ),
        extra=dict(generator=GENERATOR, source=os.path.abspath(src_dir)),
    )
    start, encoded = time.perf_counter(), 0
    for episode in meta.episodes:
        if writer.add_finished_episode(episode.id) is not None:
            if log:
                log(f"episode {episode.id!r}: finished by an earlier run, skipped")
            continue
        frames = encode_episode(
            src,
            episode.id,
            encoder,
            clip=clip,
            resolution=resolution,
            clips_per_call=clips_per_call,
        )
        # Errors name the source shard and record (schema.RecordError) or the episode
        # and frame (the writer's checks).
        writer.write_episode(episode.id, frames, extra=episode.extra)
        encoded += episode.num_frames
        if log:
            log(f"episode {episode.id!r}: {episode.num_frames} frames encoded")
    metadata = writer.finalize()
    src.close()
    return LatentReport(metadata, writer.stats, time.perf_counter() - start, encoded)


def latent_statistics(store_dir: str | os.PathLike, every: int = 7) -> dict[str, float]:
    """Mean and standard deviation of the posterior means in a latent store (every
    `every`-th frame of each episode), and the vae.shift_factor / vae.scaling_factor
    that map them to zero mean and unit variance (LDM's rule: scale by 1 / std)."""
    store = schema.FrameStore(store_dir)
    if store.metadata.latent is None:
        raise schema.DataError(f"{os.fspath(store_dir)}: a frame store, not a latent store")
    total = count = squares = 0.0
    for episode in store.metadata.episodes:
        got = store.read_frames(episode.id, np.arange(0, episode.num_frames, every))
        m = np.stack(got.latent_mean).astype(np.float64)
        total, squares, count = total + m.sum(), squares + (m * m).sum(), count + m.size
    store.close()
    mean = total / count
    std = float(np.sqrt(max(squares / count - mean * mean, 0.0)))
    return dict(mean=float(mean), std=std, shift_factor=float(mean),
                scaling_factor=1.0 / std if std > 0 else 1.0, values=int(count))  # fmt: skip


def describe_statistics(stats: dict[str, float], vae_config: Any) -> str:
    """One line: the store's latent statistics and what vae_config makes of them."""
    scale, shift = float(vae_config.scaling_factor), float(vae_config.shift_factor)
    return (
        f"posterior means: mean {stats['mean']:.4f}, std {stats['std']:.4f}; with "
        f"vae.shift_factor={shift:g}, vae.scaling_factor={scale:g} the diffusion latents have "
        f"mean {(stats['mean'] - shift) * scale:.3f}, std {stats['std'] * scale:.3f} "
        f"(unit variance: vae.shift_factor={stats['shift_factor']:.3f}, "
        f"vae.scaling_factor={stats['scaling_factor']:.4f})"
    )


# ---------------------------------------------------------------------------------------
# CLI.
# ---------------------------------------------------------------------------------------
def _define_flags():
    from absl import flags

    from nuwa_jax import cli

    config = cli.define_config_flag()
    return dict(
        config=config,
        out=flags.DEFINE_string("out", None, "Latent store directory to write."),
        data_dir=flags.DEFINE_string(
            "data_dir", None, "Frame store to encode (default: data.data_dir)."
        ),
        vae_workdir=flags.DEFINE_string(
            "vae_workdir", None, "A train.model='vae' run: its newest checkpoint's EMA."
        ),
        vae_bundle=flags.DEFINE_string(
            "vae_bundle", None, "A hierarchy bundle (.json, .safetensors or stem): its 'vae'."
        ),
        random_weights=flags.DEFINE_bool(
            "random_weights", False, "Randomly initialised VAE (tests, benchmarks)."
        ),
        clips_per_call=flags.DEFINE_integer(
            "clips_per_call", 0, "Clips per encoder call (0: the devices splitting the batch)."
        ),
        stats=flags.DEFINE_string(
            "stats", None, "Only print this latent store's statistics (vae.scaling_factor)."
        ),
    )


def main(argv: list[str], flag_values: dict[str, Any]) -> None:
    del argv
    import jax

    from nuwa_jax import parallel

    v = {k: f.value for k, f in flag_values.items()}
    if v["stats"]:
        try:
            stats = latent_statistics(v["stats"])
            print(f"{v['stats']}: {describe_statistics(stats, v['config'].vae)}")
        except (schema.DataError, FileNotFoundError) as e:
            raise SystemExit(f"error: {e}") from None
        return
    if not v["out"]:
        raise SystemExit("error: --out is required")
    if jax.process_count() > 1:
        raise SystemExit("error: nuwa_jax.data.latents runs on one process")
    config = v["config"]
    mesh = parallel.make_mesh(config.mesh)
    rules = parallel.logical_rules(config)
    try:
        if not v["data_dir"] and config.data.data_dir:  # rendered if synthetic, as trainer does
            from nuwa_jax.train.trainer import ensure_data

            ensure_data(config)
        vae, info = load_vae(
            config,
            mesh,
            rules,
            vae_workdir=v["vae_workdir"],
            random_weights=v["random_weights"],
            vae_bundle=v["vae_bundle"],
        )
        report = write_latent_store(
            config,
            v["out"],
            vae,
            info,
            mesh=mesh,
            rules=rules,
            data_dir=v["data_dir"],
            clips_per_call=v["clips_per_call"],
            log=print,
        )
    except (schema.DataError, ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    s, meta = report.stats, report.metadata
    total = sum(sh.size_bytes for ep in meta.episodes for sh in ep.shards)
    frames = sum(ep.num_frames for ep in meta.episodes)
    print(
        f"{v['out']}: {len(meta.episodes)} episodes ({s.episodes_written} encoded, "
        f"{s.episodes_resumed} skipped), {frames} frames, latent {meta.latent.shape} "
        f"float16, {total / max(frames, 1):.0f} bytes/frame on disk; "
        f"{report.frames_encoded} frames in {report.seconds:.1f} s "
        f"({report.frames_per_second:.1f} frames/s)"
    )
    print(f"{v['out']}: {describe_statistics(latent_statistics(v['out']), config.vae)}")


if __name__ == "__main__":
    from nuwa_jax import cli

    _FLAGS = _define_flags()
    cli.run(lambda argv: main(argv, _FLAGS))
