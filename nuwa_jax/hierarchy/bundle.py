"""A hierarchy bundle: every weight generation needs, in one checksummed file set.

    <name>.safetensors   the parameters, flat keys '<component>/<dotted parameter path>',
                         16-bit (bfloat16 or float16); its metadata holds the config JSON
    <name>.json          the manifest: format, config, dtype, parameters per component,
                         sha256 and size of the weights file, and where every component
                         came from (trainer run and step, or random / pretrained)

Components are `HierarchyModels.components()`: 'vae', 'mtd_global', 'mtd_local1', ...
('mtd_local' for one local MTD shared by the local levels of a depth >= 3 hierarchy), and
the text encoder: 'text' when one encoder serves every level (frozen: CLIP or a frozen
byte encoder), or 'text_global', 'text_local1', ... when `text.trainable`: the trainer
trains a byte encoder jointly with each level's MTD, each MTD learns to read its own
encoder's embeddings, so the bundle keeps one encoder per MTD (manifest `text_layout`
'per_level', else 'shared'). 'mardini' (optional): MarDini, for the MarDini tasks and for
hierarchy.local_backbone='mardini'; a bundle of just 'vae' and 'mardini' serves the tasks.

Written by `nuwa_jax.export` (trainer runs -> bundle). Writing is atomic: the weights and
the manifest are written under temporary names, the weights renamed first and the
manifest last, so a bundle exists exactly when its manifest does, and an interrupted
export never leaves a manifest beside weights it does not describe (and never touches
an older bundle at the same path until the new files are complete).

Loading (`load_bundle`) verifies the weights' sha256 against the manifest first, checks
that the generation config's architecture fields (ARCHITECTURE_SECTIONS, NOISE_FIELDS)
equal the bundle's, then assigns every tensor by name (nuwa_jax.convert.common: one error
lists every missing, unexpected and mis-shaped key), cast to compute.param_dtype and
placed sharded on the mesh. The config for generation is the bundle's
(`generation_config`), with command-line overrides on top; overrides of architecture
fields must equal the bundle's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from nuwa_jax import parallel
from nuwa_jax.convert import common
from nuwa_jax.hierarchy.models import HierarchyModels

FORMAT = "nuwa-jax-hierarchy-bundle"
FORMAT_VERSION = 1
WEIGHTS_SUFFIX = ".safetensors"
MANIFEST_SUFFIX = ".json"
DTYPES = ("bfloat16", "float16")
TEXT_LAYOUTS = ("shared", "per_level")

# Config fields the weights fix. Sections: every field but those named (which do not
# change what the weights compute: where pretrained weights came from, training-only
# switches). The noise fields define what the MTDs learned to predict.
ARCHITECTURE_SECTIONS: dict[str, tuple[str, ...]] = {
    "vae": ("pretrained_dir", "scaling_factor", "shift_factor"),  # the last two: LATENT_FIELDS
    "mtd": ("dropout",),
    "text": ("clip_dir", "trainable", "allow_truncation"),
    "hierarchy": ("local_backbone",),  # which local model runs is a generation choice
    # MarDini takes clips of any length (num_frames), the rest trains or samples it.
    "mardini": (
        "num_frames",
        "signal_dropout",
        "sampler",
        "guidance",
        "task_share",
        "train_tasks",
        "train_levels",
        "curriculum",
    ),
}
# The diffusion latents' affine map, latents = (z - shift_factor) * scaling_factor: not
# the VAE's weights (a VAE loads whatever they are), but what every latent diffusion
# model (MTD, MarDini) learned to read.
LATENT_FIELDS = ("vae.scaling_factor", "vae.shift_factor")
NOISE_FIELDS = (
    "diffusion.schedule",
    "diffusion.num_train_timesteps",
    "diffusion.beta_start",
    "diffusion.beta_end",
    "diffusion.zero_terminal_snr",
    "diffusion.prediction",
    "diffusion.given_frames",
)
# What the MTDs alone learned (MarDini has its own prediction and always clean [REF] frames).
MTD_NOISE_FIELDS = ("diffusion.prediction", "diffusion.given_frames")
# Fields added after bundles and runs were first saved, with the value that a stored config
# without them means (what the code did before the field existed). Filled in wherever a
# stored config is read or compared, so older bundles and runs keep loading as they were.
LEGACY_DEFAULTS: dict[str, Any] = {
    "diffusion.zero_terminal_snr": False,
    "diffusion.given_frames": "noised",
    "mtd.condition_input": "none",
}


class BundleError(ValueError):
    """A bundle cannot be written or used (the message names the file and the problem)."""


class ChecksumError(BundleError):
    """The weights file's sha256 differs from the manifest's."""


class ConfigMismatchError(BundleError):
    """A config differs from the bundle's (or a trainer run's) in a field the weights fix."""


# ---------------------------------------------------------------------------------------
# Paths and configs.
# ---------------------------------------------------------------------------------------
def bundle_paths(path: str | os.PathLike) -> tuple[str, str]:
    """(weights, manifest) of a bundle given as its stem, weights file or manifest."""
    path = os.path.abspath(os.fspath(path))
    for suffix in (WEIGHTS_SUFFIX, MANIFEST_SUFFIX):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    return path + WEIGHTS_SUFFIX, path + MANIFEST_SUFFIX


def config_to_dict(config: Any) -> dict[str, Any]:
    """The config as plain JSON data (tuples become lists), as trainer checkpoints store it."""
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.loads(json.dumps(data))


def _typed_like(value: Any, template: Any) -> Any:
    """JSON lists back to the template's sequence type (configs use tuples)."""
    if isinstance(value, list):
        kind = list if isinstance(template, list) else tuple
        inner = template[0] if isinstance(template, list | tuple) and template else None
        return kind(_typed_like(v, inner) for v in value)
    return value


def _update(config: ml_collections.ConfigDict, data: Mapping[str, Any]) -> None:
    with config.unlocked():
        for key, value in data.items():
            current = config.get(key)
            if isinstance(current, ml_collections.ConfigDict) and isinstance(value, dict):
                _update(current, value)
            elif isinstance(value, dict):
                config[key] = ml_collections.ConfigDict(value)
            else:
                config[key] = _typed_like(value, current)


def config_from_dict(data: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A ConfigDict from stored config JSON, typed like its preset's (tuples, placeholders)."""
    from configs import common as presets

    preset = data.get("preset")
    config = presets.base(preset) if preset in presets.PRESETS else ml_collections.ConfigDict()
    _update(config, with_legacy_defaults(data))
    return config


def with_legacy_defaults(data: Mapping[str, Any]) -> dict[str, Any]:
    """Stored config JSON with every LEGACY_DEFAULTS field it lacks filled in (only in
    sections it has): what a bundle or run saved before that field existed computes."""
    out = json.loads(json.dumps(dict(data)))
    for dotted, value in LEGACY_DEFAULTS.items():
        section, key = dotted.split(".")
        if isinstance(out.get(section), dict) and key not in out[section]:
            out[section][key] = value
    return out


_ABSENT = "<absent>"


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def section_fields(
    sections: Mapping[str, tuple[str, ...]], *configs: Mapping[str, Any]
) -> list[str]:
    """Dotted fields of `sections` (minus each one's excluded names) in any of `configs`."""
    fields = set()
    for data in configs:
        for section, excluded in sections.items():
            for key in data.get(section, {}) or {}:
                if key not in excluded:
                    fields.add(f"{section}.{key}")
    return sorted(fields)


def _resolved_widths(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with its `mardini` section's width fields resolved (models.mardini.dims);
    unchanged where there is no such section or it does not resolve (the caller's check
    then names the raw fields)."""
    section = data.get("mardini")
    if not isinstance(section, Mapping):
        return data
    from nuwa_jax.models import mardini as mardini_lib

    try:
        widths = dataclasses.asdict(mardini_lib.dims(ml_collections.ConfigDict(dict(section))))
    except (KeyError, AttributeError, TypeError, ValueError):
        return data
    return {**data, "mardini": {**section, **widths}}


def differing_fields(
    ours: Mapping[str, Any], theirs: Mapping[str, Any], fields: list[str] | tuple[str, ...]
) -> list[tuple[str, Any, Any]]:
    """(field, ours, theirs) for every dotted field whose JSON values differ. MarDini's
    width fields compare resolved (0 reads MARDINI_SIZES[size]: `latent_channels=0` and
    `latent_channels=4` agree when the size gives 4)."""
    a = _flatten(_resolved_widths(with_legacy_defaults(config_to_dict(ours))))
    b = _flatten(_resolved_widths(with_legacy_defaults(config_to_dict(theirs))))
    return [
        (f, a.get(f, _ABSENT), b.get(f, _ABSENT))
        for f in fields
        if a.get(f, _ABSENT) != b.get(f, _ABSENT)
    ]


def architecture_fields(*configs: Mapping[str, Any]) -> list[str]:
    """The fields a bundle's weights fix (ARCHITECTURE_SECTIONS, LATENT_FIELDS, NOISE_FIELDS)."""
    return section_fields(ARCHITECTURE_SECTIONS, *configs) + list(LATENT_FIELDS + NOISE_FIELDS)


GENERATION_HINT = (
    "the bundle's config is the default for generation; architecture fields cannot be overridden"
)


def check_architecture(
    config: Any,
    bundle_config: Mapping[str, Any],
    source: str,
    fields: list[str] | None = None,
    hint: str = GENERATION_HINT,
) -> None:
    """Raises ConfigMismatchError naming every architecture field (or every one of
    `fields`) where `config` differs from the bundle's."""
    ours = config_to_dict(config)
    fields = architecture_fields(ours, bundle_config) if fields is None else fields
    diff = differing_fields(ours, bundle_config, fields)
    if diff:
        lines = "".join(f"\n  {f}: config {a!r}, bundle {b!r}" for f, a, b in diff)
        raise ConfigMismatchError(
            f"{source}: the config differs from the weights' at "
            f"{', '.join(f for f, _, _ in diff)}:{lines}\n({hint})"
        )


def component_fields(
    components: Sequence[str], *configs: Mapping[str, Any], latent_scale: bool = True
) -> list[str]:
    """The architecture fields that fix the weights of `components` alone: a VAE its
    section; a text encoder its own; an MTD its own, the text width, the VAE whose
    latents it reads (with LATENT_FIELDS unless `latent_scale` is False: weights that
    start a training run may adapt to another latent scale), the hierarchy's windows and
    the noise fields; MarDini its own, the VAE and the noise schedule (it has its own
    prediction)."""
    kinds = {c.split("_", 1)[0] for c in components}
    sections = {"vae"} if kinds - {"text"} else set()
    sections |= {"text"} & kinds
    if "mtd" in kinds:
        sections |= {"mtd", "text", "hierarchy"}
    if "mardini" in kinds:
        sections.add("mardini")
    chosen = {s: ARCHITECTURE_SECTIONS.get(s, ()) for s in sorted(sections)}
    noise = list(NOISE_FIELDS) if "mtd" in kinds else []
    if "mardini" in kinds and not noise:
        noise = [f for f in NOISE_FIELDS if f not in MTD_NOISE_FIELDS]
    latent = list(LATENT_FIELDS) if latent_scale and kinds & {"mtd", "mardini"} else []
    return section_fields(chosen, *configs) + latent + noise


# ---------------------------------------------------------------------------------------
# Writing.
# ---------------------------------------------------------------------------------------
def _host(x: jax.Array) -> np.ndarray:
    if not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def bundle_tensors(models: HierarchyModels, dtype: str) -> dict[str, np.ndarray]:
    """{'<component>/<parameter path>': host array in `dtype`} of every network, once each."""
    if dtype not in DTYPES:
        raise BundleError(f"bundle dtype {dtype!r}: choose one of {DTYPES}")
    import ml_dtypes

    np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(np.float16)
    out = {}
    for name, module in models.components().items():
        for path, var in common.param_paths(module).items():
            if not isinstance(var.get_value(), jax.Array):
                raise BundleError(f"{name}/{path}: never set (an abstract network's parameter)")
            value = _host(var.get_value()).astype(np.float32)
            if dtype == "float16" and np.abs(value).max(initial=0.0) > np.finfo(np.float16).max:
                raise BundleError(
                    f"{name}/{path}: values up to {np.abs(value).max():.3g} overflow float16; "
                    "export with dtype bfloat16"
                )
            out[f"{name}/{path}"] = value.astype(np_dtype)
    return out


def _write_json(path: str, data: Any) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _temp_path(directory: str, prefix: str, suffix: str) -> str:
    fd, path = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=suffix)
    os.close(fd)
    return path


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def text_layout(models: HierarchyModels) -> str:
    return "per_level" if models.level_texts else "shared"


def write_bundle(
    models: HierarchyModels,
    config: Any,
    path: str | os.PathLike,
    *,
    dtype: str = "bfloat16",
    sources: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Writes `models` as a bundle at `path` (stem, or either file name); returns the manifest.

    Atomic: both files are complete under temporary names before any final name changes;
    an older bundle at the same path stays intact until then. `sources`: where each
    component came from (recorded in the manifest). Process 0 writes; every process
    takes part in gathering sharded weights.
    """
    import safetensors.numpy

    weights, manifest_path = bundle_paths(path)
    directory = os.path.dirname(weights)
    stem = os.path.basename(weights)[: -len(WEIGHTS_SUFFIX)]
    config_json = config_to_dict(config)
    tensors = bundle_tensors(models, dtype)
    manifest: dict[str, Any] = dict(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        weights_file=os.path.basename(weights),
        dtype=dtype,
        text_layout=text_layout(models),
        parameters=models.parameter_counts(),
        total_parameters=int(sum(models.parameter_counts().values())),
        sources=dict(sources or {}),
        config=config_json,
    )
    if jax.process_index() != 0:
        return manifest
    os.makedirs(directory, exist_ok=True)
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(config_json, sort_keys=True),
        "text_layout": manifest["text_layout"],
    }
    tmp_weights = _temp_path(directory, f".{stem}.", ".weights.tmp")
    tmp_manifest = _temp_path(directory, f".{stem}.", ".manifest.tmp")
    try:
        safetensors.numpy.save_file(tensors, tmp_weights, metadata=metadata)
        os.chmod(tmp_weights, 0o644)  # mkstemp's files are private; a bundle is shared
        _fsync(tmp_weights)
        manifest["sha256"] = common.sha256_file(tmp_weights)
        manifest["size_bytes"] = os.path.getsize(tmp_weights)
        _write_json(tmp_manifest, manifest)
        os.chmod(tmp_manifest, 0o644)
        # Both complete: retire the old bundle (its manifest first), then publish.
        if os.path.exists(manifest_path):
            os.remove(manifest_path)
        os.replace(tmp_weights, weights)
        os.replace(tmp_manifest, manifest_path)
        _fsync(directory)
    finally:
        for tmp in (tmp_weights, tmp_manifest):
            if os.path.exists(tmp):
                os.remove(tmp)
    logging.info(
        "bundle %s: %d tensors, %.1f MB (%s), sha256 %s",
        weights, len(tensors), manifest["size_bytes"] / 1e6, dtype, manifest["sha256"],
    )  # fmt: skip
    return manifest


# ---------------------------------------------------------------------------------------
# Reading.
# ---------------------------------------------------------------------------------------
def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the bundle at `path` (stem or either file), format-checked."""
    weights, manifest_path = bundle_paths(path)
    if not os.path.isfile(manifest_path):
        hint = (
            f" ({weights} exists without it: an export that did not finish?)"
            if os.path.exists(weights)
            else ""
        )
        raise FileNotFoundError(f"no bundle manifest at {manifest_path}{hint}")
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
    except json.JSONDecodeError as e:
        raise BundleError(f"{manifest_path}: not a JSON manifest: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{manifest_path}: not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{manifest_path}: format_version {manifest.get('format_version')!r}, this code "
            f"reads {FORMAT_VERSION}"
        )
    for key in ("sha256", "config", "text_layout", "dtype"):
        if key not in manifest:
            raise BundleError(f"{manifest_path}: no {key!r}")
    if manifest["text_layout"] not in TEXT_LAYOUTS:
        raise BundleError(f"{manifest_path}: text_layout {manifest['text_layout']!r}")
    manifest["manifest_path"] = manifest_path
    manifest["weights_path"] = weights
    return manifest


def verify_checksum(manifest: Mapping[str, Any]) -> None:
    """Raises ChecksumError (naming the file and both hashes) unless the weights match."""
    weights = manifest["weights_path"]
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"bundle weights {weights} (named by {manifest['manifest_path']}) "
                                "do not exist")  # fmt: skip
    actual = common.sha256_file(weights)
    if actual != manifest["sha256"]:
        raise ChecksumError(
            f"{weights}: sha256 {actual} does not match {manifest['sha256']} recorded in "
            f"{manifest['manifest_path']}: the file is damaged or belongs to another bundle"
        )


def generation_config(
    path: str | os.PathLike, overrides: Mapping[str, Any] | None = None
) -> ml_collections.ConfigDict:
    """The bundle's config with `overrides` ({'a.b': value}) applied.

    Fields the weights fix (architecture_fields) may be overridden only to their own
    value; any other is a ConfigMismatchError naming the field.
    """
    manifest = read_manifest(path)
    config = config_from_dict(manifest["config"])
    for key, value in (overrides or {}).items():
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        with node.unlocked():
            node[leaf] = value
    check_architecture(config, manifest["config"], f"{manifest['manifest_path']} (overrides)")
    return config


def component_name(config: Any, module: str, text_layout: str) -> str:
    """The bundle component a trainer run's module ('vae', 'mtd', 'text', 'mardini', as
    make_train_step names them) is, for the run's train.model and train.level."""
    if module in ("vae", "mardini"):
        return module
    level, h = int(config.train.level), config.hierarchy
    if level == 0:
        suffix = "_global"
    elif h.share_local_models and h.depth > 2:  # HierarchyModels.components' 'mtd_local'
        suffix = "_local"
    else:
        suffix = f"_local{level}"
    if module == "text" and text_layout == "shared":
        return "text"
    if module not in ("mtd", "text"):
        raise BundleError(f"no bundle component holds a trainer run's {module!r}")
    return module + suffix


def trained_steps(source: Mapping[str, Any] | None) -> int:
    """Steps a component had been trained in total, from its manifest `sources` entry
    ('total_steps'; a trainer checkpoint's step for bundles that predate it; 0 for
    random, pretrained or unknown weights)."""
    source = source or {}
    if "total_steps" in source:
        return int(source["total_steps"])
    if source.get("kind") == "checkpoint":
        return int(source.get("step", 0))
    return 0


def component_sha256(tensors: Mapping[str, np.ndarray], component: str) -> str:
    """sha256 of one component's tensors (names, dtypes, shapes, bytes): identifies its
    weights across bundles, e.g. the same VAE re-exported beside retrained MTDs."""
    import hashlib

    digest = hashlib.sha256()
    prefix = f"{component}/"
    for key in sorted(k for k in tensors if k.startswith(prefix)):
        value = np.ascontiguousarray(tensors[key])
        digest.update(f"{key}:{value.dtype.str}:{value.shape}\n".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def vae_identity(manifest: Mapping[str, Any], tensors: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Which VAE a bundle holds, as latent stores and exports record it: the bundle's
    weights path and sha256, `vae_sha256` (its own tensors: the same in every bundle that
    re-exports it) and the steps it was trained in total."""
    return dict(
        path=manifest["weights_path"],
        sha256=manifest["sha256"],
        vae_sha256=component_sha256(tensors, "vae"),
        steps=trained_steps(manifest.get("sources", {}).get("vae")),
    )


def read_bundle(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(manifest, {'<component>/<path>': array}) of a bundle, its sha256 verified and its
    embedded config checked against the manifest's; the whole file is read (a later
    write_bundle to the same path cannot change what was read)."""
    manifest = read_manifest(path)
    verify_checksum(manifest)
    weights = manifest["weights_path"]
    if _embedded_config(weights) != manifest["config"]:
        raise BundleError(
            f"{manifest['manifest_path']}: its config differs from the one embedded in {weights}"
        )
    return manifest, common.load_safetensors(weights)


def assign_components(
    manifest: Mapping[str, Any],
    tensors: Mapping[str, np.ndarray],
    config: Any,
    modules: Mapping[str, Any],
    hint: str = "a network started from or frozen at a bundle's weights must be its architecture",
    latent_scale: bool = True,
) -> None:
    """Writes bundle components into `modules` ({component: network}), cast to each
    parameter's dtype (compute.param_dtype) and kept in its sharding.

    Checked first: every component is in the bundle (BundleError naming the file and
    listing what it holds), the config's fields that fix those components equal the
    bundle's (ConfigMismatchError naming the fields; `latent_scale=False` leaves out
    LATENT_FIELDS, for weights that start a training run), then keys and shapes (one
    WeightImportError per component naming the file and component).
    """
    weights = manifest["weights_path"]
    held = sorted({k.split("/", 1)[0] for k in tensors})
    absent = [c for c in modules if c not in held]
    if absent:
        raise BundleError(
            f"{weights}: no component {', '.join(map(repr, absent))} (it holds {', '.join(held)}; "
            f"text layout {manifest['text_layout']!r})"
        )
    source = f"{weights} [{', '.join(modules)}]"
    fields = component_fields(list(modules), config_to_dict(config), manifest["config"],
                              latent_scale=latent_scale)  # fmt: skip
    check_architecture(config, manifest["config"], source, fields, hint)
    for name, module in modules.items():
        prefix = f"{name}/"
        mapping = {p: (prefix + p, common.identity) for p in common.param_paths(module)}
        part = {k: v for k, v in tensors.items() if k.startswith(prefix)}
        common.assign_weights(module, part, mapping, source=f"{weights} [{name}]")


def _embedded_config(weights: str) -> dict[str, Any] | None:
    """The config in the weights file's metadata; BundleError naming the file if it is not
    a safetensors file (e.g. a pickle renamed .safetensors)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(weights, "np") as f:
            metadata = f.metadata() or {}
    except SafetensorError as e:
        raise BundleError(f"{weights}: not a safetensors file ({e})") from None
    return json.loads(metadata["config"]) if "config" in metadata else None


def load_bundle(
    path: str | os.PathLike, config: Any, mesh: Mesh, rules: parallel.Rules
) -> HierarchyModels:
    """The hierarchy's networks with the bundle's weights, sharded on `mesh`.

    Order of checks: the manifest; the weights' sha256 (ChecksumError); the config
    embedded in the (checksummed) weights against the manifest's (`read_bundle`); the
    config's architecture fields against the bundle's (ConfigMismatchError naming them);
    every key and shape (one WeightImportError listing all problems). Weights are cast to
    compute.param_dtype.
    """
    manifest, tensors = read_bundle(path)
    weights = manifest["weights_path"]
    check_architecture(config, manifest["config"], weights)
    per_level = manifest["text_layout"] == "per_level"
    held = {k.split("/", 1)[0] for k in tensors}
    with_mtds, with_mardini = "mtd_global" in held, "mardini" in held
    if not with_mtds and not with_mardini:
        raise BundleError(f"{weights}: holds neither MTDs ('mtd_global') nor a MarDini")
    # Abstract networks (nothing initialised): every parameter is filled from the file.
    models = HierarchyModels.create(config, mesh, rules, per_level_text=per_level, abstract=True,
                                    mardini=with_mardini, mtds=with_mtds)  # fmt: skip
    components = models.components()
    unknown = sorted(k for k in tensors if k.split("/", 1)[0] not in components)
    problems = []
    if unknown:
        problems.append(
            str(common.fit_error(weights, "the hierarchy's components", [], unknown, []))
            + f"\n  (components of this config: {', '.join(components)})"
        )
    for name, module in components.items():
        prefix = f"{name}/"
        mapping = {p: (prefix + p, common.identity) for p in common.param_paths(module)}
        part = {k: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            common.assign_weights(module, part, mapping, source=f"{weights} [{name}]")
        except common.WeightImportError as e:
            problems.append(str(e))
    if problems:
        raise common.WeightImportError("\n".join(problems))
    for name, module in components.items():  # assign_weights lists missing keys; be sure
        empty = [
            p
            for p, v in common.param_paths(module).items()
            if not isinstance(v.get_value(), jax.Array)
        ]
        if empty:
            raise BundleError(f"{weights} [{name}]: parameters left unset: {empty[:8]}")
    logging.info("loaded bundle %s (sha256 %s)", weights, manifest["sha256"])
    return models


def weights_report(manifest: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a timings report records of the weights used."""
    if manifest is None:
        return {"source": "random"}
    return {
        "source": "bundle",
        "path": manifest["weights_path"],
        "sha256": manifest["sha256"],
        "dtype": manifest["dtype"],
    }
