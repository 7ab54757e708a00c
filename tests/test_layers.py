"""Shared layers: identity-initialised temporal layers, attention, parity with diffusers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import nuwa_jax  # noqa: F401  (package config)
from nuwa_jax.convert import common as convert_common
from nuwa_jax.models import layers
from nuwa_jax.testing.jit import jit_module

torch = pytest.importorskip("torch")


fast_jit = jit_module  # cheap XLA compile flags for tests: conftest.py


apply = fast_jit(lambda m, *a: m(*a))


def rand(seed, *shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def t(x):
    return torch.from_numpy(np.asarray(x).copy())


def nchw(x):
    """Channels-last (N, H, W, C) -> torch (N, C, H, W)."""
    return t(np.asarray(x).transpose(0, 3, 1, 2))


def nhwc(y):
    return y.detach().numpy().transpose(0, 2, 3, 1)


def import_from_torch(module, torch_module, **kw):
    """Copies a torch module's weights into ours through convert.common (by name)."""
    tensors = {k: v.detach().numpy() for k, v in torch_module.state_dict().items()}
    return convert_common.import_weights(module, tensors, source="torch module", **kw)


# ---------------------------------------------------------------------------------------
# Temporal layers: identity at init.
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3, 5])
def test_temporal_conv_identity_at_init(k):
    conv = layers.TemporalConv1D(8, k, rngs=nnx.Rngs(0))
    kernel = np.asarray(conv.kernel[...])
    assert kernel.shape == (k, 8, 8)
    assert np.array_equal(kernel[(k - 1) // 2], np.eye(8)) and np.abs(kernel).sum() == 8
    x = rand(0, 2, 5, 3, 3, 8)
    np.testing.assert_array_equal(apply(conv, x), x)


def test_temporal_conv_mixes_neighbouring_frames_only():
    conv = layers.TemporalConv1D(4, 3, rngs=nnx.Rngs(0))
    conv.kernel[...] = rand(1, 3, 4, 4)
    x = rand(2, 1, 6, 2, 2, 4)
    y = apply(conv, x)
    y2 = apply(conv, x.at[:, 0].add(1.0))
    changed = np.abs(np.asarray(y2 - y)).max(axis=(0, 2, 3, 4)) > 1e-6
    assert changed.tolist() == [True, True, False, False, False, False]
    # Matches torch's Conv1d over L (zero 'same' padding), pixel by pixel.
    ref = torch.nn.functional.conv1d(
        t(np.asarray(x)[0, :, 0, 0].T[None]),
        t(np.asarray(conv.kernel[...]).transpose(2, 1, 0)),
        padding=1,
    )
    np.testing.assert_allclose(np.asarray(y)[0, :, 0, 0], ref[0].numpy().T, atol=1e-5)


def test_temporal_attention_identity_at_init_and_mixes_when_trained():
    attn = layers.TemporalAttention(16, heads=2, groups=4, rngs=nnx.Rngs(0))
    assert np.abs(np.asarray(attn.attn.to_out.kernel[...])).max() == 0
    x = rand(3, 2, 4, 3, 3, 16)
    np.testing.assert_array_equal(apply(attn, x), x)
    attn.attn.to_out.kernel[...] = rand(4, 16, 16) * 0.3
    y, y2 = apply(attn, x), apply(attn, x.at[:, 0].add(1.0))
    assert np.abs(np.asarray(y2 - y))[:, 1:].max() > 1e-3  # frame 0 reaches the others
    # Pixels stay independent: changing one pixel changes no other pixel.
    y3 = apply(attn, x.at[:, :, 0, 0].add(1.0))
    diff = np.abs(np.asarray(y3 - y)).max(axis=(0, 1, 4))
    assert diff[0, 0] > 1e-3 and np.delete(diff.ravel(), 0).max() <= 1e-6
    with pytest.raises(ValueError, match="position_embedding"):
        layers.TemporalAttention(16, groups=4, position_embedding="rope", rngs=nnx.Rngs(0))


def test_temporal_resnet_at_init_equals_spatial_per_frame():
    kw = dict(temb_channels=12, groups=4)
    spatial = layers.ResnetBlock(8, 16, **kw, rngs=nnx.Rngs(0))
    temporal = layers.ResnetBlock(8, 16, **kw, temporal=True, rngs=nnx.Rngs(0))
    assert temporal.temporal_conv1 is not None and temporal.temporal_conv2 is not None
    x, temb = rand(5, 2, 3, 6, 6, 8), rand(6, 2, 3, 12)  # per-frame time embedding
    want = apply(spatial, x, temb)
    got = apply(temporal, x, temb)
    np.testing.assert_allclose(got, want, atol=1e-6)
    frame = apply(spatial, x[:, 1], temb[:, 1])  # an image through the same block
    np.testing.assert_allclose(want[:, 1], frame, atol=1e-5)
    # A (B, D) time embedding broadcasts over the frames.
    per_clip = apply(spatial, x, temb[:, 0])
    np.testing.assert_allclose(per_clip, apply(spatial, x, jnp.repeat(temb[:, :1], 3, 1)))


# ---------------------------------------------------------------------------------------
# Parity with torch / diffusers.
# ---------------------------------------------------------------------------------------
@pytest.mark.parity
def test_group_norm_matches_torch_per_frame():
    norm = layers.GroupNorm(4, 16, eps=1e-5, rngs=nnx.Rngs(0))
    norm.scale[...], norm.bias[...] = rand(0, 16), rand(1, 16)
    ref = torch.nn.GroupNorm(4, 16, eps=1e-5)
    import_from_torch(norm, ref)
    x = rand(2, 2, 3, 5, 5, 16) * 3 + 1
    got = apply(norm, x)
    want = nhwc(ref(nchw(np.asarray(x).reshape(6, 5, 5, 16)))).reshape(x.shape)
    np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match="groups"):
        layers.GroupNorm(3, 16, rngs=nnx.Rngs(0))


@pytest.mark.parity
def test_resnet_block_matches_diffusers():
    from diffusers.models.resnet import ResnetBlock2D

    torch.manual_seed(0)
    ref = ResnetBlock2D(in_channels=8, out_channels=16, temb_channels=12, groups=4, eps=1e-6)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    ref.eval()
    ours = layers.ResnetBlock(8, 16, temb_channels=12, groups=4, eps=1e-6, rngs=nnx.Rngs(0))
    import_from_torch(ours, ref)
    x, temb = rand(1, 2, 6, 6, 8), rand(2, 2, 12)
    with torch.no_grad():
        want = nhwc(ref(nchw(x), t(temb)))
    err = np.abs(np.asarray(apply(ours, x, temb)) - want).max()
    print(f"ResnetBlock vs diffusers ResnetBlock2D: max abs err {err:.2e}")
    assert err <= 1e-5


@pytest.mark.parity
def test_down_and_upsample_match_diffusers():
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.upsampling import Upsample2D

    torch.manual_seed(0)
    x = rand(3, 2, 8, 8, 6)
    for padding, ours_padding in ((0, "asymmetric"), (1, 1)):
        ref = Downsample2D(6, use_conv=True, out_channels=10, padding=padding, name="op")
        ours = layers.Downsample2D(6, 10, padding=ours_padding, rngs=nnx.Rngs(0))
        import_from_torch(ours, ref)
        with torch.no_grad():
            want = nhwc(ref(nchw(x)))
        got = apply(ours, x)
        assert got.shape == (2, 4, 4, 10)
        np.testing.assert_allclose(got, want, atol=1e-5)
    ref = Upsample2D(6, use_conv=True, out_channels=10)
    ours = layers.Upsample2D(6, 10, rngs=nnx.Rngs(0))
    import_from_torch(ours, ref)
    with torch.no_grad():
        want = nhwc(ref(nchw(x)))
    np.testing.assert_allclose(apply(ours, x), want, atol=1e-5)
    with pytest.raises(ValueError, match="padding"):
        layers.Downsample2D(6, padding="reflect", rngs=nnx.Rngs(0))


@pytest.mark.parity
@pytest.mark.parametrize("flip,shift,dim", [(False, 1.0, 32), (True, 0.0, 32), (True, 1.0, 33)])
def test_timestep_embedding_matches_diffusers(flip, shift, dim):
    from diffusers.models.embeddings import get_timestep_embedding

    steps = np.array([0, 1, 17, 500, 999])
    want = get_timestep_embedding(
        t(steps), dim, flip_sin_to_cos=flip, downscale_freq_shift=shift
    ).numpy()
    got = layers.timestep_embedding(
        jnp.asarray(steps), dim, flip_sin_to_cos=flip, downscale_freq_shift=shift
    )
    np.testing.assert_allclose(got, want, atol=1e-4)  # fp32 args up to 999 rad
    per_frame = layers.timestep_embedding(jnp.asarray(steps).reshape(5, 1), dim)
    assert per_frame.shape == (5, 1, dim)


@pytest.mark.parity
def test_timestep_mlp_and_cross_attention_match_diffusers():
    from diffusers.models.attention_processor import Attention as RefAttention
    from diffusers.models.embeddings import TimestepEmbedding as RefTimestepEmbedding

    torch.manual_seed(0)
    ref = RefTimestepEmbedding(16, 32)
    ours = layers.TimestepEmbedding(16, 32, rngs=nnx.Rngs(0))
    import_from_torch(ours, ref)
    e = rand(0, 3, 16)
    with torch.no_grad():
        np.testing.assert_allclose(apply(ours, e), ref(t(e)).numpy(), atol=1e-5)

    ref = RefAttention(query_dim=16, cross_attention_dim=24, heads=2, dim_head=8)
    ours = layers.Attention(16, heads=2, head_dim=8, context_dim=24, rngs=nnx.Rngs(0))
    import_from_torch(ours, ref, renames=((r"^to_out\.", "to_out.0."),))
    x, ctx = rand(1, 2, 10, 16), rand(2, 2, 7, 24)
    with torch.no_grad():
        want = ref(t(x), encoder_hidden_states=t(ctx)).numpy()
    np.testing.assert_allclose(apply(ours, x, ctx), want, atol=1e-5)


# ---------------------------------------------------------------------------------------
# Attention kernels.
# ---------------------------------------------------------------------------------------
def naive_attention(q, k, v, mask=None):
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    if mask is not None:
        logits = np.where(np.broadcast_to(mask, logits.shape), logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p = p / p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", p, v)


def test_dot_product_attention_xla_matches_naive_with_mask():
    q, k, v = rand(0, 2, 5, 3, 4), rand(1, 2, 7, 3, 4), rand(2, 2, 7, 3, 4)
    np.testing.assert_allclose(layers.dot_product_attention(q, k, v), naive_attention(q, k, v),
                               atol=1e-5)  # fmt: skip
    rng = np.random.default_rng(3)
    mask = rng.random((2, 3, 5, 7)) > 0.4
    mask[..., 0] = True  # every query sees something
    got = layers.dot_product_attention(q, k, v, mask=jnp.asarray(mask), impl="xla")
    np.testing.assert_allclose(got, naive_attention(q, k, v, mask), atol=1e-5)
    # MarDini identity attention: a (B, 1, T, T) mask, reference tokens see only themselves.
    ref = np.array([True, True, False, False, False])
    ident = np.where(ref[:, None], np.eye(5, dtype=bool), True)[None, None]
    x = rand(4, 1, 5, 2, 4)
    got = layers.dot_product_attention(x, x, x, mask=jnp.asarray(ident))
    np.testing.assert_allclose(got, naive_attention(x, x, x, ident), atol=1e-5)
    np.testing.assert_allclose(got[:, :2], x[:, :2], atol=1e-6)


def test_unknown_attention_impl_is_an_error():
    q = rand(0, 1, 2, 1, 4)
    with pytest.raises(ValueError, match="'flash'"):
        layers.dot_product_attention(q, q, q, impl="flash")
    with pytest.raises(ValueError, match="'flash'"):
        layers.Attention(4, heads=1, head_dim=4, attention_impl="flash", rngs=nnx.Rngs(0))


def test_cudnn_path_falls_back_where_cudnn_refuses_the_shapes():
    """impl='cudnn' takes the XLA path for float32, odd masked lengths (MarDini's temporal
    attention over 13 frames) and head dims cuDNN's flash kernel does not take, so the
    result equals the XLA one (here on CPU, where cuDNN would fail)."""
    sds = lambda t, d, dt: jnp.zeros((1, t, 2, d), dt)  # noqa: E731
    mask = jnp.ones((1, 1, 13, 13), bool)
    assert layers.cudnn_supported(sds(64, 32, jnp.bfloat16), sds(64, 32, jnp.bfloat16), None)
    assert not layers.cudnn_supported(sds(64, 32, jnp.float32), sds(64, 32, jnp.float32), None)
    assert not layers.cudnn_supported(sds(13, 32, jnp.bfloat16), sds(13, 32, jnp.bfloat16), mask)
    assert layers.cudnn_supported(sds(13, 32, jnp.bfloat16), sds(13, 32, jnp.bfloat16), None)
    assert not layers.cudnn_supported(sds(64, 12, jnp.bfloat16), sds(64, 12, jnp.bfloat16), None)
    q, k, v = (rand(i, 1, 13, 2, 8) for i in range(3))
    np.testing.assert_array_equal(
        layers.dot_product_attention(q, k, v, mask=mask, impl="cudnn"),
        layers.dot_product_attention(q, k, v, mask=mask, impl="xla"),
    )


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU")
def test_cudnn_attention_matches_xla():
    q, k, v = (rand(i, 2, 64, 4, 32).astype(jnp.bfloat16) for i in range(3))
    mask = jnp.asarray(np.random.default_rng(0).random((2, 1, 64, 64)) > 0.3).at[..., 0].set(True)
    want = layers.dot_product_attention(q, k, v, mask=mask, impl="xla")
    got = layers.dot_product_attention(q, k, v, mask=mask, impl="cudnn")
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                               atol=2e-2)  # fmt: skip


# ---------------------------------------------------------------------------------------
# Parameters, init, remat.
# ---------------------------------------------------------------------------------------
def test_parameters_carry_logical_names_and_dtypes():
    block = layers.ResnetBlock(
        8, 16, temb_channels=4, groups=4, temporal=True, param_dtype=jnp.bfloat16,
        dtype=jnp.bfloat16, rngs=nnx.Rngs(0),
    )  # fmt: skip
    names = {
        p: v.get_metadata()["out_sharding"] for p, v in convert_common.param_paths(block).items()
    }
    assert names["conv1.kernel"] == ("kernel", "kernel", "conv_in", "conv_out")
    assert names["temporal_conv1.kernel"] == ("kernel", "conv_in", "conv_out")
    assert names["norm1.scale"] == ("norm",)
    assert all(v[...].dtype == jnp.bfloat16 for v in convert_common.param_paths(block).values())
    out = apply(block, rand(0, 1, 2, 4, 4, 8), rand(1, 1, 4))
    assert out.dtype == jnp.bfloat16


def test_init_is_torch_like_and_same_eager_and_traced():
    w = layers.torch_default_init(jax.random.key(0), (3, 3, 64, 32))
    bound = 1 / np.sqrt(3 * 3 * 64)
    assert np.abs(w).max() <= bound * (1 + 1e-6) and np.abs(w).max() > 0.99 * bound
    assert abs(float(w.std()) - bound / np.sqrt(3)) < 0.02 * bound
    assert abs(float(w.mean())) < 0.02 * bound
    other = layers.torch_default_init(jax.random.key(1), (3, 3, 64, 32))
    assert abs(np.corrcoef(np.ravel(w), np.ravel(other))[0, 1]) < 0.05
    eager = layers.Conv2D(4, 6, rngs=nnx.Rngs(7))
    traced = nnx.jit(lambda: layers.Conv2D(4, 6, rngs=nnx.Rngs(7)))()
    np.testing.assert_array_equal(eager.kernel[...], traced.kernel[...])


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_policies_agree(policy):
    block = layers.ResnetBlock(8, 8, temb_channels=4, groups=4, temporal=True, rngs=nnx.Rngs(0))
    x, temb = rand(0, 1, 2, 4, 4, 8), rand(1, 1, 4)

    def grads(remat_policy):
        def fn(m, x, e):
            f = layers.maybe_remat(lambda b, x, e: b(x, e), remat_policy)
            return nnx.grad(lambda b: jnp.sum(f(b, x, e) ** 2))(m)

        return jax.tree.leaves(fast_jit(fn)(block, x, temb))

    for got, want in zip(grads(policy), grads("none"), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="'some'"):
        layers.maybe_remat(lambda b, x: b(x), "some")


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"\(B, L, H, W, 4\)"):
        layers.TemporalConv1D(4, rngs=nnx.Rngs(0))(jnp.zeros((2, 3, 3, 4)))
    with pytest.raises(ValueError, match="Conv2D"):
        layers.Conv2D(3, 4, rngs=nnx.Rngs(0))(jnp.zeros((1, 4, 4, 5)))
    block = layers.ResnetBlock(4, 4, groups=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="temb_channels"):
        block(jnp.zeros((1, 4, 4, 4)), jnp.zeros((1, 3)))


def test_safetensors_roundtrip_and_bfloat16(tmp_path):
    import safetensors.torch

    path = tmp_path / "w.safetensors"
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.float16)}
    convert_common.save_safetensors(arrays, path)
    back = convert_common.load_safetensors(path)
    assert back.keys() == arrays.keys() and np.array_equal(back["a"], arrays["a"])
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temporary left
    safetensors.torch.save_file({"w": torch.arange(4, dtype=torch.bfloat16)}, tmp_path / "bf.st")
    bf = convert_common.load_safetensors(tmp_path / "bf.st")
    np.testing.assert_array_equal(bf["w"].astype(np.float32), [0, 1, 2, 3])
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        convert_common.load_safetensors(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(convert_common.WeightImportError, match="junk.safetensors"):
        convert_common.load_safetensors(tmp_path / "junk.safetensors")
