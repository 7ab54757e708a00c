"""Trainer runs -> one hierarchy bundle (nuwa_jax/hierarchy/bundle.py) for generation.

    python -m nuwa_jax.export --config=configs/demo.py --vae_workdir=runs/vae \\
        --mtd_workdirs=runs/mtd0,runs/mtd1,runs/mtd2 --out=bundles/demo [--dtype=float16]
    python -m nuwa_jax.export --config=configs/demo.py --vae_bundle=bundles/demo.json \
        --mtd_workdirs=runs/mtd0,runs/mtd_local --out=bundles/demo
    python -m nuwa_jax.export --config=configs/demo.py --random_weights --out=bundles/random
    python -m nuwa_jax.export --config=configs/demo.py --base_bundle=bundles/demo.json \
        --mardini_workdir=runs/mardini_joint --out=bundles/demo

`--config` is the bundle's config (the default config of every generation from it).
Each run's newest checkpoint gives its EMA parameters (an orbax partial restore of the
`ema` item only, into networks built sharded from the config). Before anything is read,
each run's saved config is compared with the bundle's, and any field that would make its
weights mean something else is named:
- the VAE run (train.model='vae'): the `vae` section;
- MTD run j (train.model='mtd', train.level=j; with hierarchy.share_local_models two
  runs: the global one and one local run of any level >= 1): `mtd`, `text`, `vae` (the
  latents it learned), `hierarchy`, the noise fields of `diffusion`, data.resolution,
  and `seed` where the config's seed decides a frozen network (a frozen byte encoder);
- the MarDini run (--mardini_workdir, train.model='mardini'; its module 'mardini'):
  the `mardini` section, `vae` and the noise schedule of `diffusion`. It joins the MTDs
  (MarDini locals, hierarchy.local_backbone='mardini', and the tasks), or with no
  --mtd_workdirs makes a VAE + MarDini bundle for the tasks alone.

Text encoders: with text.trainable every MTD run trained its own encoder jointly, and the
bundle keeps each MTD's own (layout 'per_level'): an MTD conditioned on another run's
encoder would read embeddings it never saw. A frozen encoder (text.trainable False) is
built from the config as the trainer built it (CLIP from text.clip_dir, or the seed's
byte encoder) and shared by every level.

The VAE must be the one whose latents the MTDs learned. Without --vae_workdir it is
built as the trainer's frozen VAE is (vae.pretrained_dir imported, else the seed + 1
initialisation). With it, the trained T-KLVAE's EMA is used, and each MTD run must have
learned from it: trained on a latent store (data.latents_dir) that this VAE run encoded
(its metadata names the run and step). With --vae_bundle the VAE is an earlier bundle's
(frozen, e.g. the shipped bundle being trained further), and each MTD run must have
learned from a latent store that `nuwa_jax.data.latents --vae_bundle` encoded with it
(compared by the sha256 of the VAE's tensors). Any other pairing is refused naming the
run and both VAEs (--allow_vae_mismatch exports anyway and records the mismatch).

--base_bundle: an existing bundle gains the MarDini run (or has its MarDini replaced) and
keeps every other network byte for byte, with its `sources` entry: the MarDini must have
learned the latents of that bundle's VAE (a latent store `nuwa_jax.data.latents
--vae_bundle` encoded with it), and --config must describe the bundle's networks.

Provenance: every run's `sources` entry has `total_steps`, the steps its network has been
trained in all; a run started from a bundle or another run (train.init_from) adds
`init_from` (the bundle and its sha256, or the run, and the steps trained before).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from absl import flags

from nuwa_jax import cli, parallel


class RunMismatchError(ValueError):
    """A trainer run cannot go into this bundle (the message names the run and why)."""


# ---------------------------------------------------------------------------------------
# Trainer runs.
# ---------------------------------------------------------------------------------------
def read_run(workdir: str | os.PathLike, config: Any) -> tuple[str, int, dict[str, Any]]:
    """(absolute workdir, newest step, saved config JSON) of a trainer run."""
    from nuwa_jax.train import checkpoint as ckpt

    return ckpt.read_run(workdir, config.train)


def _run_name(workdir: str, step: int) -> str:
    return f"{workdir} (step {step})"


def check_run_config(name: str, saved: dict[str, Any], config: Any, fields: list[str]) -> None:
    """RunMismatchError naming every field of `fields` where the run's config differs."""
    from nuwa_jax.hierarchy import bundle

    diff = bundle.differing_fields(saved, bundle.config_to_dict(config), fields)
    if diff:
        lines = "".join(f"\n  {f}: run {a!r}, bundle {b!r}" for f, a, b in diff)
        raise RunMismatchError(
            f"{name}: its config differs from the bundle's at "
            f"{', '.join(f for f, _, _ in diff)}:{lines}"
        )


def _ema_shapes(workdir: str, step: int) -> dict[str, tuple[int, ...]]:
    """{'<module>.<parameter path>': shape} of a checkpoint's EMA, from its metadata."""
    import jax
    import orbax.checkpoint as ocp
    from etils import epath

    from nuwa_jax.train import checkpoint as ckpt

    path = epath.Path(workdir) / ckpt.CHECKPOINT_DIR / str(step) / "state"
    metadata = ocp.StandardCheckpointHandler().metadata(path)
    tree = getattr(metadata, "tree", metadata)
    if not isinstance(tree, dict) or "ema" not in tree:
        raise RunMismatchError(f"{path}: no 'ema' in the saved train state")
    leaves = jax.tree_util.tree_flatten_with_path(tree["ema"])[0]
    return {
        ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in keypath): tuple(x.shape)
        for keypath, x in leaves
    }


def restore_run(workdir: str, step: int, modules: dict[str, Any]) -> None:
    """Checks keys and shapes of the run's EMA against `modules` (one error listing every
    missing, unexpected and mis-shaped key), then restores it into them, sharded."""
    from nuwa_jax.convert import common
    from nuwa_jax.train import checkpoint as ckpt

    saved = _ema_shapes(workdir, step)
    ours = {
        f"{name}.{path}": tuple(var.get_value().shape)
        for name, module in modules.items()
        for path, var in common.param_paths(module).items()
    }
    missing = sorted(f"{k} (shape {ours[k]})" for k in set(ours) - set(saved))
    unexpected = sorted(set(saved) - set(ours))
    misshaped = sorted(
        f"{k}: checkpoint {saved[k]}, model {ours[k]}"
        for k in set(ours) & set(saved)
        if saved[k] != ours[k]
    )
    if missing or unexpected or misshaped:
        raise common.fit_error(
            f"{_run_name(workdir, step)} ema", f"{sorted(modules)}", missing, unexpected, misshaped
        )
    ckpt.restore_ema(workdir, modules, step)


def _same_path(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and os.path.realpath(a) == os.path.realpath(b)


def run_vae(saved: dict[str, Any]) -> dict[str, Any]:
    """Which VAE's latents an MTD run learned: its latent store's encoder, or its frozen VAE."""
    data, vae = saved.get("data", {}), saved.get("vae", {})
    if data.get("latents_dir"):
        path = os.path.join(data["latents_dir"], "metadata.json")
        try:
            with open(path) as f:
                latent_vae = json.load(f).get("latent", {}).get("vae", {})
        except (OSError, json.JSONDecodeError) as e:
            return dict(weights="unknown", latents_dir=data["latents_dir"], error=str(e))
        keep = ("weights", "workdir", "step", "seed", "pretrained_dir", "path", "sha256",
                "vae_sha256")  # fmt: skip
        return dict({k: latent_vae[k] for k in keep if k in latent_vae},
                    latents_dir=data["latents_dir"])  # fmt: skip
    if vae.get("pretrained_dir"):
        return dict(weights="pretrained", pretrained_dir=vae["pretrained_dir"])
    return dict(weights="random", seed=saved.get("seed", 0) + 1)


def same_vae(learned: dict[str, Any], bundled: dict[str, Any]) -> bool:
    """Whether the VAE an MTD learned from is the bundle's (same run and step, same seed,
    the same pretrained directory, or the same bundle VAE: equal sha256 of the VAE's own
    tensors, else of the whole bundle)."""
    kind = learned.get("weights")
    if kind != bundled.get("weights"):
        return False
    if kind == "bundle":
        if learned.get("vae_sha256") and bundled.get("vae_sha256"):
            return learned["vae_sha256"] == bundled["vae_sha256"]
        return bool(learned.get("sha256")) and learned.get("sha256") == bundled.get("sha256")
    if kind == "checkpoint":
        return _same_path(learned.get("workdir"), bundled.get("workdir")) and learned.get(
            "step"
        ) == bundled.get("step")
    if kind == "random":
        return learned.get("seed") == bundled.get("seed")
    if kind == "pretrained":
        return _same_path(learned.get("pretrained_dir"), bundled.get("pretrained_dir"))
    return False


def run_source(workdir: str, step: int, module: str, **extra: Any) -> dict[str, Any]:
    """The manifest `sources` entry of a run's `module`: the run and step, its EMA, and
    `total_steps`, with `init_from` (a bundle or another run, and the steps the module had
    been trained before this run) when the run started from one (trainer.INIT_FROM_FILE)."""
    from nuwa_jax.train import trainer

    source = dict(kind="checkpoint", workdir=workdir, step=step, params="ema", **extra)
    record = trainer.read_init_from(workdir)
    prior = record.get("components", {}).get(module) if record else None
    if prior is not None:
        origin = {k: record[k] for k in ("bundle", "sha256", "workdir", "step") if k in record}
        source["init_from"] = dict(origin, **prior)
    source["total_steps"] = step + int((prior or {}).get("steps", 0))
    return source


def bundle_vae_source(manifest: dict[str, Any], tensors: dict[str, Any]) -> dict[str, Any]:
    """The `sources` entry of a VAE taken from a bundle: that bundle, its steps in total and
    where the VAE first came from (`origin`, not nested bundle within bundle)."""
    from nuwa_jax.hierarchy import bundle

    old = manifest.get("sources", {}).get("vae", {})
    vae = bundle.vae_identity(manifest, tensors)
    return dict(
        kind="bundle",
        bundle=vae["path"],
        sha256=vae["sha256"],
        vae_sha256=vae["vae_sha256"],
        total_steps=vae["steps"],
        origin=old.get("origin", old) if old.get("kind") == "bundle" else old,
    )


# ---------------------------------------------------------------------------------------
# Export.
# ---------------------------------------------------------------------------------------
def mtd_runs_expected(config: Any) -> int:
    """MTD runs a bundle takes: one per level, or global + one shared local."""
    h = config.hierarchy
    return 2 if h.share_local_models and h.depth > 1 else h.depth


def mtd_fields(config: Any, saved: dict[str, Any]) -> list[str]:
    """Fields an MTD run must share with the bundle's config."""
    from nuwa_jax.hierarchy import bundle

    ours = bundle.config_to_dict(config)
    sections = {"mtd": ("dropout",), "text": ("clip_dir",), "vae": ("pretrained_dir",),
                "hierarchy": ("local_backbone",)}  # fmt: skip
    fields = bundle.section_fields(sections, ours, saved) + list(bundle.NOISE_FIELDS)
    fields.append("data.resolution")
    if not config.text.trainable and config.text.kind == "byte":
        fields.append("seed")  # the frozen byte encoder is the seed's initialisation
    return fields


def mardini_fields(config: Any, saved: dict[str, Any]) -> list[str]:
    """Fields a MarDini run must share with the bundle's config (its widths, the VAE whose
    latents it learned, the noise schedule; not the MTDs' prediction)."""
    from nuwa_jax.hierarchy import bundle

    sections = {"mardini": bundle.ARCHITECTURE_SECTIONS["mardini"], "vae": ("pretrained_dir",)}
    fields = bundle.section_fields(sections, bundle.config_to_dict(config), saved)
    return fields + [f for f in bundle.NOISE_FIELDS if f not in bundle.MTD_NOISE_FIELDS]


def export_hierarchy(
    config: Any,
    out: str | os.PathLike,
    *,
    vae_workdir: str | None = None,
    vae_bundle: str | None = None,
    mtd_workdirs: Sequence[str] = (),
    mardini_workdir: str | None = None,
    random_weights: bool = False,
    dtype: str = "bfloat16",
    allow_vae_mismatch: bool = False,
    base_bundle: str | None = None,
) -> dict[str, Any]:
    """Builds the hierarchy from trainer runs (or randomly) and writes it as a bundle.

    Returns the manifest. Every run is checked (config fields, train.model / level, keys
    and shapes, the VAE its latents came from) before anything is written. `vae_bundle`:
    the VAE is that bundle's (read whole first, so `out` may be the same bundle).
    `base_bundle`: that bundle's networks unchanged plus the MarDini run (join_base).
    """

    from nuwa_jax.hierarchy import bundle
    from nuwa_jax.hierarchy.models import HierarchyModels, check_hierarchy, vae_class
    from nuwa_jax.models.text import TextEncoder

    check_hierarchy(config)
    mtd_workdirs = [d for d in mtd_workdirs if d]
    if random_weights and (vae_workdir or vae_bundle or mtd_workdirs or mardini_workdir):
        raise ValueError("--random_weights exports the config's initialisation: give no workdirs")
    if vae_workdir and vae_bundle:
        raise ValueError("give one of --vae_workdir and --vae_bundle, not both")
    if base_bundle:
        if vae_workdir or vae_bundle or mtd_workdirs or random_weights or not mardini_workdir:
            raise ValueError(
                "--base_bundle takes --mardini_workdir alone: every other network is the "
                "base bundle's, unchanged"
            )
        vae_bundle = base_bundle  # its VAE: the one the MarDini must have learned
    expected = mtd_runs_expected(config)
    shared_local = expected != config.hierarchy.depth  # global + one shared local MTD
    backbone = config.hierarchy.get("local_backbone", "mtd")
    if not random_weights and backbone == "mardini" and not mardini_workdir:
        raise ValueError("hierarchy.local_backbone='mardini' needs --mardini_workdir")
    mardini_only = bool(mardini_workdir) and not mtd_workdirs  # VAE + MarDini, for the tasks
    if not random_weights and not mardini_only and len(mtd_workdirs) != expected:
        what = "global, then the shared local MTD" if shared_local else "one per level"
        raise ValueError(
            f"--mtd_workdirs: {len(mtd_workdirs)} runs given, the hierarchy needs {expected} "
            f"({what}, level 0 first), or --random_weights"
        )
    mesh, rules = parallel.make_mesh(config.mesh), parallel.logical_rules(config)
    per_level = bool(config.text.trainable)
    if random_weights:
        models = HierarchyModels.create(config, mesh, rules, per_level_text=per_level)
        origin = dict(kind="random", seed=int(config.seed), by="HierarchyModels.create")
        sources = {name: dict(origin) for name in models.components()}
        return bundle.write_bundle(models, config, out, dtype=dtype, sources=sources)

    # Every run: read and checked first, nothing built or restored until all of them fit.
    if vae_workdir:
        workdir, step, saved = read_run(vae_workdir, config)
        name = _run_name(workdir, step)
        model = saved.get("train", {}).get("model")
        if model != "vae":
            raise RunMismatchError(f"{name}: train.model={model!r}, --vae_workdir needs 'vae'")
        vae_fields = bundle.section_fields(
            {"vae": ("pretrained_dir",)}, saved, bundle.config_to_dict(config)
        )
        check_run_config(name, saved, config, vae_fields)
        bundled_vae = dict(weights="checkpoint", workdir=workdir, step=step)
        vae_source = run_source(workdir, step, "vae")
    elif vae_bundle:
        vae_manifest, vae_tensors = bundle.read_bundle(vae_bundle)
        if not any(k.startswith("vae/") for k in vae_tensors):
            raise bundle.BundleError(f"{vae_manifest['weights_path']}: no component 'vae'")
        vae_source = bundle_vae_source(vae_manifest, vae_tensors)
        bundled_vae = dict(weights="bundle", path=vae_source["bundle"])
        bundled_vae.update({k: vae_source[k] for k in ("sha256", "vae_sha256")})
    elif config.vae.pretrained_dir:
        bundled_vae = dict(weights="pretrained", pretrained_dir=config.vae.pretrained_dir)
        vae_source = dict(kind="pretrained", dir=config.vae.pretrained_dir)
    else:
        bundled_vae = dict(weights="random", seed=int(config.seed) + 1)
        vae_source = dict(kind="random", seed=int(config.seed) + 1)

    def learned_vae(name: str, saved: dict[str, Any], what: str) -> dict[str, Any]:
        """The VAE whose latents the run (an MTD or a MarDini) learned; refused unless it
        is the bundle's (or --allow_vae_mismatch)."""
        learned = run_vae(saved)
        if not same_vae(learned, bundled_vae):
            message = (
                f"{name}: this {what} learned the latents of VAE {learned}, but the bundle's "
                f"VAE is {bundled_vae}"
            )
            if not allow_vae_mismatch:
                raise RunMismatchError(
                    message + f" (train the {what} on a latent store encoded by the bundle's "
                    "VAE, or export without --vae_workdir / --vae_bundle; --allow_vae_mismatch "
                    "exports anyway)"
                )
            logging.warning("%s (exported anyway: --allow_vae_mismatch)", message)
        return learned

    mtd_runs = []  # (workdir, step, source), index = the bundle's MTD (1: a shared local one)
    for index, directory in enumerate(mtd_workdirs):
        workdir, step, saved = read_run(directory, config)
        name = _run_name(workdir, step)
        train = saved.get("train", {})
        if train.get("model") != "mtd":
            raise RunMismatchError(
                f"{name}: train.model={train.get('model')!r}, MTD run {index} needs 'mtd'"
            )
        level = train.get("level")
        want = ">= 1" if shared_local and index == 1 else str(index)
        if not (isinstance(level, int) and (level >= 1 if want == ">= 1" else level == index)):
            raise RunMismatchError(
                f"{name}: train.level={level!r}, but --mtd_workdirs position {index} "
                f"takes the MTD of level {want}"
            )
        check_run_config(name, saved, config, mtd_fields(config, saved))
        learned = learned_vae(name, saved, "MTD")
        mtd_runs.append((workdir, step, dict(level=level, vae=learned)))
    mardini_run = None
    if mardini_workdir:
        workdir, step, saved = read_run(mardini_workdir, config)
        name = _run_name(workdir, step)
        model = saved.get("train", {}).get("model")
        if model != "mardini":
            raise RunMismatchError(
                f"{name}: train.model={model!r}, --mardini_workdir needs 'mardini'"
            )
        check_run_config(name, saved, config, mardini_fields(config, saved))
        learned = learned_vae(name, saved, "MarDini")
        mardini_run = (workdir, step, run_source(workdir, step, "mardini", vae=learned))
    if base_bundle:
        return join_base(config, out, vae_manifest, vae_tensors, mardini_run, dtype)

    # Abstract networks (nothing initialised): the runs' parameters are restored into them.
    models = HierarchyModels.create(config, mesh, rules, per_level_text=per_level, abstract=True,
                                    mardini=bool(mardini_run), mtds=not mardini_only)  # fmt: skip
    mtd_names = [n for n in models.components() if n.startswith("mtd_")]
    runs = []  # (workdir, step, {name in the run: network})
    sources: dict[str, Any] = {"vae": vae_source}
    if vae_workdir:
        runs.append((vae_source["workdir"], vae_source["step"], {"vae": models.vae}))
    for index, (workdir, step, about) in enumerate(mtd_runs):
        modules = {"mtd": models.mtds[index]}
        sources[mtd_names[index]] = run_source(workdir, step, "mtd", **about)
        if config.text.trainable:
            modules["text"] = models.text_of(index)
            sources["text" + mtd_names[index][3:]] = run_source(
                workdir, step, "text", **about, trained_with="mtd"
            )
        runs.append((workdir, step, modules))
    if mardini_run is not None:
        runs.append((mardini_run[0], mardini_run[1], {"mardini": models.mardini}))
        sources["mardini"] = mardini_run[2]

    # Networks no run trained: built as the trainer builds its frozen ones.
    if not config.text.trainable and not mardini_only:
        sections = (config.text, config.compute)
        text = parallel.create_network(TextEncoder, sections, mesh, rules, config.seed)
        if config.text.kind == "clip":
            from nuwa_jax.convert.clip import load_clip_weights

            load_clip_weights(text, config.text.clip_dir)
            sources["text"] = dict(kind="clip", dir=config.text.clip_dir)
        else:
            sources["text"] = dict(kind="random", seed=int(config.seed), frozen=True)
        models = dataclasses.replace(models, text=text)
    if vae_bundle:
        bundle.assign_components(vae_manifest, vae_tensors, config, {"vae": models.vae},
                                 hint="--vae_bundle: config.vae must be the bundle's")  # fmt: skip
    elif not vae_workdir:
        sections = (config.vae, config.compute)
        vae = parallel.create_network(vae_class(config), sections, mesh, rules, config.seed + 1)
        if config.vae.pretrained_dir:
            from nuwa_jax.convert import common as convert_common
            from nuwa_jax.convert import vae as convert_vae

            weights = os.path.join(config.vae.pretrained_dir, convert_vae.WEIGHTS_FILE)
            convert_vae.import_vae_weights(
                vae, convert_common.load_safetensors(weights), source=weights
            )
        models = dataclasses.replace(models, vae=vae)
    for workdir, step, modules in runs:
        restore_run(workdir, step, modules)
        logging.info("restored the EMA of %s into %s", _run_name(workdir, step), sorted(modules))
    return bundle.write_bundle(models, config, out, dtype=dtype, sources=sources)


def join_base(
    config: Any,
    out: str | os.PathLike,
    manifest: dict[str, Any],
    tensors: dict[str, Any],
    mardini_run: tuple[str, int, dict[str, Any]],
    dtype: str,
) -> dict[str, Any]:
    """Writes the bundle of `manifest` / `tensors` with the (checked) MarDini run added, or
    in place of its MarDini: every other tensor and `sources` entry is kept as it is
    (BundleError, before anything is written, if one would change)."""
    import numpy as np

    from nuwa_jax.hierarchy import bundle
    from nuwa_jax.hierarchy.models import HierarchyModels

    weights = manifest["weights_path"]
    if dtype != manifest["dtype"]:
        raise ValueError(
            f"--dtype={dtype}: {weights} is {manifest['dtype']}, and its networks stay as they are"
        )
    held = {k.split("/", 1)[0] for k in tensors} - {"mardini"}
    mesh, rules = parallel.make_mesh(config.mesh), parallel.logical_rules(config)
    models = HierarchyModels.create(
        config, mesh, rules, per_level_text=manifest["text_layout"] == "per_level",
        abstract=True, mardini=True, mtds="mtd_global" in held,
    )  # fmt: skip
    kept = {n: m for n, m in models.components().items() if n != "mardini"}
    if set(kept) != held:
        raise bundle.BundleError(
            f"{weights} holds {', '.join(sorted(held))}, but this config's hierarchy has "
            f"{', '.join(sorted(kept))}: --config must describe the base bundle"
        )
    hint = "--base_bundle: --config must describe the base bundle"
    bundle.assign_components(manifest, tensors, config, kept, hint=hint)
    workdir, step, source = mardini_run
    restore_run(workdir, step, {"mardini": models.mardini})
    logging.info("restored the EMA of %s into the MarDini", _run_name(workdir, step))
    new = bundle.bundle_tensors(models, dtype)
    changed = [k for k, v in tensors.items() if not k.startswith("mardini/")
               and (k not in new or new[k].tobytes() != np.asarray(v).tobytes())]  # fmt: skip
    if changed:
        raise bundle.BundleError(f"{weights}: joining the MarDini would change {changed[:8]}")
    sources = {k: v for k, v in manifest.get("sources", {}).items() if k != "mardini"}
    sources["mardini"] = dict(source, base_bundle=dict(path=weights, sha256=manifest["sha256"]))
    return bundle.write_bundle(models, config, out, dtype=dtype, sources=sources)


# ---------------------------------------------------------------------------------------
# CLI.
# ---------------------------------------------------------------------------------------
def _define_flags() -> dict[str, flags.FlagHolder]:
    """The CLI's flags, defined only when it runs (importing the library defines none)."""
    return dict(
        config=cli.define_config_flag(),
        vae=flags.DEFINE_string(
            "vae_workdir", None, "Trainer run of the T-KLVAE (train.model=vae)."
        ),
        vae_bundle=flags.DEFINE_string(
            "vae_bundle",
            None,
            "A hierarchy bundle (.json, .safetensors or stem) whose frozen VAE to ship; may be "
            "--out itself.",
        ),
        mtds=flags.DEFINE_list(
            "mtd_workdirs",
            None,
            "Trainer runs of the MTDs, level 0 (global) first, comma-separated.",
        ),
        mardini=flags.DEFINE_string(
            "mardini_workdir", None, "Trainer run of MarDini (train.model=mardini), optional."
        ),
        out=flags.DEFINE_string("out", None, "Bundle path: <dir>/<name> (.safetensors and .json)."),
        dtype=flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float16"], "Stored dtype."),
        random=flags.DEFINE_bool("random_weights", False, "Export the config's random init."),
        allow_vae=flags.DEFINE_bool(
            "allow_vae_mismatch", False, "Export even if an MTD learned another VAE's latents."
        ),
        base=flags.DEFINE_string(
            "base_bundle",
            None,
            "An existing bundle (may be --out itself) that gains --mardini_workdir's MarDini, "
            "every other network unchanged.",
        ),
    )


def main(argv: list[str], flag_values: dict[str, flags.FlagHolder]) -> None:
    if len(argv) > 1:
        raise SystemExit(f"error: unexpected arguments {argv[1:]}")
    if not flag_values["out"].value:
        print("error: --out=PATH is required", file=sys.stderr)
        raise SystemExit(2)
    try:
        manifest = export_hierarchy(
            flag_values["config"].value,
            flag_values["out"].value,
            vae_workdir=flag_values["vae"].value,
            vae_bundle=flag_values["vae_bundle"].value,
            mtd_workdirs=flag_values["mtds"].value or (),
            mardini_workdir=flag_values["mardini"].value,
            random_weights=flag_values["random"].value,
            dtype=flag_values["dtype"].value,
            allow_vae_mismatch=flag_values["allow_vae"].value,
            base_bundle=flag_values["base"].value,
        )
    except (ValueError, FileNotFoundError) as e:  # BundleError, RunMismatchError, key errors
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    from nuwa_jax.hierarchy.bundle import bundle_paths

    weights, manifest_path = bundle_paths(flag_values["out"].value)
    size = manifest.get("size_bytes", 0) / 1e6
    print(f"{weights}: {manifest['total_parameters']:,} parameters, {size:.1f} MB "
          f"({manifest['dtype']}), sha256 {manifest.get('sha256')}")  # fmt: skip
    print(f"{manifest_path}: manifest")
    for name, count in manifest["parameters"].items():
        source = manifest["sources"].get(name, {})
        where = source.get("workdir") or source.get("dir") or source.get("bundle")
        where = where or source.get("kind")
        step = f" step {source['step']}" if "step" in source else ""
        print(f"  {name:>12}: {count:>12,}  {where}{step}")


def run() -> None:
    """Console-script entry point."""
    flag_values = _define_flags()
    parallel.initialize_distributed()
    cli.run(lambda argv: main(argv, flag_values))


if __name__ == "__main__":
    run()
