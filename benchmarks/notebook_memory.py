"""Peak memory and run time of each notebook's kernel, and of the default command-line training.

A JupyterHub or Binder user has about 2 GB in all, JupyterLab included, so each notebook's kernel
should stay under 1 GB. Each notebook runs top to bottom in a fresh kernel (nbclient, on a copy in
memory); one extra cell then reads the kernel's own peak resident memory (getrusage's ru_maxrss).
The command line is measured the same way, as a child process.

Run: .venv/bin/python benchmarks/notebook_memory.py [NOTEBOOK ...]   (needs data.zip: $FACEAGE_DATA)
Timings depend on what else the machine does; they are reported, never tested.
"""
import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
PEAK_CELL = "import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"  # KiB on Linux


def notebook_peak(path):
    """(peak MB, seconds) of a fresh kernel running the notebook at path, then the PEAK_CELL."""
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PEAK_CELL))
    t0 = time.perf_counter()  # in the notebook's folder, as nbval and JupyterLab run it; the file is not written
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - t0
    kib = int(nb.cells[-1].outputs[0]["text"])
    return kib / 1024, seconds


def cli_peak():
    """(peak MB, seconds) of `python faceage_helpers.py` (the default training) in a temporary folder."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "faceage_helpers.py"), "--out", tmp], check=True,
                       stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - t0
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/NN_*.ipynb")
    p.add_argument("--no-cli", action="store_true", help="skip the command-line training")
    args = p.parse_args(argv)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as make test runs them
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    print(f"{'what':45s} {'peak MB':>8s} {'seconds':>8s}")
    if not args.no_cli:
        mb, s = cli_peak()
        print(f"{'python faceage_helpers.py (default training)':45s} {mb:8.0f} {s:8.0f}", flush=True)
    for path in paths:
        mb, s = notebook_peak(path.resolve())
        print(f"{path.name:45s} {mb:8.0f} {s:8.0f}", flush=True)


if __name__ == "__main__":
    main()
