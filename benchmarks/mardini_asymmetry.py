"""MarDini's asymmetric design against the symmetric one: time and peak memory (Table 3).

    python benchmarks/mardini_asymmetry.py --config=configs/tiny.py --latent_size=16
    python benchmarks/mardini_asymmetry.py --config=configs/tiny.py \\
        --config.mardini.size=S --latent_size=64 --batch=1   # paper scale, accelerator

Asymmetric (MarDini): the planner runs on the latents average-pooled by
`mardini.low_res_factor` (the paper: low-resolution planning), the generator at full
latent resolution. Symmetric: the same planner at the generator's resolution
(low_res_factor = 1), i.e. 4x the planner tokens at factor 2 and ~16x its attention work.
Both are the same networks (same parameter count); only the planner's input differs.

Measured per design, on the same random weights and inputs:
- train step: forward + backward of the masked v-prediction loss (planner and generator
  jointly, interpolation mask), jitted; XLA's planned memory of the compiled step
  (arguments + outputs + temporaries - aliased) and, where the backend reports it, the
  device's peak bytes in use; the step's FLOPs (cost analysis) and its wall time;
- sampling: planning once, then `--sample_steps` DDIM generator steps over one clip.
A design whose step does not fit (RESOURCE_EXHAUSTED) is recorded as out of memory, as
the paper's symmetric design is at 512 px. Writes
benchmarks/results/mardini_asymmetry_<size>_<platform>.json.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import sys
import time
from typing import Any

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import report  # noqa: E402
from nuwa_jax import cli, parallel  # noqa: E402

_CONFIG = cli.define_config_flag("configs/tiny.py")
_LATENT = flags.DEFINE_integer("latent_size", 16, "Side of the high-res latent grid.")
_BATCH = flags.DEFINE_integer("batch", 2, "Clips per step.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed train steps (after one warm-up).")
_SAMPLE_STEPS = flags.DEFINE_integer("sample_steps", 4, "DDIM steps of the sampling run.")
_OUT = flags.DEFINE_string("out", None, "JSON path (default benchmarks/results/...).")


def _flops(compiled: Any) -> float | None:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list | tuple):
        analysis = analysis[0] if analysis else None
    return float(analysis["flops"]) if analysis and "flops" in analysis else None


def _is_oom(error: Exception) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def measure(config: Any, low_res_factor: int) -> dict[str, Any]:
    """Train-step and sampling figures of MarDini with the planner at `low_res_factor`."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from nuwa_jax import diffusion, tasks
    from nuwa_jax.models import mardini

    config = copy.deepcopy(config)
    with config.unlocked():
        config.mardini.low_res_factor = low_res_factor
    d = mardini.dims(config.mardini)
    b, frames, side = _BATCH.value, d.num_frames, _LATENT.value
    model = mardini.MarDini(config.mardini, config.compute, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    schedule = diffusion.NoiseSchedule.from_config(config.diffusion)
    rng = np.random.default_rng(0)
    latents = jnp.asarray(rng.standard_normal((b, frames, side, side, d.latent_channels)),
                          jnp.float32)  # fmt: skip
    kept = jnp.asarray(np.stack([tasks.task_mask("interpolation", frames)] * b))
    rate = float(config.mardini.signal_dropout)

    def loss_fn(params, rest, latents, kept, key):
        m = nnx.merge(graphdef, params, rest)
        k_t, k_noise, k_drop = jax.random.split(key, 3)
        t = jax.random.randint(k_t, (latents.shape[0],), 0, schedule.num_timesteps)
        noise = jax.random.normal(k_noise, latents.shape, jnp.float32)
        known = diffusion.KnownFrames(latents, kept)
        x_t = known.insert(diffusion.q_sample(schedule, latents, t, noise))
        signals = m.drop_signal(k_drop, m.plan(latents, kept), rate)
        v = m.denoise(x_t, t, signals, kept)
        return diffusion.denoising_loss(
            v, latents, noise, t, ~kept, schedule=schedule, prediction="v"
        ).loss

    out: dict[str, Any] = dict(
        low_res_factor=low_res_factor,
        planner_tokens_per_frame=(side // low_res_factor // int(config.mardini.planner_patch_size))
        ** 2,
        generator_tokens_per_frame=(side // int(config.mardini.generator_patch_size)) ** 2,
        parameters=int(sum(x.size for x in jax.tree.leaves(params))),
    )
    step = jax.jit(jax.value_and_grad(loss_fn))
    key = jax.random.key(0)
    try:
        t0 = time.perf_counter()
        compiled = step.lower(params, rest, latents, kept, key).compile()
        out["train_compile_seconds"] = time.perf_counter() - t0
        out["train_memory"] = report.compiled_memory(compiled)
        out["train_step_gflops"] = (_flops(compiled) or float("nan")) / 1e9
        with report.exclusive_device():
            jax.block_until_ready(compiled(params, rest, latents, kept, key))  # warm-up
            times = []
            for i in range(_REPEATS.value):
                t0 = time.perf_counter()
                jax.block_until_ready(compiled(params, rest, latents, kept, jax.random.key(i + 1)))
                times.append(time.perf_counter() - t0)
        out["train_step_seconds"] = float(np.median(times))
        out["train_device_peak_bytes"] = report.device_peak_bytes()
    except Exception as e:  # noqa: BLE001  (an accelerator OOM is a result, not a crash)
        if not _is_oom(e):
            raise
        out["train_oom"] = str(e).splitlines()[0][:300]
        return out

    dcfg = copy.deepcopy(config.diffusion)
    with dcfg.unlocked():
        dcfg.sampler, dcfg.num_sampling_steps, dcfg.prediction = "ddim", _SAMPLE_STEPS.value, "v"
        dcfg.guidance_scale = 1.0  # interpolation: no guidance (the paper)

    def sample(params, rest, latents, kept, key):
        m = nnx.merge(graphdef, params, rest)
        known = diffusion.KnownFrames(latents, kept)
        return diffusion.sample(m.sampler_fn(), latents.shape, key, dcfg,
                                cond=m.plan(latents, kept), known=known,
                                replace_known=True)  # fmt: skip

    sampler = jax.jit(sample).lower(params, rest, latents, kept, key).compile()
    with report.exclusive_device():
        jax.block_until_ready(sampler(params, rest, latents, kept, key))
        t0 = time.perf_counter()
        jax.block_until_ready(sampler(params, rest, latents, kept, jax.random.key(1)))
        out["sample_seconds"] = time.perf_counter() - t0
    out["sample_memory"] = report.compiled_memory(sampler)
    return out


def main(argv: list[str]) -> None:
    del argv
    from nuwa_jax.models import mardini

    config = _CONFIG.value
    factor = int(config.mardini.low_res_factor)
    if factor < 2:
        raise ValueError(f"mardini.low_res_factor={factor}: the asymmetric design needs >= 2")
    rows = {"asymmetric": measure(config, factor), "symmetric": measure(config, 1)}
    d = mardini.dims(config.mardini)
    for name, r in rows.items():
        mem = (r.get("train_memory") or {}).get("planned_peak_bytes")
        step = r.get("train_step_seconds")
        if step is None:
            figures = f"OOM: {r['train_oom']}"
        else:
            figures = (f"train step {step:.3f} s, planned peak {mem / 2**20:.1f} MiB, "
                       f"sampling {r['sample_seconds']:.3f} s")  # fmt: skip
        print(f"{name:>10}: planner {r['planner_tokens_per_frame']:4d} tok/frame, {figures}")
    a, s = rows["asymmetric"], rows["symmetric"]
    ratios = {}
    if "train_step_seconds" in a and "train_step_seconds" in s:
        ratios = dict(
            train_time_symmetric_over_asymmetric=s["train_step_seconds"] / a["train_step_seconds"],
            train_memory_symmetric_over_asymmetric=s["train_memory"]["planned_peak_bytes"]
            / a["train_memory"]["planned_peak_bytes"],
            sample_time_symmetric_over_asymmetric=s["sample_seconds"] / a["sample_seconds"],
        )
        print(", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    result = dict(
        benchmark="mardini_asymmetry",
        **report.environment(),
        config=config.preset,
        mardini=dict(
            size=config.mardini.size,
            attention=config.mardini.attention,
            dims=dataclasses.asdict(d),
            generator_patch_size=config.mardini.generator_patch_size,
            planner_patch_size=config.mardini.planner_patch_size,
        ),  # fmt: skip
        inputs=dict(
            batch=_BATCH.value,
            frames=d.num_frames,
            latent_size=_LATENT.value,
            task="interpolation",
            compute_dtype=config.compute.dtype,
            sample_steps=_SAMPLE_STEPS.value,
        ),  # fmt: skip
        rows=rows,
        ratios=ratios,
    )
    import jax

    name = f"mardini_asymmetry_{config.mardini.size}_{jax.devices()[0].platform}"
    print(f"wrote {report.write_result(name, result, _OUT.value)}")


if __name__ == "__main__":
    parallel.initialize_distributed()
    cli.run(main)
