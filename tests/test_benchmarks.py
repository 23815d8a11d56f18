"""The benchmarks' own logic (benchmarks/): which ratio the summary lines report, and the course walk's sums.

Nothing here times or measures anything: the figures are made up, and no speed or memory is asserted.
"""
import importlib.util
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = load("bench_epoch")
walk = load("course_walk")


def summarised(batch, hidden, ms):
    """bench_epoch.summarise on made-up epoch times (ms: median ms per loop, 3 repeats each)."""
    times = {k: [v / 1e3 * f for f in (0.9, 1.0, 1.1)] for k, v in ms.items()}
    params = {"W1": np.ones((2, 3)), "b1": np.zeros(2)}
    outs = {k: params for k in ("numpy32", "torch32", "numpy64", "torch64", "jaxscan32", "jaxscan64")}
    peaks = {"float32": SimpleNamespace(gflops=100.0), "float64": SimpleNamespace(gflops=50.0)}
    return bench.summarise(10_000, 2304, peaks, batch, hidden, times, outs, {"scan": 1.0, "step": 0.5})


MS = dict(numpy32=100.0, torch32=125.0, floor32=70.0, numpy64=150.0, floor64=110.0)


def test_the_jax_line_is_against_the_faster_variant_and_ends_the_output():
    rows = [summarised(128, 100, dict(MS, jaxscan32=125.0, jaxstep32=200.0)),
            summarised(64, 64, dict(MS, jaxscan32=50.0, jaxstep32=40.0))]
    assert [r["jax_faster"] for r in rows] == ["jaxscan32", "jaxstep32"]
    assert bench.summary_lines(rows) == ["numpy/torch epoch time ratio at batch 128, float32: 0.80",
                                         "numpy/jax epoch time ratio at batch 128, float32: 0.80"]
    rows[0] = summarised(128, 100, dict(MS, jaxscan32=400.0, jaxstep32=80.0))
    assert bench.summary_lines(rows)[1] == "numpy/jax epoch time ratio at batch 128, float32: 1.25"


def test_the_summary_lines_fall_back_to_the_nearest_run_and_keep_their_format():
    rows = [summarised(64, 300, dict(MS, jaxscan32=80.0, jaxstep32=90.0)),
            summarised(64, 64, dict(MS, jaxscan32=200.0, jaxstep32=90.0))]
    lines = bench.summary_lines(rows)
    assert all(re.fullmatch(r"numpy/(torch|jax) epoch time ratio at batch 64, float32: \d+\.\d\d", ln) for ln in lines)
    assert lines[1].endswith(": 1.11")  # hidden 64 is nearer 100 than 300; its faster variant is the step


def test_the_benchmark_peers_are_pinned_and_leave_numpy_to_the_venv():
    lines = [ln.strip() for ln in (ROOT / "benchmarks" / "requirements-bench.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==\S+", ln) for ln in lines)
    names = {ln.split("==")[0].lower() for ln in lines}
    assert {"torch", "jax", "jaxlib", "threadpoolctl"} <= names and "numpy" not in names
    assert "torch==2.13.0" in lines  # the release on this machine's disk


def test_proc_status_is_read_in_megabytes():
    text = "Name:\tpython\nVmPeak:\t  900000 kB\nVmHWM:\t  524288 kB\nVmRSS:\t  262144 kB\nThreads:\t4\n"
    assert walk.parse_status(text) == {"VmHWM": 512.0, "VmRSS": 256.0}
    own = walk.memory(os.getpid())
    assert set(own) == {"VmHWM", "VmRSS"} and own["VmHWM"] >= own["VmRSS"] > 0


def test_the_walk_adds_what_the_earlier_kernels_hold_to_each_peak():
    kernels = [("01", 735, 354, 29), ("02", 339, 304, 2), ("03", 894, 671, 47), ("04", 769, 541, 13)]
    rows = walk.walk_rows(kernels)
    assert [r["earlier"] for r in rows] == [0, 354, 658, 1329]
    assert [r["walk"] for r in rows] == [735, 693, 1552, 2098]
    assert walk.walk_peak(rows)["name"] == "04"


def test_each_cell_is_named_by_its_first_line_of_code_and_the_kernel_peak_is_the_largest():
    cells = walk.CellPeaks()
    cells.started(os.getpid())  # this test's own process stands in for a kernel
    for index, source in enumerate(["# a comment first\n\nx = np.ones(3)", "import os"]):
        cell = SimpleNamespace(source=source)
        cells.before_cell(cell=cell, cell_index=index)
        cells.after_cell(cell=cell, cell_index=index, execute_reply={})
    assert sorted((index, line) for _, index, line in cells.cells) == [(0, "x = np.ones(3)"), (1, "import os")]
    assert cells.peak() == max([cells.start] + [mb for mb, _, _ in cells.cells])
    assert len(cells.top(1)) == (1 if cells.resets else 0)
