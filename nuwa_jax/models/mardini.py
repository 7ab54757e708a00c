"""MarDini: a heavy low-resolution planner (MAR) and a light high-resolution diffusion generator.

Latents are (B, L, H, W, C) channels-last; `kept` is a (B, L) bool mask, True where a frame
is given ([REF]) and False where it is generated ([NOISE]) (nuwa_jax.tasks makes these
masks; the diffusion loss's `frame_mask` is `~kept`).

Planner (masked auto-regression, Llama-style), on low-resolution latents of ALL frames:

    low = avg_pool(latents, low_res_factor)            (or a given low-res input)
    tokens = patch_embed(patchify(low)), [MASK] token for every generated frame
    per block: x = x + attn(rms_norm(x)); x = x + swiglu(rms_norm(x))
        attention over every token of the clip (full spatio-temporal), LayerNorm on q and
        k per head (QK-norm), rotary positions in three head-dim sections: frame index,
        patch row, patch column (our choice for the temporal position: a third RoPE
        section, so the planner has no learned position table and takes any L)
    signals = proj_out(rms_norm(x))  ->  (B, L, N_low, C_low), one planning signal per frame

Generator (DiT, adaLN-Zero), on high-resolution latents:

    tokens = patch_embed(patchify(x)) + type_embed[REF or NOISE] + fixed sin-cos positions
        (2-D within a frame plus the frame index); x holds the clean latents of the kept
        frames and the noisy latents of the others (diffusion.KnownFrames.insert)
    c = silu(TimestepEmbedding(t)) per frame; s = signal_mlp(signals), upsampled (nearest)
        from the planning grid to the generator's token grid
    per block, with (shift, scale, gate) triples from a zero-initialised Dense of c:
        x = x + g1 * attn(norm(x) * (1 + scale1 + signal_scale(s)) + shift1)
            'ST': attention over every token of the clip; 'T': within each frame
        'T' only: x = x + gt * temporal_attn(norm(x) * (1 + scale_t) + shift_t)
            (over the L frames of each token position)
        x = x + cross_attn(norm(x), signals of the same frame)   (zero-init output)
        x = x + g2 * mlp(norm(x) * (1 + scale2) + shift2)
    v = unpatchify(proj_out(norm(x) * (1 + scale) + shift))   (zero-init: v = 0 at init)

The planning signal thus enters twice, as the paper says: an MLP scale branch (signal_scale,
zero-initialised, added to the adaptive norm's scale) and cross-attention. Every residual
branch starts at zero, so the generator is the identity on its tokens at init (adaLN-Zero).

Identity attention (planner, generator 'ST' and the generator's temporal attention): a
[REF] token attends only to the tokens of its own frame, a [NOISE] token to everything, so
a kept frame's outputs depend on that frame alone (`identity_attention_mask`, a boolean
mask that layers.dot_product_attention takes for 'xla' and 'cudnn').

Classifier-free guidance: a learned `null_signal` (C_low,) replaces a whole clip's
planning signals with probability `signal_dropout` in training (`MarDini.drop_signal`).

Training (nuwa_jax.train.curriculum, losses.mardini_loss): v-prediction (mardini.prediction),
the loss masked to the generated frames. The planner's own stage (masked reconstruction)
reads its signals through `reconstruct`: a linear head (signal_dim -> low-res latent
patches, `recon_head`) used by that stage only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from nuwa_jax.diffusion import guidance
from nuwa_jax.diffusion.samplers import KnownFrames
from nuwa_jax.models import layers
from nuwa_jax.models.transformer import LayerNorm

Dtype = Any
GENERATOR_ATTENTION = ("T", "ST")
TIME_FREQ_DIM = 256  # sinusoid width fed to the timestep MLP (DiT's frequency_embedding_size)


# ---------------------------------------------------------------------------------------
# Sizes.
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class MarDiniDims:
    """The widths of a `mardini` config section, zeros filled from MARDINI_SIZES[size]."""

    latent_channels: int
    num_frames: int
    planner_layers: int
    planner_hidden: int
    planner_mlp_dim: int
    planner_heads: int
    generator_layers: int
    generator_hidden: int
    generator_mlp_dim: int
    generator_heads: int
    signal_dim: int


def dims(config: Any) -> MarDiniDims:
    """Resolved widths of a `mardini` config section (configs/common.py:mardini_config)."""
    from configs.common import MARDINI_SIZES

    if config.size not in MARDINI_SIZES:
        raise ValueError(f"mardini.size {config.size!r} is not one of {sorted(MARDINI_SIZES)}")
    table = MARDINI_SIZES[config.size]
    pick = lambda field, default: int(config[field]) or int(default)
    names = ("layers", "hidden", "mlp_dim", "heads")
    planner = {f"planner_{n}": pick(f"planner_{n}", v) for n, v in zip(names, table["planner"])}
    gen = {f"generator_{n}": pick(f"generator_{n}", v) for n, v in zip(names, table["generator"])}
    d = MarDiniDims(
        latent_channels=pick("latent_channels", table["latent_channels"]),
        num_frames=pick("num_frames", table["frames"]),
        signal_dim=pick("signal_dim", gen["generator_hidden"]),
        **planner,
        **gen,
    )
    for prefix in ("planner", "generator"):
        hidden, heads = getattr(d, f"{prefix}_hidden"), getattr(d, f"{prefix}_heads")
        if hidden % heads:
            raise ValueError(f"mardini.{prefix}_hidden={hidden} does not split into {heads} heads")
    if (d.planner_hidden // d.planner_heads) % 2:
        raise ValueError("mardini: the planner's head width must be even (rotary positions)")
    if config.attention not in GENERATOR_ATTENTION:
        raise ValueError(
            f"mardini.attention {config.attention!r} is not one of {GENERATOR_ATTENTION}"
        )
    return d


def _small_init(key: jax.Array, shape: Any, dtype: Dtype = jnp.float32) -> jax.Array:
    """U(+-0.02): learned tokens and embeddings ([MASK], REF/NOISE type, null signal)."""
    return layers.hash_uniform(key, shape, dtype, 0.02)


# ---------------------------------------------------------------------------------------
# Patches, pooling, masks, positions.
# ---------------------------------------------------------------------------------------
def patchify(x: jax.Array, patch: int) -> jax.Array:
    """(B, L, H, W, C) -> (B, L, (H/p)*(W/p), p*p*C), patches in row-major order."""
    b, frames, h, w, c = x.shape
    if h % patch or w % patch:
        raise ValueError(f"mardini: latents {x.shape} do not split into {patch}x{patch} patches")
    x = x.reshape(b, frames, h // patch, patch, w // patch, patch, c)
    x = x.transpose(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, frames, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(tokens: jax.Array, grid: tuple[int, int], patch: int) -> jax.Array:
    """Inverse of `patchify`: (B, L, gh*gw, p*p*C) -> (B, L, gh*p, gw*p, C)."""
    b, frames, _, d = tokens.shape
    gh, gw = grid
    c = d // (patch * patch)
    x = tokens.reshape(b, frames, gh, gw, patch, patch, c).transpose(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, frames, gh * patch, gw * patch, c)


def low_res_latents(latents: jax.Array, factor: int) -> jax.Array:
    """The planner's input: (B, L, H, W, C) average-pooled over `factor` x `factor` pixels."""
    b, frames, h, w, c = latents.shape
    if h % factor or w % factor:
        raise ValueError(f"mardini.low_res_factor={factor} does not divide latents {latents.shape}")
    x = latents.reshape(b, frames, h // factor, factor, w // factor, factor, c)
    return x.astype(jnp.float32).mean((3, 5)).astype(latents.dtype)


def identity_attention_mask(kept: jax.Array, tokens_per_frame: int) -> jax.Array:
    """(B, 1, T, T) bool, T = L * tokens_per_frame (frame-major): True where query may
    attend key. A [REF] query (its frame kept) sees only its own frame; a [NOISE] query
    sees every token."""
    kept = jnp.asarray(kept, bool)
    frames = kept.shape[1]
    frame = jnp.repeat(jnp.arange(frames), tokens_per_frame)
    same = frame[:, None] == frame[None, :]
    ref_query = jnp.repeat(kept, tokens_per_frame, axis=1)
    return (~ref_query[:, :, None] | same[None])[:, None]


def rope_sections(head_dim: int) -> tuple[int, int, int]:
    """Head-dim widths given to (frame, row, column) rotary positions: about a quarter to
    time, the rest split evenly between rows and columns; each even."""
    t = 2 * (head_dim // 8)
    rest = head_dim - t
    row = 2 * (rest // 4)
    return t, row, rest - row


def rope_angles(positions: jax.Array, head_dim: int, theta: float) -> jax.Array:
    """(T, 3) integer (frame, row, column) positions -> (T, head_dim / 2) rotation angles."""
    angles = []
    for axis, width in enumerate(rope_sections(head_dim)):
        if width == 0:
            continue
        freqs = theta ** (-jnp.arange(0, width, 2, dtype=jnp.float32) / width)
        angles.append(positions[:, axis, None].astype(jnp.float32) * freqs)
    return jnp.concatenate(angles, axis=-1)


def apply_rope(x: jax.Array, angles: jax.Array) -> jax.Array:
    """Rotates (B, T, heads, D) by `angles` (T, D/2): pairs (i, i + D/2), float32 math."""
    half = x.shape[-1] // 2
    x32 = x.astype(jnp.float32)
    x1, x2 = x32[..., :half], x32[..., half:]
    cos, sin = jnp.cos(angles)[None, :, None], jnp.sin(angles)[None, :, None]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)


def _token_positions(frames: int, grid: tuple[int, int]) -> jax.Array:
    """(L * gh * gw, 3) (frame, row, column) of frame-major, row-major tokens."""
    f, r, c = jnp.meshgrid(
        jnp.arange(frames), jnp.arange(grid[0]), jnp.arange(grid[1]), indexing="ij"
    )
    return jnp.stack([f.reshape(-1), r.reshape(-1), c.reshape(-1)], axis=-1)


def _sincos_positions(frames: int, grid: tuple[int, int], dim: int) -> jax.Array:
    """(L, gh*gw, dim) fixed positions: [sin-cos(row), sin-cos(col)] + sin-cos(frame)."""
    half = dim // 2
    rows = layers.timestep_embedding(jnp.arange(grid[0]), half, downscale_freq_shift=0.0)
    cols = layers.timestep_embedding(jnp.arange(grid[1]), dim - half, downscale_freq_shift=0.0)
    spatial = jnp.concatenate(
        [
            jnp.broadcast_to(rows[:, None], (grid[0], grid[1], half)),
            jnp.broadcast_to(cols[None], (grid[0], grid[1], dim - half)),
        ],
        axis=-1,
    ).reshape(grid[0] * grid[1], dim)
    temporal = layers.timestep_embedding(jnp.arange(frames), dim, downscale_freq_shift=0.0)
    return spatial[None] + temporal[:, None]


def _check_inputs(x: jax.Array, kept: jax.Array, channels: int, who: str) -> None:
    if x.ndim != 5 or x.shape[-1] != channels:
        raise ValueError(f"{who}: expected latents (B, L, H, W, {channels}), got {x.shape}")
    if kept.shape != x.shape[:2]:
        raise ValueError(f"{who}: kept mask {kept.shape} does not match latents {x.shape[:2]}")


# ---------------------------------------------------------------------------------------
# Planner.
# ---------------------------------------------------------------------------------------
class RMSNorm(nnx.Module):
    """x / rms(x) * scale over the last axis, statistics in float32. Scale ("norm",)."""

    def __init__(self, features: int, *, eps: float = 1e-6, dtype: Dtype = jnp.float32,
                 param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):  # fmt: skip
        self.features, self.eps, self.dtype = features, eps, jnp.dtype(dtype)
        self.scale = layers.param(rngs, layers.ones_init, (features,), ("norm",), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), -1, keepdims=True) + self.eps)
        return (y * self.scale[...].astype(jnp.float32)).astype(self.dtype)


class SwiGLU(nnx.Module):
    """Llama's feed-forward: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, dim: int, hidden: int, *, dtype: Dtype = jnp.float32,
                 param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):  # fmt: skip
        kw = dict(use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.gate = layers.Dense(dim, hidden, names=("embed", "mlp"), **kw)
        self.up = layers.Dense(dim, hidden, names=("embed", "mlp"), **kw)
        self.down = layers.Dense(hidden, dim, names=("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


class PlannerAttention(nnx.Module):
    """Self-attention with QK-norm (LayerNorm per head on q and k) and 3-section RoPE."""

    def __init__(self, dim: int, heads: int, *, eps: float, attention_impl: str,
                 dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
                 rngs: nnx.Rngs):  # fmt: skip
        if attention_impl not in layers.ATTENTION_IMPLS:
            raise ValueError(
                f"attention impl {attention_impl!r} is not one of {layers.ATTENTION_IMPLS}"
            )
        self.heads, self.head_dim, self.impl = heads, dim // heads, attention_impl
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        qkv = dict(names=("embed", "heads"), use_bias=False, **kw)
        self.to_q = layers.Dense(dim, dim, **qkv)
        self.to_k = layers.Dense(dim, dim, **qkv)
        self.to_v = layers.Dense(dim, dim, **qkv)
        self.q_norm = LayerNorm(self.head_dim, eps=eps, **kw)
        self.k_norm = LayerNorm(self.head_dim, eps=eps, **kw)
        self.to_out = layers.Dense(dim, dim, names=("heads", "embed"), use_bias=False, **kw)

    def __call__(self, x: jax.Array, angles: jax.Array, mask: jax.Array) -> jax.Array:
        split = lambda t: t.reshape(t.shape[:-1] + (self.heads, self.head_dim))
        q = apply_rope(self.q_norm(split(self.to_q(x))), angles)
        k = apply_rope(self.k_norm(split(self.to_k(x))), angles)
        v = split(self.to_v(x))
        out = layers.dot_product_attention(q, k, v, mask=mask, impl=self.impl)
        return self.to_out(out.reshape(out.shape[:-2] + (self.heads * self.head_dim,)))


class PlannerBlock(nnx.Module):
    """x + attn(rms_norm(x)); then x + swiglu(rms_norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, *, eps: float, attention_impl: str,
                 dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
                 rngs: nnx.Rngs):  # fmt: skip
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.attn_norm = RMSNorm(dim, eps=eps, **kw)
        self.attn = PlannerAttention(dim, heads, eps=eps, attention_impl=attention_impl, **kw)
        self.mlp_norm = RMSNorm(dim, eps=eps, **kw)
        self.mlp = SwiGLU(dim, mlp_dim, **kw)

    def __call__(self, x: jax.Array, angles: jax.Array, mask: jax.Array) -> jax.Array:
        x = x + self.attn(self.attn_norm(x), angles, mask)
        return x + self.mlp(self.mlp_norm(x))


class Planner(nnx.Module):
    """MarDini's planning model: low-res latents of all frames -> (B, L, N_low, C_low)."""

    def __init__(self, config: Any, compute: Any, *, rngs: nnx.Rngs):
        d = dims(config)
        dtype, param_dtype = layers.compute_dtypes(compute)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.patch, self.channels = int(config.planner_patch_size), d.latent_channels
        self.hidden, self.heads = d.planner_hidden, d.planner_heads
        self.theta, self.remat_policy = float(config.rope_theta), compute.remat_policy
        self.patch_embed = layers.Dense(
            self.patch * self.patch * self.channels, self.hidden, names=("kernel", "embed"), **kw
        )
        self.mask_token = layers.param(rngs, _small_init, (self.hidden,), ("embed",), param_dtype)
        self.blocks = nnx.List(
            [
                PlannerBlock(
                    self.hidden,
                    self.heads,
                    d.planner_mlp_dim,
                    eps=config.norm_eps,
                    attention_impl=compute.attention_impl,
                    **kw,
                )  # fmt: skip
                for _ in range(d.planner_layers)
            ]
        )
        self.norm = RMSNorm(self.hidden, eps=config.norm_eps, **kw)
        self.proj_out = layers.Dense(self.hidden, d.signal_dim, names=("embed", "mlp"), **kw)
        self.dtype = dtype

    def __call__(self, low_res: jax.Array, kept: jax.Array) -> jax.Array:
        """low_res (B, L, h, w, C), kept (B, L) bool -> planning signals (B, L, N_low, C_low)."""
        _check_inputs(low_res, kept, self.channels, "Planner")
        b, frames, h, w, _ = low_res.shape
        grid = (h // self.patch, w // self.patch)
        tokens = self.patch_embed(patchify(low_res, self.patch))  # (B, L, n, D)
        n = tokens.shape[2]
        mask_token = self.mask_token[...].astype(tokens.dtype)
        tokens = jnp.where(jnp.asarray(kept, bool)[:, :, None, None], tokens, mask_token)
        x = tokens.reshape(b, frames * n, self.hidden)
        angles = rope_angles(_token_positions(frames, grid), self.hidden // self.heads, self.theta)
        mask = identity_attention_mask(kept, n)
        run = layers.maybe_remat(lambda blk, x, a, m: blk(x, a, m), self.remat_policy)
        for block in self.blocks:
            x = run(block, x, angles, mask)
        return self.proj_out(self.norm(x)).reshape(b, frames, n, -1)


# ---------------------------------------------------------------------------------------
# Generator.
# ---------------------------------------------------------------------------------------
def _modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    return x * (1 + scale) + shift


class GeneratorBlock(nnx.Module):
    """One DiT block with adaLN-Zero gates, the signal's scale branch and cross-attention."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, signal_dim: int, *, attention: str,
                 eps: float, attention_impl: str, dtype: Dtype = jnp.float32,
                 param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):  # fmt: skip
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        attn = dict(heads=heads, head_dim=dim // heads, qkv_bias=True,
                    attention_impl=attention_impl, **kw)  # fmt: skip
        self.attention, self.dim = attention, dim
        self.num_mod = 9 if attention == "T" else 6
        self.modulation = layers.Dense(
            dim, self.num_mod * dim, names=("time_embed", "mlp"), zero_init=True, **kw
        )
        self.signal_scale = layers.Dense(dim, dim, names=("embed", "mlp"), zero_init=True, **kw)
        self.norm1 = LayerNorm(dim, eps=eps, **kw)
        self.attn = layers.Attention(dim, **attn)
        if attention == "T":
            self.norm_temporal = LayerNorm(dim, eps=eps, **kw)
            self.temporal_attn = layers.Attention(dim, **attn)
        else:
            self.norm_temporal = self.temporal_attn = None
        self.norm_cross = LayerNorm(dim, eps=eps, **kw)
        self.cross_attn = layers.Attention(dim, context_dim=signal_dim, zero_init_out=True, **attn)
        self.norm2 = LayerNorm(dim, eps=eps, **kw)
        self.fc1 = layers.Dense(dim, mlp_dim, names=("embed", "mlp"), **kw)
        self.fc2 = layers.Dense(mlp_dim, dim, names=("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array, c: jax.Array, s: jax.Array, signals: jax.Array,
                 kept: jax.Array) -> jax.Array:  # fmt: skip
        """x (B, L, N, D); c (B, L, D) time condition; s (B, L, N, D) signal embedding on the
        token grid; signals (B, L, n, C_low); kept (B, L) bool."""
        b, frames, n, dim = x.shape
        mods = jnp.split(self.modulation(c)[:, :, None], self.num_mod, axis=-1)
        shift1, scale1, gate1, shift2, scale2, gate2 = mods[:6]
        h = _modulate(self.norm1(x), shift1, scale1 + self.signal_scale(s))
        if self.attention == "ST":
            mask = identity_attention_mask(kept, n)
            a = self.attn(h.reshape(b, frames * n, dim), mask=mask).reshape(x.shape)
        else:
            a = self.attn(h.reshape(b * frames, n, dim)).reshape(x.shape)
        x = x + gate1 * a
        if self.attention == "T":
            shift_t, scale_t, gate_t = mods[6:]
            h = _modulate(self.norm_temporal(x), shift_t, scale_t)
            seq = h.transpose(0, 2, 1, 3).reshape(b * n, frames, dim)
            mask = identity_attention_mask(jnp.repeat(kept, n, axis=0), 1)
            a = self.temporal_attn(seq, mask=mask).reshape(b, n, frames, dim).transpose(0, 2, 1, 3)
            x = x + gate_t * a
        ctx = signals.reshape((b * frames,) + signals.shape[2:])
        x = x + self.cross_attn(self.norm_cross(x).reshape(b * frames, n, dim), ctx).reshape(
            x.shape
        )
        h = _modulate(self.norm2(x), shift2, scale2)
        return x + gate2 * self.fc2(jax.nn.gelu(self.fc1(h), approximate=True))


class Generator(nnx.Module):
    """MarDini's generation model: v-prediction for every frame of the high-res clip."""

    def __init__(self, config: Any, compute: Any, *, rngs: nnx.Rngs):
        d = dims(config)
        dtype, param_dtype = layers.compute_dtypes(compute)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.patch, self.channels = int(config.generator_patch_size), d.latent_channels
        self.hidden, self.signal_dim = d.generator_hidden, d.signal_dim
        self.remat_policy = compute.remat_policy
        coarse = int(config.low_res_factor) * int(config.planner_patch_size)
        if coarse % self.patch:
            raise ValueError(
                f"mardini: low_res_factor * planner_patch_size = {coarse} must be a multiple "
                f"of generator_patch_size = {self.patch} (planning tokens tile the grid)"
            )
        self.signal_ratio = coarse // self.patch
        patch_dim = self.patch * self.patch * self.channels
        self.patch_embed = layers.Dense(patch_dim, self.hidden, names=("kernel", "embed"), **kw)
        # Row 0: [NOISE] (generated frame), row 1: [REF] (kept frame).
        self.type_embed = layers.param(
            rngs, _small_init, (2, self.hidden), (None, "embed"), param_dtype
        )
        self.time_embed = layers.TimestepEmbedding(TIME_FREQ_DIM, self.hidden, **kw)
        self.signal_in = layers.Dense(self.signal_dim, self.hidden, names=("embed", "mlp"), **kw)
        self.signal_out = layers.Dense(self.hidden, self.hidden, names=("mlp", "embed"), **kw)
        self.blocks = nnx.List(
            [
                GeneratorBlock(
                    self.hidden,
                    d.generator_heads,
                    d.generator_mlp_dim,
                    self.signal_dim,
                    attention=config.attention,
                    eps=config.norm_eps,
                    attention_impl=compute.attention_impl,
                    **kw,
                )  # fmt: skip
                for _ in range(d.generator_layers)
            ]
        )
        self.norm_out = LayerNorm(self.hidden, eps=config.norm_eps, **kw)
        self.final_modulation = layers.Dense(
            self.hidden, 2 * self.hidden, names=("time_embed", "mlp"), zero_init=True, **kw
        )
        self.proj_out = layers.Dense(
            self.hidden, patch_dim, names=("embed", "kernel"), zero_init=True, **kw
        )
        self.dtype = dtype

    def __call__(self, x: jax.Array, t: jax.Array, signals: jax.Array,
                 kept: jax.Array) -> jax.Array:  # fmt: skip
        """x (B, L, H, W, C) (kept frames clean, others noisy); t (B,) or (B, L) timesteps;
        signals (B, L, N_low, C_low); kept (B, L) bool -> v (B, L, H, W, C)."""
        _check_inputs(x, kept, self.channels, "Generator")
        kept = jnp.asarray(kept, bool)
        b, frames, h, w, _ = x.shape
        grid = (h // self.patch, w // self.patch)
        if (
            signals.ndim != 4
            or signals.shape[:2] != (b, frames)
            or signals.shape[3] != self.signal_dim
        ):
            raise ValueError(
                f"Generator: signals {signals.shape} do not fit (B, L, N_low, {self.signal_dim}) "
                f"for latents {x.shape}"
            )
        patches = patchify(x, self.patch)
        _check_signal_grid(signals.shape[2], self.signal_ratio, grid)
        tokens = self.patch_embed(patches)
        tokens = (
            tokens + self.type_embed[...].astype(tokens.dtype)[kept.astype(jnp.int32)][:, :, None]
        )
        tokens = tokens + _sincos_positions(frames, grid, self.hidden).astype(tokens.dtype)

        t = jnp.asarray(t)
        t = jnp.broadcast_to(t[:, None] if t.ndim == 1 else t, (b, frames))
        temb = layers.timestep_embedding(t, TIME_FREQ_DIM, flip_sin_to_cos=True,
                                         downscale_freq_shift=0.0)  # fmt: skip
        c = jax.nn.silu(self.time_embed(temb.astype(self.dtype)))  # (B, L, D)

        s = self.signal_out(jax.nn.silu(self.signal_in(signals)))  # (B, L, n_low, D)
        s = _upsample_tokens(s, self.signal_ratio, grid)
        signals = signals.astype(self.dtype)
        run = layers.maybe_remat(lambda blk, *a: blk(*a), self.remat_policy)
        y = tokens
        for block in self.blocks:
            y = run(block, y, c, s, signals, kept)
        shift, scale = jnp.split(self.final_modulation(c)[:, :, None], 2, axis=-1)
        out = self.proj_out(_modulate(self.norm_out(y), shift, scale))
        return unpatchify(out, grid, self.patch)


def _check_signal_grid(n_low: int, ratio: int, grid: tuple[int, int]) -> None:
    gh, gw = grid
    if gh % ratio or gw % ratio or n_low != (gh // ratio) * (gw // ratio):
        raise ValueError(
            f"mardini: {n_low} planning tokens per frame are not the {gh}x{gw} generator "
            f"grid coarsened {ratio}x (low_res_factor * planner_patch_size / "
            "generator_patch_size)"
        )


def _upsample_tokens(s: jax.Array, ratio: int, grid: tuple[int, int]) -> jax.Array:
    """(B, L, n_low, D) on the planning grid -> (B, L, gh*gw, D) on the generator's grid by
    nearest-neighbour repetition; the planning grid is (gh / ratio, gw / ratio)."""
    gh, gw = grid
    b, frames, n_low, d = s.shape
    _check_signal_grid(n_low, ratio, grid)
    s = s.reshape(b, frames, gh // ratio, gw // ratio, d)
    s = jnp.repeat(jnp.repeat(s, ratio, axis=2), ratio, axis=3)
    return s.reshape(b, frames, gh * gw, d)


# ---------------------------------------------------------------------------------------
# MarDini.
# ---------------------------------------------------------------------------------------
class MarDini(nnx.Module):
    """Planner + generator + the learned null planning signal for classifier-free guidance.

    The planner's input is the high-res latents average-pooled by `low_res_factor`, unless
    a low-res input is given (e.g. latents of frames downscaled in pixel space).
    """

    def __init__(self, config: Any, compute: Any, *, rngs: nnx.Rngs):
        d = dims(config)
        _, param_dtype = layers.compute_dtypes(compute)
        self.planner = Planner(config, compute, rngs=rngs)
        self.generator = Generator(config, compute, rngs=rngs)
        self.null_signal = layers.param(rngs, _small_init, (d.signal_dim,), ("norm",), param_dtype)
        self.low_res_factor = int(config.low_res_factor)
        # The planner stage's masked reconstruction: signal -> a low-res latent patch.
        p = int(config.planner_patch_size)
        self.recon_head = layers.Dense(
            d.signal_dim,
            p * p * d.latent_channels,
            names=("mlp", "kernel"),
            dtype=self.planner.dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def plan(self, latents: jax.Array, kept: jax.Array,
             low_res: jax.Array | None = None) -> jax.Array:  # fmt: skip
        """Planning signals (B, L, N_low, C_low) from the clean latents of the kept frames
        (generated frames' content is never read: the planner sees [MASK] there)."""
        if low_res is None:
            low_res = low_res_latents(latents, self.low_res_factor)
        return self.planner(low_res, kept)

    def denoise(self, x: jax.Array, t: jax.Array, signals: jax.Array,
                kept: jax.Array) -> jax.Array:  # fmt: skip
        """The generator's v-prediction for every frame of x (kept frames clean)."""
        return self.generator(x, t, signals, kept)

    def __call__(self, x: jax.Array, t: jax.Array, latents: jax.Array, kept: jax.Array,
                 low_res: jax.Array | None = None) -> jax.Array:  # fmt: skip
        """v-prediction: x (B, L, H, W, C) with the kept frames clean, t (B,), latents the
        clean clip (only its kept frames matter), kept (B, L) bool."""
        return self.denoise(x, t, self.plan(latents, kept, low_res), kept)

    def reconstruct(self, signals: jax.Array, low_res_shape: tuple[int, ...]) -> jax.Array:
        """The planner stage's prediction of the low-res latents (B, L, h, w, C) of every
        frame from its planning signals (B, L, N_low, C_low); `low_res_shape` is (.., h, w, C)
        of the planner's input."""
        h, w = low_res_shape[-3], low_res_shape[-2]
        p = self.planner.patch
        return unpatchify(self.recon_head(signals), (h // p, w // p), p)

    def drop_signal(self, key: jax.Array, signals: jax.Array, rate: float) -> jax.Array:
        """Replaces each example's planning signals by the null signal with prob. `rate`."""
        return guidance.drop_condition(key, signals, self.null_signal[...], rate)

    def sampler_fn(self):
        """model_fn(x, t, signals, known) for diffusion.sample (cond = planning signals,
        uncond = self.null_signal[...], known = the kept frames, replace_known=True)."""

        def model_fn(x: jax.Array, t: jax.Array, signals: jax.Array, known: KnownFrames | None):
            if known is None:
                raise ValueError("MarDini sampling needs the known frames (KnownFrames)")
            return self.denoise(x, t, signals, known.mask.astype(bool))

        return model_fn
