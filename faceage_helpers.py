"""FaceAge helpers: estimate a person's age from a 48x48 grayscale face with a
two-layer neural network written by hand in NumPy.

The network, in the notation used throughout the notebooks:

    x in R^2304          a flattened face
    z  = W1 x + b1       W1 is (hidden, 2304): row j reshapes to a 48x48 image
    h  = relu(z)
    y^ = W2 h + b2       W2 is (1, hidden): one scalar age

Loss: mean squared error. Training: minibatch SGD with hand-written backprop.

Sections, in the order the course meets them: data, model, gradient checking,
training (the lesson loop, then train), evaluation, plots, weight browsers,
exercise checks, command line. Run `python faceage_helpers.py --help`.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IMAGE_SHAPE = (48, 48)
N_PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]  # 2304
ARRAY_NAMES = ("Xtr", "ytr", "Xte", "yte")
# The settings of the default run (notebook 03 §6), used by train(), the command line and the README.
DEFAULTS = dict(n_hidden=64, lr=0.005, lr_decay=0.93, batch_size=64, epochs=30, mirror=True, seed=0,
                val_fraction=0.15)
# Age bands for every per-age table and plot: lower edges in years, the last band open-ended.
AGE_BANDS = (0, 10, 20, 30, 45, 60)
AGE_BAND_NAMES = tuple([f"{a}-{b - 1}" for a, b in zip(AGE_BANDS, AGE_BANDS[1:])] + [f"{AGE_BANDS[-1]}+"])
GENDER_NAMES = ("male", "female")  # meta CSV codes 0, 1 (-1: unknown)
RACE_NAMES = ("White", "Black", "Asian", "Indian", "Others")  # meta CSV codes 0-4 (-1: unknown)
HERE = Path(__file__).resolve().parent
_this_module = sys.modules[__name__]  # the reference lesson: its forward, backward, ... train by default


# =============================================================================
# Data
# =============================================================================

class DataError(ValueError):
    """Raised for a missing, corrupt or malformed data set, with a message that says how to fix it."""


@dataclass
class FaceData:
    """The course data set: faces as float32 rows in [0, 1], ages in years, and optional metadata."""
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
    """Locate data.zip: the argument, then $FACEAGE_DATA, then data.zip beside this module."""
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
        if how == "the path you gave":
            break  # an explicit path that does not exist is an error, not a hint to look elsewhere
    raise DataError(
        "No data.zip found. Looked in:\n" + "\n".join(tried) + "\n"
        "Fix: put the course's data.zip at the repository root, or set FACEAGE_DATA=/path/to/data.zip, "
        "or build one from the public UTKFace 'Aligned & Cropped' faces with\n"
        "  python faceage_helpers.py build-data UTKFace/ --out data.zip")


def as_face_rows(X, name="X") -> np.ndarray:
    """Check faces and return them as float32 rows of 2304 pixels in [0, 1].

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
    """Check a vector of n ages and return it as float64."""
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


def _read_meta(zf: zipfile.ZipFile, member: str, n: int, path: Path) -> dict:
    """Read a meta CSV (age, gender, race, source) into a dict of arrays."""
    rows = list(csv.DictReader(io.TextIOWrapper(zf.open(member), encoding="utf-8")))
    if len(rows) != n:
        raise DataError(f"{path}: {member} has {len(rows)} rows but there are {n} faces.")
    meta = {}
    for column in (rows[0].keys() if rows else ()):
        values = [r[column] for r in rows]
        try:
            meta[column] = np.array(values, dtype=np.int64)
        except ValueError:
            meta[column] = np.array(values)
    return meta


def load_data(path=None) -> FaceData:
    """Load data.zip in the course layout (age_regression_{Xtr,ytr,Xte,yte}.npy, optional meta CSVs).

    Faces come back as float32 rows of 2304 pixels in [0, 1]; ages as float64 years.
    """
    path = find_data(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{path} is not a readable zip file ({e}). The download may be incomplete: "
                        f"fetch data.zip again, or rebuild it with `python faceage_helpers.py build-data`.") from None
    with zf:
        names = set(zf.namelist())
        arrays = {}
        for key in ARRAY_NAMES:
            member = f"age_regression_{key}.npy"
            if member not in names:
                raise DataError(f"{path} has no {member}. A course data.zip holds "
                                f"{', '.join(f'age_regression_{k}.npy' for k in ARRAY_NAMES)}; "
                                f"this one holds: {', '.join(sorted(names)) or 'nothing'}.")
            try:
                arrays[key] = np.load(io.BytesIO(zf.read(member)), allow_pickle=False)
            except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
                raise DataError(f"{path}: {member} is not a readable .npy array ({e}).") from None
        Xtr = as_face_rows(arrays["Xtr"], f"{path.name}:age_regression_Xtr.npy")
        Xte = as_face_rows(arrays["Xte"], f"{path.name}:age_regression_Xte.npy")
        ytr = as_ages(arrays["ytr"], len(Xtr), f"{path.name}:age_regression_ytr.npy")
        yte = as_ages(arrays["yte"], len(Xte), f"{path.name}:age_regression_yte.npy")
        meta_tr = _read_meta(zf, "meta_tr.csv", len(Xtr), path) if "meta_tr.csv" in names else None
        meta_te = _read_meta(zf, "meta_te.csv", len(Xte), path) if "meta_te.csv" in names else None
    return FaceData(Xtr, ytr, Xte, yte, meta_tr, meta_te, path)


def train_val_split(X, y, val_fraction=DEFAULTS["val_fraction"], seed=DEFAULTS["seed"]):
    """Split training data into (X_train, y_train, X_val, y_val) with a seeded shuffle.

    Choose settings on the validation part; keep the test split for the final report.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}.")
    n = len(X)
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    val, tr = order[:n_val], order[n_val:]
    return X[tr], y[tr], X[val], y[val]


def _parse_utkface_name(name: str):
    """UTKFace file names read age_gender_race_date.jpg; return (age, gender, race) or None."""
    parts = Path(name).name.split("_")
    try:
        age = int(parts[0])
    except (ValueError, IndexError):
        return None
    fields = []
    for part in parts[1:3]:
        fields.append(int(part) if part.isdigit() else -1)
    fields += [-1] * (2 - len(fields))
    return age, fields[0], fields[1]


def _iter_utkface_images(source: Path):
    """Yield (file name, image bytes) for every .jpg in a UTKFace folder or .tar.gz archive."""
    if source.is_dir():
        for p in sorted(source.rglob("*.jpg")):
            yield p.name, p.read_bytes()
    elif tarfile.is_tarfile(source):
        with tarfile.open(source) as tf:
            for member in sorted(tf.getmembers(), key=lambda m: m.name):
                if member.isfile() and member.name.endswith(".jpg"):
                    yield Path(member.name).name, tf.extractfile(member).read()
    else:
        raise DataError(f"{source} is neither a folder nor a .tar.gz archive of UTKFace images.")


_DATA_README = """UTKFace at 48x48 grayscale, for age regression (built by faceage_helpers.py build-data)

Arrays (NumPy .npy): age_regression_Xtr.npy / Xte.npy uint8 (N, 48, 48); ytr / yte float64 ages.
meta_tr.csv, meta_te.csv: age, gender (0 male, 1 female, -1 unknown),
race (0 White, 1 Black, 2 Asian, 3 Indian, 4 Others, -1 unknown), source file name.

Source: UTKFace (Zhang, Song and Qi, CVPR 2017). Each image converted to grayscale and resized to
48x48 (Lanczos); exact duplicates merged, duplicates whose ages disagree dropped; seeded split.
Licence: non-commercial research only; the images' copyright belongs to their owners.
Never commit this file or anything made from it.
"""


def build_data_zip(source, out="data.zip", test_fraction=0.19, seed=0) -> Path:
    """Build a course-layout data.zip from a UTKFace 'Aligned & Cropped' folder or .tar.gz.

    Age, gender and race come from the file names; images become 48x48 grayscale (Lanczos).
    """
    from PIL import Image  # Pillow comes with matplotlib; imported here to keep start-up fast

    source, out = Path(source), Path(out)
    if not source.exists():
        raise DataError(f"{source} does not exist. Download UTKFace's 'Aligned & Cropped Faces' "
                        f"(UTKFace.tar.gz) and pass the archive or its unpacked folder.")
    by_hash = {}  # image hash -> [pixels, age, gender, race, source] ; None once ages disagree
    skipped = []
    for name, raw in _iter_utkface_images(source):
        labels = _parse_utkface_name(name)
        if labels is None:
            skipped.append(name)
            continue
        try:
            with Image.open(io.BytesIO(raw)) as im:
                face = np.asarray(im.convert("L").resize(IMAGE_SHAPE[::-1], Image.LANCZOS), dtype=np.uint8)
        except OSError:
            skipped.append(name)
            continue
        key = hashlib.sha1(face.tobytes()).hexdigest()
        if key in by_hash:
            if by_hash[key] is not None and by_hash[key][1] != labels[0]:
                by_hash[key] = None  # same face, two ages: trust neither
            continue
        by_hash[key] = [face, *labels, name]
    records = [r for r in by_hash.values() if r is not None]
    if len(records) < 2:
        raise DataError(f"{source}: found {len(records)} usable UTKFace images (file names like "
                        f"'25_0_1_20170116174525125.jpg.chip.jpg'); need at least 2.")
    order = np.random.default_rng(seed).permutation(len(records))
    n_test = max(1, int(round(len(records) * test_fraction)))
    splits = {"te": order[:n_test], "tr": order[n_test:]}
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for split, idx in splits.items():
            X = np.stack([records[i][0] for i in idx])
            y = np.array([records[i][1] for i in idx], dtype=np.float64)
            for key, arr in ((f"X{split}", X), (f"y{split}", y)):
                buf = io.BytesIO()
                np.save(buf, arr)
                zf.writestr(f"age_regression_{key}.npy", buf.getvalue())
            lines = ["age,gender,race,source"] + [",".join(str(v) for v in records[i][1:]) for i in idx]
            zf.writestr(f"meta_{split}.csv", "\n".join(lines) + "\n")
        zf.writestr("README.txt", _DATA_README)
    print(f"wrote {out}: {len(splits['tr'])} train and {len(splits['te'])} test faces "
          f"({len(skipped)} files skipped, {len(by_hash) - len(records)} conflicting duplicates dropped)")
    return out


# =============================================================================
# Model: z = W1 x + b1, h = relu(z), y^ = W2 h + b2, loss = mean squared error
# =============================================================================
# Batch form: X is (N, 2304), one face per row, so Z = X W1^T + b1 is (N, hidden).

def init_params(n_hidden=DEFAULTS["n_hidden"], n_in=N_PIXELS, seed=DEFAULTS["seed"], dtype=np.float32, w1_gain=0.1) -> dict:
    """Random weights scaled for ReLU (He: std sqrt(2/fan_in)), zero biases.

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
    return np.maximum(z, 0)


def forward(params, X):
    """Predict y^ (N,) for faces X (N, 2304); also return the cache backward needs."""
    W1, b1, W2, b2 = params["W1"], params["b1"], params["W2"], params["b2"]
    Z = X @ W1.T + b1            # (N, hidden)
    H = relu(Z)                  # (N, hidden)
    y_hat = H @ W2[0] + b2[0]    # (N,)
    return y_hat, (X, Z, H)


def mse_loss(y_hat, y):
    """Mean squared error L = mean((y^ - y)^2) and its gradient dL/dy^ = 2 (y^ - y) / N."""
    diff = y_hat - y
    return float(np.mean(diff ** 2)), (2.0 / len(y)) * diff


def backward(params, cache, dy_hat):
    """Gradients of the loss with the same names and shapes as params, from dL/dy^ (N,)."""
    X, Z, H = cache
    W2 = params["W2"]
    dW2 = dy_hat[None, :] @ H            # (1, hidden)  = sum_n dy^_n h_n
    db2 = dy_hat.sum(keepdims=True)      # (1,)
    dH = dy_hat[:, None] * W2            # (N, hidden)  = dy^ W2
    dZ = dH * (Z > 0)                    # (N, hidden)  ReLU passes gradient where z > 0
    dW1 = dZ.T @ X                       # (hidden, 2304)
    db1 = dZ.sum(axis=0)                 # (hidden,)
    return {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2}


def weight_image(W1, j):
    """Hidden unit j's 2304 input weights, row j of W1, as the 48x48 image they multiply (notebook 04 §2)."""
    return W1[j].reshape(IMAGE_SHAPE)


# =============================================================================
# Gradient checking
# =============================================================================

class GradientCheckError(AssertionError):
    """Raised when backward disagrees with centered differences; says where and by how much."""


@dataclass
class GradCheck:
    """One parameter's result: the worst relative error and where it happened."""
    name: str
    rel_error: float
    worst_index: tuple
    analytic: float
    numeric: float
    n_checked: int
    size: int


def rel_error(a, b):
    """Relative error max|a - b| / max(1e-8, max(|a| + |b|)) of two arrays.

    Measured against the largest entry, so an entry that happens to be tiny (where float64
    roundoff in the centered difference is as big as the entry itself) cannot fake a failure.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(1e-8, float(np.max(np.abs(a) + np.abs(b)))))


def numerical_gradient(f, x, indices, h=1e-5):
    """Centered difference (f(x + h) - f(x - h)) / 2h of scalar f() at the given flat indices of x.

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


def gradient_check(params, X, y, n_entries=None, seed=0, h=1e-5, forward_fn=None, backward_fn=None):
    """Compare backward with centered differences in float64, parameter by parameter.

    n_entries: check this many random entries per parameter (100 entries of a hidden-64 network
    take ~0.06 s). None checks every entry at 2 forward passes each: ~1 s for hidden 10, but
    ~50 s for hidden 64 and ~100 s for hidden 100 (2 * hidden * 2304 passes for W1 alone).
    Returns {name: GradCheck}.
    """
    forward_fn = forward_fn or forward
    backward_fn = backward_fn or backward
    p = {k: np.array(v, dtype=np.float64) for k, v in params.items()}
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    y_hat, cache = forward_fn(p, X)
    _, dy_hat = mse_loss(y_hat, y)
    grads = backward_fn(p, cache, dy_hat)

    def loss():
        return mse_loss(forward_fn(p, X)[0], y)[0]

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
        numeric = numerical_gradient(loss, value, idx, h)
        analytic = g.reshape(-1)[idx]
        worst = int(np.argmax(np.abs(analytic - numeric)))
        results[name] = GradCheck(name, rel_error(analytic, numeric), np.unravel_index(idx[worst], value.shape),
                                  float(analytic[worst]), float(numeric[worst]), len(idx), value.size)
    return results


def report_gradient_check(results, tol=1e-7, raise_on_failure=False) -> bool:
    """Print each parameter's relative error beside what it should be; True when all pass."""
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
# Training
# =============================================================================

class TrainingDiverged(FloatingPointError):
    """Raised when the loss becomes non-finite or explodes: the learning rate is too large."""


@dataclass
class Model:
    """A trained network plus the standardisation it expects, so predict() works in years."""
    params: dict
    x_mean: np.ndarray
    x_std: np.ndarray
    y_mean: float
    y_std: float
    history: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    lesson: object = None  # whose forward predicts: the functions that trained it (None: this module's)

    def __post_init__(self):
        self.lesson = self.lesson or _this_module



def sgd_step(params, grads, lr):
    """Vanilla SGD, in place: p <- p - lr * dL/dp for every parameter (notebook 03 §3)."""
    for name, p in params.items():
        p -= lr * grads[name]


def train_epoch(params, X, y, lr, batch_size, rng):
    """One epoch of minibatch SGD over (X, y), shuffled with rng; returns the mean loss (notebook 03 §4).

    Every face is visited once; the last batch may be shorter, so each batch's loss is weighted
    by its size. This is the loop that trains every network in FaceAge.
    """
    N = len(X)
    order = rng.permutation(N)  # a new order every epoch
    total_loss = 0.0
    for start in range(0, N, batch_size):
        batch = order[start:start + batch_size]
        y_hat, cache = forward(params, X[batch])
        loss, dy_hat = mse_loss(y_hat, y[batch])
        grads = backward(params, cache, dy_hat)
        sgd_step(params, grads, lr)
        total_loss += loss * len(batch)
    return total_loss / N


def _check_loss(loss, epoch, lr, start_loss):
    """Stop with advice when the loss is non-finite or has grown a thousandfold."""
    if not np.isfinite(loss) or loss > 1e3 * max(start_loss, 1.0):
        raise TrainingDiverged(
            f"Training diverged in epoch {epoch}: the loss became {loss:.3g} (it started at "
            f"{start_loss:.3g}). The learning rate {lr:g} is too large; try {lr / 10:g}.")


def mirror_faces(X):
    """Flip face rows left-right: column c of each 48x48 image becomes column 47 - c (notebook 03 §6)."""
    return X.reshape(-1, *IMAGE_SHAPE)[:, :, ::-1].reshape(len(X), N_PIXELS)


def _mean_std(X, chunk=4096):
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


def train(X_train, y_train, X_val=None, y_val=None, n_hidden=DEFAULTS["n_hidden"], lr=DEFAULTS["lr"],
          lr_decay=DEFAULTS["lr_decay"], batch_size=DEFAULTS["batch_size"], epochs=DEFAULTS["epochs"],
          mirror=DEFAULTS["mirror"], seed=DEFAULTS["seed"], dtype=np.float32, snapshot_every=None,
          verbose=True, lesson=None) -> Model:
    """Train the network with minibatch SGD and return a Model that predicts in years (notebook 03 §6).

    Inputs are standardised per pixel and targets scaled with training statistics; the loss
    in history is in those scaled units (1.0 = predicting the mean age). The learning rate of
    epoch e is lr * lr_decay**(e - 1): big steps early, small steps to settle. mirror=True also
    trains on every face flipped left-right (a mirrored face has the same age: twice the data for
    free). snapshot_every=k keeps a copy of W1 every k epochs (epoch 0 included) for the weight browser.
    lesson: whose forward, mse_loss, backward, sgd_step and train_epoch train (and later predict):
    this module's by default; fh.lesson_functions() hands in the notebooks' own.
    """
    lesson = lesson or _this_module
    dtype = np.dtype(dtype)
    X_train = as_face_rows(X_train, "X_train")
    y_train = as_ages(y_train, len(X_train), "y_train")
    if mirror:
        Xs = np.concatenate([X_train, mirror_faces(X_train)]).astype(dtype, copy=False)
        y_train = np.concatenate([y_train, y_train])
    else:
        Xs = X_train.astype(dtype)  # a copy: it is standardised in place below
    x_mean, x_std = standardize_fit(Xs)
    Xs -= x_mean  # in place: the standardised faces are the only whole-set copy training keeps
    Xs /= x_std
    y_mean, y_std = float(y_train.mean()), float(y_train.std()) or 1.0
    ys = ((y_train - y_mean) / y_std).astype(dtype)
    model = Model(init_params(n_hidden, seed=seed, dtype=dtype), x_mean, x_std, y_mean, y_std,
                  settings=dict(n_hidden=n_hidden, lr=lr, lr_decay=lr_decay, batch_size=batch_size, epochs=epochs,
                                mirror=mirror, seed=seed, dtype=dtype.name), lesson=lesson)
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
    for epoch in range(1, epochs + 1):
        epoch_lr = lr * lr_decay ** (epoch - 1)
        with np.errstate(over="ignore", invalid="ignore"):  # a diverging run is reported by _check_loss
            train_loss = lesson.train_epoch(model.params, Xs, ys, epoch_lr, batch_size, rng)
        _check_loss(train_loss, epoch, epoch_lr, start_loss)
        history["epoch"].append(epoch)
        history["train_loss"].append(train_loss)
        val_rmse = None
        if has_val:
            val_pred = predict(model, X_val)
            val_mse = float(np.mean((val_pred - y_val) ** 2))
            val_rmse = val_mse ** 0.5
            history["val_loss"].append(val_mse / y_std ** 2)
            history["val_rmse"].append(val_rmse)
        if snapshot_every and epoch % snapshot_every == 0:
            history["W1_epochs"].append(epoch)
            history["W1_snapshots"].append(model.params["W1"].copy())
        if live:
            print("\r" + _progress(epoch, epochs, train_loss, val_rmse), end="", flush=True)
        elif verbose:
            print(_progress(epoch, epochs, train_loss, val_rmse))
    if live:
        print()
    model.history = history
    return model


# Whose code trains: the exercises of notebooks 02 and 03 define these functions (the classroom edition
# ships the exercises without answers, so there the student's own code is what trains).
LESSON_FUNCTIONS = {"forward": "02", "mse_loss": "02", "backward": "02", "sgd_step": "03", "train_epoch": "03"}


def lesson_functions(folder=None, verbose=True):
    """Your own forward, mse_loss, backward (notebook 02) and sgd_step, train_epoch (notebook 03), for
    fh.train(..., lesson=...) (notebook 03 §5): read from the saved notebooks, so save them first.

    From each notebook, the code cells that define one of these functions are run (their imports
    and defs only) in a fresh namespace holding np and fh. folder: where the notebooks are (default:
    the current folder if it holds them, else notebooks/ beside this module).
    """
    import ast
    import types
    folders = [Path(folder)] if folder is not None else [Path.cwd(), HERE / "notebooks", HERE]
    namespace = {"np": np, "fh": _this_module}
    found = {}
    for number in sorted(set(LESSON_FUNCTIONS.values())):
        paths = [p for f in folders for p in sorted(f.glob(f"{number}_*.ipynb"))]
        if not paths:
            raise FileNotFoundError(f"notebook {number} (e.g. {number}_....ipynb) is not in "
                                    f"{' or '.join(map(str, folders))}: lesson_functions reads your functions from it.")
        cells = json.loads(paths[0].read_text(encoding="utf-8"))["cells"]
        for cell in cells:
            if cell["cell_type"] != "code":
                continue
            try:
                tree = ast.parse("".join(cell["source"]))
            except SyntaxError:
                continue  # IPython magics or a cell being edited: it defines none of the functions
            defs = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
            if not defs & {name for name, nb in LESSON_FUNCTIONS.items() if nb == number}:
                continue
            keep = [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.Import, ast.ImportFrom))]
            exec(compile(ast.Module(keep, type_ignores=[]), str(paths[0]), "exec"), namespace)
            found.update(dict.fromkeys(defs & set(LESSON_FUNCTIONS), paths[0].name))
    missing = [name for name in LESSON_FUNCTIONS if name not in found]
    if missing:
        raise NameError(f"no `def {missing[0]}` found in notebook {LESSON_FUNCTIONS[missing[0]]}: write the "
                        f"exercise there, save the notebook, and run this cell again.")
    lesson = types.SimpleNamespace(**{name: namespace[name] for name in LESSON_FUNCTIONS})
    if verbose:
        print("Training runs your own code: " + "; ".join(
            f"{', '.join(n for n in LESSON_FUNCTIONS if found[n] == nb)} from {nb}" for nb in dict.fromkeys(found.values())))
    return lesson


def _forward_in_chunks(model, X, batch_size=4096):
    """The model's forward on faces X standardised as in training, in chunks to bound memory.

    Yields (rows, y_hat, H) per chunk: predict keeps y_hat, hidden_activations keeps H.
    """
    X = as_face_rows(X)
    dtype = model.params["W1"].dtype
    for start in range(0, len(X), batch_size):
        rows = slice(start, start + batch_size)
        Xs = ((X[rows] - model.x_mean) / model.x_std).astype(dtype, copy=False)
        y_hat, (_, _, H) = model.lesson.forward(model.params, Xs)
        yield rows, y_hat, H


def predict(model: Model, X):
    """Predicted ages in years for faces X (uint8 or [0, 1] floats, (N, 48, 48) or (N, 2304)) (notebook 03 §9)."""
    out = np.empty(len(X))
    for rows, y_hat, _ in _forward_in_chunks(model, X):
        out[rows] = y_hat
    return out * model.y_std + model.y_mean


def save_model(model: Model, path):
    """Save a trained model (weights, standardisation, history, settings) as one .npz file."""
    h = model.history
    np.savez(path, **model.params, x_mean=model.x_mean, x_std=model.x_std,
             y_mean=model.y_mean, y_std=model.y_std,
             train_loss=np.array(h.get("train_loss", [])), val_loss=np.array(h.get("val_loss", [])),
             val_rmse=np.array(h.get("val_rmse", [])), settings=json.dumps(model.settings))


def load_model(path) -> Model:
    """Load a model written by save_model."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"No model file at {path}. Train one first: python faceage_helpers.py "
                        f"(it writes model.npz).")
    try:
        with np.load(path, allow_pickle=False) as f:
            params = {k: f[k] for k in ("W1", "b1", "W2", "b2")}
            model = Model(params, f["x_mean"], f["x_std"], float(f["y_mean"]), float(f["y_std"]),
                          settings=json.loads(str(f["settings"])))
            n = len(f["train_loss"])
            model.history = {"epoch": list(range(1, n + 1)), "train_loss": list(f["train_loss"]),
                             "val_loss": list(f["val_loss"]), "val_rmse": list(f["val_rmse"])}
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as e:
        raise DataError(f"{path} is not a FaceAge model file ({e}). Save models with save_model().") from None
    return model


# =============================================================================
# Evaluation
# =============================================================================

def regression_metrics(y_true, y_pred) -> dict:
    """MSE (years^2), RMSE and MAE (years)."""
    err = np.asarray(y_pred, dtype=np.float64) - np.asarray(y_true, dtype=np.float64)
    mse = float(np.mean(err ** 2))
    return {"mse": mse, "rmse": mse ** 0.5, "mae": float(np.mean(np.abs(err)))}


def fit_ridge(X, y, lam=100.0, chunk=2048):
    """Ridge regression in closed form, w = (Xc^T Xc + lam I)^-1 Xc^T yc on centred data; returns predict(X) (notebook 01 §5).

    Xc^T Xc is summed one float64 chunk of faces at a time: no float64 copy of the whole set.
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
    """Test metrics of the two models every network must beat: the training mean and ridge regression.

    return_predictions=True also returns their test predictions {name: ages}, so a caller that
    wants to plot them need not fit ridge (a few seconds) a second time.
    """
    preds = {"mean": np.full(len(data.yte), data.ytr.mean()),
             f"ridge (lambda={lam:g})": fit_ridge(data.Xtr, data.ytr, lam)(data.Xte)}
    rows = {name: regression_metrics(data.yte, p) for name, p in preds.items()}
    return (rows, preds) if return_predictions else rows


def format_metrics_table(rows: dict) -> str:
    """A fixed-format table of {name: metrics} for printing."""
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
    """Symmetric colour limits so zero sits at the centre of a diverging colour map."""
    m = float(np.max(np.abs(w))) or 1.0
    return -m, m


def show_faces(X, ages, titles=None, ncols=8, title="Faces and their ages", size=1.4):
    """A grid of faces (grayscale, true aspect) titled with their ages; returns the figure."""
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
    """Training and validation loss per epoch (scaled MSE: 1.0 = predicting the mean age)."""
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
    """Write weight_image_0.png ... weight_image_{n-1}.png and weight_grid.png to folder."""
    plt = _plt()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for j in range(min(n, len(W1))):
        w = np.kron(weight_image(W1, j), np.ones((scale, scale)))  # upscale, crisp pixels
        lo, hi = weight_limits(w)
        path = folder / f"weight_image_{j}.png"
        plt.imsave(path, w, cmap="RdBu_r", vmin=lo, vmax=hi)
        paths.append(path)
    fig = plot_weight_grid(W1, n=n)
    fig.savefig(folder / "weight_grid.png", dpi=100)
    plt.close(fig)
    return paths + [folder / "weight_grid.png"]


# =============================================================================
# Weight browsers: the interactive widgets of notebook 04
# =============================================================================
# Each browser is a VBox(IntSlider, HTML caption, Output holding one PNG). Everything slow
# (activations, rankings, colour limits, the figure itself) is done once when the browser is built;
# a slider move only swaps new pictures and numbers into that figure and its PNG into the Output.

BROWSER_DPI = 80  # small PNGs: a redraw stays well under a second, and projects fine


def hidden_activations(model, X):
    """Hidden activations h = relu(W1 x + b1), shape (N, hidden), of faces X standardised as in training (notebook 04 §3)."""
    H = np.empty((len(X), len(model.params["W1"])), dtype=model.params["W1"].dtype)
    for rows, _, H_rows in _forward_in_chunks(model, X):
        H[rows] = H_rows
    return H


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
    its mean activation per age band, on one scale for all units."""
    X = as_face_rows(X_faces, "X_faces")
    ages = as_ages(ages, len(X), "ages")
    if not 1 <= top_k <= len(X):
        raise ValueError(f"top_k must be between 1 and the number of faces ({len(X)}), got {top_k}.")
    H = hidden_activations(model, X)
    band = age_band(ages)
    mean_h = np.stack([H[band == b].mean(axis=0) if np.any(band == b) else np.zeros(H.shape[1])
                       for b in range(len(AGE_BANDS))], axis=1)  # (hidden, bands)
    return dict(X=X, ages=ages, top=np.argsort(-H, axis=0, kind="stable")[:top_k].T,  # (hidden, top_k)
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
        return f"output weight W2 = {st['W2'][j]:+.3f}, pushes the predicted age {_pushes(st['W2'][j], negligible)}; {faces}"

    return draw, describe


def _unit_index(value, n_hidden, name="unit"):
    if not 0 <= int(value) < n_hidden:
        raise ValueError(f"{name} must be between 0 and {n_hidden - 1} (the network has {n_hidden} hidden units), got {value}.")
    return int(value)


def unit_browser(model, X_faces, ages, top_k=8, unit=0):
    """A slider over hidden units: each unit's weight image, output weight W2[0, j] and most exciting faces.

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
    """Like unit_browser, but the slider runs over units sorted by output weight W2, largest first.

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
    """A slider over the W1 snapshots of training: watch the chosen units' features form.

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


# =============================================================================
# Exercise checks: run right after each exercise in the notebooks
# =============================================================================
# check_forward(forward) and its siblings run your function on small, seeded float64 inputs and
# compare it with the reference implementation in this module. They print one line when it
# agrees; otherwise they raise ExerciseCheckError saying what is wrong and how to fix it.
# (__tracebackhide__ = True: IPython and pytest then show the message, not the checks' own code.)

class ExerciseCheckError(AssertionError):
    """An exercise check failed; the message names the likely mistake and how to fix it."""


CHECK_TOL = 1e-6  # rel_error below which your array counts as equal to the reference
_ref = _this_module  # check_x(x) parameters shadow the reference x


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
    return (f"{what} is wrong (relative error {rel_error(got, expected):.1e} against the reference, "
            f"should be < {tol:.0e}): {hint}")


def _fail_if(name, *problems):
    """Raise one ExerciseCheckError listing the problems found (None means fine)."""
    problems = [p for p in problems if p]
    if problems:
        raise ExerciseCheckError(f"{name}: " + "\n".join(problems))


def _join(names):
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


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


def _net_problem(n=5, n_hidden=4, seed=0):
    """A small float64 network at the real face size, a batch X and targets y; z takes both signs."""
    rng = np.random.default_rng(seed)  # fixed seed: the same check, with the same verdict, every run
    params = {"W1": rng.standard_normal((n_hidden, N_PIXELS)) / np.sqrt(N_PIXELS),
              "b1": 0.5 * rng.standard_normal(n_hidden),
              "W2": rng.standard_normal((1, n_hidden)), "b2": rng.standard_normal(1)}
    return params, rng.standard_normal((n, N_PIXELS)), rng.standard_normal(n)


def check_forward(forward):
    """Check your forward(params, X) -> (y_hat, (X, Z, H)) against the reference on 5 faces."""
    __tracebackhide__ = True
    params, X, _ = _net_problem()
    W1, b1, W2, b2 = params["W1"], params["b1"], params["W2"], params["b2"]
    y_ref, (_, Z_ref, H_ref) = _ref.forward(params, X)
    N, hidden = Z_ref.shape
    out = _run("forward", forward, _copy(params), X.copy())
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], (tuple, list)) and len(out[1]) == 3):
        raise ExerciseCheckError("forward: it must return (y_hat, cache) with cache = (X, Z, H), the "
                                 "values backward needs: end with `return y_hat, (X, Z, H)`.")
    y_hat, (X_out, Z, H) = out
    _fail_if("forward", _mismatch("the X in the cache", X_out, X, "the cache is (X, Z, H), in that order."))
    _fail_if("forward", _mismatch(
        "Z", Z, Z_ref, "Z = X @ W1.T + b1 (one row per face, one column per hidden unit).",
        mistakes=[(X @ W1.T, "b1 is missing: Z = X @ W1.T + b1."),
                  (X @ W1.T - b1, "b1 is subtracted: Z = X @ W1.T + b1.")],
        shapes={(hidden, N): "it looks transposed (hidden units in rows): X @ W1.T + b1 puts faces in rows."}))
    _fail_if("forward", _mismatch(
        "H", H, H_ref, "H = relu(Z) = np.maximum(Z, 0).",
        mistakes=[(Z_ref, "it equals Z: the ReLU is missing: H = np.maximum(Z, 0)."),
                  (Z_ref > 0, "it is the mask Z > 0; the ReLU keeps the values: H = np.maximum(Z, 0)."),
                  (np.minimum(Z_ref, 0), "it keeps the negative values; ReLU keeps the positive ones: "
                                         "H = np.maximum(Z, 0).")]))
    _fail_if("forward", _mismatch(
        "y_hat", y_hat, y_ref, "y_hat = H @ W2[0] + b2[0] (one age per face).",
        mistakes=[(y_ref - b2[0], "b2 is missing: y_hat = H @ W2[0] + b2[0]."),
                  (Z_ref @ W2[0] + b2[0], "it uses Z; the output layer reads H, after the ReLU: "
                                          "y_hat = H @ W2[0] + b2[0].")],
        shapes={(N, 1): "H @ W2.T is (N, 1); one number per face is H @ W2[0] + b2[0] (or .ravel()).",
                (1, N): "W2 @ H.T is (1, N); one number per face is H @ W2[0] + b2[0]."}))
    print("forward: all checks passed.")


def check_backward(backward):
    """Check each gradient of your backward(params, cache, dy_hat) against the reference's."""
    __tracebackhide__ = True
    params, X, y = _net_problem()
    y_hat, cache = _ref.forward(params, X)
    _, dy_hat = mse_loss(y_hat, y)
    ref = _ref.backward(params, cache, dy_hat)
    grads = _run("backward", backward, _copy(params), tuple(a.copy() for a in cache), dy_hat.copy())
    if not isinstance(grads, dict):
        raise ExerciseCheckError(f"backward: it must return a dict of gradients named like the parameters, "
                                 f"{{'W1': dW1, 'b1': db1, 'W2': dW2, 'b2': db2}}, not a {type(grads).__name__}.")
    missing = [k for k in ref if k not in grads]
    if missing:
        raise ExerciseCheckError(f"backward: no gradient for {', '.join(missing)} (the dict has keys "
                                 f"{', '.join(map(repr, grads)) or 'none'}). Name each gradient like its "
                                 f"parameter: {{'W1': dW1, 'b1': db1, 'W2': dW2, 'b2': db2}}.")
    _, Z, H = cache
    N, hidden = Z.shape
    dH = dy_hat[:, None] * params["W2"]
    scale = {-1: "minus the right values: a sign error. backward returns the gradient itself; "
                 "the minus of gradient descent belongs in sgd_step.",
             1 / N: f"{N} times too small (N = {N} faces): dy_hat already holds the 1/N of the mean "
                    f"(it is 2 (y^ - y) / N), so don't divide by N again, and sum (not average) over the batch.",
             N: f"{N} times too large (N = {N} faces): dy_hat already holds the 1/N of the mean; "
                f"don't multiply by N.",
             2: "2 times too large: dy_hat already holds the 2 of d(u^2)/du = 2u.",
             0.5: "half the right values: don't divide by 2; dy_hat = 2 (y^ - y) / N is the whole loss gradient."}
    no_mask = "the ReLU mask is missing: gradient flows back only where z > 0, so dZ = dH * (Z > 0)"
    problems = {
        "dW2": _mismatch(
            "dW2", grads["W2"], ref["W2"], "dW2 = dy_hat[None, :] @ H, shape (1, hidden) like W2.",
            mistakes=[(dy_hat[None, :] @ Z, "it uses Z; this layer's input is H = relu(Z): dW2 = dy_hat[None, :] @ H.")],
            shapes={(hidden,): "a gradient has its parameter's shape: dW2 = dy_hat[None, :] @ H is (1, hidden).",
                    (hidden, 1): "it looks transposed: dW2 = dy_hat[None, :] @ H has W2's shape (1, hidden).",
                    (N, hidden): "it is not summed over the batch: dy_hat[None, :] @ H adds up the faces' terms."},
            factors=scale),
        "db2": _mismatch(
            "db2", grads["b2"], ref["b2"], "db2 = dy_hat.sum(keepdims=True), shape (1,) like b2.",
            shapes={(): "a gradient has its parameter's shape: db2 = dy_hat.sum(keepdims=True) is (1,).",
                    (N,): "it is not summed over the batch: db2 = dy_hat.sum(keepdims=True)."},
            factors=scale),
        "dW1": _mismatch(
            "dW1", grads["W1"], ref["W1"], "dW1 = dZ.T @ X with dZ = dH * (Z > 0) and dH = dy_hat[:, None] * W2.",
            mistakes=[(dH.T @ X, no_mask + "; then dW1 = dZ.T @ X."),
                      ((dH * H).T @ X, "dH is multiplied by H; multiply it by the ReLU mask: dZ = dH * (Z > 0).")],
            shapes={(N_PIXELS, hidden): "it looks transposed: dW1 = dZ.T @ X has W1's shape (hidden, 2304)."},
            factors=scale),
        "db1": _mismatch(
            "db1", grads["b1"], ref["b1"], "db1 = dZ.sum(axis=0): one entry per hidden unit, summed over the faces.",
            mistakes=[(dH.sum(axis=0), no_mask + "; then db1 = dZ.sum(axis=0)."),
                      ((dH * H).sum(axis=0), "dH is multiplied by H; multiply it by the ReLU mask: dZ = dH * (Z > 0).")],
            shapes={(N, hidden): "it is not summed over the batch: db1 = dZ.sum(axis=0).",
                    (N,): "it is summed over the wrong axis: sum over the faces, dZ.sum(axis=0).",
                    (1, hidden): "keep b1's shape (hidden,): dZ.sum(axis=0), without keepdims."},
            factors=scale)}
    wrong = [name for name, p in problems.items() if p]
    if wrong:
        right = [name for name in problems if name not in wrong]
        head = f"{_join(wrong)} {'is' if len(wrong) == 1 else 'are'} wrong"
        if right:
            head += f" ({_join(right)} {'is' if len(right) == 1 else 'are'} right)"
        raise ExerciseCheckError(f"backward: {head}:\n" + "\n".join(f"  - {line}" for line in _grouped(problems)))
    print("backward: all checks passed.")


def check_numerical_gradient(numerical_gradient):
    """Check your centered differences against the reference on f(x) = sum(c x^2 / 2 + b x)."""
    __tracebackhide__ = True
    rng = np.random.default_rng(0)  # fixed seed: the same check every run
    x = rng.standard_normal((3, 4))
    c, b = rng.uniform(5, 10, size=x.shape), rng.standard_normal(x.shape)

    def f():  # its gradient is c x + b; centered differences are exact for a quadratic
        return float(np.sum(0.5 * c * x ** 2 + b * x))

    indices, h = np.array([7, 2, 10, 5]), 1e-5  # flat positions in x, as gradient_check passes them
    x0 = x.copy()
    expected = _ref.numerical_gradient(f, x, indices, h)
    got = _run("numerical_gradient", numerical_gradient, f, x, indices, h,
               hint="indices are flat positions in x, whatever its shape: perturb x.reshape(-1)[i], a view of x.")
    if not np.allclose(x, x0, rtol=0, atol=1e-12):
        raise ExerciseCheckError("numerical_gradient: x was not restored: after evaluating f at x + h and "
                                 "x - h, put the old value back, or every later evaluation sees a shifted x.")
    if got is not None and np.issubdtype(np.asarray(got).dtype, np.integer):
        raise ExerciseCheckError("numerical_gradient: it returns integers, so the decimals were cut off: "
                                 "create the result as floats, np.zeros(len(indices)) (np.zeros_like(indices) "
                                 "copies the integer type of indices).")
    slope = (c * x + b).reshape(-1)
    half_step = c.reshape(-1)[indices] * h / 2  # the O(h) error of a one-sided difference on this f
    _fail_if("numerical_gradient", _mismatch(
        "the result", got, expected, "for each i in indices: (f() at x[i] + h  -  f() at x[i] - h) / (2 h).",
        mistakes=[(slope[indices] + half_step, "it is the one-sided difference (f(x + h) - f(x)) / h; the "
                                               "centered (f(x + h) - f(x - h)) / (2 h) is far more accurate "
                                               "(error ~h^2 instead of ~h)."),
                  (slope[indices] - half_step, "it is the one-sided difference (f(x) - f(x - h)) / h; use the "
                                               "centered (f(x + h) - f(x - h)) / (2 h)."),
                  (slope[:len(indices)], "these are the slopes at entries 0, 1, 2, 3 of x, not at the given "
                                         "indices: perturb entry indices[k] for the k-th result.")],
        shapes={x.shape: "return one number per index, in the order of indices: np.zeros(len(indices)).",
                (x.size,): "return one number per index, in the order of indices: np.zeros(len(indices))."},
        factors={2: "twice the right values: the two points x - h and x + h are 2h apart, so divide by 2h.",
                 -1: "minus the right values: compute f(x + h) - f(x - h) (the + side first), then divide by 2h.",
                 0: "all zeros: f() never saw your change. Change x itself, in place: x.reshape(-1) is a view "
                    "of x, but x.flatten() and x.copy() are copies."},
        tol=1e-8))
    print("numerical_gradient: all checks passed.")


def check_sgd_step(sgd_step):
    """Check that your sgd_step(params, grads, lr) moves every parameter by -lr * gradient, in place."""
    __tracebackhide__ = True
    rng = np.random.default_rng(0)  # fixed seed: the same check every run
    shapes = {"W1": (3, 4), "b1": (3,), "W2": (1, 3), "b2": (1,)}
    params = {k: rng.standard_normal(s) for k, s in shapes.items()}
    grads = {k: rng.standard_normal(s) for k, s in shapes.items()}
    lr = 0.1
    before, arrays = _copy(params), dict(params)  # arrays: the original array objects
    result = _run("sgd_step", sgd_step, params, {k: g.copy() for k, g in grads.items()}, lr)
    rebound = [k for k in shapes if params.get(k) is not arrays[k]]
    unchanged = [k for k in shapes if np.array_equal(arrays[k], before[k])]
    if rebound:
        raise ExerciseCheckError(
            f"sgd_step: it puts new arrays into params ({', '.join(rebound)}) instead of changing the arrays "
            f"already there, which other code (your training loop, the model) still holds. Update in place: "
            f"params[name] -= lr * grads[name].")
    if len(unchanged) == len(shapes):
        if isinstance(result, dict):
            raise ExerciseCheckError("sgd_step: it returns new arrays but leaves params unchanged; update "
                                     "params in place, params[name] -= lr * grads[name] (no return needed).")
        raise ExerciseCheckError("sgd_step: params did not change. In a loop, `p = p - lr * g` only gives the "
                                 "name p a new array; `p -= lr * g` (or params[name] -= lr * grads[name]) "
                                 "changes the array itself.")
    if unchanged:
        raise ExerciseCheckError(f"sgd_step: {', '.join(unchanged)} did not change: update every parameter "
                                 f"(loop over params).")
    _fail_if("sgd_step", *_grouped({k: _mismatch(
        k, arrays[k], before[k] - lr * grads[k], "p -= lr * g: a step of size lr against the gradient.",
        mistakes=[(before[k] + lr * grads[k], "it moves along the gradient (uphill, the loss grows): "
                                              "subtract it, p -= lr * g."),
                  (before[k] - grads[k], "the step ignores the learning rate: p -= lr * g.")])
        for k in shapes}))
    print("sgd_step: all checks passed.")


class _FixedOrder:
    """Stands in for a random generator in the reference train_epoch: 'shuffles' into a given order."""

    def __init__(self, order):
        self.order = np.asarray(order)

    def permutation(self, n):
        return self.order.copy()


def _one_hot_problem(n, n_hidden=3, seed=0):
    """n samples where sample i is pixel i (X = I): only a step on sample i moves column i of W1."""
    rng = np.random.default_rng(seed)
    params = {"W1": 0.1 * rng.standard_normal((n_hidden, n)),
              "b1": np.ones(n_hidden),  # z > 0 for every sample: every visit moves its column of W1
              "W2": rng.standard_normal((1, n_hidden)), "b2": np.zeros(1)}
    return params, np.eye(n), rng.standard_normal(n)


def _replay(params, X, y, lr, batch_size, seed):
    """The reference epoch for the usual ways to shuffle with default_rng(seed), and with no shuffle."""
    n = len(X)
    orders = {"rng.permutation": np.random.default_rng(seed).permutation(n),
              "rng.choice": np.random.default_rng(seed).choice(n, n, replace=False),
              "no shuffle": np.arange(n)}
    replays = {}
    for how, order in orders.items():
        p = _copy(params)
        loss = _ref.train_epoch(p, X, y, lr, batch_size, _FixedOrder(order))
        replays[how] = (order, p, loss)
    return replays


def check_train_epoch(train_epoch):
    """Check one epoch of your train_epoch(params, X, y, lr, batch_size, rng) against the reference.

    The inputs are one-hot (sample i is pixel i), so the columns of W1 that moved tell which
    samples the epoch visited; the parameters at the end are compared with reference epochs.
    """
    __tracebackhide__ = True
    name, n, batch_size, lr, seed = "train_epoch", 11, 4, 1e-3, 0  # batches of 4, 4 and 3; small steps
    start, X, y = _one_hot_problem(n)
    params, rng = _copy(start), np.random.default_rng(seed)
    rng_state = rng.bit_generator.state
    _run(name, train_epoch, params, X, y, lr, batch_size, rng)
    frozen = [k for k in start if np.array_equal(params[k], start[k])]
    if frozen:
        raise ExerciseCheckError(f"{name}: {', '.join(frozen)} did not change during the epoch: after "
                                 f"backward, call sgd_step(params, grads, lr) for each batch.")
    replays = _replay(start, X, y, lr, batch_size, seed)
    visited = np.any(params["W1"] != start["W1"], axis=0)
    if not visited.all():
        missed, r = set(np.flatnonzero(~visited).tolist()), n % batch_size
        if any(missed == set(order[-r:].tolist()) for order, _, _ in replays.values()):
            raise ExerciseCheckError(
                f"{name}: the last, partial batch is dropped: with N = {n} and batch_size = {batch_size} the "
                f"batches have 4, 4 and {r} samples, and the last {r} samples were never used. Loop over "
                f"start in range(0, N, batch_size); the slice order[start:start + batch_size] is shorter at the end.")
        if visited.sum() == batch_size:
            raise ExerciseCheckError(
                f"{name}: every step used the same batch: only {batch_size} of {n} samples were visited. "
                f"Take batch = order[start:start + batch_size] for start = 0, batch_size, 2 * batch_size, ...")
        raise ExerciseCheckError(
            f"{name}: {len(missed)} of {n} samples were never used: one epoch visits every sample exactly "
            f"once. Shuffle once per epoch, order = rng.permutation(N), then walk through it in slices of "
            f"batch_size (random draws per batch repeat some samples and miss others).")
    match = next((how for how, (_, p, _) in replays.items()
                  if all(_close(params[k], p[k], 1e-9) for k in p)), None)
    if match == "no shuffle":
        raise ExerciseCheckError(
            f"{name}: the samples are not shuffled: every epoch would see them in the same order. "
            f"Shuffle with the rng you are given: order = rng.permutation(N); batch = order[start:start + batch_size].")
    if match is None:
        if rng.bit_generator.state == rng_state:
            raise ExerciseCheckError(
                f"{name}: it does not use the rng argument, so the caller's seed does not control the "
                f"shuffle. Shuffle with it: order = rng.permutation(N) (not np.random, not a new generator).")
        moved = sum(np.sum((params[k] - start[k]) ** 2) for k in start) ** 0.5
        ref = replays["rng.permutation"][1]
        ratio = moved / sum(np.sum((ref[k] - start[k]) ** 2) for k in start) ** 0.5
        if ratio > 1.5:
            raise ExerciseCheckError(
                f"{name}: the parameters moved {ratio:.1f} times as far as in one reference epoch: one epoch "
                f"visits each sample once, with one sgd_step per batch.")
        raise ExerciseCheckError(
            f"{name}: after one epoch the parameters differ from a reference epoch with the same rng. Check "
            f"that X and y are indexed with the same batch indices, that each batch goes through forward, "
            f"mse_loss, backward and one sgd_step with lr, and shuffle with order = rng.permutation(N) so "
            f"this check can replay your epoch.")
    _check_epoch_loss(train_epoch, match)
    print("train_epoch: all checks passed.")


def _check_epoch_loss(train_epoch, how, n=12, batch_size=4, lr=1e-3, seed=1):
    """The returned loss: the mean over the epoch's batches (3 full batches, so any weighting agrees)."""
    __tracebackhide__ = True
    start, X, y = _one_hot_problem(n, seed=seed)
    loss = _run("train_epoch", train_epoch, _copy(start), X, y, lr, batch_size, np.random.default_rng(seed))
    expected = _replay(start, X, y, lr, batch_size, seed)[how][2]
    n_batches = n // batch_size
    _fail_if("train_epoch", _mismatch(
        "the returned loss", loss, np.asarray(expected),
        f"return the mean of the {n_batches} batch losses, computed after the loop (not the last batch's loss).",
        factors={n_batches: f"the sum of the {n_batches} batch losses: divide by the number of batches to "
                            f"return their mean."},
        tol=1e-9))


def check_weight_image(weight_image):
    """Check that your weight_image(W1, j) returns row j of W1 as a 48x48 image."""
    __tracebackhide__ = True
    n_hidden = 5
    W1 = np.random.default_rng(0).standard_normal((n_hidden, N_PIXELS))  # fixed seed: same check every run
    W1_before = W1.copy()
    for j in (3, 0):
        image = _run("weight_image", weight_image, W1, j,
                     hint=f"W1 has one row per hidden unit: W1[j] holds the 2304 weights of unit j, one per "
                          f"pixel (a column W1[:, j] has only {n_hidden} numbers, one per unit).")
        if not np.array_equal(W1, W1_before):
            raise ExerciseCheckError("weight_image: it changed W1; it should only read it (reshape, "
                                     "don't modify in place).")
        expected = W1_before[j].reshape(IMAGE_SHAPE)
        _fail_if("weight_image", _mismatch(
            f"the image of unit {j}", image, expected, "return W1[j].reshape(48, 48), the raw weights.",
            mistakes=[(expected.T, "it is transposed: W1[j].reshape(48, 48) in NumPy's default (row-major) "
                                   "order puts pixels 0-47 in the top row; drop the .T or order='F'."),
                      (W1[(j + 1) % n_hidden].reshape(IMAGE_SHAPE), f"it is row {(j + 1) % n_hidden} of W1; "
                                                                   f"unit j is row W1[j] (counting from 0)."),
                      (W1[j - 1].reshape(IMAGE_SHAPE), f"it is row {j - 1 if j else n_hidden - 1} of W1; "
                                                       f"unit j is row W1[j].")],
            shapes={(N_PIXELS,): "reshape the row into an image: W1[j].reshape(48, 48).",
                    (1, N_PIXELS): "reshape the row into an image: W1[j].reshape(48, 48)."},
            factors={-1: "minus the weights: return them as they are, W1[j].reshape(48, 48)."}))
    print("weight_image: all checks passed.")


# =============================================================================
# Command line
# =============================================================================


def _cmd_train(args):
    t0 = time.perf_counter()
    data = load_data(args.data)
    print(data.summary())
    baseline_rows = baselines(data)  # ridge needs the whole training split: fit it before training
    X_train, y_train, X_val, y_val = train_val_split(data.Xtr, data.ytr, args.val_fraction, args.seed)
    X_test, y_test = data.Xte, data.yte
    del data  # the split holds the training faces now; dropping the original keeps the peak near 0.5 GB
    print(f"training on {len(X_train)} faces, validating on {len(X_val)}: hidden={args.hidden} "
          f"lr={args.lr:g} (x{args.lr_decay:g} per epoch) batch={args.batch_size} epochs={args.epochs} mirror={args.mirror} seed={args.seed} dtype={args.dtype}")
    model = train(X_train, y_train, X_val, y_val, n_hidden=args.hidden, lr=args.lr, lr_decay=args.lr_decay,
                  mirror=args.mirror, batch_size=args.batch_size, epochs=args.epochs, seed=args.seed, dtype=args.dtype)
    rows = {f"network ({split})": regression_metrics(y, predict(model, X))
            for split, X, y in (("train", X_train, y_train), ("validation", X_val, y_val),
                                ("test", X_test, y_test))}
    rows.update({f"baseline: {k} (test)": v for k, v in baseline_rows.items()})
    print(format_metrics_table(rows))
    out = Path(args.out)
    paths = save_weight_images(model.params["W1"], out / "weight_images")
    save_model(model, out / "model.npz")
    print(f"wrote {len(paths) - 1} weight images and weight_grid.png to {out / 'weight_images'}, "
          f"and {out / 'model.npz'} ({time.perf_counter() - t0:.0f} s)")


def _cmd_evaluate(args):
    model = load_model(args.model)
    data = load_data(args.data)
    m = regression_metrics(data.yte, predict(model, data.Xte))
    print(f"{args.model} on the test split of {data.path}: RMSE {m['rmse']:.2f} years, MAE {m['mae']:.2f} years")


def _cmd_build_data(args):
    build_data_zip(args.source, args.out, args.test_fraction, args.seed)


def make_parser():
    parser = argparse.ArgumentParser(
        prog="python faceage_helpers.py",
        description="FaceAge: train the age-estimating network on data.zip (the default), evaluate a "
                    "saved model, or build data.zip from UTKFace.")
    parser.add_argument("--data", help="path to data.zip (default: $FACEAGE_DATA, then ./data.zip)")
    parser.add_argument("--hidden", type=int, default=DEFAULTS["n_hidden"], help="hidden units (default %(default)s)")
    parser.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="SGD learning rate (default %(default)s)")
    parser.add_argument("--lr-decay", type=float, default=DEFAULTS["lr_decay"],
                        help="learning rate multiplier per epoch (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], help="minibatch size (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"], help="passes over the data (default %(default)s)")
    parser.add_argument("--no-mirror", dest="mirror", action="store_false",
                        help="don't add left-right mirrored faces to the training data")
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="seed for split, init and shuffling (default %(default)s)")
    parser.add_argument("--val-fraction", type=float, default=DEFAULTS["val_fraction"],
                        help="share of training faces held out for validation (default %(default)s)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                        help="training precision (default %(default)s; float64 is slower)")
    parser.add_argument("--out", default=".", help="folder for weight_images/ and model.npz (default: current folder)")
    sub = parser.add_subparsers(dest="command", metavar="{train,evaluate,build-data}")
    sub.add_parser("train", help="train with the options above (the default when no command is given)")
    ev = sub.add_parser("evaluate", help="test-split RMSE and MAE of a saved model")
    ev.add_argument("--model", default="model.npz", help="model file from training (default %(default)s)")
    ev.add_argument("--data", help="data.zip in the course layout (default: $FACEAGE_DATA, then ./data.zip)")
    bd = sub.add_parser("build-data", help="build data.zip from UTKFace's 'Aligned & Cropped' folder or .tar.gz")
    bd.add_argument("source", help="UTKFace folder or UTKFace.tar.gz")
    bd.add_argument("--out", default="data.zip", help="zip to write (default %(default)s)")
    bd.add_argument("--test-fraction", type=float, default=0.19, help="share of faces for the test split (default %(default)s)")
    bd.add_argument("--seed", type=int, default=0, help="seed for the train/test split (default %(default)s)")
    return parser


def main(argv=None):
    args = make_parser().parse_args(argv)
    command = {"evaluate": _cmd_evaluate, "build-data": _cmd_build_data}.get(args.command, _cmd_train)
    try:
        command(args)
    except (DataError, TrainingDiverged) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
