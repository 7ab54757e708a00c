"""MTD (NUWA-XL's Mask Temporal Diffusion UNet): diffusers parity, identity at init, condition
injection, temporal mixing, ablation switches, sharding, and weight import errors."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import nuwa_jax  # noqa: F401  (flax eager sharding off)
from configs import common
from nuwa_jax import parallel
from nuwa_jax.convert import unet as convert_unet
from nuwa_jax.convert.common import WeightImportError, load_safetensors
from nuwa_jax.models import mtd

B, L, HW, TOKENS = 2, 3, 8, 5


def _diffusers_unet():
    """A tiny random diffusers UNet2DConditionModel, norms and biases perturbed too."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=HW,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if name.endswith("bias") or ".norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return unet.eval()


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory):
    unet = _diffusers_unet()
    path = tmp_path_factory.mktemp("unet")
    unet.save_pretrained(str(path), safe_serialization=True)
    return unet, path


@pytest.fixture(scope="module")
def cfg(unet_dir):
    """The tiny config with its spatial fields from the diffusers config."""
    _, path = unet_dir
    config = common.base("tiny")
    config.mtd = convert_unet.mtd_config_from_diffusers(convert_unet.read_config(path), config.mtd)
    return config


@pytest.fixture(scope="module")
def imported(unet_dir, cfg):
    """MTD at init with the diffusers UNet's spatial weights imported."""
    _, path = unet_dir
    model = mtd.MTD(cfg.mtd, cfg.compute, rngs=nnx.Rngs(1))
    kept = convert_unet.load_unet(model, path)
    return model, kept


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, L, HW, HW, 4)).astype(np.float32)
    t = np.array([17, 803], np.int32)
    ctx = rng.standard_normal((B, L, TOKENS, 32)).astype(np.float32)
    cond = rng.standard_normal((B, L, HW, HW, 4)).astype(np.float32)
    cond[:, 1:-1] = 0.0
    mask = np.zeros((B, L), np.float32)
    mask[:, [0, -1]] = 1.0
    level = np.array([0, 1], np.int32)
    return x, t, ctx, cond, mask, level


@nnx.jit
def forward(model, x, t, ctx, cond, mask, level):
    return model(x, t, ctx, cond, mask, level)


def _perturb(model, pattern: str, scale: float, seed: int) -> int:
    """Adds noise to every parameter whose path contains `pattern`; returns how many."""
    rng, n = np.random.default_rng(seed), 0
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if pattern in ".".join(str(p) for p in path):
            value = np.asarray(var[...])
            var[...] = jnp.asarray(value + scale * rng.standard_normal(value.shape), value.dtype)
            n += 1
    return n


@pytest.mark.parity
def test_parity_with_diffusers_frame_by_frame(unet_dir, imported, inputs):
    """At init MTD equals the image UNet applied to each frame with that frame's prompt."""
    torch = pytest.importorskip("torch")
    unet, _ = unet_dir
    model, kept = imported
    x, t, ctx, cond, mask, level = inputs
    assert kept and all(any(k in p for k in ("temporal", "injection", "cascade", "level"))
                        for p in kept)  # fmt: skip
    ours = np.asarray(forward(model, x, t, ctx, cond, mask, level))
    with torch.no_grad():
        ref = unet(
            torch.from_numpy(x.reshape(B * L, HW, HW, 4).transpose(0, 3, 1, 2)),
            torch.from_numpy(np.repeat(t, L)),
            encoder_hidden_states=torch.from_numpy(ctx.reshape(B * L, TOKENS, 32)),
        ).sample.numpy()
    ref = ref.transpose(0, 2, 3, 1).reshape(B, L, HW, HW, 4)
    err = float(np.abs(ours - ref).max())
    print(f"MTD vs diffusers UNet2DConditionModel frame by frame: max abs err {err:.3g}")
    assert np.abs(ref).max() > 0.1  # a non-trivial output
    assert err <= 1e-4


def test_init_is_identity_in_time_condition_and_level(imported, inputs):
    """At init: frames do not interact, the condition, mask and level change nothing."""
    model, _ = imported
    x, t, ctx, cond, mask, level = inputs
    base = np.asarray(forward(model, x, t, ctx, cond, mask, level))
    x2 = x.copy()
    x2[:, 0] += 1.0
    out = np.asarray(forward(model, x2, t, ctx, 2.0 * cond + 1.0, 1.0 - mask, 1 - level))
    assert np.abs(out[:, 0] - base[:, 0]).max() > 1e-3
    np.testing.assert_allclose(out[:, 1:], base[:, 1:], atol=1e-5)


def test_perturbed_injection_makes_the_condition_matter(imported, inputs):
    model, _ = imported
    model = nnx.clone(model)
    x, t, ctx, cond, mask, level = inputs
    assert _perturb(model, "injections", 0.05, seed=1) > 0
    base = np.asarray(forward(model, x, t, ctx, cond, mask, level))
    cond2 = cond.copy()
    cond2[:, 0] += 1.0
    moved = np.abs(np.asarray(forward(model, x, t, ctx, cond2, mask, level)) - base)
    assert moved[:, 0].max() > 1e-3
    np.testing.assert_allclose(moved[:, 1:], 0.0, atol=1e-5)  # no temporal mixing yet
    masked = np.asarray(forward(model, x, t, ctx, cond, 1.0 - mask, level))
    assert np.abs(masked - base).max() > 1e-3


def test_perturbed_temporal_layers_mix_frames(imported, inputs):
    model, _ = imported
    model = nnx.clone(model)
    x, t, ctx, cond, mask, level = inputs
    assert _perturb(model, "temporal_conv", 0.05, seed=2) > 0
    assert _perturb(model, "temporal_attentions", 0.05, seed=3) > 0
    base = np.asarray(forward(model, x, t, ctx, cond, mask, level))
    x2 = x.copy()
    x2[:, 0] += 1.0
    out = np.asarray(forward(model, x2, t, ctx, cond, mask, level))
    assert np.abs(out[:, -1] - base[:, -1]).max() > 1e-4  # frame 0 reaches frame L-1


def test_level_embedding_when_perturbed(imported, inputs):
    model, _ = imported
    model = nnx.clone(model)
    x, t, ctx, cond, mask, level = inputs
    assert _perturb(model, "level_embedding", 0.5, seed=4) == 1
    a = np.asarray(forward(model, x, t, ctx, cond, mask, level))
    b = np.asarray(forward(model, x, t, ctx, cond, mask, 1 - level))
    assert np.abs(a - b).max() > 1e-4


def _build(config, **overrides):
    """An MTD built eagerly (tracing a build is quadratic in flax 0.12.8: see the report)."""
    c = copy.deepcopy(config)
    for k, v in overrides.items():
        c.mtd[k] = v
    return mtd.MTD(c.mtd, c.compute, rngs=nnx.Rngs(0))


def _injected_blocks(model) -> set[str]:
    blocks = set()
    for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        p = [str(s) for s in path]
        if "injections" in p:
            i = p.index("injections")
            blocks.add(".".join(p[:i]))
    return blocks


def test_ablation_switches_choose_injection_blocks(cfg):
    full = _build(cfg)
    assert _injected_blocks(full) == {
        "down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1"
    }  # fmt: skip
    up = _build(cfg, injection_blocks="up")
    assert _injected_blocks(up) == {"up_blocks.0", "up_blocks.1"}
    highest = _build(cfg, injection_scales="highest")
    assert _injected_blocks(highest) == {"down_blocks.0", "up_blocks.1"}
    assert len(highest.condition_cascade.convs) == 1 and len(full.condition_cascade.convs) == 2
    none = _build(cfg, injection_blocks="none")
    assert _injected_blocks(none) == set() and none.condition_cascade is None
    counts = [mtd.count_params(m, "injections") for m in (full, up, highest, none)]
    assert counts[0] > counts[1] > 0 and counts[0] > counts[2] > 0 and counts[3] == 0
    # The spatial UNet is the same in every variant.
    spatial = [mtd.count_params(m) - mtd.count_params(m, "injections")
               - mtd.count_params(m, "cascade") for m in (full, up, highest, none)]  # fmt: skip
    assert len(set(spatial)) == 1
    with pytest.raises(ValueError, match="injection_blocks 'sometimes'"):
        _build(cfg, injection_blocks="sometimes")


def test_condition_input_starts_as_the_image_unet_and_carries_the_given_frames(
    unet_dir, cfg, imported, inputs
):
    """mtd.condition_input='concat': SD weights still import (the input conv is kept at
    zero), so at init it equals the paper's MTD; once trained, x0^c and x0^m reach the
    UNet's input at the given frames, and the temporal layers carry them to the others."""
    model = _build(cfg, condition_input="concat")
    kept = convert_unet.load_unet(model, unet_dir[1])
    assert {"conv_in_condition.kernel", "conv_in_condition.bias"} <= set(kept)
    x, t, ctx, cond, mask, level = inputs
    paper = np.asarray(forward(imported[0], x, t, ctx, cond, mask, level))
    base = np.asarray(forward(model, x, t, ctx, cond, mask, level))
    np.testing.assert_allclose(base, paper, atol=1e-5)
    assert _perturb(model, "conv_in_condition", 0.05, seed=5) == 2
    base = np.asarray(forward(model, x, t, ctx, cond, mask, level))
    assert np.abs(base - paper).max() > 1e-3
    cond2 = cond.copy()
    cond2[:, 0] += 1.0
    moved = np.abs(np.asarray(forward(model, x, t, ctx, cond2, mask, level)) - base)
    assert moved[:, 0].max() > 1e-3
    np.testing.assert_allclose(moved[:, 1:], 0.0, atol=1e-5)  # per frame until time mixes
    assert _perturb(model, "temporal_conv", 0.05, seed=6) > 0
    base = np.asarray(forward(model, x, t, ctx, cond, mask, level))
    moved = np.abs(np.asarray(forward(model, x, t, ctx, cond2, mask, level)) - base)
    assert moved[:, 1].max() > 1e-4  # the given first frame reaches its neighbour
    with pytest.raises(ValueError, match="condition_input 'both'"):
        _build(cfg, condition_input="both")


@pytest.mark.slow(reason="compiles the MTD with remat on 1 and on 8 devices")
def test_sharded_with_remat_equals_unsharded(cfg, imported, inputs):
    """data=2, fsdp=2, tensor=2, blocks under nnx.remat('dots'): the unsharded output."""
    config = copy.deepcopy(cfg)
    config.mesh.ici_fsdp, config.mesh.ici_tensor = 2, 2
    config.compute.remat_policy = "dots"  # the flintstones setting
    mesh, rules = parallel.make_mesh(config.mesh), parallel.logical_rules(config)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    model, _ = imported
    model = nnx.clone(model)
    _perturb(model, "temporal", 0.05, seed=5)
    _perturb(model, "injections", 0.05, seed=6)
    # The model's logical-axis metadata gives the shardings (as in
    # parallel.create_sharded_model); the imported, perturbed weights are then placed
    # there, which keeps this test free of a second traced build.
    remat = mtd.MTD(config.mtd, config.compute, rngs=nnx.Rngs(1))
    nnx.update(remat, nnx.state(model, nnx.Param))
    graphdef, state = nnx.split(remat)
    state = jax.device_put(state, parallel.state_shardings(state, mesh, rules))
    sharded = nnx.merge(graphdef, state)
    specs = [v[...].sharding.spec for _, v in nnx.to_flat_state(nnx.state(sharded, nnx.Param))]
    assert any("tensor" in str(s) for s in specs) and any("fsdp" in str(s) for s in specs)
    x, t, ctx, cond, mask, level = inputs
    want = np.asarray(forward(model, x, t, ctx, cond, mask, level))
    shard = lambda a: parallel.logical_to_sharding(("batch",), rules, mesh, a.shape)
    args = [jax.device_put(a, shard(a)) for a in (x, t, ctx, cond, mask, level)]
    with jax.set_mesh(mesh):
        got = np.asarray(forward(sharded, *args))
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="remat policy 'sometimes'"):
        config.compute.remat_policy = "sometimes"
        forward(mtd.MTD(config.mtd, config.compute, rngs=nnx.Rngs(1)), *inputs)


def test_import_errors_name_the_keys(unet_dir, cfg, imported):
    _, path = unet_dir
    tensors = load_safetensors(path / convert_unet.WEIGHTS_NAME)
    model, _ = imported  # all or nothing: a failed import changes no weight
    bad = dict(tensors)
    del bad["mid_block.attentions.0.proj_in.weight"]
    bad["conv_in.weight"] = np.zeros((32, 4, 5, 5), np.float32)
    bad["down_blocks.9.extra.weight"] = np.zeros((1,), np.float32)
    with pytest.raises(WeightImportError) as e:
        convert_unet.import_unet_tensors(model, bad, source="bad.safetensors")
    msg = str(e.value)
    assert "bad.safetensors" in msg
    assert "mid_block.attentions.0.proj_in.weight" in msg
    assert "conv_in.weight" in msg and "(32, 4, 5, 5)" in msg
    assert "down_blocks.9.extra.weight" in msg
    # A config that does not match the checkpoint is refused before any weight is read.
    other = copy.deepcopy(cfg)
    other.mtd.block_out_channels = (32, 32)
    wrong = nnx.eval_shape(lambda: mtd.MTD(other.mtd, other.compute, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="block_out_channels"):
        convert_unet.load_unet(wrong, path)


def test_input_errors(imported, inputs):
    model, _ = imported
    x, t, ctx, cond, mask, level = map(jnp.asarray, inputs)
    with pytest.raises(ValueError, match="prompts must be"):
        model(x, t, ctx[:, 0], cond, mask, level)
    with pytest.raises(ValueError, match="mask x0"):
        model(x, t, ctx, cond, mask[:, :, None], level)
    with pytest.raises(ValueError, match="divisible by 2"):
        model(x[:, :, :7, :7], t, ctx, cond[:, :, :7, :7], mask, level)


@pytest.mark.parametrize("preset", common.PRESETS)
def test_preset_configs_are_consistent(preset):
    config = common.base(preset)
    mtd.check_config(config.mtd)
    sites = mtd.injection_sites(config.mtd)
    assert all(sites.values())  # every preset injects everywhere (MI + SI)
    if preset.startswith("flintstones"):
        assert config.mtd.block_out_channels == (320, 640, 1280, 1280)
        assert config.mtd.cross_attention_dim == 768 and config.mtd.layers_per_block == 2
        assert config.mtd.num_attention_heads == 8 and config.hierarchy.frames_per_call == 16


def test_flintstones_spatial_layers_are_sd1():
    """At SD-1.x scale, the spatial layers have exactly SD-1.x UNet's 859,520,964 parameters."""
    config = common.base("flintstones_128")
    model = nnx.eval_shape(lambda: mtd.MTD(config.mtd, config.compute, rngs=nnx.Rngs(0)))
    kept = sum(
        mtd.count_params(model, k)
        for k in ("temporal_conv", "temporal_attentions", "injections", "cascade")
    )
    assert mtd.count_params(model) - kept == 859_520_964
