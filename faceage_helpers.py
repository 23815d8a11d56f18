"""FaceAge helpers: estimate a person's age from a 48x48 grayscale face with a
two-layer neural network written by hand in NumPy.

The network, in the notation used throughout the notebooks:

    x in R^2304          a flattened face
    z  = W1 x + b1       W1 is (hidden, 2304): row j reshapes to a 48x48 image
    h  = relu(z)
    y^ = W2 h + b2       W2 is (1, hidden): one scalar age

Loss: mean squared error. Training: minibatch SGD with hand-written backprop.

Sections: data, model, gradient checking, training, evaluation, plots and
widgets, command line. Run `python faceage_helpers.py --help` for the command line.
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
HERE = Path(__file__).resolve().parent


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
        return X.astype(np.float32) / np.float32(255)
    if not np.issubdtype(X.dtype, np.floating) and not np.issubdtype(X.dtype, np.integer):
        raise DataError(f"{name} has dtype {X.dtype}; expected uint8 (0-255) or float (0-1) pixels.")
    X = X.astype(np.float32)
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


def train_val_split(X, y, val_fraction=0.15, seed=0):
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

def init_params(n_hidden=64, n_in=N_PIXELS, seed=0, dtype=np.float32, w1_gain=0.1) -> dict:
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

    n_entries: check this many random entries per parameter (None: every entry, which costs
    2 forward passes per entry: about 2 * hidden * 2304 passes for W1).
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


def sgd_step(params, grads, lr):
    """Vanilla SGD update, in place: p <- p - lr * dL/dp."""
    for name, p in params.items():
        p -= lr * grads[name]


def _check_loss(loss, epoch, lr, start_loss):
    """Stop with advice when the loss is non-finite or has grown a thousandfold."""
    if not np.isfinite(loss) or loss > 1e3 * max(start_loss, 1.0):
        raise TrainingDiverged(
            f"Training diverged in epoch {epoch}: the loss became {loss:.3g} (it started at "
            f"{start_loss:.3g}). The learning rate {lr:g} is too large; try {lr / 10:g}.")


def train_epoch(params, X, y, lr, batch_size, rng, epoch=1, start_loss=1.0):
    """One pass of minibatch SGD over (X, y), reshuffled with rng; returns the mean batch loss."""
    n = len(X)
    order = rng.permutation(n)
    total = 0.0
    with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported by _check_loss
        for start in range(0, n, batch_size):
            batch = order[start:start + batch_size]
            y_hat, cache = forward(params, X[batch])
            loss, dy_hat = mse_loss(y_hat, y[batch])
            _check_loss(loss, epoch, lr, start_loss)
            sgd_step(params, backward(params, cache, dy_hat), lr)
            total += loss * len(batch)
    return total / n


def mirror_faces(X):
    """Flip face rows left-right: column c of each 48x48 image becomes column 47 - c."""
    return X.reshape(-1, *IMAGE_SHAPE)[:, :, ::-1].reshape(len(X), N_PIXELS)


def standardize_fit(X):
    """Per-pixel mean and standard deviation of the training faces."""
    mean = X.mean(axis=0, dtype=np.float64)
    std = X.std(axis=0, dtype=np.float64)
    return mean.astype(X.dtype), np.maximum(std, 1e-3).astype(X.dtype)


def _progress(epoch, epochs, train_loss, val_rmse, width=20):
    bar = "#" * round(width * epoch / epochs)
    val = f"  val RMSE {val_rmse:5.2f} y" if val_rmse is not None else ""
    return f"epoch {epoch:3d}/{epochs} [{bar:<{width}}] train loss {train_loss:.4f}{val}"


def train(X_train, y_train, X_val=None, y_val=None, n_hidden=64, lr=0.005, lr_decay=0.93,
          batch_size=64, epochs=30, mirror=True, seed=0, dtype=np.float32, snapshot_every=None,
          verbose=True) -> Model:
    """Train the network with minibatch SGD and return a Model that predicts in years.

    Inputs are standardised per pixel and targets scaled with training statistics; the loss
    in history is in those scaled units (1.0 = predicting the mean age). The learning rate of
    epoch e is lr * lr_decay**(e - 1): big steps early, small steps to settle. mirror=True also
    trains on every face flipped left-right (a mirrored face has the same age: twice the data for
    free). snapshot_every=k keeps a copy of W1 every k epochs (epoch 0 included) for the weight browser.
    """
    dtype = np.dtype(dtype)
    X_train = as_face_rows(X_train, "X_train")
    y_train = as_ages(y_train, len(X_train), "y_train")
    if mirror:
        X_train = np.concatenate([X_train, mirror_faces(X_train)])
        y_train = np.concatenate([y_train, y_train])
    x_mean, x_std = standardize_fit(X_train)
    y_mean, y_std = float(y_train.mean()), float(y_train.std()) or 1.0
    Xs = ((X_train - x_mean) / x_std).astype(dtype, copy=False)  # converted once, not per batch
    ys = ((y_train - y_mean) / y_std).astype(dtype)
    model = Model(init_params(n_hidden, seed=seed, dtype=dtype), x_mean, x_std, y_mean, y_std,
                  settings=dict(n_hidden=n_hidden, lr=lr, lr_decay=lr_decay, batch_size=batch_size, epochs=epochs,
                                mirror=mirror, seed=seed, dtype=dtype.name))
    has_val = X_val is not None
    if has_val:
        X_val = as_face_rows(X_val, "X_val")
        y_val = as_ages(y_val, len(X_val), "y_val")
    history = {"epoch": [], "train_loss": [], "val_loss": [], "val_rmse": []}
    if snapshot_every:
        history["W1_epochs"], history["W1_snapshots"] = [0], [model.params["W1"].copy()]
    rng = np.random.default_rng(seed)
    start_loss = mse_loss(forward(model.params, Xs[:1024])[0], ys[:1024])[0]
    live = verbose and sys.stdout.isatty()
    for epoch in range(1, epochs + 1):
        epoch_lr = lr * lr_decay ** (epoch - 1)
        train_loss = train_epoch(model.params, Xs, ys, epoch_lr, batch_size, rng, epoch, start_loss)
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


def predict(model: Model, X, batch_size=4096):
    """Predicted ages in years for faces X (uint8 or [0, 1] floats, (N, 48, 48) or (N, 2304))."""
    X = as_face_rows(X)
    dtype = model.params["W1"].dtype
    out = np.empty(len(X))
    for start in range(0, len(X), batch_size):  # in chunks to bound memory on big sets
        Xs = ((X[start:start + batch_size] - model.x_mean) / model.x_std).astype(dtype, copy=False)
        out[start:start + batch_size] = forward(model.params, Xs)[0]
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


def fit_ridge(X, y, lam=100.0):
    """Ridge regression in closed form, w = (Xc^T Xc + lam I)^-1 Xc^T yc on centred data; returns predict(X)."""
    X = np.asarray(X, dtype=np.float64)
    x_mean, y_mean = X.mean(axis=0), float(np.mean(y))
    Xc = X - x_mean
    w = np.linalg.solve(Xc.T @ Xc + lam * np.eye(X.shape[1]), Xc.T @ (y - y_mean))
    return lambda Xnew: (np.asarray(Xnew, dtype=np.float64) - x_mean) @ w + y_mean


def baselines(data: FaceData, lam=100.0) -> dict:
    """Test metrics of the two models every network must beat: the training mean and ridge regression."""
    mean_pred = np.full(len(data.yte), data.ytr.mean())
    ridge = fit_ridge(data.Xtr, data.ytr, lam)
    return {"mean": regression_metrics(data.yte, mean_pred),
            f"ridge (lambda={lam:g})": regression_metrics(data.yte, ridge(data.Xte))}


def format_metrics_table(rows: dict) -> str:
    """A fixed-format table of {name: metrics} for printing."""
    width = max([5, *map(len, rows)])
    lines = [f"{'model':<{width}} {'RMSE (y)':>9} {'MAE (y)':>8}"]
    lines += [f"{name:<{width}} {m['rmse']:9.2f} {m['mae']:8.2f}" for name, m in rows.items()]
    return "\n".join(lines)


# =============================================================================
# Plots and widgets
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


def plot_weight_grid(W1, n=30, ncols=10, title=None, units=None, size=1.3):
    """First-layer weights as 48x48 images, each on a diverging map centred on zero; returns the figure."""
    plt = _plt()
    units = list(range(min(n, len(W1)))) if units is None else list(units)
    nrows = int(np.ceil(len(units) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * 1.15 * nrows + 0.6), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < len(units):
            w = W1[units[k]]
            lo, hi = weight_limits(w)
            ax.imshow(w.reshape(IMAGE_SHAPE), cmap="RdBu_r", vmin=lo, vmax=hi)
            ax.set_title(f"unit {units[k]}", fontsize=8)
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
        w = np.kron(W1[j].reshape(IMAGE_SHAPE), np.ones((scale, scale)))  # upscale, crisp pixels
        lo, hi = weight_limits(w)
        path = folder / f"weight_image_{j}.png"
        plt.imsave(path, w, cmap="RdBu_r", vmin=lo, vmax=hi)
        paths.append(path)
    fig = plot_weight_grid(W1, n=n)
    fig.savefig(folder / "weight_grid.png", dpi=100)
    plt.close(fig)
    return paths + [folder / "weight_grid.png"]


# -----------------------------------------------------------------------------
# Widgets: the interactive weight browser of notebook 04
# -----------------------------------------------------------------------------


# =============================================================================
# Exercise checks: run right after each exercise in the notebooks
# =============================================================================


# =============================================================================
# Command line
# =============================================================================

DEFAULTS = dict(n_hidden=64, lr=0.005, lr_decay=0.93, batch_size=64, epochs=30, seed=0, val_fraction=0.15)


def _cmd_train(args):
    t0 = time.perf_counter()
    data = load_data(args.data)
    print(data.summary())
    X_train, y_train, X_val, y_val = train_val_split(data.Xtr, data.ytr, args.val_fraction, args.seed)
    print(f"training on {len(X_train)} faces, validating on {len(X_val)}: hidden={args.hidden} "
          f"lr={args.lr:g} (x{args.lr_decay:g} per epoch) batch={args.batch_size} epochs={args.epochs} mirror={args.mirror} seed={args.seed} dtype={args.dtype}")
    model = train(X_train, y_train, X_val, y_val, n_hidden=args.hidden, lr=args.lr, lr_decay=args.lr_decay,
                  mirror=args.mirror, batch_size=args.batch_size, epochs=args.epochs, seed=args.seed, dtype=args.dtype)
    rows = {f"network ({split})": regression_metrics(y, predict(model, X))
            for split, X, y in (("train", X_train, y_train), ("validation", X_val, y_val),
                                ("test", data.Xte, data.yte))}
    rows.update({f"baseline: {k} (test)": v for k, v in baselines(data).items()})
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
