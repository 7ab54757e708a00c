"""KL-VAE / T-KLVAE: parity with diffusers' AutoencoderKL, identity init, sharding, import."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import nuwa_jax  # noqa: F401  (package config)
from configs import common as configs
from nuwa_jax import parallel
from nuwa_jax.convert import common as convert_common
from nuwa_jax.convert import vae as convert_vae
from nuwa_jax.models import vae as vae_lib
from nuwa_jax.testing.jit import jit_module

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

TINY = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    block_out_channels=(32, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=32,
)


fast_jit = jit_module  # cheap XLA compile flags for tests: conftest.py


def compute():
    return configs.compute_config("tiny")


@pytest.fixture(scope="module")
def diffusers_vae(tmp_path_factory):
    """A tiny random diffusers AutoencoderKL saved as a diffusers directory (safetensors)."""
    torch.manual_seed(0)
    model = diffusers.AutoencoderKL(**TINY).eval()
    with torch.no_grad():  # norms away from (1, 0), so their affine maps are tested too
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    directory = tmp_path_factory.mktemp("vae")
    model.save_pretrained(directory, safe_serialization=True)
    assert (directory / convert_vae.WEIGHTS_FILE).exists()
    return model, directory


def video(key, b=1, frames=2, size=32):
    return jax.random.uniform(jax.random.key(key), (b, frames, size, size, 3), minval=-1, maxval=1)


def to_torch_frames(x):
    """(B, L, H, W, C) -> torch (B*L, C, H, W)."""
    x = np.asarray(x)
    return torch.from_numpy(x.reshape((-1,) + x.shape[2:]).transpose(0, 3, 1, 2).copy())


def from_torch_frames(t, b):
    y = t.detach().numpy().transpose(0, 2, 3, 1)
    return y.reshape((b, -1) + y.shape[1:])


# One compiled function per model structure, shared by the tests below.
encode_decode = fast_jit(lambda m, x, z: (m.encode(x), m.decode(z)))


@pytest.fixture(scope="module")
def klvae(diffusers_vae):
    return convert_vae.load_vae(diffusers_vae[1], compute(), temporal=False)


@pytest.fixture(scope="module")
def tklvae(diffusers_vae):
    return convert_vae.load_vae(diffusers_vae[1], compute(), temporal=True)


@pytest.mark.parity
def test_klvae_matches_diffusers(diffusers_vae, klvae):
    torch_vae, _ = diffusers_vae
    assert not klvae.temporal
    x = video(1, b=2, frames=2)
    with torch.no_grad():
        dist = torch_vae.encode(to_torch_frames(x)).latent_dist
        z = torch.randn_like(dist.mean)
        recon = torch_vae.decode(z).sample
    posterior, ours = encode_decode(klvae, x, jnp.asarray(from_torch_frames(z, 2)))
    err_mean = np.abs(np.asarray(posterior.mean) - from_torch_frames(dist.mean, 2)).max()
    err_logvar = np.abs(np.asarray(posterior.logvar) - from_torch_frames(dist.logvar, 2)).max()
    err_dec = np.abs(np.asarray(ours) - from_torch_frames(recon, 2)).max()
    print(f"parity max abs err: mean {err_mean:.2e} logvar {err_logvar:.2e} decode {err_dec:.2e}")
    assert err_mean <= 1e-4 and err_logvar <= 1e-4 and err_dec <= 1e-4
    assert klvae.scaling_factor == pytest.approx(0.18215)


def test_scaling_helpers(klvae):
    x = video(5, b=1, frames=1, size=8)
    run = fast_jit(lambda m, x: (m.encode(x).mean, m.encode_to_latents(x), m(x, jax.random.key(0))))
    mean, latents, (recon, posterior) = run(klvae, x)
    np.testing.assert_allclose(latents, mean * 0.18215, rtol=1e-6, atol=1e-7)
    assert recon.shape == x.shape and posterior.kl().shape == (1, 1)
    decode = fast_jit(lambda m, z: (m.decode_latents(z), m.decode(z / 0.18215)))
    a, b = decode(klvae, latents)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def perturb_temporal(model, seed=0, scale=0.3):
    """Adds noise to every temporal parameter (numpy, deterministic), shardings kept."""
    rng = np.random.default_rng(seed)
    for path, var in sorted(convert_common.param_paths(model).items()):
        if "temporal_" not in path:
            continue
        old = var[...]
        new = np.asarray(old) + scale * rng.standard_normal(old.shape).astype(old.dtype)
        var[...] = jax.device_put(new, old.sharding)


def test_tklvae_at_init_equals_klvae_per_frame(klvae, tklvae):
    kept = [p for p in convert_common.param_paths(tklvae) if "temporal_" in p]
    assert kept and tklvae.temporal
    assert any("temporal_attentions" in p for p in kept)
    x = video(2, b=2, frames=2)
    z = jax.random.normal(jax.random.key(3), (2, 2, 16, 16, 4))
    post_2d, rec_2d = encode_decode(klvae, x, z)
    post_3d, rec_3d = encode_decode(tklvae, x, z)
    err = max(np.abs(post_2d.mean - post_3d.mean).max(), np.abs(rec_2d - rec_3d).max())
    print(f"T-KLVAE at init vs KL-VAE per frame: max abs err {err:.2e}")
    assert err <= 1e-5

    # At init frames are independent: changing frame 0 leaves frame 1 as it was.
    x2, z2 = x.at[:, 0].set(-x[:, 0]), z.at[:, 0].set(-z[:, 0])
    post_b, rec_b = encode_decode(tklvae, x2, z2)
    assert np.abs(post_b.mean[:, 1] - post_3d.mean[:, 1]).max() <= 1e-6
    assert np.abs(rec_b[:, 1] - rec_3d[:, 1]).max() <= 1e-6
    assert np.abs(rec_b[:, 0] - rec_3d[:, 0]).max() > 1e-3

    # Perturbed (random) temporal weights: frames influence each other, both ways.
    model = nnx.clone(tklvae)
    perturb_temporal(model)
    post_p, rec_p = encode_decode(model, x, z)
    post_pb, rec_pb = encode_decode(model, x2, z2)
    assert np.abs(post_pb.mean[:, 1] - post_p.mean[:, 1]).max() > 1e-3
    assert np.abs(rec_pb[:, 1] - rec_p[:, 1]).max() > 1e-3


@pytest.mark.slow(reason="compiles the T-KLVAE on 1 and on 8 devices")
def test_sharded_tklvae_matches_unsharded():
    cfg = configs.base("tiny")
    cfg.mesh.ici_fsdp, cfg.mesh.ici_tensor = 2, 2
    cfg.vae.block_out_channels = (16, 32)  # every code path, fewer parameters to trace
    mesh, rules = parallel.make_mesh(cfg.mesh), parallel.logical_rules(cfg)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    make = lambda r: vae_lib.TKLVAE(cfg.vae, cfg.compute, rngs=r)  # noqa: E731
    plain = make(nnx.Rngs(3))
    sharded = parallel.create_sharded_model(make, mesh, rules, 3)
    conv = sharded.encoder.down_blocks[1].resnets[0].conv1.kernel[...]
    assert conv.sharding.spec == jax.sharding.PartitionSpec(None, None, "fsdp", "tensor")
    np.testing.assert_array_equal(conv, plain.encoder.down_blocks[1].resnets[0].conv1.kernel[...])
    perturb_temporal(plain, seed=1)
    perturb_temporal(sharded, seed=1)
    x = video(4, b=4, frames=2, size=16)
    z = jax.random.normal(jax.random.key(5), (4, 2, 8, 8, 4))
    post, want = encode_decode(plain, x, z)
    with jax.set_mesh(mesh):
        batch = parallel.logical_to_sharding(("batch",), rules, mesh, x.shape)
        post_s, got = encode_decode(sharded, jax.device_put(x, batch), jax.device_put(z, batch))
    err = max(
        np.abs(np.asarray(got) - np.asarray(want)).max(),
        np.abs(np.asarray(post_s.mean) - np.asarray(post.mean)).max(),
    )
    print(f"sharded vs unsharded T-KLVAE: max abs err {err:.2e}")
    assert err <= 1e-5


def test_import_errors_name_every_bad_key(diffusers_vae, tmp_path):
    _, directory = diffusers_vae
    tensors = convert_common.load_safetensors(directory / convert_vae.WEIGHTS_FILE)
    del tensors["encoder.conv_in.weight"]
    tensors["encoder.extra.weight"] = np.zeros(3, np.float32)
    tensors["decoder.conv_out.bias"] = np.zeros(7, np.float32)
    bad = tmp_path / "bad"
    bad.mkdir()
    convert_common.save_safetensors(tensors, bad / convert_vae.WEIGHTS_FILE)
    (bad / "config.json").write_text((directory / "config.json").read_text())
    with pytest.raises(convert_common.WeightImportError) as info:
        convert_vae.load_vae(bad, compute(), temporal=True)
    msg = str(info.value)
    assert str(bad / convert_vae.WEIGHTS_FILE) in msg
    assert "1 missing, 1 unexpected, 1 mis-shaped" in msg
    assert "encoder.conv_in.weight" in msg
    assert "encoder.extra.weight" in msg
    assert "decoder.conv_out.bias: file (7,)" in msg and "(3,)" in msg


def test_import_is_all_or_nothing_and_explicit(diffusers_vae):
    _, directory = diffusers_vae
    tensors = convert_common.load_safetensors(directory / convert_vae.WEIGHTS_FILE)
    model = vae_lib.TKLVAE(convert_vae.config_from_diffusers(directory / "config.json"),
                           compute(), rngs=nnx.Rngs(0))  # fmt: skip
    before = np.asarray(model.encoder.conv_in.kernel[...])
    broken = dict(tensors)
    broken.pop("decoder.conv_in.bias")
    with pytest.raises(convert_common.WeightImportError):
        convert_vae.import_vae_weights(model, broken, source="broken.safetensors")
    np.testing.assert_array_equal(model.encoder.conv_in.kernel[...], before)
    # Without the explicit keep_init, temporal layers are reported, not skipped silently.
    mapping = convert_common.name_mapping(model, renames=convert_vae.RENAMES)
    with pytest.raises(convert_common.WeightImportError, match="temporal_conv_in"):
        convert_common.assign_weights(model, tensors, mapping, source="x.safetensors")
    kept = convert_vae.import_vae_weights(model, tensors, source="ok")
    assert kept and all("temporal_" in p for p in kept)
    want = tensors["encoder.conv_in.weight"].transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(model.encoder.conv_in.kernel[...], want)


def test_legacy_attention_names_import(diffusers_vae):
    _, directory = diffusers_vae
    tensors = convert_common.load_safetensors(directory / convert_vae.WEIGHTS_FILE)
    legacy = {}
    for k, v in tensors.items():
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"),
                         ("to_out.0", "proj_attn")):  # fmt: skip
            k = k.replace(f".{new}.", f".{old}.")
        legacy[k] = v[..., None, None] if ".query.weight" in k else v  # 1x1-conv layout too
    assert "encoder.mid_block.attentions.0.proj_attn.weight" in legacy
    config = convert_vae.config_from_diffusers(directory / "config.json", temporal=False)
    model = vae_lib.KLVAE(config, compute(), rngs=nnx.Rngs(0))
    convert_vae.import_vae_weights(model, legacy, source="legacy")
    got = model.encoder.mid_block.attentions[0].attn.to_q.kernel[...]
    np.testing.assert_array_equal(got, tensors["encoder.mid_block.attentions.0.to_q.weight"].T)


def test_config_from_diffusers_checks_architecture(tmp_path):
    config = convert_vae.config_from_diffusers(dict(TINY, scaling_factor=0.13025, shift_factor=0.1))
    assert config.block_out_channels == (32, 64) and config.norm_num_groups == 8
    assert config.scaling_factor == pytest.approx(0.13025) and config.shift_factor == 0.1
    with pytest.raises(ValueError, match="down_block_types"):
        convert_vae.config_from_diffusers(dict(TINY, down_block_types=("DownBlock2D",) * 2))
    path = tmp_path / "config.json"
    path.write_text(json.dumps(dict(TINY, act_fn="gelu")))
    with pytest.raises(ValueError, match=f"{path}.*act_fn"):
        convert_vae.config_from_diffusers(path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        convert_vae.load_vae(tmp_path / "nowhere", compute())


def test_posterior():
    mean = np.random.default_rng(0).normal(size=(2, 3, 4, 4, 4)).astype(np.float32)

    @jax.jit
    def stats(moments, wide_moments, key):
        post = vae_lib.DiagonalGaussian.from_moments(moments)
        wide = vae_lib.DiagonalGaussian.from_moments(wide_moments)
        return post.logvar, post.kl(), wide.sample(key)

    moments = np.concatenate([mean, np.full_like(mean, 50.0)], -1)  # logvar clipped to 20
    logvar, _, _ = stats(moments, moments, jax.random.key(0))
    assert float(logvar.max()) == 20.0
    moments = np.concatenate([mean, np.full_like(mean, -1.0)], -1)
    wide = np.concatenate([np.full((400, 1, 4, 4, 4), 0.5), np.full((400, 1, 4, 4, 4), -1.0)], -1)
    _, kl, samples = stats(moments, wide.astype(np.float32), jax.random.key(0))
    want = 0.5 * (mean**2 + np.exp(-1.0) - 1.0 + 1.0).sum(axis=(2, 3, 4))
    np.testing.assert_allclose(kl, want, rtol=1e-5)
    samples = np.asarray(samples)
    assert abs(samples.mean() - 0.5) < 0.02 and abs(samples.std() - np.exp(-0.5)) < 0.02


def test_vae_rejects_bad_input():
    cfg = configs.base("tiny")
    model = vae_lib.KLVAE(cfg.vae, cfg.compute, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"\(B, L, H, W, 3\)"):
        model.encode(jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(ValueError, match="divisible"):
        model.encode(jnp.zeros((1, 1, 30, 30, 3)))
    with pytest.raises(ValueError, match="norm_num_groups"):
        bad = cfg.vae.copy_and_resolve_references()
        bad.block_out_channels = (12, 16)
        vae_lib.KLVAE(bad, cfg.compute, rngs=nnx.Rngs(0))
