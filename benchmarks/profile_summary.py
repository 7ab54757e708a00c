"""Where a traced step's device time goes: kernels by category, from a jax.profiler trace.

    python benchmarks/profile_summary.py TRACE_DIR [--steps=N]

Reads the newest `*.xplane.pb` under TRACE_DIR (as `jax.profiler.trace` or clu's Profile
hook writes them) with `jax.profiler.ProfileData`, sums the durations of the kernels on
the accelerator's stream lines, and groups them by kernel name into categories
(convolution, matmul, attention, fused elementwise, reduction, memory, collective,
other). `busy_fraction` = kernel time / the span from the first kernel's start to the
last one's end: what is missing is launch gaps and host work. Used by
benchmarks/train_step.py --profile_steps; on CPU there is no device plane and the
summary says so.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import re
import sys

# First match wins: convolutions before matmuls (cuDNN's convolution kernels are
# implicit GEMMs), attention before both (fused attention kernels contain "gemm" too).
CATEGORIES = (
    ("attention", re.compile(r"flash|fmha|attention|cudnn_sdpa|mha", re.I)),
    ("convolution", re.compile(r"conv|fprop|dgrad|wgrad|implicit_gemm|winograd", re.I)),
    ("matmul", re.compile(r"gemm|xmma|nvjet|cutlass|cublas|matmul|dot", re.I)),
    ("collective", re.compile(r"nccl|all.?reduce|all.?gather|reduce.?scatter", re.I)),
    ("memory", re.compile(r"memcpy|memset|copy|transpose|dynamic.update.slice", re.I)),
    ("reduction", re.compile(r"reduce|reduction", re.I)),
    ("fused elementwise", re.compile(r"fusion|loop_|elementwise|triton", re.I)),
)


def category(kernel: str) -> str:
    for name, pattern in CATEGORIES:
        if pattern.search(kernel):
            return name
    return "other"


def _device_planes(profile) -> list:
    return [p for p in profile.planes if p.name.startswith("/device:") and "CPU" not in p.name]


def summarize(trace_dir: str, steps: int = 1, top: int = 15) -> dict:
    """Device kernel time of the newest trace under trace_dir, per category and per kernel."""
    from jax.profiler import ProfileData

    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True),
                   key=os.path.getmtime)  # fmt: skip
    if not files:
        raise FileNotFoundError(f"{trace_dir}: no *.xplane.pb trace")
    profile = ProfileData.from_file(files[-1])
    planes = _device_planes(profile)
    if not planes:
        return dict(trace=files[-1], device_plane=None, note="no accelerator plane (CPU run)")
    plane = planes[0]
    per_kernel: collections.Counter = collections.Counter()
    start, end = None, None
    for line in plane.lines:
        # Stream lines hold kernels; 'XLA Ops' / 'XLA Modules' lines repeat the same time.
        if not line.name.lower().startswith("stream"):
            continue
        for event in line.events:
            per_kernel[event.name] += event.duration_ns
            s, e = event.start_ns, event.start_ns + event.duration_ns
            start = s if start is None else min(start, s)
            end = e if end is None else max(end, e)
    total = sum(per_kernel.values())
    per_category: collections.Counter = collections.Counter()
    for kernel, ns in per_kernel.items():
        per_category[category(kernel)] += ns
    span = (end - start) if total else 0
    return dict(
        trace=files[-1],
        device_plane=plane.name,
        traced_steps=steps,
        kernel_ms_per_step=total / 1e6 / steps,
        span_ms_per_step=span / 1e6 / steps,
        busy_fraction=total / span if span else None,
        categories={
            k: dict(ms_per_step=v / 1e6 / steps, share=v / total)
            for k, v in per_category.most_common()
        },  # fmt: skip
        top_kernels=[
            dict(kernel=k[:160], category=category(k), ms_per_step=v / 1e6 / steps, share=v / total)
            for k, v in per_kernel.most_common(top)
        ],  # fmt: skip
    )


def main(argv: list[str]) -> None:
    steps = 1
    args = [a for a in argv[1:] if not a.startswith("--steps=")]
    for a in argv[1:]:
        if a.startswith("--steps="):
            steps = int(a.split("=", 1)[1])
    if len(args) != 1:
        raise SystemExit(__doc__)
    print(json.dumps(summarize(args[0], steps), indent=1))


if __name__ == "__main__":
    main(sys.argv)
