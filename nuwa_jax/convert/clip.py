"""Import transformers' CLIPTextModel (a LOCAL directory) into our CLIPTextTransformer.

The directory holds `config.json` and `model.safetensors` (or a sharded
`model.safetensors.index.json`), as `CLIPTextModel.save_pretrained` writes them or as Stable
Diffusion's `text_encoder/` folder ships them. Keys may carry the `text_model.` prefix of
older files and of full CLIPModel checkpoints (whose vision tower and projections are
ignored). Our module paths mirror transformers' names, so the mapping is by name
(nuwa_jax.convert.common): `kernel`/`scale`/`embedding` -> `weight`, dense kernels transposed.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections
from flax import nnx

from nuwa_jax.convert import common
from nuwa_jax.models import text

# Tensors of CLIP checkpoints that are not parameters of the text tower.
IGNORE = (
    "embeddings.position_ids",
    "vision_model.*",
    "visual_projection.*",
    "text_projection.*",
    "logit_scale",
)
_HF_ACTS = tuple(text.ACTIVATIONS)


def read_hf_config(directory: str | os.PathLike) -> dict:
    """The text part of a CLIP config.json (a CLIPTextConfig, or CLIPConfig.text_config)."""
    path = os.path.join(os.fspath(directory), "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no CLIP config.json at {path}")
    cfg = text._read_json(path)
    if "text_config" in cfg:  # a full CLIPModel
        cfg = cfg["text_config"]
    need = (
        "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
        "max_position_embeddings", "vocab_size",
    )  # fmt: skip
    missing = [k for k in need if k not in cfg]
    if missing:
        raise ValueError(f"{path}: missing CLIP text config keys {missing}")
    return cfg


def text_config_from_hf(directory: str | os.PathLike) -> ml_collections.ConfigDict:
    """A `text` config section (kind 'clip') describing the CLIP model in `directory`."""
    cfg = read_hf_config(directory)
    act = cfg.get("hidden_act", "quick_gelu")
    if act not in _HF_ACTS:
        raise ValueError(f"{directory}/config.json: hidden_act {act!r} is not one of {_HF_ACTS}")
    return ml_collections.ConfigDict(
        dict(
            kind="clip",
            clip_dir=os.fspath(directory),
            max_length=int(cfg["max_position_embeddings"]),
            width=int(cfg["hidden_size"]),
            layers=int(cfg["num_hidden_layers"]),
            heads=int(cfg["num_attention_heads"]),
            mlp_dim=int(cfg["intermediate_size"]),
            vocab_size=int(cfg["vocab_size"]),
            hidden_act=act,
            layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-5)),
            eos_token_id=int(cfg.get("eos_token_id", 2)),  # transformers' default is 2
            trainable=False,
        )
    )


def check_config(config: Any, directory: str | os.PathLike) -> None:
    """Raises naming every field where our `text` config disagrees with the checkpoint's."""
    theirs = text_config_from_hf(directory)
    fields = (
        "max_length", "width", "layers", "heads", "mlp_dim", "vocab_size", "hidden_act",
        "layer_norm_eps", "eos_token_id",
    )  # fmt: skip
    bad = [f"text.{f}={config[f]!r} but the checkpoint has {theirs[f]!r}" for f in fields
           if config[f] != theirs[f]]  # fmt: skip
    if bad:
        raise ValueError(
            f"{directory}/config.json does not match the text config: " + "; ".join(bad)
        )


def load_tensors(directory: str | os.PathLike) -> tuple[dict, str]:
    """({key without 'text_model.': array}, source file name) of a CLIP directory."""
    directory = os.fspath(directory)
    single = os.path.join(directory, "model.safetensors")
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(single):
        tensors, source = common.load_safetensors(single), single
    elif os.path.isfile(index):
        shards = sorted(set(text._read_json(index).get("weight_map", {}).values()))
        if not shards:
            raise ValueError(f"{index}: empty weight_map")
        tensors = {}
        for shard in shards:
            tensors.update(common.load_safetensors(os.path.join(directory, shard)))
        source = index
    else:
        raise FileNotFoundError(
            f"no model.safetensors (or model.safetensors.index.json) in {directory!r}"
        )
    prefix = "text_model."
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in tensors.items()}, source


def load_clip_weights(model: nnx.Module, directory: str | os.PathLike) -> nnx.Module:
    """Fills a CLIPTextTransformer (or a TextEncoder of kind 'clip') from `directory`.

    Every parameter must be found with its shape and every checkpoint tensor used (except
    `IGNORE`); otherwise one WeightImportError lists all the faults and the file.
    """
    target = model.encoder if isinstance(model, text.TextEncoder) else model
    if not isinstance(target, text.CLIPTextTransformer):
        raise TypeError(f"load_clip_weights: {type(model).__name__} is not a CLIP text encoder")
    tensors, source = load_tensors(directory)
    common.import_weights(target, tensors, source=source, ignore=IGNORE)
    return model


def load_clip_text_encoder(
    directory: str | os.PathLike,
    compute: Any,
    *,
    tokenizer_dir: str | os.PathLike | None = None,
    seed: int = 0,
) -> tuple[text.TextEncoder, text.CLIPTokenizer]:
    """(TextEncoder, CLIPTokenizer) built from a local CLIP directory's own config.

    The tokenizer files are read from `tokenizer_dir` (default `directory`; Stable
    Diffusion keeps them in a sibling `tokenizer/` folder).
    """
    config = text_config_from_hf(directory)
    encoder = text.TextEncoder(config, compute, rngs=nnx.Rngs(seed))
    load_clip_weights(encoder, directory)
    tok_dir = directory if tokenizer_dir is None else tokenizer_dir
    return encoder, text.CLIPTokenizer(tok_dir, config.max_length)
