"""Train-step time, examples/s, model FLOPs, TFLOP/s per device and MFU of the trainer's step.

    python benchmarks/train_step.py --config=configs/tiny.py --models=vae,mtd

For each model (train.model = vae, mtd) it builds exactly the trainer's jitted step
(`trainer.make_train_step`: forward, backward, clipping, AdamW, EMA; the state donated)
and runs it on one synthetic in-memory global batch (`trainer.synthetic_batch`: random
video, one caption's tokens, the level's cond_mask; no input pipeline). The first call
(compile + step) and `--warmup` more steps are not timed; then `--steps` steps are,
each to `block_until_ready`. Step seconds are the median.

FLOPs: XLA's count over the lowered step (`Lowered.cost_analysis()`, as nuwa_jax.describe
counts a forward): forward, backward and optimiser update of one global batch, analytic
(from the shapes, before partitioning). TFLOP/s per device = FLOPs / step seconds /
devices; MFU = that / the device's dense bf16 peak (PEAK_BF16_TFLOPS; CPU: none, MFU null).
Writes benchmarks/results/train_step_<preset>_<platform>.json.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import report  # noqa: E402
from nuwa_jax import cli, parallel  # noqa: E402

_CONFIG = cli.define_config_flag("configs/tiny.py")
_MODELS = flags.DEFINE_list("models", ["vae", "mtd"], "train.model values to time.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per model.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after the compiling one.")
_OUT = flags.DEFINE_string("out", None, "JSON path (default benchmarks/results/...).")

# Dense bf16 peak TFLOP/s per device, matched against jax's device_kind in this order.
PEAK_BF16_TFLOPS = (
    ("TPU v6 lite", 918.0),  # v6e
    ("TPU v6e", 918.0),
    ("TPU v5 lite", 197.0),  # v5e
    ("TPU v5e", 197.0),
    ("TPU v5p", 459.0),
    ("TPU v5", 459.0),  # v5p reports "TPU v5"
    ("TPU v4", 275.0),
    ("H200", 989.0),
    ("H100 80GB HBM3", 989.0),  # SXM
    ("H100 SXM", 989.0),
)


def peak_bf16_tflops(device_kind: str) -> float | None:
    """The table's dense bf16 peak for a device kind (None when unknown, e.g. CPU)."""
    for name, peak in PEAK_BF16_TFLOPS:
        if name.lower() in device_kind.lower():
            return peak
    return None


def step_flops(lowered) -> float | None:
    analysis = lowered.cost_analysis()
    if isinstance(analysis, list | tuple):  # older jax: one dict per computation
        analysis = analysis[0]
    flops = (analysis or {}).get("flops")
    return float(flops) if flops is not None and flops > 0 else None


def time_model(config, model: str, mesh, rules, steps: int, warmup: int) -> dict:
    import jax

    from nuwa_jax.models.text import make_tokenizer
    from nuwa_jax.train import trainer

    with config.unlocked():
        config.train.model = model
    trainer.check_config(config)
    tokenizer = make_tokenizer(config.text)
    train_step, state = trainer.make_train_step(config, mesh, rules, tokenizer)
    batch = trainer.synthetic_batch(config, mesh, rules, tokenizer)
    params = sum(math.prod(x.shape) for x in jax.tree.leaves(state.params))
    with jax.set_mesh(mesh):
        flops = step_flops(train_step.fn.lower(state, train_step.frozen_state, batch))
        t0 = time.perf_counter()
        state, metrics = train_step(state, batch)
        jax.block_until_ready((state, metrics))
        first = time.perf_counter() - t0
        for _ in range(warmup):
            state, metrics = train_step(state, batch)
        jax.block_until_ready((state, metrics))
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            state, metrics = train_step(state, batch)
            jax.block_until_ready((state, metrics))
            times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    devices = jax.device_count()
    peak = peak_bf16_tflops(jax.devices()[0].device_kind)
    tflops = None if flops is None else flops / seconds / devices / 1e12
    row = dict(
        model=model,
        level=config.train.level if model == "mtd" else None,
        trained_parameters=params,
        global_batch=config.data.batch_size,
        frames_per_example=config.hierarchy.frames_per_call,
        resolution=config.data.resolution,
        compute_dtype=config.compute.dtype,
        first_step_seconds=first,  # includes compilation
        step_seconds=seconds,
        step_seconds_all=times,
        examples_per_s=config.data.batch_size / seconds,
        flops_per_step=flops,
        tflops_per_s_per_device=tflops,
        mfu=None if tflops is None or peak is None else tflops / peak,
        loss=float(metrics["loss"]),
    )
    mfu = "n/a" if row["mfu"] is None else f"{row['mfu']:.1%}"
    print(
        f"{model}: {seconds * 1e3:.1f} ms/step, {row['examples_per_s']:.2f} examples/s, "
        f"{(flops or 0) / 1e9:.2f} GFLOP/step, {tflops or 0:.4f} TFLOP/s/device, MFU {mfu}"
    )
    return row


def main(argv: list[str]) -> None:
    del argv
    import jax
    import optax

    config = _CONFIG.value
    mesh, rules = parallel.make_mesh(config.mesh), parallel.logical_rules(config)
    rows = [time_model(config, m, mesh, rules, _STEPS.value, _WARMUP.value) for m in _MODELS.value]
    device = jax.devices()[0]
    env = report.environment()
    env["versions"]["optax"] = optax.__version__
    result = dict(
        benchmark="train_step",
        **env,
        config=config.preset,
        overrides=[a for a in sys.argv[1:] if a.startswith("--config.")],
        mesh=dict(mesh.shape),
        peak_bf16_tflops_per_device=peak_bf16_tflops(device.device_kind),
        timed_steps=_STEPS.value,
        warmup_steps=_WARMUP.value,
        rows=rows,
    )
    if jax.process_index() == 0:
        path = report.write_result(f"train_step_{config.preset}_{device.platform}", result,
                                   _OUT.value)  # fmt: skip
        print(f"wrote {path}")


if __name__ == "__main__":
    parallel.initialize_distributed()
    cli.run(main)
