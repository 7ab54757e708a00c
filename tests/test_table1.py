"""benchmarks/table1.py: DoD vs AR on held-out storyboards, evaluated, into JSON and markdown."""

import json
import os
import subprocess
import sys

import pytest

from nuwa_jax import storyboard
from nuwa_jax.data import schema, synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow(reason="generates DoD and AR videos, evaluates them and writes the table")
def test_table1_generates_evaluates_and_fills_the_markdown(tmp_path):
    md = tmp_path / "results.md"
    md.write_text("# Results\n\nbefore\n\n<!-- table1:begin -->\nold\n<!-- table1:end -->\nafter\n")
    out, work = tmp_path / "table1.json", tmp_path / "work"
    args = [
        sys.executable,
        "benchmarks/table1.py",
        "--config=configs/tiny.py",
        "--config.evaluate.block_frames=2",
        "--random_weights",
        "--frames=10,4",
        "--videos=2",
        "--first_episode=7",
        f"--work={work}",
        f"--out={out}",
        f"--markdown={md}",
    ]
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    result = json.loads(out.read_text())
    assert result["weights"] == {"source": "random"} and result["held_out_episodes"] == [7, 8]
    assert result["plan_depth"] == 2  # tiny's depth, even for the 4-frame rows
    rows = [(r["schedule"], r["num_frames"]) for r in result["rows"]]
    assert rows == [("dod", 4), ("ar", 4), ("dod", 10), ("ar", 10)]
    for r in result["rows"]:
        assert r["seconds_per_video"] > 0 and 0 <= r["adherence"] <= 1
        assert 0 <= r["scene_adherence"] <= 1
        assert r["avg_fid"] is None  # no feature weights given
        report = json.loads(open(r["report"]).read())
        assert len(report["coherence"]["per_video"]) == 2

    # Each video was asked for its held-out episode's own captions.
    for n in (4, 10):
        for e in (7, 8):
            board = storyboard.load(str(work / "storyboards" / str(n) / f"ep{e}.json"))
            real = schema.read_frames(str(work / "reference"), synthetic.episode_id(e), range(n))
            assert board.frame_prompts(n) == list(real.captions)
            timings = json.loads((work / "videos" / f"dod_{n}" / f"ep{e}_timings.json").read_text())
            assert timings["num_frames"] == n and timings["seed"] == e

    text = md.read_text()
    assert text.startswith("# Results\n\nbefore\n\n<!-- table1:begin -->")
    assert text.endswith("<!-- table1:end -->\nafter\n") and "old" not in text
    assert "benchmarks/table1.py --config=configs/tiny.py" in text
    assert text.count("| DoD (NUWA-XL) |") == 2 and text.count("| AR (FDM*) |") == 2

    # A rerun keeps the videos these weights made and makes again those of other weights.
    kept, stale = (work / "videos" / "dod_4" / f"ep{e}_timings.json" for e in (7, 8))
    before = kept.read_text()
    tampered = json.loads(stale.read_text())
    tampered["weights"] = {"source": "bundle", "sha256": "0" * 64}
    stale.write_text(json.dumps(tampered))
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert kept.read_text() == before
    assert json.loads(stale.read_text())["weights"] == {"source": "random"}
