"""Time FaceAge's NumPy training epoch against PyTorch and against the matrix-product floor.

For each batch size and hidden size, one run times side by side, interleaved
(numpy32, torch32, jax scan, jax step, floor32, numpy64, floor64, numpy32, ...):

  numpy    fh.train_epoch, the lesson's loop (forward, mse_loss, backward, sgd_step per
           minibatch): one epoch of minibatch SGD, float32 and float64
  torch    the same network and loop in PyTorch on the CPU: nn.Linear, ReLU, MSE loss,
           autograd and torch.optim.SGD, the same initial weights, the same shuffle
  jax      the same network and loop in JAX on the CPU, as a JAX user writes it: the loss in
           jax.numpy, jax.value_and_grad, the faces on the device, the parameters donated to
           each update; two variants: "scan", the whole epoch one compiled function
           (jax.lax.scan over the minibatches), and "step", one jitted SGD step called from a
           Python loop. Compiling is done before the timing and reported apart
  floor    per minibatch only the two big products the network needs, on the same shapes:
           X_b @ W1.T (forward) and dZ.T @ X_b (dW1), W1 as stored (hidden, 2304), into
           preallocated outputs; nothing else

It reports medians, the median of the paired ratios (repeat r of numpy over repeat r of torch),
GFLOP/s counted as the 4 N D H flops of those two products, and the fraction of this machine's
matmul peak: a large square sgemm/dgemm timed in the same run. The data are synthetic (no data.zip
needed): N random uint8 faces, converted once to standardised float32 (and float64).

Run: make bench   (it installs PyTorch and JAX into build/bench-site, outside .venv)
Timings depend on the machine and on what else runs on it; they are never pass/fail tests.
It ends with two summary lines, numpy/torch and numpy/jax (the faster JAX variant) at batch 128.
Arguments: make bench BENCH_ARGS="--quick", or PYTHONPATH=build/bench-site .venv/bin/python
benchmarks/bench_epoch.py --help
"""

import argparse
import os
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=10_000, help="number of synthetic faces (default 10000)")
    p.add_argument("--batch", type=int, nargs="+", default=[32, 64, 128, 512], help="batch sizes")
    p.add_argument("--hidden", type=int, nargs="+", default=[64, 100, 300], help="hidden sizes")
    p.add_argument("--threads", type=int, default=None,
                   help="BLAS and torch threads (default: what NumPy's BLAS uses, usually one per core)")
    p.add_argument("--budget", type=float, default=20.0,
                   help="seconds of repeats per configuration; sets the repeat count (default 20)")
    p.add_argument("--repeats", type=int, default=None, help="fixed repeat count (overrides --budget)")
    p.add_argument("--pause", type=float, default=0.15,
                   help="seconds idle before each timed epoch, so BLAS/OpenMP threads still spinning "
                        "from the previous one do not steal a core (default 0.15)")
    p.add_argument("--quick", action="store_true", help="batch 64 and 128, hidden 64 and 100, 3 repeats: a smoke test")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.hidden, args.repeats = [64, 128], [64, 100], 3
    return args


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.threads:  # before NumPy loads its BLAS
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import gc  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import faceage_helpers as fh  # noqa: E402

LR = 0.005  # fh.train's default; synthetic data stay far from diverging at this rate


# ----------------------------------------------------------------------------- environment

def numpy_blas():
    """(description, threads) of the BLAS NumPy calls for matmul."""
    try:
        from threadpoolctl import threadpool_info
        for lib in threadpool_info():
            if lib["user_api"] == "blas" and "numpy" in lib["filepath"]:
                desc = (f"{lib['internal_api']} {lib['version']} ({lib.get('architecture') or '?'} kernels, "
                        f"{lib.get('threading_layer') or '?'} threads) via threadpoolctl")
                return desc, int(lib["num_threads"])
    except ImportError:
        pass
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    threads = int(os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS") or os.cpu_count())
    return f"{blas['name']} {blas['version']} via numpy.show_config (threads assumed)", threads


def torch_blas(torch):
    config = torch.__config__.show()
    mkl = [ln.strip(" -") for ln in config.splitlines() if "Math Kernel Library" in ln]
    blas = [part.split("=")[1] for part in config.replace(",", " ").split() if part.startswith("BLAS_INFO=")]
    backend = [ln.split(":")[1].strip() for ln in torch.__config__.parallel_info().splitlines()
               if "parallel backend" in ln]
    return f"{(mkl or blas or ['unknown'])[0]}; ATen parallel backend {(backend or ['?'])[0]}"


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class OtherCpuUse:
    """How many cores other programs (and the hypervisor: steal time) used while the benchmark ran.

    From /proc/stat (all busy CPU time) minus this process's own CPU time; None where there is
    no /proc/stat. The load average cannot tell: it counts the benchmark itself.
    """

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample():
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        except (OSError, ValueError):
            return None
        busy = sum(fields) - fields[3] - fields[4] - sum(fields[8:])  # minus idle, iowait, guest (in user)
        own = sum(os.times()[:2])
        return time.perf_counter(), busy / os.sysconf("SC_CLK_TCK"), own

    def cores(self):
        end = self._sample()
        if self.start is None or end is None:
            return None
        (t0, busy0, own0), (t1, busy1, own1) = self.start, end
        return max(0.0, ((busy1 - busy0) - (own1 - own0)) / (t1 - t0))


# ----------------------------------------------------------------------------- timing

def timed(fn, pause):
    """Wall time of fn(), after an idle pause, with the garbage collector off (as timeit does)."""
    time.sleep(pause)
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out
    finally:
        gc.enable()


class MatmulPeak:
    """This machine's matmul peak: the best GFLOP/s of a square n x n x n product in NumPy's BLAS.

    Timed a few times at the start and once more in every round of repeats, so a busy moment
    at the start cannot lower it; the best of all is the peak.
    """

    def __init__(self, dtype, n=2048):
        rng = np.random.default_rng(0)
        self.a, self.b = rng.standard_normal((n, n)).astype(dtype), rng.standard_normal((n, n)).astype(dtype)
        self.c = np.empty((n, n), dtype)
        self.flops, self.best = 2.0 * n ** 3, float("inf")
        np.matmul(self.a, self.b, out=self.c)  # warm up: threads started, pages touched

    def measure(self, pause, repeats=1):
        for _ in range(repeats):
            self.best = min(self.best, timed(lambda: np.matmul(self.a, self.b, out=self.c), pause)[0])

    @property
    def gflops(self):
        return self.flops / self.best / 1e9


# ----------------------------------------------------------------------------- the three loops

def synthetic_data(n, seed=0):
    """n random uint8 'faces' converted once to standardised float32 rows, and standardised 'ages'."""
    rng = np.random.default_rng(seed)
    faces = rng.integers(0, 256, size=(n, fh.N_PIXELS), dtype=np.uint8)
    ages = 20 + 40 * faces[:, :200].mean(axis=1) / 255 + rng.normal(0, 5, n)  # some signal to fit
    X = faces.astype(np.float32)
    X -= X.mean(axis=0)
    X /= X.std(axis=0)
    y = ((ages - ages.mean()) / ages.std()).astype(np.float32)
    return X, y


def numpy_epoch(params0, X, y, batch_size):
    """fh.train_epoch from a fresh copy of the start; returns the parameters after the epoch."""
    params = {k: v.copy() for k, v in params0.items()}
    rng = np.random.default_rng(1)

    def run():
        fh.train_epoch(fh.REFERENCE, params, X, y, LR, batch_size, rng)
        return params
    return run


def floor_epoch(params0, X, batch_size):
    """Only X_b @ W1.T and dZ.T @ X_b per minibatch, on contiguous slices, into reused outputs."""
    W1 = params0["W1"]
    hidden, n = len(W1), len(X)
    dZ = np.random.default_rng(2).standard_normal((batch_size, hidden)).astype(X.dtype)
    Z, dW1 = np.empty((batch_size, hidden), X.dtype), np.empty_like(W1)

    def run():
        for start in range(0, n, batch_size):
            X_b = X[start:start + batch_size]
            m = len(X_b)
            np.matmul(X_b, W1.T, out=Z[:m])
            np.matmul(dZ[:m].T, X_b, out=dW1)
    return run


def torch_epoch(torch, params0, X_t, y_t, batch_size):
    """The same network and loop with autograd and torch.optim.SGD (same init, same shuffle)."""
    n_hidden, n_in = params0["W1"].shape
    dtype = torch.from_numpy(params0["W1"]).dtype
    net = torch.nn.Sequential(torch.nn.Linear(n_in, n_hidden, dtype=dtype), torch.nn.ReLU(),
                              torch.nn.Linear(n_hidden, 1, dtype=dtype))
    with torch.no_grad():
        for layer, w, b in ((net[0], "W1", "b1"), (net[2], "W2", "b2")):
            layer.weight.copy_(torch.from_numpy(params0[w]))
            layer.bias.copy_(torch.from_numpy(params0[b]))
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    rng = np.random.default_rng(1)
    n = len(X_t)

    def run():
        order = torch.from_numpy(rng.permutation(n))
        total = 0.0
        for start in range(0, n, batch_size):
            batch = order[start:start + batch_size]
            loss = torch.nn.functional.mse_loss(net(X_t[batch])[:, 0], y_t[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            value = loss.item()  # per batch, as fh.mse_loss returns each batch loss as a Python float
            if not np.isfinite(value):
                raise FloatingPointError("torch training diverged")
            total += value * len(batch)
        params = {"W1": net[0].weight, "b1": net[0].bias, "W2": net[2].weight, "b2": net[2].bias}
        return {k: v.detach().numpy() for k, v in params.items()}
    return run


def import_jax(threads):
    """JAX, its CPU backend computing with `threads` threads, as NumPy's BLAS and PyTorch do.

    XLA has no setting for that: it sizes its CPU thread pool by the cores the process may run on
    when the backend starts. So the backend starts seeing only `threads` cores, and then every
    thread of the process may run on all of them again. float64 is switched on only for the
    untimed agreement check: float32 arrays stay float32.
    """
    import jax
    jax.config.update("jax_enable_x64", True)
    allowed = os.sched_getaffinity(0)
    if threads < len(allowed):
        os.sched_setaffinity(0, set(sorted(allowed)[:threads]))
        try:
            jax.devices()  # starts the CPU backend and its thread pool
        finally:
            for tid in os.listdir("/proc/self/task"):
                os.sched_setaffinity(int(tid), allowed)
    return jax


def jax_step(jax):
    """One SGD step of the same network in JAX: the batch gathered from the faces on the device."""
    jnp = jax.numpy

    def loss_fn(params, X_b, y_b):
        H = jax.nn.relu(X_b @ params["W1"].T + params["b1"])  # jax.nn.relu: gradient 0 at 0, as Z > 0
        y_hat = H @ params["W2"][0] + params["b2"][0]
        return jnp.mean((y_hat - y_b) ** 2)

    def step(params, X, y, batch, lr):
        loss, grads = jax.value_and_grad(loss_fn)(params, X[batch], y[batch])
        return jax.tree.map(lambda p, g: p - lr * g, params, grads), loss
    return step


def jax_scan(jax, n, batch_size):
    """The whole epoch as one function for jax.jit: lax.scan over the full minibatches, then the last one."""
    step, n_full = jax_step(jax), n // batch_size

    def epoch(params, X, y, order, lr):
        batches = order[:n_full * batch_size].reshape(n_full, batch_size)
        params, losses = jax.lax.scan(lambda p, batch: step(p, X, y, batch, lr), params, batches)
        total = losses.sum() * batch_size
        if n_full * batch_size < n:  # the shorter last batch, as fh.train_epoch has it
            params, loss = step(params, X, y, order[n_full * batch_size:], lr)
            total = total + loss * (n - n_full * batch_size)
        return params, total / n
    return epoch


class JaxEpochs:
    """The JAX variants for one configuration, compiled once (timed apart) and reused by every repeat.

    compile_s: seconds of tracing and XLA compiling per variant (lower().compile()); a first call
    afterwards fills jit's own cache, so the timed calls take its fast path, as a user's loop does.
    """

    def __init__(self, jax, params0, X_dev, y_dev, batch_size, variants=("scan", "step")):
        self.jax, self.X, self.y, self.batch_size = jax, X_dev, y_dev, batch_size
        self.params0, n = params0, len(X_dev)
        self.epoch = jax.jit(jax_scan(jax, n, batch_size), donate_argnums=0)
        self.step = jax.jit(jax_step(jax), donate_argnums=0)
        shapes = {"scan": [(self.epoch, n)],  # the step: the full batches and the shorter last one
                  "step": [(self.step, m) for m in sorted({min(batch_size, n), n % batch_size} - {0})]}
        self.compile_s = {}
        for variant in variants:
            t0 = time.perf_counter()
            for fn, m in shapes[variant]:
                fn.lower(self.fresh(), X_dev, y_dev, np.arange(m), LR).compile()
            self.compile_s[variant] = time.perf_counter() - t0
            for fn, m in shapes[variant]:
                self.jax.block_until_ready(fn(self.fresh(), X_dev, y_dev, np.arange(m), LR))

    def fresh(self):
        """A device copy of the start (each epoch donates, so consumes, its parameters)."""
        return {k: self.jax.device_put(v.copy()) for k, v in self.params0.items()}

    def scan(self):
        params, rng = self.fresh(), np.random.default_rng(1)

        def run():
            params_out, loss = self.epoch(params, self.X, self.y, rng.permutation(len(self.X)), LR)
            if not np.isfinite(float(loss)):  # waits for the epoch
                raise FloatingPointError("jax training diverged")
            return self.jax.block_until_ready(params_out)
        return run

    def steps(self):
        params, rng = self.fresh(), np.random.default_rng(1)

        def run():
            nonlocal params
            order, losses = rng.permutation(len(self.X)), []
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                params, loss = self.step(params, self.X, self.y, batch, LR)
                losses.append((loss, len(batch)))  # a device scalar: reading it now would wait for the step
            if not np.isfinite(sum(float(loss) * m for loss, m in losses) / len(order)):
                raise FloatingPointError("jax training diverged")
            return self.jax.block_until_ready(params)
        return run


def max_rel_diff(p, q):
    p, q = ({k: np.asarray(v) for k, v in d.items()} for d in (p, q))
    return max(float(np.max(np.abs(p[k] - q[k])) / max(1e-12, np.max(np.abs(q[k])))) for k in p)


# ----------------------------------------------------------------------------- main

def main(args):
    try:
        import torch
    except ImportError:
        sys.exit("PyTorch is missing: `make bench` installs it (torch==2.13.0, in build/bench-site). "
                 "Only this benchmark needs it.")
    blas_desc, threads = numpy_blas()
    if args.threads:
        threads = args.threads
    torch.set_num_threads(threads)  # the same thread count as NumPy's BLAS
    try:
        jax = import_jax(threads)  # and as XLA's CPU thread pool
    except ImportError:
        sys.exit("JAX is missing: `make bench` installs it (benchmarks/requirements-bench.txt, in build/bench-site). "
                 "Only this benchmark needs it.")
    others = OtherCpuUse()

    print("FaceAge epoch benchmark: NumPy (fh.train_epoch) vs PyTorch CPU vs JAX CPU vs the matmul floor")
    print(f"CPU        {cpu_name()}, {os.cpu_count()} logical cores")
    print(f"Python     {platform.python_version()}; NumPy {np.__version__}; PyTorch {torch.__version__}; "
          f"JAX {jax.__version__} (jaxlib {jax.lib.__version__}) on {jax.devices()[0].platform}")
    print(f"NumPy BLAS {blas_desc}; {threads} threads")
    print(f"Torch BLAS {torch_blas(torch)}; {torch.get_num_threads()} threads")
    print(f"JAX        XLA's CPU backend; its thread pool sized for {min(threads, os.cpu_count())} cores")
    peaks = {"float32": MatmulPeak(np.float32), "float64": MatmulPeak(np.float64)}
    for peak in peaks.values():
        peak.measure(args.pause, repeats=3)

    X32, y32 = synthetic_data(args.n)
    X64, y64 = X32.astype(np.float64), y32.astype(np.float64)
    X_t, y_t = torch.from_numpy(X32), torch.from_numpy(y32)  # shares memory with X32: no copy
    X_j, y_j = jax.device_put(X32), jax.device_put(y32)  # the faces on the device, once
    n_in = X32.shape[1]
    print(f"Data       N = {args.n} synthetic faces x {n_in} pixels, standardised once; lr {LR}; "
          f"an epoch is ceil(N / batch) SGD steps")
    print("Repeats    interleaved " + (f"x {args.repeats}" if args.repeats else
                                       f"for about {args.budget:g} s per configuration (3 to 11)") + "\n")

    results, t_start = [], time.perf_counter()
    for batch_size in args.batch:
        for hidden in args.hidden:
            t_config = time.perf_counter()
            p32 = fh.init_params(hidden, n_in=n_in, seed=0, dtype=np.float32)
            p64 = {k: v.astype(np.float64) for k, v in p32.items()}
            jax32 = JaxEpochs(jax, p32, X_j, y_j, batch_size)  # compiled here, outside the timing
            # each entry prepares a fresh epoch (a copy of the start, a new optimizer) outside the timing
            runs = {"numpy32": lambda: numpy_epoch(p32, X32, y32, batch_size),
                    "torch32": lambda: torch_epoch(torch, p32, X_t, y_t, batch_size),
                    "jaxscan32": jax32.scan,
                    "jaxstep32": jax32.steps,
                    "floor32": lambda: floor_epoch(p32, X32, batch_size),
                    "numpy64": lambda: numpy_epoch(p64, X64, y64, batch_size),
                    "floor64": lambda: floor_epoch(p64, X64, batch_size)}
            times, outs = {k: [] for k in runs}, {}
            repeats, r = args.repeats, 0
            while repeats is None or r < repeats:
                for name, make in runs.items():
                    t, out = timed(make(), args.pause)
                    times[name].append(t)
                    outs.setdefault(name, out)  # parameters after the first epoch, for the agreement check
                for peak in peaks.values():
                    peak.measure(args.pause)
                r += 1
                if repeats is None:  # set from the first round: fewer repeats for the slow configurations
                    round_time = sum(v[0] for v in times.values()) + len(runs) * args.pause
                    repeats = int(np.clip(args.budget / round_time, 3, 11))
            # untimed: the same epoch in float64 in both, to show they compute the same thing (to ~1e-15)
            outs["torch64"] = torch_epoch(torch, p64, torch.from_numpy(X64), torch.from_numpy(y64), batch_size)()
            outs["jaxscan64"] = JaxEpochs(jax, p64, jax.device_put(X64), jax.device_put(y64), batch_size,
                                          variants=["scan"]).scan()()
            compile_s = jax32.compile_s
            results.append(dict(batch=batch_size, hidden=hidden, times=times, outs=outs, compile_s=compile_s))
            med = {k: 1e3 * np.median(v) for k, v in times.items()}
            print(f"batch {batch_size:3d}, hidden {hidden:3d}: {repeats:2d} repeats in "
                  f"{time.perf_counter() - t_config:3.0f} s; median ms: numpy {med['numpy32']:.1f}, "
                  f"torch {med['torch32']:.1f}, jax scan {med['jaxscan32']:.1f}, jax step {med['jaxstep32']:.1f}, "
                  f"floor {med['floor32']:.1f}; jax compile s: scan {compile_s['scan']:.2f}, "
                  f"step {compile_s['step']:.2f}", flush=True)
    busy = others.cores()
    rows = [summarise(args.n, n_in, peaks, **res) for res in results]
    print(f"\nPeak       sgemm {peaks['float32'].gflops:.0f} GFLOP/s, dgemm {peaks['float64'].gflops:.0f} GFLOP/s "
          f"(NumPy's BLAS, square 2048 x 2048, best of the run)\n")
    print_table(F32_COLUMNS, rows, "float32")
    print()
    print_table(JAX_COLUMNS, rows, "float32, JAX (scan: the whole epoch compiled; step: one jitted step per minibatch)")
    print()
    print_table(F64_COLUMNS, rows, "float64 (the same epochs with float64 data and parameters)")
    print()
    print(f"Times are medians of {'/'.join(str(k) for k in sorted({r['repeats'] for r in rows}))} interleaved "
          f"repeats; x ratios are medians of the paired ratios (repeat i over repeat i).")
    print("GFLOP/s = 4 N D H / time, the flops of the two big products; %peak = that over the sgemm (float32) "
          "or dgemm (float64) peak.")
    print("overhead = (numpy - floor) per SGD step: the time the loop spends beyond its two big products.")
    print("agree = max |numpy - torch| / max |parameter| after the first epoch from the same start and shuffle:")
    print("~1e-15 in float64 (the same computation); float32 rounding differences grow over the steps "
          "as ReLUs flip, most with small batches. JAX's agree compares it with NumPy the same way.")
    print("compile s = JAX's tracing and XLA compilation of the configuration, once, before its timed epochs "
          "(step: both batch shapes, the full one and the shorter last one).")
    print(f"Ran {time.perf_counter() - t_start:.0f} s" + ("." if busy is None else
          f"; other programs used {busy:.2f} of the {os.cpu_count()} cores meanwhile (on average)."))
    if busy is not None and busy > 0.1:
        print("WARNING: multithreaded BLAS slows down a lot when other programs compete for the cores, "
              "and unevenly: rerun on an idle machine before quoting these numbers.")
    report_targets(rows)


def summarise(n, n_in, peaks, batch, hidden, times, outs, compile_s):
    t = {k: np.array(v) for k, v in times.items()}
    med = {k: float(np.median(v)) for k, v in t.items()}
    gflops = 4.0 * n * n_in * hidden / 1e9
    return dict(
        batch=batch, hidden=hidden, repeats=len(t["numpy32"]), ms={k: 1e3 * v for k, v in med.items()},
        ratio={(a, b): float(np.median(t[a] / t[b])) for a, b in
               [("numpy32", "torch32"), ("numpy32", "floor32"), ("torch32", "floor32"),
                ("numpy32", "jaxscan32"), ("numpy32", "jaxstep32"), ("jaxscan32", "floor32"),
                ("numpy64", "floor64"), ("numpy64", "numpy32")]},
        gflops={k: gflops / v for k, v in med.items()},
        peak={k: gflops / v / peaks["float32" if k.endswith("32") else "float64"].gflops for k, v in med.items()},
        overhead_us=1e6 * (med["numpy32"] - med["floor32"]) / -(-n // batch),
        agree32=max_rel_diff(outs["numpy32"], outs["torch32"]),
        agree64=max_rel_diff(outs["numpy64"], outs["torch64"]),
        agree_jax32=max_rel_diff(outs["numpy32"], outs["jaxscan32"]),
        agree_jax64=max_rel_diff(outs["numpy64"], outs["jaxscan64"]),
        compile_s=compile_s,
        jax_faster="jaxscan32" if med["jaxscan32"] <= med["jaxstep32"] else "jaxstep32",
    )


# (header, width, a summarised row's value as text); "|" separates groups
F32_COLUMNS = [
    ("batch", 5, lambda r: f"{r['batch']}"),
    ("hidden", 6, lambda r: f"{r['hidden']}"),
    "|", ("numpy ms", 8, lambda r: f"{r['ms']['numpy32']:.1f}"),
    ("torch ms", 8, lambda r: f"{r['ms']['torch32']:.1f}"),
    ("floor ms", 8, lambda r: f"{r['ms']['floor32']:.1f}"),
    "|", ("numpy/torch", 11, lambda r: f"{r['ratio']['numpy32', 'torch32']:.2f}"),
    ("numpy/floor", 11, lambda r: f"{r['ratio']['numpy32', 'floor32']:.2f}"),
    ("torch/floor", 11, lambda r: f"{r['ratio']['torch32', 'floor32']:.2f}"),
    "|", ("GFLOP/s numpy", 13, lambda r: f"{r['gflops']['numpy32']:.0f}"),
    ("torch", 5, lambda r: f"{r['gflops']['torch32']:.0f}"),
    ("floor", 5, lambda r: f"{r['gflops']['floor32']:.0f}"),
    "|", ("%peak numpy", 11, lambda r: f"{100 * r['peak']['numpy32']:.0f}%"),
    ("torch", 5, lambda r: f"{100 * r['peak']['torch32']:.0f}%"),
    ("floor", 5, lambda r: f"{100 * r['peak']['floor32']:.0f}%"),
    "|", ("overhead us/step", 16, lambda r: f"{r['overhead_us']:.0f}"),
    ("agree", 5, lambda r: f"{r['agree32']:.0e}"),
]
F64_COLUMNS = [
    ("batch", 5, lambda r: f"{r['batch']}"),
    ("hidden", 6, lambda r: f"{r['hidden']}"),
    "|", ("numpy ms", 8, lambda r: f"{r['ms']['numpy64']:.1f}"),
    ("floor ms", 8, lambda r: f"{r['ms']['floor64']:.1f}"),
    "|", ("numpy/floor", 11, lambda r: f"{r['ratio']['numpy64', 'floor64']:.2f}"),
    "|", ("GFLOP/s numpy", 13, lambda r: f"{r['gflops']['numpy64']:.0f}"),
    ("floor", 5, lambda r: f"{r['gflops']['floor64']:.0f}"),
    "|", ("%peak numpy", 11, lambda r: f"{100 * r['peak']['numpy64']:.0f}%"),
    ("floor", 5, lambda r: f"{100 * r['peak']['floor64']:.0f}%"),
    "|", ("float64/float32 time", 20, lambda r: f"{r['ratio']['numpy64', 'numpy32']:.2f}"),
    "|", ("agree", 5, lambda r: f"{r['agree64']:.0e}"),
]


JAX_COLUMNS = [
    ("batch", 5, lambda r: f"{r['batch']}"),
    ("hidden", 6, lambda r: f"{r['hidden']}"),
    "|", ("numpy ms", 8, lambda r: f"{r['ms']['numpy32']:.1f}"),
    ("jax scan ms", 11, lambda r: f"{r['ms']['jaxscan32']:.1f}"),
    ("jax step ms", 11, lambda r: f"{r['ms']['jaxstep32']:.1f}"),
    "|", ("numpy/jax scan", 14, lambda r: f"{r['ratio']['numpy32', 'jaxscan32']:.2f}"),
    ("numpy/jax step", 14, lambda r: f"{r['ratio']['numpy32', 'jaxstep32']:.2f}"),
    ("jax scan/floor", 14, lambda r: f"{r['ratio']['jaxscan32', 'floor32']:.2f}"),
    "|", ("compile s scan", 14, lambda r: f"{r['compile_s']['scan']:.2f}"),
    ("step", 5, lambda r: f"{r['compile_s']['step']:.2f}"),
    "|", ("%peak scan", 10, lambda r: f"{100 * r['peak']['jaxscan32']:.0f}%"),
    ("step", 5, lambda r: f"{100 * r['peak']['jaxstep32']:.0f}%"),
    "|", ("agree", 5, lambda r: f"{r['agree_jax32']:.0e}"),
    ("agree float64", 13, lambda r: f"{r['agree_jax64']:.0e}"),
]


def print_table(columns, rows, title):
    print(title)
    width = [c if c == "|" else max(c[1], len(c[0])) for c in columns]
    print(" ".join(c if c == "|" else c[0].rjust(w) for c, w in zip(columns, width)))
    for r in rows:
        print(" ".join(c if c == "|" else c[2](r).rjust(w) for c, w in zip(columns, width)))


def jax_ratio(row):
    """numpy/jax of a summarised row: against the faster JAX variant (lower median epoch time)."""
    return row["ratio"]["numpy32", row["jax_faster"]]


def summary_lines(rows):
    """The two last lines: numpy/torch and numpy/jax at batch 128 (else the nearest run), hidden nearest 100."""
    at = {(r["batch"], r["hidden"]): r for r in rows}
    hidden = min({h for b, h in at if b == 128} or {h for _, h in at}, key=lambda h: abs(h - 100))
    batch = 128 if (128, hidden) in at else min(b for b, h in at if h == hidden)
    row = at[batch, hidden]
    return [f"numpy/torch epoch time ratio at batch {batch}, float32: {row['ratio']['numpy32', 'torch32']:.2f}",
            f"numpy/jax epoch time ratio at batch {batch}, float32: {jax_ratio(row):.2f}"]


def report_targets(rows):
    """The targets for the lesson loop (float32) and, last, the two summary lines."""
    at = {(r["batch"], r["hidden"]): r for r in rows}
    checks = [("numpy/torch at batch 128, hidden 100", (128, 100), 0.9, lambda r: r["ratio"]["numpy32", "torch32"]),
              ("numpy/torch at batch 64, hidden 64 (the defaults)", (64, 64), 0.8,
               lambda r: r["ratio"]["numpy32", "torch32"]),
              ("numpy/torch at batch 32, hidden 100", (32, 100), 1.0, lambda r: r["ratio"]["numpy32", "torch32"]),
              ("numpy/jax (faster variant) at batch 128, hidden 100", (128, 100), 1.0, jax_ratio)]
    print("\nTargets (float32):")
    for what, key, limit, ratio in checks:
        if key in at:
            value = ratio(at[key])
            print(f"  {what:52s} {value:5.2f}   target <= {limit:.2f}: {'met' if value <= limit else 'MISSED'}")
    for key in sorted(k for k in at if k[0] in (64, 128) and k[1] in (64, 100)):
        r = at[key]
        print(f"  at batch {key[0]}, hidden {key[1]}: numpy/floor {r['ratio']['numpy32', 'floor32']:.2f}, "
              f"faster JAX variant {r['jax_faster'][3:-2]} (numpy/jax {jax_ratio(r):.2f}) (reported, no target)")
    print("\n".join(summary_lines(rows)))


if __name__ == "__main__":
    main(ARGS)
