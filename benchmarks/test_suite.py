"""Wall time of the test suite, per marker and per test, as `make test` runs it.

    python benchmarks/test_suite.py --label="issue 28 step 1"          # the whole suite
    python benchmarks/test_suite.py --label=fast -- -m "not slow"        # a subset

Runs pytest in this process with the Makefile's options (two xdist workers, worksteal)
and a small plugin that collects every test's report on the controller: its duration
(setup + call + teardown), the part of it spent tracing and compiling and its CPU
seconds, subprocesses included (conftest.py measures both in each worker), outcome and
markers. CPU seconds move less than wall seconds when the two workers share two cores.
Appends one run to benchmarks/results/test_suite.json (earlier runs are kept, newest
last): wall time, the sum of test times per marker (a test counts under each of its
markers, and under "unmarked"), the sums of compile and CPU seconds, the 15 slowest
tests, the counts of outcomes, report.environment() (machine, versions, date) and the
load average at the start and at the end.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import report  # noqa: E402

MARKERS = ("slow", "parity", "multihost", "faults")


class Collector:
    """pytest plugin: per-test duration, outcome and markers, summed over the phases."""

    def __init__(self):
        self.tests: dict[str, dict] = collections.defaultdict(
            lambda: dict(
                seconds=0.0, compile_seconds=0.0, cpu_seconds=0.0, outcome="passed", markers=[]
            )
        )

    def pytest_runtest_logreport(self, report):
        test = self.tests[report.nodeid]
        test["seconds"] += report.duration
        props = dict(report.user_properties)
        test["compile_seconds"] += props.get("compile_seconds", 0.0)
        test["cpu_seconds"] += props.get("cpu_seconds", 0.0)
        test["markers"] = sorted(m for m in MARKERS if m in report.keywords)
        if report.failed:
            test["outcome"] = "failed"
        elif report.skipped and test["outcome"] == "passed":
            test["outcome"] = "skipped"


def summarise(tests: dict[str, dict], wall: float) -> dict:
    """The run's figures from the collected tests."""
    per_marker = collections.Counter()
    for t in tests.values():
        for m in t["markers"] or ["unmarked"]:
            per_marker[m] += t["seconds"]
    slowest = sorted(tests.items(), key=lambda kv: -kv[1]["seconds"])[:15]
    return dict(
        wall_seconds=round(wall, 1),
        test_seconds=round(sum(t["seconds"] for t in tests.values()), 1),
        compile_seconds=round(sum(t["compile_seconds"] for t in tests.values()), 1),
        cpu_seconds=round(sum(t["cpu_seconds"] for t in tests.values()), 1),
        per_marker_seconds={k: round(v, 1) for k, v in sorted(per_marker.items())},
        outcomes=dict(collections.Counter(t["outcome"] for t in tests.values())),
        slowest=[
            dict(
                test=k,
                seconds=round(v["seconds"], 1),
                compile_seconds=round(v["compile_seconds"], 1),
                cpu_seconds=round(v["cpu_seconds"], 1),
            )
            for k, v in slowest
        ],
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", required=True, help="What this run measures.")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(report.RESULTS, "test_suite.json"))
    parser.add_argument(
        "--every-test", help="Also write every test's figures to this JSON file (sorted)."
    )
    parser.add_argument("pytest_args", nargs="*", help="More pytest arguments (after --).")
    args = parser.parse_args()
    load_at_start = os.getloadavg()
    collector = Collector()
    started = time.perf_counter()
    code = pytest.main(
        ["-n", str(args.workers), "--dist", "worksteal", "-q", *args.pytest_args],
        plugins=[collector],
    )
    run = dict(
        label=args.label,
        pytest_args=args.pytest_args,
        workers=args.workers,
        exit_code=int(code),
        **summarise(collector.tests, time.perf_counter() - started),
        environment=report.environment(),  # after pytest: conftest sets up JAX first
        load_average_at_start=load_at_start,
        load_average_at_end=os.getloadavg(),
    )
    if args.every_test:
        every = sorted(collector.tests.items(), key=lambda kv: -kv[1]["seconds"])
        report.write_result("test_suite_every_test", dict(every), args.every_test)
    runs = []
    if os.path.exists(args.out):
        with open(args.out) as f:
            runs = json.load(f)["runs"]
    path = report.write_result("test_suite", dict(runs=[*runs, run]), args.out)
    print(f"{path}: {run['wall_seconds']} s wall, {run['outcomes']}")
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
