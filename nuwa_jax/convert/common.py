"""Generic PyTorch-checkpoint import: safetensors -> numpy -> an NNX module's parameters.

Used by every importer (VAE, UNet, CLIP). The pieces:
- `load_safetensors`: a .safetensors file as {name: np.ndarray} (never pickle);
- transforms from torch layouts to ours: `conv2d` (O, I, kh, kw) -> (kh, kw, I, O),
  `conv1d` (O, I, k) -> (k, I, O), `dense` (O, I) -> (I, O), `identity`;
- `name_mapping`: our parameter paths -> (torch key, transform), by name: our modules are
  named like diffusers' (conv1, norm1, to_q, ...), the leaf `kernel`/`scale`/`embedding`
  becomes torch's `weight`, and regex `renames` fix the rest (e.g. `to_out.` ->
  `to_out.0.`);
- `assign_weights`: checks everything first and raises ONE `WeightImportError` listing
  missing, unexpected and mis-shaped keys (with both shapes) and the file; then assigns.
  Parameters that deliberately keep their initialisation (temporal layers, condition
  injection) are named with `keep_init` globs, never skipped silently.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Transform = Callable[[np.ndarray], np.ndarray]
Mapping_ = dict[str, tuple[str, Transform]]


class WeightImportError(ValueError):
    """A checkpoint does not fit a model; the message lists every problem at once."""


# ---------------------------------------------------------------------------------------
# Files.
# ---------------------------------------------------------------------------------------
_RAW_DTYPES = {"BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def _load_raw(path: str) -> dict[str, np.ndarray]:
    """Reads a safetensors file by its header (for dtypes numpy lacks, e.g. bfloat16)."""
    import ml_dtypes

    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        code = info["dtype"]
        dtype = (
            np.dtype(getattr(ml_dtypes, _RAW_DTYPES[code]))
            if code in _RAW_DTYPES
            else np.dtype(
                {
                    "F64": "<f8",
                    "F32": "<f4",
                    "F16": "<f2",
                    "I64": "<i8",
                    "I32": "<i4",
                    "I16": "<i2",
                    "I8": "i1",
                    "U8": "u1",
                    "BOOL": "?",
                }[code]
            )  # fmt: skip
        )
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(data[start:end], dtype=dtype).reshape(info["shape"]).copy()
    return out


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """{name: array} of a .safetensors file (safetensors.numpy; bfloat16 via ml_dtypes)."""
    import safetensors.numpy

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no safetensors file at {path}")
    try:
        return dict(safetensors.numpy.load_file(path))
    except TypeError:  # a dtype numpy does not know (bfloat16, float8)
        return _load_raw(path)
    except Exception as e:
        raise WeightImportError(f"{path}: not a readable safetensors file: {e}") from e


def save_safetensors(
    tensors: Mapping[str, np.ndarray], path: str | os.PathLike, metadata: dict | None = None
) -> None:
    """Writes {name: array} to `path` atomically (temporary file + os.replace)."""
    import safetensors.numpy

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    os.close(fd)
    try:
        arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
        safetensors.numpy.save_file(arrays, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ---------------------------------------------------------------------------------------
# Layout transforms (torch -> ours).
# ---------------------------------------------------------------------------------------
def identity(w: np.ndarray) -> np.ndarray:
    """Norm scales, biases, embedding tables: same layout."""
    return w


def dense(w: np.ndarray) -> np.ndarray:
    """torch Linear (out, in) -> (in, out); a 1x1 conv (out, in, 1, 1) is squeezed first."""
    if w.ndim == 4 and w.shape[2:] == (1, 1):
        w = w[:, :, 0, 0]
    return w.T if w.ndim == 2 else w


def conv2d(w: np.ndarray) -> np.ndarray:
    """torch Conv2d (out, in, kh, kw) -> (kh, kw, in, out)."""
    return w.transpose(2, 3, 1, 0) if w.ndim == 4 else w


def conv1d(w: np.ndarray) -> np.ndarray:
    """torch Conv1d (out, in, k) -> (k, in, out)."""
    return w.transpose(2, 1, 0) if w.ndim == 3 else w


# ---------------------------------------------------------------------------------------
# Our parameters and their torch names.
# ---------------------------------------------------------------------------------------
def param_paths(module: nnx.Module) -> dict[str, nnx.Variable]:
    """{dotted path: nnx.Param} of a module, e.g. 'encoder.down_blocks.0.resnets.0.conv1.kernel'."""
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        out[".".join(str(p) for p in path)] = var
    return out


def torch_name(path: str, renames: Sequence[tuple[str, str]] = ()) -> str:
    """Our dotted path -> torch key: leaf kernel/scale/embedding -> weight, then `renames`
    (regex, replacement) applied in order."""
    head, _, leaf = path.rpartition(".")
    leaf = {"kernel": "weight", "scale": "weight", "embedding": "weight"}.get(leaf, leaf)
    name = f"{head}.{leaf}" if head else leaf
    for pattern, repl in renames:
        name = re.sub(pattern, repl, name)
    return name


def default_transform(path: str, ndim: int) -> Transform:
    """Layout transform for one of our parameters, by its leaf name and rank."""
    leaf = path.rpartition(".")[2]
    if leaf == "kernel":
        return {2: dense, 3: conv1d, 4: conv2d}.get(ndim, identity)
    return identity


def _matches(path: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(path, p) for p in patterns)


def name_mapping(
    module: nnx.Module,
    *,
    renames: Sequence[tuple[str, str]] = (),
    keep_init: Iterable[str] = (),
    overrides: Mapping[str, tuple[str, Transform]] | None = None,
) -> Mapping_:
    """{our path: (torch key, transform)} for every parameter not matching `keep_init`.

    Names come from `torch_name(path, renames)`, transforms from `default_transform`;
    `overrides` replace single entries (e.g. an embedding stored transposed).
    """
    keep_init = tuple(keep_init)
    mapping: Mapping_ = {}
    for path, var in param_paths(module).items():
        if _matches(path, keep_init):
            continue
        mapping[path] = (torch_name(path, renames), default_transform(path, var[...].ndim))
    mapping.update(overrides or {})
    return mapping


# ---------------------------------------------------------------------------------------
# Assignment.
# ---------------------------------------------------------------------------------------
def _listing(title: str, items: list[str], limit: int = 50) -> str:
    shown = "".join(f"\n    {s}" for s in items[:limit])
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"\n  {title} ({len(items)}):{shown}{more}"


def fit_error(
    source: str, target: str, missing: list[str], unexpected: list[str], misshaped: list[str]
) -> WeightImportError:
    """The one error that lists every missing, unexpected and mis-shaped key of `source`."""
    return WeightImportError(
        f"{source}: does not fit {target}: {len(missing)} missing, "
        f"{len(unexpected)} unexpected, {len(misshaped)} mis-shaped"
        + (_listing("missing", missing) if missing else "")
        + (_listing("unexpected (in the file, not used)", unexpected) if unexpected else "")
        + (_listing("mis-shaped", misshaped) if misshaped else "")
    )


def assign_weights(
    module: nnx.Module,
    tensors: Mapping[str, np.ndarray],
    mapping: Mapping[str, tuple[str, Transform]],
    *,
    source: str,
    keep_init: Iterable[str] = (),
    ignore: Iterable[str] = (),
) -> list[str]:
    """Assigns `tensors` (torch names) into `module` through `mapping`; all or nothing.

    Every parameter of `module` must be in `mapping` or match a `keep_init` glob (those keep
    their initial values, explicitly). Every tensor must be used or match an `ignore` glob
    (e.g. buffers like CLIP's position_ids). Any missing, unexpected or mis-shaped key
    raises one WeightImportError naming them all and `source` (the file). Values are cast
    to each parameter's dtype and keep its sharding. Returns the paths kept at init.
    """
    keep_init, ignore = tuple(keep_init), tuple(ignore)
    ours = param_paths(module)
    missing, misshaped, kept, updates, used = [], [], [], {}, set()
    for path, var in ours.items():
        if path not in mapping:
            if _matches(path, keep_init):
                kept.append(path)
            else:
                missing.append(f"{path} (no source key in the importer's mapping)")
            continue
        key, transform = mapping[path]
        if key not in tensors:
            missing.append(f"{key} (for {path}, shape {tuple(var.get_value().shape)})")
            continue
        used.add(key)
        raw = np.asarray(tensors[key])
        value = transform(raw)
        if tuple(value.shape) != tuple(var.get_value().shape):
            misshaped.append(
                f"{key}: file {tuple(raw.shape)} (as ours {tuple(value.shape)}), "
                f"model {path} {tuple(var.get_value().shape)}"
            )
            continue
        updates[path] = value
    stale = sorted(set(mapping) - set(ours))
    missing += [f"{mapping[p][0]} (mapped to {p}, which the model does not have)" for p in stale]
    unexpected = sorted(k for k in tensors if k not in used and not _matches(k, ignore))
    if missing or unexpected or misshaped:
        raise fit_error(source, type(module).__name__, missing, unexpected, misshaped)
    for path, value in updates.items():
        var = ours[path]
        old = var.get_value()  # an array, or a ShapeDtypeStruct of an abstract model
        sharding = getattr(old, "sharding", None)
        if isinstance(sharding, jax.sharding.NamedSharding):
            # Cast on the host, then every device takes only its own shard (no full copy on
            # one device; multi-host safe: each process fills its addressable shards).
            host = np.asarray(value, dtype=old.dtype)
            new = jax.make_array_from_callback(host.shape, sharding, lambda idx, h=host: h[idx])
        else:
            new = jnp.asarray(value, dtype=old.dtype)
        var.set_value(new)
    logging.info(
        "%s: imported %d tensors into %s; %d parameters keep their init (%s)",
        source, len(updates), type(module).__name__, len(kept), ", ".join(keep_init) or "none",
    )  # fmt: skip
    return kept


def import_weights(
    module: nnx.Module,
    tensors: Mapping[str, np.ndarray],
    *,
    source: str,
    renames: Sequence[tuple[str, str]] = (),
    keep_init: Iterable[str] = (),
    ignore: Iterable[str] = (),
    overrides: Mapping[str, tuple[str, Transform]] | None = None,
) -> list[str]:
    """`name_mapping` + `assign_weights` in one call; returns the paths kept at init."""
    keep_init = tuple(keep_init)
    mapping = name_mapping(module, renames=renames, keep_init=keep_init, overrides=overrides)
    return assign_weights(
        module, tensors, mapping, source=source, keep_init=keep_init, ignore=ignore
    )


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (checksums of weight files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
