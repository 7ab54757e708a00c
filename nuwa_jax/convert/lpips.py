"""LPIPS (VGG, v0.1) weights: upstream PyTorch files -> one safetensors file in our layout.

    python -m nuwa_jax.convert.lpips --vgg=vgg16-397923af.pth \\
        --lin=.../site-packages/lpips/weights/v0.1/vgg.pth --out=lpips_vgg.safetensors

Upstream layouts read (.pth through torch.load(weights_only=True), or .safetensors):
- the trunk: torchvision's VGG16 state dict (`features.{idx}.weight/bias`, `classifier.*`
  ignored), or the `lpips` package's LPIPS(net='vgg') state dict (`net.slice{1..5}.{idx}.*`,
  the same torchvision feature indices);
- the lin layers: the package's `lpips/weights/v0.1/vgg.pth` (`lin{0..4}.model.1.weight`,
  (1, C, 1, 1); `model.0` when built without dropout), or the same LPIPS state dict.
`--lin` may be left out when `--vgg` is a whole LPIPS state dict. The package's
ScalingLayer buffers, when present, must equal its constants; its `lins.*` duplicates are
ignored. Any missing, unexpected or mis-shaped key raises one error naming the keys and
the file. The output holds our parameter paths (`net.conv1_1.kernel`, `lin0.kernel`, ...)
in our layout (HWIO) and is written atomically; `load_lpips` reads it back into an LPIPS,
checking every name and shape against the file. This project never downloads weights.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flax import nnx

from nuwa_jax.convert import common
from nuwa_jax.models import lpips as lpips_lib

FORMAT = "nuwa_jax.lpips_vgg.v0.1"
_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


# ---------------------------------------------------------------------------------------
# Upstream names.
# ---------------------------------------------------------------------------------------
def feature_indices() -> list[tuple[int, int]]:
    """(stage, torchvision `features` index) of VGG16's 13 convs, in order."""
    out, idx = [], 0
    for stage, n in enumerate(lpips_lib.STAGE_CONVS):
        for _ in range(n):
            out.append((stage, idx))
            idx += 2  # conv, ReLU
        idx += 1  # max-pool
    return out


def read_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """{name: float array} of a .safetensors file, or of a torch state dict (.pth, needs torch)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no weight file at {path}")
    if not path.endswith(_TORCH_SUFFIXES):
        return common.load_safetensors(path)
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"{path}: reading a torch file needs torch (or give .safetensors)") from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise common.WeightImportError(f"{path}: not a readable torch state dict: {e}") from e
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise common.WeightImportError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return {k: v.detach().float().numpy() for k, v in state.items() if torch.is_tensor(v)}


def _vgg_key(tensors: Mapping[str, np.ndarray]):
    """name(stage, idx, leaf) in the file's trunk layout (lpips `net.slice*` or torchvision)."""
    if any(k.startswith("net.slice") for k in tensors):
        return lambda stage, idx, leaf: f"net.slice{stage + 1}.{idx}.{leaf}"
    return lambda stage, idx, leaf: f"features.{idx}.{leaf}"


def _lin_key(tensors: Mapping[str, np.ndarray]):
    """name(k) of lin layer k: `lin{k}.model.1.weight` (dropout before it) or `model.0`."""
    sub = 0 if "lin0.model.0.weight" in tensors and "lin0.model.1.weight" not in tensors else 1
    return lambda k: f"lin{k}.model.{sub}.weight"


def infer_widths(tensors: Mapping[str, np.ndarray]) -> tuple[int, ...]:
    """Stage widths from each stage's first conv (VGG16's where a key is missing)."""
    key, widths, seen = _vgg_key(tensors), list(lpips_lib.VGG16_WIDTHS), set()
    for stage, idx in feature_indices():
        name = key(stage, idx, "weight")
        if stage not in seen and name in tensors and np.ndim(tensors[name]) == 4:
            widths[stage] = int(np.shape(tensors[name])[0])
        seen.add(stage)
    return tuple(widths)


def _check_scaling(tensors: Mapping[str, np.ndarray], source: str) -> None:
    for name, want in (("shift", lpips_lib.SHIFT), ("scale", lpips_lib.SCALE)):
        key = f"scaling_layer.{name}"
        if key in tensors and not np.allclose(np.ravel(tensors[key]), want, atol=1e-6):
            raise common.WeightImportError(
                f"{source}: {key}={np.ravel(tensors[key]).tolist()} is not the lpips "
                f"package's {list(want)}: a different preprocessing, not supported"
            )


# ---------------------------------------------------------------------------------------
# Import.
# ---------------------------------------------------------------------------------------
def import_lpips_weights(
    model: lpips_lib.LPIPS,
    vgg_tensors: Mapping[str, np.ndarray],
    lin_tensors: Mapping[str, np.ndarray] | None = None,
    *,
    vgg_source: str,
    lin_source: str | None = None,
) -> None:
    """Assigns upstream trunk and lin tensors into `model`; errors name the keys and file.

    `lin_tensors` None: the lin layers are read from `vgg_tensors` (a whole LPIPS state dict).
    """
    if lin_tensors is None:
        lin_tensors, lin_source = vgg_tensors, vgg_source
    lin_source = lin_source or "lin weights"
    _check_scaling(vgg_tensors, vgg_source)
    _check_scaling(lin_tensors, lin_source)
    key = _vgg_key(vgg_tensors)
    mapping = {}
    for name, (stage, idx) in zip(lpips_lib.conv_names(), feature_indices()):
        mapping[f"{name}.kernel"] = (key(stage, idx, "weight"), common.conv2d)
        mapping[f"{name}.bias"] = (key(stage, idx, "bias"), common.identity)
    common.assign_weights(
        model.net, vgg_tensors, mapping, source=vgg_source,
        ignore=("classifier.*", "lin*", "scaling_layer.*"),
    )  # fmt: skip
    lin_key = _lin_key(lin_tensors)
    lins = nnx.Dict({f"lin{k}": getattr(model, f"lin{k}") for k in range(len(model.net.widths))})
    mapping = {f"lin{k}.kernel": (lin_key(k), common.conv2d) for k in range(len(lins))}
    common.assign_weights(
        lins, lin_tensors, mapping, source=lin_source,
        ignore=("net.*", "features.*", "classifier.*", "scaling_layer.*", "lins.*"),
    )  # fmt: skip


def convert(
    vgg: str | os.PathLike, lin: str | os.PathLike | None, out: str | os.PathLike
) -> dict[str, Any]:
    """Upstream files -> `out` (our layout, written atomically); returns what was written."""
    vgg = os.fspath(vgg)
    lin = os.fspath(lin) if lin else None
    vgg_tensors = read_tensors(vgg)
    lin_tensors = read_tensors(lin) if lin else None
    widths = infer_widths(vgg_tensors)
    model = nnx.eval_shape(lambda: lpips_lib.LPIPS(widths=widths, rngs=nnx.Rngs(0)))
    import_lpips_weights(model, vgg_tensors, lin_tensors, vgg_source=vgg, lin_source=lin)
    tensors = {p: np.asarray(v.get_value()) for p, v in common.param_paths(model).items()}
    metadata = {
        "format": FORMAT,
        "widths": json.dumps(list(widths)),
        "vgg": os.path.basename(vgg),
        "vgg_sha256": common.sha256_file(vgg),
        "lin": os.path.basename(lin or vgg),
        "lin_sha256": common.sha256_file(lin or vgg),
    }
    common.save_safetensors(tensors, out, metadata)
    return dict(out=os.fspath(out), tensors=len(tensors), **metadata)


def load_lpips(path: str | os.PathLike, compute: Any = None) -> lpips_lib.LPIPS:
    """An LPIPS with the weights of a file `convert` wrote (widths read from the file).

    Every parameter must be in the file with its shape, and nothing else: any mismatch
    raises one WeightImportError naming the keys and `path`.
    """
    path = os.fspath(path)
    tensors = common.load_safetensors(path)
    widths = list(lpips_lib.VGG16_WIDTHS)
    for stage in range(len(widths)):
        w = tensors.get(f"net.conv{stage + 1}_1.kernel")
        if w is not None and w.ndim == 4:
            widths[stage] = int(w.shape[-1])
    model = nnx.eval_shape(lambda: lpips_lib.LPIPS(compute, widths=widths, rngs=nnx.Rngs(0)))
    mapping = {p: (p, common.identity) for p in common.param_paths(model)}
    common.assign_weights(model, tensors, mapping, source=path)
    return model


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vgg", required=True,
                   help="torchvision VGG16 state dict (or a whole lpips.LPIPS(net='vgg') one): "
                        ".pth or .safetensors")  # fmt: skip
    p.add_argument("--lin", default=None,
                   help="the lpips package's lpips/weights/v0.1/vgg.pth (lin0..lin4); "
                        "leave out when --vgg holds them")  # fmt: skip
    p.add_argument("--out", required=True, help="output .safetensors (our layout)")
    args = p.parse_args(argv)
    info = convert(args.vgg, args.lin, args.out)
    print(json.dumps(info, indent=1))
    return info


if __name__ == "__main__":
    main()
