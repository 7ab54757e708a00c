"""diffusers UNet2DConditionModel (Stable Diffusion) -> MTD's spatial layers.

A local directory holding diffusers' `config.json` and `diffusion_pytorch_model.safetensors`
(the `unet/` folder of an SD-1.x pipeline) is read without diffusers or torch. Every
spatial parameter of MTD takes the tensor of the same diffusers name; the parameters that
do not exist in an image UNet keep their initialisation, which makes MTD equal the image
UNet applied frame by frame:

    KEEP_INIT  temporal convs (identity), temporal attentions (zero output projection),
               condition cascades and injections (zero-init injection convs), the level
               embedding (zeros), the input condition conv (zeros).

Any missing, unexpected or mis-shaped key raises `WeightImportError` listing them all.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

from nuwa_jax.convert.common import WeightImportError, import_weights, load_safetensors

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"

# Parameters that an image UNet lacks: they keep their (identity / zero) initialisation.
KEEP_INIT = (
    "*temporal_conv*",  # resnets' temporal_conv1/2 and the samplers' temporal_conv
    "*temporal_attentions.*",
    "*injections.*",
    "condition_cascade.*",
    "mask_cascade.*",
    "level_embedding",
    "conv_in_condition.*",  # mtd.condition_input='concat'
)

# Our path -> diffusers key, after kernel/scale -> weight.
RENAMES = (
    (r"\.to_out\.", ".to_out.0."),
    (r"\.ff\.proj\.", ".ff.net.0.proj."),
    (r"\.ff\.out\.", ".ff.net.2."),
)

# diffusers config values MTD reproduces exactly; anything else is refused by name.
_REQUIRED = {
    "center_input_sample": False,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "only_cross_attention": False,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "transformer_layers_per_block": 1,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "dual_cross_attention": False,
    "class_embed_type": None,
    "addition_embed_type": None,
    "num_class_embeds": None,
    "upcast_attention": False,
    "resnet_time_scale_shift": "default",
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "attention_type": "default",
    "class_embeddings_concat": False,
    "mid_block_only_cross_attention": None,
    "cross_attention_norm": None,
}


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """diffusers' config.json of a UNet directory, as a dict."""
    path = os.path.join(os.fspath(directory), CONFIG_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no diffusers UNet config at {path}")
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from e


def _num_heads(cfg: Mapping[str, Any], source: str) -> int:
    """diffusers' heads: `num_attention_heads`, else (SD quirk) `attention_head_dim`."""
    heads = cfg.get("num_attention_heads") or cfg.get("attention_head_dim", 8)
    if isinstance(heads, list | tuple):
        if len(set(heads)) != 1:
            raise ValueError(
                f"{source}: per-block attention heads {heads} differ; MTD uses one "
                "num_attention_heads for every block"
            )
        heads = heads[0]
    return int(heads)


def mtd_config_from_diffusers(
    cfg: Mapping[str, Any],
    base: ml_collections.ConfigDict,
    *,
    source: str = CONFIG_NAME,
) -> ml_collections.ConfigDict:
    """`base` (an mtd config section) with its spatial fields set from a diffusers config.

    Temporal, injection and level options stay as in `base`. Features of the diffusers
    config that MTD does not reproduce raise ValueError naming the key and its value.
    """
    for key, want in _REQUIRED.items():
        if key in cfg and cfg[key] != want:
            raise ValueError(
                f"{source}: {key}={cfg[key]!r} is not supported by MTD (needs {want!r})"
            )
    out = ml_collections.ConfigDict(base.to_dict())
    out.in_channels = int(cfg.get("in_channels", 4))
    out.out_channels = int(cfg.get("out_channels", 4))
    out.block_out_channels = tuple(int(c) for c in cfg["block_out_channels"])
    out.down_block_types = tuple(cfg["down_block_types"])
    out.up_block_types = tuple(cfg["up_block_types"])
    lpb = cfg.get("layers_per_block", 2)
    if isinstance(lpb, list | tuple):
        if len(set(lpb)) != 1:
            raise ValueError(f"{source}: per-block layers_per_block {lpb} is not supported")
        lpb = lpb[0]
    out.layers_per_block = int(lpb)
    out.num_attention_heads = _num_heads(cfg, source)
    cross = cfg.get("cross_attention_dim", 1280)
    if isinstance(cross, list | tuple):
        raise ValueError(f"{source}: per-block cross_attention_dim {cross} is not supported")
    out.cross_attention_dim = int(cross)
    out.norm_num_groups = int(cfg.get("norm_num_groups", 32))
    out.norm_eps = float(cfg.get("norm_eps", 1e-5))
    out.use_linear_projection = bool(cfg.get("use_linear_projection", False))
    out.flip_sin_to_cos = bool(cfg.get("flip_sin_to_cos", True))
    out.freq_shift = int(cfg.get("freq_shift", 0))
    out.dropout = float(cfg.get("dropout", 0.0))
    return out


_SPATIAL_FIELDS = (
    "in_channels",
    "out_channels",
    "block_out_channels",
    "down_block_types",
    "up_block_types",
    "layers_per_block",
    "num_attention_heads",
    "cross_attention_dim",
    "norm_num_groups",
    "norm_eps",
    "use_linear_projection",
    "flip_sin_to_cos",
    "freq_shift",
)


def check_compatible(mtd_config: Any, cfg: Mapping[str, Any], *, source: str = CONFIG_NAME) -> None:
    """Raises ValueError listing every spatial field where MTD's config and diffusers' differ."""
    want = mtd_config_from_diffusers(cfg, mtd_config, source=source)
    diffs = []
    for field in _SPATIAL_FIELDS:
        ours, theirs = mtd_config[field], want[field]
        if isinstance(ours, list | tuple):
            ours, theirs = tuple(ours), tuple(theirs)
        if ours != theirs:
            diffs.append(f"{field}: mtd {ours!r} vs diffusers {theirs!r}")
    if diffs:
        raise ValueError(
            f"{source}: the UNet does not match the MTD config:\n  " + "\n  ".join(diffs)
        )


def import_unet_tensors(model: Any, tensors: Mapping[str, np.ndarray], *, source: str) -> list[str]:
    """Assigns diffusers UNet tensors (torch names) into `model`; returns kept-at-init paths."""
    return import_weights(model, tensors, source=source, renames=RENAMES, keep_init=KEEP_INIT)


def load_unet(model: Any, directory: str | os.PathLike) -> list[str]:
    """Imports a diffusers UNet directory into an MTD model in place.

    Checks config.json against `model.config` first (a mismatch names the fields), then
    assigns every spatial weight; returns the parameter paths kept at their init.
    """
    directory = os.fspath(directory)
    cfg = read_config(directory)
    check_compatible(model.config, cfg, source=os.path.join(directory, CONFIG_NAME))
    path = os.path.join(directory, WEIGHTS_NAME)
    return import_unet_tensors(model, load_safetensors(path), source=path)


__all__ = [
    "KEEP_INIT",
    "RENAMES",
    "WeightImportError",
    "check_compatible",
    "import_unet_tensors",
    "load_unet",
    "mtd_config_from_diffusers",
    "read_config",
]
