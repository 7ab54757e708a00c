"""benchmarks/interpolation.py: MarDini vs local MTD vs linear blend on held-out clips."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from nuwa_jax.data import schema, synthetic
from nuwa_jax.hierarchy import HierarchyPlan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_interpolation_compares_every_method_on_held_out_clips(tmp_path):
    out, work = tmp_path / "interp.json", tmp_path / "work"
    args = [
        sys.executable,
        "benchmarks/interpolation.py",
        "--config=configs/tiny.py",
        "--config.mardini.num_frames=4",  # one MarDini clip = one tiny segment (L = 4)
        "--random_weights",
        "--clips=3",
        "--episodes=2",
        f"--work={work}",
        f"--out={out}",
    ]
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["weights"] == {"source": "random"}
    (row,) = result["rows"]  # tiny: depth 2, one local level
    assert row["level"] == 1 and row["clips"] == 3
    assert set(row["methods"]) == {"mtd", "mardini", "blend", "vae"}
    assert set(row["seconds"]) == {"mtd", "mardini"}
    for r in row["methods"].values():
        assert r["clips"] == 3 and r["psnr_pooled"] > 0

    # The blend's figure, recomputed here from the clips the JSON names.
    window = HierarchyPlan.full(4, 2).window(1, 0)
    root = str(work / "reference")
    psnrs = []
    for e, s in row["clip_starts"]:
        x = np.stack(schema.read_frames(root, synthetic.episode_id(e), window + s).images)
        a = (np.arange(1, 3) / 3)[:, None, None, None]
        blend = np.round((1 - a) * x[0] + a * x[-1])
        mse = ((blend - x[1:-1].astype(np.float64)) ** 2).mean()
        psnrs.append(10 * math.log10(255**2 / mse) if mse else math.inf)
    blend = row["methods"]["blend"]
    assert blend["exact_clips"] == sum(not math.isfinite(p) for p in psnrs)
    finite = [p for p in psnrs if math.isfinite(p)]
    if finite:
        assert blend["psnr_mean"] == pytest.approx(np.mean(finite))
