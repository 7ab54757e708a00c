"""diffusers AutoencoderKL (a local directory) -> our KL-VAE or T-KLVAE.

The directory holds diffusers' `config.json` and `diffusion_pytorch_model.safetensors`
(e.g. Stable Diffusion's `vae/` folder). The config builds ours (architecture fields from
the file, temporal fields from our config section); the weights are assigned by name
(nuwa_jax.convert.common). In a T-KLVAE every temporal layer keeps its identity init,
explicitly (`keep_init=TEMPORAL_PARAMS`), so the imported T-KLVAE equals SD's VAE frame by
frame. Older diffusers files name the attention projections query/key/value/proj_attn;
those are renamed to to_q/to_k/to_v/to_out.0 on load.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np
from flax import nnx

from nuwa_jax.convert import common
from nuwa_jax.models.vae import KLVAE

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
TEMPORAL_PARAMS = ("*temporal_*",)  # our temporal layers: identity init, never imported

# Our path -> diffusers key, beyond the kernel/scale -> weight leaf rename.
RENAMES = (
    (r"\.attentions\.(\d+)\.attn\.", r".attentions.\1."),  # our attention sub-module
    (r"\.to_out\.", ".to_out.0."),  # diffusers' to_out = [Linear, Dropout]
)
_LEGACY_ATTENTION = (
    (r"\.query\.", ".to_q."),
    (r"\.key\.", ".to_k."),
    (r"\.value\.", ".to_v."),
    (r"\.proj_attn\.", ".to_out.0."),
)

# diffusers AutoencoderKL defaults, for keys a config.json leaves out.
_DIFFUSERS_DEFAULTS = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"],
    up_block_types=["UpDecoderBlock2D"],
    block_out_channels=[64],
    layers_per_block=1,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    scaling_factor=0.18215,
    shift_factor=None,
    use_quant_conv=True,
    use_post_quant_conv=True,
    mid_block_add_attention=True,
)


def config_from_diffusers(
    diffusers_config: Mapping[str, Any] | str | os.PathLike,
    base: ml_collections.ConfigDict | None = None,
    *,
    temporal: bool | None = None,
) -> ml_collections.ConfigDict:
    """Our vae config section from a diffusers AutoencoderKL config (dict or config.json).

    Architecture fields come from the diffusers config; temporal fields from `base` (our
    section, default: the 'tiny' preset's), `temporal` overriding base.temporal.
    Unsupported architectures (other block types or activations) raise, naming the key.
    """
    from configs.common import vae_config

    source = "diffusers config"
    if not isinstance(diffusers_config, Mapping):
        source = os.fspath(diffusers_config)
        try:
            with open(source) as f:
                diffusers_config = json.load(f)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"no diffusers config at {source}") from e
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}: not valid JSON: {e}") from e
    d = {**_DIFFUSERS_DEFAULTS, **dict(diffusers_config)}
    cls = d.get("_class_name", "AutoencoderKL")
    if cls != "AutoencoderKL":
        raise ValueError(f"{source}: _class_name {cls!r} is not 'AutoencoderKL'")
    n = len(d["block_out_channels"])
    for key, want in (("down_block_types", "DownEncoderBlock2D"),
                      ("up_block_types", "UpDecoderBlock2D")):  # fmt: skip
        if list(d[key]) != [want] * n:
            raise ValueError(f"{source}: {key}={d[key]!r}; only {n} x {want!r} is supported")
    if d["act_fn"] != "silu":
        raise ValueError(f"{source}: act_fn={d['act_fn']!r}; only 'silu' is supported")
    config = (base if base is not None else vae_config("tiny")).copy_and_resolve_references()
    config.in_channels = int(d["in_channels"])
    config.out_channels = int(d["out_channels"])
    config.block_out_channels = tuple(int(w) for w in d["block_out_channels"])
    config.layers_per_block = int(d["layers_per_block"])
    config.latent_channels = int(d["latent_channels"])
    config.norm_num_groups = int(d["norm_num_groups"])
    config.norm_eps = 1e-6  # fixed in diffusers' Encoder/Decoder
    config.scaling_factor = float(d["scaling_factor"])
    config.shift_factor = float(d["shift_factor"] or 0.0)
    config.use_quant_conv = bool(d["use_quant_conv"])
    config.use_post_quant_conv = bool(d["use_post_quant_conv"])
    config.mid_block_add_attention = bool(d["mid_block_add_attention"])
    if temporal is not None:
        config.temporal = bool(temporal)
    return config


def rename_legacy(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """query/key/value/proj_attn (older diffusers VAE files) -> to_q/to_k/to_v/to_out.0."""
    out = {}
    for key, value in tensors.items():
        if ".attentions." in key:
            for pattern, repl in _LEGACY_ATTENTION:
                key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def import_vae_weights(
    model: KLVAE, tensors: Mapping[str, np.ndarray], *, source: str
) -> list[str]:
    """Assigns diffusers AutoencoderKL tensors into `model` (KL-VAE or T-KLVAE).

    Temporal layers keep their identity init; anything missing, unexpected or mis-shaped
    raises one error naming it and `source`. Returns the parameter paths kept at init.
    """
    return common.import_weights(
        model,
        rename_legacy(tensors),
        source=source,
        renames=RENAMES,
        keep_init=TEMPORAL_PARAMS,
    )


def load_vae(
    directory: str | os.PathLike,
    compute: Any,
    base: ml_collections.ConfigDict | None = None,
    *,
    temporal: bool | None = None,
    seed: int = 0,
) -> KLVAE:
    """A KL-VAE / T-KLVAE with the weights of the diffusers AutoencoderKL in `directory`.

    `base`: our vae section for the temporal fields (see config_from_diffusers);
    `temporal` overrides base.temporal. `seed` initialises what is not imported.
    """
    directory = os.fspath(directory)
    config = config_from_diffusers(os.path.join(directory, CONFIG_FILE), base, temporal=temporal)
    weights = os.path.join(directory, WEIGHTS_FILE)
    tensors = common.load_safetensors(weights)
    model = KLVAE(config, compute, rngs=nnx.Rngs(seed))
    import_vae_weights(model, tensors, source=weights)
    return model
