"""MarDini: identity attention in planner and generator, shapes, the masked v-loss, CFG null
signal, sharded == unsharded, config sizes and input errors."""

import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import nuwa_jax  # noqa: F401  (flax eager sharding off)
from configs import common
from nuwa_jax import diffusion, parallel, tasks
from nuwa_jax.models import mardini
from nuwa_jax.testing.jit import jit_module

L, HW = 5, 8
KEPT = np.array([True, False, True, False, False])  # frames 0, 2 are [REF]


def _config(attention: str = "T"):
    cfg = common.base("tiny")
    cfg.mardini.attention = attention
    return cfg


def _perturb(model: nnx.Module, seed: int = 0, scale: float = 0.05) -> None:
    """Adds noise to every parameter, so zero-initialised gates and outputs are live."""
    rng = np.random.default_rng(seed)
    for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        v[...] = v[...] + jnp.asarray(scale * rng.standard_normal(v[...].shape), v[...].dtype)


@functools.cache
def _model(attention: str = "T") -> mardini.MarDini:
    """A perturbed tiny MarDini, built once per attention variant (tests only read it)."""
    cfg = _config(attention)
    model = mardini.MarDini(cfg.mardini, cfg.compute, rngs=nnx.Rngs(0))
    _perturb(model)
    return model


@pytest.fixture(scope="module", params=["T", "ST"])
def model(request):
    return _model(request.param)


plan = jit_module(lambda m, lat, kept: m.plan(lat, kept))
denoise = jit_module(lambda m, x, t, sig, kept: m.denoise(x, t, sig, kept))
full = jit_module(lambda m, x, t, lat, kept: (m.plan(lat, kept), m(x, t, lat, kept)))


def _variants(base: jax.Array) -> jax.Array:
    """(L + 1, ...) copies of `base` (one example): copy 0 as is, copy j + 1 with frame j
    replaced by other values."""
    other = jax.random.normal(jax.random.key(9), base.shape[1:], base.dtype)
    out = [base[0]] + [base[0].at[j].set(other[j]) for j in range(L)]
    return jnp.stack(out)


def _changed(out: np.ndarray, frame: int) -> np.ndarray:
    """max |change| of `frame`'s output in each variant (L,) against the base."""
    diff = np.abs(out[1:, frame] - out[:1, frame])
    return diff.reshape(L, -1).max(-1)


def test_planner_identity_attention(model):
    """A [REF] frame's planning signal depends on its own frame only; a masked frame's on
    every kept frame; masked frames' content is never read ([MASK] token)."""
    lat = _variants(jax.random.normal(jax.random.key(0), (1, L, HW, HW, 4)))
    kept = jnp.broadcast_to(KEPT, (L + 1, L))
    sig = np.asarray(plan(model, lat, kept))
    assert sig.shape == (L + 1, L, 4, 64)  # tiny: 8x8 latents / 2 (low res) / 2 (patch) -> 2x2
    for ref in (0, 2):
        change = _changed(sig, ref)
        assert change[ref] > 1e-3, "a kept frame's signal must depend on the frame itself"
        others = [j for j in range(L) if j != ref]
        np.testing.assert_array_equal(change[others], 0.0)
    for masked in (1, 3, 4):
        change = _changed(sig, masked)
        assert change[0] > 1e-3 and change[2] > 1e-3  # reads the kept frames
        np.testing.assert_array_equal(change[[1, 3, 4]], 0.0)  # never the masked ones


def test_generator_identity_attention(model):
    """A [REF] frame's v depends on its own latents and signal only; a [NOISE] frame's
    on every frame (kept or noisy) and every frame's signal."""
    x = _variants(jax.random.normal(jax.random.key(1), (1, L, HW, HW, 4)))
    sig = _variants(jax.random.normal(jax.random.key(2), (1, L, 4, 64)))
    kept = jnp.broadcast_to(KEPT, (L + 1, L))
    t = jnp.full((L + 1,), 300)
    for name, args in (
        ("latents", (x, t, sig[:1].repeat(L + 1, 0))),
        ("signals", (x[:1].repeat(L + 1, 0), t, sig)),
    ):
        v = np.asarray(denoise(model, *args, kept))
        assert v.shape == (L + 1, L, HW, HW, 4)
        for ref in (0, 2):
            change = _changed(v, ref)
            assert change[ref] > 1e-4, (name, ref)
            np.testing.assert_array_equal(change[[j for j in range(L) if j != ref]], 0.0)
        for noisy in (1, 3, 4):
            assert np.all(_changed(v, noisy) > 1e-5), (name, noisy)


def test_mardini_end_to_end_keeps_ref_frames_independent(model):
    """plan -> generator: a kept frame's v ignores every other frame of the clip."""
    lat = _variants(jax.random.normal(jax.random.key(3), (1, L, HW, HW, 4)))
    kept = jnp.broadcast_to(KEPT, (L + 1, L))
    _, v = full(model, lat, jnp.full((L + 1,), 700), lat, kept)
    v = np.asarray(v)
    change = _changed(v, 0)
    assert change[0] > 1e-4
    np.testing.assert_array_equal(change[1:], 0.0)
    assert np.all(_changed(v, 1) > 1e-5)


def test_generator_init_is_zero_and_identity_blocks():
    """adaLN-Zero: at init every residual branch and the output projection are zero."""
    cfg = _config("ST")
    model = mardini.MarDini(cfg.mardini, cfg.compute, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(4), (1, L, HW, HW, 4))
    _, v = full(model, x, jnp.array([10]), x, jnp.asarray(KEPT)[None])
    np.testing.assert_array_equal(np.asarray(v), 0.0)


def test_masked_v_loss_ignores_kept_frames():
    """diffusion.denoising_loss with frame_mask = ~kept: the prediction on kept frames is
    not scored, on generated frames it is."""
    model = _model("T")
    cfg = _config("T")
    cfg.diffusion.prediction = "v"
    schedule = diffusion.NoiseSchedule.from_config(cfg.diffusion)
    kept = jnp.asarray(np.stack([tasks.interpolation(L), tasks.image_to_video(L)]))
    x0 = jax.random.normal(jax.random.key(5), (2, L, HW, HW, 4))
    noise = jax.random.normal(jax.random.key(6), x0.shape)
    t = jnp.array([100, 800])
    x_t = diffusion.KnownFrames(x0, kept).insert(diffusion.q_sample(schedule, x0, t, noise))
    _, v = full(model, x_t, t, x0, kept)
    loss_fn = jax.jit(
        lambda out: (
            diffusion.denoising_loss(
                out, x0, noise, t, ~kept, schedule=schedule, prediction="v"
            ).loss
        )
    )
    loss = lambda out: float(loss_fn(out))
    base = loss(v)
    junk = jax.random.normal(jax.random.key(7), v.shape) * 10
    on_kept = jnp.where(kept[:, :, None, None, None], junk, v)
    assert loss(on_kept) == pytest.approx(base, rel=1e-6, abs=0)
    on_generated = v.at[0, 2].add(1.0)
    assert abs(loss(on_generated) - base) > 1e-3


def test_null_signal_dropout_and_guided_sampling():
    """drop_signal at rate 0 / 1; CFG sampling with the null signal keeps the given frames."""
    model = _model("T")
    cfg = _config("T")
    sig = jax.random.normal(jax.random.key(8), (2, L, 4, 64))
    np.testing.assert_array_equal(model.drop_signal(jax.random.key(0), sig, 0.0), sig)
    dropped = np.asarray(model.drop_signal(jax.random.key(0), sig, 1.0))
    np.testing.assert_array_equal(dropped, np.broadcast_to(model.null_signal[...], sig.shape))
    with pytest.raises(ValueError, match="must be in"):
        model.drop_signal(jax.random.key(0), sig, 1.5)

    kept = jnp.asarray(np.stack([tasks.interpolation(L)] * 2))
    latents = jax.random.normal(jax.random.key(9), (2, L, HW, HW, 4))
    known = diffusion.KnownFrames(latents, kept)
    cfg.diffusion.prediction = "v"
    assert cfg.diffusion.guidance_scale != 1.0

    def generate(m, latents, kept):
        known = diffusion.KnownFrames(latents, kept)
        return diffusion.sample(
            m.sampler_fn(), latents.shape, jax.random.key(1), cfg.diffusion,
            cond=m.plan(latents, kept), uncond=m.null_signal[...], known=known,
            replace_known=True,
        )  # fmt: skip

    out = np.asarray(jit_module(generate)(model, latents, kept))
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[:, [0, -1]], np.asarray(known.latents)[:, [0, -1]])
    assert not np.allclose(out[:, 1:-1], np.asarray(latents)[:, 1:-1])


@pytest.mark.slow(reason="compiles MarDini on 1 and on 8 devices")
def test_sharded_equals_unsharded():
    """data=2, fsdp=2, tensor=2: sharded creation equals eager creation, and the sharded
    planner and generator ('ST' and remat 'dots') give the unsharded outputs."""
    cfg = _config("ST")
    config = copy.deepcopy(cfg)
    config.mesh.ici_fsdp, config.mesh.ici_tensor = 2, 2
    config.compute.remat_policy = "dots"
    mesh, rules = parallel.make_mesh(config.mesh), parallel.logical_rules(config)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    make = lambda r: mardini.MarDini(config.mardini, config.compute, rngs=r)  # noqa: E731
    sharded = parallel.create_sharded_model(make, mesh, rules, 0)
    eager = mardini.MarDini(cfg.mardini, cfg.compute, rngs=nnx.Rngs(0))
    want_init = nnx.to_flat_state(nnx.state(eager, nnx.Param))
    got_init = dict(nnx.to_flat_state(nnx.state(sharded, nnx.Param)))
    for path, v in want_init:
        np.testing.assert_array_equal(np.asarray(got_init[path][...]), np.asarray(v[...]))
    specs = [str(v[...].sharding.spec) for _, v in got_init.items()]
    assert any("tensor" in s for s in specs) and any("fsdp" in s for s in specs)

    _perturb(eager, seed=3)
    graphdef, _ = nnx.split(sharded)
    state = nnx.state(eager)
    sharded = nnx.merge(
        graphdef, jax.device_put(state, parallel.state_shardings(state, mesh, rules))
    )
    x = jax.random.normal(jax.random.key(10), (4, L, HW, HW, 4))
    kept = jnp.asarray(np.stack([tasks.interpolation(L), tasks.image_to_video(L)] * 2))
    t = jnp.array([5, 250, 500, 999])
    want_sig, want_v = full(eager, x, t, x, kept)
    shard = lambda a: parallel.logical_to_sharding(("batch",), rules, mesh, a.shape)
    args = [jax.device_put(a, shard(a)) for a in (x, t, x, kept)]
    with jax.set_mesh(mesh):
        got_sig, got_v = full(sharded, *args)
    np.testing.assert_allclose(np.asarray(got_sig), np.asarray(want_sig), atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(got_v), np.asarray(want_v), atol=2e-5, rtol=1e-5)


def test_identity_attention_mask():
    kept = jnp.array([[True, False]])
    m = np.asarray(mardini.identity_attention_mask(kept, 2))[0, 0]
    want = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]], bool)
    np.testing.assert_array_equal(m, want)


def test_sizes_and_config_errors():
    d = mardini.dims(common.mardini_config("tiny"))
    assert (d.planner_layers, d.planner_hidden, d.generator_layers, d.generator_hidden) == (
        2, 64, 2, 64,
    )  # fmt: skip
    for size, layers_, mlp, frames in (("S", 8, 8192, 9), ("L", 16, 8192, 17)):
        d = mardini.dims(common.mardini_config("flintstones_256", size=size))
        assert (d.planner_layers, d.planner_hidden, d.planner_mlp_dim) == (layers_, 4096, mlp)
        assert (d.generator_layers, d.generator_hidden, d.generator_mlp_dim) == (8, 1024, 4096)
        assert (d.num_frames, d.latent_channels) == (frames, 16)
    cfg = common.mardini_config("tiny")
    cfg.planner_layers = 3  # a non-zero field overrides its size's value
    assert mardini.dims(cfg).planner_layers == 3
    cfg.size = "XL"
    with pytest.raises(ValueError, match="'XL'"):
        mardini.dims(cfg)
    cfg = common.mardini_config("tiny")
    cfg.attention = "spatial"
    with pytest.raises(ValueError, match="'spatial'"):
        mardini.dims(cfg)
    cfg = common.mardini_config("tiny")
    cfg.planner_heads = 3
    with pytest.raises(ValueError, match="planner_hidden=64 does not split into 3"):
        mardini.dims(cfg)
    assert common.base("demo").mardini.size == "demo"


def test_input_errors():
    model = _model("T")
    x = jnp.zeros((1, L, HW, HW, 4))
    with pytest.raises(ValueError, match=r"\(B, L, H, W, 4\)"):
        model.plan(jnp.zeros((1, L, HW, HW, 3)), jnp.asarray(KEPT)[None])
    with pytest.raises(ValueError, match="kept mask"):
        model.plan(x, jnp.asarray(KEPT[:3])[None])
    with pytest.raises(ValueError, match="low_res_factor=2 does not divide"):
        model.plan(jnp.zeros((1, L, 7, 7, 4)), jnp.asarray(KEPT)[None])
    with pytest.raises(ValueError, match="do not fit"):
        model.denoise(x, jnp.zeros((1,), jnp.int32), jnp.zeros((1, L, 64)), jnp.asarray(KEPT)[None])
    with pytest.raises(ValueError, match="planning tokens"):
        model.denoise(
            x, jnp.zeros((1,), jnp.int32), jnp.zeros((1, L, 9, 64)), jnp.asarray(KEPT)[None]
        )


@pytest.mark.parametrize("preset", ["demo", "flintstones_256"])
def test_preset_shapes(preset):
    """Each preset's MarDini traces end to end at its own clip length (nothing allocated)."""
    cfg = common.base(preset)
    d = mardini.dims(cfg.mardini)
    model = nnx.eval_shape(lambda: mardini.MarDini(cfg.mardini, cfg.compute, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    side = 8 if preset == "demo" else 32  # 32 px / f4 VAE; 256 px / f8 VAE
    x = jax.ShapeDtypeStruct((2, d.num_frames, side, side, d.latent_channels), jnp.float32)
    kept = jax.ShapeDtypeStruct((2, d.num_frames), jnp.bool_)
    t = jax.ShapeDtypeStruct((2,), jnp.int32)
    fwd = lambda s, x, t, k: nnx.merge(graphdef, s)(x, t, x, k)
    out = jax.eval_shape(fwd, state, x, t, kept)
    assert out.shape == x.shape
