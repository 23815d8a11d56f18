"""FaceAge helpers: estimate a person's age from a 48x48 grayscale face with a
neural network written by hand in NumPy.

The network, in the notation used throughout the notebooks:

    x in R^2304          a flattened face
    z  = W1 x + b1       W1 is (hidden, 2304): row j reshapes to a 48x48 image
    h  = relu(z)
    y^ = W2 h + b2       W2 is (1, hidden): one scalar age

Loss: mean squared error. Training: minibatch SGD with hand-written backprop.

The module reads top down, each part using only what stands above it: the network
(init, forward, mse_loss, backward, sgd_step, the lesson's train_epoch, weight decay,
momentum, gradient checking), then whose code trains (Lesson, lesson_functions), data,
training (train, predict, model files), evaluation, plots, browsers, and last the
classroom machinery (exercise checks) and the command line with its file safety: no
need to read below the browsers to follow the course. Run `python faceage_helpers.py --help`.
"""

from __future__ import annotations

import argparse
import csv
import errno
import gc
import io
import json
import lzma
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

if __name__ == "__main__":  # a Ctrl-C while NumPy loads: one line, not a traceback (main() takes over)
    signal.signal(signal.SIGINT, lambda *_: sys.exit("error: interrupted (Ctrl-C) while starting: nothing written."))

import numpy as np  # noqa: E402

IMAGE_SHAPE = (48, 48)
N_PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]  # 2304
ARRAY_NAMES = ("Xtr", "ytr", "Xte", "yte")
# The settings of the default run (notebook 03 §6), used by train(), the command line and the README.
DEFAULTS = dict(n_hidden=64, lr=0.005, lr_decay=0.93, batch_size=64, epochs=30, mirror=True, seed=0,
                val_fraction=0.15)
# Age bands for every per-age table and plot: lower edges in years, the last band open-ended.
AGE_BANDS = (0, 10, 20, 30, 45, 60)
AGE_BAND_NAMES = tuple([f"{a}-{b - 1}" for a, b in zip(AGE_BANDS, AGE_BANDS[1:])] + [f"{AGE_BANDS[-1]}+"])
NEAR_DUPLICATE = 0.93  # centred pixel correlation (as they are or mirrored) above which tools/build_data.py
#                        keeps two faces in one split, as in the course data.zip (notebook 01 §6 uses its own)
GENDER_NAMES = ("male", "female")  # meta CSV codes 0, 1 (-1: unknown)
RACE_NAMES = ("White", "Black", "Asian", "Indian", "Others")  # meta CSV codes 0-4 (-1: unknown)
HERE = Path(__file__).resolve().parent


# =============================================================================
# The network: z = W1 x + b1, h = relu(z), y^ = W2 h + b2, loss = mean squared error
# =============================================================================
# Batch form: X is (N, 2304), one face per row, so Z = X W1^T + b1 is (N, hidden).

def init_params(n_hidden=DEFAULTS["n_hidden"], n_in=N_PIXELS, seed=DEFAULTS["seed"], dtype=np.float32,
                w1_gain=0.1) -> dict:
    """Random weights scaled for ReLU (He: std sqrt(2/fan_in)), zero biases (notebook 02 §4).

    W1 starts w1_gain times smaller than He's scale: the face-shaped features that training
    writes into W1 then stand out from the random start (and validation error is lower).
    """
    rng = np.random.default_rng(seed)
    return {
        "W1": (rng.standard_normal((n_hidden, n_in)) * w1_gain * np.sqrt(2.0 / n_in)).astype(dtype),
        "b1": np.zeros(n_hidden, dtype=dtype),
        "W2": (rng.standard_normal((1, n_hidden)) * np.sqrt(1.0 / n_hidden)).astype(dtype),
        "b2": np.zeros(1, dtype=dtype),
    }


def relu(z):
    """The ReLU, max(z, 0) elementwise (notebook 02 §3)."""
    return np.maximum(z, 0)


def forward(params, X):
    """Predict y^ (N,) for faces X (N, 2304); also return the cache backward needs (notebook 02 §3)."""
    W1, b1, W2, b2 = params["W1"], params["b1"], params["W2"], params["b2"]
    Z = X @ W1.T + b1            # (N, hidden)
    H = relu(Z)                  # (N, hidden)
    y_hat = H @ W2[0] + b2[0]    # (N,)
    return y_hat, (X, Z, H)


def mse_loss(y_hat, y):
    """Mean squared error L = mean((y^ - y)^2) and its gradient dL/dy^ = 2 (y^ - y) / N (notebook 02 §3)."""
    diff = y_hat - y
    return float(np.mean(diff ** 2)), (2.0 / len(y)) * diff


def backward(params, cache, dy_hat):
    """Gradients of the loss with the same names and shapes as params, from dL/dy^ (N,) (notebook 02 §4)."""
    X, Z, H = cache
    W2 = params["W2"]
    dW2 = dy_hat[None, :] @ H            # (1, hidden)  = sum_n dy^_n h_n
    db2 = dy_hat.sum(keepdims=True)      # (1,)
    dH = dy_hat[:, None] * W2            # (N, hidden)  = dy^ W2
    dZ = dH * (Z > 0)                    # (N, hidden)  ReLU passes gradient where z > 0
    dW1 = dZ.T @ X                       # (hidden, 2304)
    db1 = dZ.sum(axis=0)                 # (hidden,)
    return {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2}


def backward_to_input(params, cache, dy_hat):
    """dL/dX (N, 2304) from dL/dy^ (N,): the backward pass carried on to the faces (notebook 06 §2)."""
    X, Z, H = cache
    dH = dy_hat[:, None] * params["W2"]  # (N, hidden)
    dZ = dH * (Z > 0)                    # (N, hidden)
    return dZ @ params["W1"]             # (N, 2304): each face's own gradient


def sgd_step(params, grads, lr):
    """Vanilla SGD, in place: p <- p - lr * dL/dp for every parameter (notebook 03 §3)."""
    for name, p in params.items():
        p -= lr * grads[name]


def train_epoch(lesson, params, X, y, lr, batch_size, rng):
    """One epoch of minibatch SGD over (X, y), shuffled with rng; returns the mean loss (notebook 03 §4).

    Every face is visited once; the last batch may be shorter, so each batch's loss is weighted
    by its size. The lesson's forward, mse_loss, backward and sgd_step do the work: this is the
    loop that trains every network in FaceAge, whoever wrote those four functions.
    """
    N = len(X)
    order = rng.permutation(N)  # a new order every epoch
    total_loss = 0.0
    for start in range(0, N, batch_size):
        batch = order[start:start + batch_size]
        y_hat, cache = lesson.forward(params, X[batch])
        loss, dy_hat = lesson.mse_loss(y_hat, y[batch])
        grads = lesson.backward(params, cache, dy_hat)
        lesson.sgd_step(params, grads, lr)
        total_loss += loss * len(batch)
    return total_loss / N


def add_weight_decay(grads, params, weight_decay):
    """L2 weight decay: add lambda * W, the gradient of lambda/2 * ||W||^2, to the gradients of W1 and W2
    (not the biases) and return grads (notebook 05 §2)."""
    for name in ("W1", "W2"):
        grads[name] = grads[name] + weight_decay * params[name]
    return grads


def momentum_step(params, grads, velocity, lr, momentum):
    """SGD with momentum, in place: v <- momentum * v - lr * g, then p <- p + v (notebook 05 §3).

    velocity holds one array per parameter, zeros at the start, and is kept from step to step.
    """
    for name, p in params.items():
        v = velocity[name]
        v *= momentum
        v -= lr * grads[name]
        p += v


def weight_image(W1, j):
    """Hidden unit j's 2304 input weights, row j of W1, as the 48x48 image they multiply (notebook 04 §2)."""
    return W1[j].reshape(IMAGE_SHAPE)


# =============================================================================
# Gradient checking
# =============================================================================

class GradientCheckError(AssertionError):
    """Raised when backward disagrees with centered differences; says where and by how much (notebook 02 §8)."""


@dataclass
class GradCheck:
    """One parameter's result: the worst relative error and where it happened (notebook 02 §6)."""
    name: str
    rel_error: float
    worst_index: tuple
    analytic: float
    numeric: float
    n_checked: int
    size: int


def rel_error(a, b):
    """Relative error max|a - b| / max(1e-8, max(|a| + |b|)) of two arrays (notebook 02 §6).

    Measured against the largest entry, so an entry that happens to be tiny (where float64
    roundoff in the centered difference is as big as the entry itself) cannot fake a failure.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(1e-8, float(np.max(np.abs(a) + np.abs(b)))))


def numerical_gradient(f, x, indices, h=1e-5):
    """Centered difference (f(x + h) - f(x - h)) / 2h of scalar f() at the given flat indices of x (notebook 02 §5).

    Each entry costs two evaluations of f, so checking every entry of W1 is slow on purpose:
    pass a random subset of indices for speed.
    """
    grad = np.empty(len(indices))
    flat = x.reshape(-1)  # a view: writing into it perturbs x in place
    for k, i in enumerate(indices):
        old = flat[i]
        flat[i] = old + h
        f_plus = f()
        flat[i] = old - h
        f_minus = f()
        flat[i] = old
        grad[k] = (f_plus - f_minus) / (2 * h)
    return grad


def gradient_check(params, X, y, *, lesson, n_entries=None, seed=0, h=1e-5):
    """Compare lesson.backward with lesson.numerical_gradient's centered differences of lesson.mse_loss
    after lesson.forward, in float64, parameter by parameter (notebook 02 §6).

    n_entries: check this many random entries per parameter (100 entries of a hidden-64 network
    take ~0.06 s). None checks every entry at 2 forward passes each: ~1 s for hidden 10, but
    ~50 s for hidden 64 and ~100 s for hidden 100 (2 * hidden * 2304 passes for W1 alone).
    Returns {name: GradCheck}.
    """
    for name in ("forward", "mse_loss", "backward", "numerical_gradient"):
        if not callable(getattr(lesson, name, None)):
            raise TypeError(f"gradient_check needs a lesson with {name} (fh.Lesson(forward, mse_loss, backward, "
                            f"numerical_gradient=numerical_gradient)); this one has none.")
    p = {k: np.array(v, dtype=np.float64) for k, v in params.items()}
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    y_hat, cache = lesson.forward(p, X)
    _, dy_hat = lesson.mse_loss(y_hat, y)
    grads = lesson.backward(p, cache, dy_hat)

    def loss():
        return lesson.mse_loss(lesson.forward(p, X)[0], y)[0]

    rng = np.random.default_rng(seed)
    results = {}
    for name, value in p.items():
        if name not in grads:
            raise GradientCheckError(f"backward returned no gradient for {name}; it must return "
                                     f"one array per parameter: {', '.join(p)}.")
        g = np.asarray(grads[name], dtype=np.float64)
        if g.shape != value.shape:
            raise GradientCheckError(f"gradient d{name} has shape {g.shape} but {name} has shape "
                                     f"{value.shape}; a gradient has the shape of its parameter.")
        if n_entries is None or n_entries >= value.size:
            idx = np.arange(value.size)
        else:
            idx = rng.choice(value.size, size=n_entries, replace=False)
        numeric = np.asarray(lesson.numerical_gradient(loss, value, idx, h), dtype=np.float64)
        analytic = g.reshape(-1)[idx]
        worst = int(np.argmax(np.abs(analytic - numeric)))
        results[name] = GradCheck(name, rel_error(analytic, numeric), np.unravel_index(idx[worst], value.shape),
                                  float(analytic[worst]), float(numeric[worst]), len(idx), value.size)
    return results


def report_gradient_check(results, tol=1e-7, raise_on_failure=False) -> bool:
    """Print each parameter's relative error beside what it should be; True when all pass (notebook 02 §6)."""
    failures = []
    for r in results.values():
        ok = r.rel_error < tol
        print(f"{r.name:>3} relative error: {r.rel_error:.1e}   # should be < {tol:.0e}   "
              f"({r.n_checked} of {r.size} entries checked)  {'ok' if ok else 'FAILED'}")
        if not ok:
            where = ", ".join(str(int(i)) for i in r.worst_index)
            failures.append(f"{r.name}[{where}]: backward gives {r.analytic:.6g}, centered differences "
                            f"give {r.numeric:.6g} (relative error {r.rel_error:.1e}, should be < {tol:.0e})")
    if failures:
        message = "gradient check failed for " + "; ".join(failures)
        print(message)
        if raise_on_failure:
            raise GradientCheckError(message)
    return not failures


# =============================================================================
# Whose code trains: a Lesson names the functions that train, check and predict
# =============================================================================
# The course has one path for this. A Lesson holds the functions; fh.REFERENCE is the module's own;
# fh.lesson_functions() builds one from the `#@save` cells of the saved notebooks, and a notebook puts its
# kernel's own functions in with one plain call: dataclasses.replace(lesson, train_epoch=train_epoch).

# The course's notebooks by their canonical names (a Jupyter "Duplicate" adds "-Copy1": never read silently).
NOTEBOOKS = ("01_explore_the_faces.ipynb", "02_backprop_and_gradient_checking.ipynb", "03_training_with_sgd.ipynb",
             "04_browse_the_learned_weights.ipynb", "05_make_it_better.ipynb", "06_which_pixels_matter.ipynb",
             "07_any_depth.ipynb", "08_your_own_face.ipynb")
# The exercises: each function a student writes, the notebook and section that teach it, and its nbgrader
# points. tools/make_student.py, the checks' messages and the tests read this table.
EXERCISES = {"forward": ("02", "§3", 2), "mse_loss": ("02", "§3", 1), "backward": ("02", "§4", 3),
             "numerical_gradient": ("02", "§5", 2), "sgd_step": ("03", "§3", 1), "train_epoch": ("03", "§4", 2),
             "weight_image": ("04", "§2", 1), "add_weight_decay": ("05", "§2", 1), "momentum_step": ("05", "§3", 1),
             "backward_to_input": ("06", "§2", 1), "affine_backward": ("07", "§1", 2), "relu_backward": ("07", "§1", 1),
             "deep_backward": ("07", "§2", 3), "matmul": ("07", "§4", 2), "add": ("07", "§4", 2)}
SAVE_MARK = "#@save"  # the first line of a cell that later notebooks reuse (d2l's convention)
REFERENCE_MODULE = "faceage_reference"  # the file `make reference` writes, released after the deadline


class LessonError(ValueError):
    """A lesson cannot be built or used: the message names the notebook, cell and line, or the missing
    function (notebook 03 §5)."""


def _join(names):
    """"a", "a and b", "a, b and c"."""
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _origin(fn) -> str:
    """Where a function was written, from its __module__: this notebook, a saved notebook, or a module."""
    module = getattr(fn, "__module__", None)
    return {"__main__": "this notebook", __name__: "faceage_helpers.py",
            REFERENCE_MODULE: f"the teacher's {REFERENCE_MODULE}.py"}.get(module, module or "an unknown place")


@dataclass(frozen=True)
class Lesson:
    """The functions that train, check and predict: yours, the module's, or a mix you can see (notebook 03 §5).

    train_epoch(lesson, ...) calls the lesson's forward, mse_loss, backward and sgd_step, so one loop
    trains whatever network and step the lesson holds. Functions a lesson does not need yet are None.
    """
    forward: object
    mse_loss: object
    backward: object
    sgd_step: object = None
    train_epoch: object = None
    numerical_gradient: object = None
    backward_to_input: object = None
    init_params: object = init_params

    def __post_init__(self):
        for name, fn in vars(self).items():
            if not (callable(fn) or (fn is None and name not in ("forward", "mse_loss", "backward", "init_params"))):
                raise TypeError(f"Lesson({name}=...) must be a function, not a {type(fn).__name__}.")

    @property
    def who(self) -> str:
        """Whose code this is, e.g. "forward, mse_loss and backward from 02_...ipynb; sgd_step from this notebook"."""
        by_origin = {}
        for name, fn in vars(self).items():
            if fn is not None and not (name == "init_params" and fn is init_params):
                by_origin.setdefault(_origin(fn), []).append(name)
        return "; ".join(f"{_join(names)} from {origin}" for origin, names in by_origin.items())

    def require(self, *names, purpose):
        """Raise LessonError naming the notebook that writes each function the lesson lacks for purpose."""
        missing = [name for name in names if getattr(self, name) is None]
        if missing:
            where = "; ".join(f"{name}: notebook {EXERCISES[name][0]} {EXERCISES[name][1]}" for name in missing)
            raise LessonError(f"{purpose} needs {_join(missing)}, and this lesson has none ({where}). Build the "
                              f"lesson with them: dataclasses.replace(lesson, {missing[0]}={missing[0]}).")


REFERENCE = Lesson(forward, mse_loss, backward, sgd_step, train_epoch, numerical_gradient, backward_to_input)


def _notebook_cells(path: Path) -> list:
    """The cells of a saved notebook, or a LessonError that names the file and what is wrong with it."""
    fix = "Open it in JupyterLab and save it again (File > Save Notebook)."
    try:
        nb = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise LessonError(f"{path.name} is not UTF-8 text, so it is not a notebook Jupyter saved. {fix}") from None
    except (ValueError, RecursionError) as e:
        raise LessonError(f"{path.name} is not valid notebook JSON ({str(e)[:80]}). {fix}") from None
    if not isinstance(nb, dict) or nb.get("nbformat") != 4 or not isinstance(nb.get("cells"), list):
        version = nb.get("nbformat") if isinstance(nb, dict) else None
        raise LessonError(f"{path.name} is not an nbformat 4 notebook"
                          f"{f' (it is nbformat {version})' if version else ''}. {fix}")
    return nb["cells"]


def _saved_cells(path: Path):
    """(cell number from 1, Python source) of each `#@save` cell; magics and shell lines become `pass`."""
    for number, cell in enumerate(_notebook_cells(path), 1):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else str(source)
        lines = source.split("\n")
        code = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith(("%", "!"))]
        if not code or not code[0].startswith(SAVE_MARK):
            continue
        # %%time, %timeit and !ls are IPython's, not Python's: each becomes `pass`, so line numbers still match
        yield number, "\n".join(line[:len(line) - len(line.lstrip())] + "pass" if line.lstrip().startswith(("%", "!"))
                                else line for line in lines)


def _canonical(folder: Path, name: str) -> Path | None:
    """folder/name, refusing a copy (e.g. "-Copy1") that is the only one there or was saved after it."""
    path = folder / name
    copies = [p for p in sorted(folder.glob(name[:3] + "*.ipynb")) if p.name != name]
    newer = [p for p in copies if not path.is_file() or p.stat().st_mtime > path.stat().st_mtime]
    if newer:
        have = f"{path.name} and {newer[0].name}" if path.is_file() else f"{newer[0].name}, not {path.name}"
        raise LessonError(f"{folder} holds {have}, and the copy was saved last: which one holds your work? "
                          f"lesson_functions reads only {name}. Keep your work under that name and rename or "
                          f"delete the copy, then run this cell again.")
    return path if path.is_file() else None


def lesson_functions(before, folder=None, verbose=True) -> Lesson:
    """Your functions from the saved notebooks numbered below `before` (e.g. "05"): a Lesson (notebook 03 §5).

    Every code cell whose first line is `#@save` runs whole, in notebook order, in one fresh namespace
    holding np and fh, so a helper of yours in its own `#@save` cell is found. A traceback from your
    function shows its cell: "02_backprop_and_gradient_checking.ipynb, cell 12", line 4. folder: where
    the notebooks are (default: the current folder if it holds any, else notebooks/ beside this module).
    Save the notebooks first (Ctrl-S): the saved file is what runs.
    """
    import linecache
    before = f"{int(before):02d}"  # "05", 5 and "5" alike: notebook numbers compare as two digits
    folders = [Path(folder)] if folder is not None else [Path.cwd(), HERE / "notebooks"]
    folder = next((f for f in folders if any((f / name).is_file() for name in NOTEBOOKS)), folders[0])
    namespace = {"np": np, "fh": sys.modules[__name__]}
    for name in NOTEBOOKS:
        if name[:2] >= before:
            break
        path = _canonical(folder, name)
        if path is None:
            continue
        namespace["__name__"] = name  # so each function's __module__ names its notebook (Lesson.who)
        for number, source in _saved_cells(path):
            where = f"{name}, cell {number}"
            linecache.cache[where] = (len(source), None, source.splitlines(True), where)
            try:
                exec(compile(source, where, "exec"), namespace)
            except Exception as e:
                line = e.lineno if isinstance(e, SyntaxError) else e.__traceback__.tb_next.tb_lineno
                raise LessonError(f"{where}, line {line}: {type(e).__name__}: {e}. Fix that cell, save the "
                                  f"notebook, and run this cell again.") from None
    found = {name: namespace[name] for name in Lesson.__dataclass_fields__
             if callable(namespace.get(name)) and getattr(namespace[name], "__module__", None) != __name__}
    missing = [name for name in ("forward", "mse_loss", "backward") if name not in found]
    if missing:
        first = NOTEBOOKS[int(EXERCISES[missing[0]][0]) - 1]
        raise LessonError(f"no {_join(missing)} in a `{SAVE_MARK}` cell of {folder / first}: write "
                          f"{missing[0]} there in a cell whose first line is {SAVE_MARK}, save the notebook, and "
                          f"run this cell again.")
    lesson = Lesson(**found)
    if verbose:
        print(f"Your code from the saved notebooks: {lesson.who}.")
    return lesson


# =============================================================================
# Data
# =============================================================================

class DataError(ValueError):
    """Raised for a missing, corrupt or malformed data set, with a message that says how to fix it (notebook 01 §1)."""


@dataclass
class FaceData:
    """The course data set: faces as float32 rows in [0, 1], ages in years, and optional metadata (notebook 01 §1)."""
    Xtr: np.ndarray
    ytr: np.ndarray
    Xte: np.ndarray
    yte: np.ndarray
    meta_tr: dict | None = None
    meta_te: dict | None = None
    path: Path | None = None

    def summary(self) -> str:
        """A short, deterministic description for printing."""
        return "\n".join([
            f"data: {self.path.name if self.path else '(in memory)'}",
            f"  train: {self.Xtr.shape[0]:6d} faces of {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]} pixels, "
            f"ages {self.ytr.min():.0f}-{self.ytr.max():.0f} years (mean {self.ytr.mean():.1f})",
            f"  test:  {self.Xte.shape[0]:6d} faces of {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]} pixels, "
            f"ages {self.yte.min():.0f}-{self.yte.max():.0f} years (mean {self.yte.mean():.1f})",
            f"  pixels: {self.Xtr.dtype}, range [{self.Xtr.min():.2f}, {self.Xtr.max():.2f}]",
        ])


def find_data(path=None) -> Path:
    """Locate data.zip: the argument, then $FACEAGE_DATA, then data.zip beside this module (notebook 01 §1)."""
    tried = []
    candidates = []
    if path is not None:
        candidates.append(("the path you gave", Path(path)))
    if os.environ.get("FACEAGE_DATA"):
        candidates.append(("$FACEAGE_DATA", Path(os.environ["FACEAGE_DATA"])))
    candidates.append(("beside faceage_helpers.py", HERE / "data.zip"))
    for how, candidate in candidates:
        candidate = candidate.expanduser()
        if candidate.is_file():
            return candidate
        tried.append(f"  - {candidate} ({how})")
        if how != "beside faceage_helpers.py":
            # A path you named (argument or $FACEAGE_DATA) that is not a file is an error, not a hint
            # to look elsewhere: a typo must not silently load some other data.zip.
            tried[-1] += f": {_path_kind(candidate)}; fix the path" + (" or unset FACEAGE_DATA" * (how[0] == "$"))
            break
    raise DataError(
        "No data.zip found. Looked in:\n" + "\n".join(tried) + "\n"
        "Fix: put the course's data.zip at the repository root, or set FACEAGE_DATA=/path/to/data.zip, "
        "or build one from the public UTKFace 'Aligned & Cropped' faces with\n"
        "  python tools/build_data.py UTKFace.tar.gz --out data.zip")


def as_face_rows(X, name="X") -> np.ndarray:
    """Check faces and return them as float32 rows of 2304 pixels in [0, 1] (notebook 01 §1, inside fh.load_data).

    Accepts uint8 (0-255) or float (0-1) pixels, shaped (N, 48, 48) or (N, 2304).
    """
    X = np.asarray(X)
    if X.ndim == 3 and X.shape[1:] == IMAGE_SHAPE:
        X = X.reshape(len(X), N_PIXELS)
    if X.ndim != 2 or X.shape[1] != N_PIXELS:
        raise DataError(f"{name} has shape {X.shape}; expected (N, 48, 48) or (N, 2304) faces "
                        f"(48x48 grayscale). Resize the images to 48x48 first.")
    if X.dtype == np.uint8:
        X = X.astype(np.float32)
        X /= 255  # in place: one float32 copy of the faces, not two
        return X
    if not np.issubdtype(X.dtype, np.floating) and not np.issubdtype(X.dtype, np.integer):
        raise DataError(f"{name} has dtype {X.dtype}; expected uint8 (0-255) or float (0-1) pixels.")
    X = X.astype(np.float32, copy=False)
    if not np.isfinite(X).all():
        raise DataError(f"{name} contains {np.size(X) - np.isfinite(X).sum()} non-finite values (NaN or inf).")
    if X.size and (X.min() < 0 or X.max() > 1):
        raise DataError(f"{name} has float pixels in [{X.min():.3g}, {X.max():.3g}]; "
                        f"expected [0, 1]. Divide 0-255 images by 255.")
    return X


def as_ages(y, n, name="y") -> np.ndarray:
    """Check a vector of n ages and return it as float64 (notebook 01 §1, inside fh.load_data)."""
    y = np.asarray(y)
    if y.ndim != 1:
        y = y.reshape(-1) if y.ndim == 2 and 1 in y.shape else y
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.number)):
        raise DataError(f"{name} has shape {y.shape} and dtype {y.dtype}; expected a 1-D vector of ages.")
    if len(y) != n:
        raise DataError(f"{name} holds {len(y)} ages but there are {n} faces; they must match one to one.")
    y = y.astype(np.float64)
    if not np.isfinite(y).all():
        raise DataError(f"{name} contains {len(y) - np.isfinite(y).sum()} non-finite ages (NaN or inf).")
    return y


def age_band(ages) -> np.ndarray:
    """Index into AGE_BAND_NAMES of each age (notebook 01 §4): 0 for 0-9 years, ..., 5 for 60+."""
    return np.searchsorted(AGE_BANDS, np.asarray(ages), side="right") - 1


# Bounds checked before anything is read: a small zip can declare gigabytes (UTKFace has 23,707 faces).
MAX_FACES = 100_000  # train and test together; faces are read as float32 rows a chunk at a time (0.9 GB at most)
MAX_META_ROW_BYTES = 1024  # a meta CSV row is about 50 bytes
MAX_META_COLUMNS = 16  # a meta CSV has 4 (age, gender, race, source)
_DATA_FIX = "Fetch data.zip again, or rebuild it with `python tools/build_data.py UTKFace.tar.gz --out data.zip`."
# What reading a damaged or hostile file can raise (zipfile, zlib, lzma, Deflate64 members, NumPy's .npy
# header parser, a shape too big for an integer): every reader turns these into a DataError naming the file.
_UNREADABLE = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, lzma.LZMAError, NotImplementedError,
               OverflowError, RecursionError, SyntaxError)


def _path_kind(path) -> str:
    """What a path that is not a regular file is, for messages: "is a folder", "does not exist", ..."""
    path = Path(path)
    kinds = (("is_dir", "is a folder"), ("is_fifo", "is a FIFO (named pipe)"), ("is_char_device", "is a device"),
             ("is_block_device", "is a device"), ("is_socket", "is a socket"))
    try:
        return next((text for test, text in kinds if getattr(path, test)()),
                    "is a broken symbolic link" if path.is_symlink() else
                    "is not a regular file" if path.exists() else "does not exist")
    except OSError as e:  # e.g. a name too long, or a folder on the way that cannot be read
        return f"cannot be examined ({e.strerror})"


def _open_zip(path: Path, fix: str) -> zipfile.ZipFile:
    """Open a zip, refusing what zipfile accepts but FaceAge never writes: duplicate member names
    (which copy counts is then a matter of chance) and password-protected members."""
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty (0 bytes), e.g. left by an interrupted copy. {fix}")
    try:
        zf = zipfile.ZipFile(path)
    except _UNREADABLE as e:
        raise DataError(f"{path} is not a readable zip file ({e}). {fix}") from None
    duplicates = [name for name, count in Counter(zf.namelist()).items() if count > 1]
    encrypted = [info.filename for info in zf.infolist() if info.flag_bits & 0x1]
    if duplicates or encrypted:
        zf.close()
        problem = (f"holds more than one member named {duplicates[0]}" if duplicates
                   else f"{encrypted[0]} is password-protected (encrypted)")
        raise DataError(f"{path}: {problem}. {fix}")
    return zf


def _read_npy(zf: zipfile.ZipFile, member: str, path: Path, max_items: int, fix: str, kinds="uif",
              faces=False) -> np.ndarray:
    """One .npy member of a zip, refused unless its header's dtype and shape are plausible and agree
    with the member's size in the zip's directory, all before memory is allocated for it.

    faces=True: float32 rows in [0, 1] (as_face_rows), converted a chunk of rows at a time, so that
    memory peaks near the float32 result whatever dtype the file holds (float64: not twice, not 6x).
    """
    where = f"{path}: {member}"
    info = zf.getinfo(member)
    if info.file_size > 4096 + 8 * max_items:
        raise DataError(f"{where} inflates to {info.file_size:,} bytes, far more than a FaceAge file holds. {fix}")
    try:
        with zf.open(member) as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f".npy format version {version} is not supported")
            shape, fortran_order, dtype = read_header(f)
            if any(d > max_items for d in shape):  # e.g. (0, 10**30): no values, but no array can have it
                raise DataError(f"{where} declares shape {shape}, more than the {max_items:,} values a FaceAge "
                                f"file holds. {fix}")
            count = int(np.prod(shape, dtype=object))
            if dtype.kind not in kinds or dtype.hasobject or (dtype.kind != "U" and dtype.itemsize > 8):
                raise DataError(f"{where} holds {dtype} values, which a FaceAge file never does. {fix}")
            if count > max_items:
                raise DataError(f"{where} declares shape {shape}, more than the {max_items:,} values a FaceAge "
                                f"file holds. {fix}")
            if f.tell() + count * dtype.itemsize != info.file_size:
                raise DataError(f"{where} declares shape {shape} ({count * dtype.itemsize:,} bytes) but holds "
                                f"{info.file_size - f.tell():,} bytes: it is damaged or not a FaceAge file. {fix}")
            if not faces:
                f.seek(0)
                return np.lib.format.read_array(f, allow_pickle=False)
            if len(shape) not in (2, 3) or shape[1:] not in ((N_PIXELS,), IMAGE_SHAPE) or fortran_order:
                raise DataError(f"{where} holds an array of shape {shape}{' in Fortran order' * fortran_order}; "
                                f"expected (N, 48, 48) or (N, 2304) faces (48x48 grayscale) in C order. {fix}")
            X = np.empty((shape[0], N_PIXELS), dtype=np.float32)
            for start in range(0, len(X), 4096):
                rows = min(4096, len(X) - start)
                chunk = np.frombuffer(f.read(rows * N_PIXELS * dtype.itemsize), dtype=dtype).reshape(rows, N_PIXELS)
                X[start:start + rows] = as_face_rows(chunk, f"{path.name}:{member}")
            f.read(1)  # to the member's end, where zipfile checks its CRC
            return X
    except DataError:
        raise
    except _UNREADABLE as e:
        raise DataError(f"{where} is not a readable .npy array ({type(e).__name__}: {e}). {fix}") from None


def _read_meta(zf: zipfile.ZipFile, member: str, n: int, path: Path) -> dict:
    """Read a meta CSV (age, gender, race, source) into a dict of arrays, one row at a time: the header's
    columns and each row's length are checked as they are read, so memory stays near the n rows it keeps."""
    where = f"{path}: {member}"
    size = zf.getinfo(member).file_size
    if size > 4096 + MAX_META_ROW_BYTES * n:
        raise DataError(f"{where} inflates to {size:,} bytes, far more than {n} rows of metadata need. {_DATA_FIX}")
    try:
        with zf.open(member) as f:
            reader = csv.reader(io.TextIOWrapper(f, encoding="utf-8", newline=""))
            header = next(reader, [])
            if not 0 < len(header) <= MAX_META_COLUMNS or len(set(header)) < len(header):
                repeated = " (some repeated)" * (len(set(header)) < len(header))
                raise DataError(f"{where}: its header has {len(header)} columns{repeated}; a meta CSV has a few "
                                f"distinct ones (age, gender, race, source). {_DATA_FIX}")
            columns = [[] for _ in header]
            for row in reader:
                if not row:  # a blank line
                    continue
                if len(row) != len(header) or len(columns[0]) == n:
                    problem = (f"has {len(row)} fields where the header has {len(header)}" if len(row) != len(header)
                               else f"is one more than the {n} faces")
                    raise DataError(f"{where}: line {reader.line_num} {problem}. {_DATA_FIX}")
                for values, value in zip(columns, row):
                    values.append(value)
    except DataError:
        raise
    except (*_UNREADABLE, csv.Error) as e:
        raise DataError(f"{where} is not a readable CSV file ({type(e).__name__}: {e}). {_DATA_FIX}") from None
    if len(columns[0]) != n:
        raise DataError(f"{where} has {len(columns[0])} rows but there are {n} faces.")
    meta = {}
    for column, values in zip(header, columns):
        try:
            meta[column] = np.array(values, dtype=np.int64)
        except (ValueError, TypeError, OverflowError):  # text (file names), or numbers too big for int64
            meta[column] = np.array(values)
    return meta


def load_data(path=None) -> FaceData:
    """Load data.zip in the course layout (age_regression_{Xtr,ytr,Xte,yte}.npy, optional meta CSVs) (notebook 01 §1).

    Faces come back as float32 rows of 2304 pixels in [0, 1]; ages as float64 years.
    """
    path = find_data(path)
    with _open_zip(path, "The download may be incomplete: " + _DATA_FIX) as zf:
        names = set(zf.namelist())
        missing = [f"age_regression_{k}.npy" for k in ARRAY_NAMES if f"age_regression_{k}.npy" not in names]
        if missing:
            raise DataError(f"{path} has no {missing[0]}. A course data.zip holds "
                            f"{', '.join(f'age_regression_{k}.npy' for k in ARRAY_NAMES)}; "
                            f"this one holds: {', '.join(sorted(names)) or 'nothing'}.")
        arrays, faces_left = {}, MAX_FACES  # the bound is on train and test together
        for key in ARRAY_NAMES:
            member, is_faces = f"age_regression_{key}.npy", key.startswith("X")
            max_items = faces_left * N_PIXELS if is_faces else MAX_FACES
            arrays[key] = _read_npy(zf, member, path, max_items, _DATA_FIX, faces=is_faces)
            if is_faces:
                if len(arrays[key]) == 0:
                    raise DataError(f"{path}: {member} holds no faces: a {'test' if key == 'Xte' else 'training'} "
                                    f"split needs some. {_DATA_FIX}")
                faces_left -= len(arrays[key])
        Xtr, Xte = arrays["Xtr"], arrays["Xte"]
        ytr = as_ages(arrays["ytr"], len(Xtr), f"{path.name}:age_regression_ytr.npy")
        yte = as_ages(arrays["yte"], len(Xte), f"{path.name}:age_regression_yte.npy")
        meta_tr = _read_meta(zf, "meta_tr.csv", len(Xtr), path) if "meta_tr.csv" in names else None
        meta_te = _read_meta(zf, "meta_te.csv", len(Xte), path) if "meta_te.csv" in names else None
    return grading_faces(FaceData(Xtr, ytr, Xte, yte, meta_tr, meta_te, path))  # FACEAGE_GRADING=1: a few faces


def train_val_split(X, y, val_fraction=DEFAULTS["val_fraction"], seed=DEFAULTS["seed"]):
    """Split training data into (X_train, y_train, X_val, y_val) with a seeded shuffle (notebook 03 §1).

    Choose settings on the validation part; keep the test split for the final report.
    """
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be between 0 and 1, got {val_fraction}.")
    n = len(X)
    n_val = int(round(n * val_fraction))
    if not 0 < n_val < n:
        raise DataError(f"val_fraction {val_fraction:g} leaves {n - n_val} training and {n_val} validation faces "
                        f"of {n}: choose a fraction that leaves some of each.")
    order = np.random.default_rng(seed).permutation(n)
    val, tr = order[:n_val], order[n_val:]
    return X[tr], y[tr], X[val], y[val]


def _write_atomically(path: Path, write, mode=None):
    """Call write(f) on a new temporary file beside path, then rename it over path (one step on every OS):
    a Ctrl-C, a kill or a full disk leaves the previous file whole, never a half-written one (tools/build_data.py).

    The temporary file has an unpredictable name and is created exclusively (O_EXCL: never through a
    link someone put there). path keeps an earlier file's permissions; a new one gets mode (e.g. 0o600
    for licensed data), by default what the umask allows. A failed write names path and says it is unchanged.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            mode = os.stat(path).st_mode & 0o7777
        elif mode is None:
            umask = os.umask(0o22)
            os.umask(umask)
            mode = 0o666 & ~umask
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OSError(e.errno, f"{e.strerror or e}; nothing was written", str(path)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise OSError(e.errno, f"{e.strerror or e}; it was not written and is as it was before", str(path)) from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def centred_unit_rows(faces) -> np.ndarray:
    """Each face as a float32 row centred on its own mean and scaled to length 1, so that the dot
    product of two rows is their pixel correlation (notebook 01 §6). A constant image stays zero."""
    X = np.array(faces, dtype=np.float32).reshape(len(faces), N_PIXELS)  # a copy, centred and scaled in place
    X -= X.mean(axis=1, keepdims=True)
    norms = np.sqrt(np.einsum("ij,ij->i", X, X))[:, None]  # einsum: no temporary copy of X
    X /= np.where(norms > 0, norms, 1)
    return X


def near_duplicate_pairs(faces, threshold=NEAR_DUPLICATE, chunk=1024) -> np.ndarray:
    """Pairs (i, j), i < j, of faces that show the same photograph (re-encoded, re-cropped or mirrored):
    centred pixel correlation above threshold, as they are or one mirrored (notebook 01 §6).

    One chunk of faces at a time against every later face, so memory stays near one float32 copy.
    """
    A = centred_unit_rows(faces)
    pairs = [np.empty((0, 2), dtype=np.int64)]
    for start in range(0, len(A), chunk):
        rows, later = A[start:start + chunk], A[start:]
        corr = np.maximum(rows @ later.T, mirror_faces(rows) @ later.T)  # as they are, or one mirrored
        i, j = np.nonzero(corr > threshold)  # row i of the chunk, face j of `later`, both from start
        once = i < j  # each face against itself out, each pair once
        pairs.append(np.column_stack([start + i[once], start + j[once]]))
    return np.concatenate(pairs)


def near_duplicate_groups(faces, threshold=NEAR_DUPLICATE, chunk=1024) -> list:
    """Groups (lists of indices) of faces that are one photograph: near_duplicate_pairs joined through
    shared members. tools/build_data.py, the teacher's command line, keeps each group within one split."""
    parent = list(range(len(faces)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in near_duplicate_pairs(faces, threshold, chunk).tolist():
        parent[root(i)] = root(j)
    groups = {}
    for i in range(len(faces)):
        groups.setdefault(root(i), []).append(i)
    return sorted(g for g in groups.values() if len(g) > 1)


# =============================================================================
# Training
# =============================================================================

class TrainingDiverged(FloatingPointError):
    """Raised when the loss becomes non-finite or explodes: the learning rate is too large (notebook 03 §7)."""


@dataclass
class Model:
    """A trained network plus the standardisation it expects, so predict() works in years (notebook 03 §6)."""
    params: dict
    x_mean: np.ndarray
    x_std: np.ndarray
    y_mean: float
    y_std: float
    history: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    lesson: Lesson = REFERENCE  # whose forward predicts: the lesson that trained it


def _check_loss(loss, epoch, lr, start_loss, failed=None):
    """Stop with advice when the loss is non-finite or has grown a thousandfold: a function of the lesson
    that failed its own check (failed, from _failed_checks) is blamed before the learning rate."""
    if not np.isfinite(loss) or loss > 1e3 * max(start_loss, 1.0):
        cause = _divergence_cause(failed) or f"The learning rate {lr:g} is too large; try {lr / 10:g}."
        raise TrainingDiverged(
            f"Training diverged in epoch {epoch}: the loss became {loss:.3g} (it started at "
            f"{start_loss:.3g}). {cause}")


def mirror_faces(X):
    """Flip face rows left-right: column c of each 48x48 image becomes column 47 - c (notebook 01 §6)."""
    return X.reshape(-1, *IMAGE_SHAPE)[:, :, ::-1].reshape(len(X), N_PIXELS)


def _mean_std(X, chunk=1024):
    """Per-column mean and standard deviation in float64, summed one chunk of rows at a time.

    NumPy's X.std(axis=0, dtype=float64) would make a float64 copy of the whole set (~0.6 GB here).
    """
    mean = np.zeros(X.shape[1])
    for start in range(0, len(X), chunk):
        mean += X[start:start + chunk].sum(axis=0, dtype=np.float64)
    mean /= len(X)
    var = np.zeros(X.shape[1])
    for start in range(0, len(X), chunk):
        var += ((X[start:start + chunk] - mean) ** 2).sum(axis=0)
    return mean, np.sqrt(var / len(X))


def standardize_fit(X):
    """Per-pixel mean and standard deviation of the training faces, in their dtype (notebook 03 §2)."""
    mean, std = _mean_std(X)
    return mean.astype(X.dtype), np.maximum(std, 1e-3).astype(X.dtype)


def _progress(epoch, epochs, train_loss, val_rmse, width=20):
    bar = "#" * round(width * epoch / epochs)
    val = f"  val RMSE {val_rmse:5.2f} y" if val_rmse is not None else ""
    return f"epoch {epoch:3d}/{epochs} [{bar:<{width}}] train loss {train_loss:.4f}{val}"


class TrainingFaces:
    """The training faces as train_epoch sees them: standardised per pixel and, with mirror, followed by their
    left-right mirror images (2N rows over N stored), each batch made when it is asked for (notebook 03 §6).

    No standardised copy of the whole set is kept, so training needs no more memory than the faces it was
    given. X[batch] copies the batch's rows, flips its mirrored ones and standardises them: the same numbers,
    bit for bit, as standardising the whole set first. A train_epoch uses it like an array: len(X), X.shape
    and X[batch].
    """

    def __init__(self, X, x_mean, x_std, mirror):
        self.X, self.x_mean, self.x_std, self.mirror = X, x_mean, x_std, mirror
        self.rows = np.arange(len(X) * (2 if mirror else 1))  # indexing it turns any index into row numbers
        self.shape, self.dtype = (len(self.rows), X.shape[1]), x_mean.dtype

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        rows = self.rows[index]  # slices, negative numbers and out-of-range rows behave as for an array
        many = np.atleast_1d(rows)
        out = self.X[many % len(self.X)].astype(self.dtype, copy=False)  # a copy: fancy indexing
        if self.mirror:
            flip = many >= len(self.X)
            out[flip] = mirror_faces(out[flip])
        out -= self.x_mean
        out /= self.x_std
        return out if np.ndim(rows) else out[0]


def _training_arrays(X_train, y_train, mirror=DEFAULTS["mirror"], dtype=np.float32):
    """What train() learns from: the faces standardised per pixel (with their mirror images when mirror),
    the ages scaled to mean 0 and standard deviation 1, and the statistics that undo it (notebook 03 §2).

    Returns (Xs, ys, x_mean, x_std, y_mean, y_std); Xs is a TrainingFaces over X_train itself. With mirror,
    the statistics are those of faces and mirror images together, which are left-right symmetric: so the
    mirror image of a standardised face is the standardised mirror image.
    """
    dtype = np.dtype(dtype)
    X_train = as_face_rows(X_train, "X_train")
    y_train = as_ages(y_train, len(X_train), "y_train")
    mean, std = _mean_std(X_train)
    if mirror:  # over faces and mirror images: the mean of both, and the spread of both around it
        mean_both = (mean + mirror_faces(mean[None])[0]) / 2
        spread = std ** 2 + (mean - mean_both) ** 2  # each pixel's mean squared distance from mean_both
        mean, std = mean_both, np.sqrt((spread + mirror_faces(spread[None])[0]) / 2)
        y_train = np.concatenate([y_train, y_train])
    x_mean, x_std = mean.astype(dtype), np.maximum(std, 1e-3).astype(dtype)
    y_mean, y_std = float(y_train.mean()), float(y_train.std()) or 1.0
    ys = ((y_train - y_mean) / y_std).astype(dtype)
    return TrainingFaces(X_train, x_mean, x_std, mirror), ys, x_mean, x_std, y_mean, y_std


def train(X_train, y_train, X_val=None, y_val=None, *, lesson=REFERENCE, n_hidden=DEFAULTS["n_hidden"],
          lr=DEFAULTS["lr"], lr_decay=DEFAULTS["lr_decay"], batch_size=DEFAULTS["batch_size"],
          epochs=DEFAULTS["epochs"], mirror=DEFAULTS["mirror"], seed=DEFAULTS["seed"], dtype=np.float32,
          snapshot_every=None, verbose=True, keep_best=False, patience=None) -> Model:
    """Train lesson's network with lesson's train_epoch and return a Model that predicts in years (notebook 03 §6).

    The loss in history is in scaled units (1.0 = predicting the mean age). The learning rate of epoch e
    is lr * lr_decay**(e - 1): big steps early, small steps to settle. mirror=True also trains on every
    face flipped left-right (a mirrored face has the same age: twice the data for free). snapshot_every=k
    keeps a copy of W1 every k epochs (epoch 0 included) for the weight browser. keep_best=True restores the
    weights of the epoch with the lowest validation RMSE (history["best_epoch"]; notebook 05 §4), and
    patience=k stops once k epochs in a row brought no new lowest validation RMSE (early stopping).
    Weight decay and momentum are steps: dataclasses.replace(lesson, sgd_step=your_step) (notebook 05).
    """
    lesson.require("sgd_step", "train_epoch", purpose="training")
    epochs, X_train, y_train = grading_budget(epochs, X_train, y_train)  # FACEAGE_GRADING=1: a tiny budget
    failed = _failed_checks(lesson)  # says so, one line per function of the lesson that fails its own check
    if (keep_best or patience) and X_val is None:
        raise ValueError("keep_best and patience need validation faces, train(X_train, y_train, X_val, y_val, ...): "
                         "the best epoch is the one with the lowest validation error.")
    dtype = np.dtype(dtype)
    Xs, ys, x_mean, x_std, y_mean, y_std = _training_arrays(X_train, y_train, mirror, dtype)
    model = Model(lesson.init_params(n_hidden, seed=seed, dtype=dtype), x_mean, x_std, y_mean, y_std,
                  settings=dict(n_hidden=n_hidden, lr=lr, lr_decay=lr_decay, batch_size=batch_size, epochs=epochs,
                                mirror=mirror, seed=seed, dtype=dtype.name, keep_best=keep_best, patience=patience,
                                step=getattr(lesson.sgd_step, "__name__", "step")), lesson=lesson)
    has_val = X_val is not None
    if has_val:
        X_val = as_face_rows(X_val, "X_val")
        y_val = as_ages(y_val, len(X_val), "y_val")
    history = {"epoch": [], "train_loss": [], "val_loss": [], "val_rmse": []}
    if snapshot_every:
        history["W1_epochs"], history["W1_snapshots"] = [0], [model.params["W1"].copy()]
    rng = np.random.default_rng(seed)
    start_loss = lesson.mse_loss(lesson.forward(model.params, Xs[:1024])[0], ys[:1024])[0]
    live = verbose and sys.stdout.isatty()
    best = None  # (epoch, validation RMSE, copy of the weights) of the best epoch so far, for keep_best
    for epoch in range(1, epochs + 1):
        epoch_lr = lr * lr_decay ** (epoch - 1)
        with np.errstate(over="ignore", invalid="ignore"):  # a diverging run is reported by _check_loss
            train_loss = lesson.train_epoch(lesson, model.params, Xs, ys, epoch_lr, batch_size, rng)
        _check_loss(train_loss, epoch, epoch_lr, start_loss, failed)
        history["epoch"].append(epoch)
        history["train_loss"].append(train_loss)
        val_rmse = None
        if has_val:
            val_pred = predict(model, X_val)
            val_mse = float(np.mean((val_pred - y_val) ** 2))
            val_rmse = val_mse ** 0.5
            history["val_loss"].append(val_mse / y_std ** 2)
            history["val_rmse"].append(val_rmse)
        if (keep_best or patience) and (best is None or val_rmse < best[1]):
            best = (epoch, val_rmse, {name: p.copy() for name, p in model.params.items()} if keep_best else None)
        if snapshot_every and epoch % snapshot_every == 0:
            history["W1_epochs"].append(epoch)
            history["W1_snapshots"].append(model.params["W1"].copy())
        if live:
            print("\r" + _progress(epoch, epochs, train_loss, val_rmse), end="", flush=True)
        elif verbose:
            print(_progress(epoch, epochs, train_loss, val_rmse))
        if patience:
            history["stopped_epoch"] = epoch  # the last epoch trained, unless patience stops the run earlier
            if epoch - best[0] >= patience:  # early stopping: no new lowest validation error for `patience` epochs
                break
    if live:
        print()
    if keep_best:  # early stopping, after the fact: the weights of the best epoch, not of the last
        history["best_epoch"] = best[0]
        model.params.update(best[2])
    model.history = history
    return model


def _forward_in_chunks(model, X, batch_size=4096):
    """The model's forward on faces X standardised as in training, in chunks to bound memory.

    Yields (rows, y_hat, cache) per chunk: predict keeps y_hat, hidden_activations the cache's H,
    input_gradient hands the cache to backward_to_input.
    """
    X = as_face_rows(X)
    dtype = model.params["W1"].dtype
    for start in range(0, len(X), batch_size):
        rows = slice(start, start + batch_size)
        Xs = ((X[rows] - model.x_mean) / model.x_std).astype(dtype, copy=False)
        y_hat, cache = model.lesson.forward(model.params, Xs)
        yield rows, y_hat, cache


def predict(model: Model, X):
    """Predicted ages in years for faces X (uint8 or [0, 1] floats, (N, 48, 48) or (N, 2304)) (notebook 03 §9)."""
    out = np.empty(len(X))
    for rows, y_hat, _ in _forward_in_chunks(model, X):
        out[rows] = y_hat
    return out * model.y_std + model.y_mean


MODEL_ARRAYS = ("W1", "b1", "W2", "b2", "x_mean", "x_std", "y_mean", "y_std", "train_loss", "val_loss", "val_rmse",
                "settings")
MAX_HIDDEN = 10_000  # a sane bound on hidden units, checked before a model file's arrays are read


def save_model(model: Model, path):
    """Save a trained model (weights, standardisation, history, settings) as one .npz file (command line).

    The file is replaced whole or not at all (an interrupted save keeps the previous model).
    """
    path = Path(path)
    path = path if path.suffix == ".npz" else path.with_name(path.name + ".npz")  # as np.savez names it
    h = model.history
    arrays = dict(**model.params, x_mean=model.x_mean, x_std=model.x_std, y_mean=model.y_mean, y_std=model.y_std,
                  train_loss=np.array(h.get("train_loss", [])), val_loss=np.array(h.get("val_loss", [])),
                  val_rmse=np.array(h.get("val_rmse", [])), settings=json.dumps(model.settings))
    _write_atomically(path, lambda f: np.savez(f, **arrays))


def _check_model_arrays(a: dict) -> str | None:
    """What is wrong with a model file's arrays (shapes, dtypes, finiteness), or None."""
    W1 = a["W1"]
    hidden = W1.shape[0] if W1.ndim == 2 else 0
    expected = {"W1": (hidden, N_PIXELS), "b1": (hidden,), "W2": (1, hidden), "b2": (1,),
                "x_mean": (N_PIXELS,), "x_std": (N_PIXELS,), "y_mean": (), "y_std": ()}
    for name, shape in expected.items():
        if a[name].dtype.kind != "f":
            return f"{name} has dtype {a[name].dtype}; a trained model's arrays are float32 or float64"
        if a[name].shape != shape:
            return f"{name} has shape {a[name].shape}; expected {shape} (W1 is hidden x 2304)"
        if not np.isfinite(a[name]).all():
            return f"{name} holds {a[name].size - np.isfinite(a[name]).sum()} values that are not finite (NaN or inf)"
    if (a["x_std"] <= 0).any() or a["y_std"] <= 0:
        return "x_std or y_std is not positive (a standard deviation)"
    for name in ("train_loss", "val_loss", "val_rmse"):  # the history: one number per epoch
        if a[name].ndim != 1 or a[name].dtype.kind not in "fiu":
            return f"{name} has shape {a[name].shape} and dtype {a[name].dtype}; expected one number per epoch"
    if a["settings"].ndim != 0 or a["settings"].dtype.kind != "U":
        return f"settings has shape {a['settings'].shape} and dtype {a['settings'].dtype}; expected one JSON text"
    return None


def load_model(path) -> Model:
    """Load a model written by save_model, after checking its shapes, dtypes and finiteness (command line: evaluate)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"No model file at {path}: it {_path_kind(path)}. Train one first: "
                        f"python faceage_helpers.py (it writes model.npz).")
    fix = "Train and save it again: python faceage_helpers.py (it writes model.npz), or fh.save_model()."
    with _open_zip(path, f"It is not a FaceAge model file. {fix}") as zf:
        missing = [k for k in MODEL_ARRAYS if f"{k}.npy" not in zf.namelist()]
        if missing:
            raise DataError(f"{path} is not a FaceAge model file (it has no {missing[0]}). {fix}")
        a = {k: _read_npy(zf, f"{k}.npy", path, MAX_HIDDEN * N_PIXELS, fix, kinds="uifU") for k in MODEL_ARRAYS}
    problem = _check_model_arrays(a)
    try:
        settings = json.loads(str(a["settings"]))
        if not isinstance(settings, dict):
            raise ValueError(f"a JSON {type(settings).__name__}, not an object")
    except (ValueError, RecursionError) as e:  # RecursionError: JSON nested thousands deep
        problem = problem or f"its settings are not a JSON object of settings ({type(e).__name__}: {str(e)[:80]})"
    if problem:
        raise DataError(f"{path} is not a usable FaceAge model: {problem}. {fix}")
    params = {k: a[k] for k in ("W1", "b1", "W2", "b2")}
    model = Model(params, a["x_mean"], a["x_std"], float(a["y_mean"]), float(a["y_std"]), settings=settings)
    n = len(a["train_loss"])
    model.history = {"epoch": list(range(1, n + 1)), "train_loss": list(a["train_loss"]),
                     "val_loss": list(a["val_loss"]), "val_rmse": list(a["val_rmse"])}
    return model


# =============================================================================
# Evaluation
# =============================================================================

def regression_metrics(y_true, y_pred) -> dict:
    """MSE (years^2), RMSE and MAE (years) (notebook 01 §5). A column (N, 1) counts as a vector: subtracted
    from an (N,) vector it would broadcast to an (N, N) table of every pairwise difference."""
    y_true, y_pred = (np.asarray(a, dtype=np.float64) for a in (y_true, y_pred))
    y_true, y_pred = (a.reshape(-1) if a.ndim == 2 and 1 in a.shape else a for a in (y_true, y_pred))
    if y_true.ndim != 1 or y_true.shape != y_pred.shape:
        raise DataError(f"y_true holds {y_true.size} ages in shape {y_true.shape} and y_pred {y_pred.size} in shape "
                        f"{y_pred.shape}; expected two vectors of the same length, one age per face.")
    err = y_pred - y_true
    mse = float(np.mean(err ** 2))
    return {"mse": mse, "rmse": mse ** 0.5, "mae": float(np.mean(np.abs(err)))}


def fit_ridge(X, y, lam=100.0, chunk=512):
    """Ridge regression in closed form, w = (Xc^T Xc + lam I)^-1 Xc^T yc on centred data; returns
    predict(X) (notebook 01 §5, inside fh.baselines).

    Xc^T Xc is summed one float64 chunk of faces at a time: no float64 copy of the whole set (about 95 MB
    at the peak: Xc^T Xc, the sum and one chunk).
    """
    x_mean, y_mean = _mean_std(X, chunk)[0], float(np.mean(y))
    yc = np.asarray(y, dtype=np.float64) - y_mean
    gram, xty = lam * np.eye(X.shape[1]), np.zeros(X.shape[1])
    for start in range(0, len(X), chunk):
        Xc = X[start:start + chunk] - x_mean
        gram += Xc.T @ Xc
        xty += Xc.T @ yc[start:start + chunk]
    w = np.linalg.solve(gram, xty)

    def predict_ridge(X_new):
        return np.concatenate([(X_new[start:start + chunk] - x_mean) @ w
                               for start in range(0, len(X_new), chunk)]) + y_mean
    return predict_ridge


def baselines(data: FaceData, lam=100.0, return_predictions=False):
    """Test metrics of the two models every network must beat: the training mean and ridge regression (notebook 01 §5).

    return_predictions=True also returns their test predictions {name: ages}, so a caller that
    wants to plot them need not fit ridge (a few seconds) a second time.
    """
    preds = {"mean": np.full(len(data.yte), data.ytr.mean()),
             f"ridge (lambda={lam:g})": fit_ridge(data.Xtr, data.ytr, lam)(data.Xte)}
    rows = {name: regression_metrics(data.yte, p) for name, p in preds.items()}
    return (rows, preds) if return_predictions else rows


def format_metrics_table(rows: dict) -> str:
    """A fixed-format table of {name: metrics} for printing (notebook 01 §5)."""
    width = max([5, *map(len, rows)])
    lines = [f"{'model':<{width}} {'RMSE (y)':>9} {'MAE (y)':>8}"]
    lines += [f"{name:<{width}} {m['rmse']:9.2f} {m['mae']:8.2f}" for name, m in rows.items()]
    return "\n".join(lines)


# =============================================================================
# Plots
# =============================================================================

def _plt():
    import matplotlib
    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND") and "ipykernel" not in sys.modules:
        matplotlib.use("Agg")  # command line and tests: no screen needed
    import matplotlib.pyplot as plt
    return plt


def weight_limits(w):
    """Symmetric colour limits so zero sits at the centre of a diverging colour map (notebook 04 §2)."""
    m = float(np.max(np.abs(w))) or 1.0
    return -m, m


def show_faces(X, ages, titles=None, ncols=8, title="Faces and their ages", size=1.4):
    """A grid of faces (grayscale, true aspect) titled with their ages; returns the figure (notebook 01 §2)."""
    plt = _plt()
    X = as_face_rows(X)
    n = len(X)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * 1.2 * nrows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(X[k].reshape(IMAGE_SHAPE), cmap="gray", vmin=0, vmax=1)
            ax.set_title(titles[k] if titles is not None else f"{ages[k]:.0f} y", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_learning_curves(history, ax=None, title="Learning curves"):
    """Training and validation loss per epoch (scaled MSE: 1.0 = predicting the mean age) (notebook 03 §6)."""
    plt = _plt()
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    ax.plot(history["epoch"], history["train_loss"], "o-", label="training")
    if history.get("val_loss"):
        ax.plot(history["epoch"], history["val_loss"], "s-", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE (scaled; 1.0 = predicting the mean)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


def plot_predicted_vs_true(y_true, y_pred, ax=None, title="Predicted against true age", bins=5, limits=None,
                           min_count=10):
    """Each face's predicted against its true age, the diagonal, the mean prediction per bin of true age and the
    mean true age per bin of prediction, each bin drawn at (mean true, mean predicted) (notebook 01 §5). Returns ax.

    Under squared error even the best predictor's first line is flatter than the diagonal (regression to the
    mean); the second lies on it when the predictor is calibrated. bins: a width in years, or bin edges such as
    AGE_BANDS (below the second edge counts as the first bin, from the last edge up as the last). Bins with fewer
    than min_count faces are left out. limits: (low, high) of both axes; None fits the points in steps of 10 years.
    """
    plt = _plt()
    y_pred = as_ages(y_pred, np.size(y_true), "y_pred")
    y_true = as_ages(y_true, len(y_pred), "y_true")
    both = np.concatenate([y_true, y_pred])
    if np.ndim(bins) == 0:
        if not (isinstance(bins, (int, float, np.number)) and np.isfinite(bins) and bins > 0):
            raise DataError(f"bins={bins!r}: expected a bin width in years above 0, or a list of increasing bin edges.")
        edges, per = np.arange(np.floor(both.min() / bins) * bins, both.max() + bins, bins), f"{bins:g}-year bin"
    else:
        edges, per = np.asarray(bins, dtype=np.float64), "bin"
        if edges.ndim != 1 or len(edges) < 2 or not np.all(np.diff(edges) > 0):
            raise DataError(f"bins={bins!r}: expected a bin width in years, or at least two increasing bin edges.")
    if limits is None:
        limits = (10 * np.floor(both.min() / 10), 10 * np.ceil(both.max() / 10))
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.scatter(y_true, y_pred, s=4, alpha=0.25, color="tab:blue", label="one face")
    ax.plot(limits, limits, "k--", linewidth=1, label="perfect prediction (predicted = true)")
    for by, style, color, label in ((y_true, "o-", "tab:orange", f"mean prediction per {per} of true age"),
                                    (y_pred, "s-", "tab:green", f"mean true age per {per} of prediction")):
        k = np.clip(np.searchsorted(edges, by, side="right") - 1, 0, len(edges) - 1)  # each face's bin
        count = np.bincount(k, minlength=len(edges))
        keep = count >= min_count
        ax.plot(np.bincount(k, y_true, len(edges))[keep] / count[keep],
                np.bincount(k, y_pred, len(edges))[keep] / count[keep], style, color=color, markersize=4, label=label)
    ax.set_xlim(*limits)
    ax.set_ylim(*limits)
    ax.set_aspect("equal")
    ax.set_xlabel("true age (years)")
    ax.set_ylabel("predicted age (years)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return ax


def plot_weight_grid(W1, n=30, ncols=10, title=None, units=None, size=1.3, W2=None):
    """First-layer weights as 48x48 images, each on a diverging map centred on zero (notebook 04 §2).

    W2, if given, puts each unit's output weight in its panel title. Returns the figure.
    """
    plt = _plt()
    units = list(range(min(n, len(W1)))) if units is None else list(units)
    nrows = int(np.ceil(len(units) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * 1.15 * nrows + 0.6), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < len(units):
            j = units[k]
            lo, hi = weight_limits(W1[j])
            ax.imshow(weight_image(W1, j), cmap="RdBu_r", vmin=lo, vmax=hi)
            ax.set_title(f"unit {j}" + (f"\nW2 {np.ravel(W2)[j]:+.2f}" if W2 is not None else ""), fontsize=8)
    fig.suptitle(title or f"First-layer weights W1, {len(units)} units as 48x48 images\n"
                 f"(red: positive, blue: negative; each image scaled to its own max |w|)", fontsize=10)
    fig.tight_layout()
    return fig


def save_weight_images(W1, folder, n=30, scale=4):
    """Write weight_image_0.png ... weight_image_{n-1}.png and weight_grid.png to folder (command line).

    They replace the folder's earlier images as a set: drawn in a temporary folder first (an
    interrupted run leaves the previous set as it was), then moved in, and images of units beyond
    this set (from an earlier run with more units) removed. Other files in folder are left alone.
    """
    plt = _plt()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        names = []
        for j in range(min(n, len(W1))):
            w = np.kron(weight_image(W1, j), np.ones((scale, scale)))  # upscale, crisp pixels
            lo, hi = weight_limits(w)
            names.append(f"weight_image_{j}.png")
            plt.imsave(staging / names[-1], w, cmap="RdBu_r", vmin=lo, vmax=hi)
        fig = plot_weight_grid(W1, n=n)
        try:
            fig.savefig(staging / "weight_grid.png", dpi=100)
        finally:
            plt.close(fig)
        names.append("weight_grid.png")
        for name in names:
            os.replace(staging / name, folder / name)
        for old in folder.glob("weight_image_*.png"):
            if old.name not in names:
                old.unlink()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [folder / name for name in names]


# =============================================================================
# Browsers: the interactive widgets of notebooks 04, 06 and 08
# =============================================================================
# Each browser is a VBox(IntSlider, HTML caption, Output holding one PNG). Everything slow
# (activations, rankings, colour limits, the figure itself) is done once when the browser is built;
# a slider move only swaps new pictures and numbers into that figure and its PNG into the Output
# (the face browser also makes that one face's gradient map: one small forward and backward pass).

BROWSER_DPI = 80  # small PNGs: a redraw stays well under a second, and projects fine


def hidden_activations(model, X):
    """Hidden activations h = relu(W1 x + b1), shape (N, hidden), of faces X standardised as in training
    (notebook 04 §3)."""
    H = np.empty((len(X), len(model.params["W1"])), dtype=model.params["W1"].dtype)
    for rows, _, (_, _, H_rows) in _forward_in_chunks(model, X):
        H[rows] = H_rows
    return H


def input_gradient(model, X, lesson=None, batch_size=1024):
    """dŷ/dx for every face X: how many years the predicted age moves per unit of brightness of each
    pixel (0 black, 1 white), shape (N, 2304), computed with lesson.backward_to_input (notebook 06 §4).

    lesson: whose backward_to_input (None: the model's lesson). The model's forward runs on the faces
    standardised as in training; backward_to_input(params, cache, dy_hat) then gets dy_hat = 1 for every
    face, so row n is dŷ_n/dx_n (face n's prediction depends on face n alone). The chain rule through
    the two scalings, x' = (x - mean) / std and age = y' * y_std + y_mean, multiplies by y_std / x_std.
    """
    lesson = lesson or model.lesson
    lesson.require("backward_to_input", purpose="input_gradient")
    backward_to_input = lesson.backward_to_input
    dtype = model.params["W1"].dtype
    G = np.empty((len(X), N_PIXELS), dtype=dtype)
    for rows, y_hat, cache in _forward_in_chunks(model, X, batch_size):
        dX = np.asarray(backward_to_input(model.params, cache, np.ones(len(y_hat), dtype=dtype)))
        if dX.shape != (len(y_hat), N_PIXELS):
            raise ValueError(f"backward_to_input returned shape {dX.shape} for {len(y_hat)} faces, but dX has the "
                             f"shape of X, {(len(y_hat), N_PIXELS)}: run "
                             f"fh.check_backward_to_input(backward_to_input).")
        G[rows] = dX * (model.y_std / model.x_std)
    return G


def _ipywidgets():
    """ipywidgets, imported only when a browser is built: the command line and tests need no display."""
    try:
        import ipywidgets
    except ImportError:
        raise ImportError("The weight browsers need ipywidgets: pip install -r requirements.txt") from None
    return ipywidgets


def _figure(width, height):
    """A matplotlib Figure outside pyplot: nothing to close, and no backend or screen needed."""
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), dpi=BROWSER_DPI)


def _png_output(fig, text):
    """One Output-widget output (a display_data PNG, text as its plain-text stand-in) from a figure."""
    import base64
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=BROWSER_DPI)
    return {"output_type": "display_data", "metadata": {},
            "data": {"image/png": base64.b64encode(buf.getvalue()).decode("ascii"), "text/plain": text}}


def _slider(description, value, lo, hi, step=1):
    """A wide IntSlider that reports a new value when released (or on an arrow key), not while dragged:
    each redraw takes a few hundred milliseconds, and a drag would queue dozens of them."""
    widgets = _ipywidgets()
    return widgets.IntSlider(value=value, min=lo, max=hi, step=step, description=description,
                             continuous_update=False, layout=widgets.Layout(width="480px"))


def _browser(slider, draw, summary):
    """VBox(slider, caption, output) that redraws on every slider change; draw(value) -> (caption, figure).

    The new PNG replaces the Output's content in one step (like clear_output(wait=True) then
    display, without a flicker), so it works in JupyterLab, Voila and plain Python alike.
    The box's plain-text form is summary: a saved notebook keeps that text, never the PNG
    (which can show faces) that the default widget repr would spell out.
    """
    import html
    widgets = _ipywidgets()

    class WeightBrowser(widgets.VBox):
        def __repr__(self):
            return f"[{summary}: a slider; run the notebook in JupyterLab or Voila to use it]"

    caption = widgets.HTML()
    output = widgets.Output()

    def show(value):
        text, fig = draw(value)
        caption.value = html.escape(text)
        output.outputs = (_png_output(fig, text),)

    slider.observe(lambda change: show(change["new"]), names="value")
    show(slider.value)
    return WeightBrowser([slider, caption, output])


def _unit_stats(model, X_faces, ages, top_k):
    """What the unit browsers show of each unit, computed once: its top_k most exciting faces and
    its mean activation per age band, on one scale for all units. Only the faces shown are kept."""
    X = as_face_rows(X_faces, "X_faces")
    ages = as_ages(ages, len(X), "ages")
    if not 1 <= top_k <= len(X):
        raise ValueError(f"top_k must be between 1 and the number of faces ({len(X)}), got {top_k}.")
    H = hidden_activations(model, X)
    band = age_band(ages)
    mean_h = np.stack([H[band == b].mean(axis=0) if np.any(band == b) else np.zeros(H.shape[1])
                       for b in range(len(AGE_BANDS))], axis=1)  # (hidden, bands)
    top = np.argsort(-H, axis=0, kind="stable")[:top_k].T  # (hidden, top_k): indices into X
    shown, top = np.unique(top.ravel(), return_inverse=True)  # keep only the faces shown, not all of X
    return dict(X=X[shown], ages=ages[shown], top=top.reshape(-1, top_k),  # top now indexes the faces kept
                mean_h=mean_h, h_max=max(float(mean_h.max()), 1e-6), never_active=H.max(axis=0) <= 0,
                W1=model.params["W1"], W2=model.params["W2"][0])


def _pushes(w2, negligible):
    """Which way unit j moves the predicted age: up, down, or hardly at all (|W2| negligible)."""
    return "hardly at all" if abs(w2) < negligible else "up" if w2 > 0 else "down"


def _unit_figure(top_k):
    """The unit browsers' figure, built once: weight image, top_k faces, bars by age band; returns (fig, parts)."""
    ncols = int(np.ceil(top_k / 2))
    fig = _figure(10, 3.3)
    outer = fig.add_gridspec(1, 3, width_ratios=[1.1, 0.62 * ncols, 1.9], wspace=0.18,
                             left=0.01, right=0.99, top=0.74, bottom=0.2)
    ax_w = fig.add_subplot(outer[0])
    ax_w.axis("off")
    faces = outer[1].subgridspec(2, ncols, hspace=0.3, wspace=0.05)
    face_axes = [fig.add_subplot(faces[k // ncols, k % ncols]) for k in range(2 * ncols)]
    for ax in face_axes:
        ax.axis("off")
    box = outer[1].get_position(fig)
    ax_h = fig.add_subplot(outer[2])
    ax_h.set_xticks(range(len(AGE_BANDS)), AGE_BAND_NAMES, fontsize=7, rotation=45)
    ax_h.tick_params(axis="y", labelsize=7)
    ax_h.set_xlabel("age band (years)", fontsize=8)
    ax_h.set_title("which ages switch it on (one scale for all units)", fontsize=9)
    parts = dict(
        ax_w=ax_w, weights=ax_w.imshow(np.zeros(IMAGE_SHAPE), cmap="RdBu_r"), face_axes=face_axes[:top_k],
        faces=[ax.imshow(np.zeros(IMAGE_SHAPE), cmap="gray", vmin=0, vmax=1) for ax in face_axes[:top_k]],
        faces_heading=fig.text((box.x0 + box.x1) / 2, 0.84, "", ha="center", fontsize=9),
        ax_h=ax_h, bars=ax_h.bar(range(len(AGE_BANDS)), np.zeros(len(AGE_BANDS))),
        heading=fig.suptitle("", fontsize=11, x=0.01, y=0.99, ha="left", va="top"))
    return fig, parts


def _unit_view(model, X_faces, ages, top_k):
    """draw(j, prefix="") -> unit j's figure and describe(j) -> one line about it, for the unit browsers."""
    st = _unit_stats(model, X_faces, ages, top_k)
    fig, parts = _unit_figure(top_k)
    parts["ax_h"].set_ylim(0, 1.05 * st["h_max"])
    negligible = 0.05 * float(np.max(np.abs(st["W2"])))  # |W2| below this barely moves the prediction

    def draw(j, prefix=""):
        w2 = st["W2"][j]
        parts["weights"].set_data(weight_image(st["W1"], j))
        parts["weights"].set_clim(*weight_limits(st["W1"][j]))
        parts["ax_w"].set_title(f"weights W1[{j}] as 48x48\n(red +, blue -)", fontsize=9)
        for k, image in enumerate(parts["faces"]):
            n = st["top"][j, k]
            image.set_data(st["X"][n].reshape(IMAGE_SHAPE))
            parts["face_axes"][k].set_title(f"{st['ages'][n]:.0f} y", fontsize=8, pad=2)
        parts["faces_heading"].set_text(f"the {top_k} faces with the largest h_{j}"
                                         + (" (none: h is 0 on every face)" if st["never_active"][j] else ""))
        colour = "tab:gray" if abs(w2) < negligible else "tab:red" if w2 > 0 else "tab:blue"
        for bar, height in zip(parts["bars"], st["mean_h"][j]):
            bar.set_height(height)
            bar.set_color(colour)
        parts["ax_h"].set_ylabel(f"mean h_{j}", fontsize=8)
        parts["heading"].set_text(f"{prefix}unit {j}: W2 = {w2:+.3f}, pushes the predicted age "
                                  f"{_pushes(w2, negligible)}")
        return fig

    def describe(j):
        faces = ("it is zero on every face (a dead ReLU)" if st["never_active"][j] else
                 f"its {top_k} most exciting faces are {st['ages'][st['top'][j]].mean():.0f} years old on average")
        return (f"output weight W2 = {st['W2'][j]:+.3f}, pushes the predicted age "
                f"{_pushes(st['W2'][j], negligible)}; {faces}")

    return draw, describe


def _unit_index(value, n_hidden, name="unit"):
    if not 0 <= int(value) < n_hidden:
        raise ValueError(f"{name} must be between 0 and {n_hidden - 1} (the network has {n_hidden} hidden units), "
                         f"got {value}.")
    return int(value)


def unit_browser(model, X_faces, ages, top_k=8, unit=0):
    """A slider over hidden units: each unit's weight image, output weight W2[0, j] and most exciting faces
    (notebook 04 §3).

    X_faces, ages: the faces to search (e.g. the training faces) and their ages. Returns a VBox
    (IntSlider "unit", HTML caption "unit j: ...", Output with the figure) to display.
    """
    n_hidden = len(model.params["W1"])
    unit = _unit_index(unit, n_hidden)
    draw, describe = _unit_view(model, X_faces, ages, top_k)
    slider = _slider("unit", unit, 0, n_hidden - 1)

    def view(j):
        return f"unit {j}: {describe(j)}", draw(j)

    return _browser(slider, view, f"unit browser over {n_hidden} hidden units")


def rank_browser(model, X_faces, ages, top_k=8):
    """Like unit_browser, but the slider runs over units sorted by output weight W2, largest first (notebook 04 §5).

    Rank 1 pushes the predicted age up the most, the last rank pushes it down the most, and the
    ranks in the middle (W2 near 0) barely matter to the prediction.
    """
    W2 = model.params["W2"][0]
    order = np.argsort(-W2, kind="stable")
    draw, describe = _unit_view(model, X_faces, ages, top_k)
    slider = _slider("rank", 1, 1, len(order))

    def view(rank):
        j = int(order[rank - 1])
        return (f"rank {rank} of {len(order)} by output weight: unit {j}, {describe(j)}",
                draw(j, prefix=f"rank {rank} of {len(order)}: "))

    return _browser(slider, view, f"rank browser over {len(order)} hidden units sorted by output weight")


def epoch_browser(history, units=(0, 1, 2, 3, 4, 5, 6, 7), ncols=4):
    """A slider over the W1 snapshots of training: watch the chosen units' features form (notebook 04 §4).

    history: model.history from train(..., snapshot_every=k). Each unit keeps one colour scale
    for all epochs (its largest |w| over the snapshots), so growing weights look stronger.
    Returns a VBox (IntSlider "epoch" over the snapshot epochs, HTML caption "epoch e of E ...", Output).
    """
    if "W1_snapshots" not in history:
        raise ValueError("history has no W1 snapshots: train with fh.train(..., snapshot_every=k) to record "
                         "a copy of W1 every k epochs.")
    epochs, snapshots = list(history["W1_epochs"]), history["W1_snapshots"]
    n_hidden = len(snapshots[0])
    units = [_unit_index(u, n_hidden) for u in np.atleast_1d(units)]
    limits = {u: max(weight_limits(W[u])[1] for W in snapshots) for u in units}
    val_rmse = dict(zip(history.get("epoch", []), history.get("val_rmse", [])))
    ncols = min(ncols, len(units))
    nrows = int(np.ceil(len(units) / ncols))
    step = epochs[1] - epochs[0] if len(epochs) > 1 else 1
    # One figure, built once; view(epoch) only swaps in that snapshot's weights.
    fig = _figure(1.9 * ncols, 2.05 * nrows + 0.45)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.45 / (2.05 * nrows + 0.45),
                        wspace=0.06, hspace=0.22)
    images = []
    for k in range(nrows * ncols):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        ax.axis("off")
        if k < len(units):
            u = units[k]
            images.append(ax.imshow(np.zeros(IMAGE_SHAPE), cmap="RdBu_r", vmin=-limits[u], vmax=limits[u]))
            ax.set_title(f"unit {u}", fontsize=9, pad=2)
    heading = fig.suptitle("", fontsize=9)

    def view(epoch):
        s = min(int(np.searchsorted(epochs, epoch)), len(epochs) - 1)  # the snapshot taken at this epoch
        epoch = epochs[s]
        if epoch == 0:
            caption = f"epoch 0 of {epochs[-1]}: the random start, before any training"
        else:
            caption = f"epoch {epoch} of {epochs[-1]}" + (
                f": validation RMSE {val_rmse[epoch]:.2f} years" if epoch in val_rmse else "")
        for u, image in zip(units, images):
            image.set_data(weight_image(snapshots[s], u))
        heading.set_text(f"W1 after epoch {epoch} (red +, blue -; one colour scale per unit)")
        return caption, fig

    slider = _slider("epoch", epochs[0], epochs[0], epochs[-1], step)
    return _browser(slider, view, f"epoch browser over {len(epochs)} snapshots of W1")


def input_gradient_browser(model, X_faces, ages, lesson=None, face=0):
    """A slider over faces: each face, its gradient map dŷ/dx, and the predicted age (notebook 06 §5).

    The maps come from input_gradient with lesson.backward_to_input (None: the model's lesson): all of them
    once, for one colour scale (99.9% of all |dŷ/dx| fit in it), so a face whose prediction reacts more
    strongly to its pixels looks stronger; then each face's own when it is shown. Returns a VBox
    (IntSlider "face", HTML caption "face i of N: ...", Output).
    """
    from matplotlib import colormaps
    from matplotlib.colors import Normalize
    X = as_face_rows(X_faces, "X_faces")
    ages = as_ages(ages, len(X), "ages")
    if not 0 <= int(face) < len(X):
        raise ValueError(f"face must be between 0 and {len(X) - 1} (there are {len(X)} faces), got {face}.")
    lim = float(np.percentile(np.abs(input_gradient(model, X, lesson)), 99.9)) or 1.0  # all maps, once
    pred = predict(model, X)
    norm, cmap = Normalize(-lim, lim), colormaps["RdBu_r"]
    # One figure, built once: face | gradient map | the map laid over the face; view(i) swaps the data.
    fig = _figure(9.2, 3.7)
    grid = fig.add_gridspec(1, 4, width_ratios=[1, 1, 1, 0.05], left=0.02, right=0.9, top=0.8, bottom=0.04,
                            wspace=0.08)
    axes = [fig.add_subplot(grid[k]) for k in range(3)]
    for ax, title in zip(axes, ["the face", "dŷ/dx: red, a brighter pixel\nraises the predicted age",
                                "dŷ/dx over the face\n(faint where it is small)"]):
        ax.set_axis_off()
        ax.set_title(title, fontsize=9)
    face_image = axes[0].imshow(np.zeros(IMAGE_SHAPE), cmap="gray", vmin=0, vmax=1)
    grad_image = axes[1].imshow(np.zeros(IMAGE_SHAPE), cmap=cmap, norm=norm)
    under_image = axes[2].imshow(np.zeros(IMAGE_SHAPE), cmap="gray", vmin=0, vmax=1)
    over_image = axes[2].imshow(np.zeros((*IMAGE_SHAPE, 4)))
    fig.colorbar(grad_image, cax=fig.add_subplot(grid[3]), label="years per unit of brightness")
    heading = fig.suptitle("", fontsize=10)

    def view(i):  # face i's map is made again when it is shown: keeping every map would double the memory
        g = input_gradient(model, X[i:i + 1], lesson)[0].reshape(IMAGE_SHAPE)
        face_image.set_data(X[i].reshape(IMAGE_SHAPE))
        grad_image.set_data(g)
        under_image.set_data(X[i].reshape(IMAGE_SHAPE))
        rgba = cmap(norm(g))
        rgba[..., 3] = np.clip(np.abs(g) / lim, 0, 1)  # opacity grows with |dŷ/dx|
        over_image.set_data(rgba)
        heading.set_text(f"face {i} of {len(X)}: true age {ages[i]:.0f} y, predicted {pred[i]:.0f} y "
                         f"(one colour scale for all faces)")
        caption = (f"face {i} of {len(X)}: true age {ages[i]:.0f} y, predicted {pred[i]:.0f} y; "
                   f"largest |dŷ/dx| {np.abs(g).max():.1f} years per unit of brightness; every pixel 0.01 "
                   f"brighter would move the prediction by {0.01 * g.sum():+.1f} years (to first order)")
        return caption, fig

    slider = _slider("face", int(face), 0, len(X) - 1)
    return _browser(slider, view, f"face browser over {len(X)} faces and their gradient maps")


# --- notebook 08: your own face (region of the notebook-08 helper) ---
# A photo of your own face: decode_photo reads the uploaded file, crop_face cuts a 48x48 face out of it the
# way the training faces were cut, and own_face_browser puts both behind an upload button and sliders. The
# photo stays in the kernel's memory: nothing here writes it to a file.

MAX_PHOTO_PIXELS = 50_000_000  # refused before decoding above this (a 48-megapixel phone photo still fits)
PHOTO_MAX_SIDE = 1024  # decoded photos are shrunk to this longer side: plenty for a 48x48 crop, quick to redraw


class PhotoError(ValueError):
    """An uploaded file the notebook cannot read as a photo; the message says why and what to do (notebook 08 §1)."""


def decode_photo(data, max_side=PHOTO_MAX_SIDE) -> np.ndarray:
    """A JPEG or PNG file's bytes as a grayscale uint8 array (height, width), turned upright by its EXIF
    orientation and shrunk to at most max_side pixels on its longer side (notebook 08 §1).

    Raises PhotoError with a one-line reason for an empty file, one that is not a JPEG or PNG, one of
    more than MAX_PHOTO_PIXELS (read from its header, before any pixel is decoded), and a damaged or
    truncated one. A 16-bit PNG is scaled to 8 bits (Pillow's own conversion would clip it to white).
    """
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError
    data = bytes(data)
    if not data:
        raise PhotoError("the file is empty (0 bytes): choose the photo again.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the bound below is lower
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise PhotoError(f"the photo has more than {MAX_PHOTO_PIXELS // 10**6} megapixels: upload a smaller "
                         f"copy (any phone or photo editor can export one).") from None
    except (UnidentifiedImageError, OSError):
        raise PhotoError("this file is not a JPEG or PNG image: upload a photo saved as .jpg or .png (an "
                         "iPhone's HEIC photo: export it as JPEG first).") from None
    if im.format not in ("JPEG", "PNG"):
        raise PhotoError(f"this is a {im.format} image, not a JPEG or PNG: save it as .jpg or .png and upload that.")
    width, height = im.size
    if width * height > MAX_PHOTO_PIXELS:
        raise PhotoError(f"the photo is {width} x {height} pixels ({width * height / 1e6:.0f} megapixels), more "
                         f"than the {MAX_PHOTO_PIXELS // 10**6} this notebook reads: upload a smaller copy (any "
                         f"phone or photo editor can export one).")
    try:
        if im.format == "JPEG" and max(width, height) > 2 * max_side:
            im.draft(im.mode, (max_side, max_side))  # libjpeg decodes at 1/2, 1/4 or 1/8 scale: less memory
        im.load()
        im = ImageOps.exif_transpose(im)
    except OSError as e:
        what = "ends early (truncated)" if "truncated" in str(e).lower() else "is damaged"
        raise PhotoError(f"this {im.format} file {what}: the upload or the download was cut off or the file "
                         f"is broken. Export or download the photo again and upload the new file.") from None
    except Exception as e:  # Pillow raises many kinds on a broken file; the student needs one line, not a traceback
        raise PhotoError(f"this {im.format} file is damaged ({type(e).__name__}): export or download the photo "
                         f"again and upload the new file.") from None
    if im.mode.startswith("I;16") or im.mode == "I":  # 16-bit PNG: 0-65535, scaled to 0-255
        pixels = np.asarray(im, dtype=np.float64)
        gray = Image.fromarray(np.round(np.clip(pixels, 0, 65535) / 257).astype(np.uint8))
    else:
        gray = im.convert("L")
    if max(gray.size) > max_side:
        gray.thumbnail((max_side, max_side), Image.LANCZOS)
    return np.array(gray, dtype=np.uint8)


def _photo_pixels(image) -> np.ndarray:
    """A grayscale image (uint8 0-255, or floats in [0, 1]) as float32 pixels 0-255, or a ValueError saying why not."""
    img = np.asarray(image)
    if img.ndim != 2 or min(img.shape) < 1:
        raise ValueError(f"image must be one grayscale image (height, width), got shape {img.shape}.")
    if img.dtype == np.uint8:
        return img.astype(np.float32)
    if np.issubdtype(img.dtype, np.floating) and np.isfinite(img).all() and img.min() >= 0 and img.max() <= 1:
        return img.astype(np.float32) * 255
    raise ValueError(f"image must hold uint8 pixels (0-255) or floats in [0, 1], got {img.dtype} "
                     f"in [{img.min():.3g}, {img.max():.3g}].")


def crop_face(image, centre, size, angle=0.0) -> np.ndarray:
    """The square of side `size` pixels centred at `centre` = (x, y) of a grayscale image, turned by
    `angle` degrees, as a 48x48 uint8 face like the training faces (resized with Lanczos) (notebook 08 §2).

    x counts pixels from the left edge, y from the top (pixel i spans i to i + 1, so the crop of a
    48x48 image at centre (24, 24) with size 48 is the image itself). A positive angle turns the square
    counter-clockwise on the image, which straightens a head tilted that way. Where the square leaves
    the image, the image's border pixels are repeated. image: uint8 (0-255) or floats in [0, 1].
    """
    from PIL import Image
    pixels = _photo_pixels(image)
    cx, cy = (float(c) for c in centre)
    size, angle = float(size), float(angle)
    height, width = pixels.shape
    if not (np.isfinite([cx, cy, angle]).all() and 1 <= size <= 4 * max(height, width)):
        raise ValueError(f"centre and angle must be finite and size between 1 and {4 * max(height, width)} "
                         f"pixels (4 times the image's longer side), got centre ({cx:g}, {cy:g}), size {size:g}, "
                         f"angle {angle:g}.")
    # The patch around the square that the rotation and the Lanczos filter read (3 pixels of the filter's
    # reach, or 3 output pixels' worth when shrinking), cut out with the border pixels repeated.
    reach = 3 * max(1.0, size / IMAGE_SHAPE[0]) + 2
    rad = np.deg2rad(angle)
    half = (size / 2 + reach) * (abs(np.cos(rad)) + abs(np.sin(rad)))
    x0, y0 = int(np.floor(cx - half)), int(np.floor(cy - half))
    x1, y1 = int(np.ceil(cx + half)), int(np.ceil(cy + half))
    rows, cols = np.clip(np.arange(y0, y1), 0, height - 1), np.clip(np.arange(x0, x1), 0, width - 1)
    patch = Image.fromarray(pixels[np.ix_(rows, cols)], mode="F")
    px, py = cx - x0, cy - y0  # the centre in the patch
    if angle:
        patch = patch.rotate(-angle, resample=Image.BICUBIC, center=(px, py))
    face = patch.resize(IMAGE_SHAPE[::-1], Image.LANCZOS,
                        box=(px - size / 2, py - size / 2, px + size / 2, py + size / 2))
    return np.clip(np.round(np.asarray(face)), 0, 255).astype(np.uint8)


def _mean_face_outline(ax, mean_face):
    """Draw the mean training face's outline (its dark eyes, brows, nostrils and mouth, and the edge of
    the face) on ax as contour lines, once: the crop is aligned to them by eye."""
    levels = np.percentile(mean_face, [12, 40])
    ax.contour(mean_face, levels=levels, colors=["yellow", "orange"], linewidths=[1.0, 0.8], alpha=0.9)


def own_face_browser(model, lesson, image, mean_face, centre=None, size=None, angle=0, name="the example photo"):
    """An upload button for a JPEG or PNG and sliders for a crop's centre, size and angle: the photo with the
    crop, the 48x48 face it gives over the mean training face's outline, the mean face, the predicted age
    and the gradient map of notebook 06, redrawn on every move (notebook 08 §2).

    image: the photo shown first (grayscale, uint8 or [0, 1] floats); centre, size, angle: its first crop
    (default: the middle, half the shorter side, upright). lesson: whose backward_to_input draws the map
    (None: the model's). An upload replaces the photo (decode_photo; a file it refuses leaves the photo
    as it was and shows why), resets the crop, and is then cleared from the upload button, so the file
    itself is kept nowhere but in the photo array, in the kernel's memory. The returned box has .photo
    (the photo) and .face() (the current 48x48 crop) for the notebook's own cells.
    """
    import html

    from matplotlib import colormaps
    from matplotlib.colors import Normalize
    from matplotlib.patches import Polygon
    from PIL import Image
    widgets = _ipywidgets()
    mean = as_face_rows(np.reshape(mean_face, (1, -1)), "mean_face")[0].reshape(IMAGE_SHAPE)
    lesson = lesson or model.lesson
    lesson.require("backward_to_input", purpose="own_face_browser's gradient map")
    lim = float(np.abs(input_gradient(model, mean[None], lesson=lesson)).max()) or 1.0  # the map's colour scale
    norm, cmap = Normalize(-lim, lim), colormaps["RdBu_r"]

    # One figure, built once: photo with the crop | the crop over the mean face's outline | the mean face | map
    fig = _figure(11, 3.6)
    grid = fig.add_gridspec(1, 5, width_ratios=[1.25, 1, 1, 1, 0.05], left=0.04, right=0.93, top=0.8,
                            bottom=0.08, wspace=0.12)
    axes = [fig.add_subplot(grid[k]) for k in range(4)]
    for ax, title in zip(axes, ["the photo and the crop\n(x right, y down, in pixels)",
                                "your 48x48 crop, with the mean\ntraining face's outline",
                                "the mean training face", "dŷ/dx of your crop (red: a\nbrighter pixel "
                                "raises the age)"]):
        ax.set_title(title, fontsize=9)
    for ax in axes[1:]:
        ax.set_axis_off()
    axes[0].tick_params(labelsize=7)
    axes[0].locator_params(nbins=4)
    photo_image = axes[0].imshow(np.zeros((2, 2)), cmap="gray", vmin=0, vmax=255)
    square = axes[0].add_patch(Polygon(np.zeros((4, 2)), closed=True, fill=False, edgecolor="yellow", linewidth=1.5))
    crop_image = axes[1].imshow(np.zeros(IMAGE_SHAPE), cmap="gray", vmin=0, vmax=255)
    _mean_face_outline(axes[1], mean)
    axes[2].imshow(mean, cmap="gray", vmin=0, vmax=1)
    _mean_face_outline(axes[2], mean)
    grad_image = axes[3].imshow(np.zeros(IMAGE_SHAPE), cmap=cmap, norm=norm)
    fig.colorbar(grad_image, cax=fig.add_subplot(grid[4]), label="years per unit of brightness")
    heading = fig.suptitle("", fontsize=10)

    sliders = {key: _slider(key, 0, 0, 1) for key in ("centre x", "centre y", "size", "angle")}
    for slider in sliders.values():
        slider.style.description_width = "64px"
    upload = widgets.FileUpload(accept=".jpg,.jpeg,.png,image/jpeg,image/png", multiple=False,
                                description="Upload a photo", layout=widgets.Layout(width="190px"))
    caption, output = widgets.HTML(), widgets.Output()
    state = {"photo": None, "name": name, "note": "", "error": "", "quiet": False}

    def current():
        return dict(centre=(sliders["centre x"].value, sliders["centre y"].value), size=sliders["size"].value,
                    angle=sliders["angle"].value)

    def current_face():
        return crop_face(state["photo"], **current())

    def show_photo(photo, centre, size, angle):
        """Put a new photo in, with slider ranges that fit it, and its first crop; one redraw."""
        height, width = photo.shape
        state["photo"] = photo
        step = int(np.ceil(max(height, width) / 256))  # the panel is ~250 pixels wide: a smaller copy draws faster
        photo_image.set_data(np.asarray(Image.fromarray(photo).reduce(step)) if step > 1 else photo)
        photo_image.set_extent((0, width, height, 0))
        axes[0].set_xlim(0, width)
        axes[0].set_ylim(height, 0)
        ranges = {"centre x": (0, width), "centre y": (0, height), "size": (16, 2 * max(width, height)),
                  "angle": (-30, 30)}
        values = {"centre x": round(centre[0]), "centre y": round(centre[1]), "size": round(size),
                  "angle": round(angle)}
        state["quiet"] = True
        try:
            for key, slider in sliders.items():
                lo, hi = ranges[key]
                slider.min, slider.max = min(lo, slider.min), max(hi, slider.max)  # never min > max on the way
                slider.value = int(np.clip(values[key], lo, hi))
                slider.min, slider.max = lo, hi
        finally:
            state["quiet"] = False
        redraw()

    def redraw(_change=None):
        if state["quiet"]:
            return
        crop = current()
        x, y = crop["centre"]
        cut = current_face()
        pred = float(predict(model, cut[None])[0])
        g = input_gradient(model, cut[None], lesson=lesson)[0].reshape(IMAGE_SHAPE)
        match = float(np.corrcoef(cut.ravel().astype(np.float64), mean.ravel())[0, 1])
        rad = np.deg2rad(crop["angle"])
        along, down = np.array([np.cos(rad), -np.sin(rad)]), np.array([np.sin(rad), np.cos(rad)])
        half = crop["size"] / 2
        square.set_xy([np.array([x, y]) + half * (sx * along + sy * down)
                       for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))])
        crop_image.set_data(cut)
        grad_image.set_data(g)
        heading.set_text(f"{state['name']}: predicted age {pred:.0f} y "
                         f"(correlation with the mean training face {match:.2f})")
        error, state["error"] = state["error"], ""  # a refused upload's message shows once
        text = (f"{error}{state['note']}centre x {x}, y {y}, size {crop['size']} px, angle {crop['angle']:+d}°: "
                f"predicted age {pred:.1f} y; correlation of the crop with the mean training face {match:.2f} "
                f"(aim high); largest |dŷ/dx| {np.abs(g).max():.1f} years per unit of brightness")
        caption.value = html.escape(text)
        output.outputs = (_png_output(fig, text),)

    def uploaded(change):
        files = change["new"]
        if not files:
            return  # the upload button was cleared (below)
        file = files[0]
        try:
            photo = decode_photo(file["content"])
        except PhotoError as e:
            state["error"] = f"{file['name']} was not read: {e} Still showing {state['name']}. "
            redraw()
        else:
            height, width = photo.shape
            state["name"], state["note"] = f"your photo {file['name']}", f"your photo {file['name']} " \
                f"({width} x {height} pixels after decoding): "
            show_photo(photo, (width / 2, height / 2), min(width, height) / 2, 0)
        finally:
            upload.value = ()  # the file's bytes leave the widget: only the photo array above is kept

    class OwnFaceBrowser(widgets.VBox):
        photo = property(lambda self: state["photo"], doc="the photo being cropped (grayscale uint8)")
        face = staticmethod(current_face)

        def __repr__(self):
            return ("[your-own-face browser: an upload button and four sliders (crop centre, size, angle); "
                    "run the notebook in JupyterLab or Voila to use it]")

    photo = np.round(_photo_pixels(image)).astype(np.uint8)
    height, width = photo.shape
    show_photo(photo, centre or (width / 2, height / 2), size or min(width, height) / 2, angle)
    for slider in sliders.values():
        slider.observe(redraw, names="value")
    upload.observe(uploaded, names="value")
    return OwnFaceBrowser([upload, widgets.VBox(list(sliders.values())), caption, output])

# --- end of notebook 08 ---


# =============================================================================
# The end of every notebook: handing its memory back
# =============================================================================

def release_memory():
    """Hand the memory of deleted variables back to the system (the last cell of every notebook).

    gc.collect() frees what only reference cycles kept alive. NumPy's freed arrays then go back to the C
    library's allocator, and on Linux (glibc) it keeps tens of MB of them for this process to reuse:
    malloc_trim(0) returns them, so a kernel left running holds only what it still uses (benchmarks/
    course_walk.py measures it). Elsewhere (macOS, Windows) there is no such call, and collecting is all.
    """
    import ctypes  # here only: no training code calls C (the one C call is this memory hand-back, for glibc)
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)  # None: the C library this Python runs on
    except (AttributeError, OSError, TypeError):  # not glibc: no malloc_trim to call
        pass


# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
# Below: the classroom machinery and the command line. No need to read on to follow the course.
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~


# =============================================================================
# Exercise checks: run right after each exercise in the notebooks
# =============================================================================
# check_forward(forward) and its siblings run your function on small, seeded float64 problems and
# compare what it returns with the reference answers to those problems. They print one line when
# it agrees; otherwise they raise ExerciseCheckError saying what is wrong (which array, which shape,
# off by which factor or sign, which entries) and where to look, never the line that fixes it.
# These checks help; they do not grade: nbgrader's hidden tests (tools/make_student.py) check on fresh
# random problems with reference code of their own. The known mistakes are one table, MISTAKES.
# The reference answers, and the typical wrong answers the checks recognise, come from
# _reference_answers(): computed with this module's reference code here, and read from
# check_answers.npz in the classroom edition, whose module has no reference code to compute them
# (tools/make_student.py writes that file).
# (__tracebackhide__ = True: IPython and pytest then show the message, not the checks' own code.)

class ExerciseCheckError(AssertionError):
    """An exercise check failed; the message names the likely mistake and how to fix it (notebook 02 §3)."""


CHECK_TOL = 1e-6  # rel_error below which your array counts as equal to the reference
CHECK_ANSWERS_FILE = HERE / "check_answers.npz"  # only in the classroom edition
# (N, batch_size, seed) of the train_epoch check's epochs: last batches of 3, 1 and 4 samples, and one
# batch larger than N, so that loops which drop or repeat a batch, or an unweighted mean, show up.
EPOCH_CASES = ((11, 4, 0), (9, 4, 1), (12, 4, 2), (5, 8, 3))
SPY_LR = 0.0123  # the train_epoch check's learning rate: unlike any a loop might hard-code
# The module's own functions by name: a check_x(x) parameter shadows the reference x.
_OWN = dict(vars(REFERENCE), weight_image=weight_image, add_weight_decay=add_weight_decay,
            momentum_step=momentum_step)
_answers = {}
# --- the known mistakes: one table that the checks and tests/test_check_messages.py read --------------
# Each row: (exercise, mistake id, array, recipe, message). The recipe says how the check recognises the
# wrong answer: ("answer", key) is a wrong answer that _reference_answers() computes (key formatted with the
# check's problem, e.g. {n}), ("times", c) an answer c times the right one, ("shape", shape) a wrong shape
# (names such as "N" and "hidden" are the problem's sizes), ("says",) a message a check gives on its own
# evidence (arrays changed in place or not, a missing return, the calls of a loop). Messages say what is
# wrong and where to look, never the line that fixes it (tests/test_check_messages.py keeps them so).
MISTAKES = (
    ("forward", "cache", "", ("says",), "it must return (y_hat, cache) with cache = (X, Z, H), the values backward "
                                        "needs: the cell's last line returns them."),
    ("forward", "z_without_b1", "Z", ("answer", "forward.Z_without_b1"), "b1 is missing: every hidden unit adds its "
                                                                          "own bias."),
    ("forward", "z_minus_b1", "Z", ("answer", "forward.Z_minus_b1"), "b1 is subtracted; a bias is added."),
    ("forward", "z_transposed", "Z", ("shape", ("hidden", "N")), "it looks transposed (hidden units in rows); Z has "
                                                                 "one row per face, one column per hidden unit."),
    ("forward", "no_relu", "H", ("answer", "forward.Z"), "it equals Z: the ReLU is missing."),
    ("forward", "mask", "H", ("answer", "forward.mask"), "it holds only 0s and 1s, which units are on; the ReLU "
                                                         "keeps the values of Z where they are positive."),
    ("forward", "negative_part", "H", ("answer", "forward.negative_part"), "it keeps the negative entries of Z and "
                                                                          "zeroes the positive ones: the other way "
                                                                          "round."),
    ("forward", "y_without_b2", "y_hat", ("answer", "forward.y_without_b2"), "b2 is missing."),
    ("forward", "y_from_z", "y_hat", ("answer", "forward.y_from_Z"), "it is computed from Z; the output layer reads H, "
                                                                     "after the ReLU."),
    ("forward", "y_column", "y_hat", ("shape", ("N", 1)), "a column; one age per face is a vector (N,): W2 has one "
                                                          "row, and that row is what multiplies H."),
    ("forward", "y_row", "y_hat", ("shape", (1, "N")), "a row; one age per face is a vector (N,)."),
    ("mse_loss", "returns", "", ("says",), "it must return two things, the loss and its gradient (the cell's last "
                                           "line returns them)."),
    ("mse_loss", "absolute", "the loss (N = {n})", ("answer", "mse_loss{n}.mae"), "it is the mean absolute error; "
                                                                                  "the loss squares the errors."),
    ("mse_loss", "per_face", "the loss (N = {n})", ("shape", ("n",)), "one squared error per face; the loss is one "
                                                                      "number, their mean."),
    ("mse_loss", "summed", "the loss (N = {n})", ("times", "n"), "{n} times too large (N = {n}): the sum of the "
                                                                 "squared errors, not their mean."),
    ("mse_loss", "negative_loss", "the loss (N = {n})", ("times", -1), "negative: a mean of squares cannot be."),
    ("mse_loss", "dy_scalar", "dy_hat (N = {n})", ("shape", ()), "one number; the gradient has one entry per face, "
                                                                 "shape (N,)."),
    ("mse_loss", "dy_column", "dy_hat (N = {n})", ("shape", ("n", 1)), "a column; keep y_hat's shape, (N,)."),
    ("mse_loss", "dy_sign", "dy_hat (N = {n})", ("times", -1), "minus the right values: check the sign of your "
                                                               "derivative (which of y_hat and y comes first?)."),
    ("mse_loss", "dy_without_mean", "dy_hat (N = {n})", ("times", "n"), "{n} times too large (N = {n}): the mean's "
                                                                        "1/N stays in the gradient."),
    ("mse_loss", "dy_half", "dy_hat (N = {n})", ("times", 0.5), "half the right values: the derivative of a square "
                                                                "keeps a factor that is missing here."),
    ("mse_loss", "dy_neither", "dy_hat (N = {n})", ("times", "n/2"), "{n2} times too large: both the factor of the "
                                                                     "square and the mean's 1/N are missing."),
    ("backward", "returns", "", ("says",), "it must return a dict of gradients named like the parameters, W1, b1, "
                                           "W2 and b2."),
    ("backward", "sign", "*", ("times", -1), "minus the right values: a sign error. backward returns the gradient "
                                             "itself; the minus of gradient descent belongs in sgd_step."),
    ("backward", "divided_by_n", "*", ("times", "1/N"), "{N} times too small (N = {N} faces): dy_hat already holds the "
                                                        "mean's 1/N, so each gradient sums the faces' terms without "
                                                        "dividing again."),
    ("backward", "times_n", "*", ("times", "N"), "{N} times too large (N = {N} faces): dy_hat already holds the "
                                                 "mean's 1/N."),
    ("backward", "twice", "*", ("times", 2), "2 times too large: dy_hat already holds the factor 2 of the square."),
    ("backward", "halved", "*", ("times", 0.5), "half the right values: dy_hat is already the whole loss gradient."),
    ("backward", "dW2_from_z", "dW2", ("answer", "backward.dW2_from_Z"), "it uses Z; the output layer's input is H, "
                                                                         "after the ReLU."),
    ("backward", "dW2_vector", "dW2", ("shape", ("hidden",)), "a gradient has its parameter's shape, (1, hidden) for "
                                                              "W2."),
    ("backward", "dW2_transposed", "dW2", ("shape", ("hidden", 1)), "it looks transposed: W2's shape is (1, hidden)."),
    ("backward", "dW2_per_face", "dW2", ("shape", ("N", "hidden")), "one row per face: the gradient sums the faces' "
                                                                   "terms."),
    ("backward", "db2_scalar", "db2", ("shape", ()), "a gradient has its parameter's shape, (1,) for b2."),
    ("backward", "db2_per_face", "db2", ("shape", ("N",)), "one entry per face: every face adds its share to one sum."),
    ("backward", "no_mask", "dW1", ("answer", "backward.dW1_without_mask"), "the ReLU mask is missing: a unit that "
                                                                            "was off (z <= 0) passes no gradient "
                                                                            "back, so its row of dW1 is 0 for that "
                                                                            "face."),
    ("backward", "times_h", "dW1", ("answer", "backward.dW1_times_H"), "dH is multiplied by H; what passes the "
                                                                       "gradient is the ReLU's slope, 1 where the "
                                                                       "unit is on and 0 where it is off."),
    ("backward", "dW1_transposed", "dW1", ("shape", ("pixels", "hidden")), "it looks transposed: W1's shape is "
                                                                           "(hidden, 2304)."),
    ("backward", "db1_no_mask", "db1", ("answer", "backward.db1_without_mask"), "the ReLU mask is missing: a unit "
                                                                                "that was off (z <= 0) passes no "
                                                                                "gradient back."),
    ("backward", "db1_times_h", "db1", ("answer", "backward.db1_times_H"), "dH is multiplied by H; what passes the "
                                                                           "gradient is the ReLU's slope, 1 where the "
                                                                           "unit is on and 0 where it is off."),
    ("backward", "db1_per_face", "db1", ("shape", ("N", "hidden")), "one row per face: every face adds its share to "
                                                                    "one sum per hidden unit."),
    ("backward", "db1_wrong_axis", "db1", ("shape", ("N",)), "one entry per face: it is summed over the hidden units "
                                                             "instead of over the faces."),
    ("backward", "db1_row", "db1", ("shape", (1, "hidden")), "keep b1's shape (hidden,), without the extra axis."),
    ("numerical_gradient", "not_restored", "", ("says",), "x was not restored: after the two evaluations of an "
                                                          "entry, put its old value back, or every later evaluation "
                                                          "sees a shifted x."),
    ("numerical_gradient", "integers", "", ("says",), "it returns integers, so the decimals were cut off: the result "
                                                      "must hold floats (np.zeros_like(indices) copies the integer "
                                                      "type of indices)."),
    ("numerical_gradient", "forward_difference", "the result", ("answer", "numerical_gradient.forward"),
     "it is a one-sided difference, x + h against x itself; the centered difference of §5 uses x - h and x + h "
     "and is far more accurate (error ~h^2 instead of ~h)."),
    ("numerical_gradient", "backward_difference", "the result", ("answer", "numerical_gradient.backward"),
     "it is a one-sided difference, x against x - h; the centered difference of §5 uses x - h and x + h."),
    ("numerical_gradient", "ignores_indices", "the result", ("answer", "numerical_gradient.first"),
     "these are the slopes at entries 0, 1, 2, 3 of x, not at the given indices: the k-th result is for entry "
     "indices[k]."),
    ("numerical_gradient", "whole_x", "the result", ("shape", (3, 4)), "one number per index, in the order of "
                                                                       "indices, not one per entry of x."),
    ("numerical_gradient", "twice", "the result", ("times", 2), "twice the right values: x - h and x + h are 2h "
                                                                "apart."),
    ("numerical_gradient", "sign", "the result", ("times", -1), "minus the right values: which side of the "
                                                                "difference comes first?"),
    ("numerical_gradient", "copy", "the result", ("times", 0), "all zeros: f() never saw your change. Change x "
                                                               "itself, in place: x.reshape(-1) is a view of x, but "
                                                               "x.flatten() and x.copy() are copies."),
    ("sgd_step", "rebinds", "", ("says",), "it puts new arrays into params ({names}) instead of changing the arrays "
                                           "already there, which other code (your training loop, the model) still "
                                           "holds: change each array in place."),
    ("sgd_step", "returns_copies", "", ("says",), "it returns new arrays but leaves params unchanged; change the "
                                                  "arrays of params in place (no return needed)."),
    ("sgd_step", "unchanged", "", ("says",), "params did not change. In a loop, `p = p - ...` only gives the name p a "
                                             "new array; an augmented assignment (-=) changes the array itself."),
    ("sgd_step", "some_unchanged", "", ("says",), "{names} did not change: every parameter takes a step."),
    ("sgd_step", "uphill", "*", ("answer", "sgd_step.{k}.uphill"), "it moves along the gradient (uphill: the loss "
                                                                     "grows); descent moves against it."),
    ("sgd_step", "without_lr", "*", ("answer", "sgd_step.{k}.without_lr"), "the step ignores the learning rate."),
    ("train_epoch", "no_calls", "", ("says",), "it never called the lesson's functions: every step of the loop goes "
                                               "through the lesson it is given (lesson.forward, lesson.mse_loss, "
                                               "lesson.backward, lesson.sgd_step), so that one loop trains anyone's "
                                               "network."),
    ("train_epoch", "unshuffled", "", ("says",), "the samples are not shuffled: every epoch would see them in the "
                                                 "same order."),
    ("train_epoch", "unseeded", "", ("says",), "two epochs with the same rng shuffled differently: it shuffles with "
                                               "an unseeded generator of its own, so a run cannot be repeated; use "
                                               "the rng it is given."),
    ("train_epoch", "fixed_seed", "", ("says",), "it shuffles the same way whatever rng it is given (a fixed seed of "
                                                 "its own?), so every epoch of a run sees the samples in the same "
                                                 "order; use the rng it is given."),
    ("weight_image", "changes_w1", "", ("says",), "it changed W1; it should only read it (reshape, don't modify in "
                                                  "place)."),
    ("weight_image", "transposed", "the image of unit {j}", ("answer", "weight_image{j}.transposed"),
     "it is transposed: the pixels were flattened row by row (notebook 01), so pixels 0-47 are the top row; drop "
     "the .T or order='F'."),
    ("weight_image", "next_row", "the image of unit {j}", ("answer", "weight_image{j}.next"),
     "it is row {next} of W1; unit j is row j (counting from 0)."),
    ("weight_image", "previous_row", "the image of unit {j}", ("answer", "weight_image{j}.previous"),
     "it is row {previous} of W1; unit j is row j (counting from 0)."),
    ("weight_image", "flat", "the image of unit {j}", ("shape", ("pixels",)), "still a row of 2304 weights; the image "
                                                                              "is 48 by 48."),
    ("weight_image", "flat_row", "the image of unit {j}", ("shape", (1, "pixels")), "still a row of 2304 weights; the "
                                                                                    "image is 48 by 48."),
    ("weight_image", "negated", "the image of unit {j}", ("times", -1), "minus the weights: return them as they are."),
    ("add_weight_decay", "changes_params", "", ("says",), "it changed params ({names}); it only adds the penalty's "
                                                          "gradient to grads. The step then moves the weights: "
                                                          "shrinking them here as well applies the decay twice."),
    ("add_weight_decay", "returns_none", "", ("says",), "it returns None: the cell's last line returns grads, which "
                                                        "the step then uses."),
    ("add_weight_decay", "returns", "", ("says",), "it must return the dict of gradients with all four keys, W1, b1, "
                                                   "W2 and b2."),
    ("add_weight_decay", "none", "W", ("answer", "add_weight_decay.{k}.none"), "the penalty's gradient is missing."),
    ("add_weight_decay", "one", "W", ("answer", "add_weight_decay.{k}.one"), "the factor lambda (weight_decay) is "
                                                                             "missing."),
    ("add_weight_decay", "twice", "W", ("answer", "add_weight_decay.{k}.twice"), "the penalty's gradient is added "
                                                                                 "twice (or the 1/2 of lambda/2 "
                                                                                 "||W||^2 was dropped: check its "
                                                                                 "derivative)."),
    ("add_weight_decay", "half", "W", ("answer", "add_weight_decay.{k}.half"), "half the penalty's gradient: check the "
                                                                               "derivative of lambda/2 w^2."),
    ("add_weight_decay", "minus", "W", ("answer", "add_weight_decay.{k}.minus"), "the penalty's gradient is "
                                                                                 "subtracted: the penalty is added to "
                                                                                 "the loss, so is its gradient."),
    ("add_weight_decay", "only", "W", ("answer", "add_weight_decay.{k}.only"), "backward's gradient is replaced by "
                                                                               "the penalty's; the two add up."),
    ("add_weight_decay", "bias_decayed", "b", ("answer", "add_weight_decay.{k}.lambda"),
     "the bias is decayed too: the penalty is on the weights W1 and W2 only (a bias multiplies no pixel, and "
     "keeping it free costs no overfitting): leave its gradient as backward computed it."),
    ("add_weight_decay", "bias_decayed_without_lambda", "b", ("answer", "add_weight_decay.{k}.one"),
     "the bias is decayed too, without the factor lambda: decay W1 and W2 only."),
    ("momentum_step", "rebinds", "", ("says",), "it puts new arrays into params ({names}) instead of changing the "
                                                "arrays already there, which the training loop and the model still "
                                                "hold: change each array in place."),
    ("momentum_step", "lost_key", "", ("says",), "velocity lost one of its keys W1, b1, W2, b2: every parameter keeps "
                                                 "its own velocity."),
    ("momentum_step", "some_still", "", ("says",), "the velocity of {names} did not change: update every parameter "
                                                   "and its velocity."),
    ("momentum_step", "not_kept", "", ("says",), "velocity did not change, so the next step cannot remember this one "
                                                 "(every step would be plain SGD). Keep the new velocity in the dict "
                                                 "you are given: change v in place (`v = ...` makes a new array and "
                                                 "only renames it; velocity[name] = ... stores it)."),
    ("momentum_step", "uphill", "velocity", ("answer", "momentum{t}.v.{k}.uphill"), "it has the wrong sign: the "
                                                                                    "velocity points downhill, "
                                                                                    "against the gradient."),
    ("momentum_step", "forgets", "velocity", ("answer", "momentum{t}.v.{k}.forgets"),
     "the new velocity forgets the old one; it keeps a fraction momentum of it (is velocity reset, or not kept, "
     "between steps?)."),
    ("momentum_step", "without_momentum", "velocity", ("answer", "momentum{t}.v.{k}.without_momentum"),
     "the factor momentum is missing."),
    ("momentum_step", "without_lr", "velocity", ("answer", "momentum{t}.v.{k}.without_lr"),
     "the learning rate is missing from the velocity (the parameters then move by the velocity alone)."),
    ("momentum_step", "average", "velocity", ("answer", "momentum{t}.v.{k}.average"),
     "this is a running average of the gradients; this notebook's momentum is the update in the docstring."),
    ("momentum_step", "minus_v", "params", ("answer", "momentum{t}.p.{k}.minus_v"), "it has the wrong sign: the "
                                                                                    "velocity already points "
                                                                                    "downhill."),
    ("momentum_step", "old_v", "params", ("answer", "momentum{t}.p.{k}.old_v"),
     "it moved with the velocity of the step before (at the first step: not at all): update the velocity first, "
     "then move the parameter by it."),
    ("momentum_step", "sgd", "params", ("answer", "momentum{t}.p.{k}.sgd"), "it took a plain SGD step; it moves by "
                                                                            "the new velocity."),
    ("backward_to_input", "no_mask", "dX", ("answer", "backward_to_input.without_mask"),
     "the ReLU mask is missing: gradient reaches the pixels only through units that are on."),
    ("backward_to_input", "times_h", "dX", ("answer", "backward_to_input.times_H"),
     "dH is multiplied by H; what passes the gradient is the ReLU's slope, 1 where the unit is on and 0 where it "
     "is off."),
    ("backward_to_input", "no_dy_hat", "dX", ("answer", "backward_to_input.without_dy_hat"),
     "dy_hat is missing: each face's gradient is scaled by its own dy_hat (with dy_hat = 1 for every face, dX is "
     "dŷ/dx)."),
    ("backward_to_input", "weights_gradient", "dX", ("shape", ("hidden", "pixels")),
     "that is the shape of W1 and of dW1, the gradient for the weights, summed over the faces; dX has X's shape, "
     "one row per face."),
    ("backward_to_input", "transposed", "dX", ("shape", ("pixels", "N")), "it looks transposed: dX has the shape of "
                                                                          "X, one row per face."),
    ("backward_to_input", "stops_at_dz", "dX", ("shape", ("N", "hidden")), "that is dZ's shape; one more step takes "
                                                                           "the gradient to the pixels."),
    ("backward_to_input", "summed", "dX", ("shape", ("pixels",)), "it is summed over the faces; each face has its own "
                                                                  "gradient, (N, 2304)."),
    ("backward_to_input", "sign", "dX", ("times", -1), "minus the right values: a sign error."),
    ("backward_to_input", "divided_by_n", "dX", ("times", "1/N"), "{N} times too small (N = {N} faces): dy_hat already "
                                                                  "holds the mean's 1/N."),
    ("backward_to_input", "times_n", "dX", ("times", "N"), "{N} times too large (N = {N} faces): dy_hat already holds "
                                                           "the mean's 1/N."),
)


def _factor(spec, sizes):
    """A ("times", spec) recipe's factor: a number, a size name ("N"), "1/N" or "n/2"."""
    if not isinstance(spec, str):
        return spec
    if spec.startswith("1/"):
        return 1 / sizes[spec[2:]]
    if spec.endswith("/2"):
        return sizes[spec[:-2]] / 2
    return sizes[spec]


def _says(exercise, mistake, **problem):
    """The message of one row of MISTAKES, formatted with the check's problem (e.g. names=...)."""
    for row in MISTAKES:
        if row[:2] == (exercise, mistake):
            return row[4].format(**problem)
    raise KeyError(f"no mistake {mistake!r} of {exercise} in MISTAKES")


def _known(exercise, array, **problem):
    """The rows of MISTAKES for one array of an exercise, resolved on the check's problem, as the
    keyword arguments of _mismatch (mistakes, shapes, factors)."""
    sizes = dict(pixels=N_PIXELS, **problem)
    mistakes, shapes, factors = [], {}, {}
    for ex, _, arr, recipe, message in MISTAKES:
        if ex != exercise or arr not in (array, "*"):
            continue
        text = message.format(**problem)
        if recipe[0] == "answer":
            mistakes.append((_answer(recipe[1].format(**problem)), text))
        elif recipe[0] == "shape":
            shapes[tuple(sizes[s] if isinstance(s, str) else s for s in recipe[1])] = text
        elif recipe[0] == "times":
            factors[_factor(recipe[1], sizes)] = text
    return dict(mistakes=mistakes, shapes=shapes, factors=factors)


def _run(name, fn, *args, hint=""):
    """Call your function; an unfilled stub or a crash becomes a friendly ExerciseCheckError."""
    if not callable(fn):
        raise ExerciseCheckError(f"pass your function itself, as in fh.check_{name}({name}), "
                                 f"not a {type(fn).__name__}.")
    try:
        return fn(*args)
    except NotImplementedError as e:
        tip = f" Hint: {e}" if str(e) else ""
        raise ExerciseCheckError(f"{name} is not implemented yet: fill in the cell above (replace "
                                 f"`raise NotImplementedError` with your code), run it, then run this "
                                 f"check again.{tip}") from None
    except Exception as e:
        raise ExerciseCheckError(f"{name} raised {type(e).__name__}: {e} (the traceback above shows "
                                 f"where). {hint}".rstrip()) from e


def _not_yours(name, fn):
    """True (after saying so) for the teacher's released reference; an error for this module's own function.

    Neither is the student's code, so neither may earn "all checks passed".
    """
    if fn is _OWN.get(name):
        raise ExerciseCheckError(f"{name}: this is fh.{name}, the module's own function, not yours: write "
                                 f"`def {name}(...)` in the cell above, run it, and check that: "
                                 f"fh.check_{name}({name}).")
    if getattr(fn, "__module__", None) == REFERENCE_MODULE:
        print(f"{name}: this is the teacher's reference ({REFERENCE_MODULE}.py), not your own code: not checked.")
        return True
    return False


def _copy(params):
    return {k: np.array(v, dtype=np.float64) for k, v in params.items()}


def _close(a, b, tol=CHECK_TOL):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and rel_error(a, b) < tol


def _mismatch(what, got, expected, hint, mistakes=(), shapes=None, factors=None, tol=CHECK_TOL):
    """None when got equals expected; otherwise a message, naming the mistake when it is a known one.

    mistakes: (wrong answer, explanation) pairs; shapes: {wrong shape: explanation};
    factors: {c: explanation} for answers that are c times the right one.
    """
    if got is None:
        return f"{what} is None: is a `return` missing?"
    try:
        got = np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        return f"{what} should be a NumPy array of numbers, not a {type(got).__name__}."
    expected = np.asarray(expected, dtype=np.float64)
    if not np.isfinite(got).all():
        return f"{what} contains NaN or inf: {hint}"
    if got.shape != expected.shape:
        return f"{what} has shape {got.shape}, expected {expected.shape}: {(shapes or {}).get(got.shape, hint)}"
    if _close(got, expected, tol):
        return None
    for wrong, explanation in mistakes:
        if _close(got, wrong, tol):
            return f"{what} is wrong: {explanation}"
    c = float(np.vdot(got, expected) / max(np.vdot(expected, expected), 1e-300))
    if _close(got, c * expected, tol):  # right direction, wrong scale (or sign)
        for factor, explanation in (factors or {}).items():
            if abs(c - factor) < 1e-6 * max(1.0, abs(factor)):
                return f"{what} is {explanation}"
        if got.size > 1:  # any single number is some multiple of another: only a pattern says something
            return f"{what} is {c:.3g} times the right values (right pattern, wrong scale): {hint}"
    if got.size == 1:
        return f"{what} is {got.item():.6g}, expected {expected.item():.6g}: {hint}"
    scale = max(1e-8, float(np.max(np.abs(got) + np.abs(expected))))
    wrong = np.argwhere(np.abs(got - expected) >= tol * scale)
    first = tuple(int(i) for i in wrong[0])
    return (f"{what} is wrong in {len(wrong)} of {got.size} entries (the first, [{', '.join(map(str, first))}], "
            f"is {got[first]:.6g}, expected {expected[first]:.6g}): {hint}")


def _fail_if(name, *problems):
    """Raise one ExerciseCheckError listing the problems found (None means fine)."""
    problems = [p for p in problems if p]
    if problems:
        raise ExerciseCheckError(f"{name}: " + "\n".join(problems))


def _grouped(problems):
    """{name: problem starting with name, or None} -> one line per distinct explanation, naming all its names."""
    names_by_text = {}
    for name, problem in problems.items():
        if problem:
            names_by_text.setdefault(problem[len(name):], []).append(name)
    lines = []
    for text, names in names_by_text.items():
        if len(names) > 1:  # "dW1 is wrong: ..." becomes "dW1 and db1 are wrong: ..."
            text = " are " + text[4:] if text.startswith(" is ") else text
        lines.append(_join(names) + text)
    return lines


# --- the seeded problems (fixed seeds: the same check, with the same verdict, every run) -----

def _net_problem(n=5, n_hidden=4, seed=0):
    """A small float64 network at the real face size, a batch X and targets y; z takes both signs."""
    rng = np.random.default_rng(seed)
    params = {"W1": rng.standard_normal((n_hidden, N_PIXELS)) / np.sqrt(N_PIXELS),
              "b1": 0.5 * rng.standard_normal(n_hidden),
              "W2": rng.standard_normal((1, n_hidden)), "b2": rng.standard_normal(1)}
    return params, rng.standard_normal((n, N_PIXELS)), rng.standard_normal(n)


def _loss_problem(n):
    """n predictions and n targets for the mse_loss check."""
    rng = np.random.default_rng(10 + n)
    return rng.standard_normal(n), rng.standard_normal(n)


def _quadratic_problem():
    """f(x) = sum(c x^2 / 2 + b x) at a random x: its gradient c x + b is known exactly."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4))
    c, b = rng.uniform(5, 10, size=x.shape), rng.standard_normal(x.shape)
    return x, c, b, np.array([7, 2, 10, 5]), 1e-5  # flat positions in x, as gradient_check passes them


def _sgd_problem():
    rng = np.random.default_rng(0)
    shapes = {"W1": (3, 4), "b1": (3,), "W2": (1, 3), "b2": (1,)}
    params = {k: rng.standard_normal(s) for k, s in shapes.items()}
    return params, {k: rng.standard_normal(s) for k, s in shapes.items()}, 0.1


def _decay_problem():
    """Parameters, their gradients and lambda for the add_weight_decay check."""
    params, grads, _ = _sgd_problem()
    return params, grads, 0.1


def _momentum_problem():
    """Parameters, the gradients of three steps, lr and momentum for the momentum_step check."""
    rng = np.random.default_rng(1)
    shapes = {"W1": (3, 4), "b1": (3,), "W2": (1, 3), "b2": (1,)}
    params = {k: rng.standard_normal(s) for k, s in shapes.items()}
    return params, [{k: rng.standard_normal(s) for k, s in shapes.items()} for _ in range(3)], 0.1, 0.8  # 1 - 0.8 != lr


def _weight_problem(n_hidden=5):
    """W1 of 5 hidden units for the weight_image check."""
    return np.random.default_rng(0).standard_normal((n_hidden, N_PIXELS))


def _reference_answers():
    """Every answer the checks compare with, from this module's reference functions: {key: array}.

    tools/make_student.py saves them as check_answers.npz for the classroom edition, whose module
    has no reference code (this function included).
    """
    out = {}
    params, X, y = _net_problem()
    W1, b1, W2, b2 = params["W1"], params["b1"], params["W2"], params["b2"]
    y_hat, (_, Z, H) = forward(params, X)
    out.update({"forward.mask": (Z > 0).astype(float), "forward.negative_part": np.minimum(Z, 0)})
    out.update({"forward.y_hat": y_hat, "forward.Z": Z, "forward.H": H, "forward.Z_without_b1": X @ W1.T,
                "forward.Z_minus_b1": X @ W1.T - b1, "forward.y_without_b2": y_hat - b2[0],
                "forward.y_from_Z": Z @ W2[0] + b2[0]})
    for n in (5, 3):
        p, t = _loss_problem(n)
        loss, dy = mse_loss(p, t)
        out.update({f"mse_loss{n}.loss": np.array(loss), f"mse_loss{n}.dy_hat": dy,
                    f"mse_loss{n}.mae": np.array(np.mean(np.abs(p - t)))})
    _, dy_hat = mse_loss(y_hat, y)
    grads = backward(params, (X, Z, H), dy_hat)
    dH = dy_hat[:, None] * W2
    out.update({f"backward.d{k}": g for k, g in grads.items()})
    out.update({"backward.dy_hat": dy_hat, "backward.dW2_from_Z": dy_hat[None, :] @ Z,
                "backward.dW1_without_mask": dH.T @ X, "backward.dW1_times_H": (dH * H).T @ X,
                "backward.db1_without_mask": dH.sum(axis=0), "backward.db1_times_H": (dH * H).sum(axis=0)})
    out.update({"backward_to_input.dX": (dH * (Z > 0)) @ W1, "backward_to_input.without_mask": dH @ W1,
                "backward_to_input.times_H": (dH * H) @ W1, "backward_to_input.without_dy_hat": (W2 * (Z > 0)) @ W1})
    x, c, b, indices, h = _quadratic_problem()
    out["numerical_gradient"] = numerical_gradient(lambda: float(np.sum(0.5 * c * x ** 2 + b * x)), x, indices, h)
    slope, half_step = (c * x + b).reshape(-1), c.reshape(-1)[indices] * h / 2  # a one-sided difference's O(h) error
    out.update({"numerical_gradient.forward": slope[indices] + half_step,
                "numerical_gradient.backward": slope[indices] - half_step,
                "numerical_gradient.first": slope[:len(indices)]})
    W1 = _weight_problem()
    for j in (3, 0):
        out.update({f"weight_image{j}": W1[j].reshape(IMAGE_SHAPE), f"weight_image{j}.transposed":
                    W1[j].reshape(IMAGE_SHAPE).T, f"weight_image{j}.next": W1[(j + 1) % len(W1)].reshape(IMAGE_SHAPE),
                    f"weight_image{j}.previous": W1[j - 1].reshape(IMAGE_SHAPE)})
    p, g, lr = _sgd_problem()
    for k in p:
        out.update({f"sgd_step.{k}": p[k] - lr * g[k], f"sgd_step.{k}.uphill": p[k] + lr * g[k],
                    f"sgd_step.{k}.without_lr": p[k] - g[k]})
    p, g, lam = _decay_problem()
    decayed = add_weight_decay({k: a.copy() for k, a in g.items()}, _copy(p), lam)
    for k in p:  # the answer, and g + c * p for the typical wrong factors c
        out[f"add_weight_decay.{k}"] = decayed[k]
        out.update({f"add_weight_decay.{k}.{how}": g[k] + c * p[k] for how, c in
                    (("none", 0), ("lambda", lam), ("one", 1), ("twice", 2 * lam), ("half", lam / 2), ("minus", -lam))})
        out[f"add_weight_decay.{k}.only"] = lam * p[k]
    p, all_grads, lr, mu = _momentum_problem()
    v = {k: np.zeros_like(a) for k, a in p.items()}
    for t, g in enumerate(all_grads, 1):
        p0, v0 = _copy(p), _copy(v)
        momentum_step(p, g, v, lr, mu)
        for k in p:
            out.update({f"momentum{t}.p_start.{k}": p0[k], f"momentum{t}.v_start.{k}": v0[k],
                        f"momentum{t}.v.{k}": v[k].copy(), f"momentum{t}.p.{k}": p[k].copy(),
                        f"momentum{t}.v.{k}.uphill": mu * v0[k] + lr * g[k], f"momentum{t}.v.{k}.forgets": -lr * g[k],
                        f"momentum{t}.v.{k}.without_momentum": v0[k] - lr * g[k],
                        f"momentum{t}.v.{k}.without_lr": mu * v0[k] - g[k],
                        f"momentum{t}.v.{k}.average": mu * v0[k] + (1 - mu) * g[k],
                        f"momentum{t}.p.{k}.minus_v": p0[k] - v[k], f"momentum{t}.p.{k}.old_v": p0[k] + v0[k],
                        f"momentum{t}.p.{k}.start": p0[k], f"momentum{t}.p.{k}.sgd": p0[k] - lr * g[k]})
    return out


def _answer(key):
    """One reference answer: from check_answers.npz where it exists (the classroom edition), else computed."""
    if not _answers:
        if CHECK_ANSWERS_FILE.is_file():
            with np.load(CHECK_ANSWERS_FILE) as f:
                _answers.update({k: f[k] for k in f.files})
        else:
            _answers.update(_reference_answers())
    return _answers[key]


def check_forward(forward):
    """Check your forward(params, X) -> (y_hat, (X, Z, H)) on 5 faces (notebook 02 §3)."""
    __tracebackhide__ = True
    if _not_yours("forward", forward):
        return
    params, X, _ = _net_problem()
    Z_ref, H_ref = _answer("forward.Z"), _answer("forward.H")
    N, hidden = Z_ref.shape
    out = _run("forward", forward, _copy(params), X.copy())
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], (tuple, list)) and len(out[1]) == 3):
        raise ExerciseCheckError(f"forward: {_says('forward', 'cache')}")
    y_hat, (X_out, Z, H) = out
    _fail_if("forward", _mismatch("the X in the cache", X_out, X, "the cache is (X, Z, H), in that order."))
    _fail_if("forward", _mismatch("Z", Z, Z_ref, "Z is (N, hidden): one row per face, one column per hidden unit "
                                  "(section 1's batch form).", **_known("forward", "Z", N=N, hidden=hidden)))
    _fail_if("forward", _mismatch("H", H, H_ref, "H is the ReLU of Z, entry by entry.",
                                  **_known("forward", "H", N=N, hidden=hidden)))
    _fail_if("forward", _mismatch("y_hat", y_hat, _answer("forward.y_hat"), "y_hat is one age per face, from H "
                                  "through the output layer (W2 and b2).",
                                  **_known("forward", "y_hat", N=N, hidden=hidden)))
    print("forward: all checks passed.")


def check_mse_loss(mse_loss):
    """Check your mse_loss(y_hat, y) -> (loss, dy_hat) on batches of 5 and of 3 (notebook 02 §3)."""
    __tracebackhide__ = True
    if _not_yours("mse_loss", mse_loss):
        return
    for n in (5, 3):
        y_hat, y = _loss_problem(n)
        out = _run("mse_loss", mse_loss, y_hat.copy(), y.copy())
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ExerciseCheckError(f"mse_loss: {_says('mse_loss', 'returns')}")
        loss, dy_hat = out
        sizes = dict(n=n, n2=f"{n / 2:g}")
        _fail_if("mse_loss", _mismatch(
            f"the loss (N = {n})", loss, _answer(f"mse_loss{n}.loss"), "the loss is one number, the mean of the "
            "squared errors.", **_known("mse_loss", "the loss (N = {n})", **sizes)),
            _mismatch(f"dy_hat (N = {n})", dy_hat, _answer(f"mse_loss{n}.dy_hat"), "dy_hat is dL/dy_hat, one entry "
                      "per face: compare with item 1 of your derivation.",
                      **_known("mse_loss", "dy_hat (N = {n})", **sizes)))
    print("mse_loss: all checks passed.")


def check_backward(backward):
    """Check each gradient of your backward(params, cache, dy_hat) on 5 faces (notebook 02 §4)."""
    __tracebackhide__ = True
    if _not_yours("backward", backward):
        return
    params, X, _ = _net_problem()
    Z, H, dy_hat = _answer("forward.Z"), _answer("forward.H"), _answer("backward.dy_hat")
    grads = _run("backward", backward, _copy(params), (X.copy(), Z.copy(), H.copy()), dy_hat.copy())
    if not isinstance(grads, dict):
        raise ExerciseCheckError(f"backward: {_says('backward', 'returns')} It returned a {type(grads).__name__}.")
    missing = [k for k in params if k not in grads]
    if missing:
        raise ExerciseCheckError(f"backward: {_says('backward', 'returns')} It has no {_join(missing)} (its keys: "
                                 f"{', '.join(map(repr, grads)) or 'none'}).")
    N, hidden = Z.shape
    sizes = dict(N=N, hidden=hidden)
    hints = {"W2": "dW2 has W2's shape (1, hidden): one entry per hidden unit, each face adding its share (step 2 "
                   "of your derivation).",
             "b2": "db2 has b2's shape (1,): every face adds its share.",
             "W1": "dW1 has W1's shape (hidden, 2304): look at dH, then at the ReLU's slope, then at which inputs "
                   "feed W1 (steps 3 to 5 of your derivation).",
             "b1": "db1 has b1's shape (hidden,): one entry per hidden unit, every face adding its share."}
    problems = {f"d{k}": _mismatch(f"d{k}", grads[k], _answer(f"backward.d{k}"), hints[k],
                                   **_known("backward", f"d{k}", **sizes)) for k in ("W2", "b2", "W1", "b1")}
    wrong = [name for name, p in problems.items() if p]
    if wrong:
        right = [name for name in problems if name not in wrong]
        head = f"{_join(wrong)} {'is' if len(wrong) == 1 else 'are'} wrong"
        if right:
            head += f" ({_join(right)} {'is' if len(right) == 1 else 'are'} right)"
        raise ExerciseCheckError(f"backward: {head}:\n" + "\n".join(f"  - {line}" for line in _grouped(problems)))
    print("backward: all checks passed.")


def check_numerical_gradient(numerical_gradient):
    """Check your centered differences on f(x) = sum(c x^2 / 2 + b x) (notebook 02 §5)."""
    __tracebackhide__ = True
    if _not_yours("numerical_gradient", numerical_gradient):
        return
    x, c, b, indices, h = _quadratic_problem()

    def f():  # a quadratic: centered differences are exact for it
        return float(np.sum(0.5 * c * x ** 2 + b * x))

    x0 = x.copy()
    got = _run("numerical_gradient", numerical_gradient, f, x, indices, h,
               hint="indices are flat positions in x, whatever its shape: the cell's flat view of x is where to "
                    "nudge an entry.")
    if not np.allclose(x, x0, rtol=0, atol=1e-12):
        raise ExerciseCheckError(f"numerical_gradient: {_says('numerical_gradient', 'not_restored')}")
    if got is not None and np.issubdtype(np.asarray(got).dtype, np.integer):
        raise ExerciseCheckError(f"numerical_gradient: {_says('numerical_gradient', 'integers')}")
    _fail_if("numerical_gradient", _mismatch(
        "the result", got, _answer("numerical_gradient"), "compare each entry with the centered difference that §5 "
        "defines: f() with the entry nudged up by h, and nudged down by h.",
        **_known("numerical_gradient", "the result"), tol=1e-8))
    print("numerical_gradient: all checks passed.")


def check_sgd_step(sgd_step):
    """Check that your sgd_step(params, grads, lr) moves every parameter against its gradient, in place
    (notebook 03 §3)."""
    __tracebackhide__ = True
    if _not_yours("sgd_step", sgd_step):
        return
    params, grads, lr = _sgd_problem()
    before, arrays = _copy(params), dict(params)  # arrays: the original array objects
    result = _run("sgd_step", sgd_step, params, {k: g.copy() for k, g in grads.items()}, lr)
    rebound = [k for k in arrays if params.get(k) is not arrays[k]]
    unchanged = [k for k in arrays if np.array_equal(arrays[k], before[k])]
    if rebound:
        raise ExerciseCheckError(f"sgd_step: {_says('sgd_step', 'rebinds', names=', '.join(rebound))}")
    if len(unchanged) == len(arrays):
        which = "returns_copies" if isinstance(result, dict) else "unchanged"
        raise ExerciseCheckError(f"sgd_step: {_says('sgd_step', which)}")
    if unchanged:
        raise ExerciseCheckError(f"sgd_step: {_says('sgd_step', 'some_unchanged', names=_join(unchanged))}")
    _fail_if("sgd_step", *_grouped({k: _mismatch(
        k, arrays[k], _answer(f"sgd_step.{k}"), "each parameter moves by lr times its gradient, against it.",
        **_known("sgd_step", k, k=k)) for k in arrays}))
    print("sgd_step: all checks passed.")


class _SpyLesson:
    """A lesson for checking a training loop alone: each function records its call and hands back a token.

    Sample i of the problem is X[i] = [i] with target y[i] = 1000 + i, so every call shows which samples
    it got; forward, mse_loss, backward and sgd_step are not the exercise's network (they reveal nothing of
    it), and whatever is wrong in your other functions cannot fail this check.
    """

    def __init__(self):
        self.calls = []  # (function name, what it got)
        self.losses = []

    def forward(self, params, X):
        self.calls.append(("forward", np.asarray(X)[:, 0].astype(int)))
        return np.asarray(X)[:, 0] * params["w"][0], ("cache", len(self.calls))

    def mse_loss(self, y_hat, y):
        self.losses.append(1.0 + len(self.losses) + 0.25 * len(self.losses) ** 2)  # a distinct loss per batch
        self.calls.append(("mse_loss", (np.asarray(y) - 1000).astype(int)))
        return self.losses[-1], ("dy_hat", len(self.losses))

    def backward(self, params, cache, dy_hat):
        self.calls.append(("backward", (cache, dy_hat)))
        return {"w": np.array([0.5]), "token": ("grads", len(self.calls))}

    def sgd_step(self, params, grads, lr):
        self.calls.append(("sgd_step", (grads.get("token") if isinstance(grads, dict) else None, lr)))
        params["w"] -= lr * grads["w"]


def _sizes(n, batch_size):
    sizes = [min(batch_size, n - s) for s in range(0, n, batch_size)]
    return ", ".join(map(str, sizes[:-1])) + f" and {sizes[-1]}" if len(sizes) > 1 else str(sizes[0])


def _one_epoch(train_epoch, n, batch_size, seed):
    """Run your train_epoch for one epoch with a spy lesson: (the spy, the returned loss, the final w)."""
    spy, params = _SpyLesson(), {"w": np.array([1.0])}
    X, y = np.arange(n, dtype=np.float64)[:, None], 1000.0 + np.arange(n)
    loss = _run("train_epoch", train_epoch, spy, params, X, y, SPY_LR, batch_size, np.random.default_rng(seed),
                hint="The check hands it a lesson of its own: every step goes through lesson.forward, "
                     "lesson.mse_loss, lesson.backward and lesson.sgd_step, never through other functions.")
    return spy, loss


def _epoch_problems(train_epoch, n, batch_size, seed):
    """What is wrong with one epoch of your train_epoch (a message), or None."""
    where = f"with N = {n} and batch_size = {batch_size}"
    spy, loss = _one_epoch(train_epoch, n, batch_size, seed)
    names = [name for name, _ in spy.calls]
    if not names:
        return _says("train_epoch", "no_calls")
    for name in ("forward", "mse_loss", "backward", "sgd_step"):
        if name not in names:
            return f"it never called lesson.{name}: each batch goes forward, through the loss, backward, then one step."
    batches = [got for name, got in spy.calls if name == "forward"]
    targets = [got for name, got in spy.calls if name == "mse_loss"]
    if names != ["forward", "mse_loss", "backward", "sgd_step"] * len(batches):
        return (f"its calls came in the order {', '.join(names[:8])}{', ...' if len(names) > 8 else ''}; each batch "
                f"needs forward, mse_loss, backward and sgd_step once each, in that order.")
    for k, (xs, ts) in enumerate(zip(batches, targets), 1):
        if not np.array_equal(xs, ts):
            return (f"batch {k} gave lesson.forward samples {xs.tolist()} but lesson.mse_loss the targets of samples "
                    f"{ts.tolist()}: the faces and the ages of a batch must be the same samples.")
    for k, (name, got) in enumerate(spy.calls):
        if name == "backward" and got != (("cache", k - 1), ("dy_hat", (k + 2) // 4)):
            return ("lesson.backward did not get the cache that this batch's forward returned and the gradient "
                    "that this batch's mse_loss returned.")
        if name == "sgd_step" and (got[0] != ("grads", k) or got[1] != SPY_LR):
            return ("lesson.sgd_step did not get this batch's gradients from lesson.backward" if got[0] != ("grads", k)
                    else f"lesson.sgd_step got the learning rate {got[1]!r}, not lr ({SPY_LR}).")
    seen = np.concatenate(batches)
    missed = sorted(set(range(n)) - set(seen.tolist()))
    if missed or len(seen) != n:
        sizes = ", ".join(str(len(b)) for b in batches)
        return (f"{where} one epoch should use every sample exactly once, in batches of {_sizes(n, batch_size)}; "
                f"yours had batches of {sizes}" + (f" and never used {len(missed)} sample(s)" if missed else "")
                + ". Look at where your loop starts and stops, and how each batch is sliced.")
    if [len(b) for b in batches] != [min(batch_size, n - s) for s in range(0, n, batch_size)]:
        return (f"{where} the batches should have {_sizes(n, batch_size)} samples; yours had "
                f"{', '.join(str(len(b)) for b in batches)}.")
    if n > 2 and np.array_equal(seen, np.arange(n)):
        return _says("train_epoch", "unshuffled")
    again, _ = _one_epoch(train_epoch, n, batch_size, seed)
    other, _ = _one_epoch(train_epoch, n, batch_size, seed + 100)
    order = lambda run: np.concatenate([got for name, got in run.calls if name == "forward"])  # noqa: E731
    if not np.array_equal(order(again), seen):
        return _says("train_epoch", "unseeded")
    if n > 2 and np.array_equal(order(other), seen):
        return _says("train_epoch", "fixed_seed")
    sizes = np.array([len(b) for b in batches])
    right = float(np.dot(spy.losses, sizes) / n)
    wrong = {float(np.mean(spy.losses)): f"the plain mean of the batch losses, but the batches have "
                                         f"{_sizes(n, batch_size)} samples: the mean is over the samples",
             float(np.sum(spy.losses)): "the sum of the batch losses, not their mean over the samples",
             spy.losses[-1]: "the last batch's loss, not the mean over the whole epoch"}
    try:
        loss = float(loss)
    except (TypeError, ValueError):
        return f"it returned {type(loss).__name__}, not the epoch's mean loss (one number)."
    if abs(loss - right) > 1e-9 * right:
        for value, what in wrong.items():
            if abs(loss - value) <= 1e-9 * abs(value) and abs(value - right) > 1e-9 * right:
                return f"the returned loss ({where}) is {what}."
        return f"the returned loss ({where}) is {loss:.6g}; the mean loss over the epoch's samples is {right:.6g}."
    return None


def check_train_epoch(train_epoch):
    """Check your train_epoch(lesson, params, X, y, lr, batch_size, rng) over epochs of several sizes
    (notebook 03 §4).

    It runs with a spy lesson whose functions record what they get, so only the loop is checked: which
    samples each batch holds, the order of the calls, the shuffle, and the returned mean loss.
    """
    __tracebackhide__ = True
    if _not_yours("train_epoch", train_epoch):
        return
    for n, batch_size, seed in EPOCH_CASES:
        problem = _epoch_problems(train_epoch, n, batch_size, seed)
        if problem:
            raise ExerciseCheckError(f"train_epoch: {problem}")
    print("train_epoch: all checks passed.")


def check_weight_image(weight_image):
    """Check that your weight_image(W1, j) returns row j of W1 as a 48x48 image (notebook 04 §2)."""
    __tracebackhide__ = True
    if _not_yours("weight_image", weight_image):
        return
    W1 = _weight_problem()  # fixed seed: same check every run
    n_hidden, W1_before = len(W1), W1.copy()
    for j in (3, 0):
        image = _run("weight_image", weight_image, W1, j,
                     hint=f"W1 has one row per hidden unit: W1[j] holds the 2304 weights of unit j, one per "
                          f"pixel (a column W1[:, j] has only {n_hidden} numbers, one per unit).")
        if not np.array_equal(W1, W1_before):
            raise ExerciseCheckError(f"weight_image: {_says('weight_image', 'changes_w1')}")
        _fail_if("weight_image", _mismatch(
            f"the image of unit {j}", image, _answer(f"weight_image{j}"), "the image holds unit j's 2304 weights "
            "as they are, laid out as 48 rows of 48 pixels in the order notebook 01 flattened them.",
            **_known("weight_image", "the image of unit {j}", j=j, next=(j + 1) % n_hidden,
                     previous=j - 1 if j else n_hidden - 1)))
    print("weight_image: all checks passed.")


def check_add_weight_decay(add_weight_decay):
    """Check that your add_weight_decay(grads, params, weight_decay) adds the penalty's gradient to the
    gradients of W1 and W2, and leaves the biases' gradients and the parameters alone (notebook 05 §2)."""
    __tracebackhide__ = True
    name = "add_weight_decay"
    if _not_yours(name, add_weight_decay):
        return
    params, grads, lam = _decay_problem()
    mine = _copy(params)
    result = _run(name, add_weight_decay, {k: g.copy() for k, g in grads.items()}, mine, lam)
    changed = [k for k in params if not np.array_equal(mine[k], params[k])]
    if changed:
        raise ExerciseCheckError(f"{name}: {_says(name, 'changes_params', names=_join(changed))}")
    if result is None:
        raise ExerciseCheckError(f"{name}: {_says(name, 'returns_none')}")
    if not isinstance(result, dict) or any(k not in result for k in grads):
        raise ExerciseCheckError(f"{name}: {_says(name, 'returns')}")
    _fail_if(name, *_grouped({k: _mismatch(
        k, result[k], _answer(f"{name}.{k}"),
        f"{k}'s gradient is backward's plus the gradient of the penalty lambda/2 ||{k}||^2." if k[0] == "W" else
        f"leave the gradient of {k} as backward computed it.", **_known(name, k[0], k=k)) for k in grads}))
    print(f"{name}: all checks passed.")


def check_momentum_step(momentum_step):
    """Check three steps of your momentum_step(params, grads, velocity, lr, momentum) against the update its
    docstring gives, from a velocity of zeros (notebook 05 §3)."""
    __tracebackhide__ = True
    name = "momentum_step"
    if _not_yours(name, momentum_step):
        return
    _, all_grads, lr, mu = _momentum_problem()
    for t, grads in enumerate(all_grads, 1):  # each step starts from the reference's state after the step before
        params = {k: np.array(_answer(f"momentum{t}.p_start.{k}")) for k in grads}
        velocity = {k: np.array(_answer(f"momentum{t}.v_start.{k}")) for k in grads}
        arrays, v_before = dict(params), _copy(velocity)  # arrays: the update must change them in place
        _run(name, momentum_step, params, {k: g.copy() for k, g in grads.items()}, velocity, lr, mu)
        at = f"{name} (step {t} of 3)"
        rebound = [k for k in grads if params.get(k) is not arrays[k]]
        if rebound:
            raise ExerciseCheckError(f"{at}: {_says(name, 'rebinds', names=_join(rebound))}")
        if any(k not in velocity for k in grads):
            raise ExerciseCheckError(f"{at}: {_says(name, 'lost_key')}")
        still = [k for k in grads if np.array_equal(velocity[k], v_before[k])]
        if still and len(still) < len(grads):
            raise ExerciseCheckError(f"{at}: {_says(name, 'some_still', names=_join(still))}")
        if still:
            raise ExerciseCheckError(f"{at}: {_says(name, 'not_kept')}")
        _fail_if(at, *("velocity: " + line for line in _grouped({k: _mismatch(
            k, velocity[k], _answer(f"momentum{t}.v.{k}"), "the velocity follows the update in the docstring.",
            **_known(name, "velocity", t=t, k=k)) for k in grads})))
        _fail_if(at, *("params: " + line for line in _grouped({k: _mismatch(
            k, params[k], _answer(f"momentum{t}.p.{k}"), "each parameter moves by this step's new velocity.",
            **_known(name, "params", t=t, k=k)) for k in grads})))
    print(f"{name}: all checks passed.")


def check_backward_to_input(backward_to_input):
    """Check your backward_to_input(params, cache, dy_hat) -> dX, the backward pass carried on to the
    faces, on 5 faces and 4 hidden units (notebook 06 §2)."""
    __tracebackhide__ = True
    name = "backward_to_input"
    if _not_yours(name, backward_to_input):
        return
    params, X, _ = _net_problem()  # 5 faces, 4 hidden units: dX (5, 2304) and dW1 (4, 2304) differ in shape
    # dy_hat is the loss gradient of backward's check: not all equal, so a dX that ignores it cannot pass
    Z, H, dy_hat = _answer("forward.Z"), _answer("forward.H"), _answer("backward.dy_hat")
    N, hidden = Z.shape
    dX = _run(name, backward_to_input, _copy(params), (X.copy(), Z.copy(), H.copy()), dy_hat.copy(),
              hint="dZ is (N, hidden) and W1 is (hidden, 2304); dX is (N, 2304), one row per face: which product "
                   "of the two has that shape?")
    _fail_if(name, _mismatch(
        "dX", dX, _answer(f"{name}.dX"), "dX has X's shape (N, 2304): from dy_hat through W2, the ReLU's slope and "
        "W1 (your backward's steps, then one more, to the pixels).", **_known(name, "dX", N=N, hidden=hidden)))
    print(f"{name}: all checks passed.")


# --- classroom machinery: vetting a lesson before it trains, and grading mode ---------------------------

# What fh.train vets before it trains: the network's pure functions. sgd_step and train_epoch may keep state of
# their own (a velocity, a counter) that a silent check would disturb; their checks run in notebook 03.
VETTED = ("forward", "mse_loss", "backward")
GRADING_ENV = "FACEAGE_GRADING"  # set to 1 by the course's nbgrader_config.py: autograding trains a tiny budget
GRADING_BUDGET = dict(epochs=1, faces=1000, data_train=2000, data_test=500)  # what a graded notebook trains on


def _failed_checks(lesson, verbose=True) -> dict:
    """{name: the start of its check's message} for each of the lesson's VETTED functions (forward, mse_loss and
    backward, under those names) that fails its own check, each check run silently; the
    module's own functions and the released reference are not checked. verbose prints one line per failure
    (fh.train, notebook 03 §6).
    """
    failed = {}
    for name in VETTED:  # only the exercise itself: a step or network a notebook builds (e.g. 05's momentum step, 07's
        fn = getattr(lesson, name, None)  # deep_forward) is no answer to this check, and may keep state of its own
        if getattr(fn, "__name__", None) != name or getattr(fn, "__module__", None) in (__name__, REFERENCE_MODULE):
            continue
        shown, sys.stdout = sys.stdout, io.StringIO()  # the check runs silently
        try:
            globals()[f"check_{name}"](fn)
        except ExerciseCheckError as e:
            failed[name] = " ".join(str(e).removeprefix(f"{name}: ").split("\n")[:2]).replace(":   - ", ": ")
        finally:
            sys.stdout = shown
    if verbose:
        for name, message in failed.items():
            print(f"Before training: your {name} ({_origin(getattr(lesson, name))}) fails its check: {message}")
    return failed


def _divergence_cause(failed) -> str | None:
    """What to blame when training diverges with a lesson whose loss or backward failed its check, else None."""
    guilty = [name for name in ("mse_loss", "backward", "forward") if name in (failed or {})]
    if guilty:
        one = len(guilty) == 1
        return (f"Your {_join(guilty)} failed {'its check' if one else 'their checks'} (see the line before "
                f"training): fix {'it' if one else 'them'} first; the learning rate is not the cause.")
    return None


def grading_faces(data):
    """data as loaded, or, when FACEAGE_GRADING=1 (autograding), every k-th face of it: GRADING_BUDGET's
    data_train training and data_test test faces (ridge fits, predictions and plots then take a second, not
    a minute); says so in the cell's output (works inside fh.load_data, notebook 01 §1).
    """
    if os.environ.get(GRADING_ENV) != "1":
        return data
    train = slice(None, None, max(1, len(data.Xtr) // GRADING_BUDGET["data_train"]))
    test = slice(None, None, max(1, len(data.Xte) // GRADING_BUDGET["data_test"]))
    rows = {"Xtr": train, "ytr": train, "Xte": test, "yte": test}
    small = {key: getattr(data, key)[rows[key]][:GRADING_BUDGET["data_" + ("train" if key[1:] == "tr" else "test")]]
             for key in rows}
    for key, meta in (("meta_tr", data.meta_tr), ("meta_te", data.meta_te)):
        small[key] = None if meta is None else {column: values[rows["X" + key[-2:]]][:len(small["X" + key[-2:]])]
                                                for column, values in meta.items()}
    print(f"grading mode ({GRADING_ENV}=1): {len(small['Xtr']):,} of the {len(data.Xtr):,} training faces and "
          f"{len(small['Xte']):,} of the {len(data.Xte):,} test faces; no points depend on results.")
    return FaceData(**small, path=data.path)


def grading_budget(epochs, X_train, y_train):
    """(epochs, X_train, y_train) as given, or, when FACEAGE_GRADING=1 (autograding), the tiny budget of
    GRADING_BUDGET: no points depend on training results, and a class must be graded in minutes. Says so
    in the cell's output (works inside fh.train, notebook 03 §6).
    """
    if os.environ.get(GRADING_ENV) != "1":
        return epochs, X_train, y_train
    n = min(len(X_train), GRADING_BUDGET["faces"])
    print(f"grading mode ({GRADING_ENV}=1): training {GRADING_BUDGET['epochs']} epoch on {n:,} of the "
          f"{len(X_train):,} faces; no points depend on training results.")
    return min(epochs, GRADING_BUDGET["epochs"]), X_train[:n], y_train[:n]


# --- checks of notebook 07: any depth (region of the notebook-07 helper) ---
# check_affine_backward, check_relu_backward and check_deep_backward (layers and the recursion, notebook 07
# §1 and §2), check_matmul and check_add (two operations of the small autodiff, §4). As above, the answers come
# from one function, _any_depth_answers(), which holds all of this region's reference code (the classroom
# edition reads them from check_answers.npz). The messages say what is wrong (which array, which shape, which
# factor) and where to look, never the line that fixes it.

DEEP_CASES = ((6, 1), (6, 5, 1), (6, 4, 4, 4, 1))  # layer sizes of deep_backward's check: 0, 1, 3 hidden layers
ADD_CASES = {"bias": ((5, 4), (4,)), "row": ((5, 4), (1, 4)), "first": ((4,), (3, 4))}  # shapes of a and b
_depth_answers = {}


def _affine_problem(square):
    """dY and the cache (X, W) of an affine layer Y = X W^T + b: 5 faces, 6 inputs, 3 outputs, or all 4."""
    n, n_in, n_out = (4, 4, 4) if square else (5, 6, 3)
    rng = np.random.default_rng(70 + square)
    return rng.standard_normal((n, n_out)), (rng.standard_normal((n, n_in)), rng.standard_normal((n_out, n_in)))


def _relu_problem():
    """dH and the cache Z of a ReLU layer; both take both signs, and Z[1, 2] is exactly 0 (the kink)."""
    rng = np.random.default_rng(72)
    dH, Z = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    Z[1, 2] = 0.0
    return dH, Z


def _deep_problem(sizes, n=5):
    """A float64 network of these layer sizes, the cache notebook 07's deep_forward keeps for n inputs, dy_hat."""
    rng = np.random.default_rng(73 + len(sizes))
    params = {}
    for l in range(1, len(sizes)):
        params[f"W{l}"] = rng.standard_normal((sizes[l], sizes[l - 1])) / np.sqrt(sizes[l - 1])
        params[f"b{l}"] = 0.3 * rng.standard_normal(sizes[l])
    H, cache = rng.standard_normal((n, sizes[0])), []
    for l in range(1, len(sizes)):  # cache[l - 1] = (layer l's affine cache (input, W), its relu cache Z or None)
        Z = H @ params[f"W{l}"].T + params[f"b{l}"]
        cache.append(((H, params[f"W{l}"]), Z if l < len(sizes) - 1 else None))
        H = np.maximum(Z, 0)
    return params, cache, rng.standard_normal(n)


def _matmul_problem(square):
    """a, b, the gradient G of a @ b and an earlier gradient P of a: (5, 3) @ (3, 4), or (4, 4) @ (4, 4)."""
    rng = np.random.default_rng(75 + square)
    (m, k), n = ((4, 4), 4) if square else ((5, 3), 4)
    return (rng.standard_normal((m, k)), rng.standard_normal((k, n)), rng.standard_normal((m, n)),
            rng.standard_normal((m, k)))


def _add_problem(case):
    """a, b (shapes ADD_CASES[case]), the gradient G of a + b and an earlier gradient P of a."""
    rng = np.random.default_rng(77 + list(ADD_CASES).index(case))
    shape_a, shape_b = ADD_CASES[case]
    G = rng.standard_normal(np.broadcast_shapes(shape_a, shape_b))
    return rng.standard_normal(shape_a), rng.standard_normal(shape_b), G, rng.standard_normal(shape_a)


def _any_depth_answers():
    """Every answer of notebook 07's checks, and the typical wrong ones, from reference code kept in here:
    {key: array} (tools/make_student.py adds them to check_answers.npz; the classroom module drops this)."""
    def unbroadcast(g, shape):  # sum g over the axes that broadcasting stretched to reach shape
        g = g.sum(axis=tuple(range(g.ndim - len(shape)))) if g.ndim > len(shape) else g
        return g.sum(axis=tuple(i for i, s in enumerate(shape) if s == 1 and g.shape[i] != 1), keepdims=True)

    def deep(cache, dy_hat, mask=True):
        grads, dZ = {}, dy_hat[:, None]
        for l in range(len(cache), 0, -1):
            H, W = cache[l - 1][0]
            grads[f"W{l}"], grads[f"b{l}"], dH = dZ.T @ H, dZ.sum(axis=0), dZ @ W
            if l > 1:
                dZ = dH * (cache[l - 2][1] > 0) if mask else dH
        return grads

    out = {}
    for square in (False, True):
        dY, (X, W) = _affine_problem(square)
        k = f"depth.affine{int(square)}"
        out.update({f"{k}.dX": dY @ W, f"{k}.dW": dY.T @ X, f"{k}.db": dY.sum(axis=0)})
        if square:  # wrong answers that only a square layer lets through without a shape error
            out.update({f"{k}.dX_W_transposed": dY @ W.T, f"{k}.dW_transposed": X.T @ dY,
                        f"{k}.db_other_axis": dY.sum(axis=1)})
    dH, Z = _relu_problem()
    out.update({"depth.relu.dZ": dH * (Z > 0), "depth.relu.no_mask": dH, "depth.relu.mask_of_dH": dH * (dH > 0),
                "depth.relu.relu_of_Z": np.maximum(Z, 0), "depth.relu.times_Z": dH * Z,
                "depth.relu.times_H": dH * np.maximum(Z, 0), "depth.relu.inverted": dH * (Z < 0),
                "depth.relu.mask_only": (Z > 0) * 1.0, "depth.relu.at_zero": dH * (Z >= 0)})
    for sizes in DEEP_CASES:
        _, cache, dy_hat = _deep_problem(sizes)
        for how, mask in (("", True), (".no_mask", False)):
            out.update({f"depth.deep{len(sizes)}.{k}{how}": g for k, g in deep(cache, dy_hat, mask).items()})
    for square in (False, True):
        A, B, G, P = _matmul_problem(square)
        k = f"depth.matmul{int(square)}"
        out.update({f"{k}.da": G @ B.T, f"{k}.db": A.T @ G, f"{k}.da_after_P": P + G @ B.T})
        if square:
            out.update({f"{k}.da_b_untransposed": G @ B, f"{k}.db_a_untransposed": A @ G,
                        f"{k}.da_swapped": A.T @ G, f"{k}.db_swapped": G @ B.T,
                        f"{k}.twice": G @ A.T + A.T @ G, f"{k}.twice_left": G @ A.T, f"{k}.twice_right": A.T @ G})
    for case, (shape_a, shape_b) in ADD_CASES.items():
        A, B, G, P = _add_problem(case)
        k = f"depth.add.{case}"
        out.update({f"{k}.da": unbroadcast(G, shape_a), f"{k}.db": unbroadcast(G, shape_b),
                    f"{k}.da_after_P": P + unbroadcast(G, shape_a), f"{k}.twice": 2 * unbroadcast(G, shape_a)})
    return out


def _depth_answer(key):
    """One answer of notebook 07's checks: from check_answers.npz in the classroom edition, else computed."""
    if not _depth_answers:
        if CHECK_ANSWERS_FILE.is_file():
            with np.load(CHECK_ANSWERS_FILE) as f:
                _depth_answers.update({k: f[k] for k in f.files if k.startswith("depth.")})
        else:
            _depth_answers.update(_any_depth_answers())
    return _depth_answers[key]


def _right_and_wrong(name, problems, tail=""):
    """Raise one ExerciseCheckError naming the wrong gradients, the right ones, and each problem once."""
    wrong = [k for k, p in problems.items() if p]
    if wrong:
        right = [k for k in problems if k not in wrong]
        head = f"{_join(wrong)} {'is' if len(wrong) == 1 else 'are'} wrong"
        if right:
            head += f" ({_join(right)} {'is' if len(right) == 1 else 'are'} right)"
        raise ExerciseCheckError(f"{name}: {head}:\n" + "\n".join(f"  - {line}" for line in _grouped(problems))
                                 + (f"\n{tail}" if tail else ""))


def check_affine_backward(affine_backward):
    """Check your affine_backward(dY, cache) -> (dX, dW, db) of the layer Y = X W^T + b, on a layer of 5 faces,
    6 inputs and 3 outputs and on a square one (notebook 07 §1)."""
    __tracebackhide__ = True
    name = "affine_backward"
    if _not_yours(name, affine_backward):
        return
    for square in (False, True):
        dY, (X, W) = _affine_problem(square)
        (n, n_in), n_out = X.shape, len(W)
        at = f"{name} (N = {n} faces, {n_in} inputs, {n_out} outputs)"
        out = _run(name, affine_backward, dY.copy(), (X.copy(), W.copy()),
                   hint=f"dY is (N, out) = {dY.shape}, X is (N, in) = {X.shape} and W is (out, in) = {W.shape}; "
                        f"each gradient has the shape of its array: let the shapes tell you where a transpose goes.")
        if not (isinstance(out, tuple) and len(out) == 3):
            raise ExerciseCheckError(f"{at}: it must return three gradients, (dX, dW, db), in that order.")
        k = f"depth.affine{int(square)}"
        order = "is the order of the returned gradients (dX, dW, db)?"
        scale = {-1: "minus the right values: a sign error (a backward returns the gradient itself; the minus of "
                     "gradient descent belongs in sgd_step).",
                 1 / n: f"{n} times too small (N = {n} faces): dY already carries the loss's 1/N, so nothing in "
                        f"this layer divides by N.",
                 n: f"{n} times too large (N = {n} faces): nothing in this layer multiplies by N."}
        square_mistakes = {
            "dX": [(f"{k}.dX_W_transposed", "it multiplies dY by W transposed. In a square layer that fits; with 6 "
                                            "inputs and 3 outputs only one way gives dX the shape (N, in) of X: "
                                            "look at how W enters your line for dX.")],
            "dW": [(f"{k}.dW_transposed", "it is the transpose of the right answer (a square layer hides that): W is "
                                          "(out, in), one row per output unit, and so is dW.")],
            "db": [(f"{k}.db_other_axis", "it is summed over the wrong axis: over each face's output units, but b "
                                          "is shared by the faces: one entry per output unit, collected over the "
                                          "faces.")]} if square else {}
        got = dict(zip(("dX", "dW", "db"), out))
        hints = {"dX": "dX is (N, in) like X: the gradient goes back from dY through W.",
                 "dW": "dW is (out, in) like W: every face adds its part.",
                 "db": "db is (out,) like b: every face adds its part."}
        shapes = {"dX": {(n_in, n): "it looks transposed: dX has X's shape, one row per face.",
                         W.shape: "that is W's shape: " + order,
                         (n, n_out): "that is dY's shape: the gradient has not gone back through W."},
                  "dW": {(n_in, n_out): "it looks transposed: dW has W's shape (out, in), one row per output unit.",
                         X.shape: "that is X's shape: " + order},
                  "db": {(n, n_out): "it is not summed over the faces: b is shared by every face, so its gradient "
                                     "collects them all, one entry per output unit.",
                         (n,): "it is summed over the wrong axis: over each face's outputs, not over the faces.",
                         (1, n_out): f"it is a row (1, {n_out}); b and its gradient are ({n_out},)."}}
        _right_and_wrong(at, {g: _mismatch(g, got[g], _depth_answer(f"{k}.{g}"), hints[g],
                                           mistakes=[(_depth_answer(key), text)
                                                     for key, text in square_mistakes.get(g, [])],
                                           shapes=shapes[g], factors=scale) for g in ("dX", "dW", "db")})
    print(f"{name}: all checks passed.")


def check_relu_backward(relu_backward):
    """Check your relu_backward(dH, cache) -> dZ, where the cache is the ReLU's input Z (notebook 07 §1)."""
    __tracebackhide__ = True
    name = "relu_backward"
    if _not_yours(name, relu_backward):
        return
    dH, Z = _relu_problem()
    Z_given = Z.copy()
    dZ = _run(name, relu_backward, dH.copy(), Z_given,
              hint=f"dH and the cache Z are both (N, units) = {Z.shape}, and so is dZ.")
    if not np.array_equal(Z_given, Z):
        raise ExerciseCheckError(f"{name}: it changed the cache Z in place; Z is the forward's record of which "
                                 f"units were on, and a backward only reads it.")
    _fail_if(name, _mismatch(
        "dZ", dZ, _depth_answer("depth.relu.dZ"),
        "dZ has dH's shape; the ReLU's slope is 1 where the unit was on (z > 0) and 0 where it was off.",
        mistakes=[(_depth_answer(f"depth.relu.{how}"), text) for how, text in (
            ("no_mask", "it equals dH: the ReLU mask is missing, so the gradient also flows back through units that "
                        "were off (z <= 0)."),
            ("mask_of_dH", "the mask is taken from the upstream gradient dH (its sign), but whether a unit was on is "
                           "decided by its input Z, the cache."),
            ("relu_of_Z", "it is relu(Z), the forward's output: the mask is applied to Z instead of to the upstream "
                          "gradient dH."),
            ("times_Z", "dH is multiplied by Z itself: the ReLU's slope is 0 or 1, not z."),
            ("times_H", "dH is multiplied by relu(Z): the ReLU's slope is 0 or 1, not h."),
            ("inverted", "the mask is inverted: the gradient flows through the units that were off and stops at "
                         "those that were on."),
            ("mask_only", "it is the mask alone: the upstream gradient dH is missing."),
            ("at_zero", "it passes the gradient where z = 0 exactly (Z[1, 2] = 0 here): as in notebook 02, the slope "
                        "at the kink counts as 0, so a unit with z = 0 is off."))],
        shapes={(Z.shape[1],): "it is summed over the faces: each face keeps its own row.",
                Z.shape[::-1]: "it looks transposed: dZ has Z's shape, one row per face."},
        factors={-1: "minus the right values: a sign error."}))
    print(f"{name}: all checks passed.")


def check_deep_backward(deep_backward):
    """Check your deep_backward(params, cache, dy_hat) -> grads on networks with no, one and three hidden layers,
    with the cache of deep_forward (notebook 07 §2). Without a hidden layer it is one affine_backward and nothing
    else, so a mistake there points at that layer (or at how dy_hat enters it), not at the recursion."""
    __tracebackhide__ = True
    name = "deep_backward"
    if _not_yours(name, deep_backward):
        return
    for sizes in DEEP_CASES:
        _check_one_depth(deep_backward, sizes)
    print(f"{name}: all checks passed.")


def _check_one_depth(deep_backward, sizes):
    """check_deep_backward on one network: which gradients are right, and the typical mistake behind the others."""
    __tracebackhide__ = True
    name, L = "deep_backward", len(sizes) - 1
    params, cache, dy_hat = _deep_problem(sizes)
    n = len(dy_hat)
    hidden = {0: "no hidden layer", 1: "1 hidden layer"}.get(L - 1, f"{L - 1} hidden layers")
    at = f"{name} (layer sizes {sizes}: {hidden}, N = {n})"
    cache_copy = [((H.copy(), W.copy()), None if Z is None else Z.copy()) for (H, W), Z in cache]
    grads = _run(name, deep_backward, _copy(params), cache_copy, dy_hat.copy(),
                 hint=f"(Network with layer sizes {sizes}.) cache[l - 1] holds layer l's (affine cache, relu cache), "
                      f"and the output layer's relu cache "
                      f"is None (it has no ReLU). dy_hat is (N,) = ({n},), but the output layer's Z was "
                      f"(N, 1): each layer's backward takes an upstream gradient shaped like that layer's output.")
    if not isinstance(grads, dict):
        raise ExerciseCheckError(f"{at}: it must return a dict of gradients named like params (W1, b1, ..., W{L}, "
                                 f"b{L}), not a {type(grads).__name__}.")
    missing = [k for k in params if k not in grads]
    if missing:
        raise ExerciseCheckError(
            f"{at}: no gradient for {_join(missing)} (it returned {_join(map(repr, grads)) if grads else 'none'}). "
            f"Every layer l has its own W{{l}} and b{{l}}, named as in params, whatever the number of layers: "
            f"look at the range of your loop and at the names you store.")
    k = f"depth.deep{len(sizes)}"
    scale = {-1: "minus the right values: a sign error (the minus of gradient descent belongs in sgd_step).",
             1 / n: f"{n} times too small (N = {n}): dy_hat already carries the loss's 1/N; nothing divides by N "
                    f"again.",
             n: f"{n} times too large (N = {n}): nothing multiplies by N."}
    no_mask = ("the ReLU mask is missing between the layers: on the way down the gradient also flows back through "
               "units that were off (z <= 0). Look at what happens to the gradient between two layers.")
    problems = {p: _mismatch(p, grads[p], _depth_answer(f"{k}.{p}"), f"d{p} has the shape of {p}, {params[p].shape}.",
                             mistakes=[(_depth_answer(f"{k}.{p}.no_mask"), no_mask)] if int(p[1:]) < L else [],
                             shapes={params[p].shape[::-1]: f"it looks transposed: d{p} has {p}'s shape."}
                             if p[0] == "W" else {}, factors=scale) for p in params}
    if L == 1:  # no hidden layer: the whole backward is one affine_backward
        _right_and_wrong(at, problems, "With no hidden layer, deep_backward is one call of affine_backward and no "
                                       "ReLU, so look there first: does fh.check_affine_backward(affine_backward) "
                                       "pass, and is dy_hat handed to it shaped like the output layer's Z, (N, 1)?")
    top = [f"W{L}", f"b{L}"]
    named = any(p and no_mask in p for p in problems.values())  # a known mistake says where to look by itself
    tail = ("The output layer's gradients are right and some below it are not: the recursion goes wrong on the way "
            "down; look at what your loop hands from one layer to the next."
            if not named and not any(problems[p] for p in top) else "")
    _right_and_wrong(at, problems, tail)


class _Probe:
    """A stand-in for notebook 07's Value, handed to your operation by check_matmul and check_add."""

    def __init__(self, data, parents=()):
        self.data, self.parents, self.grad, self._backward = np.array(data, dtype=float), parents, None, lambda: None

    def accumulate(self, g):
        self.grad = g if self.grad is None else self.grad + g


def _op_backward(name, op, inputs, G, hint):
    """Run your operation on probe values, give its output the gradient G, and run its backward closure."""
    __tracebackhide__ = True
    out = _run(name, op, *inputs, hint=hint)
    if not (hasattr(out, "data") and callable(getattr(out, "_backward", None))):
        raise ExerciseCheckError(f"{name}: it must return a Value (with .data and ._backward), not a "
                                 f"{type(out).__name__}: end with `return out`.")
    out.grad = G.copy()
    _run(name, out._backward, hint=hint)
    return out


def _received(what, probe, expected, hint, **how):
    """None when probe.grad equals expected; else a message (nothing received, or the _mismatch one)."""
    if probe.grad is None:
        return (f"{what} is None after the backward: nothing was handed to this input; the closure must send a "
                f"gradient to every input it has.")
    return _mismatch(what, probe.grad, expected, hint, **how)


def check_matmul(matmul):
    """Check the backward closure of your matmul(a, b): the gradients it hands to a and b, for a (5, 3) @ (3, 4)
    product, a square one, an input that already holds a gradient, and matmul(a, a) (notebook 07 §4)."""
    __tracebackhide__ = True
    name = "matmul"
    if _not_yours(name, matmul):
        return
    overwritten = ("a already held a gradient (from another place it is used) and now holds only this product's "
                   "part: the earlier gradient was overwritten, not added to. Look at how the gradient is handed to a.")
    for square in (False, True):
        A, B, G, P = _matmul_problem(square)
        k = f"depth.matmul{int(square)}"
        hint = (f"out.grad is {G.shape} like out, a is {A.shape} and b is {B.shape}: each input's gradient has that "
                f"input's shape, and the shapes tell you where a transpose goes. Hand each one over with "
                f".accumulate(...), which also works while .grad is still None.")
        a, b = _Probe(A), _Probe(B)
        _op_backward(name, matmul, (a, b), G, hint)
        mistakes = {"a": [("da_b_untransposed", "out.grad is multiplied by b as it is stored: a transpose of b is "
                                                "missing (a square product hides the shape error)."),
                          ("da_swapped", "it is the gradient that belongs to b: a's and b's are swapped.")],
                    "b": [("db_a_untransposed", "a multiplies out.grad as it is stored: a transpose of a is missing "
                                                "(a square product hides the shape error)."),
                          ("db_swapped", "it is the gradient that belongs to a: a's and b's are swapped.")]}
        problems = {f"{v}.grad": _received(f"{v}.grad", probe, _depth_answer(f"{k}.d{v}"), hint,
                                           mistakes=[(_depth_answer(f"{k}.{key}"), text) for key, text in mistakes[v]]
                                           if square else [],
                                           shapes={probe.data.shape[::-1]: f"it looks transposed: {v}'s gradient has "
                                                                           f"{v}'s shape {probe.data.shape}.",
                                                   G.shape: "that is out's shape: the gradient has not gone through "
                                                            "the other input of the product."},
                                           factors={-1: "minus the right values: a sign error."})
                    for v, probe in (("a", a), ("b", b))}
        _right_and_wrong(f"{name} ({A.shape} @ {B.shape})", problems)
        if not square:
            a, b = _Probe(A), _Probe(B)
            a.grad = P.copy()  # as if a were used once already, elsewhere in the graph
            _op_backward(name, matmul, (a, b), G, hint)
            _fail_if(f"{name} (a already holds a gradient)", _received(
                "a.grad", a, _depth_answer(f"{k}.da_after_P"), hint,
                mistakes=[(_depth_answer(f"{k}.da"), overwritten)]))
    a = _Probe(A)
    _op_backward(name, matmul, (a, a), G, hint)
    _fail_if(f"{name} (matmul(a, a))", _received(
        "a.grad", a, _depth_answer(f"{k}.twice"), hint,
        mistakes=[(_depth_answer(f"{k}.twice_{side}"), f"matmul(a, a) uses a twice, and a holds only the gradient of "
                                                       f"its use as the {side} input: the second hand-over overwrote "
                                                       f"the first. Look at how the gradients are handed over.")
                  for side in ("left", "right")]))
    print(f"{name}: all checks passed.")


def _add_hint(shape_out, shape_a, shape_b):
    return (f"out.grad is {shape_out} like out; a is {shape_a} and b is {shape_b}. Each input's gradient has that "
            f"input's shape: where broadcasting stretched an input, its gradient comes back to that input's shape. "
            f"Hand each one over with .accumulate(...).")


def check_add(add):
    """Check the backward closure of your add(a, b) with broadcasting: (5, 4) + (4,), (5, 4) + (1, 4), (4,) + (3, 4),
    an input that already holds a gradient, and add(a, a) (notebook 07 §4)."""
    __tracebackhide__ = True
    name = "add"
    if _not_yours(name, add):
        return
    for case, (shape_a, shape_b) in ADD_CASES.items():
        A, B, G, P = _add_problem(case)
        k = f"depth.add.{case}"
        hint = _add_hint(G.shape, shape_a, shape_b)
        a, b = _Probe(A), _Probe(B)
        _op_backward(name, add, (a, b), G, hint)
        problems = {}
        for v, probe, shape in (("a", a, shape_a), ("b", b, shape_b)):
            rows = G.size // int(np.prod(shape))  # how many times broadcasting repeated this input
            shapes = {G.shape: f"it still has out's shape: {v} {shape} was broadcast (stretched) over out {G.shape}, "
                               f"so its gradient must come back to {v}'s own shape. Look at what happens to out.grad "
                               f"on its way to {v}."} if G.shape != shape else {}
            if len(shape) == 1 and len(G.shape) == 2:
                shapes.update({(G.shape[0],): f"it is summed over the wrong axis: {v} {shape} lines up with out's "
                                              f"columns, so it was stretched over the rows.",
                               (1, shape[0]): f"it keeps a leading axis of length 1: {v} is {shape}."})
            if len(shape) == 2 and shape[0] == 1:
                shapes[shape[1:]] = f"it lost {v}'s leading axis of length 1: {v} is {shape}, and so is its gradient."
            factors = {-1: "minus the right values: a sign error."}
            if rows > 1:
                factors[1 / rows] = (f"{rows} times too small: averaged over the {rows} rows {v} was added to; each "
                                     f"row's use of {v} counts in full.")
            problems[f"{v}.grad"] = _received(f"{v}.grad", probe, _depth_answer(f"{k}.d{v}"), hint,
                                              shapes=shapes, factors=factors)
        _right_and_wrong(f"{name} ({shape_a} + {shape_b})", problems)
    A, B, G, P = _add_problem("bias")
    hint = _add_hint(G.shape, A.shape, B.shape)
    a, b = _Probe(A), _Probe(B)
    a.grad = P.copy()  # as if a were used once already, elsewhere in the graph
    _op_backward(name, add, (a, b), G, hint)
    _fail_if(f"{name} (a already holds a gradient)", _received(
        "a.grad", a, _depth_answer("depth.add.bias.da_after_P"), hint,
        mistakes=[(_depth_answer("depth.add.bias.da"), "a already held a gradient (from another place it is used) and "
                                                       "now holds only this sum's part: the earlier gradient was "
                                                       "overwritten, not added to. Look at how the gradient is "
                                                       "handed to a.")]))
    a = _Probe(A)
    _op_backward(name, add, (a, a), G, hint)
    _fail_if(f"{name} (add(a, a))", _received(
        "a.grad", a, _depth_answer("depth.add.bias.twice"), hint,
        factors={0.5: "half the right values: add(a, a) uses a twice, and a holds the gradient of one use only: the "
                      "second hand-over overwrote the first."}))
    print(f"{name}: all checks passed.")

# --- end of notebook 07 checks ---


# =============================================================================
# Command line
# =============================================================================
ABSURD_AGE = 1000  # years: a model that predicts beyond +-this is broken, not merely poor (evaluate refuses it)


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP during a command line run, raised where the program is, so that it cleans up and
    reports as after a Ctrl-C."""


def _raise_interrupted(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def _check_out_folder(out: Path):
    """Refuse, before any work, an --out where weight_images/ and model.npz cannot be written."""
    images, model = out / "weight_images", out / "model.npz"
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} {'is a file' if out.is_file() else _path_kind(out)}; give a folder for "
                        f"weight_images/ and model.npz, e.g. --out results")
    if (images.exists() or images.is_symlink()) and not images.is_dir():
        raise DataError(f"--out {out}: {images} {'is a file' if images.is_file() else _path_kind(images)}, where "
                        f"the weight images go (a folder): move it away or choose another --out.")
    if (model.exists() or model.is_symlink()) and not model.is_file():
        raise DataError(f"--out {out}: {model} {_path_kind(model)}, where the trained model goes (a file): "
                        f"move it away or choose another --out.")
    nearest = next(p for p in (out.absolute(), *out.absolute().parents) if p.exists())  # out, or where it is made
    for folder in (nearest, images):
        if folder.is_dir():
            try:
                with tempfile.NamedTemporaryFile(prefix=".faceage-probe.", suffix=".tmp", dir=folder):
                    pass
            except OSError as e:
                raise DataError(f"--out {out}: cannot write in {folder} ({e.strerror}); choose another --out or "
                                f"fix that folder's permissions.") from None


def _save_run(model: Model, out: Path, written: list):
    """Write weight_images/ and model.npz as one set: both are made in a staging folder inside out (a
    full disk or a Ctrl-C there leaves the old set as it was), then moved in with signals held off,
    undoing the moves if one fails, so that out holds the new set or the old one, never a mix."""
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".faceage-run.", dir=out))
    try:
        new = save_weight_images(model.params["W1"], staging / "weight_images")
        save_model(model, staging / "model.npz")
        moves = [(staging / "model.npz", out / "model.npz")] + [(p, out / "weight_images" / p.name) for p in new]
        names = {p.name for p in new}
        stale = [p for p in (out / "weight_images").glob("weight_image_*.png") if p.name not in names]
        (out / "weight_images").mkdir(exist_ok=True)
        (staging / "old").mkdir()
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
        done = []  # (moved to, moved from), to undo in reverse
        try:
            for i, target in enumerate([dst for _, dst in moves] + stale):
                if target.exists():
                    done.append((staging / "old" / f"{i}", target))
                    os.replace(target, done[-1][0])
            for src, dst in moves:
                os.replace(src, dst)
                done.append((src, dst))
            written += [out / "weight_images", out / "model.npz"]
        except OSError:
            for moved_to, moved_from in reversed(done):
                os.replace(moved_to, moved_from)
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)  # a signal that came meanwhile is raised now
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return new


def _cmd_train(args, written):
    t0 = time.perf_counter()
    out = Path(args.out)
    _check_out_folder(out)  # now, not after an hour of training
    data = load_data(args.data)
    try:  # the split's sizes, checked on indices before the faces are copied
        train_val_split(np.arange(len(data.ytr)), data.ytr, args.val_fraction, args.seed)
    except DataError as e:
        raise DataError(f"--val-fraction {args.val_fraction:g} on the {len(data.ytr)} training faces of {data.path}: "
                        f"{e}") from None
    print(data.summary())
    baseline_rows = baselines(data)  # ridge needs the whole training split: fit it before training
    X_train, y_train, X_val, y_val = train_val_split(data.Xtr, data.ytr, args.val_fraction, args.seed)
    X_test, y_test = data.Xte, data.yte
    del data  # the split holds the training faces now; dropping the original keeps the peak near 0.5 GB
    lesson = REFERENCE if args.code == "module" else lesson_functions(before="04", folder=HERE / "notebooks")
    print(f"training on {len(X_train)} faces, validating on {len(X_val)}: hidden={args.hidden} "
          f"lr={args.lr:g} (x{args.lr_decay:g} per epoch) batch={args.batch_size} epochs={args.epochs} "
          f"mirror={args.mirror} seed={args.seed} dtype={args.dtype}; code: {lesson.who}")
    model = train(X_train, y_train, X_val, y_val, lesson=lesson, n_hidden=args.hidden, lr=args.lr,
                  lr_decay=args.lr_decay, mirror=args.mirror, batch_size=args.batch_size, epochs=args.epochs,
                  seed=args.seed, dtype=args.dtype)
    rows = {f"network ({split})": regression_metrics(y, predict(model, X))
            for split, X, y in (("train", X_train, y_train), ("validation", X_val, y_val),
                                ("test", X_test, y_test))}
    rows.update({f"baseline: {k} (test)": v for k, v in baseline_rows.items()})
    print(format_metrics_table(rows))
    paths = _save_run(model, out, written)
    print(f"wrote {len(paths) - 1} weight images and weight_grid.png to {out / 'weight_images'}, "
          f"and {out / 'model.npz'} ({time.perf_counter() - t0:.0f} s)")


def _cmd_evaluate(args, written):
    model = load_model(args.model)
    if args.code == "notebooks":  # the classroom edition: your forward predicts
        model.lesson = lesson_functions(before="04", folder=HERE / "notebooks")
    data = load_data(args.data)
    with np.errstate(all="ignore"):  # a broken model's overflow is reported below, not as warnings
        y_pred = predict(model, data.Xte)
    bad = ~(np.abs(y_pred) <= ABSURD_AGE)  # NaN and inf included
    if bad.any():
        n_nan = np.count_nonzero(~np.isfinite(y_pred))
        what = (f"{n_nan} non-finite ages (NaN or inf)" if n_nan
                else f"ages as far out as {y_pred[np.argmax(np.abs(y_pred))]:.3g} years")
        raise DataError(f"{args.model} predicts {what} for the {len(y_pred)} test faces of {data.path} "
                        f"({np.count_nonzero(bad)} beyond +-{ABSURD_AGE} years): the model is broken (its weights "
                        f"or its standardisation x_std, y_std), not merely poor. Train it again: "
                        f"python faceage_helpers.py")
    m = regression_metrics(data.yte, y_pred)
    print(f"{args.model} on the test split of {data.path}: RMSE {m['rmse']:.2f} years, MAE {m['mae']:.2f} years")


# Each command's options and their defaults. The parser itself has no defaults (SUPPRESS), so the
# parsed arguments hold exactly what was typed, before or after the command's name; main() refuses an
# option the command does not use and fills in the rest from here.
COMMAND_OPTIONS = {
    "train": dict(data=None, hidden=DEFAULTS["n_hidden"], lr=DEFAULTS["lr"], lr_decay=DEFAULTS["lr_decay"],
                  batch_size=DEFAULTS["batch_size"], epochs=DEFAULTS["epochs"], mirror=DEFAULTS["mirror"],
                  seed=DEFAULTS["seed"], val_fraction=DEFAULTS["val_fraction"], dtype="float32", out=".",
                  code="module"),
    "evaluate": dict(model="model.npz", data=None, code="module"),
}


def _whole(minimum, example, maximum=None):
    """An argparse type: a whole number >= minimum (and <= maximum) (also tools/build_data.py)."""
    def parse(text):
        if not re.fullmatch(r"[+-]?[0-9]+", text.strip()) or not minimum <= int(text) <= (maximum or int(text)):
            bounds = f"of at least {minimum}" if maximum is None else f"from {minimum} to {maximum:,}"
            raise argparse.ArgumentTypeError(f"expected a whole number {bounds} (e.g. {example}), not {text!r}")
        return int(text)
    return parse


def _number(low, high=None, high_ok=False, example=None):
    """An argparse type: a finite number above low (and below high, or up to it when high_ok) (also
    tools/build_data.py)."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (np.isfinite(value) and value > low and (high is None or value < high or (high_ok and value == high))):
            between = (f"greater than {low:g}" if high is None else
                       f"greater than {low:g} and at most {high:g}" if high_ok else f"between {low:g} and {high:g}")
            raise argparse.ArgumentTypeError(f"expected a number {between} (e.g. {example}), not {text!r}")
        return value
    return parse


def _add_training_options(p):
    d = COMMAND_OPTIONS["train"]
    p.add_argument("--data", help="path to data.zip (default: $FACEAGE_DATA, then ./data.zip)")
    p.add_argument("--hidden", type=_whole(1, d["hidden"], maximum=MAX_HIDDEN),
                   help=f"hidden units, at most {MAX_HIDDEN:,} (default {d['hidden']})")
    p.add_argument("--lr", type=_number(0, example=d["lr"]), help=f"SGD learning rate (default {d['lr']})")
    p.add_argument("--lr-decay", type=_number(0, 1, high_ok=True, example=d["lr_decay"]),
                   help=f"learning rate multiplier per epoch (default {d['lr_decay']})")
    p.add_argument("--batch-size", type=_whole(1, d["batch_size"]), help=f"minibatch size (default {d['batch_size']})")
    p.add_argument("--epochs", type=_whole(1, d["epochs"]), help=f"passes over the data (default {d['epochs']})")
    p.add_argument("--no-mirror", dest="mirror", action="store_false",
                   help="don't add left-right mirrored faces to the training data")
    p.add_argument("--seed", type=_whole(0, d["seed"]),
                   help=f"seed for split, init and shuffling (default {d['seed']})")
    p.add_argument("--val-fraction", type=_number(0, 1, example=d["val_fraction"]),
                   help=f"share of training faces held out for validation (default {d['val_fraction']})")
    p.add_argument("--dtype", choices=["float32", "float64"],
                   help="training precision (default float32; float64 is slower)")
    p.add_argument("--out", help="folder for weight_images/ and model.npz (default: current folder)")
    p.add_argument("--code", choices=["module", "notebooks"],
                   help="whose functions train: this module's reference (default) or yours, from the #@save "
                        "cells of the saved notebooks 02 and 03 in notebooks/ (the classroom edition needs this)")


def make_parser():
    """The command line's options and its commands train (the default) and evaluate."""
    parser = argparse.ArgumentParser(
        prog="python faceage_helpers.py", argument_default=argparse.SUPPRESS,
        description="FaceAge: train the age-estimating network on data.zip (the default), or evaluate a "
                    "saved model. Options may come before or after the command. A teacher builds data.zip "
                    "from UTKFace with python tools/build_data.py.")
    _add_training_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="{train,evaluate}")
    _add_training_options(sub.add_parser("train", argument_default=argparse.SUPPRESS,
                                         help="train with the options above (the default when no command is given)"))
    ev = sub.add_parser("evaluate", argument_default=argparse.SUPPRESS, help="test-split RMSE and MAE of a saved model")
    ev.add_argument("--model", help="model file from training (default model.npz)")
    ev.add_argument("--data", help="data.zip in the course layout (default: $FACEAGE_DATA, then ./data.zip)")
    ev.add_argument("--code", choices=["module", "notebooks"],
                    help="whose forward predicts: this module's (default) or yours, from the saved notebooks")
    return parser


def _os_error_message(e: OSError) -> str:
    """An OSError as one line naming the file and what to do (a full disk, a read-only folder, ...)."""
    fix = {errno.ENOSPC: "the disk is full: free some space, or choose another --out, and run again",
           errno.EDQUOT: "the disk quota is used up: free some space and run again",
           errno.EROFS: "choose another --out, or fix the folder's permissions",
           errno.EACCES: "choose another --out, or fix the folder's permissions",
           errno.EPERM: "choose another --out, or fix the folder's permissions"}.get(e.errno)
    return (f"{e.filename}: " if e.filename else "") + f"{e.strerror or e}" + (f" ({fix})" if fix else "")


def _run_command(command) -> int:
    """Run command(written) as every FaceAge command runs (also tools/build_data.py): SIGTERM and SIGHUP act
    as a Ctrl-C (cleanup runs, the message says what happened; exit 128 + the signal's number), and each
    failure is one `error:` line naming the file and the fix (exit 1). written: the outputs finished so far."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")  # a non-UTF-8 file name prints, not crashes
    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT
                                          else _raise_interrupted)
    except ValueError:  # not in the main thread: the signals stay as they were
        pass
    written = []
    try:
        command(written)
    except (DataError, TrainingDiverged, LessonError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except NotImplementedError:  # the classroom edition's module: its exercise functions have no bodies
        print("error: this is the classroom edition, whose faceage_helpers.py has no answers: run the command "
              "with your own functions, from the #@save cells of your saved notebooks 02 and 03, by adding "
              "--code notebooks (e.g. python faceage_helpers.py --code notebooks)", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {_os_error_message(e)}", file=sys.stderr)
        return 1
    except MemoryError:
        print("error: not enough memory for this run: close other programs, or use a smaller --hidden or "
              "data set.", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        name = str(e) if isinstance(e, Interrupted) else "SIGINT"
        how = "Ctrl-C" if name == "SIGINT" else f"{name}: the process was told to stop"
        kept = (f"It finished writing {', '.join(map(str, written))}; every other file" if written
                else "Nothing was written: every file")
        print(f"error: interrupted ({how}). {kept} is as it was before this run (files are replaced whole or "
              f"not at all, and its temporary files were removed). Run the command again to finish.", file=sys.stderr)
        return 128 + signal.Signals[name].value
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _command_word(argv):
    """The first word of argv that is neither an option nor an option's value: the command, if any."""
    words = iter(argv)
    for word in words:
        if not word.startswith("-"):
            return word
        if word not in ("--no-mirror", "-h", "--help") and "=" not in word:
            next(words, None)
    return None


def main(argv=None):
    """Run the command line (python faceage_helpers.py --help); returns the exit status."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    if _command_word(argv) == "build-data":
        print("error: build-data is now a teacher's tool of its own: python tools/build_data.py SOURCE "
              "--out data.zip [--test-fraction F] [--seed S]", file=sys.stderr)
        return 2
    parser = make_parser()
    args = parser.parse_args(argv)
    command = getattr(args, "command", None) or "train"
    for name in vars(args):
        if name not in COMMAND_OPTIONS[command] and name != "command":
            flag = "--no-mirror" if name == "mirror" else "--" + name.replace("_", "-")
            owners = " and ".join(c for c, options in COMMAND_OPTIONS.items() if name in options)
            parser.error(f"{flag} is an option of {owners}, not of {command}: drop it.")
    for name, default in COMMAND_OPTIONS[command].items():
        vars(args).setdefault(name, default)
    run = {"train": _cmd_train, "evaluate": _cmd_evaluate}[command]
    return _run_command(lambda written: run(args, written))


if __name__ == "__main__":
    sys.exit(main())
