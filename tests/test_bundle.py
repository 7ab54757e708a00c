"""Hierarchy bundles: export from trainer checkpoints, checksummed 16-bit weights, loading,
config checks, atomic writes, and generation with --checkpoint (CPU, 8 simulated devices).

Trainer runs are made cheaply: a TrainState laid out as the trainer's (the trained modules
split by `state.split_trainable`, `create_train_state`) with random params and a different
random EMA, saved through the trainer's Checkpointer; the optimiser is optax.identity()
(no moments: a third of the arrays to save; export reads only the EMA). One slow test
runs the real trainer for a step per network instead.
"""

import json
import os
import subprocess
import sys

import grain
import jax
import ml_dtypes
import numpy as np
import optax
import pytest
from flax import nnx

import nuwa_jax  # noqa: F401
from configs import common
from nuwa_jax import parallel
from nuwa_jax.convert import common as convert_common
from nuwa_jax.export import RunMismatchError, export_hierarchy
from nuwa_jax.hierarchy import bundle
from nuwa_jax.hierarchy.models import vae_class
from nuwa_jax.mardini_tasks import TaskError, run_task
from nuwa_jax.models.mardini import MarDini
from nuwa_jax.models.mardini import dims as mardini_dims
from nuwa_jax.models.mtd import MTD
from nuwa_jax.models.text import TextEncoder
from nuwa_jax.train import Checkpointer
from nuwa_jax.train import state as state_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP = 3


def tiny_config():
    cfg = common.base("tiny")
    cfg.data.resolution = 16
    cfg.vae.block_out_channels = (8, 8, 8)
    cfg.mtd.block_out_channels = (16, 32)
    cfg.diffusion.num_sampling_steps = 2
    cfg.train.checkpoint_replica_parallel = False
    cfg.train.async_checkpointing = False
    return cfg


_ABSTRACT = {}  # abstract networks by architecture: one trace each for the whole module


def _abstract(name, cfg, make):
    key = (name, repr(cfg.to_dict()[name]))
    if key not in _ABSTRACT:
        _ABSTRACT[key] = nnx.eval_shape(make)
    return _ABSTRACT[key]


def save_run(workdir, cfg, model, level=0, latents_dir="", seed=0):
    """A trainer checkpoint of `model` (level `level`): params ~ N(0, 0.1), EMA different.

    Returns the EMA as a flat {'<module>.<path>': float32 array}.
    """
    cfg = cfg.copy_and_resolve_references()
    cfg.train.model, cfg.train.level, cfg.data.latents_dir = model, level, latents_dir
    mesh, rules = parallel.make_mesh(cfg.mesh), parallel.logical_rules(cfg)
    if model == "vae":
        make = {"vae": lambda: vae_class(cfg)(cfg.vae, cfg.compute, rngs=nnx.Rngs(0))}
    elif model == "mardini":
        make = {"mardini": lambda: MarDini(cfg.mardini, cfg.compute, rngs=nnx.Rngs(0))}
    else:
        make = {"mtd": lambda: MTD(cfg.mtd, cfg.compute, rngs=nnx.Rngs(0))}
        if cfg.text.trainable:
            make["text"] = lambda: TextEncoder(cfg.text, cfg.compute, rngs=nnx.Rngs(0))
    modules = {k: _abstract(k, cfg, f) for k, f in make.items()}  # the trainer's trained dict
    _, abstract, _ = state_lib.split_trainable(modules)
    shardings = state_lib.param_shardings(modules, mesh, rules)
    rng = np.random.default_rng(seed)
    draw = lambda x, s: jax.device_put(  # noqa: E731
        rng.normal(0, 0.1, x.shape).astype(np.float32), s
    )
    params = jax.tree.map(draw, abstract, shardings)
    state, _ = state_lib.create_train_state(params, shardings, optax.identity(), mesh)
    state = state.replace(step=state.step + STEP, ema=jax.tree.map(draw, abstract, shardings))
    iterator = iter(grain.MapDataset.range(4).to_iter_dataset())
    checkpointer = Checkpointer(workdir, cfg.train)
    checkpointer.save(STEP, state, iterator, cfg)
    checkpointer.close()
    flat = jax.tree_util.tree_flatten_with_path(state.ema)[0]
    return {".".join(str(k.key) for k in path): np.asarray(x) for path, x in flat}


def params_of(module) -> dict[str, np.ndarray]:
    return {p: np.asarray(v.get_value()) for p, v in convert_common.param_paths(module).items()}


def as_bf16(x: np.ndarray) -> np.ndarray:
    return np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A VAE run, and MTD runs of levels 0 and 1 trained on its latent store."""
    root = tmp_path_factory.mktemp("runs")
    cfg = tiny_config()
    ema = {"vae": save_run(root / "vae", cfg, "vae", seed=1)}
    store = root / "latents"  # what nuwa_jax.data.latents records of the encoding VAE
    store.mkdir()
    (store / "metadata.json").write_text(json.dumps(
        {"latent": {"vae": {"weights": "checkpoint", "workdir": str(root / "vae"), "step": STEP}}}
    ))  # fmt: skip
    for level in (0, 1):
        ema[f"mtd{level}"] = save_run(root / f"mtd{level}", cfg, "mtd", level, str(store),
                                      seed=2 + level)  # fmt: skip
    return root, cfg, ema


@pytest.fixture(scope="module")
def exported(runs):
    root, cfg, ema = runs
    out = root / "bundle" / "tiny"
    manifest = export_hierarchy(cfg, out, vae_workdir=str(root / "vae"),
                                mtd_workdirs=[str(root / "mtd0"), str(root / "mtd1")])  # fmt: skip
    return out, manifest


def test_exported_bundle_holds_each_runs_ema(runs, exported):
    """Loaded weights == each run's EMA rounded to bfloat16 (EMA and params are independent
    draws); the manifest names every run and step, the sha256 is the file's, one text
    encoder per MTD."""
    root, cfg, ema = runs
    out, manifest = exported
    weights, manifest_path = bundle.bundle_paths(out)
    assert sorted(os.listdir(out.parent)) == ["tiny.json", "tiny.safetensors"]
    assert manifest["sha256"] == convert_common.sha256_file(weights)
    assert manifest["dtype"] == "bfloat16" and manifest["text_layout"] == "per_level"
    with open(manifest_path) as f:
        on_disk = json.load(f)
    assert on_disk["sha256"] == manifest["sha256"] and on_disk["config"]["mtd"][
        "block_out_channels"
    ] == [16, 32]
    sources = on_disk["sources"]
    assert sources["vae"]["workdir"] == str(root / "vae") and sources["vae"]["step"] == STEP
    assert sources["mtd_local1"]["workdir"] == str(root / "mtd1")
    assert sources["text_local1"]["workdir"] == str(root / "mtd1")
    assert set(on_disk["parameters"]) == {"text_global", "text_local1", "vae", "mtd_global",
                                          "mtd_local1"}  # fmt: skip
    stored = convert_common.load_safetensors(weights)
    assert {v.dtype for v in stored.values()} == {np.dtype(ml_dtypes.bfloat16)}
    assert sum(v.size for v in stored.values()) == on_disk["total_parameters"]

    mesh, rules = parallel.make_mesh(cfg.mesh), parallel.logical_rules(cfg)
    models = bundle.load_bundle(out, cfg, mesh, rules)
    expect = {
        "vae": (models.vae, "vae", ema["vae"]),
        "mtd_global": (models.mtds[0], "mtd", ema["mtd0"]),
        "mtd_local1": (models.mtds[1], "mtd", ema["mtd1"]),
        "text_global": (models.text_of(0), "text", ema["mtd0"]),
        "text_local1": (models.text_of(1), "text", ema["mtd1"]),
    }
    for name, (module, key, run_ema) in expect.items():
        loaded = params_of(module)
        assert len(loaded) > 10, name
        for path, value in loaded.items():
            assert value.dtype == np.float32
            np.testing.assert_array_equal(value, as_bf16(run_ema[f"{key}.{path}"]), err_msg=name)
    assert models.text_of(0) is models.text and models.text_of(1) is not models.text
    var = next(iter(convert_common.param_paths(models.mtds[0]).values()))
    assert isinstance(var.get_value().sharding, jax.sharding.NamedSharding)


def test_checksum_mismatch_names_file_and_hashes(exported, tmp_path):
    out, manifest = exported
    weights, manifest_path = bundle.bundle_paths(out)
    copy = tmp_path / "tiny"
    data = bytearray(open(weights, "rb").read())
    data[-3] ^= 0xFF  # one flipped byte in the last tensor
    (tmp_path / "tiny.safetensors").write_bytes(bytes(data))
    (tmp_path / "tiny.json").write_text(open(manifest_path).read())
    cfg = tiny_config()
    mesh, rules = parallel.make_mesh(cfg.mesh), parallel.logical_rules(cfg)
    with pytest.raises(bundle.ChecksumError) as e:
        bundle.load_bundle(copy, cfg, mesh, rules)
    message = str(e.value)
    assert str(tmp_path / "tiny.safetensors") in message and manifest["sha256"] in message
    assert convert_common.sha256_file(str(tmp_path / "tiny.safetensors")) in message


def rewrite(src, dst, edit):
    """A self-consistent bundle at `dst` (valid checksum) whose tensors are edit(tensors)."""
    import safetensors.numpy
    from safetensors import safe_open

    weights, manifest_path = bundle.bundle_paths(src)
    with safe_open(weights, "np") as f:
        metadata = f.metadata()
    tensors = edit(convert_common.load_safetensors(weights))
    new_weights, new_manifest = bundle.bundle_paths(dst)
    safetensors.numpy.save_file(tensors, new_weights, metadata=metadata)
    manifest = json.loads(open(manifest_path).read())
    manifest["sha256"] = convert_common.sha256_file(new_weights)
    with open(new_manifest, "w") as f:
        json.dump(manifest, f)


def test_missing_misshaped_and_unexpected_keys_are_listed(exported, tmp_path):
    out, _ = exported
    gone, bent = "mtd_local1/conv_in.kernel", "vae/decoder.conv_out.bias"

    def edit(tensors):
        del tensors[gone]
        tensors[bent] = np.zeros((5,), tensors[bent].dtype)
        tensors["mtd_local7/extra.kernel"] = np.zeros((2,), tensors[bent].dtype)
        return tensors

    rewrite(out, tmp_path / "bad", edit)
    cfg = tiny_config()
    mesh, rules = parallel.make_mesh(cfg.mesh), parallel.logical_rules(cfg)
    with pytest.raises(convert_common.WeightImportError) as e:
        bundle.load_bundle(tmp_path / "bad", cfg, mesh, rules)
    message = str(e.value)
    assert f"{gone} (for conv_in.kernel, shape (3, 3, 4, 16))" in message
    assert f"{bent}: file (5,)" in message and "model decoder.conv_out.bias (3,)" in message
    assert "mtd_local7/extra.kernel" in message


def test_config_checks_name_the_field(runs, exported, tmp_path):
    """An architecture override is refused naming the field; other overrides apply; the
    bundle's config comes back typed like the preset's."""
    out, _ = exported
    config = bundle.generation_config(out, {"diffusion.num_sampling_steps": 5,
                                            "generation.num_frames": 9})  # fmt: skip
    assert config.diffusion.num_sampling_steps == 5 and config.generation.num_frames == 9
    assert config.mtd.block_out_channels == (16, 32) and config.data.resolution == 16
    assert isinstance(config.sharding.logical_axis_rules[0], tuple)
    with pytest.raises(
        bundle.ConfigMismatchError,
        match=r"mtd.block_out_channels: config \[8, 16\], bundle \[16, 32\]",
    ):
        bundle.generation_config(out, {"mtd.block_out_channels": (8, 16)})
    cfg = tiny_config()
    cfg.diffusion.update(prediction="epsilon", zero_terminal_snr=False)
    mesh, rules = parallel.make_mesh(cfg.mesh), parallel.logical_rules(cfg)
    with pytest.raises(bundle.ConfigMismatchError, match="diffusion.prediction"):
        bundle.load_bundle(out, cfg, mesh, rules)


def test_incompatible_runs_are_refused_naming_why(runs, tmp_path):
    root, cfg, _ = runs
    mtds = [str(root / "mtd0"), str(root / "mtd1")]
    wide = cfg.copy_and_resolve_references()
    wide.mtd.block_out_channels = (32, 64)
    with pytest.raises(
        RunMismatchError, match=r"mtd.block_out_channels: run \[16, 32\], bundle \[32, 64\]"
    ):
        export_hierarchy(wide, tmp_path / "b", vae_workdir=str(root / "vae"), mtd_workdirs=mtds)
    with pytest.raises(RunMismatchError, match="train.level=1, but --mtd_workdirs position 0"):
        export_hierarchy(cfg, tmp_path / "b", vae_workdir=str(root / "vae"),
                         mtd_workdirs=mtds[::-1])  # fmt: skip
    with pytest.raises(RunMismatchError, match="train.model='vae', MTD run 0 needs 'mtd'"):
        export_hierarchy(cfg, tmp_path / "b", vae_workdir=str(root / "vae"),
                         mtd_workdirs=[str(root / "vae"), mtds[1]])  # fmt: skip
    # Without --vae_workdir the bundle's VAE is the config's init, not the one the MTDs'
    # latent store was encoded with.
    with pytest.raises(RunMismatchError, match="learned the latents of VAE"):
        export_hierarchy(cfg, tmp_path / "b", mtd_workdirs=mtds)
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        export_hierarchy(cfg, tmp_path / "b", vae_workdir=str(tmp_path), mtd_workdirs=mtds)
    assert not os.path.exists(tmp_path / "b.json")


def test_export_is_atomic(exported, tmp_path, monkeypatch):
    """A crash while writing the weights or the manifest leaves no final-named file and no
    temporary; an older bundle at the same path stays whole and loadable."""
    import safetensors.numpy

    out, _ = exported
    cfg = tiny_config()
    mesh, rules = parallel.make_mesh(cfg.mesh), parallel.logical_rules(cfg)
    models = bundle.load_bundle(out, cfg, mesh, rules)
    real_save = safetensors.numpy.save_file

    def crash_mid_write(tensors, path, metadata=None):
        real_save(tensors, path, metadata=metadata)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", crash_mid_write)
    with pytest.raises(OSError, match="disk full"):
        bundle.write_bundle(models, cfg, tmp_path / "new", dtype="float16")
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(safetensors.numpy, "save_file", real_save)

    old = bundle.write_bundle(models, cfg, tmp_path / "new", dtype="float16")

    def crash(path, data):
        raise OSError("crash")

    monkeypatch.setattr(bundle, "_write_json", crash)
    with pytest.raises(OSError, match="crash"):
        bundle.write_bundle(models, cfg, tmp_path / "new", dtype="bfloat16")
    assert sorted(os.listdir(tmp_path)) == ["new.json", "new.safetensors"]
    kept = bundle.read_manifest(tmp_path / "new")
    assert kept["sha256"] == old["sha256"] and kept["dtype"] == "float16"
    bundle.verify_checksum(kept)
    reloaded = params_of(bundle.load_bundle(tmp_path / "new", cfg, mesh, rules).vae)
    for path, value in params_of(models.vae).items():
        np.testing.assert_array_equal(reloaded[path], value.astype(np.float16).astype(np.float32))


@pytest.mark.slow(reason="trains MarDini briefly and exports it into bundles")
def test_mardini_joins_a_bundle_or_makes_one_with_the_vae(runs, exported, tmp_path):
    """--mardini_workdir: MarDini beside the MTDs (MarDini locals), or with the VAE alone
    (the tasks); loaded weights == its EMA; wrong runs and a missing run are named."""
    root, cfg, ema = runs
    store, vae, mtds = str(root / "latents"), str(root / "vae"), [str(root / "mtd0"),
                                                                  str(root / "mtd1")]  # fmt: skip
    mardini_ema = save_run(tmp_path / "mardini", cfg, "mardini", latents_dir=store, seed=7)
    run = str(tmp_path / "mardini")
    local = cfg.copy_and_resolve_references()
    local.hierarchy.local_backbone = "mardini"
    local.mardini.num_frames = local.hierarchy.frames_per_call  # a segment is one clip
    with pytest.raises(ValueError, match="local_backbone='mardini' needs --mardini_workdir"):
        export_hierarchy(local, tmp_path / "x", vae_workdir=vae, mtd_workdirs=mtds)
    with pytest.raises(RunMismatchError, match="train.model='mtd', --mardini_workdir needs"):
        export_hierarchy(cfg, tmp_path / "x", vae_workdir=vae, mardini_workdir=mtds[0])
    wide = cfg.copy_and_resolve_references()
    wide.mardini.generator_hidden = 128
    with pytest.raises(RunMismatchError, match=r"mardini.generator_hidden: run 64, bundle 128"):
        export_hierarchy(wide, tmp_path / "x", vae_workdir=vae, mardini_workdir=run)
    # Widths compare resolved: the run's 0 (from its size) agrees with the size's width
    # spelled out (configs/mardini.py sets latent_channels, configs/demo.py leaves 0).
    local.mardini.generator_hidden = mardini_dims(cfg.mardini).generator_hidden
    local.mardini.latent_channels = mardini_dims(cfg.mardini).latent_channels
    # Beside the MTDs: the same storyboard renders with MTD or MarDini locals.
    manifest = export_hierarchy(local, tmp_path / "full", vae_workdir=vae, mtd_workdirs=mtds,
                                mardini_workdir=run)  # fmt: skip
    assert manifest["sources"]["mardini"]["workdir"] == run
    assert set(manifest["parameters"]) == {"text_global", "text_local1", "vae", "mtd_global",
                                           "mtd_local1", "mardini"}  # fmt: skip
    as_mtd = bundle.generation_config(tmp_path / "full", {"hierarchy.local_backbone": "mtd"})
    assert as_mtd.hierarchy.local_backbone == "mtd"
    # With the VAE alone: the MarDini tasks' bundle.
    out = tmp_path / "tasks"
    manifest = export_hierarchy(cfg, out, vae_workdir=vae, mardini_workdir=run)
    assert set(manifest["parameters"]) == {"vae", "mardini"}
    mesh, rules = parallel.make_mesh(cfg.mesh), parallel.logical_rules(cfg)
    models = bundle.load_bundle(out, cfg, mesh, rules)
    assert models.text is None and models.mtds == ()
    for name, (module, run_ema) in {"vae": (models.vae, ema["vae"]),
                                    "mardini": (models.mardini, mardini_ema)}.items():  # fmt: skip
        for path, value in params_of(module).items():
            np.testing.assert_array_equal(value, as_bf16(run_ema[f"{name}.{path}"]), err_msg=path)
    result = run_task(cfg, "interpolation", (), str(tmp_path / "v"), checkpoint=str(out),
                      gif=False, progress=False)  # fmt: skip
    assert result.report["weights"]["source"] == "bundle" and result.latents.shape[0] == 5
    mtds_only = str(exported[0])
    with pytest.raises(bundle.BundleError, match="no 'mardini' network in this bundle .*"
                       "its local MTDs interpolate: --backbone=mtd --level=K"):  # fmt: skip
        run_task(cfg, "interpolation", (), str(tmp_path / "v"), checkpoint=mtds_only,
                 backbone="mardini")  # fmt: skip
    with pytest.raises(TaskError, match="--backbone=mtd needs --level=K"):  # the default, here
        run_task(cfg, "interpolation", (), str(tmp_path / "v"), checkpoint=mtds_only)
    with pytest.raises(bundle.BundleError, match="no local MTD .*components: mardini, vae"):
        run_task(cfg, "interpolation", (), str(tmp_path / "v"), checkpoint=str(out),
                 backbone="mtd", level=1)  # fmt: skip


def test_mardini_joins_an_existing_bundle_unchanged(runs, exported, tmp_path):
    """--base_bundle: the bundle gains the MarDini (its EMA), every other tensor and source
    kept byte for byte, written over the base itself; joining again replaces the MarDini.
    A MarDini that learned another VAE's latents, other runs and another dtype are refused."""
    root, cfg, _ = runs
    base = tmp_path / "demo"  # a copy of the exported bundle, joined in place
    for suffix in (".json", ".safetensors"):
        (tmp_path / f"demo{suffix}").write_bytes(
            (exported[0].parent / f"tiny{suffix}").read_bytes()
        )
    manifest, tensors = bundle.read_bundle(base)
    store = tmp_path / "latents"  # what `nuwa_jax.data.latents --vae_bundle` records
    store.mkdir()
    identity = bundle.vae_identity(manifest, tensors)
    (store / "metadata.json").write_text(json.dumps({"latent": {"vae": dict(
        weights="bundle", path=identity["path"], sha256=identity["sha256"],
        vae_sha256=identity["vae_sha256"])}}))  # fmt: skip
    run = str(tmp_path / "mardini")
    mardini_ema = save_run(run, cfg, "mardini", latents_dir=str(store), seed=7)
    other = str(tmp_path / "other")  # learned the latents of the VAE run, not the bundle's
    save_run(other, cfg, "mardini", latents_dir=str(root / "latents"), seed=8)
    with pytest.raises(RunMismatchError, match="learned the latents of VAE"):
        export_hierarchy(cfg, base, base_bundle=str(base), mardini_workdir=other)
    with pytest.raises(ValueError, match="--base_bundle takes --mardini_workdir alone"):
        export_hierarchy(cfg, base, base_bundle=str(base), mardini_workdir=run,
                         mtd_workdirs=[str(root / "mtd0")])  # fmt: skip
    with pytest.raises(ValueError, match="--dtype=float16: .*demo.safetensors is bfloat16"):
        export_hierarchy(cfg, base, base_bundle=str(base), mardini_workdir=run, dtype="float16")
    assert bundle.read_bundle(base)[0]["sha256"] == manifest["sha256"]  # refusals wrote nothing

    based_on = manifest["sha256"]
    for _ in range(2):  # the second join replaces the MarDini the first one added
        joined = export_hierarchy(cfg, base, base_bundle=str(base), mardini_workdir=run)
        assert set(joined["parameters"]) == set(manifest["parameters"]) | {"mardini"}
        new = bundle.read_bundle(base)[1]
        assert {k: v.tobytes() for k, v in new.items() if not k.startswith("mardini/")} == {
            k: v.tobytes() for k, v in tensors.items()}  # fmt: skip
        sources = joined["sources"]
        assert {k: v for k, v in sources.items() if k != "mardini"} == manifest["sources"]
        assert sources["mardini"]["workdir"] == run
        assert sources["mardini"]["base_bundle"]["sha256"] == based_on
        based_on = joined["sha256"]
    mesh, rules = parallel.make_mesh(cfg.mesh), parallel.logical_rules(cfg)
    models = bundle.load_bundle(base, cfg, mesh, rules)
    for path, value in params_of(models.mardini).items():
        np.testing.assert_array_equal(value, as_bf16(mardini_ema[f"mardini.{path}"]), err_msg=path)


@pytest.mark.slow(reason="exports a trained bundle and compiles its local MTD's sampler in the CLI")
def test_interpolation_cli_with_the_bundles_local_mtd(exported, tmp_path):
    """`generate --checkpoint=B --task=interpolation --level=1 --save_frames --prompt=...`
    on an MTD-only bundle: the default backbone is its local MTD (with its own text
    encoder); the clip keeps the given ends; bad flags exit 2 naming the flag. Slow: a
    fresh process compiles the VAE and the MTD sampler (~40 s on 2 cores)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    pngs = []
    for i in range(2):
        pngs.append(str(tmp_path / f"end{i}.png"))
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), np.uint8)).save(pngs[-1])
    weights, _ = bundle.bundle_paths(exported[0])
    out = tmp_path / "interp"
    cmd = [sys.executable, "-m", "nuwa_jax.generate", f"--checkpoint={weights}",
           "--task=interpolation", "--level=1", f"--inputs={','.join(pngs)}", f"--out={out}",
           "--save_frames", "--prompt=a small red circle walks left", "--progress=false",
           "--gif=false"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": REPO}
    kw = dict(capture_output=True, text=True, cwd=REPO, timeout=600, env=env)
    run = subprocess.run(cmd, **kw)
    assert run.returncode == 0, run.stderr[-3000:]
    L = exported[1]["config"]["hierarchy"]["frames_per_call"]
    assert f"interpolation: {L} frames by mtd at level 1" in run.stdout
    report = json.loads((out / "video_timings.json").read_text())
    assert report["weights"]["source"] == "bundle" and report["backbone"] == "mtd"
    assert set(report["parameters"]) == {"text_local1", "vae", "mtd_local1"}
    assert report["prompt"] == "a small red circle walks left"
    frames = np.load(out / "video.npy")
    assert frames.shape == (L, 16, 16, 3) and frames.dtype == np.uint8
    refusals = {
        "--level=2": "--level=2: the local levels of this hierarchy are 1 .. 1",
        "--backbone=mardini": "no 'mardini' network in this bundle",
    }
    for flag, message in refusals.items():
        bad = subprocess.run([*cmd[:4], "--task=interpolation", flag,
                              f"--inputs={','.join(pngs)}"], **kw)  # fmt: skip
        assert bad.returncode == 2 and message in bad.stderr, (flag, bad.stderr[-2000:])
    story = subprocess.run([*cmd[:4], "--prompt=x", "--save_frames"], **kw)
    assert story.returncode == 2 and "--save_frames: options of --task" in story.stderr


@pytest.mark.slow(reason="trains two tiny MTD runs with a frozen text encoder")
def test_frozen_text_is_one_shared_encoder_from_the_seed(tmp_path):
    """text.trainable False: MTD runs hold no text; the bundle's one text encoder is the
    seed's (what the runs trained against), the VAE the seed + 1 init (no --vae_workdir)."""
    cfg = tiny_config()
    cfg.text.trainable = False
    for level in (0, 1):
        save_run(tmp_path / f"mtd{level}", cfg, "mtd", level, seed=level)
    out = tmp_path / "frozen"
    manifest = export_hierarchy(cfg, out, mtd_workdirs=[str(tmp_path / "mtd0"),
                                                        str(tmp_path / "mtd1")])  # fmt: skip
    assert manifest["text_layout"] == "shared"
    assert manifest["sources"]["text"] == {"kind": "random", "seed": 0, "frozen": True}
    assert manifest["sources"]["vae"] == {"kind": "random", "seed": 1}
    mesh, rules = parallel.make_mesh(cfg.mesh), parallel.logical_rules(cfg)
    models = bundle.load_bundle(out, cfg, mesh, rules)
    init = parallel.create_sharded_model(
        lambda r: TextEncoder(cfg.text, cfg.compute, rngs=r), mesh, rules, cfg.seed
    )
    loaded, expected = params_of(models.text), params_of(init)
    assert loaded.keys() == expected.keys()
    for path in loaded:
        np.testing.assert_array_equal(loaded[path], as_bf16(expected[path]), err_msg=path)
    other = cfg.copy_and_resolve_references()
    other.seed = 5  # a frozen byte encoder from another seed is another encoder
    with pytest.raises(RunMismatchError, match="seed: run 0, bundle 5"):
        export_hierarchy(other, tmp_path / "x", mtd_workdirs=[str(tmp_path / "mtd0"),
                                                              str(tmp_path / "mtd1")])  # fmt: skip


@pytest.mark.slow(reason="trains a VAE and MTDs briefly, then renders a video from their runs")
def test_trained_runs_to_video_with_checkpoint(tmp_path):
    """The real trainer, one step per network -> export -> `generate --checkpoint`: the
    bundle holds the trainer's EMA and the video's report names the bundle."""
    from nuwa_jax.data import synthetic
    from nuwa_jax.train import train

    data = tmp_path / "data"
    synthetic.write_benchmark(data, episodes=2, frames=40, resolution=16)
    cfg = tiny_config()
    cfg.data.data_dir = str(data)
    # test_mtd_loss_falls's schedule: the same train step, compiled once per session.
    cfg.train.num_steps, cfg.train.warmup_steps = 40, 5
    # One level (the global MTD): one trainer run keeps this test affordable; bundles of
    # local levels are covered by test_exported_bundle_holds_each_runs_ema.
    cfg.hierarchy.depth = 1
    cfg.train.model, cfg.train.level = "mtd", 0
    state = train(cfg, tmp_path / "mtd0", max_steps=1)
    out = tmp_path / "bundle" / "trained"
    # No VAE run: the MTD encoded with the trainer's frozen (seed + 1) VAE, which the bundle
    # then holds (a VAE run's EMA is checked by test_exported_bundle_holds_each_runs_ema).
    export_hierarchy(cfg, out, mtd_workdirs=[str(tmp_path / "mtd0")])
    mesh, rules = parallel.make_mesh(cfg.mesh), parallel.logical_rules(cfg)
    models = bundle.load_bundle(out, cfg, mesh, rules)
    for module, key in ((models.mtds[0], "mtd"), (models.text_of(0), "text")):
        ema = state.ema[key]
        for path, value in params_of(module).items():
            node = ema
            for part in path.split("."):
                node = node[int(part) if part.isdigit() and int(part) in node else part]
            np.testing.assert_array_equal(value, as_bf16(node), err_msg=path)

    weights, _ = bundle.bundle_paths(out)
    cmd = [sys.executable, "-m", "nuwa_jax.generate", f"--checkpoint={weights}",
           "--prompt=a small red circle walks left", "--frames=4", "--steps=2",
           "--config.generation.max_segments_per_device=1", f"--out={tmp_path / 'video'}",
           "--progress=false", "--gif=false"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": REPO}
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "video" / "video_timings.json").read_text())
    assert report["weights"] == {"source": "bundle", "path": weights, "dtype": "bfloat16",
                                 "sha256": convert_common.sha256_file(weights)}  # fmt: skip
    assert report["random_weights"] is False and report["num_frames"] == 4
    bad = cmd[:-4] + ["--config.mtd.block_out_channels=(8,16)"]
    refused = subprocess.run(bad, capture_output=True, text=True, cwd=REPO, timeout=300, env=env)
    assert refused.returncode == 2 and "mtd.block_out_channels" in refused.stderr


# ---------------------------------------------------------------------------------------
# Continuing from a bundle: train.init_from, a frozen VAE from a bundle, provenance.
# ---------------------------------------------------------------------------------------
def init_from_bundle(cfg, path, workdir, level=1):
    """An 'mtd' run's step-0 state (make_train_step, nothing compiled; built once per
    config for the session, tests/conftest.py) after init_from."""
    from nuwa_jax.models.text import make_tokenizer
    from nuwa_jax.train import trainer

    cfg = cfg.copy_and_resolve_references()
    cfg.train.model, cfg.train.level = "mtd", level
    mesh, rules = parallel.make_mesh(cfg.mesh), parallel.logical_rules(cfg)
    step, state = trainer.make_train_step(cfg, mesh, rules, make_tokenizer(cfg.text))
    cfg.train.init_from = str(path)
    return trainer.init_from(cfg, step, state, workdir)


@pytest.mark.slow(reason="exports a bundle, then trains an MTD from it")
def test_init_from_bundle_starts_an_mtd_run_at_its_weights(runs, exported, tmp_path):
    """train.init_from=<bundle>.json: the level-1 run's MTD and text encoder (params and EMA)
    are exactly the bundle's bfloat16 mtd_local1 / text_local1, at step 0; the run's
    init_from.json names the bundle, its sha256 and the steps already trained."""
    from nuwa_jax.train import trainer

    root, cfg, ema = runs
    out, manifest = exported
    state = init_from_bundle(cfg, f"{out}.json", tmp_path)
    assert int(state.step) == 0
    for key in ("mtd", "text"):
        for tree in (state.params, state.ema):
            flat = jax.tree_util.tree_flatten_with_path(tree[key])[0]
            assert len(flat) > 10
            for path, value in flat:
                name = f"{key}." + ".".join(str(k.key) for k in path)
                assert value.dtype == np.float32
                np.testing.assert_array_equal(np.asarray(value), as_bf16(ema["mtd1"][name]))
    record = trainer.read_init_from(tmp_path)
    assert record["bundle"] == bundle.bundle_paths(out)[0]
    assert record["sha256"] == manifest["sha256"]
    assert record["components"] == {
        "mtd": {"component": "mtd_local1", "steps": STEP},
        "text": {"component": "text_local1", "steps": STEP},
    }


@pytest.mark.slow(reason="builds runs against bundles that do not fit")
def test_init_from_a_bundle_that_does_not_fit_names_file_and_component(exported, tmp_path):
    out, _ = exported
    cfg = tiny_config()
    rewrite(out, tmp_path / "no_local", lambda t: {k: v for k, v in t.items()
                                                   if not k.startswith("mtd_local1/")})  # fmt: skip
    weights = str(tmp_path / "no_local.safetensors")
    with pytest.raises(bundle.BundleError, match=rf"{weights}: no component 'mtd_local1'"):
        init_from_bundle(cfg, tmp_path / "no_local.json", tmp_path / "a")
    wide = cfg.copy_and_resolve_references()
    wide.mtd.block_out_channels = (32, 64)
    with pytest.raises(bundle.ConfigMismatchError) as e:
        init_from_bundle(wide, out, tmp_path / "b")
    message = str(e.value)
    assert "[mtd_local1, text_local1]" in message and bundle.bundle_paths(out)[0] in message
    assert "mtd.block_out_channels: config [32, 64], bundle [16, 32]" in message
    bent = "text_local1/encoder.embeddings.token_embedding.embedding"
    rewrite(out, tmp_path / "bent", lambda t: {**t, bent: t[bent][:-1]})
    with pytest.raises(convert_common.WeightImportError) as e:
        init_from_bundle(cfg, tmp_path / "bent.safetensors", tmp_path / "c")
    assert f"{tmp_path / 'bent.safetensors'} [text_local1]" in str(e.value) and bent in str(e.value)
    assert not os.path.exists(tmp_path / "a" / "init_from.json")


def test_latent_scale_binds_the_diffusion_models_not_the_vae(runs, exported, tmp_path):
    """vae.scaling_factor and shift_factor (bundle.LATENT_FIELDS) are what the MTDs learned
    to read: generating at another scale is refused naming the field. The VAE alone loads
    at any scale (a latent store holds scale-free moments), and a training run may start
    from the bundle at another scale (train.init_from), its weights then training on."""
    from nuwa_jax.data import latents

    out, _ = exported
    cfg = tiny_config()
    cfg.vae.scaling_factor, cfg.vae.shift_factor = 0.5, 0.25
    mesh, rules = parallel.make_mesh(cfg.mesh), parallel.logical_rules(cfg)
    with pytest.raises(bundle.ConfigMismatchError) as e:
        bundle.load_bundle(out, cfg, mesh, rules)
    assert "vae.scaling_factor: config 0.5, bundle 0.18215" in str(e.value)
    assert "vae.shift_factor: config 0.25, bundle 0.0" in str(e.value)
    _, info = latents.load_vae(cfg, mesh, rules, vae_bundle=f"{out}.json")
    assert info["weights"] == "bundle"
    state = init_from_bundle(cfg, f"{out}.json", tmp_path)
    assert int(state.step) == 0
    flat = jax.tree_util.tree_flatten_with_path(state.params["mtd"])[0]
    ema = runs[2]["mtd1"]
    for path, value in flat[:5]:
        name = "mtd." + ".".join(str(k.key) for k in path)
        np.testing.assert_array_equal(np.asarray(value), as_bf16(ema[name]))


@pytest.mark.slow(reason="trains on from a bundle and exports again")
def test_continuing_a_bundle_keeps_its_vae_and_counts_steps(runs, exported, tmp_path):
    """The demo's continue mode: latents encoded with --vae_bundle record the bundle; MTD
    runs on them, one started from the bundle, export with --vae_bundle over that same
    bundle (its VAE unchanged, the sources' steps cumulative); an MTD run on another VAE's
    latents is refused."""
    from nuwa_jax.data import latents, synthetic
    from nuwa_jax.train import trainer

    root, cfg, _ = runs
    out, old = exported
    shipped = tmp_path / "ship" / "tiny"  # a copy: the exported bundle serves other tests
    shipped.parent.mkdir()
    for path in bundle.bundle_paths(out):
        (shipped.parent / os.path.basename(path)).write_bytes(open(path, "rb").read())
    frames, store = tmp_path / "frames", tmp_path / "latents"
    synthetic.write_benchmark(frames, episodes=1, frames=4, resolution=16)
    mesh, rules = parallel.make_mesh(cfg.mesh), parallel.logical_rules(cfg)
    vae, info = latents.load_vae(cfg, mesh, rules, vae_bundle=f"{shipped}.json")
    latents.write_latent_store(cfg, store, vae, info, mesh=mesh, rules=rules, data_dir=frames)
    recorded = json.loads((store / "metadata.json").read_text())["latent"]["vae"]
    weights = bundle.bundle_paths(shipped)[0]
    assert recorded["weights"] == "bundle" and recorded["path"] == weights
    assert recorded["sha256"] == old["sha256"] and recorded["steps"] == STEP
    tensors = convert_common.load_safetensors(weights)
    assert recorded["vae_sha256"] == bundle.component_sha256(tensors, "vae")
    for path, value in params_of(vae).items():
        np.testing.assert_array_equal(value, tensors[f"vae/{path}"].astype(np.float32))

    init_from_bundle(cfg, f"{shipped}.json", tmp_path / "mtd1")  # writes init_from.json
    save_run(tmp_path / "mtd1", cfg, "mtd", 1, str(store), seed=11)
    save_run(tmp_path / "mtd0", cfg, "mtd", 0, str(store), seed=10)
    mtds = [str(tmp_path / "mtd0"), str(tmp_path / "mtd1")]
    with pytest.raises(RunMismatchError, match="learned the latents of VAE"):
        export_hierarchy(cfg, shipped, vae_bundle=f"{shipped}.json",
                         mtd_workdirs=[str(root / "mtd0"), mtds[1]])  # fmt: skip
    new = export_hierarchy(cfg, shipped, vae_bundle=f"{shipped}.json", mtd_workdirs=mtds)
    assert new["sha256"] != old["sha256"]
    after = convert_common.load_safetensors(weights)
    assert bundle.component_sha256(after, "vae") == recorded["vae_sha256"]
    sources = json.loads(open(f"{shipped}.json").read())["sources"]
    assert sources["vae"]["kind"] == "bundle" and sources["vae"]["total_steps"] == STEP
    assert sources["vae"]["origin"] == old["sources"]["vae"]
    init = dict(bundle=weights, sha256=old["sha256"], component="mtd_local1", steps=STEP)
    assert sources["mtd_local1"]["init_from"] == init
    assert sources["mtd_local1"]["total_steps"] == 2 * STEP
    assert sources["text_local1"]["init_from"] == dict(init, component="text_local1")
    assert "init_from" not in sources["mtd_global"]
    assert sources["mtd_global"]["total_steps"] == STEP
    # A second round counts on: a run started from the new bundle had 2 * STEP before.
    init_from_bundle(cfg, f"{shipped}.json", tmp_path / "round2")
    assert trainer.prior_steps(tmp_path / "round2", "mtd") == 2 * STEP


def test_shipped_demo_bundle_is_whole_and_matches_configs_demo():
    """The committed demo bundle (make train-demo): checksum, 16 bit, size budget, and the
    architecture of configs/demo.py, so `make demo` can load it on a fresh clone."""
    from nuwa_jax import demo

    stem = demo.default_checkpoint()
    assert stem is not None, f"the shipped demo bundle {demo.DEMO_BUNDLE}.* is missing"
    manifest = bundle.read_manifest(stem)
    bundle.verify_checksum(manifest)
    assert manifest["dtype"] in ("bfloat16", "float16")
    size = os.path.getsize(manifest["weights_path"]) + os.path.getsize(manifest["manifest_path"])
    assert size <= 25 * 2**20, f"{size / 2**20:.1f} MiB over the 25 MiB budget"
    bundle.check_architecture(common.base("demo"), manifest["config"], stem)
    assert {"vae", "mtd_global", "mtd_local"} <= set(manifest["sources"])


@pytest.mark.faults
def test_a_pickle_named_safetensors_is_refused_naming_the_file(tmp_path):
    import pickle

    weights = tmp_path / "fake.safetensors"
    weights.write_bytes(pickle.dumps({"vae/w": np.zeros(3)}))
    manifest = dict(format=bundle.FORMAT, format_version=bundle.FORMAT_VERSION,
                    sha256=convert_common.sha256_file(weights), text_layout="shared",
                    dtype="float16", config=bundle.config_to_dict(tiny_config()))  # fmt: skip
    (tmp_path / "fake.json").write_text(json.dumps(manifest))
    with pytest.raises(bundle.BundleError, match=f"{weights}: not a safetensors file"):
        bundle.read_bundle(weights)
    cmd = [sys.executable, "-m", "nuwa_jax.generate", f"--checkpoint={weights}", "--prompt=x",
           "--frames=4", f"--out={tmp_path / 'out'}", "--progress=false"]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300,
                         env={**os.environ, "PYTHONPATH": REPO})  # fmt: skip
    assert run.returncode == 2, run.stderr[-3000:]
    assert run.stderr.startswith(f"error: {weights}: not a safetensors file (")
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr[-3000:]
    assert not (tmp_path / "out").exists()
