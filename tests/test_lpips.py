"""LPIPS (VGG, v0.1) against the `lpips` package, its weight converter, and the VAE loss's
perceptual and adversarial terms in one train step (CPU, 8 simulated devices).

The reference is the real lpips==0.1.4 (requirements-dev-nodeps.txt) with a random VGG16
trunk (pnet_rand=True: nothing downloaded) and the lin weights it ships. Where torchvision
cannot be imported (PyPI's wheels are CUDA builds that do not load against the CPU torch),
a stand-in module gives lpips torchvision's VGG16 `features` layer list; it is removed
from sys.modules right after lpips is imported.
"""

import contextlib
import os
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import common as configs
from nuwa_jax import parallel
from nuwa_jax.convert import common
from nuwa_jax.convert import lpips as convert_lpips
from nuwa_jax.models import discriminator as disc_lib
from nuwa_jax.models import layers
from nuwa_jax.models import lpips as lpips_lib
from nuwa_jax.models.text import make_tokenizer
from nuwa_jax.models.vae import DiagonalGaussian
from nuwa_jax.train import losses
from nuwa_jax.train import state as state_lib
from nuwa_jax.train import trainer as trainer_lib

torch = pytest.importorskip("torch")

# torchvision's VGG16 (cfg 'D'): conv widths, "M" a 2x2 max-pool.
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


@contextlib.contextmanager
def _torchvision_standin():
    """torchvision.models.vgg16(pretrained=False).features, torchvision's exact layer list."""

    def vgg16(pretrained=False, **kwargs):
        assert not pretrained, "nothing is downloaded here"
        layers, cin = [], 3
        for v in VGG16_CFG:
            if v == "M":
                layers.append(torch.nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [torch.nn.Conv2d(cin, v, 3, padding=1), torch.nn.ReLU(inplace=True)]
                cin = v
        net = torch.nn.Module()
        net.features = torch.nn.Sequential(*layers)
        return net

    tv = types.ModuleType("torchvision")
    tv.models = types.ModuleType("torchvision.models")
    tv.models.vgg16 = vgg16
    saved = {k: sys.modules.get(k) for k in ("torchvision", "torchvision.models")}
    sys.modules.update({"torchvision": tv, "torchvision.models": tv.models})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def _import_lpips():
    """The lpips package; through the torchvision stand-in where torchvision cannot load."""
    try:
        import torchvision.models  # noqa: F401
    except Exception:  # not installed, or a CUDA build that does not load
        for k in [k for k in sys.modules if k.split(".")[0] == "torchvision"]:
            del sys.modules[k]
        with _torchvision_standin():
            return pytest.importorskip("lpips")
    return pytest.importorskip("lpips")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(lpips.LPIPS with a random trunk and the package's lin weights, upstream files)."""
    lpips = _import_lpips()
    torch.manual_seed(0)
    model = lpips.LPIPS(net="vgg", version="0.1", pnet_rand=True, verbose=False)
    root = tmp_path_factory.mktemp("lpips")
    full = root / "lpips_state_dict.pth"  # net.slice*, lin*, lins.* duplicates, scaling_layer
    torch.save(model.state_dict(), full)
    tv = {f"features.{k.split('.', 2)[2]}": v.clone()  # torchvision layout
          for k, v in model.state_dict().items() if k.startswith("net.slice")}  # fmt: skip
    tv["classifier.0.weight"] = torch.zeros(4, 8)  # ignored by the converter
    vgg = root / "vgg16_tv.safetensors"
    import safetensors.torch

    safetensors.torch.save_file(tv, vgg)
    lin = os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", "vgg.pth")
    return model, dict(full=str(full), vgg=str(vgg), lin=lin, root=root)


@pytest.mark.parity
def test_lpips_matches_the_lpips_package(reference):
    """Both upstream layouts (the CLI on torchvision + the shipped lin file; a whole LPIPS
    state dict) convert to the same file, and it matches lpips.LPIPS on 24 px images (odd
    sizes after the third pool: torch's floor). Two small images only: full-width VGG16
    convs run slowly under the tests' fast-compile XLA flags."""
    model, files = reference
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 3, 24, 24)).astype(np.float32)
    y = np.clip(x + rng.normal(0, 0.3, x.shape), -1, 1).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x), torch.from_numpy(y)).numpy().reshape(-1)
    out_cli, out_full = files["root"] / "from_cli.safetensors", files["root"] / "full.safetensors"
    info = convert_lpips.main([f"--vgg={files['vgg']}", f"--lin={files['lin']}",
                               f"--out={out_cli}"])  # fmt: skip
    assert info["lin_sha256"] == common.sha256_file(files["lin"]) and info["tensors"] == 31
    convert_lpips.convert(files["full"], None, out_full)
    a, b = common.load_safetensors(out_cli), common.load_safetensors(out_full)
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    net = convert_lpips.load_lpips(out_cli)
    got = np.asarray(jax.jit(lambda p, q: net(p, q))(x.transpose(0, 2, 3, 1),
                                                       y.transpose(0, 2, 3, 1)))  # fmt: skip
    print(f"LPIPS parity: max abs err {np.abs(got - want).max():.2e}, distances {want}")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _upstream_tiny(widths=(4, 4, 8, 8, 8), seed=0):
    """A random LPIPS in the torchvision + lin-file layout (numpy, torch (O, I, kh, kw))."""
    rng = np.random.default_rng(seed)
    vgg, cin = {}, 3
    for (stage, idx), _ in zip(convert_lpips.feature_indices(), lpips_lib.conv_names()):
        cout = widths[stage]
        vgg[f"features.{idx}.weight"] = rng.normal(0, 0.3, (cout, cin, 3, 3)).astype(np.float32)
        vgg[f"features.{idx}.bias"] = rng.normal(0, 0.1, (cout,)).astype(np.float32)
        cin = cout
    lin = {f"lin{k}.model.1.weight": rng.uniform(0, 1, (1, w, 1, 1)).astype(np.float32)
           for k, w in enumerate(widths)}  # fmt: skip
    return vgg, lin


def _conversion_error(tmp_path, vgg, lin) -> str:
    common.save_safetensors(vgg, tmp_path / "vgg.safetensors")
    common.save_safetensors(lin, tmp_path / "lin.safetensors")
    with pytest.raises(common.WeightImportError) as e:
        convert_lpips.convert(tmp_path / "vgg.safetensors", tmp_path / "lin.safetensors",
                              tmp_path / "out.safetensors")  # fmt: skip
    return str(e.value)


def test_converter_names_missing_and_misshaped_key_and_file(tmp_path):
    vgg, lin = _upstream_tiny()
    del vgg["features.7.weight"]
    lin["lin2.model.1.weight"] = lin["lin2.model.1.weight"][:, :3]
    error = _conversion_error(tmp_path, vgg, lin)
    assert "features.7.weight" in error and "vgg.safetensors" in error
    vgg, lin = _upstream_tiny()
    lin["lin2.model.1.weight"] = lin["lin2.model.1.weight"][:, :3]
    error = _conversion_error(tmp_path, vgg, lin)
    assert "lin2.model.1.weight" in error and "lin.safetensors" in error
    assert not (tmp_path / "out.safetensors").exists()
    # Our layout, read back: a mis-shaped key is named with the file.
    _, lin = _upstream_tiny()
    common.save_safetensors(lin, tmp_path / "lin.safetensors")
    convert_lpips.convert(tmp_path / "vgg.safetensors", tmp_path / "lin.safetensors",
                          tmp_path / "ours.safetensors")  # fmt: skip
    net = convert_lpips.load_lpips(tmp_path / "ours.safetensors")
    assert net.net.widths == (4, 4, 8, 8, 8)
    x = np.random.default_rng(1).uniform(-1, 1, (2, 2, 16, 16, 3)).astype(np.float32)
    d = np.asarray(jax.jit(lambda p, q: net(p, q))(x, x[::-1]))
    assert d.shape == (2, 2) and (d > 0).all()  # leading axes kept, frames folded
    np.testing.assert_allclose(d[0], d[1], rtol=1e-6)  # symmetric
    np.testing.assert_allclose(np.asarray(jax.jit(lambda p: net(p, p))(x)), 0.0, atol=1e-7)
    ours = common.load_safetensors(tmp_path / "ours.safetensors")
    ours["lin4.kernel"] = ours["lin4.kernel"][:, :, :5]
    common.save_safetensors(ours, tmp_path / "bad.safetensors")
    with pytest.raises(common.WeightImportError, match=r"(?s)bad\.safetensors.*lin4\.kernel"):
        convert_lpips.load_lpips(tmp_path / "bad.safetensors")


def _vae_config(tmp_path):
    cfg = configs.base("tiny")
    cfg.data.data_dir = str(tmp_path / "data")
    cfg.data.resolution = 16
    cfg.vae.block_out_channels = (8, 8, 8)
    cfg.train.model = "vae"
    cfg.train.num_steps = 10
    cfg.train.warmup_steps = 1
    return cfg


def test_check_config_refuses_perceptual_without_weights(tmp_path):
    cfg = _vae_config(tmp_path)
    trainer_lib.check_config(cfg)  # defaults: no LPIPS, no GAN
    cfg.train.perceptual_weight = 0.1
    with pytest.raises(ValueError, match=r"train\.perceptual_weights"):
        trainer_lib.check_config(cfg)
    cfg.train.perceptual_weights = str(tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match=r"train\.perceptual_weights=.*missing"):
        trainer_lib.check_config(cfg)
    cfg = _vae_config(tmp_path)
    cfg.train.adversarial_weight = 0.1  # 16 px frames: 3 stride-2 layers leave no patch
    assert disc_lib.output_size(16, 3) < 1 <= disc_lib.output_size(16, 2)
    with pytest.raises(ValueError, match=r"train\.discriminator_layers=3"):
        trainer_lib.check_config(cfg)
    cfg.train.discriminator_layers = 1
    trainer_lib.check_config(cfg)


@pytest.mark.slow(reason="compiles the VAE's train step with LPIPS and the GAN")
def test_vae_step_with_lpips_and_gan(tmp_path):
    """perceptual_weight > 0 (a converted random tiny LPIPS) and adversarial_weight > 0
    from step 0: finite losses, every term logged, the discriminator trains, LPIPS not."""
    vgg, lin = _upstream_tiny()
    common.save_safetensors(vgg, tmp_path / "vgg.safetensors")
    common.save_safetensors(lin, tmp_path / "lin.safetensors")
    convert_lpips.convert(tmp_path / "vgg.safetensors", tmp_path / "lin.safetensors",
                          tmp_path / "lpips.safetensors")  # fmt: skip
    cfg = _vae_config(tmp_path)
    cfg.train.perceptual_weight = 1.0
    cfg.train.perceptual_weights = str(tmp_path / "lpips.safetensors")
    cfg.train.adversarial_weight = 0.5
    cfg.train.adversarial_start_step = 0
    cfg.train.discriminator_layers = 1
    cfg.train.discriminator_channels = 8
    trainer_lib.check_config(cfg)
    mesh, rules = parallel.make_mesh(cfg.mesh), parallel.logical_rules(cfg)
    tokenizer = make_tokenizer(cfg.text)
    started = time.perf_counter()
    step, state = trainer_lib.make_train_step(cfg, mesh, rules, tokenizer)
    assert sorted(state.params) == ["discriminator", "vae"]
    frozen = [np.asarray(x) for x in jax.tree.leaves(step.frozen_state)]
    assert len(frozen) == 13 * 2 + 5  # the LPIPS, only: frozen, outside the optimiser
    disc_before = jax.tree.map(np.asarray, state.params["discriminator"])
    batch = trainer_lib.synthetic_batch(cfg, mesh, rules, tokenizer)
    with jax.set_mesh(mesh):
        state, metrics = step(state, batch)
        state, metrics = step(state, batch)
    metrics = jax.device_get(metrics)
    print(f"compile + 2 steps: {time.perf_counter() - started:.1f} s", metrics)
    for name in ("loss", "l1", "kl", "lpips", "g_loss", "d_loss", "grad_norm"):
        assert np.isfinite(metrics[name]), (name, metrics)
    assert metrics["lpips"] > 0 and metrics["adversarial_factor"] == 1.0
    want = metrics["l1"] + cfg.train.kl_weight * metrics["kl"] + metrics["lpips"]
    np.testing.assert_allclose(metrics["loss"], want + 0.5 * metrics["g_loss"], rtol=1e-5)
    disc_after = jax.tree.map(np.asarray, state.params["discriminator"])
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), disc_before, disc_after)
    assert all(v for k, v in jax.tree_util.tree_leaves_with_path(changed) if "kernel" in str(k))
    for a, b in zip(frozen, jax.tree.leaves(step.frozen_state)):
        np.testing.assert_array_equal(a, np.asarray(b))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.ema))


class _ToyVAE(nnx.Module):
    """Stands in for the KLVAE in vae_loss (same call signature): one conv, cheap to compile."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv = layers.Conv2D(3, 5, 3, rngs=rngs)

    def __call__(self, video, rng=None):
        h = self.conv(video)
        posterior = DiagonalGaussian.from_mean_logvar(h[..., 3:4], h[..., 4:5])
        return jnp.tanh(h[..., :3]), posterior


def test_gan_objective_gives_each_network_its_own_gradient():
    """grad(objective) = (grad of the VAE's loss with D fixed, grad of D's hinge loss on the
    fixed reconstruction); before adversarial_start_step D gets none and the VAE only L1 + KL."""
    model = nnx.Dict(
        {"vae": _ToyVAE(nnx.Rngs(0)), "d": disc_lib.PatchDiscriminator(channels=8, n_layers=1,
                                                                       rngs=nnx.Rngs(1))}
    )  # fmt: skip
    graphdef, params, rest = state_lib.split_trainable(dict(model.items()))
    video = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 2, 16, 16, 3)), jnp.float32)
    key = jax.random.key(0)

    def terms(p, factor):
        m = state_lib.merge_trainable(graphdef, p, rest)
        return losses.vae_loss(m["vae"], video, key, 1e-3, discriminator=m["d"],
                               adversarial_weight=0.5, adversarial_factor=factor)  # fmt: skip

    def d_only(p):
        m = state_lib.merge_trainable(graphdef, p, rest)
        recon, _ = m["vae"](video)
        fake = m["d"](jax.lax.stop_gradient(recon))
        return disc_lib.hinge_d_loss(m["d"](video), fake)

    grads = jax.jit(jax.grad(lambda p, f: terms(p, f)[0]))
    vae_only = jax.jit(jax.grad(lambda p, f: terms(p, f)[1]["vae_loss"]))
    d_grads = jax.grad(d_only)(params)["d"]
    assert any(np.any(g) for g in jax.tree.leaves(d_grads))
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)  # noqa: E731
    for factor in (1.0, 0.0):
        got, want_vae = grads(params, factor), vae_only(params, factor)
        want_d = jax.tree.map(lambda g, f=factor: f * g, d_grads)
        jax.tree.map(close, got["vae"], want_vae["vae"])
        jax.tree.map(close, got["d"], want_d)
        assert all(not np.any(g) for g in jax.tree.leaves(want_vae["d"]))  # D fixed in G's term
