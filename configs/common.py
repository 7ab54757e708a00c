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
    frames = {"tiny": 4}.get(preset, 16)  # demo: L = 16, depth 3 -> N = 3376 frames
    depth = {"tiny": 2}.get(preset, 3)
    return ml_collections.ConfigDict(
        dict(
            frames_per_call=frames,
            depth=depth,
            # One MTD per level (the paper), or one local MTD shared by all local levels,
            # told its level by mtd.num_level_embeddings (>= depth - 1).
            share_local_models=preset == "demo",  # demo: half the local weights to ship
            # The model of every local level: 'mtd' (NUWA-XL) or 'mardini' (MarDini's
            # planner + generator, plan then DDIM; needs frames_per_call ==
            # mardini.num_frames). The global level is always the text-conditioned MTD.
            local_backbone="mtd",
        )
    )


def generation_config(preset: str) -> ml_collections.ConfigDict:
    """Generation (nuwa_jax.hierarchy.generator, nuwa_jax.generate).

    The DoD plan has no switch: every video, however short, runs all hierarchy.depth
    levels pruned to num_frames, each model at the stride it was trained for
    (nuwa_jax.hierarchy.plan.generation_plan, docs/generation.md).
    """
    return ml_collections.ConfigDict(
        dict(
            num_frames=ml_collections.config_dict.placeholder(int),  # None: N(depth)
            schedule="dod",  # 'dod' (Diffusion over Diffusion) | 'ar' (the FDM* baseline)
            # Segments one device takes per model call: a level's segments run in chunks of
            # max_segments_per_device x (data x fsdp devices), which bounds memory.
            max_segments_per_device=1,
            ar_context_frames=1,  # 'ar': frames of the previous segment given to the next
            decode_frames=0,  # frames per VAE decode call (0: frames_per_call)
            fps=8.0,
            gif_max_frames=256,
            filmstrip_frames=16,
        )
    )


def mtd_config(preset: str) -> ml_collections.ConfigDict:
    """MTD, NUWA-XL's Mask Temporal Diffusion 3-D UNet (nuwa_jax.models.mtd).

    The spatial layout is diffusers' UNet2DConditionModel (SD-1.x for the flintstones
    presets) so that its weights import (nuwa_jax.convert.unet); every block gains a
    temporal conv after each spatial conv, a temporal attention after each spatial
    transformer and the multi-scale, symmetric condition injection of the paper.
    """
    sd = preset.startswith("flintstones")
    widths = {"tiny": (32, 64), "demo": (40, 80, 80)}.get(preset, (320, 640, 1280, 1280))
    down = ("CrossAttnDownBlock2D",) * (len(widths) - 1) + ("DownBlock2D",)
    up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (len(widths) - 1)
    return ml_collections.ConfigDict(
        dict(
            in_channels=4,  # = VAE latent channels
            out_channels=4,
            block_out_channels=widths,
            down_block_types=down,  # 'CrossAttnDownBlock2D' | 'DownBlock2D'
            up_block_types=up,  # 'CrossAttnUpBlock2D' | 'UpBlock2D'
            layers_per_block=2 if sd else 1,
            # Heads of every attention (diffusers' SD-1.x `attention_head_dim`, which is
            # really the number of heads); head width = block width / heads.
            num_attention_heads=8 if sd else 4,
            cross_attention_dim={"tiny": 32, "demo": 64}.get(preset, 768),  # = text width
            norm_num_groups=32 if sd else 8,
            norm_eps=1e-5,
            use_linear_projection=False,  # proj_in/out of the spatial transformer: conv 1x1
            flip_sin_to_cos=True,  # timestep embedding, diffusers semantics
            freq_shift=0,
            temporal_kernel_size=3,
            # Condition injection: 'down_up' (symmetric, SI), 'up' or 'none';
            # scales 'all' (multi-scale, MI) or 'highest' (latent resolution only).
            injection_blocks="down_up",
            injection_scales="all",
            injection_kernel_size=1 if sd else 3,  # zero-init convs giving (w, b)
            # [x0^c, x0^m] also at the UNet's input (zero-init conv added to conv_in's
            # output): 'concat', or 'none' (the paper: injection only).
            condition_input="none",
            # > 0: an embedding of the hierarchy level added to the time embedding (one
            # local model shared by all local levels).
            num_level_embeddings=0 if sd else 2,
            dropout=0.0,
        )
    )


def diffusion_config(preset: str) -> ml_collections.ConfigDict:
    """Noise schedule, parameterisation, sampler and guidance (nuwa_jax.diffusion).

    The schedule is Stable Diffusion's (scaled_linear 0.00085 .. 0.012, T = 1000,
    steps_offset 1, set_alpha_to_one False) so SD-initialised UNets see the noise levels
    they were trained on. The recipe is measured, not the paper's (docs/models.md,
    "The diffusion recipe"): v-prediction, the given frames clean in training and written
    back at every sampling step, a zero-terminal-SNR schedule and trailing timestep
    spacing (sampling starts at t = T-1, pure noise).
    NUWA-XL as written is prediction='epsilon', given_frames='noised' (with
    mtd.condition_input='none', which the recipe keeps); it samples with DDPM ancestral
    steps. Step count and guidance scale are not in the paper and are our choices.
    """
    paper = preset.startswith("flintstones")
    return ml_collections.ConfigDict(
        dict(
            schedule="scaled_linear",  # 'scaled_linear' | 'linear' | 'squaredcos_cap_v2'
            num_train_timesteps=1000,
            beta_start=0.00085,
            beta_end=0.012,
            set_alpha_to_one=False,  # DDIM: alpha-bar after the last step (SD: False)
            prediction="v",  # 'epsilon' (the paper) | 'v'
            # Rescale the schedule so alpha-bar is 0 at t = T-1 (Lin et al. 2024; needs 'v'):
            # the global model learns the layout from pure noise (docs/models.md).
            zero_terminal_snr=True,
            # Given frames of a masked-frame model in x_t: 'noised' (the paper: every frame
            # noised, the given ones reach the MTD as x0^c only) or 'clean' (kept clean in
            # training and written back after every sampling step, as MarDini does).
            given_frames="clean",
            sampler="ddpm" if paper else "ddim",  # 'ddpm' | 'ddim'
            num_sampling_steps={"tiny": 3, "demo": 10}.get(preset, 50),  # demo: 3376 frames, ~7 min
            # 'trailing' starts at t = T-1 (pure noise); 'leading' (diffusers' default)
            # starts at t = (n-1) T/n + offset: with 10 steps at t = 901.
            timestep_spacing="trailing",  # 'leading' | 'trailing'
            steps_offset=1,
            eta=0.0,  # DDIM stochasticity (0: deterministic)
            clip_sample=False,  # clip predicted x_0 to +-clip_sample_range
            clip_sample_range=1.0,
            guidance_scale=2.0 if preset in ("tiny", "demo") else 5.0,  # 1: no CFG
            prompt_dropout=0.1,  # CFG training: share of examples trained unconditioned
        )
    )


def text_config(preset: str) -> ml_collections.ConfigDict:
    """Prompt encoder (nuwa_jax.models.text): 'byte' (offline, trainable) or 'clip'.

    'clip' is CLIP ViT-L/14's text tower (SD-1.x's), imported from a local HF directory
    `clip_dir` (model.safetensors + config.json + tokenizer files) by nuwa_jax.convert.clip.
    'byte' is a small transformer over UTF-8 bytes, trained with the model.
    """
    clip = preset.startswith("flintstones")
    width = {"tiny": 32, "demo": 64}.get(preset, 768)  # = mtd.cross_attention_dim
    return ml_collections.ConfigDict(
        dict(
            kind="clip" if clip else "byte",  # 'byte' | 'clip'
            clip_dir="",  # local HF CLIPTextModel directory ('clip' only)
            # Tokens per prompt, special tokens included: the context must hold the
            # training captions whole (the trainer refuses one that cuts them, see
            # allow_truncation). Byte: the synthetic benchmark's longest caption is 125
            # UTF-8 bytes, 127 tokens (synthetic.longest_caption); CLIP: its 77 positions.
            max_length=77 if clip else 128,
            # True: train on captions the context cuts (counted and reported); False: the
            # trainer refuses a text.max_length shorter than the store's longest caption.
            allow_truncation=False,
            width=width,
            layers=12 if clip else 2,
            heads=12 if clip else 4,
            mlp_dim=4 * width,
            vocab_size=49408 if clip else 259,  # byte: 256 bytes + PAD, BOS, EOS (fixed)
            hidden_act="quick_gelu" if clip else "gelu",  # 'quick_gelu' | 'gelu'
            layer_norm_eps=1e-5,
            # Where the pooled output is read: the first eos_token_id; for CLIP, 2 means
            # transformers' legacy rule (the largest id, = the first EOS for CLIP's vocab),
            # as SD-1.x's text_encoder/config.json says. Byte: ByteTokenizer.EOS (2).
            eos_token_id=2,
            trainable=not clip,  # False: the encoder is frozen during training
        )
    )


def data_config(preset: str) -> ml_collections.ConfigDict:
    """Data (nuwa_jax.data): the frame store, the synthetic benchmark, video conversion.

    Two owners share this section. Storage fields (this block: nuwa_jax/data/schema.py,
    writer.py, synthetic.py, convert_videos.py, tfds_builders.py) are below; the grain
    pipeline (nuwa_jax/data/pipeline.py) adds its own fields after the marked line.
    `data_dir` / `eval_data_dir` are frame-store directories (metadata.json + shards,
    see docs/data.md); read them with `schema.FrameStore(dir, skip_bad=skip_bad)`.
    """
    resolution = {"tiny": 32, "demo": 32, "flintstones_256": 256}.get(preset, 128)
    return ml_collections.ConfigDict(
        dict(
            # 'synthetic': render the benchmark into data_dir if it has no metadata.json;
            # 'frames': data_dir must already hold a frame store (converted videos).
            source="synthetic" if preset in ("tiny", "demo") else "frames",
            data_dir="",  # frame store of the training episodes
            eval_data_dir="",  # frame store of held-out episodes ('' = none)
            # Latent store (nuwa_jax.data.latents: T-KLVAE posterior moments of data_dir's
            # frames): when set, 'mtd' training reads it instead of data_dir and encodes
            # nothing ('' = encode video windows with the frozen VAE every step).
            latents_dir="",
            resolution=resolution,  # square frames, pixels per side
            fps=8.0,  # frames per second of the stored episodes
            image_format="png",  # 'png' (lossless) or 'jpeg'
            jpeg_quality=95,
            frames_per_shard=1024,  # consecutive frames of one episode per shard file
            index_every=16,  # metadata.json keeps the byte offset of every n-th record
            skip_bad=False,  # skip and count bad records instead of raising
            # Synthetic benchmark (nuwa_jax.data.synthetic): training renders episodes
            # [0, synthetic_episodes); held-out ones start at synthetic.HELD_OUT_FIRST_EPISODE.
            synthetic_seed=0,
            synthetic_episodes={"tiny": 2, "demo": 16}.get(preset, 8),
            synthetic_eval_episodes={"tiny": 1}.get(preset, 2),
            # Frames per episode. A global window spans N(m) = (L-1)^m + 1 frames (3376 at
            # L=16, m=3); an episode of F frames holds F - N(m) + 1 of them, so episodes of
            # exactly N(m) give one global window each. demo: 2 N(m), 3377 global windows
            # per episode (docs/data.md, `python -m nuwa_jax.data.pipeline`).
            synthetic_frames={"tiny": 226, "demo": 6752}.get(preset, 3376),
            # --- grain pipeline fields (nuwa_jax/data/pipeline.py) below this line ---
            batch_size={"tiny": 8, "demo": 8}.get(preset, 64),  # global, all hosts
            # Hierarchy levels whose training windows are mixed into the stream
            # (0 = global); empty = every level of the plan.
            levels=(),
            # Local windows start only on the level-above grid (multiples of s_{j-1}),
            # exactly like the segments of generation; False: at any frame.
            align_windows=False,
            # Share of finest-level windows trained with the AR baseline's masks (the
            # first k <= generation.ar_context_frames frames given) instead of first + last,
            # so that one local MTD serves both schedules of the DoD-vs-AR comparison.
            ar_mask_prob={"demo": 0.25}.get(preset, 0.0),
            shuffle_seed=0,  # window order; each host adds its process index
            max_bad_retries=16,  # skip_bad: bad windows in a row before giving up
            read_threads={"tiny": 2, "demo": 2}.get(preset, 16),  # loader threads per host
            prefetch_buffer_size={"tiny": 8, "demo": 32}.get(preset, 256),  # examples
            worker_count=0,  # grain worker processes (0: threads of this process only)
            worker_buffer_size=2,  # batches buffered per worker process
        )
    )


def vae_config(preset: str) -> ml_collections.ConfigDict:
    """KL-VAE / T-KLVAE (nuwa_jax.models.vae): diffusers AutoencoderKL layout.

    'flintstones_*': SD's KL-f8 exactly (its weights import via nuwa_jax.convert.vae from
    `pretrained_dir`). 'tiny' and 'demo': f4 (three blocks, two downsamplings) so 32 / 64 px
    frames give 8x8 / 16x16 latents, enough for the MTD UNet's levels. `temporal` makes
    it NUWA-XL's T-KLVAE: an identity TemporalConv1D after every 3x3 spatial conv and a
    zero-init TemporalAttention after every spatial attention.
    """
    sd = preset.startswith("flintstones")
    widths = {"tiny": (16, 32, 32), "demo": (32, 64, 64)}.get(preset, (128, 256, 512, 512))
    return ml_collections.ConfigDict(
        dict(
            in_channels=3,
            out_channels=3,
            block_out_channels=widths,  # one down/up block each; len - 1 downsamplings
            layers_per_block=2 if sd else 1,
            latent_channels=4,
            norm_num_groups=32 if sd else 8,
            norm_eps=1e-6,
            # latents = (z - shift_factor) * scaling_factor, about zero mean and unit
            # variance (LDM's rule): SD's KL-f8 0.18215; demo: its T-KLVAE's posterior
            # means over the demo store have mean 0.260, std 1.454
            # (`python -m nuwa_jax.data.latents --stats`).
            scaling_factor=0.688 if preset == "demo" else 0.18215,
            shift_factor=0.26 if preset == "demo" else 0.0,
            use_quant_conv=True,
            use_post_quant_conv=True,
            mid_block_add_attention=True,
            temporal=True,  # T-KLVAE
            temporal_kernel_size=3,
            temporal_attention=True,
            temporal_attention_heads=1,
            temporal_position_embedding="sinusoidal",  # 'sinusoidal' | 'none'
            pretrained_dir="",  # local diffusers AutoencoderKL directory ('' = random init)
        )
    )


def train_config(preset: str) -> ml_collections.ConfigDict:
    """Training (nuwa_jax.train): what is trained, optimiser, EMA, checkpoints, logging.

    `model` 'vae' trains the T-KLVAE (L1 + kl_weight * KL, optionally + LPIPS and a
    patch-GAN term); 'mtd' trains the MTD of
    hierarchy level `level` (0 = global) on that level's windows, with a frozen VAE;
    'mardini' trains MarDini, stage `mardini_stage` of mardini.curriculum (whose steps
    replace num_steps), on clips of consecutive frames or the hierarchy's local-level
    windows (mardini.train_levels), with a frozen VAE.
    The batch is data.batch_size (global); the schedule is AdamW with linear warm-up and
    cosine decay to final_lr_ratio * learning_rate at num_steps.
    """
    return ml_collections.ConfigDict(
        dict(
            model="mtd",  # 'vae' | 'mtd' | 'mardini'
            level=0,  # 'mtd': hierarchy level whose MTD is trained (0 = global)
            mardini_stage="joint",  # 'mardini': 'planner' | 'generator' | 'joint'
            # Workdir of an earlier run of the same model (e.g. the previous curriculum
            # stage): a run with no checkpoint of its own starts from that run's newest
            # params (EMA too); the optimiser and the data start fresh ('' = random init).
            init_from="",
            # 'mtd' / 'mardini': training latents are a sample of the frozen VAE's posterior
            # (True, LDM) or its mean (False; e.g. an untrained VAE, whose posterior is
            # mostly noise).
            sample_posterior=True,
            # demo: launch/train_demo.sh gives each model its own num_steps.
            num_steps={"tiny": 200, "demo": 20000}.get(preset, 200000),
            learning_rate={"tiny": 1e-3, "demo": 3e-4}.get(preset, 1e-4),
            warmup_steps={"tiny": 10, "demo": 200}.get(preset, 5000),
            final_lr_ratio=0.1,  # cosine decay ends at this share of learning_rate
            adam_b1=0.9,
            adam_b2=0.999,
            adam_eps=1e-8,
            weight_decay=0.01,
            grad_clip_norm=1.0,  # global-norm clipping (0: off)
            grad_accum_steps=1,  # micro-batches per optimiser update (optax.MultiSteps)
            # EMA of parameters (0: EMA = params); demo runs are thousands of steps.
            ema_decay={"tiny": 0.99, "demo": 0.995}.get(preset, 0.9999),
            # 'vae': loss = L1 + kl_weight * KL (KL summed per frame, averaged over frames).
            kl_weight=1e-6,
            # 'vae': + hard_pixel_weight * the mean L1 of each frame's worst
            # hard_pixel_fraction of pixels (losses.hard_pixel_l1: small sprites cost).
            # demo: 1.0, else the 4-8 px characters vanish (benchmarks/vae_detail.py).
            hard_pixel_weight={"demo": 1.0}.get(preset, 0.0),
            hard_pixel_fraction=0.02,
            # 'vae' extra terms (docs/training.md): + perceptual_weight * LPIPS(recon, video),
            # the frozen VGG16 LPIPS from `perceptual_weights`, a file written by
            # `python -m nuwa_jax.convert.lpips` (never downloaded; required when > 0).
            perceptual_weight=0.0,
            perceptual_weights="",
            # + adversarial_weight * patch-GAN generator loss from adversarial_start_step on
            # (LDM's disc_start; the discriminator's hinge loss starts there too). The
            # discriminator (nuwa_jax.models.discriminator) trains from scratch in the same
            # step and optimiser; `discriminator_layers` stride-2 convs, base width
            # `discriminator_channels`.
            adversarial_weight=0.0,
            adversarial_start_step={"tiny": 0, "demo": 5000}.get(preset, 50000),
            discriminator_layers=3,
            discriminator_channels={"tiny": 16}.get(preset, 64),
            log_every={"tiny": 1}.get(preset, 50),  # steps between scalar writes
            checkpoint_every={"tiny": 50, "demo": 250}.get(preset, 5000),
            keep_checkpoints=3,  # the newest n are kept
            # Resuming a workdir with a config that differs from its checkpoint's in a field
            # that matters (architecture, train.model, level / stage, diffusion recipe,
            # resolution, frames: trainer.resume_fields) is refused, naming the fields;
            # True resumes anyway and logs them. Step counts, frequencies, paths and worker
            # counts may always change (a longer num_steps is the normal resume).
            allow_config_change=False,
            async_checkpointing=True,
            # orbax's replica-parallel saving of replicated arrays (process-wide switch;
            # False saves each array from one replica: far fewer compiles on CPU tests).
            checkpoint_replica_parallel=True,
            # Samples logged as images (TensorBoard) and PNGs (workdir/samples/) every n
            # steps, with the EMA parameters, on a clip of the run's first batch: 'vae' its
            # frames above their reconstructions; 'mtd' a clip of the level sampled from
            # the clip's given frames and prompts (0: off).
            sample_every={"tiny": 0, "demo": 1000}.get(preset, 5000),
            # 'mtd' samples: reverse diffusion steps (0: diffusion.num_sampling_steps).
            sample_steps=0,
            # Profiler (lead process, clu periodic_actions.Profile): trace this many steps
            # after step `profile_first_step` into workdir/plugins/profile (0: off).
            profile_steps=5 if preset.startswith("flintstones") else 0,
            profile_first_step=10,  # the trace starts after this step (compiles are done)
            # Tests only: step whose loss is made NaN (-1: never), to exercise the NaN stop.
            debug_nan_at_step=-1,
        )
    )


MARDINI_SIZES = {
    # size: planner (layers, hidden, mlp, heads), generator (layers, hidden, mlp, heads),
    # frames per clip, latent channels. 'S' / 'L': the paper's planners (8 or 16 layers x
    # 4096, SwiGLU 8192: S then has the paper's 1.3 B, see docs/mardini.md) and its
    # 8 x 1024 generator (MLP 4096); the paper gives no head counts (ours: 128-wide heads
    # in the planner, 64-wide in the generator).
    "tiny": dict(planner=(2, 64, 128, 4), generator=(2, 64, 256, 4), frames=5, latent_channels=4),
    "demo": dict(  # 16 frames: the demo hierarchy's L, so it can be its local backbone
        planner=(4, 256, 1024, 4), generator=(4, 128, 512, 4), frames=16, latent_channels=4
    ),
    "S": dict(
        planner=(8, 4096, 8192, 32), generator=(8, 1024, 4096, 16), frames=9, latent_channels=16
    ),
    "L": dict(
        planner=(16, 4096, 8192, 32), generator=(8, 1024, 4096, 16), frames=17, latent_channels=16
    ),
}


def mardini_config(preset: str, size: str | None = None) -> ml_collections.ConfigDict:
    """MarDini's planner and generator (nuwa_jax.models.mardini), widths from MARDINI_SIZES.

    `size` ('tiny' | 'demo' | 'S' | 'L'; default: the preset's own, 'S' at paper scale)
    selects the widths: a width field left at 0 is read from MARDINI_SIZES[size], so
    `--config.mardini.size=L` switches the whole model and a non-zero field overrides one
    width.
    """
    size = size or {"tiny": "tiny", "demo": "demo"}.get(preset, "S")
    return ml_collections.ConfigDict(
        dict(
            size=size,
            latent_channels=0,  # 0: from size (16 at paper scale: its 8x per-frame VAE)
            num_frames=0,  # frames per clip (0: from size)
            planner_layers=0,  # 0: from size (all width fields alike)
            planner_hidden=0,
            planner_mlp_dim=0,  # SwiGLU hidden width
            planner_heads=0,
            generator_layers=0,
            generator_hidden=0,
            generator_mlp_dim=0,
            generator_heads=0,
            signal_dim=0,  # C_low, channels of a planning token (0: generator_hidden)
            low_res_factor=2,  # planner latents: the high-res ones avg-pooled by this factor
            # Patch side on the low-res latents (N_low tokens per frame); tiny: 2, so the
            # planning grid is coarser than the generator's and gets upsampled.
            planner_patch_size=2 if size == "tiny" else 1,
            generator_patch_size=2,  # patch side on the high-res latents
            attention="T",  # generator: 'T' (per-frame spatial + temporal) | 'ST' (full)
            rope_theta=10000.0,
            norm_eps=1e-6,
            signal_dropout=0.1,  # CFG training: share of examples given the null signal
            # Generation (nuwa_jax.mardini_tasks, MarDini locals of the hierarchy): the
            # `diffusion` section's schedule and step count with this sampler, and
            # classifier-free guidance on the planning signal per task (the paper: 2.5
            # for image-to-video, none for interpolation; the hierarchy's MarDini locals
            # use 'interpolation'). v-prediction, as MarDini is trained.
            sampler="ddim",
            guidance=dict(
                interpolation=1.0,
                image_to_video=2.5,
                video_expansion=2.5,
                arbitrary=2.5,
                slow_motion=1.0,
            ),
            # Training (train.model='mardini', nuwa_jax.train.curriculum): the loss on the
            # generated frames only, with this parameterisation ('v': the paper).
            prediction="v",
            # Share of training examples given one of the named task masks `train_tasks`
            # (nuwa_jax.tasks; video_expansion keeps the first half) instead of a random set.
            task_share=0.25,
            train_tasks=("interpolation", "image_to_video", "video_expansion"),
            # The clips it trains on: 'consecutive' (num_frames frames at stride 1, a
            # standalone MarDini) or 'local' (the hierarchy's local-level windows, levels
            # 1..depth-1 at their strides, mixed as the shared local MTD trains: MarDini as
            # hierarchy.local_backbone). 'local' applies to the stages whose num_frames ==
            # hierarchy.frames_per_call; the others (e.g. a 4-frame planner stage) keep
            # consecutive clips. demo: 'local' (its 16-frame stages are the demo
            # hierarchy's segments); elsewhere 'consecutive' (tiny's 5 frames != L = 4).
            train_levels="local" if preset == "demo" else "consecutive",
            curriculum=mardini_curriculum(preset),
        )
    )


def mardini_curriculum(preset: str) -> ml_collections.ConfigDict:
    """MarDini's training stages (nuwa_jax.train.curriculum); train.mardini_stage picks one.

    Per stage: `steps` (replaces train.num_steps), the share of kept frames drawn uniformly
    in [kept_min, kept_max], `num_frames` per clip (replaces mardini.num_frames; 0: the
    size's) and the `resolution` frames are resized to (data.resolution is what they are
    stored at; 0: that). Paper: clips 4 -> 9 -> 17 frames, kept 35-100% -> 6-30%, 256 ->
    512 -> 1024 px; the middle stage's kept range and all step counts are our choices.
    """
    stage = lambda steps, lo, hi, frames, res: dict(  # noqa: E731
        steps=steps, kept_min=lo, kept_max=hi, num_frames=frames, resolution=res
    )
    if preset == "tiny":  # smoke runs: 16 / 32 px (8x8 latents with the tiny f4 VAE)
        rows = dict(
            planner=stage(50, 0.35, 1.0, 4, 16),
            generator=stage(50, 0.2, 0.6, 0, 32),
            joint=stage(100, 0.06, 0.3, 0, 32),
        )
    elif preset == "demo":  # every stage at the stored 32 px: trains on the latent store
        # Steps for 80 minutes on 2 CPU cores at batch 8 (about 0.2 / 1.1 / 1.9 s a step
        # measured, docs/mardini.md): 3 + 21 + 50 minutes.
        rows = dict(
            planner=stage(1000, 0.35, 1.0, 4, 32),
            generator=stage(1000, 0.15, 0.6, 0, 32),
            joint=stage(1600, 0.06, 0.3, 0, 32),
        )
    else:  # S: 9 frames in the last stage, L: 17
        rows = dict(
            planner=stage(50000, 0.35, 1.0, 4, 256),
            generator=stage(50000, 0.15, 0.6, 9, 512),
            joint=stage(100000, 0.06, 0.3, 0, 1024),
        )
    return ml_collections.ConfigDict(rows)


def evaluate_config(preset: str) -> ml_collections.ConfigDict:
    """Evaluation (nuwa_jax.evaluate, docs/evaluation.md): metrics and the offline feature nets.

    `features`: 'synthetic' (networks trained on the synthetic benchmark by
    `python -m nuwa_jax.evaluate.train_features`), 'standard' (InceptionV3 + I3D from
    converted PyTorch weights) or 'none'; `feature_weights` is the synthetic networks'
    .json or the directory of the standard ones. `net_*` configure the synthetic networks.
    """
    resolution = {"tiny": 32, "demo": 32, "flintstones_256": 256}.get(preset, 128)
    return ml_collections.ConfigDict(
        dict(
            features="synthetic",  # 'synthetic' | 'standard' | 'none'
            feature_weights="",
            block_frames=16,  # Avg-FID / B-FVD-16 blocks
            batch_size=64,  # frames per feature-extractor call
            schedule="dod",  # coherence: schedule of videos without a timings JSON
            colour_tolerance=40.0,  # adherence: RGB distance to a palette colour
            iou_threshold=0.6,  # adherence: tolerant IoU of a detected character
            # Offline feature networks (nuwa_jax.evaluate.synthetic_net / train_features).
            net_input_size=min(resolution, 64),
            net_feature_dim=256,
            net_steps={"tiny": 200}.get(preset, 1500),
            net_batch_size=32,  # frames per step (image network)
            net_clip_batch_size=8,  # 16-frame clips per step (clip network)
            net_learning_rate=2e-3,
            net_eval_fraction=0.2,  # held out at the end of each episode (no --eval_data)
            net_seed=0,
        )
    )


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
    config.generation = generation_config(preset)
    config.vae = vae_config(preset)
    config.diffusion = diffusion_config(preset)
    config.text = text_config(preset)
    config.mtd = mtd_config(preset)
    config.data = data_config(preset)
    config.mardini = mardini_config(preset)
    config.train = train_config(preset)
    config.evaluate = evaluate_config(preset)
    return config
