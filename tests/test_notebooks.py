"""The Colab notebooks run end to end on CPU: each is executed by nbclient in a headless
kernel (this interpreter's ipykernel) from the repository root, with small settings
injected after its `parameters` cell, papermill-style; then its outputs are checked.

Each notebook runs twice: on the tests' 8 simulated CPU devices and on one device, as a
Colab CPU or GPU runtime has (the kernel's XLA_FLAGS). Times on 2 CPU cores: docs/colab.md.
"""

from __future__ import annotations

import json
import os
import sys
import time

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from nuwa_jax import video_io
from nuwa_jax.data import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLAB = os.path.join(REPO, "colab")
CELL_TIMEOUT_S = 600
KERNEL = "nuwa-jax-tests"


@pytest.fixture(scope="module", autouse=True)
def kernel_of_this_interpreter(tmp_path_factory):
    """A kernelspec that starts ipykernel with this interpreter (sys.executable), found
    first on JUPYTER_PATH: a `python3` kernel installed elsewhere on the machine may
    belong to another Python."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"})
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", os.pathsep.join([str(root), os.environ.get("JUPYTER_PATH", "")]))
        yield


@pytest.fixture(params=[8, 1], ids=["8_devices", "1_device"])
def kernel_devices(request, monkeypatch) -> int:
    """The kernel's device count: the tests' 8 simulated CPU devices, or the one device of
    a Colab CPU or GPU runtime (the kernel inherits XLA_FLAGS from this process)."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]  # fmt: skip
    if request.param > 1:
        flags.append(f"--xla_force_host_platform_device_count={request.param}")
    monkeypatch.setenv("XLA_FLAGS", " ".join(flags))
    return request.param


def parameter_cell(nb: nbformat.NotebookNode) -> int:
    """The index of the notebook's one cell tagged `parameters`."""
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"want one cell tagged 'parameters', found {len(tagged)}"
    return tagged[0]


def inject(nb: nbformat.NotebookNode, params: dict) -> nbformat.NotebookNode:
    """`params` as assignments in a new cell right after the parameters cell (as papermill
    does); each must name a parameter the notebook defines."""
    at = parameter_cell(nb)
    defined = {line.split("=")[0].strip() for line in nb.cells[at].source.splitlines()
               if "=" in line and not line.startswith((" ", "#"))}  # fmt: skip
    unknown = set(params) - defined
    assert not unknown, f"not parameters of the notebook: {sorted(unknown)}"
    source = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    cell["id"] = "injected-parameters"
    nb.cells.insert(at + 1, cell)
    return nb


def execute(name: str, params: dict) -> tuple[nbformat.NotebookNode, float]:
    """Runs colab/<name> with `params` from the repository root; (notebook, seconds)."""
    nb = inject(nbformat.read(os.path.join(COLAB, name), as_version=4), params)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL,
                            resources={"metadata": {"path": REPO}})  # fmt: skip
    t0 = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - t0
    print(f"{name}: {seconds:.1f} s")
    return nb, seconds


def text_of(nb: nbformat.NotebookNode) -> str:
    """Everything the cells printed (stdout / stderr streams and text/plain results)."""
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            out.append(o.get("text", "") or o.get("data", {}).get("text/plain", ""))
    return "\n".join(out)


def displayed(nb: nbformat.NotebookNode, mime: str) -> list[str]:
    return [o["data"][mime] for c in nb.cells for o in c.get("outputs", [])
            if mime in o.get("data", {})]  # fmt: skip


def embedded_videos(nb: nbformat.NotebookNode) -> list[str]:
    return [h for h in displayed(nb, "text/html") if "<video" in h and "base64," in h]


def test_notebooks_are_committed_without_outputs_and_have_parameters():
    names = sorted(f for f in os.listdir(COLAB) if f.endswith(".ipynb"))
    assert len(names) >= 2, names
    for name in names:
        nb = nbformat.read(os.path.join(COLAB, name), as_version=4)
        nbformat.validate(nb)
        parameter_cell(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{name}: outputs"
                compile(cell.source, name, "exec")  # no IPython magics: plain Python


@pytest.mark.slow(reason="executes the quickstart notebook in a kernel")
def test_quickstart_runs_and_plays_the_video(tmp_path, kernel_devices):
    frames = 31
    nb, seconds = execute("quickstart.ipynb", dict(FRAMES=frames, STEPS=2, OUT_DIR=str(tmp_path)))
    text = text_of(nb)
    assert "using the checkout at" in text and "nothing installed" in text
    assert f"{kernel_devices} device(s)" in text
    assert f"mesh axes: {{'data': {kernel_devices}, 'fsdp': 1, 'tensor': 1}}" in text
    if kernel_devices == 8:
        assert "level 2: 225 segments -> 29 calls of 8" in text  # the full video's last level
        assert "cpu:7: segment(s) 231..231, padding" in text  # last call: 1 segment, 7 pads
    else:  # replicated (P()): the one device holds the whole call
        assert "level 2: 225 segments -> 225 calls of 1" in text
        assert "call 224: sharding P()" in text
        assert "cpu:0: segment(s) 224..224 (every segment of the call), frames" in text
    assert len(embedded_videos(nb)) == 1
    assert len(displayed(nb, "image/png")) == 2  # keyframes, filmstrip
    video = video_io.read_video(str(tmp_path / "video.mp4"))
    assert video.shape == (frames, 32, 32, 3) and video.std() > 0
    report = json.loads((tmp_path / "video_timings.json").read_text())
    assert report["weights"]["source"] == "bundle" and report["num_frames"] == frames
    assert [lv["segments"] for lv in report["levels"]] == [1, 1, 2]


@pytest.mark.slow(reason="executes the MarDini tasks notebook in a kernel")
def test_mardini_tasks_run_on_a_given_video(tmp_path, kernel_devices):
    """The user's video (here a synthetic one written first) through the trained local MTD
    (interpolation) and a random-weight MarDini (every task of RANDOM_TASKS)."""
    frames, _ = synthetic_clip()
    clip = tmp_path / "mine.mp4"
    video_io.write_mp4(str(clip), [frames], fps=8)
    out = tmp_path / "out"
    nb, seconds = execute("mardini_tasks.ipynb", dict(INPUTS=[str(clip)], STEPS=2, UPLOAD=False,
                                                      OUT_DIR=str(out)))  # fmt: skip
    text = text_of(nb)
    assert f"{len(frames)} frames of {clip}" in text
    assert "MarDini: False" in text  # the demo bundle holds none: the notebook says so
    assert "interpolation by mtd: 16 frames, given at [0, 15]" in text
    tasks = ("image_to_video", "video_expansion", "interpolation")
    for task in tasks:
        assert f"--- {task} (MarDini, RANDOM weights)" in text
        assert f"{task} by mardini: 16 frames" in text
    assert len(embedded_videos(nb)) == 1 + len(tasks)
    interp = json.loads((out / "interpolation_mtd" / "video_timings.json").read_text())
    assert interp["weights"]["source"] == "given" and interp["level"] == 2
    made = video_io.read_video(str(out / "interpolation_mtd" / "video.mp4"))
    assert made.shape == (16, 32, 32, 3)
    # The given ends are the VAE round trip of the video's first and last frames.
    first, last = (video_io.resize_and_crop(f, 32).astype(float) for f in frames[[0, -1]])
    assert np.abs(made[0] - first).mean() < np.abs(made[0] - last).mean()
    assert np.abs(made[-1] - last).mean() < np.abs(made[-1] - first).mean()


def synthetic_clip():
    """24 frames (64 px) of the synthetic benchmark: a stand-in for the user's video."""
    return synthetic.render_episode(seed=0, episode=1, num_frames=24, resolution=64)
