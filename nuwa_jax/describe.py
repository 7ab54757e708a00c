"""Parameter counts per component and the FLOPs of one forward call, for any config.

    python -m nuwa_jax.describe --config=configs/flintstones.py:128

Nothing is allocated: the networks are traced abstractly and each forward call is
lowered (not compiled) on abstract inputs; its FLOPs are XLA's count over the lowered
graph (`Lowered.cost_analysis()`), i.e. analytic, from the shapes alone. The forward
shapes are the ones generation runs: one clip of L frames at the config's resolution,
batch 1, per-frame prompts of text.max_length tokens.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import jax
import jax.numpy as jnp
from absl import flags
from flax import nnx

from nuwa_jax import cli, parallel


def _abstract(make):
    graphdef, state = nnx.split(nnx.eval_shape(make))
    return graphdef, state


def _count(state) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(state))


def _flops(fn, *args) -> float:
    analysis = jax.jit(fn).lower(*args).cost_analysis()
    if isinstance(analysis, list | tuple):  # older jax: one dict per computation
        analysis = analysis[0]
    return float(analysis.get("flops", float("nan"))) if analysis else float("nan")


def describe(config: Any) -> dict[str, dict[str, float]]:
    """{component: {"parameters": n, "forward_gflops": f}} for text, VAE, one MTD, and
    MarDini's planner and generator (one mardini.num_frames clip at data.resolution; the
    planner's row holds its reconstruction head, the generator's the null signal)."""
    from nuwa_jax.hierarchy.models import check_hierarchy, check_mardini, vae_class
    from nuwa_jax.models import mardini
    from nuwa_jax.models.mtd import MTD
    from nuwa_jax.models.text import TextEncoder

    check_hierarchy(config)
    # The MarDini rows trace MarDini on the VAE's latents: a mismatch fails here, in
    # milliseconds, with the keys named, not in the planner after every other row's trace.
    check_mardini(config, hierarchy=False)
    L, res = config.hierarchy.frames_per_call, config.data.resolution
    factor = 2 ** (len(config.vae.block_out_channels) - 1)
    lat = (1, L, res // factor, res // factor, config.vae.latent_channels)
    tokens = jax.ShapeDtypeStruct((1, L, config.text.max_length), jnp.int32)
    sds = lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
    out: dict[str, dict[str, float]] = {}

    def row(name, make, call, *args):
        graphdef, state = _abstract(make)
        params = nnx.state(nnx.merge(graphdef, state), nnx.Param)
        flops = _flops(lambda s, *a: call(nnx.merge(graphdef, s), *a), state, *args)
        out[name] = dict(parameters=_count(params), forward_gflops=flops / 1e9)

    rngs = lambda: nnx.Rngs(0)  # noqa: E731
    row("text", lambda: TextEncoder(config.text, config.compute, rngs=rngs()),
        lambda m, t: m(t), tokens)  # fmt: skip
    vae = vae_class(config)
    row("vae_encode", lambda: vae(config.vae, config.compute, rngs=rngs()),
        lambda m, v: m.encode(v).mean, sds((1, L, res, res, 3)))  # fmt: skip
    row("vae_decode", lambda: vae(config.vae, config.compute, rngs=rngs()),
        lambda m, z: m.decode(z), sds(lat))  # fmt: skip
    # One VAE: its parameters once, under "vae"; encode and decode keep only their FLOPs.
    out["vae"] = dict(parameters=out["vae_encode"].pop("parameters"), forward_gflops=0.0)
    del out["vae_decode"]["parameters"]
    width = config.mtd.cross_attention_dim
    ctx = sds((1, L, config.text.max_length, width))
    row("mtd", lambda: MTD(config.mtd, config.compute, rngs=rngs()),
        lambda m, x, t, c, x0, k: m(x, t, c, x0, k),
        sds(lat), jax.ShapeDtypeStruct((1,), jnp.int32), ctx, sds(lat), sds(lat[:2]))  # fmt: skip

    clip = (1, mardini.dims(config.mardini).num_frames, *lat[2:])
    kept = jax.ShapeDtypeStruct(clip[:2], jnp.bool_)
    graphdef, state = _abstract(lambda: mardini.MarDini(config.mardini, config.compute,
                                                        rngs=rngs()))  # fmt: skip
    model = nnx.merge(graphdef, state)
    total = _count(nnx.state(model, nnx.Param))
    planner = _count(nnx.state(model.planner, nnx.Param))
    planner += _count(nnx.state(model.recon_head, nnx.Param))
    plan = lambda s, z, k: nnx.merge(graphdef, s).plan(z, k)  # noqa: E731
    signals = jax.eval_shape(plan, state, sds(clip), kept)
    denoise = lambda s, x, t, c, k: nnx.merge(graphdef, s).denoise(x, t, c, k)  # noqa: E731
    out["mardini_planner"] = dict(
        parameters=planner, forward_gflops=_flops(plan, state, sds(clip), kept) / 1e9
    )
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    out["mardini_generator"] = dict(
        parameters=total - planner,
        forward_gflops=_flops(denoise, state, sds(clip), t, signals, kept) / 1e9,
    )
    return out


def _define_flags() -> dict[str, flags.FlagHolder]:
    """The CLI's flags, defined only when it runs (importing `describe` defines none)."""
    return dict(
        config=cli.define_config_flag("configs/demo.py"),
        json=flags.DEFINE_string("json", None, "Also write the table to this JSON file."),
    )


def main(argv: list[str], flag_values: dict[str, flags.FlagHolder]) -> None:
    del argv
    config = flag_values["config"].value
    try:
        table = describe(config)
    except ValueError as e:  # sections of the config that do not fit together
        print(f"error: {flag_values['config'].value.preset}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    h = config.hierarchy
    levels = h.depth if not h.share_local_models else min(h.depth, 2)
    print(f"config {config.preset}: L={h.frames_per_call}, depth={h.depth}, "
          f"resolution={config.data.resolution}")  # fmt: skip
    print(f"{'component':<20}{'parameters':>16}{'forward GFLOPs':>18}")
    for name, r in table.items():
        params = f"{r['parameters']:,}" if "parameters" in r else "(vae)"
        flops = f"{r['forward_gflops']:.2f}" if name != "vae" else "-"
        print(f"{name:<20}{params:>16}{flops:>18}")
    total = table["text"]["parameters"] + table["vae"]["parameters"]
    total += levels * table["mtd"]["parameters"]
    print(f"total with {levels} MTD(s): {total:,} parameters")
    mardini = table["mardini_planner"]["parameters"] + table["mardini_generator"]["parameters"]
    print(f"MarDini (planner + generator): {mardini:,} parameters")
    if flag_values["json"].value:
        from nuwa_jax.render import write_json  # atomic: temporary name, then rename

        summary = dict(config=config.preset, components=table, total_parameters=total,
                       mardini_parameters=mardini)  # fmt: skip
        write_json(flag_values["json"].value, summary)


def run() -> None:
    """Console-script entry point (`nuwa-describe`)."""
    flag_values = _define_flags()
    parallel.initialize_distributed()
    cli.run(lambda argv: main(argv, flag_values))


if __name__ == "__main__":
    run()
