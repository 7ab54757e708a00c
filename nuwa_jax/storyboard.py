"""Storyboards: what the video shows when, as one prompt per frame at every level.

NUWA-XL conditions every frame of every level on its own prompt. A storyboard says which
prompt holds for which part of the video; `Storyboard.frame_prompts(n)` expands it to
one prompt per frame of an n-frame video, and each level of the hierarchy then reads the
prompts of the absolute frame indices it generates.

Two kinds of entry, in two file forms (docs/storyboard.md has the full grammar):

- scenes with relative durations (`duration`): stretched proportionally to the video's
  length, so one storyboard renders at 16 or at 3376 frames; a scene must get at least one
  frame (a video too short for its scenes is a StoryboardError naming the first scene
  left out, not a scene dropped unseen);
- captions on absolute frame ranges (`start`, `end`, both inclusive): must tile
  [0, n) exactly for the requested n.

JSON: `{"scenes": [{"prompt": ..., "duration": ...}, ...]}` or
`{"captions": [{"start": 0, "end": 99, "prompt": ...}, ...]}`.
Plain text, one entry per line, `#` comments and blank lines ignored:
`DURATION | prompt` (scenes) or `START-END | prompt` (frame ranges); a file uses one kind.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re


class StoryboardError(ValueError):
    """A malformed storyboard; the message names the file and the line or field."""


@dataclasses.dataclass(frozen=True)
class Scene:
    prompt: str
    duration: float | None = None  # relative duration (scenes)
    start: int | None = None  # absolute inclusive frame range (captions)
    end: int | None = None


@dataclasses.dataclass(frozen=True)
class Storyboard:
    """An ordered list of scenes, all relative (`duration`) or all absolute (`start`/`end`)."""

    scenes: tuple[Scene, ...]
    source: str = "<storyboard>"

    def __post_init__(self):
        if not self.scenes:
            raise StoryboardError(f"{self.source}: the storyboard has no scenes")
        kinds = {s.duration is not None for s in self.scenes}
        if len(kinds) > 1:
            raise StoryboardError(
                f"{self.source}: mixes scenes with durations and captions with frame ranges"
            )

    @property
    def absolute(self) -> bool:
        return self.scenes[0].duration is None

    @classmethod
    def from_prompt(cls, prompt: str) -> Storyboard:
        """One prompt for the whole video."""
        if not prompt.strip():
            raise StoryboardError("--prompt: the prompt is empty")
        return cls((Scene(prompt.strip(), duration=1.0),), source="--prompt")

    @classmethod
    def from_frame_prompts(cls, prompts: list[str], source: str = "<frames>") -> Storyboard:
        """Captions on absolute frame ranges: each run of equal consecutive prompts one range."""
        if not prompts:
            raise StoryboardError(f"{source}: no frames")
        scenes, start = [], 0
        for t in range(1, len(prompts) + 1):
            if t == len(prompts) or prompts[t] != prompts[start]:
                scenes.append(Scene(prompts[start], start=start, end=t - 1))
                start = t
        return cls(tuple(scenes), source)

    def to_json(self) -> str:
        """The JSON form that `parse_json` reads back."""
        if self.absolute:
            entries = [dict(start=s.start, end=s.end, prompt=s.prompt) for s in self.scenes]
            return json.dumps(dict(captions=entries), indent=1)
        entries = [dict(duration=s.duration, prompt=s.prompt) for s in self.scenes]
        return json.dumps(dict(scenes=entries), indent=1)

    def frame_prompts(self, num_frames: int) -> list[str]:
        """One prompt per frame of a `num_frames`-frame video."""
        if num_frames < 1:
            raise StoryboardError(f"{self.source}: num_frames must be >= 1, got {num_frames}")
        if self.absolute:
            covered = self.scenes[-1].end + 1
            if covered != num_frames:
                raise StoryboardError(
                    f"{self.source}: its frame ranges cover frames 0-{covered - 1}, "
                    f"but the video has {num_frames} frames"
                )
            out: list[str] = []
            for s in self.scenes:
                out += [s.prompt] * (s.end - s.start + 1)
            return out
        total = sum(s.duration for s in self.scenes)
        # Scene i covers [round(c_i * n), round(c_{i+1} * n)) with c the cumulative share.
        bounds, acc = [0], 0.0
        for s in self.scenes:
            acc += s.duration
            bounds.append(round(acc / total * num_frames))
        out = []
        for i, (s, a, b) in enumerate(zip(self.scenes, bounds[:-1], bounds[1:])):
            if b == a:
                enough = math.floor(total / min(x.duration for x in self.scenes)) + 1
                raise StoryboardError(
                    f"{self.source}: scene {i + 1} of {len(self.scenes)} ({s.prompt!r}, "
                    f"duration {s.duration:g} of {total:g}) gets 0 of the {num_frames} frames; "
                    f"every scene gets a frame at {enough} frames or more (--frames), or "
                    "lengthen the short scenes"
                )
            out += [s.prompt] * (b - a)
        return out


def _scene(entry: object, where: str, kind: str) -> Scene:
    if not isinstance(entry, dict):
        raise StoryboardError(f"{where}: expected an object, got {type(entry).__name__}")
    prompt = entry.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise StoryboardError(f"{where}.prompt: missing or empty")
    unknown = set(entry) - {"prompt", "duration", "start", "end"}
    if unknown:
        raise StoryboardError(f"{where}: unknown field(s) {sorted(unknown)}")
    if kind == "scenes" and "duration" not in entry:
        raise StoryboardError(f"{where}.duration: missing")
    if kind == "captions" and "duration" in entry:
        raise StoryboardError(f"{where}: use start/end, not duration")
    if "duration" in entry:
        d = entry["duration"]
        if isinstance(d, bool) or not isinstance(d, int | float) or not d > 0 or math.isinf(d):
            raise StoryboardError(f"{where}.duration: must be a positive number, got {d!r}")
        return Scene(prompt.strip(), duration=float(d))
    for key in ("start", "end"):
        v = entry.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise StoryboardError(f"{where}.{key}: must be an integer >= 0, got {v!r}")
    return Scene(prompt.strip(), start=entry["start"], end=entry["end"])


def _check_ranges(scenes: list[Scene], where: list[str], source: str) -> None:
    expected = 0
    for s, w in zip(scenes, where):
        if s.duration is not None:
            continue
        if s.end < s.start:
            raise StoryboardError(f"{source}: {w}: end {s.end} is before start {s.start}")
        if s.start != expected:
            gap = "overlaps the previous range" if s.start < expected else "leaves a gap"
            raise StoryboardError(
                f"{source}: {w}: range starts at {s.start}, expected {expected} ({gap})"
            )
        expected = s.end + 1


def parse_json(text: str, source: str = "<json>") -> Storyboard:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise StoryboardError(f"{source}: line {e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(data, dict) or not ({"scenes", "captions"} & set(data)):
        raise StoryboardError(f'{source}: expected an object with "scenes" or "captions"')
    if {"scenes", "captions"} <= set(data):
        raise StoryboardError(f'{source}: has both "scenes" and "captions"; use one')
    key = "scenes" if "scenes" in data else "captions"
    entries = data[key]
    if not isinstance(entries, list):
        raise StoryboardError(f"{source}: {key}: expected a list")
    where = [f"{key}[{i}]" for i in range(len(entries))]
    scenes = [_scene(e, f"{source}: {w}", key) for e, w in zip(entries, where)]
    _check_ranges(scenes, where, source)
    return Storyboard(tuple(scenes), source)


_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*$")


def parse_text(text: str, source: str = "<text>") -> Storyboard:
    scenes, where = [], []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        w = f"line {lineno}"
        if "|" not in line:
            raise StoryboardError(
                f"{source}: {w}: expected 'DURATION | prompt' or 'START-END | prompt', "
                f"got {raw.strip()!r}"
            )
        head, prompt = (p.strip() for p in line.split("|", 1))
        if not prompt:
            raise StoryboardError(f"{source}: {w}: empty prompt")
        if m := _RANGE.match(head):
            scenes.append(Scene(prompt, start=int(m[1]), end=int(m[2])))
        elif (m := _DURATION.match(head)) and float(m[1]) > 0:
            scenes.append(Scene(prompt, duration=float(m[1])))
        else:
            raise StoryboardError(
                f"{source}: {w}: {head!r} is neither a positive duration nor a START-END range"
            )
        where.append(w)
    if not scenes:
        raise StoryboardError(f"{source}: no entries (every line is blank or a comment)")
    kinds = {s.duration is None for s in scenes}
    if len(kinds) > 1:
        first = next(
            w for s, w in zip(scenes, where) if (s.duration is None) != (scenes[0].duration is None)
        )
        raise StoryboardError(
            f"{source}: {first}: mixes durations and frame ranges; a file uses one kind"
        )
    _check_ranges(scenes, where, source)
    return Storyboard(tuple(scenes), source)


def load(path: str) -> Storyboard:
    """Reads a storyboard file: `.json` as JSON, anything else as the plain-text form."""
    if not os.path.exists(path):
        raise StoryboardError(f"{path}: no such storyboard file")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return parse_json(text, path) if path.endswith(".json") else parse_text(text, path)
