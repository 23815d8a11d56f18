"""Walk the course as a student does and measure the memory it holds: every kernel left running.

Each notebook runs top to bottom in its own new kernel, in order (01, 02, ...), in the notebooks'
folder as JupyterLab runs it, and its kernel is left running when the next one starts: students
open the next notebook, they do not shut the last one down. For each kernel the walk prints its
peak resident memory (VmHWM in /proc/<pid>/status: exact, no sampling) and its resident memory when
its notebook has finished (VmRSS); then the walk's peak, the largest "resident memory of the
earlier kernels at their end + this kernel's peak" (what a classroom server must hold at that
moment, JupyterLab's own ~200 MB aside), and, sampled every 0.2 s, the largest total resident
memory of all running kernels. Under each notebook it names the cells that peaked highest: before
each cell the kernel's high-water mark is reset to its current resident memory (writing 5 to
/proc/<pid>/clear_refs, Linux 4.0 and later) and read after it, so each cell's own peak is exact
too, and the kernel's peak is the largest of them. Last, the peak of the command line's default
training, `python faceage_helpers.py --out <tmpdir>`, as a child process (its getrusage ru_maxrss).

Run: make walk   or   OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/course_walk.py [NOTEBOOK ...]
(kernels run this Python, so run it with .venv's; the notebooks need data.zip: $FACEAGE_DATA).
The full walk takes several minutes. Memory and time are reported here, never asserted in a test.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MB = 1024  # /proc/<pid>/status and ru_maxrss count KiB
GOALS = {"walk": 1800, "kernel": 700, "cli": 600}  # MB, issue 24


def parse_status(text):
    """{'VmHWM': MB, 'VmRSS': MB} from the text of /proc/<pid>/status (its lines 'VmRSS:  12345 kB')."""
    fields = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            fields[name] = int(value.split()[0]) / MB
    return fields


def memory(pid):
    """Peak and current resident memory (MB) of a running process, from /proc."""
    return parse_status(Path(f"/proc/{pid}/status").read_text())


def walk_rows(kernels):
    """Each kernel's row with what the earlier ones hold and the walk's total at its peak.

    kernels: [(name, peak MB, end MB, seconds), ...] in walk order. The walk at a notebook is the
    resident memory of the earlier kernels at their end plus this kernel's own peak.
    """
    rows, held = [], 0.0
    for name, peak, end, seconds in kernels:
        rows.append(dict(name=name, peak=peak, end=end, earlier=held, walk=held + peak, seconds=seconds))
        held += end
    return rows


def walk_peak(rows):
    """The row where the walk holds the most (the largest earlier + peak)."""
    return max(rows, key=lambda r: r["walk"])


class CellPeaks:
    """One kernel's peak resident memory (MB) in each code cell, and before the first one.

    Before a cell the kernel's high-water mark is reset to its current resident memory; after it,
    the mark is that cell's peak. Where the reset is refused, the marks only grow: the kernel's
    peak (the largest) is still right, but no cell is named.
    """

    def __init__(self):
        self.pid, self.start, self.cells, self.resets = None, 0.0, [], True

    def started(self, pid):
        self.pid, self.start = pid, memory(pid)["VmHWM"]

    def before_cell(self, cell, cell_index, **_):
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError:
            self.resets = False

    def after_cell(self, cell, cell_index, **_):
        first = next((ln for ln in cell.source.splitlines() if ln.strip() and not ln.startswith("#")), "")
        self.cells.append((memory(self.pid)["VmHWM"], cell_index, first.strip()))

    def peak(self):
        return max([self.start] + [mb for mb, _, _ in self.cells])

    def top(self, n):
        """The n cells with the highest peaks: [(MB, cell index, its first line of code)]."""
        return sorted(self.cells, reverse=True)[:n] if self.resets else []


class Sampler(threading.Thread):
    """The largest total resident memory of the given processes, sampled every `every` seconds."""

    def __init__(self, pids, every=0.2):
        super().__init__(daemon=True)
        self.pids, self.every, self.best, self.done = pids, every, 0.0, threading.Event()

    def run(self):
        while not self.done.is_set():
            total = 0.0
            for pid in list(self.pids):
                try:
                    total += memory(pid)["VmRSS"]
                except (OSError, KeyError):  # a kernel that has just started or ended
                    pass
            self.best = max(self.best, total)
            self.done.wait(self.every)


def notebook_client(path, timeout, on_start, cells):
    """An nbclient client for the notebook at path (in memory: the file is not written), in its folder.

    on_start(pid) is called once its new kernel is up, before the first cell runs; cells (a
    CellPeaks) hears of every code cell before and after it runs.
    """
    import nbformat
    from nbclient import NotebookClient

    client = NotebookClient(nbformat.read(path, as_version=4), timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})

    def started(notebook):
        on_start(client.km.provisioner.pid)
        cells.started(client.km.provisioner.pid)
    client.on_notebook_start = started
    client.on_cell_execute, client.on_cell_executed = cells.before_cell, cells.after_cell
    return client


def cli_peak():
    """(peak MB, seconds) of `python faceage_helpers.py --out <tmpdir>` (the default training)."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, str(ROOT / "faceage_helpers.py"), "--out", tmp],
                                stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"python faceage_helpers.py --out {tmp} failed (exit code {proc.returncode}).")
    return usage.ru_maxrss / MB, seconds


def print_report(rows, sampled):
    """The walk's table, then its peak, what all kernels hold at the end and the sampled total."""
    width = max(len(r["name"]) for r in rows)
    print(f"{'notebook':{width}s} {'peak MB':>8s} {'end MB':>7s} {'earlier end MB':>14s} {'walk MB':>8s} "
          f"{'seconds':>8s}")
    for r in rows:
        print(f"{r['name']:{width}s} {r['peak']:8.0f} {r['end']:7.0f} {r['earlier']:14.0f} {r['walk']:8.0f} "
              f"{r['seconds']:8.0f}")
    top = walk_peak(rows)
    print("\npeak MB = the kernel's peak resident memory; end MB = its resident memory when its notebook had "
          "finished (it stays running); walk MB = the earlier kernels' end MB + this peak.")
    print(f"Walk's peak: {top['walk']:.0f} MB, at {top['name']} ({top['earlier']:.0f} MB held by the earlier "
          f"kernels + its {top['peak']:.0f} MB peak); the {len(rows)} kernel(s) at the end: "
          f"{sum(r['end'] for r in rows):.0f} MB; the largest sampled total of the running kernels: {sampled:.0f} MB.")


def report_goals(rows, cli):
    """Issue 24's three goals, each met or MISSED (the figures are reported, never tested)."""
    top = walk_peak(rows)
    worst = max(rows, key=lambda r: r["peak"])
    checks = [(f"the walk's peak ({len(rows)} notebook(s))", top["walk"], GOALS["walk"]),
              (f"the largest kernel peak ({worst['name']})", worst["peak"], GOALS["kernel"])]
    if cli is not None:
        checks.append(("the command line's peak", cli, GOALS["cli"]))
    print("\nGoals (issue 24):")
    for what, value, limit in checks:
        print(f"  {what:60s} {value:6.0f} MB   goal <= {limit} MB: {'met' if value <= limit else 'MISSED'}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("notebooks", nargs="*", type=Path, help="walk these, in this order (default: every "
                   "notebooks/NN_*.ipynb in order)")
    p.add_argument("--no-cli", action="store_true", help="skip the command line's training")
    p.add_argument("--timeout", type=int, default=900, help="seconds one cell may take (default 900)")
    p.add_argument("--cells", type=int, default=3, help="name this many top cells per notebook (default 3)")
    args = p.parse_args(argv)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as make test and make walk run them
    paths = [path.resolve() for path in args.notebooks] or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        sys.exit(f"no such notebook: {missing[0]}")
    print(f"Course walk: {len(paths)} notebook{'s' * (len(paths) > 1)}, each in its own kernel "
          f"({sys.executable} -m ipykernel_launcher), "
          f"all left running; OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}\n", flush=True)
    pids, clients, kernels = [], [], []
    sampler = Sampler(pids)
    sampler.start()
    try:
        for path in paths:
            t0 = time.perf_counter()
            cells = CellPeaks()
            clients.append(notebook_client(path, args.timeout, pids.append, cells))
            try:
                clients[-1].execute(cleanup_kc=False)  # cleanup_kc=False: the kernel goes on running
            except Exception as e:  # a failing cell: the walk cannot go on as a student's would
                sys.exit(f"{path.name} failed: {type(e).__name__}: {str(e).strip().splitlines()[-1]}")
            kernels.append((path.name, cells.peak(), memory(pids[-1])["VmRSS"], time.perf_counter() - t0))
            print(f"  {path.name}: peak {kernels[-1][1]:.0f} MB, {kernels[-1][2]:.0f} MB at the end, "
                  f"{kernels[-1][3]:.0f} s", flush=True)
            for mb, index, line in cells.top(args.cells):
                print(f"      cell {index:3d} peaked at {mb:4.0f} MB: {line[:90]}", flush=True)
    finally:
        sampler.done.set()
        for client in clients:
            if client.km is not None:
                client._cleanup_kernel()  # nbclient's own shutdown of the kernel it started
    print()
    rows = walk_rows(kernels)
    print_report(rows, sampler.best)
    cli = None
    if not args.no_cli:
        cli, seconds = cli_peak()
        print(f"\nCommand line: python faceage_helpers.py --out <tmpdir> (the default training): "
              f"peak {cli:.0f} MB, {seconds:.0f} s")
    report_goals(rows, cli)


if __name__ == "__main__":
    main()
