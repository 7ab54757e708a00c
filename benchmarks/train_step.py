"""Train-step time, examples/s, model FLOPs, TFLOP/s per device and MFU of the trainer's step.

    python benchmarks/train_step.py --config=configs/tiny.py --models=vae,mtd,mardini

For each model (train.model = vae, mtd, mardini) it builds exactly the trainer's jitted step
(`trainer.make_train_step`: forward, backward, clipping, AdamW, EMA; the state donated)
and runs it on one synthetic in-memory global batch (`trainer.synthetic_batch`: random
video, one caption's tokens, the level's cond_mask; no input pipeline). The first call
(compile + step) and `--warmup` more steps are not timed; then `--steps` steps are,
each to `block_until_ready`. Step seconds are the median.

FLOPs: the model FLOPs of a step (`model_flops_per_example` x the global batch): 3x the
trained network's forward plus the frozen networks' forwards, counted by nuwa_jax.describe
on abstract shapes (XLA cost analysis of the lowered forward). TFLOP/s per device = model
FLOPs / step seconds / devices; MFU = that / the device's dense bf16 peak
(PEAK_BF16_TFLOPS; CPU: none, MFU null). XLA's own count of the step is kept as
`xla_flops_per_step`: on GPU it is read from the compiled module, which leaves out cuDNN's
convolutions, so it is no MFU numerator there. Where describe cannot count on the
accelerator's backend, add the model FLOPs afterwards on CPU with --annotate=FILE and the
run's --config flags. `--profile_steps=N` traces N more steps and summarises the device
time by kernel category (benchmarks/profile_summary.py).
Writes benchmarks/results/train_step_<preset>_<platform>.json.
"""

from __future__ import annotations

import functools
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
_PROFILE_STEPS = flags.DEFINE_integer(
    "profile_steps", 0, "After timing, trace this many steps and summarise the device time."
)
_ANNOTATE = flags.DEFINE_string(
    "annotate", None, "Only add model FLOPs / MFU to this result JSON (see annotate())."
)
_PROFILE_DIR = flags.DEFINE_string("profile_dir", None, "Trace directory (default: a temp dir).")

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


def model_flops_per_example(config, model: str) -> float | None:
    """Model FLOPs of one training example (the MFU numerator), from nuwa_jax.describe's
    analytic forward counts (abstract shapes, XLA cost analysis of the lowered forward):
    3x the trained network's forward (forward + backward) plus the frozen networks'
    forwards; rematerialised recomputation is not counted. None where describe cannot
    count (a backend whose lowered cost analysis is empty: run it on CPU, --annotate)."""
    from nuwa_jax import describe
    from nuwa_jax.train import curriculum

    stage = None
    if model == "mardini":  # the stage's clips: its frames and resolution
        stage = curriculum.stage(config)
        config = curriculum.resolve(config).copy_and_resolve_references()
        config.data.resolution = stage.resolution
    table = describe.describe(config)
    fwd = {k: v["forward_gflops"] * 1e9 for k, v in table.items()}
    if model == "vae":
        flops = 3 * (fwd["vae_encode"] + fwd["vae_decode"])
    elif model == "mtd":
        text = (3 if config.text.trainable else 1) * fwd["text"]
        flops = 3 * fwd["mtd"] + fwd["vae_encode"] + text
    elif model == "mardini":
        # The frozen VAE encodes the stage's clip; describe counts L frames (linear in
        # frames but for the T-KLVAE's temporal attention, a small term at these lengths).
        encode = fwd["vae_encode"] * stage.num_frames / config.hierarchy.frames_per_call
        planner, generator = fwd["mardini_planner"], fwd["mardini_generator"]
        flops = (
            encode
            + {
                "planner": 3 * planner,  # the planner and its reconstruction head train
                "generator": planner + 3 * generator,  # the planner frozen (stop_gradient)
                "joint": 3 * (planner + generator),
            }[stage.name]
        )
    else:
        return None
    return flops if math.isfinite(flops) and flops > 0 else None


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
        t0 = time.perf_counter()
        lowered = train_step.fn.lower(state, train_step.frozen_state, batch)
        flops, flops_source = step_flops(lowered), "lowered"
        compiled = lowered.compile()  # the timed executable: compiled once
        if flops is None:  # some backends (GPU) count only the compiled module
            flops, flops_source = step_flops(compiled), "compiled"
        step_fn = functools.partial(_call_compiled, compiled, train_step.frozen_state, batch)
        with report.exclusive_device():  # the device to itself from the first step on
            state, metrics = step_fn(state)
            jax.block_until_ready((state, metrics))
            first = time.perf_counter() - t0
            for _ in range(warmup):
                state, metrics = step_fn(state)
            jax.block_until_ready((state, metrics))
            times = []
            for _ in range(steps):
                t0 = time.perf_counter()
                state, metrics = step_fn(state)
                jax.block_until_ready((state, metrics))
                times.append(time.perf_counter() - t0)
            profile = _profile(step_fn, state, model) if _PROFILE_STEPS.value else None
    seconds = statistics.median(times)
    row = dict(
        model=model,
        level=config.train.level if model == "mtd" else None,
        mardini_stage=config.train.mardini_stage if model == "mardini" else None,
        trained_parameters=params,
        global_batch=config.data.batch_size,
        frames_per_example=int(batch["video"].shape[1]),  # MarDini: its stage's clips
        resolution=int(batch["video"].shape[2]),
        compute_dtype=config.compute.dtype,
        first_step_seconds=first,  # lowering + compilation + the first step
        step_seconds=seconds,
        step_seconds_all=times,
        examples_per_s=config.data.batch_size / seconds,
        # XLA's count of the lowered (CPU: analytic) or compiled (GPU: without cuDNN's
        # convolution custom calls, so far too low) step, remat recomputation included.
        xla_flops_per_step=flops,
        xla_flops_source=flops_source,
        memory=report.compiled_memory(compiled),
        device_peak_bytes=report.device_peak_bytes(),
        loss=float(metrics["loss"]),
        profile=profile,
    )
    return _with_mfu(row, config, model, jax.devices()[0].device_kind, jax.device_count())


def _with_mfu(row: dict, config, model: str, device_kind: str, devices: int) -> dict:
    """Adds model FLOPs, TFLOP/s per device and MFU (model FLOPs / time / devices / peak)."""
    per_example = model_flops_per_example(config, model)
    flops = None if per_example is None else per_example * row["global_batch"]
    peak = peak_bf16_tflops(device_kind)
    tflops = None if flops is None else flops / row["step_seconds"] / devices / 1e12
    row.update(
        model_flops_per_step=flops,
        tflops_per_s_per_device=tflops,
        peak_bf16_tflops_per_device=peak,
        mfu=None if tflops is None or peak is None else tflops / peak,
    )
    mfu = "n/a" if row["mfu"] is None else f"{row['mfu']:.1%}"
    print(
        f"{model}: {row['step_seconds'] * 1e3:.1f} ms/step, {row['examples_per_s']:.2f} "
        f"examples/s, {(flops or 0) / 1e12:.2f} model TFLOP/step, {tflops or 0:.4f} "
        f"TFLOP/s/device, MFU {mfu}"
    )
    return row


def _call_compiled(compiled, frozen_state, batch, state):
    return compiled(state, frozen_state, batch)


def _profile(step_fn, state, model: str) -> dict:
    """Traces --profile_steps steps; the device time by kernel category (profile_summary)."""
    import tempfile

    import jax

    from benchmarks import profile_summary

    base = _PROFILE_DIR.value or tempfile.mkdtemp(prefix="train_step_trace_")
    trace_dir = os.path.join(base, model)
    with jax.profiler.trace(trace_dir):
        for _ in range(_PROFILE_STEPS.value):
            state, metrics = step_fn(state)
        jax.block_until_ready((state, metrics))
    summary = profile_summary.summarize(trace_dir, _PROFILE_STEPS.value)
    for name, c in (summary.get("categories") or {}).items():
        print(f"  {model} {name:>18}: {c['ms_per_step']:8.2f} ms/step ({c['share']:.0%})")
    return summary


def annotate(path: str, config) -> None:
    """Recomputes model FLOPs and MFU of every row of a result JSON, here (e.g. on CPU),
    with the run's config: pass the same --config and --config.* overrides it recorded."""
    import json

    with open(path) as f:
        result = json.load(f)
    recorded = result.get("overrides", [])
    given = [a for a in sys.argv[1:] if a.startswith("--config.")]
    if sorted(recorded) != sorted(given) or result.get("config") != config.preset:
        raise SystemExit(
            f"{path}: measured with config {result.get('config')} and overrides {recorded}; "
            f"got {config.preset} and {given}"
        )
    for row in result["rows"]:
        with config.unlocked():
            config.train.model = row["model"]
            config.data.batch_size = row["global_batch"]
        _with_mfu(row, config, row["model"], result["device"]["kind"], result["device"]["count"])
    result["mfu_annotated"] = dict(date=report.environment()["date"], by="train_step --annotate")
    report.write_result("", result, path)
    print(f"wrote {path}")


def main(argv: list[str]) -> None:
    del argv
    import jax
    import optax

    config = _CONFIG.value
    if _ANNOTATE.value:  # model FLOPs / MFU for a result measured where describe can't count
        return annotate(_ANNOTATE.value, config)
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
