"""Caption adherence on the synthetic benchmark: are the characters (and the place) that
a frame's caption names actually in the frame?

Captions follow the renderer's grammar (nuwa_jax.data.synthetic.caption): "a big red
circle and a small blue square walk left, a small green star jumps on the beach". Each
"a <size> <colour> <shape>" names a character; the closing phrase names the scenery.

Characters are found by the renderer's own rules, robust to the slight blur and colour
noise of generated frames:
1. colour mask: pixels within `colour_tolerance` (Euclidean RGB) of PALETTE[colour].
   Default 40, half the smallest distance between two palette colours (orange-yellow,
   84), so a pixel belongs to at most one character colour. Pixels of the OTHER palette
   colours are possible occluders (characters are drawn over each other).
2. templates: `shape_mask(shape, sprite_px(size, resolution))` for all 6 x 2 shapes and
   sizes, each with a tolerance band of `band` pixels (default 1) along its outline:
   core = the template eroded by `band` (sprites under 4 band + 4 px: the template
   itself), and only colour pixels outside the template dilated by `band` count against
   it. So a sprite whose outline blur pushed out of, or into, the colour mask scores as if
   it were sharp: at 64 px (8 and 16 px sprites) ground-truth frames blurred with a
   Gaussian of sigma 0.5 px keep a recall of 1.0 (tests/test_evaluate_adherence.py); at 32
   px the 4-px sprites are only found sharp.
3. at every position (partly outside the frame included) and for every template,
   tolerant IoU = |core & mask| / (|visible core| - |core & occluders| + |mask in the
   window outside the dilated template|); positions where under `min_visible` of the core
   is visible (frame edge, occlusion) score 0.
4. detection (per colour, per frame): greedily take the best (template, position) whose
   tolerant IoU >= `iou_threshold` (default 0.6), ties broken by the plain IoU; all
   templates scoring within 1e-6 of it there are its labels (at 4 px a circle, a diamond
   and a cross are the same pixels); candidates centred within half its size are
   suppressed; repeat.
A named character is present when a detection of its colour carries its (shape, size).

Scenery: the frame (block-averaged to <= 16 x 16) is compared with every scene's
background (all 8 variants, same averaging) by the mean per-pixel RGB L1 distance
capped at 60 (characters cover a minority of pixels); the nearest scene is the one shown.

Metrics (`AdherenceMeter.result`): character_adherence = share of frames naming >= 1
character in which ALL named characters are found (the headline); character_recall =
found / named over all named characters; scene_adherence = share of frames whose
caption names a known place and whose scenery is that place. Colours, which a model
draws before it draws shapes: colour_presence = share of the (frame, named colour) pairs
whose colour covers >= `colour_min_pixels` (scaled from 32 px by area) pixels;
unnamed_colours = share of the frames with a parsed caption that show a palette colour
the caption names no character of. Colours of the named scene's own scenery (black in
the city and the cave) are not counted either way. Captions outside the
grammar name nothing and are counted in `frames_unparsed`. Actions are not checked
(one frame does not show them; the clip feature network does).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.fft
import scipy.ndimage

from nuwa_jax.data import synthetic

_SIZES, _COLOURS, _SHAPES = (
    "|".join(x) for x in (synthetic.SIZES, synthetic.PALETTE, synthetic.SHAPES)
)
_CHARACTER = re.compile(rf"\ban? ({_SIZES}) ({_COLOURS}) ({_SHAPES})\b")
_PHRASES = sorted(((v["phrase"], k) for k, v in synthetic.SCENES.items()), key=lambda p: -len(p[0]))


def parse_caption(caption: str) -> tuple[list[synthetic.Character], str | None]:
    """(characters named, scene named or None) of a caption in the renderer's grammar."""
    text = caption.strip().lower()
    chars = [
        synthetic.Character(shape, colour, size) for size, colour, shape in _CHARACTER.findall(text)
    ]
    scene = next((name for phrase, name in _PHRASES if text.endswith(phrase)), None)
    return chars, scene


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
    colour_tolerance: float = 40.0
    iou_threshold: float = 0.6
    band: int = 1
    min_visible: float = 0.3
    max_detections: int = 6  # per colour and frame
    colour_min_pixels: float = 3.0  # at 32 px (a small star shows 6); scales with the area


class CharacterDetector:
    """Finds the palette characters of square frames of one resolution (see the module
    docstring for the rules)."""

    def __init__(self, resolution: int, config: DetectorConfig = DetectorConfig()):
        if resolution < 16:
            raise ValueError(f"CharacterDetector: resolution {resolution} < 16")
        self.resolution, self.config = resolution, config
        self.labels = [(shape, size) for size in synthetic.SIZES for shape in synthetic.SHAPES]
        self.sizes = np.array([synthetic.sprite_px(size, resolution) for _, size in self.labels])
        b = config.band
        self.window = int(self.sizes.max()) + 2 * b
        kernels = {name: [] for name in ("core", "ring", "tmpl", "box")}
        for (shape, _), k in zip(self.labels, self.sizes):
            t = np.zeros((self.window, self.window), bool)
            o = (self.window - k) // 2
            t[o : o + k, o : o + k] = synthetic.shape_mask(shape, int(k))
            box = np.zeros_like(t)
            box[o - b : o + k + b, o - b : o + k + b] = True
            # Sprites under 4 band + 4 px keep their full template as core (eroding a 4-px
            # sprite would leave nothing to match).
            core = scipy.ndimage.binary_erosion(t, iterations=b) if b and k >= 4 * b + 4 else t
            dil = scipy.ndimage.binary_dilation(t, iterations=b) if b else t
            kernels["core"].append(core)
            kernels["ring"].append(box & ~dil)
            kernels["tmpl"].append(t)
            kernels["box"].append(box)
        self.core_area = np.array([c.sum() for c in kernels["core"]], np.float64)
        self.shape = (resolution + self.window - 1,) * 2
        # Correlation = convolution with the flipped kernel ('full': windows partly outside).
        self._k = {
            n: scipy.fft.rfft2(np.stack(v)[:, ::-1, ::-1].astype(np.float32), self.shape)
            for n, v in kernels.items()
        }
        ones = np.ones((1, resolution, resolution))
        self._visible_core = self._corr(ones, "core")[0]
        self._visible_tmpl = self._corr(ones, "tmpl")[0]
        self.palette = {c: np.array(v, np.float32) for c, v in synthetic.PALETTE.items()}
        self.colour_index = {c: i for i, c in enumerate(self.palette)}

    def _corr(self, maps: np.ndarray, kernel: str) -> np.ndarray:
        """(B, H, W) -> (B, templates, H + w - 1, W + w - 1) window counts (float32 FFTs,
        rounded: counts are integers <= w^2, far inside float32's exact range)."""
        f = scipy.fft.rfft2(maps.astype(np.float32), self.shape)
        return np.rint(scipy.fft.irfft2(f[:, None] * self._k[kernel][None], self.shape))

    def colour_labels(self, frames: np.ndarray) -> np.ndarray:
        """(B, H, W) int8: index into PALETTE of the colour within `colour_tolerance` of
        each pixel, -1 for none (at most one colour is that close, see the docstring)."""
        x = frames.astype(np.float32)
        d2 = np.stack([((x - v) ** 2).sum(-1) for v in self.palette.values()])
        nearest = d2.argmin(0).astype(np.int8)
        return np.where(d2.min(0) <= self.config.colour_tolerance**2, nearest, np.int8(-1))

    def scores(self, labels: np.ndarray, colour: str) -> tuple[np.ndarray, np.ndarray]:
        """(tolerant IoU, plain IoU) of `colour_labels` maps, each (B, templates,
        positions_y, positions_x)."""
        c = self.colour_index[colour]
        mask, others = labels == c, (labels >= 0) & (labels != c)
        hit = self._corr(mask, "core")
        occluded = self._corr(others, "core")
        outside = self._corr(mask, "ring")
        visible = self._visible_core[None] - occluded
        denom = visible + outside
        ok = visible >= self.config.min_visible * self.core_area[None, :, None, None]
        tol = np.where(ok & (denom > 0), hit / np.maximum(denom, 1), 0.0)
        inter = self._corr(mask, "tmpl")
        union = self._visible_tmpl[None] + self._corr(mask, "box") - inter
        plain = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        return tol, plain

    def detect(
        self, frames: np.ndarray, colour: str, labels: np.ndarray | None = None
    ) -> list[list[set[tuple[str, str]]]]:
        """Per frame, the detections of `colour`: each the set of (shape, size) labels
        that fit it equally well. `labels`: the frames' `colour_labels`, if known."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[1:] != (self.resolution, self.resolution, 3):
            raise ValueError(
                f"CharacterDetector({self.resolution}): frames must be (B, {self.resolution}, "
                f"{self.resolution}, 3), got {frames.shape}"
            )
        labels = self.colour_labels(frames) if labels is None else labels
        out: list[list[set[tuple[str, str]]]] = [[] for _ in frames]
        has = np.nonzero((labels == self.colour_index[colour]).any(axis=(1, 2)))[0]
        if not len(has):
            return out
        tol, plain = self.scores(labels[has], colour)
        thr = self.config.iou_threshold
        for b, frame in enumerate(has):
            score = np.where(tol[b] >= thr, tol[b] + 1e-3 * plain[b], -1.0)
            while len(out[frame]) < self.config.max_detections:
                t, i, j = np.unravel_index(int(np.argmax(score)), score.shape)
                best = score[t, i, j]
                if best < 0:
                    break
                at = score[:, i, j]
                out[frame].append({self.labels[k] for k in np.nonzero(at >= best - 1e-6)[0]})
                r = int(self.sizes[t]) // 2
                score[:, max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1] = -1.0
        return out


class SceneClassifier:
    """Nearest scenery (all SCENES x 8 background variants) of frames of one resolution."""

    CAP = 60.0

    def __init__(self, resolution: int):
        self.resolution = resolution
        self.factor = max(1, resolution // 16)
        names, backgrounds = [], []
        for scene in synthetic.SCENES:
            for variant in range(8):
                names.append(scene)
                backgrounds.append(synthetic.render_background(scene, resolution, variant))
        self.names = names
        self.backgrounds = self._pool(np.stack(backgrounds))
        # (8, H, W, 3) uint8 per scene, unpooled: the scenery colours of AdherenceMeter.
        self.variants = {
            n: np.stack(backgrounds[8 * k : 8 * k + 8]) for k, n in enumerate(names[::8])
        }

    def _pool(self, x: np.ndarray) -> np.ndarray:
        f, n = self.factor, self.resolution // self.factor
        x = x[:, : n * f, : n * f].astype(np.float64)
        return x.reshape(x.shape[0], n, f, n, f, 3).mean(axis=(2, 4))

    def classify(self, frames: np.ndarray) -> list[str]:
        x = self._pool(np.asarray(frames))
        out = []
        for frame in x:
            d = np.minimum(np.abs(self.backgrounds - frame[None]).sum(-1), self.CAP).mean(
                axis=(1, 2)
            )
            out.append(self.names[int(np.argmin(d))])
        return out


class AdherenceMeter:
    """Accumulates caption adherence over batches of (frames, captions)."""

    def __init__(self, resolution: int, config: DetectorConfig = DetectorConfig()):
        self.detector = CharacterDetector(resolution, config)
        self.scenes = SceneClassifier(resolution)
        self.config = config
        self.frames = self.unparsed = 0
        self.with_chars = self.all_found = self.named = self.found = 0
        self.with_scene = self.scene_ok = 0
        self.colours_named = self.colours_shown = self.colour_frames = self.unnamed_frames = 0
        detector = self.detector
        self.min_pixels = config.colour_min_pixels * (resolution / 32) ** 2
        # Palette colours each scene's own scenery shows (any variant), and any scene's.
        self.scene_colours = {
            scene: {
                c
                for c, i in detector.colour_index.items()
                if (detector.colour_labels(b) == i).sum(axis=(1, 2)).max() >= self.min_pixels
            }
            for scene, b in self.scenes.variants.items()
        }
        self.any_scene_colours = set().union(*self.scene_colours.values())

    def update(self, frames: np.ndarray, captions: Sequence[str]) -> np.ndarray:
        """Adds a batch; returns per frame whether all named characters were found."""
        frames = np.asarray(frames)
        if len(frames) != len(captions):
            raise ValueError(f"{len(frames)} frames but {len(captions)} captions")
        parsed = [parse_caption(c) for c in captions]
        found = [[False] * len(chars) for chars, _ in parsed]
        colours = sorted({c.colour for chars, _ in parsed for c in chars})
        colour_map = self.detector.colour_labels(frames) if colours else None
        for colour in colours:
            idx = [
                i for i, (chars, _) in enumerate(parsed) if any(c.colour == colour for c in chars)
            ]
            detections = self.detector.detect(frames[idx], colour, colour_map[idx])
            for i, dets in zip(idx, detections):
                labels = set().union(*dets) if dets else set()
                for k, c in enumerate(parsed[i][0]):
                    if c.colour == colour and (c.shape, c.size) in labels:
                        found[i][k] = True
        self._count_colours(colour_map if colours else self.detector.colour_labels(frames), parsed)
        named_scene = [(i, s) for i, (_, s) in enumerate(parsed) if s is not None]
        shown = self.scenes.classify(frames[[i for i, _ in named_scene]]) if named_scene else []
        self.frames += len(frames)
        self.unparsed += sum(1 for chars, s in parsed if not chars and s is None)
        self.with_scene += len(named_scene)
        self.scene_ok += sum(1 for (_, s), got in zip(named_scene, shown) if s == got)
        ok = np.array([bool(f) and all(f) for f in found])
        for f in found:
            if f:
                self.with_chars += 1
                self.all_found += all(f)
                self.named += len(f)
                self.found += sum(f)
        return ok

    def _count_colours(self, labels: np.ndarray, parsed: list) -> None:
        """colour_presence / unnamed_colours counts of one batch (`colour_labels` maps)."""
        index = self.detector.colour_index
        counts = np.stack([(labels == i).sum(axis=(1, 2)) for i in index.values()], axis=1)
        for frame, (chars, scene) in zip(counts, parsed):
            if not chars and scene is None:
                continue  # outside the grammar
            scenery = self.scene_colours[scene] if scene else self.any_scene_colours
            shown = {c for c, i in index.items() if frame[i] >= self.min_pixels} - scenery
            named = {c.colour for c in chars} - scenery
            self.colours_named += len(named)
            self.colours_shown += len(named & shown)
            self.colour_frames += 1
            self.unnamed_frames += bool(shown - named)

    def result(self) -> dict[str, Any]:
        share = lambda a, b: a / b if b else None  # noqa: E731
        return dict(
            character_adherence=share(self.all_found, self.with_chars),
            character_recall=share(self.found, self.named),
            scene_adherence=share(self.scene_ok, self.with_scene),
            colour_presence=share(self.colours_shown, self.colours_named),
            unnamed_colours=share(self.unnamed_frames, self.colour_frames),
            frames=self.frames,
            frames_with_characters=self.with_chars,
            characters_named=self.named,
            frames_with_scene=self.with_scene,
            frames_unparsed=self.unparsed,
            detector=dataclasses.asdict(self.config),
        )
