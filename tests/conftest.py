"""Test setup: 8 simulated CPU devices, set before JAX starts.

Every sharded code path runs on every test run. Nothing here imports jax before the
flags are in place.
"""

import atexit
import os
import resource
import shutil
import tempfile

# Eigen's own thread pool off: the suite runs two pytest workers on two cores, and each
# worker's Eigen threads fought the other's. Measured on 2 cores (2026-12-07, the trainer's
# six test files, -n 2): 870 test-seconds instead of 965, compiles included.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_cpu_multi_thread_eigen=false"
).strip()
# XLA:CPU at its usual optimisation level. This file used to set O0 and skip LLVM's
# expensive passes, for cheaper compiles; measured on 2 cores (2026-12-07) that saved
# little compile time and cost much run time: the conditioning MTD's train step compiled
# in 21 s instead of 26 s but ran 1.75 s a step instead of 0.27 s, and the whole suite
# (benchmarks/results/test_suite.json) took 1518 s optimised throughout against
# 1745 s with O0 everywhere but the three learning tests.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # keep TensorFlow off any accelerator

# One persistent compilation cache for the whole session, subprocesses included (they
# inherit the variables): the trainer, latent and bundle tests compile the same tiny train
# steps and samplers many times over. Removed when the session ends.
_CACHE = tempfile.mkdtemp(prefix="nuwa_jax_test_xla_cache_")
atexit.register(shutil.rmtree, _CACHE, True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

# Seconds this process spends tracing, lowering and compiling with XLA, so that each test
# report says how much of its time went to compiles (benchmarks/test_suite.py sums them).
# Compiles in a test's subprocesses are not counted; cache hits cost no backend compile.
_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_compile_seconds = [0.0]


def _count_compile(event: str, seconds: float, **_) -> None:
    if event in _COMPILE_EVENTS:
        _compile_seconds[0] += seconds


jax.monitoring.register_event_duration_secs_listener(_count_compile)

import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402

from nuwa_jax.models.mardini import MarDini  # noqa: E402
from nuwa_jax.models.mtd import MTD  # noqa: E402
from nuwa_jax.train import trainer  # noqa: E402


def pytest_addoption(parser):
    parser.addoption(
        "--cut-condition",
        action="store_true",
        help="The learning tests train and sample with every condition zeroed (the MTD's "
        "given frames and prompts, MarDini's kept frames): each must then fail.",
    )


def pytest_collection_modifyitems(config, items):
    """Every `slow` test says why in one line: @pytest.mark.slow(reason="...")."""
    bare = [
        i.nodeid
        for i in items
        if (m := i.get_closest_marker("slow")) and not m.kwargs.get("reason")
    ]
    if bare:
        raise pytest.UsageError("slow tests without a reason= : " + ", ".join(bare))


def _cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished, waited-for children."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


_cpu_at_start = [0.0]


def pytest_runtest_logstart(nodeid, location):
    _compile_seconds[0] = 0.0
    _cpu_at_start[0] = _cpu_seconds()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """The teardown report carries the test's compile seconds and CPU seconds (setup + call
    + teardown; CPU time counts subprocesses too, and moves less than wall time when the
    two workers share the cores)."""
    if call.when == "teardown":
        item.user_properties.append(("compile_seconds", round(_compile_seconds[0], 2)))
        item.user_properties.append(("cpu_seconds", round(_cpu_seconds() - _cpu_at_start[0], 2)))
    return (yield)


# -----------------------------------------------------------------------------------------
# One train step per configuration for the session.
# -----------------------------------------------------------------------------------------
_TRAIN_STEPS: dict = {}  # (config, mesh, rules) -> (TrainStep, an untouched step-0 state)
_make_train_step = trainer.make_train_step


def _copy(state):
    return jax.tree.map(lambda x: x.copy(), state)  # new buffers, same shardings


def shared_make_train_step(config, mesh, rules, tokenizer):
    """trainer.make_train_step, built once per worker for each configuration: a later call
    with the same config, mesh and rules gets the same jitted step (no retrace, no new
    compile) and a fresh copy of the step-0 state, as the first call's was before any step
    donated it. The tests that run `train` several times on one config (resume, NaN,
    damaged checkpoints, the workdir lock) pay for the models and the step once. Exact:
    the step is a function of these three (the tokenizer follows config.text)."""
    devices = tuple(d.id for d in mesh.devices.flat)
    key = (repr(config.to_dict()), mesh.axis_names, mesh.devices.shape, devices, repr(rules))
    if key not in _TRAIN_STEPS:
        step, state = _make_train_step(config, mesh, rules, tokenizer)
        _TRAIN_STEPS[key] = (step, _copy(state))
        return step, state
    step, state = _TRAIN_STEPS[key]
    return step, _copy(state)


@pytest.fixture(scope="session", autouse=True)
def shared_train_steps():
    """Every test's `train` and make_train_step go through shared_make_train_step."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer, "make_train_step", shared_make_train_step)
        yield _TRAIN_STEPS


@pytest.fixture(scope="session")
def cache_dir() -> str:
    """The session's persistent compilation cache: trainer runs with the same config, in
    any module or subprocess, compile their step once."""
    path = os.environ["JAX_COMPILATION_CACHE_DIR"]
    assert jax.config.jax_compilation_cache_dir == path
    return path


@pytest.fixture
def cut_condition(request, monkeypatch) -> bool:
    """With --cut-condition, nothing of the condition reaches the models for the rest of the
    test: the MTD sees zeros for x0^c, for the given frames of x_t and for the prompts'
    embeddings; MarDini plans from zeros and denoises with zeros at its kept frames. The
    learning tests take this fixture, so that `pytest --cut-condition` shows each of them
    failing when the condition is cut (a check of the tests, not of the models)."""
    if not request.config.getoption("--cut-condition"):
        yield False
        return
    _TRAIN_STEPS.clear()  # steps traced before the cut would keep the condition
    mtd_call, plan, denoise = MTD.__call__, MarDini.plan, MarDini.denoise

    def cut_mtd(self, x_t, t, context, cond, mask, level=None):
        given = mask.astype(bool)[:, :, None, None, None]
        x_t = jnp.where(given, 0.0, x_t).astype(x_t.dtype)
        return mtd_call(self, x_t, t, jnp.zeros_like(context), jnp.zeros_like(cond), mask, level)

    def cut_plan(self, latents, kept, low_res=None):
        low_res = None if low_res is None else jnp.zeros_like(low_res)
        return plan(self, jnp.zeros_like(latents), kept, low_res)

    def cut_denoise(self, x, t, signals, kept):
        x = jnp.where(kept.astype(bool)[:, :, None, None, None], 0.0, x).astype(x.dtype)
        return denoise(self, x, t, signals, kept)

    monkeypatch.setattr(MTD, "__call__", cut_mtd)
    monkeypatch.setattr(MarDini, "plan", cut_plan)
    monkeypatch.setattr(MarDini, "denoise", cut_denoise)
    yield True
    _TRAIN_STEPS.clear()  # and steps traced during it would keep the cut
