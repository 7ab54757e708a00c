"""Diffusion core: schedules, parameterisations, loss, DDPM/DDIM steps, sampling loop, CFG.

Steps and schedules are pinned to diffusers' DDPMScheduler / DDIMScheduler (parity).
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import common
from nuwa_jax import diffusion
from nuwa_jax.diffusion import parameterization as param
from nuwa_jax.diffusion import samplers

SD = dict(beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)
SCHEDULES = ["scaled_linear", "linear", "squaredcos_cap_v2"]
PRED = {"epsilon": "epsilon", "v": "v_prediction"}


def _config(**over) -> ml_collections.ConfigDict:
    """tiny's diffusion section; epsilon prediction on SD's schedule (zero terminal SNR off:
    epsilon cannot sample it)."""
    cfg = common.diffusion_config("tiny")
    if over.get("prediction") == "epsilon":
        cfg.zero_terminal_snr = False
    cfg.update(over)
    return cfg


# --------------------------------------------------------------------------- schedules
@pytest.mark.parity
@pytest.mark.parametrize("kind", SCHEDULES)
def test_alphas_cumprod_match_diffusers(kind):
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(beta_schedule=kind, **SD)
    ours = diffusion.NoiseSchedule.create(kind, 1000, 0.00085, 0.012)
    np.testing.assert_allclose(diffusion.beta_schedule(kind, 1000), ref.betas.numpy(), atol=1e-8)
    np.testing.assert_allclose(
        ours.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=2e-6, atol=1e-7
    )


@pytest.mark.parity
def test_zero_terminal_snr_matches_diffusers():
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(beta_schedule="scaled_linear", rescale_betas_zero_snr=True, **SD)
    ours = diffusion.NoiseSchedule.create("scaled_linear", zero_terminal_snr=True)
    np.testing.assert_allclose(
        ours.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=2e-6, atol=2e-7
    )
    assert float(ours.alpha_bar(999)) == 0.0  # the noisiest step keeps no signal
    plain = diffusion.NoiseSchedule.create("scaled_linear")
    assert float(plain.alpha_bar(999)) > 4e-3  # SD's: alpha-bar 0.0047 at t = 999
    np.testing.assert_allclose(ours.alpha_bar(0), plain.alpha_bar(0), rtol=1e-6)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_zero_terminal_snr_samples_with_v_and_refuses_epsilon(sampler):
    cfg = _config(sampler=sampler, prediction="v", num_sampling_steps=5, zero_terminal_snr=True)
    cfg.update(timestep_spacing="trailing", guidance_scale=1.0, set_alpha_to_one=True)
    sched = diffusion.NoiseSchedule.from_config(cfg)
    assert samplers.timesteps(1000, 5, "trailing")[0][0] == 999  # starts at pure noise
    x0 = jax.random.uniform(jax.random.key(3), (2, 3, 4, 4, 2), minval=-1, maxval=1)
    out = diffusion.sample(_oracle(x0, sched, "v"), x0.shape, jax.random.key(4), cfg)
    np.testing.assert_allclose(out, x0, atol=2e-3)
    cfg.prediction = "epsilon"
    with pytest.raises(ValueError, match="zero_terminal_snr.*'v'"):
        diffusion.sample(_oracle(x0, sched, "epsilon"), x0.shape, jax.random.key(4), cfg)


def test_unknown_schedule_is_named():
    with pytest.raises(ValueError, match="'cosine'"):
        diffusion.NoiseSchedule.create("cosine")


@pytest.mark.parity
@pytest.mark.parametrize(
    "spacing,offset,n", [("leading", 1, 50), ("leading", 0, 7), ("trailing", 0, 25)]
)
def test_timesteps_match_diffusers(spacing, offset, n):
    from diffusers import DDIMScheduler

    ref = DDIMScheduler(timestep_spacing=spacing, steps_offset=offset, **SD)
    ref.set_timesteps(n)
    ts, prev = samplers.timesteps(1000, n, spacing, offset)
    np.testing.assert_array_equal(ts, ref.timesteps.numpy())
    np.testing.assert_array_equal(prev[:-1], ts[1:])
    assert prev[-1] == -1


def test_timesteps_bad_count():
    with pytest.raises(ValueError, match="num_sampling_steps=0"):
        samplers.timesteps(1000, 0)


# ---------------------------------------------------------------------- parameterisations
def test_eps_x0_v_identities():
    k1, k2 = jax.random.split(jax.random.key(0))
    x0, eps = jax.random.normal(k1, (3, 5)), jax.random.normal(k2, (3, 5))
    sched = diffusion.NoiseSchedule.create()
    t = jnp.array([0, 500, 999])
    a, s = sched.alpha(t)[:, None], sched.sigma(t)[:, None]
    x_t = diffusion.q_sample(sched, x0, t, eps)
    np.testing.assert_allclose(x_t, a * x0 + s * eps, rtol=1e-6)
    v = param.v_from_eps_x0(eps, x0, a, s)
    np.testing.assert_allclose(v, a * eps - s * x0, rtol=1e-6)
    np.testing.assert_allclose(param.x0_from_v(x_t, v, a, s), x0, atol=1e-5)
    np.testing.assert_allclose(param.eps_from_v(x_t, v, a, s), eps, atol=1e-5)
    np.testing.assert_allclose(param.eps_from_x0(x_t, x0, a, s), eps, atol=1e-4)
    np.testing.assert_allclose(param.x0_from_eps(x_t[1:], eps[1:], a[1:], s[1:]), x0[1:], atol=1e-4)
    for pred, want in (("epsilon", eps), ("v", v)):
        np.testing.assert_allclose(param.target(pred, x0, eps, a, s), want, rtol=1e-6)
        got_x0, got_eps = param.predict_x0_eps(pred, want, x_t, a, s)
        np.testing.assert_allclose(got_x0[1:], x0[1:], atol=1e-4)
        np.testing.assert_allclose(got_eps, eps, atol=1e-4)
    with pytest.raises(ValueError, match="'x0'"):
        param.target("x0", x0, eps, a, s)


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_loss_masked_to_generated_frames(prediction):
    sched = diffusion.NoiseSchedule.create()
    b, frames, shape = 2, 4, (3, 3, 2)
    keys = jax.random.split(jax.random.key(1), 3)
    x0 = jax.random.normal(keys[0], (b, frames) + shape)
    noise = jax.random.normal(keys[1], x0.shape)
    t = jnp.array([10, 700])
    a = sched.alpha(t)[:, None, None, None, None]
    s = sched.sigma(t)[:, None, None, None, None]
    tgt = param.target(prediction, x0, noise, a, s)
    # Perfect on the generated frames, wrong by 1 on known frames: the loss must be 0.
    mask = jnp.array([[0, 1, 1, 0], [0, 1, 1, 1]], jnp.float32)
    out = tgt + (1 - mask)[:, :, None, None, None]
    terms = diffusion.denoising_loss(out, x0, noise, t, mask, schedule=sched, prediction=prediction)
    assert float(terms.loss) == pytest.approx(0.0, abs=1e-10)
    assert float(terms.x0_mse) == pytest.approx(0.0, abs=1e-8)
    assert float(terms.generated_fraction) == pytest.approx(5 / 8)
    # Wrong by 2 on one generated frame of example 1: MSE = 4 * (1 frame) / (3 frames).
    out = tgt.at[1, 3].add(2.0)
    terms = diffusion.denoising_loss(out, x0, noise, t, mask, schedule=sched, prediction=prediction)
    np.testing.assert_allclose(terms.per_example, [0.0, 4 / 3], rtol=1e-5)
    np.testing.assert_allclose(terms.loss, 4 / 5, rtol=1e-5)  # 1 of 5 generated frames
    full = diffusion.denoising_loss(out, x0, noise, t, schedule=sched, prediction=prediction)
    np.testing.assert_allclose(full.loss, 4 / 8, rtol=1e-5)
    with pytest.raises(ValueError, match="frame_mask"):
        diffusion.denoising_loss(out, x0, noise, t, mask[:, :3], schedule=sched)


# ------------------------------------------------------------------------------- steps
def _step_inputs(seed=0):
    g = np.random.default_rng(seed)
    model_out = g.standard_normal((2, 3, 4, 4)).astype(np.float32)
    sample = g.standard_normal((2, 3, 4, 4)).astype(np.float32)
    return model_out, sample


@pytest.mark.parity
@pytest.mark.parametrize("prediction", ["epsilon", "v"])
@pytest.mark.parametrize("num_steps,clip", [(None, False), (20, True)])
def test_ddpm_step_matches_diffusers(prediction, num_steps, clip):
    import torch
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(
        beta_schedule="scaled_linear",
        prediction_type=PRED[prediction],
        clip_sample=clip,
        variance_type="fixed_small",
        steps_offset=1,
        **SD,
    )
    sched = diffusion.NoiseSchedule.create("scaled_linear")
    if num_steps:
        ref.set_timesteps(num_steps)
        ts, prevs = samplers.timesteps(1000, num_steps, "leading", 1)
        np.testing.assert_array_equal(ts, ref.timesteps.numpy())
    else:
        ts = np.arange(999, -1, -1)
        prevs = ts - 1
    model_out, x = _step_inputs()
    for i in (0, len(ts) // 2, len(ts) - 1):  # start, middle, the last step (no noise)
        t, t_prev = int(ts[i]), int(prevs[i])
        gen = torch.Generator().manual_seed(i)
        want = ref.step(torch.from_numpy(model_out), t, torch.from_numpy(x), generator=gen)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(i)).numpy()
        got, x0 = diffusion.ddpm_step(
            sched, model_out, t, t_prev, x, noise, prediction=prediction, clip_sample=clip
        )
        np.testing.assert_allclose(x0, want.pred_original_sample.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got, want.prev_sample.numpy(), rtol=1e-4, atol=1e-5)
        # The variance alone, against diffusers' own.
        _, _, var = samplers.ddpm_posterior(sched, jnp.int32(t), jnp.int32(t_prev))
        ref_var = ref._get_variance(t).numpy()
        np.testing.assert_allclose(var, ref_var, rtol=1e-4, atol=1e-12)


@pytest.mark.parity
@pytest.mark.parametrize("prediction", ["epsilon", "v"])
@pytest.mark.parametrize("eta,alpha_one,clip", [(0.0, False, False), (0.7, True, True)])
def test_ddim_step_matches_diffusers(prediction, eta, alpha_one, clip):
    import torch
    from diffusers import DDIMScheduler

    ref = DDIMScheduler(
        beta_schedule="scaled_linear",
        prediction_type=PRED[prediction],
        clip_sample=clip,
        set_alpha_to_one=alpha_one,
        steps_offset=1,
        **SD,
    )
    ref.set_timesteps(25)
    sched = diffusion.NoiseSchedule.create("scaled_linear", set_alpha_to_one=alpha_one)
    ts, prevs = samplers.timesteps(1000, 25, "leading", 1)
    model_out, x = _step_inputs(1)
    noise = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)
    for i in (0, 12, 24):
        t, t_prev = int(ts[i]), int(prevs[i])
        want = ref.step(
            torch.from_numpy(model_out),
            t,
            torch.from_numpy(x),
            eta=eta,
            variance_noise=torch.from_numpy(noise) if eta > 0 else None,
        )
        got, x0 = diffusion.ddim_step(
            sched, model_out, t, t_prev, x, noise, prediction=prediction, eta=eta, clip_sample=clip
        )
        np.testing.assert_allclose(x0, want.pred_original_sample.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got, want.prev_sample.numpy(), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------ sampling loop
def _oracle(x0_true, sched, prediction):
    """A "model" that knows x0: returns the true eps (or v) for any x_t."""

    def model_fn(x_t, t, cond, known):
        del cond, known
        a = sched.alpha(t)[:, None, None, None, None]
        s = sched.sigma(t)[:, None, None, None, None]
        eps = param.eps_from_x0(x_t, x0_true, a, s)
        return eps if prediction == "epsilon" else param.v_from_eps_x0(eps, x0_true, a, s)

    return model_fn


@pytest.mark.parametrize(
    "sampler,prediction,steps,eta",
    [("ddpm", "epsilon", 10, 0.0), ("ddim", "v", 5, 0.0), ("ddim", "epsilon", 8, 1.0)],
)
def test_sampling_recovers_x0_with_oracle(sampler, prediction, steps, eta):
    cfg = _config(sampler=sampler, prediction=prediction, num_sampling_steps=steps, eta=eta)
    cfg.guidance_scale = 1.0
    cfg.set_alpha_to_one = True  # SD's False ends DDIM at alpha-bar_0 < 1: a little noise left
    sched = diffusion.NoiseSchedule.from_config(cfg)
    x0 = jax.random.uniform(jax.random.key(3), (2, 3, 4, 4, 2), minval=-1, maxval=1)
    run = jax.jit(lambda key: diffusion.sample(_oracle(x0, sched, prediction), x0.shape, key, cfg))
    out = run(jax.random.key(4))
    np.testing.assert_allclose(out, x0, atol=2e-3)


def test_replace_known_keeps_known_frames_and_passes_them():
    cfg = _config(sampler="ddim", num_sampling_steps=4, guidance_scale=1.0)
    shape = (2, 4, 2, 2, 3)
    latents = jax.random.normal(jax.random.key(5), shape)
    mask = jnp.array([[1, 0, 0, 1], [1, 0, 0, 0]], jnp.float32)
    known = diffusion.KnownFrames(latents, mask)
    seen = []

    def model_fn(x_t, t, cond, known_in):
        seen.append(known_in)
        # The known frames are in x_t clean at every step (replace_known).
        m = known_in.mask[:, :, None, None, None]
        assert_close = jnp.max(jnp.abs(m * (x_t - known_in.latents)))
        return jnp.zeros_like(x_t) + assert_close * 1e6  # blows up if they were not

    out = diffusion.sample(model_fn, shape, jax.random.key(6), cfg, known=known, replace_known=True)
    assert seen and seen[0] is known
    m = mask[:, :, None, None, None]
    np.testing.assert_array_equal(out * m, latents * m)
    assert np.all(np.isfinite(out))
    # Without replacement the known frames are noise-derived, not the latents.
    out2 = diffusion.sample(
        lambda x, t, c, k: jnp.zeros_like(x), shape, jax.random.key(6), cfg, known=known
    )
    assert not np.allclose(out2 * m, latents * m)
    with pytest.raises(ValueError, match="replace_known"):
        diffusion.sample(model_fn, shape, jax.random.key(6), cfg, replace_known=True)


# ----------------------------------------------------------------------------- guidance
def _cond_model(x, t, cond, known):
    """Output depends on cond (per example) so cond and uncond halves differ."""
    del t, known
    return x * cond["scale"][:, None] + cond["shift"][:, None]


def test_cfg_scale_one_is_conditional_and_skips_uncond():
    x = jnp.ones((3, 4))
    cond = {"scale": jnp.array([1.0, 2.0, 3.0]), "shift": jnp.array([0.5, 0.5, 0.5])}
    calls = []

    def counted(x, t, c, k):
        calls.append(x.shape[0])
        return _cond_model(x, t, c, k)

    fn = diffusion.guided(counted, 1.0, None)
    np.testing.assert_array_equal(
        fn(x, jnp.zeros(3, jnp.int32), cond, None), _cond_model(x, 0, cond, None)
    )
    assert calls == [3]


def test_cfg_mixes_in_one_call():
    x = jnp.ones((3, 4))
    t = jnp.zeros(3, jnp.int32)
    cond = {"scale": jnp.array([1.0, 2.0, 3.0]), "shift": jnp.array([0.5, 0.5, 0.5])}
    uncond = {"scale": jnp.array(0.0), "shift": jnp.array(-1.0)}  # broadcast null condition
    calls = []

    def counted(x, t, c, k):
        calls.append(x.shape[0])
        return _cond_model(x, t, c, k)

    out = diffusion.guided(counted, 3.0, uncond)(x, t, cond, None)
    c = _cond_model(x, t, cond, None)
    u = jnp.full_like(x, -1.0)
    np.testing.assert_allclose(out, u + 3.0 * (c - u), rtol=1e-6)
    assert calls == [6]
    with pytest.raises(ValueError, match="guidance_scale=3.0"):
        diffusion.guided(counted, 3.0, None)


def test_sample_with_guidance_runs_jitted():
    cfg = _config(sampler="ddpm", num_sampling_steps=3, guidance_scale=2.0)
    cond = {"scale": jnp.ones(2), "shift": jnp.zeros(2)}
    uncond = {"scale": jnp.array(0.5), "shift": jnp.array(0.0)}
    model = lambda x, t, c, k: 0.1 * x * c["scale"][:, None, None] + c["shift"][:, None, None]
    run = jax.jit(
        lambda key: diffusion.sample(model, (2, 3, 3), key, cfg, cond=cond, uncond=uncond)
    )
    a, b = run(jax.random.key(0)), run(jax.random.key(0))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 3, 3) and np.all(np.isfinite(a))


def test_drop_condition():
    tokens = jnp.arange(1, 1 + 64 * 2 * 3).reshape(64, 2, 3)
    null = jnp.zeros((3,), tokens.dtype)
    out = diffusion.drop_condition(jax.random.key(0), {"tok": tokens}, {"tok": null}, 0.5)["tok"]
    dropped = np.all(np.asarray(out) == 0, axis=(1, 2))
    kept = np.all(np.asarray(out) == np.asarray(tokens), axis=(1, 2))
    assert np.all(dropped | kept) and 10 < dropped.sum() < 54
    none = diffusion.drop_condition(jax.random.key(0), tokens, null, 0.0)
    np.testing.assert_array_equal(none, tokens)
    with pytest.raises(ValueError, match="prompt_dropout"):
        diffusion.drop_condition(jax.random.key(0), tokens, null, 1.5)


def test_config_sections_present():
    for preset in common.PRESETS:
        cfg = common.base(preset)
        assert cfg.diffusion.sampler in samplers.SAMPLERS
        assert cfg.diffusion.prediction in param.PREDICTIONS
        diffusion.NoiseSchedule.from_config(cfg.diffusion)
