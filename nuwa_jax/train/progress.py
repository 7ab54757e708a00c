"""How far a network has been trained, across sessions: for resumable launch scripts.

    python -m nuwa_jax.train.progress steps_before RUN MODULE [BUNDLE]
    python -m nuwa_jax.train.progress latents_current LATENTS VAE_RUN
    python -m nuwa_jax.train.progress mtds_fit BUNDLE CONFIG

`steps_before` prints the steps MODULE ('vae', 'mtd', 'text', 'mardini') had been
trained before the run in RUN began: what its init_from.json records, else (a run not
started yet) the total of its component in BUNDLE, else 0. A script whose step counts
are totals trains the run for `total - steps_before` steps, however many sessions and
bundles lie behind it (launch/train_demo.sh).

`latents_current` exits 0 when the latent store LATENTS was encoded by the newest
checkpoint of the VAE run VAE_RUN, 1 when it is stale (the VAE has trained since) or
missing, so a script re-encodes it before training on it.

`mtds_fit` exits 0 when the MTDs of BUNDLE have the architecture and the diffusion recipe
of the config file CONFIG (so MTD runs may start from their weights), 1 otherwise,
naming the differing fields on stderr (a bundle of an older recipe: its MTDs train anew).
"""

from __future__ import annotations

import json
import os
import re
import sys

from nuwa_jax.train import checkpoint as ckpt


def newest_step(workdir: str | os.PathLike) -> int | None:
    """The newest finished checkpoint step of a trainer run (orbax's unfinished saves
    carry a suffix), or None."""
    directory = os.path.join(os.fspath(workdir), ckpt.CHECKPOINT_DIR)
    if not os.path.isdir(directory):
        return None
    steps = [int(d) for d in os.listdir(directory) if re.fullmatch(r"\d+", d)]
    return max(steps) if steps else None


def steps_before(workdir: str | os.PathLike, module: str, bundle_path: str | None = None) -> int:
    """Steps `module` had been trained before the run in `workdir` began (see above)."""
    from nuwa_jax.hierarchy import bundle
    from nuwa_jax.train import trainer

    if trainer.read_init_from(workdir) is not None:
        return trainer.prior_steps(workdir, module)
    if newest_step(workdir) is not None or not bundle_path:
        return 0  # a run of its own, from scratch
    manifest = bundle.read_manifest(bundle_path)
    component = module if module in ("vae", "mardini") else None
    if component is None:
        raise ValueError(f"steps_before: give the bundle component of {module!r} (vae, mardini)")
    return bundle.trained_steps(manifest.get("sources", {}).get(component))


def latents_current(latents_dir: str | os.PathLike, vae_workdir: str | os.PathLike) -> bool:
    """Whether the latent store was encoded by the VAE run's newest checkpoint."""
    path = os.path.join(os.fspath(latents_dir), "metadata.json")
    if not os.path.isfile(path):
        return False
    try:
        with open(path) as f:
            vae = json.load(f).get("latent", {}).get("vae", {})
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON: {e}") from e
    same_run = vae.get("workdir") and os.path.realpath(vae["workdir"]) == os.path.realpath(
        os.fspath(vae_workdir)
    )
    return bool(same_run) and vae.get("step") == newest_step(vae_workdir)


def mtds_fit(bundle_path: str, config_path: str) -> list[str]:
    """The fields where the MTDs of the bundle differ from the config file's (empty: they
    fit, weights and recipe), LATENT_FIELDS excepted (MTDs adapt to another scale)."""
    from nuwa_jax import cli
    from nuwa_jax.hierarchy import bundle

    config = cli.load_config(config_path)
    stored = bundle.read_manifest(bundle_path)["config"]
    ours = bundle.config_to_dict(config)
    fields = bundle.component_fields(["mtd"], ours, stored, latent_scale=False)
    return [
        f"{f}: config {a!r}, bundle {b!r}"
        for f, a, b in bundle.differing_fields(ours, stored, fields)
    ]


def main(argv: list[str]) -> int:
    usage = __doc__.split("\n\n")[1]
    if len(argv) >= 3 and argv[0] == "steps_before":
        print(steps_before(argv[1], argv[2], argv[3] if len(argv) > 3 else None))
        return 0
    if len(argv) == 3 and argv[0] == "latents_current":
        return 0 if latents_current(argv[1], argv[2]) else 1
    if len(argv) == 3 and argv[0] == "mtds_fit":
        differ = mtds_fit(argv[1], argv[2])
        for line in differ:
            print(line, file=sys.stderr)
        return 1 if differ else 0
    print(f"usage:\n{usage}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
