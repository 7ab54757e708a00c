"""Shared config sections; the preset files (tiny.py, demo.py, flintstones.py) compose them.

A config is the single source of truth for a run: every CLI loads one through
`ml_collections.config_flags`, so `--config=configs/tiny.py --config.mesh.fsdp=2` works
everywhere. Each section below belongs to one part of the package; the function that
builds it says which. Every field has a default of the right type (or a typed
placeholder), so an override of an unknown key or of the wrong type fails naming the key.

Presets: 'tiny' (CPU tests, seconds), 'demo' (synthetic benchmark, trainable on 2 CPU
cores), 'flintstones_128' / 'flintstones_256' (paper scale).
"""

from __future__ import annotations

import ml_collections

PRESETS = ("tiny", "demo", "flintstones_128", "flintstones_256")


def mesh_config() -> ml_collections.ConfigDict:
    """Device mesh (nuwa_jax.parallel): sizes of `data`, `fsdp`, `tensor`.

    `ici_*` are sizes within a slice, `dcn_*` across slices (multi-slice TPU). One ici
    size and one dcn size may be -1: it fills what the others leave.
    """
    return ml_collections.ConfigDict(
        dict(ici_data=-1, ici_fsdp=1, ici_tensor=1, dcn_data=-1, dcn_fsdp=1, dcn_tensor=1)
    )


def sharding_config() -> ml_collections.ConfigDict:
    """Logical-axis rules (nuwa_jax.parallel): logical name -> mesh axis or axes.

    Models name their parameter and activation axes with the logical names below only;
    which mesh axis shards them is decided here. A dimension that a mesh axis does not
    divide is left replicated (see parallel.logical_to_sharding).
    """
    rules = (
        # Activations.
        ("batch", ("data", "fsdp")),  # training examples
        ("segments", ("data", "fsdp")),  # the segments of one infill level at generation
        ("frames", None),
        ("length", None),  # tokens or pixels of one sequence
        ("act_embed", None),
        ("act_heads", "tensor"),
        # Parameters.
        ("embed", "fsdp"),  # model width (input side of dense layers)
        ("mlp", "tensor"),  # hidden width of feed-forward layers
        ("heads", "tensor"),  # attention heads x head dim (joined)
        ("kv", None),
        ("vocab", "tensor"),
        ("conv_in", "fsdp"),  # input channels of a convolution
        ("conv_out", "tensor"),  # output channels of a convolution
        ("kernel", None),  # spatial or temporal taps of a convolution kernel
        ("norm", None),  # scales and biases of norms
        ("time_embed", None),
    )
    return ml_collections.ConfigDict(dict(logical_axis_rules=rules))


def compute_config(preset: str) -> ml_collections.ConfigDict:
    """Numerics and memory options shared by every model (nuwa_jax.models)."""
    accel = preset.startswith("flintstones")
    return ml_collections.ConfigDict(
        dict(
            param_dtype="float32",
            dtype="bfloat16" if accel else "float32",  # compute dtype
            # Rematerialisation of UNet / transformer blocks: 'none', 'full' or
            # 'dots' (save only matmul outputs without batch dims).
            remat_policy="dots" if accel else "none",
            # 'xla': plain jnp attention, everywhere. 'cudnn': fused flash attention
            # through jax.nn.dot_product_attention where the platform has it.
            attention_impl="xla",
        )
    )


def hierarchy_config(preset: str) -> ml_collections.ConfigDict:
    """Diffusion over Diffusion (nuwa_jax.hierarchy): L frames per call, depth m."""
    frames = {"tiny": 4, "demo": 8}.get(preset, 16)
    depth = {"tiny": 2}.get(preset, 3)
    return ml_collections.ConfigDict(dict(frames_per_call=frames, depth=depth))


def base(preset: str) -> ml_collections.ConfigDict:
    """The full config of a preset, every section filled."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {PRESETS}")
    config = ml_collections.ConfigDict()
    config.preset = preset
    config.seed = 0
    config.mesh = mesh_config()
    config.sharding = sharding_config()
    config.compute = compute_config(preset)
    config.hierarchy = hierarchy_config(preset)
    return config
