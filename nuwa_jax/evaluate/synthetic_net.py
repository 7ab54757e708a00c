"""The offline feature networks: small CNNs trained on the synthetic benchmark's ground truth.

FID and FVD need a feature network; the standard ones (Inception, I3D) need weights that
cannot be downloaded here, and on 64-pixel sprites they measure ImageNet / Kinetics
statistics more than the benchmark's content. So the offline default is trained on what
the renderer knows about every frame (nuwa_jax.data.synthetic.EpisodeState):

- `ImageNet` (one frame): the scene (7 classes), which of the 96 characters (size x
  colour x shape) are on screen (96 independent sigmoids), and, factorised, which of the
  8 colours and of the 6 shapes are on screen (an episode casts 4-6 of the 96 characters,
  so held-out episodes show characters never seen in training; the factor heads make the
  features encode colour and shape separately, which carries over to them);
- `ClipNet` (CLIP_FRAMES = 16 consecutive frames, B-FVD-16's block): the same at the
  clip's centre frame, plus each present character's action there (walk left / right,
  jump, bounce, stand: 96 x 5 logits, the loss counted on present characters only),
  which needs motion, so the clip network convolves over time too.

Features (what FID / FVD compare) are the penultimate layer of each: `feature_dim` ReLU
units that feed the heads. Architecture (`NetConfig`), channels last, inputs uint8
scaled to [-1, 1] and bilinearly resized to `input_size` if the frames differ:
  ImageNet: len(widths) x [3x3 conv (strides 1, 2, 2, 2) + ReLU] -> [the last map
            flattened, and max and mean over positions of EVERY layer's map] -> dense
            feature_dim + ReLU
  ClipNet:  per frame len(frame_widths) x [3x3 conv stride 2 + ReLU], then
            len(temporal_widths) x [3-tap temporal conv stride 2 + ReLU, 3x3 conv stride 2
            + ReLU] -> [the last map flattened, max and mean over (frames, positions) of
            every layer's map] -> dense feature_dim + ReLU
The pooled maxima make "is this colour / shape anywhere" a few layers deep, which is what
lets the networks learn sprites instead of memorising episodes.

Weights: <stem>.safetensors (parameter paths as names) + <stem>.json (format, NetConfig,
label spaces, the safetensors file's sha256, training summary), both written atomically,
the JSON last; `SyntheticFeatures.load` refuses a file whose sha256 differs.
Training: nuwa_jax/evaluate/train_features.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nuwa_jax.convert import common as convert
from nuwa_jax.data import schema, synthetic
from nuwa_jax.evaluate import features as feats
from nuwa_jax.evaluate import netlib
from nuwa_jax.models.layers import torch_default_init

FORMAT = "nuwa_jax.synthetic_features"
VERSION = 1
CLIP_FRAMES = 16
SCENE_NAMES: tuple[str, ...] = tuple(synthetic.SCENES)
CHARACTERS: tuple[synthetic.Character, ...] = synthetic.ALL_CHARACTERS
CHARACTER_INDEX = {c: i for i, c in enumerate(CHARACTERS)}
NUM_ACTIONS = len(synthetic.ACTIONS)
COLOURS: tuple[str, ...] = tuple(synthetic.PALETTE)
SHAPES: tuple[str, ...] = tuple(synthetic.SHAPES)
# (96, 8) and (96, 6) one-hot maps from a character to its colour and its shape.
_CHAR_COLOUR = np.array([[c.colour == k for k in COLOURS] for c in CHARACTERS], np.float32)
_CHAR_SHAPE = np.array([[c.shape == k for k in SHAPES] for c in CHARACTERS], np.float32)
HE = 6**0.5  # He-uniform gain over torch's default init, for the ReLU layers


@dataclasses.dataclass(frozen=True)
class NetConfig:
    input_size: int = 64
    clip_frames: int = CLIP_FRAMES
    widths: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (1, 2, 2, 2)  # ImageNet's (the first keeps small sprites whole)
    frame_widths: tuple[int, ...] = (16, 32, 64)
    temporal_widths: tuple[int, ...] = (96, 128)
    feature_dim: int = 256

    def __post_init__(self):
        if len(self.strides) != len(self.widths):
            raise ValueError(
                f"NetConfig: {len(self.widths)} widths but {len(self.strides)} strides"
            )
        for name in ("widths", "strides", "frame_widths", "temporal_widths"):
            object.__setattr__(self, name, tuple(int(w) for w in getattr(self, name)))
        if self.input_size < 8 or self.clip_frames < 1 or self.feature_dim < 1:
            raise ValueError(f"NetConfig: bad sizes {self}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _downsampled(size: int, layers: int) -> int:
    """Side after `layers` stride-2 'SAME' convolutions: ceil(size / 2^layers)."""
    return -(-size // (1 << layers))


class Dense(nnx.Module):
    def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs, gain: float = 1.0):
        self.kernel = nnx.Param(gain * torch_default_init(rngs.params(), (cin, cout)))
        self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32))

    def __call__(self, x):
        return x @ self.kernel[...] + self.bias[...]


def _convs(widths: Sequence[int], strides: Sequence[int], cin: int, rngs: nnx.Rngs) -> nnx.List:
    layers = []
    for w, s in zip(widths, strides):
        layers.append(
            netlib.Conv(
                cin, w, (3, 3), stride=(s, s), padding="SAME", bias=True, rngs=rngs, gain=HE
            )
        )
        cin = w
    return nnx.List(layers)


def _pooled(x: jax.Array, n: int) -> jax.Array:
    """(n * ..., C) -> (n, 2C): max and mean over every position (and frame) of a map. The
    max is a translation-invariant "is it anywhere" (small sprites, colours), the mean
    the overall look (scenery)."""
    x = x.reshape(n, -1, x.shape[-1])
    return jnp.concatenate([x.max(1), x.mean(1)], axis=-1)


def preprocess(x: jax.Array, size: int) -> jax.Array:
    """uint8 (..., H, W, 3) -> float in [-1, 1] at size x size (bilinear, antialiased)."""
    x = x.astype(jnp.float32) / 127.5 - 1.0
    if x.shape[-3:-1] != (size, size):
        x = jax.image.resize(x, (*x.shape[:-3], size, size, 3), "bilinear")
    return x


class ImageNet(nnx.Module):
    """One frame -> features, scene logits, character-presence logits."""

    def __init__(self, config: NetConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.convs = _convs(config.widths, config.strides, 3, rngs)
        side = config.input_size
        for s in config.strides:
            side = -(-side // s)
        flat = side * side * config.widths[-1] + 2 * sum(config.widths)
        self.fc = Dense(flat, config.feature_dim, rngs=rngs, gain=HE)
        self.scene = Dense(config.feature_dim, len(SCENE_NAMES), rngs=rngs)
        self.present = Dense(config.feature_dim, len(CHARACTERS), rngs=rngs)
        self.colour = Dense(config.feature_dim, len(COLOURS), rngs=rngs)
        self.shape = Dense(config.feature_dim, len(SHAPES), rngs=rngs)

    def features(self, images: jax.Array) -> jax.Array:
        """uint8 (N, H, W, 3) -> (N, feature_dim)."""
        x = preprocess(images, self.config.input_size)
        n, parts = x.shape[0], []
        for conv in self.convs:
            x = jax.nn.relu(conv(x))
            parts.append(_pooled(x, n))
        return jax.nn.relu(self.fc(jnp.concatenate([x.reshape(n, -1), *parts], axis=-1)))

    def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
        f = self.features(images)
        return dict(
            scene=self.scene(f), present=self.present(f), colour=self.colour(f), shape=self.shape(f)
        )


class ClipNet(nnx.Module):
    """clip_frames consecutive frames -> features, and scene, presence and per-character
    action logits at the centre frame. (2+1)-D: per-frame 2-D convolutions, then blocks of
    a temporal convolution (3 taps, stride 2, at every pixel) and a spatial one (3x3,
    stride 2, every frame); separable, because XLA:CPU runs 3-D convolutions slowly."""

    def __init__(self, config: NetConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.frame_convs = _convs(config.frame_widths, (2,) * len(config.frame_widths), 3, rngs)
        cin, temporal, spatial = config.frame_widths[-1], [], []
        for w in config.temporal_widths:
            temporal.append(
                netlib.Conv(
                    cin, w, (3, 1), stride=(2, 1), padding="SAME", bias=True, rngs=rngs, gain=HE
                )
            )
            spatial.append(
                netlib.Conv(
                    w, w, (3, 3), stride=(2, 2), padding="SAME", bias=True, rngs=rngs, gain=HE
                )
            )
            cin = w
        self.temporal_convs, self.spatial_convs = nnx.List(temporal), nnx.List(spatial)
        n = len(config.frame_widths) + len(config.temporal_widths)
        side = _downsampled(config.input_size, n)
        t = _downsampled(config.clip_frames, len(config.temporal_widths))
        flat = t * side * side * config.temporal_widths[-1]
        flat += 2 * (sum(config.frame_widths) + sum(config.temporal_widths))
        self.fc = Dense(flat, config.feature_dim, rngs=rngs, gain=HE)
        self.scene = Dense(config.feature_dim, len(SCENE_NAMES), rngs=rngs)
        self.present = Dense(config.feature_dim, len(CHARACTERS), rngs=rngs)
        self.colour = Dense(config.feature_dim, len(COLOURS), rngs=rngs)
        self.shape = Dense(config.feature_dim, len(SHAPES), rngs=rngs)
        self.action = Dense(config.feature_dim, len(CHARACTERS) * NUM_ACTIONS, rngs=rngs)

    def features(self, clips: jax.Array) -> jax.Array:
        """uint8 (N, T, H, W, 3) -> (N, feature_dim)."""
        n, t = clips.shape[:2]
        x = preprocess(clips.reshape(n * t, *clips.shape[2:]), self.config.input_size)
        parts = []
        for conv in self.frame_convs:
            x = jax.nn.relu(conv(x))
            parts.append(_pooled(x, n))
        for temporal, spatial in zip(self.temporal_convs, self.spatial_convs):
            h, w, c = x.shape[1:]
            x = jax.nn.relu(temporal(x.reshape(n, t, h * w, c)))  # (n, t', h*w, c')
            t = x.shape[1]
            x = jax.nn.relu(spatial(x.reshape(n * t, h, w, x.shape[-1])))
            parts.append(_pooled(x, n))
        return jax.nn.relu(self.fc(jnp.concatenate([x.reshape(n, -1), *parts], axis=-1)))

    def __call__(self, clips: jax.Array) -> dict[str, jax.Array]:
        f = self.features(clips)
        action = self.action(f).reshape(f.shape[0], len(CHARACTERS), NUM_ACTIONS)
        return dict(
            scene=self.scene(f),
            present=self.present(f),
            colour=self.colour(f),
            shape=self.shape(f),
            action=action,
        )


# ---------------------------------------------------------------------------------------
# Ground-truth labels.
# ---------------------------------------------------------------------------------------
def frame_labels(state: synthetic.EpisodeState, frames: np.ndarray) -> dict[str, np.ndarray]:
    """scene (n,) int32, present (n, 96) float32, colour (n, 8) / shape (n, 6) float32 (some
    character of that colour / shape is present), action (n, 96) int32 (-1: absent) of the
    given frame indices of an episode."""
    frames = np.asarray(frames, np.int64)
    scene_ids = np.array([SCENE_NAMES.index(s) for s in state.shot_scenes], np.int32)
    columns = np.array([CHARACTER_INDEX[c] for c in state.characters], np.int64)
    present = np.zeros((len(frames), len(CHARACTERS)), np.float32)
    action = np.full((len(frames), len(CHARACTERS)), -1, np.int32)
    present[:, columns] = state.present[frames]
    action[:, columns] = np.where(state.present[frames], state.action[frames], -1)
    return dict(
        scene=scene_ids[state.shot_id[frames]],
        present=present,
        colour=np.minimum(present @ _CHAR_COLOUR, 1.0),
        shape=np.minimum(present @ _CHAR_SHAPE, 1.0),
        action=action,
    )


# ---------------------------------------------------------------------------------------
# Saving and loading.
# ---------------------------------------------------------------------------------------
def weight_paths(path: str | os.PathLike) -> tuple[str, str]:
    """(json, safetensors) of a weights stem, its .json or its .safetensors."""
    path = os.fspath(path)
    for ext in (".json", ".safetensors"):
        if path.endswith(ext):
            path = path[: -len(ext)]
    return path + ".json", path + ".safetensors"


def save(
    path: str | os.PathLike,
    image_net: ImageNet,
    clip_net: ClipNet,
    train_info: dict[str, Any] | None = None,
) -> str:
    """Writes <stem>.safetensors then <stem>.json (atomically each); returns the JSON path."""
    json_path, st_path = weight_paths(path)
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    tensors = {}
    for prefix, net in (("image", image_net), ("clip", clip_net)):
        for name, var in convert.param_paths(net).items():
            tensors[f"{prefix}.{name}"] = np.asarray(var[...], np.float32)
    convert.save_safetensors(tensors, st_path)
    meta = dict(
        format=FORMAT,
        version=VERSION,
        config=image_net.config.to_json(),
        weights=os.path.basename(st_path),
        sha256=convert.sha256_file(st_path),
        labels=dict(
            scenes=list(SCENE_NAMES),
            characters=[c.describe() for c in CHARACTERS],
            actions=list(synthetic.ACTIONS),
        ),
        train=train_info or {},
    )
    schema.atomic_write_bytes(json_path, json.dumps(meta, indent=1).encode("utf-8"))
    return json_path


def build(config: NetConfig, seed: int = 0, abstract: bool = False) -> tuple[ImageNet, ClipNet]:
    """Both networks, randomly initialised from `seed` (or shapes only: `abstract`)."""

    def make():
        return ImageNet(config, rngs=nnx.Rngs(seed)), ClipNet(config, rngs=nnx.Rngs(seed + 1))

    return nnx.eval_shape(make) if abstract else make()


def load(path: str | os.PathLike) -> tuple[ImageNet, ClipNet, dict[str, Any]]:
    """(image_net, clip_net, metadata) from weights written by `save`; checks the sha256."""
    json_path, st_path = weight_paths(path)
    if not os.path.isfile(json_path):
        raise FileNotFoundError(f"{json_path}: no synthetic feature network metadata")
    try:
        with open(json_path, encoding="utf-8") as f:
            meta = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{json_path}: not valid JSON: {e}") from e
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(
            f"{json_path}: format {meta.get('format')!r} v{meta.get('version')}, "
            f"expected {FORMAT!r} v{VERSION}"
        )
    st_path = os.path.join(os.path.dirname(json_path), meta["weights"])
    if not os.path.isfile(st_path):
        raise FileNotFoundError(f"{st_path}: weights named by {json_path} are missing")
    digest = convert.sha256_file(st_path)
    if digest != meta["sha256"]:
        raise ValueError(
            f"{st_path}: sha256 {digest[:16]}... does not match {json_path} "
            f"({meta['sha256'][:16]}...): the weights changed after they were saved"
        )
    config = NetConfig(**meta["config"])
    image_net, clip_net = build(config, abstract=True)
    tensors = convert.load_safetensors(st_path)
    for prefix, net in (("image", image_net), ("clip", clip_net)):
        mine = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        mapping = {p: (p, convert.identity) for p in convert.param_paths(net)}
        convert.assign_weights(net, mine, mapping, source=f"{st_path} ({prefix} network)")
    return image_net, clip_net, meta


class SyntheticFeatures(feats.BatchedFeatures):
    """The FeatureExtractor of the trained synthetic-benchmark networks."""

    name = "synthetic"

    def __init__(
        self,
        image_net: ImageNet,
        clip_net: ClipNet,
        *,
        batch_size: int = 64,
        info: dict[str, Any] | None = None,
    ):
        self.config = image_net.config
        self.clip_frames = self.config.clip_frames
        self.batch_size = batch_size
        self.info = dict(info or {})
        self._image = netlib.jit_method(image_net, "features")
        self._clip = netlib.jit_method(clip_net, "features")

    @classmethod
    def load(cls, path: str | os.PathLike, **kw: Any) -> SyntheticFeatures:
        image_net, clip_net, meta = load(path)
        info = dict(
            weights=weight_paths(path)[0],
            sha256=meta["sha256"],
            train_metrics=meta.get("train", {}).get("metrics", {}),
        )
        return cls(image_net, clip_net, info=info, **kw)

    def describe(self) -> dict[str, Any]:
        return dict(
            kind=self.name,
            image=f"synthetic ImageNet penultimate ({self.config.feature_dim}-d)",
            clip=f"synthetic ClipNet penultimate ({self.config.feature_dim}-d), "
            f"{self.clip_frames} frames",
            input_size=self.config.input_size,
            **self.info,
        )
