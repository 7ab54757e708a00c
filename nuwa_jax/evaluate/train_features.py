"""Training the offline feature networks (synthetic_net.py) on a rendered benchmark.

    python -m nuwa_jax.evaluate.train_features --config=configs/demo.py \\
        --out=weights/synthetic_features [--eval_data=data/bench_eval]

Data (default): `ProceduralEpisodes`, every sample rendered on the fly from an episode
never used before (the benchmark's own simulate_episode / render_frame at
`net_input_size`), so the networks cannot memorise episodes; held out: --eval_data (a
benchmark frame store, e.g. the video models' held-out episodes), else 32 rendered
episodes of another range. `--data=STORE` trains on a frame store's frames instead
(decoded once into memory; without --eval_data the last `eval_fraction` of every episode
is held out) -- kept for comparison: an episode casts 4-6 of the 96 characters, and
trained on 96 stored episodes the networks memorised them (held-out presence F1 at
chance).

Each step trains both networks: ImageNet on `net_batch_size` frames (loss: scene
cross-entropy + the summed binary cross-entropies of the colour (8), shape (6) and,
weighted by PRESENCE_WEIGHT, character (96) presence heads), ClipNet on
`net_clip_batch_size` 16-frame clips (the same at the centre frame, plus the action
cross-entropy over the characters present there). Adam, linear warm-up then cosine decay
of `net_learning_rate`. Hyper-parameters: `config.evaluate.net_*`.

Held-out metrics, each next to its chance level (the best constant prediction learnt
from the training labels): scene accuracy (vs the majority scene), micro-F1 of character
presence (all 96, and `presence_f1_seen`: only characters the training episodes show),
of colour presence and of shape presence (vs predicting the k most frequent labels,
best k), action accuracy on present characters (vs the majority action).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from nuwa_jax.data import schema, synthetic
from nuwa_jax.evaluate import synthetic_net as snet

# The 96-way presence loss is a sum over mostly-absent labels; at full weight it drowns the
# colour and shape heads' gradients in the shared layers (their losses then stall).
PRESENCE_WEIGHT = 0.25


def _log(message: str) -> None:
    print(message, flush=True)


class Benchmark:
    """Frames (uint8, in memory), labels and per-episode usable frame ranges of a
    synthetic-benchmark frame store."""

    def __init__(self, root: str):
        self.root = root
        self.description = root
        with schema.FrameStore(root) as store:
            meta = store.metadata
            if meta.extra.get("generator") != "nuwa_jax.data.synthetic":
                raise ValueError(
                    f"{root}: not a synthetic benchmark (metadata extra.generator is "
                    f"{meta.extra.get('generator')!r}); the feature networks train on its "
                    "ground truth"
                )
            self.resolution = meta.height
            self.frames, self.labels, self.ranges = [], [], []
            for ep in meta.episodes:
                state_file = os.path.join(root, ep.extra.get("state", ""))
                if not os.path.isfile(state_file):
                    raise FileNotFoundError(f"{state_file}: ground truth of {ep.id} is missing")
                state = synthetic.EpisodeState.from_npz(state_file)
                n = ep.num_frames
                self.frames.append(store.read_frames(ep.id, np.arange(n)).images)
                self.labels.append(snet.frame_labels(state, np.arange(n)))
                self.ranges.append((0, n))

    @classmethod
    def rendered(cls, seed: int, episodes: range, frames: int, resolution: int) -> Benchmark:
        """A Benchmark of episodes rendered in memory (no frame store)."""
        self = cls.__new__(cls)
        self.root = f"episodes {episodes.start}-{episodes.stop - 1} of seed {seed}"
        self.description = f"{self.root} ({frames} frames, {resolution} px, rendered)"
        self.resolution = resolution
        self.frames, self.labels, self.ranges = [], [], []
        for e in episodes:
            images, state = synthetic.render_episode(seed, e, frames, resolution)
            self.frames.append(images)
            self.labels.append(snet.frame_labels(state, np.arange(frames)))
            self.ranges.append((0, frames))
        return self

    def split(self, eval_fraction: float) -> tuple[Benchmark, Benchmark]:
        """(train, held-out) views sharing the frames: the last `eval_fraction` of every
        episode is held out."""
        if not 0.0 < eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
        views = []
        for part in (0, 1):
            view = Benchmark.__new__(Benchmark)
            view.__dict__.update(self.__dict__)
            cuts = [int(round((1.0 - eval_fraction) * len(f))) for f in self.frames]
            view.ranges = [(0, c) if part == 0 else (c, len(f)) for c, f in zip(cuts, self.frames)]
            views.append(view)
        views[1].description = f"{self.root} (last {eval_fraction:.0%} of each episode)"
        views[0].description = f"{self.root} (first {1 - eval_fraction:.0%} of each episode)"
        return views[0], views[1]

    @property
    def num_frames(self) -> int:
        return sum(b - a for a, b in self.ranges)

    def _pick(self, rng: np.random.Generator, n: int, span: int) -> list[tuple[int, int]]:
        usable = [(e, a, b) for e, (a, b) in enumerate(self.ranges) if b - a >= span]
        if not usable:
            raise ValueError(f"{self.root}: no episode has {span} usable frames")
        weights = np.array([b - a - span + 1 for _, a, b in usable], np.float64)
        picks = rng.choice(len(usable), n, p=weights / weights.sum())
        out = []
        for i in picks:
            e, a, b = usable[i]
            out.append((e, int(rng.integers(a, b - span + 1))))
        return out

    def _gather(self, picks, span: int, centre: int):
        x = np.stack([self.frames[e][t : t + span] for e, t in picks])
        lab = {
            k: np.stack([self.labels[e][k][t + centre] for e, t in picks]) for k in self.labels[0]
        }
        return x, lab

    def sample_images(self, rng, n):
        x, lab = self._gather(self._pick(rng, n, 1), 1, 0)
        return x[:, 0], lab

    def sample_clips(self, rng, n, frames):
        return self._gather(self._pick(rng, n, frames), frames, frames // 2)

    def all_images(self, stride: int = 1):
        picks = [(e, t) for e, (a, b) in enumerate(self.ranges) for t in range(a, b, stride)]
        x, lab = self._gather(picks, 1, 0)
        return x[:, 0], lab

    def _clip_picks(self, frames: int, stride: int) -> list[tuple[int, int]]:
        picks = [
            (e, t) for e, (a, b) in enumerate(self.ranges) for t in range(a, b - frames + 1, stride)
        ]
        if not picks:
            raise ValueError(f"{self.description}: no {frames}-frame clip in range")
        return picks

    def all_clips(self, frames: int, stride: int):
        return self._gather(self._clip_picks(frames, stride), frames, frames // 2)

    def frame_labels(self) -> dict[str, np.ndarray]:
        """Labels of every frame in range (no frames copied)."""
        return {
            k: np.concatenate([lab[k][a:b] for lab, (a, b) in zip(self.labels, self.ranges)])
            for k in self.labels[0]
        }

    def clip_labels(self, frames: int, stride: int) -> dict[str, np.ndarray]:
        picks = self._clip_picks(frames, stride)
        return {
            k: np.stack([self.labels[e][k][t + frames // 2] for e, t in picks])
            for k in self.labels[0]
        }


class ProceduralEpisodes:
    """Training samples rendered on the fly from ever new episodes (the default source).

    An episode casts 4-6 of the 96 characters on a few sceneries, so a fixed set of
    episodes lets a network memorise "this background, these characters" instead of
    finding sprites (trained on 96 stored episodes, held-out presence F1 stayed at chance).
    Here every clip, and every `images_per_episode` frames, come from an episode never used
    before: (seed, first_episode + counter), simulated for `frames` frames by the
    benchmark's own `simulate_episode` and rendered with `render_frame`.
    """

    def __init__(self, resolution: int, seed: int = 0, first_episode: int = 1_000_000,
                 frames: int = 64, images_per_episode: int = 4):  # fmt: skip
        self.resolution, self.seed, self.frames = resolution, seed, frames
        self.images_per_episode = images_per_episode
        self.first_episode = self._next = first_episode
        self.root = f"procedural episodes {first_episode}+ of seed {seed}"
        self.description = f"{self.root} ({frames} frames each, {resolution} px, fresh per sample)"
        self._label_sample: list[synthetic.EpisodeState] | None = None

    def _episode(self) -> synthetic.EpisodeState:
        state = synthetic.simulate_episode(self.seed, self._next, self.frames, self.resolution)
        self._next += 1
        return state

    def sample_images(self, rng: np.random.Generator, n: int):
        images, labels = [], []
        while len(images) < n:
            state = self._episode()
            for t in rng.integers(0, self.frames, min(self.images_per_episode, n - len(images))):
                images.append(synthetic.render_frame(state, int(t)))
                labels.append(snet.frame_labels(state, [int(t)]))
        return np.stack(images), {k: np.concatenate([lab[k] for lab in labels]) for k in labels[0]}

    def sample_clips(self, rng: np.random.Generator, n: int, frames: int):
        clips, labels = [], []
        for _ in range(n):
            state = self._episode()
            t0 = int(rng.integers(0, self.frames - frames + 1))
            clips.append(
                np.stack([synthetic.render_frame(state, t) for t in range(t0, t0 + frames)])
            )
            labels.append(snet.frame_labels(state, [t0 + frames // 2]))
        return np.stack(clips), {k: np.concatenate([lab[k] for lab in labels]) for k in labels[0]}

    def _states(self) -> list[synthetic.EpisodeState]:
        """A fixed sample of 256 episodes (past the training counter's reach in practice:
        first_episode - 256 ...) for the label statistics of chance levels."""
        if self._label_sample is None:
            start = self.first_episode - 256
            self._label_sample = [synthetic.simulate_episode(self.seed, e, self.frames,
                                                             self.resolution)
                                  for e in range(start, self.first_episode)]  # fmt: skip
        return self._label_sample

    def frame_labels(self) -> dict[str, np.ndarray]:
        labels = [snet.frame_labels(s, np.arange(self.frames)) for s in self._states()]
        return {k: np.concatenate([lab[k] for lab in labels]) for k in labels[0]}

    def clip_labels(self, frames: int, stride: int) -> dict[str, np.ndarray]:
        centres = np.arange(0, self.frames - frames + 1, stride) + frames // 2
        labels = [snet.frame_labels(s, centres) for s in self._states()]
        return {k: np.concatenate([lab[k] for lab in labels]) for k in labels[0]}


# ---------------------------------------------------------------------------------------
# Losses and metrics.
# ---------------------------------------------------------------------------------------
def _losses(out: dict[str, jax.Array], lab: dict[str, jax.Array]) -> dict[str, jax.Array]:
    scene = optax.softmax_cross_entropy_with_integer_labels(out["scene"], lab["scene"]).mean()
    terms = dict(scene=scene)
    for key in ("present", "colour", "shape"):
        bce = optax.sigmoid_binary_cross_entropy(out[key], lab[key]).sum(-1).mean()
        terms[key] = bce * (PRESENCE_WEIGHT if key == "present" else 1.0)
    if "action" in out:
        mask = lab["action"] >= 0
        ce = optax.softmax_cross_entropy_with_integer_labels(
            out["action"], jnp.maximum(lab["action"], 0)
        )
        terms["action"] = jnp.sum(ce * mask) / jnp.maximum(mask.sum(), 1)
    return terms


def _f1(pred: np.ndarray, true: np.ndarray) -> float:
    tp = float(np.sum(pred & true))
    denom = 2 * tp + float(np.sum(pred & ~true)) + float(np.sum(~pred & true))
    return 2 * tp / denom if denom else 1.0


def _best_constant_f1(train: np.ndarray, true: np.ndarray) -> float:
    """F1 of the best constant guess "the k most frequent training labels", k = 0..8."""
    order = np.argsort(-train.sum(0), kind="stable")
    best = 0.0
    for k in range(0, 9):
        pred = np.zeros_like(true)
        pred[:, order[:k]] = True
        best = max(best, _f1(pred, true))
    return best


def chance_levels(train_labels: dict[str, np.ndarray], eval_labels: dict[str, np.ndarray]):
    """The best constant predictions learnt from training labels, scored on eval labels."""
    scene = np.bincount(train_labels["scene"], minlength=len(snet.SCENE_NAMES)).argmax()
    out = dict(scene_accuracy=float(np.mean(eval_labels["scene"] == scene)))
    for key, name in (("present", "presence_f1"), ("colour", "colour_f1"), ("shape", "shape_f1")):
        out[name] = _best_constant_f1(train_labels[key], eval_labels[key] > 0.5)
    seen = train_labels["present"].sum(0) > 0
    out["presence_f1_seen"] = _best_constant_f1(
        train_labels["present"][:, seen], eval_labels["present"][:, seen] > 0.5
    )
    acts = train_labels["action"][train_labels["action"] >= 0]
    evals = eval_labels["action"][eval_labels["action"] >= 0]
    if acts.size and evals.size:
        out["action_accuracy"] = float(np.mean(evals == np.bincount(acts).argmax()))
    return out


def score(
    out: dict[str, np.ndarray], lab: dict[str, np.ndarray], seen: np.ndarray
) -> dict[str, float]:
    """Held-out scores; `seen`: (96,) characters that occur in the training labels
    (presence_f1_seen leaves the others out: no joint head can name an unseen character)."""
    res = dict(scene_accuracy=float(np.mean(out["scene"].argmax(-1) == lab["scene"])))
    for key, name in (("present", "presence_f1"), ("colour", "colour_f1"), ("shape", "shape_f1")):
        res[name] = _f1(out[key] > 0, lab[key] > 0.5)
    res["presence_f1_seen"] = _f1(out["present"][:, seen] > 0, lab["present"][:, seen] > 0.5)
    if "action" in out:
        mask = lab["action"] >= 0
        if mask.any():
            hits = out["action"].argmax(-1)[mask] == lab["action"][mask]
            res["action_accuracy"] = float(np.mean(hits))
    return res


def _predict(net, x: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    graphdef, state = nnx.split(net)
    fn = jax.jit(lambda s, v: nnx.merge(graphdef, s)(v))
    outs = [jax.tree.map(np.asarray, fn(state, x[a : a + batch])) for a in range(0, len(x), batch)]
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


# ---------------------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class TrainOptions:
    steps: int = 1500
    batch_size: int = 32
    clip_batch_size: int = 8
    learning_rate: float = 2e-3
    seed: int = 0
    eval_fraction: float = 0.2
    log_every: int = 100

    @classmethod
    def from_config(cls, evaluate: Any) -> TrainOptions:
        return cls(
            steps=evaluate.net_steps,
            batch_size=evaluate.net_batch_size,
            clip_batch_size=evaluate.net_clip_batch_size,
            learning_rate=evaluate.net_learning_rate,
            seed=evaluate.net_seed,
            eval_fraction=evaluate.net_eval_fraction,
        )


def _make_step(net, tx):
    graphdef, params = nnx.split(net, nnx.Param)

    def loss_fn(p, x, lab):
        terms = _losses(nnx.merge(graphdef, p)(x), lab)
        return sum(terms.values()), terms

    @jax.jit
    def step(p, opt_state, x, lab):
        (_, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, x, lab)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, terms

    return graphdef, params, step


def train(
    config: snet.NetConfig,
    data: Benchmark | ProceduralEpisodes,
    held_out: Benchmark,
    opts: TrainOptions,
    log=_log,
) -> tuple[snet.ImageNet, snet.ClipNet, dict[str, Any]]:
    """Trains both networks; returns them and a summary (options, timing, held-out
    metrics with their chance levels)."""
    t0 = time.perf_counter()
    image_net, clip_net = snet.build(config, opts.seed)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0,
        opts.learning_rate,
        max(1, min(100, opts.steps // 10)),
        max(opts.steps, 2),
        opts.learning_rate * 0.05,
    )
    tx = optax.adam(schedule)
    ig, ip, istep = _make_step(image_net, tx)
    cg, cp, cstep = _make_step(clip_net, tx)
    iopt, copt = tx.init(ip), tx.init(cp)
    rng = np.random.default_rng(opts.seed)
    for step in range(1, opts.steps + 1):
        x, lab = data.sample_images(rng, opts.batch_size)
        ip, iopt, iterms = istep(ip, iopt, x, lab)
        x, lab = data.sample_clips(rng, opts.clip_batch_size, config.clip_frames)
        cp, copt, cterms = cstep(cp, copt, x, lab)
        if step % opts.log_every == 0 or step == opts.steps:
            fmt = lambda t: " ".join(f"{k} {float(v):.3f}" for k, v in t.items())  # noqa: E731
            log(
                f"step {step}/{opts.steps}: image [{fmt(iterms)}] clip [{fmt(cterms)}] "
                f"{time.perf_counter() - t0:.0f} s"
            )
    image_net, clip_net = nnx.merge(ig, ip), nnx.merge(cg, cp)
    train_seconds = time.perf_counter() - t0
    info = dict(
        options=dataclasses.asdict(opts),
        seconds=train_seconds,
        data=data.description,
        eval_data=held_out.description,
        metrics=evaluate_nets(image_net, clip_net, data, held_out),
    )
    return image_net, clip_net, info


def evaluate_nets(image_net, clip_net, data, held_out: Benchmark) -> dict[str, Any]:
    """Held-out scores of both networks and their chance levels."""
    frames = image_net.config.clip_frames
    stride = max(1, frames // 2)
    train_frames, train_clips = data.frame_labels(), data.clip_labels(frames, stride)
    seen = train_frames["present"].sum(0) > 0
    x, lab = held_out.all_images()
    image = dict(
        model=score(_predict(image_net, x, 256), lab, seen),
        chance=chance_levels(train_frames, lab),
        samples=len(x),
    )
    x, lab = held_out.all_clips(frames, stride)
    clip = dict(
        model=score(_predict(clip_net, x, 16), lab, seen),
        chance=chance_levels(train_clips, lab),
        samples=len(x),
    )
    unseen = int(((held_out.frame_labels()["present"].sum(0) > 0) & ~seen).sum())
    return dict(
        image=image,
        clip=clip,
        characters_seen_in_training=int(seen.sum()),
        held_out_characters_unseen=unseen,
    )


def load_benchmarks(data_dir: str | None, eval_dir: str | None, eval_fraction: float,
                    resolution: int, seed: int = 0):  # fmt: skip
    """(train source, held-out Benchmark).

    data_dir None: ProceduralEpisodes at `resolution` (the default), held out: eval_dir's
    episodes, else 32 rendered episodes of 64 frames from another episode range. data_dir
    given: its frames, held out: eval_dir's episodes, else the last eval_fraction of each
    of its episodes.
    """
    if data_dir is None:
        train = ProceduralEpisodes(resolution, seed)
        held = Benchmark(eval_dir) if eval_dir else Benchmark.rendered(
            seed, range(2_000_000, 2_000_032), 64, resolution
        )  # fmt: skip
        return train, held
    if eval_dir:
        return Benchmark(data_dir), Benchmark(eval_dir)
    return Benchmark(data_dir).split(eval_fraction)


def run() -> None:
    """CLI entry point (flags defined here, so importing this module defines none)."""
    from absl import flags

    from nuwa_jax import cli

    config_flag = cli.define_config_flag("configs/demo.py")
    data_flag = flags.DEFINE_string(
        "data", None, "Frame store to train on (default: fresh procedural episodes)."
    )
    eval_flag = flags.DEFINE_string("eval_data", None, "Held-out frame store (optional).")
    out_flag = flags.DEFINE_string("out", None, "Output weights stem (.json / .safetensors).")
    steps_flag = flags.DEFINE_integer("steps", None, "Overrides config.evaluate.net_steps.")

    def main(argv: Sequence[str]) -> None:
        if len(argv) > 1:
            raise SystemExit(f"error: unexpected arguments {argv[1:]}")
        if not out_flag.value:
            print("error: --out is required", file=sys.stderr)
            raise SystemExit(2)
        ev = config_flag.value.evaluate
        opts = TrainOptions.from_config(ev)
        if steps_flag.value is not None:
            opts.steps = steps_flag.value
        net_config = snet.NetConfig(input_size=ev.net_input_size, feature_dim=ev.net_feature_dim)
        try:
            data, held_out = load_benchmarks(
                data_flag.value, eval_flag.value, opts.eval_fraction, ev.net_input_size, opts.seed
            )
        except (schema.DataError, ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        image_net, clip_net, info = train(net_config, data, held_out, opts)
        path = snet.save(out_flag.value, image_net, clip_net, info)
        for kind in ("image", "clip"):
            m = info["metrics"][kind]
            print(
                f"{kind}: "
                + ", ".join(
                    f"{k} {v:.3f} (chance {m['chance'].get(k, float('nan')):.3f})"
                    for k, v in m["model"].items()
                )
            )
        print(f"trained in {info['seconds']:.0f} s -> {path}")

    cli.run(main)


if __name__ == "__main__":
    run()
