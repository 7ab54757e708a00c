"""TFDS builders: 'flintstones_hd' (your captioned videos) and 'nuwa_synthetic'.

One TFDS example per FRAME, as in the frame store (docs/data.md): episode id, frame
index, image, caption, keyed `<episode>/<frame:07d>`. Windows of L frames at a stride
are assembled by the reader (by key or by filtering an episode); the frame store
(schema.FrameStore) is the faster path for training, TFDS the interoperable one.

  tfds build nuwa_synthetic --imports nuwa_jax.data.tfds_builders \
      --config tiny --data_dir DIR
  tfds build flintstones_hd --imports nuwa_jax.data.tfds_builders \
      --config r128 --manual_dir MANUAL --data_dir DIR

flintstones_hd's manual_dir holds `videos/` and `captions/` laid out as for
convert_videos.py (same caption formats and checks); every video goes to 'train', or,
if `manual_dir/test.txt` lists video paths (one a line, relative to videos/), those go
to 'test'.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from nuwa_jax.data import convert_videos, synthetic


def _frame_features(resolution: int) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict(
        {
            "episode_id": tfds.features.Text(),
            "frame_index": np.int64,
            "image": tfds.features.Image(shape=(resolution, resolution, 3), encoding_format="png"),
            "caption": tfds.features.Text(),
        }
    )


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
    resolution: int = 64
    frames: int = 3376
    train_episodes: int = 8
    test_episodes: int = 2
    seed: int = 0


class NuwaSynthetic(tfds.core.GeneratorBasedBuilder):
    """The procedural long-video benchmark of nuwa_jax.data.synthetic."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        SyntheticConfig(name="tiny", description="CPU tests", resolution=32, frames=40,
                        train_episodes=2, test_episodes=1),
        SyntheticConfig(name="r64", description="3376-frame episodes, 64 px", resolution=64),
        SyntheticConfig(name="r128", description="3376-frame episodes, 128 px", resolution=128),
    ]  # fmt: skip

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=_frame_features(self.builder_config.resolution),
            homepage="https://github.com/nuwa-jax",
            description=synthetic.__doc__,
            metadata=tfds.core.MetadataDict(spec=synthetic.benchmark_spec()),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        c = self.builder_config
        return {
            "train": self._generate_examples(range(c.train_episodes)),
            # Held-out episodes: indices after the training ones, same seed.
            "test": self._generate_examples(
                range(c.train_episodes, c.train_episodes + c.test_episodes)
            ),
        }

    def _generate_examples(self, episodes):
        c = self.builder_config
        for e in episodes:
            state = synthetic.simulate_episode(c.seed, e, c.frames, c.resolution)
            eid = synthetic.episode_id(e)
            for t, (image, text) in enumerate(synthetic.iter_frames(state)):
                yield (
                    f"{eid}/{t:07d}",
                    dict(episode_id=eid, frame_index=t, image=image, caption=text),
                )


@dataclasses.dataclass
class FlintstonesConfig(tfds.core.BuilderConfig):
    resolution: int = 128
    fps: float = 8.0


class FlintstonesHd(tfds.core.GeneratorBasedBuilder):
    """FlintstonesHD-format data from your own long videos with per-frame captions."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        FlintstonesConfig(name="r128", resolution=128),
        FlintstonesConfig(name="r256", resolution=256),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    FlintstonesHD was never released. Put your videos (mp4, mkv, avi, webm) under
    <manual_dir>/videos/ and one caption file per video (JSON, CSV, SRT or WebVTT, see
    nuwa_jax/data/convert_videos.py) at the same relative path under
    <manual_dir>/captions/. Optional <manual_dir>/test.txt lists test videos.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=_frame_features(self.builder_config.resolution),
            description=convert_videos.__doc__,
        )

    def _split_generators(self, dl_manager):
        root = os.fspath(dl_manager.manual_dir)
        videos = convert_videos.find_videos(os.path.join(root, "videos"))
        test_list = os.path.join(root, "test.txt")
        test = set()
        if os.path.exists(test_list):
            with open(test_list, encoding="utf-8") as f:
                test = {line.strip() for line in f if line.strip()}
            unknown = sorted(test - set(videos))
            if unknown:
                raise convert_videos.ConversionError(
                    f"{test_list}: lists videos not under videos/: {', '.join(unknown)}"
                )
        splits = {"train": self._generate_examples(root, [v for v in videos if v not in test])}
        if test:
            splits["test"] = self._generate_examples(root, [v for v in videos if v in test])
        return splits

    def _generate_examples(self, root, videos):
        c = self.builder_config
        for rel in videos:
            path = os.path.join(root, "videos", rel)
            captions = convert_videos.load_captions(
                convert_videos.find_caption_file(os.path.join(root, "captions"), rel)
            )
            info = convert_videos.probe_video(path)
            convert_videos.check_captions(captions, info)
            eid = os.path.splitext(rel)[0].replace(os.sep, "/")
            frames = convert_videos.episode_frames(
                path, captions, c.fps, c.resolution, info.duration, [0]
            )
            for t, (image, text) in enumerate(frames):
                yield (
                    f"{eid}/{t:07d}",
                    dict(episode_id=eid, frame_index=t, image=image, caption=text),
                )
