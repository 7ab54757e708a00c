"""The grain training pipeline: host file split, DoD windows, resumption, bad records."""

import itertools
import json
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import common
from nuwa_jax.data import pipeline, schema, synthetic
from nuwa_jax.data.writer import DatasetWriter
from nuwa_jax.hierarchy import HierarchyPlan
from nuwa_jax.models.text import ByteTokenizer

EPISODE_FRAMES = (40, 33, 25)
SIZE = 8
TOKENS = 16
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def frame_image(episode: int, frame: int) -> np.ndarray:
    """Pixels that say which frame they are: R = frame, G = 40 * episode, B = 7."""
    image = np.empty((SIZE, SIZE, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = frame, 40 * episode, 7
    return image


def caption(episode: int, frame: int) -> str:
    return f"e{episode} f{frame}"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    writer = DatasetWriter(
        root, fps=8.0, height=SIZE, width=SIZE, frames_per_shard=8, index_every=4
    )
    for e, n in enumerate(EPISODE_FRAMES):
        writer.write_episode(f"ep{e}", ((frame_image(e, f), caption(e, f)) for f in range(n)))
    writer.finalize()
    return str(root)


def make_config(L: int = 4, m: int = 2, **data):
    cfg = common.base("tiny")
    cfg.hierarchy.frames_per_call, cfg.hierarchy.depth = L, m
    cfg.data.resolution = SIZE
    cfg.data.batch_size = 4
    cfg.data.read_threads = 2
    cfg.data.prefetch_buffer_size = 4
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


def take(it, n):
    return [next(it) for _ in range(n)]


def check_batch(batch, plan: HierarchyPlan, levels, aligned=False):
    """Frames, pixels, captions and masks of every example agree with the plan."""
    tok = ByteTokenizer(TOKENS)
    L = plan.frames_per_call
    B = batch["level"].shape[0]
    assert batch["video"].shape == (B, L, SIZE, SIZE, 3) and batch["video"].dtype == np.float32
    assert batch["tokens"].shape == (B, L, TOKENS) and batch["tokens"].dtype == np.int32
    assert batch["frame_index"].shape == (B, L) and batch["frame_index"].dtype == np.int32
    assert batch["cond_mask"].dtype == bool and batch["level"].dtype == np.int32
    assert batch["video"].min() >= -1.0 and batch["video"].max() <= 1.0
    for b in range(B):
        level, e = int(batch["level"][b]), int(batch["episode"][b])
        assert level in levels
        frames = batch["frame_index"][b]
        start = int(frames[0])
        assert np.array_equal(frames, plan.window(level, start))
        assert frames[-1] < EPISODE_FRAMES[e]
        if aligned and level > 0:
            assert start % plan.stride(level - 1) == 0
        pixels = np.rint((batch["video"][b] + 1) * 127.5).astype(int)
        assert np.array_equal(pixels[:, 0, 0, 0], frames)
        assert (pixels[..., 1] == 40 * e).all() and (pixels[..., 2] == 7).all()
        assert tok.decode(batch["tokens"][b]) == [caption(e, int(f)) for f in frames]
        assert np.array_equal(batch["cond_mask"][b], plan.condition_mask(level))


# -- hosts ------------------------------------------------------------------------------
def test_split_files():
    files = [f"f{i}" for i in range(14)]
    for count in (1, 2, 3, 5, 14):
        parts = [pipeline.split_files(files, p, count) for p in range(count)]
        assert list(itertools.chain(*parts)) == files  # disjoint, covering, in order
        assert all(len(p) >= 1 for p in parts)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(ValueError, match="14 files cannot be split across 15 hosts"):
        pipeline.split_files(files, 0, 15)
    with pytest.raises(ValueError, match="process_index=2"):
        pipeline.split_files(files, 2, 2)


def test_host_runs_two_processes(data_dir):
    meta = schema.load_metadata(data_dir)
    all_files = [s.file for _, s in pipeline.dataset_files(meta)]
    assert len(all_files) == 14
    runs = [pipeline.host_runs(meta, p, 2) for p in range(2)]
    files = [[f for r in rs for f in r.files] for rs in runs]
    assert not set(files[0]) & set(files[1]) and sorted(files[0] + files[1]) == sorted(all_files)
    covered = [
        (r.episode, f) for rs in runs for r in rs for f in range(r.first_frame, r.stop_frame)
    ]
    assert sorted(covered) == [(e, f) for e, n in enumerate(EPISODE_FRAMES) for f in range(n)]
    # Episode 1's shards are split between the hosts: two runs, one on each.
    assert [(r.episode, r.first_frame, r.stop_frame) for r in runs[0]] == [(0, 0, 40), (1, 0, 16)]
    assert [(r.episode, r.first_frame, r.stop_frame) for r in runs[1]] == [(1, 16, 33), (2, 0, 25)]


def test_pipeline_reads_only_own_files(data_dir):
    meta = schema.load_metadata(data_dir)
    tok = ByteTokenizer(TOKENS)
    cfg = make_config(batch_size=8)
    for pid in range(2):
        runs = pipeline.host_runs(meta, pid, 2)
        it = pipeline.make_iterator(cfg, tok, data_dir=data_dir, process_index=pid, process_count=2)
        for batch in take(it, 3):
            assert batch["level"].shape == (4,)  # 8 global / 2 hosts
            for e, frames in zip(batch["episode"], batch["frame_index"]):
                assert any(
                    r.episode == e and r.first_frame <= frames[0] and frames[-1] < r.stop_frame
                    for r in runs
                )


def test_fewer_files_than_hosts(data_dir):
    with pytest.raises(ValueError, match="14 files cannot be split across 20 hosts"):
        pipeline.make_dataset(
            make_config(batch_size=20),
            ByteTokenizer(TOKENS),
            data_dir=data_dir,
            process_index=0,
            process_count=20,
        )


# -- windows ----------------------------------------------------------------------------
@pytest.mark.parametrize("m", [1, 2, 3])
@pytest.mark.parametrize("aligned", [False, True])
def test_windows_per_level(data_dir, m, aligned):
    L = 3  # strides (m=3): 4, 2, 1; the global window spans N(3) = 9 frames
    plan = HierarchyPlan.full(L, m)
    cfg = make_config(L, m, align_windows=aligned)
    meta = schema.load_metadata(data_dir)
    runs = pipeline.host_runs(meta, 0, 1)
    for level in plan.levels:
        index = pipeline.WindowIndex(plan, runs, [level], aligned)
        expected = {
            (level, r, s)
            for r, n in enumerate(EPISODE_FRAMES)
            for s in range(n - plan.window_span(level) + 1)
            if not (aligned and level > 0) or s % plan.stride(level - 1) == 0
        }
        assert set(index) == expected and len(index) == len(expected)
        it = pipeline.make_iterator(
            cfg,
            ByteTokenizer(TOKENS),
            levels=[level],
            data_dir=data_dir,
            process_index=0,
            process_count=1,
        )
        for batch in take(it, 2):
            check_batch(batch, plan, [level], aligned)
            if level == 0:  # the global window spans a whole N(m)-frame clip
                spans = batch["frame_index"][:, -1] - batch["frame_index"][:, 0] + 1
                assert (spans == plan.full_frames).all()


def test_window_summary_of_a_store(data_dir):
    """Counts of a store, whole and per host, equal the windows the index holds."""
    L, m = 3, 3  # spans 9, 5, 3
    plan = HierarchyPlan.full(L, m)
    cfg = make_config(L, m, data_dir=data_dir)
    meta = schema.load_metadata(data_dir)
    summary = pipeline.window_summary(cfg, process_index=1, process_count=2)
    index = pipeline.WindowIndex(plan, pipeline.host_runs(meta, 0, 1), plan.levels)
    assert summary.windows == index.windows_per_level()
    assert summary.windows == {
        j: sum(n - plan.window_span(j) + 1 for n in EPISODE_FRAMES) for j in plan.levels
    }
    host = pipeline.WindowIndex(plan, pipeline.host_runs(meta, 1, 2), plan.levels)
    assert summary.host_windows == host.windows_per_level()
    assert (summary.episodes, summary.frames) == (3, sum(EPISODE_FRAMES))
    lines = summary.lines()
    assert lines[0] == f"{data_dir}: 3 episodes, 98 frames" and len(lines) == 4
    assert lines[1].startswith(f"level 0 (stride 4, span 9 frames): {summary.windows[0]} ")
    only = pipeline.window_summary(cfg, levels=[2], process_index=0, process_count=1)
    assert list(only.windows) == [2] and only.host_windows is None
    cfg.data.source = "frames"
    with pytest.raises(schema.DataError, match="no metadata.json"):
        pipeline.window_summary(cfg, data_dir=os.path.join(data_dir, "missing"))


def test_demo_data_gives_many_distinct_global_windows():
    """The demo's synthetic episodes are longer than one global window, so global windows
    start anywhere (counted from the plan and the config, nothing rendered)."""
    config = common.base("demo")
    plan = pipeline.plan_from_config(config)
    d = config.data
    summary = pipeline.window_summary(config)  # no data_dir: the config's benchmark
    assert summary.episodes == d.synthetic_episodes and summary.source.startswith("synthetic")
    assert d.synthetic_frames >= 2 * plan.full_frames  # two global windows long
    for j in plan.levels:
        per_episode = d.synthetic_frames - plan.window_span(j) + 1
        assert summary.windows[j] == d.synthetic_episodes * per_episode
    assert summary.windows[0] >= 50_000
    # The earlier data (episodes of exactly N(m) frames): one global window per episode.
    config.data.synthetic_frames = plan.full_frames
    assert pipeline.window_summary(config).windows[0] == d.synthetic_episodes
    # Held-out evaluation episodes never overlap the training ones.
    assert d.synthetic_episodes <= synthetic.HELD_OUT_FIRST_EPISODE


def test_windows_cli_prints_the_demo_counts():
    done = subprocess.run(
        [sys.executable, "-m", "nuwa_jax.data.pipeline", "--config=configs/demo.py",
         "--levels=0"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": REPO},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    windows = pipeline.window_summary(common.base("demo")).windows[0]
    assert f"level 0 (stride 225, span 3376 frames): {windows:,} distinct windows" in done.stdout
    assert "level 1" not in done.stdout


def test_mixed_levels_and_epochs(data_dir):
    plan = HierarchyPlan.full(4, 2)
    cfg = make_config(batch_size=8)
    it = pipeline.make_iterator(
        cfg, ByteTokenizer(TOKENS), data_dir=data_dir, process_index=0, process_count=1
    )
    index = pipeline.WindowIndex(
        plan, pipeline.host_runs(schema.load_metadata(data_dir), 0, 1), plan.levels
    )
    n = len(index)  # one epoch; take two and a bit
    seen = []
    for batch in take(it, (2 * n) // 8 + 1):
        check_batch(batch, plan, [0, 1])
        seen += [
            (int(lv), int(e), int(f[0]))
            for lv, e, f in zip(batch["level"], batch["episode"], batch["frame_index"])
        ]
    assert sorted(seen[:n]) == sorted(seen[n : 2 * n])  # every window once per epoch
    assert seen[:n] != seen[n : 2 * n]  # reshuffled each epoch
    assert {lv for lv, _, _ in seen} == {0, 1}


def test_ar_masks_on_finest_windows_only(data_dir):
    """data.ar_mask_prob: finest-level windows get the AR baseline's masks (the first k of
    ar_context_frames frames, k = 0 included), the global level keeps its own; the same
    windows and masks again on a second pass (deterministic per record)."""
    plan = HierarchyPlan.full(4, 2)
    cfg = make_config(batch_size=8, ar_mask_prob=1.0)
    cfg.generation.ar_context_frames = 2

    def masks():
        it = pipeline.make_iterator(
            cfg, ByteTokenizer(TOKENS), data_dir=data_dir, process_index=0, process_count=1
        )
        return [
            (int(lv), tuple(m)) for b in take(it, 6) for lv, m in zip(b["level"], b["cond_mask"])
        ]

    got = masks()
    prefixes = {tuple(np.arange(4) < k) for k in (0, 1, 2)}
    assert {m for lv, m in got if lv == 1} == prefixes  # every k seen, never first + last
    assert {m for lv, m in got if lv == 0} == {tuple(plan.condition_mask(0))}
    assert masks() == got
    with pytest.raises(ValueError, match=r"data.ar_mask_prob=1.5 must be in \[0, 1\]"):
        pipeline.make_dataset(
            make_config(ar_mask_prob=1.5), ByteTokenizer(TOKENS), data_dir=data_dir,
            process_index=0, process_count=1,
        )  # fmt: skip


def test_levels_and_batch_validation(data_dir):
    tok = ByteTokenizer(TOKENS)
    with pytest.raises(ValueError, match="level=2"):
        pipeline.make_dataset(
            make_config(), tok, levels=[2], data_dir=data_dir, process_index=0, process_count=1
        )
    with pytest.raises(ValueError, match="batch_size=5"):
        pipeline.make_dataset(
            make_config(batch_size=5), tok, data_dir=data_dir, process_index=0, process_count=2
        )
    with pytest.raises(ValueError, match="no training window of level 0 .span 126 frames"):
        pipeline.make_dataset(
            make_config(6, 3), tok, data_dir=data_dir, process_index=0, process_count=1
        )


# -- resumption -------------------------------------------------------------------------
def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.mark.parametrize("workers", [0, 1])
def test_resume_exact(data_dir, workers):
    cfg = make_config(worker_count=workers)
    tok = ByteTokenizer(TOKENS)
    kw = dict(data_dir=data_dir, process_index=0, process_count=1)
    it = pipeline.make_iterator(cfg, tok, **kw)
    take(it, 3)
    state = it.get_state()
    after = take(it, 4)
    fresh = pipeline.make_iterator(cfg, tok, **kw)
    fresh.set_state(state)
    assert_batches_equal(take(fresh, 4), after)
    assert not all(np.array_equal(a["frame_index"], after[0]["frame_index"]) for a in after[1:])


def test_resume_with_orbax(data_dir, tmp_path):
    import grain
    import orbax.checkpoint as ocp

    cfg = make_config()
    tok = ByteTokenizer(TOKENS)
    kw = dict(data_dir=data_dir, process_index=0, process_count=1)
    it = pipeline.make_iterator(cfg, tok, **kw)
    take(it, 2)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
        after = take(it, 3)
        fresh = pipeline.make_iterator(cfg, tok, **kw)
        mngr.restore(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    assert_batches_equal(take(fresh, 3), after)


# -- bad records ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_data_dir(data_dir, tmp_path_factory):
    """The data set with record 3 of episode 0's second shard (frame 11) corrupted."""
    root = str(tmp_path_factory.mktemp("bad"))
    shutil.copytree(data_dir, root, dirs_exist_ok=True)
    meta = schema.load_metadata(root)
    shard = meta.episodes[0].shards[1]
    path = os.path.join(root, shard.file)
    offset = schema.scan_offsets(path)[3]
    with open(path, "r+b") as f:
        f.seek(offset + schema.HEADER_BYTES + 20)
        byte = f.read(1)
        f.seek(offset + schema.HEADER_BYTES + 20)
        f.write(bytes([byte[0] ^ 0xFF]))
    return root, shard.file


def test_bad_record_raises(bad_data_dir):
    root, bad_file = bad_data_dir
    it = pipeline.make_iterator(
        make_config(),
        ByteTokenizer(TOKENS),
        levels=[0],
        data_dir=root,
        process_index=0,
        process_count=1,
    )
    with pytest.raises(schema.RecordError, match=rf"{bad_file}: record 3: bad data CRC"):
        take(it, 40)


@pytest.mark.faults
def test_bad_record_error_crosses_worker_processes(bad_data_dir):
    """A worker process's RecordError reaches the caller whole: file, record and reason
    (an exception that cannot be unpickled became a TypeError naming neither)."""
    root, bad_file = bad_data_dir
    it = pipeline.make_iterator(
        make_config(worker_count=2),
        ByteTokenizer(TOKENS),
        levels=[0],
        data_dir=root,
        process_index=0,
        process_count=1,
    )
    with pytest.raises(schema.RecordError, match=rf"{bad_file}: record 3: bad data CRC") as e:
        take(it, 40)
    assert os.path.basename(e.value.path) == bad_file and e.value.record_index == 3
    assert e.value.reason.startswith("bad data CRC")


@pytest.mark.faults
@pytest.mark.parametrize("workers", [0, 2])
def test_bad_record_skipped(bad_data_dir, tmp_path, caplog, workers):
    """Skipped windows are counted, and the skipped records listed: one line per skip
    in skipped_records (appended by worker processes too), the first ones logged."""
    root, bad_file = bad_data_dir
    plan = HierarchyPlan.full(4, 2)
    listing = tmp_path / pipeline.SKIPPED_RECORDS_FILE
    caplog.set_level("WARNING", logger=pipeline.__name__)
    it = pipeline.make_iterator(
        make_config(skip_bad=True, worker_count=workers),
        ByteTokenizer(TOKENS),
        levels=[0],
        data_dir=root,
        process_index=0,
        process_count=1,
        skipped_records=listing,
    )
    skipped = 0
    for batch in take(it, 20):
        check_batch(batch, plan, [0])
        skipped += int(batch["bad_records"].sum())
        for e, frames in zip(batch["episode"], batch["frame_index"]):
            assert not (e == 0 and 11 in frames)
    # 80 examples visit all 71 level-0 windows; those of episode 0 holding frame 11
    # (starts 2, 5, 8, 11) are each met at least once.
    assert skipped >= 4
    it.close()  # the workers stop (and stop appending)
    entries = [json.loads(line) for line in listing.read_text().splitlines()]
    assert len(entries) >= skipped  # the pipeline reads ahead of the batches taken
    assert {os.path.basename(x["file"]) for x in entries} == {bad_file}
    assert {x["record"] for x in entries} == {3}
    assert all(x["reason"].startswith("bad data CRC") for x in entries)
    assert {(x["episode"], x["level"]) for x in entries} == {("ep0", 0)}
    assert {x["start"] for x in entries} <= {2, 5, 8, 11}
    if workers == 0:  # worker processes log to their own stderr
        logged = [r.getMessage() for r in caplog.records]
        assert logged and f"{bad_file}: record 3: bad data CRC" in logged[0]
        assert str(listing) in logged[0]


@pytest.mark.faults
def test_skipped_records_log_is_rate_limited(tmp_path, caplog):
    """The first `log_first` skips are logged one by one, then one line per `log_every`
    saying how many were not; the file lists all of them."""
    listing = tmp_path / "skipped.jsonl"
    skipped = pipeline.SkippedRecords(listing, log_first=2, log_every=3)
    skipped = pickle.loads(pickle.dumps(skipped))  # as grain's worker processes get it
    caplog.set_level("WARNING", logger=pipeline.__name__)
    for i in range(9):
        skipped.add(schema.RecordError("s/ep.00000.tfrecord", i, "bad data CRC"), "ep", 1, 4 * i)
    logged = [r.getMessage() for r in caplog.records]
    assert "s/ep.00000.tfrecord: record 0: bad data CRC" in logged[0]
    assert "s/ep.00000.tfrecord: record 1: bad data CRC" in logged[1]
    assert "logged once per 3" in logged[2]
    assert "5 bad records skipped" in logged[3] and "3 of them not logged" in logged[3]
    assert "8 bad records skipped" in logged[4] and "6 of them not logged" in logged[4]
    assert len(logged) == 5 and all(str(listing) in m for m in logged)
    entries = [json.loads(line) for line in listing.read_text().splitlines()]
    assert [x["record"] for x in entries] == list(range(9))
    assert entries[4] == dict(file="s/ep.00000.tfrecord", record=4, reason="bad data CRC",
                              episode="ep", level=1, start=16)  # fmt: skip
    assert pipeline.skipped_records_path("w") == os.path.join("w", "skipped_records.jsonl")
    assert pipeline.skipped_records_path("w", 1, 2) == os.path.join(
        "w", "skipped_records.00001.jsonl"
    )


# -- hooks, sharding --------------------------------------------------------------------
def test_transform_without_decoding(data_dir):
    def latents(example):
        frames = example["frame_index"].astype(np.float32)
        example["latents"] = np.broadcast_to(frames[:, None, None, None], (4, 2, 2, 4)).copy()
        return example

    it = pipeline.make_iterator(
        make_config(),
        ByteTokenizer(TOKENS),
        data_dir=data_dir,
        process_index=0,
        process_count=1,
        transform=latents,
        decode_images=False,
    )
    batch = next(it)
    assert "video" not in batch and batch["latents"].shape == (4, 4, 2, 2, 4)
    np.testing.assert_array_equal(batch["latents"][:, :, 0, 0, 0], batch["frame_index"])


def test_tokenizer_contract(data_dir):
    it = pipeline.make_iterator(
        make_config(),
        lambda texts: np.zeros((len(texts) + 1, 3), np.int32),
        data_dir=data_dir,
        process_index=0,
        process_count=1,
    )
    with pytest.raises(ValueError, match="tokenizer returned"):
        next(it)


def test_fit_frame():
    image = np.zeros((12, 16, 3), np.uint8)
    image[:, 2:14] = 200  # the centre square survives the crop
    out = pipeline.fit_frame(image, 6)
    assert out.shape == (6, 6, 3) and out.dtype == np.uint8 and (out == 200).all()
    np.testing.assert_allclose(pipeline.normalise(np.array([0, 255], np.uint8)), [-1, 1])


def test_global_batches(data_dir):
    import jax

    from nuwa_jax import parallel

    cfg = make_config(batch_size=8)
    mesh = parallel.make_mesh(cfg.mesh)
    rules = parallel.logical_rules(cfg)
    it = pipeline.make_iterator(
        cfg, ByteTokenizer(TOKENS), data_dir=data_dir, process_index=0, process_count=1
    )
    host = next(it)
    out = next(pipeline.global_batches(iter([host]), mesh, rules))
    assert out["video"].shape == (8, 4, SIZE, SIZE, 3)
    assert isinstance(out["video"], jax.Array)
    assert out["video"].sharding.spec[0] == "data"  # 'batch' -> (data, fsdp); fsdp is 1
    assert len(out["video"].addressable_shards) == 8
    for k in host:
        np.testing.assert_array_equal(np.asarray(out[k]), host[k])
