"""nuwa_jax.train.progress: steps trained across sessions and stale latent stores."""

import json
import os

import pytest

from nuwa_jax.hierarchy import bundle
from nuwa_jax.train import progress, trainer


def _run(tmp_path, name: str, steps=(), partial=()) -> str:
    workdir = tmp_path / name
    for step in steps:
        (workdir / "checkpoints" / str(step)).mkdir(parents=True)
    for d in partial:  # an orbax save that did not finish
        (workdir / "checkpoints" / d).mkdir(parents=True)
    workdir.mkdir(exist_ok=True)
    return str(workdir)


def _manifest(tmp_path, sources) -> str:
    path = tmp_path / "demo.json"
    data = dict(format=bundle.FORMAT, format_version=bundle.FORMAT_VERSION, sha256="0" * 64,
                config={}, text_layout="per_level", dtype="bfloat16", sources=sources)  # fmt: skip
    path.write_text(json.dumps(data))
    return str(path)


def test_newest_step_ignores_unfinished_saves(tmp_path):
    assert progress.newest_step(_run(tmp_path, "none")) is None
    run = _run(tmp_path, "vae", steps=(250, 1000), partial=("1250.orbax-checkpoint-tmp-9",))
    assert progress.newest_step(run) == 1000


def test_steps_before(tmp_path):
    bundle_json = _manifest(tmp_path, {"vae": {"kind": "checkpoint", "total_steps": 3300}})
    fresh = _run(tmp_path, "fresh")
    assert progress.steps_before(fresh, "vae", bundle_json) == 3300  # will start from it
    assert progress.steps_before(fresh, "vae") == 0  # no bundle: from scratch
    own = _run(tmp_path, "own", steps=(500,))
    assert progress.steps_before(own, "vae", bundle_json) == 0  # its own run, no init_from
    continued = _run(tmp_path, "continued", steps=(500,))
    record = {"bundle": bundle_json, "components": {"vae": {"component": "vae", "steps": 1200}}}
    with open(os.path.join(continued, trainer.INIT_FROM_FILE), "w") as f:
        json.dump(record, f)
    assert progress.steps_before(continued, "vae", bundle_json) == 1200  # what it began from
    with pytest.raises(ValueError, match="'mtd'"):
        progress.steps_before(fresh, "mtd", bundle_json)


def test_latents_current(tmp_path):
    vae = _run(tmp_path, "vae", steps=(1000, 1250))
    latents = tmp_path / "latents"
    assert not progress.latents_current(latents, vae)  # missing
    latents.mkdir()

    def encoded_by(step):
        meta = {"latent": {"vae": {"weights": "checkpoint", "workdir": vae, "step": step}}}
        (latents / "metadata.json").write_text(json.dumps(meta))

    encoded_by(1250)
    assert progress.latents_current(latents, vae)
    encoded_by(1000)  # the VAE trained on since
    assert not progress.latents_current(latents, vae)
    assert progress.main(["latents_current", str(latents), vae]) == 1
    assert progress.main(["nonsense"]) == 2
    (latents / "metadata.json").write_text("{")
    with pytest.raises(ValueError, match="metadata.json"):
        progress.latents_current(latents, vae)


def test_mtds_fit_names_what_differs_from_the_bundle(tmp_path):
    """A bundle's MTDs may start an MTD run only when the config has their architecture
    and recipe: a config of the bundle's own fits, a changed recipe field is named."""
    demo = os.path.join(os.path.dirname(os.path.dirname(__file__)), "checkpoints", "demo")
    stem = os.path.join(demo, "demo")
    source = (
        "from nuwa_jax.hierarchy import bundle\n\n\n"
        "def get_config(arg=None):\n"
        f"    config = bundle.config_from_dict(bundle.read_manifest({stem!r})['config'])\n"
        "    config.mtd.condition_input = arg or config.mtd.condition_input\n"
        "    return config\n"
    )
    (tmp_path / "same.py").write_text(source)
    assert progress.mtds_fit(stem, str(tmp_path / "same.py")) == []
    assert progress.main(["mtds_fit", stem, str(tmp_path / "same.py")]) == 0
    changed = progress.mtds_fit(stem, f"{tmp_path / 'same.py'}:concat")
    assert changed == ["mtd.condition_input: config 'concat', bundle 'none'"]
