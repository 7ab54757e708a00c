"""The conditioning ablation: does a briefly trained local MTD read its given frames?

Usage: --config=configs/conditioning.py:VARIANT[:global] (default 'recipe', the demo's
recipe; ':global' trains the global model instead, level 0, probed by the places its
frames show: nothing is given there but the captions, guidance 2).
Used by benchmarks/conditioning.py (every variant, held-out PSNR with the true ends and
with another clip's ends) and tests/test_conditioning.py (the recipe only).

The setting: a `tiny` MTD (2 scales, 32 / 64 wide) trained as the local model of level 1
of an L = 5, depth-3 hierarchy (clips of 5 frames at stride 4, the first and last given)
on the 32 px latents of the shipped demo T-KLVAE (frozen, from checkpoints/demo), sampled
with 10 trailing DDIM steps and no guidance, so that what is measured is how the model
uses its given frames. The variants differ only in the recipe:

    paper          epsilon prediction, every frame noised, condition by injection only
                   (NUWA-XL as written; leading spacing, what the demo shipped with)
    eps_clean      + given frames clean in training and re-imposed at every step
    v_noised       v-prediction, given frames noised
    v_clean        v-prediction, given frames clean and re-imposed
    v_clean_input  + [x0^c, x0^m] at the UNet's input as well as injected
    input_only     v_clean_input without the injections (input path alone)
    v_clean_input_ztsnr  v_clean_input with a zero-terminal-SNR schedule
    recipe         v_clean with a zero-terminal-SNR schedule: every preset's recipe
"""

from configs import common

VARIANTS = {
    "paper": dict(
        prediction="epsilon", given_frames="noised", condition_input="none", spacing="leading"
    ),
    "eps_clean": dict(prediction="epsilon", given_frames="clean", condition_input="none"),
    "v_noised": dict(prediction="v", given_frames="noised", condition_input="none"),
    "v_clean": dict(prediction="v", given_frames="clean", condition_input="none"),
    "v_clean_input": dict(prediction="v", given_frames="clean", condition_input="concat"),
    "input_only": dict(
        prediction="v", given_frames="clean", condition_input="concat", injection="none"
    ),
    "v_clean_input_ztsnr": dict(
        prediction="v", given_frames="clean", condition_input="concat", zero_terminal_snr=True
    ),
    "recipe": dict(
        prediction="v", given_frames="clean", condition_input="none", zero_terminal_snr=True
    ),
}


def get_config(arg: str | None = None):
    variant, _, level = (arg or "recipe").partition(":")
    if level not in ("", "global"):
        raise ValueError(f"configs/conditioning.py: {arg!r}: the level part must be 'global'")
    if variant not in VARIANTS:
        raise ValueError(f"configs/conditioning.py: unknown variant {variant!r}; {list(VARIANTS)}")
    v = VARIANTS[variant]
    config = common.base("tiny")
    config.vae = common.base("demo").vae  # the shipped demo T-KLVAE: 4 channels, 32 px
    config.hierarchy.update(frames_per_call=5, depth=3)  # strides 16, 4, 1
    config.data.update(resolution=32, batch_size=8)
    config.train.update(
        model="mtd",
        level=1,
        num_steps=600,
        learning_rate=1e-3,
        warmup_steps=50,
        log_every=100,
        checkpoint_every=600,
        sample_every=0,
        ema_decay=0.99,
    )
    config.diffusion.update(
        prediction=v["prediction"],
        given_frames=v["given_frames"],
        zero_terminal_snr=v.get("zero_terminal_snr", False),
        timestep_spacing=v.get("spacing", "trailing"),
        num_sampling_steps=10,
        guidance_scale=1.0,
    )
    config.mtd.condition_input = v["condition_input"]
    config.mtd.injection_blocks = v.get("injection", "down_up")
    if level == "global":
        config.train.level = 0
        config.diffusion.guidance_scale = 2.0
    return config
