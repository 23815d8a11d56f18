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
import re
import shutil
import sys
import tarfile
import tempfile
import time
import warnings
import zipfile
import zlib
from collections import Counter
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
NEAR_DUPLICATE = 0.97  # centred pixel correlation above which two faces count as one photograph
GENDER_NAMES = ("male", "female")  # meta CSV codes 0, 1 (-1: unknown)
RACE_NAMES = ("White", "Black", "Asian", "Indian", "Others")  # meta CSV codes 0-4 (-1: unknown)
HERE = Path(__file__).resolve().parent
_this_module = sys.modules[__name__]  # the reference lesson: its forward, backward, ... train by default


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
            # A path you named (argument or $FACEAGE_DATA) that does not exist is an error, not a hint
            # to look elsewhere: a typo must not silently load some other data.zip.
            tried[-1] += ": does not exist; fix the path" + (" or unset FACEAGE_DATA" if how[0] == "$" else "")
            break
    raise DataError(
        "No data.zip found. Looked in:\n" + "\n".join(tried) + "\n"
        "Fix: put the course's data.zip at the repository root, or set FACEAGE_DATA=/path/to/data.zip, "
        "or build one from the public UTKFace 'Aligned & Cropped' faces with\n"
        "  python faceage_helpers.py build-data UTKFace/ --out data.zip")


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
MAX_FACES = 100_000
MAX_META_ROW_BYTES = 1024  # a meta CSV row is about 50 bytes
_DATA_FIX = "Fetch data.zip again, or rebuild it with `python faceage_helpers.py build-data`."


def _open_zip(path: Path, fix: str) -> zipfile.ZipFile:
    """Open a zip, refusing what zipfile accepts but FaceAge never writes: duplicate member names
    (which copy counts is then a matter of chance) and password-protected members."""
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty (0 bytes), e.g. left by an interrupted copy. {fix}")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise DataError(f"{path} is not a readable zip file ({e}). {fix}") from None
    duplicates = [name for name, count in Counter(zf.namelist()).items() if count > 1]
    encrypted = [info.filename for info in zf.infolist() if info.flag_bits & 0x1]
    if duplicates or encrypted:
        zf.close()
        problem = (f"holds more than one member named {duplicates[0]}" if duplicates
                   else f"{encrypted[0]} is password-protected (encrypted)")
        raise DataError(f"{path}: {problem}. {fix}")
    return zf


def _read_npy(zf: zipfile.ZipFile, member: str, path: Path, max_items: int, fix: str, kinds="uif") -> np.ndarray:
    """One .npy member of a zip, refused unless its header's dtype and shape are plausible and agree
    with the member's size in the zip's directory, all before memory is allocated for it."""
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
            shape, _, dtype = read_header(f)
            count = int(np.prod(shape, dtype=object))
            if dtype.kind not in kinds or dtype.hasobject or (dtype.kind != "U" and dtype.itemsize > 8):
                raise DataError(f"{where} holds {dtype} values, which a FaceAge file never does. {fix}")
            if count > max_items:
                raise DataError(f"{where} declares shape {shape}, more than the {max_items:,} values a FaceAge "
                                f"file holds. {fix}")
            if f.tell() + count * dtype.itemsize != info.file_size:
                raise DataError(f"{where} declares shape {shape} ({count * dtype.itemsize:,} bytes) but holds "
                                f"{info.file_size - f.tell():,} bytes: it is damaged or not a FaceAge file. {fix}")
            f.seek(0)
            return np.lib.format.read_array(f, allow_pickle=False)
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"{where} is not a readable .npy array ({e}). {fix}") from None


def _read_meta(zf: zipfile.ZipFile, member: str, n: int, path: Path) -> dict:
    """Read a meta CSV (age, gender, race, source) into a dict of arrays."""
    size = zf.getinfo(member).file_size
    if size > 4096 + MAX_META_ROW_BYTES * n:
        raise DataError(f"{path}: {member} inflates to {size:,} bytes, far more than {n} rows of metadata "
                        f"need. {_DATA_FIX}")
    try:
        with zf.open(member) as f:
            rows = list(csv.DictReader(io.TextIOWrapper(f, encoding="utf-8", newline="")))
    except (ValueError, OSError, EOFError, csv.Error, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"{path}: {member} is not a readable CSV file ({e}). {_DATA_FIX}") from None
    if len(rows) != n:
        raise DataError(f"{path}: {member} has {len(rows)} rows but there are {n} faces.")
    meta = {}
    for column in (rows[0].keys() if rows else ()):
        values = [r[column] for r in rows]
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
        arrays = {}
        for key in ARRAY_NAMES:
            member = f"age_regression_{key}.npy"
            if member not in names:
                raise DataError(f"{path} has no {member}. A course data.zip holds "
                                f"{', '.join(f'age_regression_{k}.npy' for k in ARRAY_NAMES)}; "
                                f"this one holds: {', '.join(sorted(names)) or 'nothing'}.")
            max_items = MAX_FACES * (N_PIXELS if key.startswith("X") else 1)
            arrays[key] = _read_npy(zf, member, path, max_items, _DATA_FIX)
        Xtr = as_face_rows(arrays["Xtr"], f"{path.name}:age_regression_Xtr.npy")
        Xte = as_face_rows(arrays["Xte"], f"{path.name}:age_regression_Xte.npy")
        ytr = as_ages(arrays["ytr"], len(Xtr), f"{path.name}:age_regression_ytr.npy")
        yte = as_ages(arrays["yte"], len(Xte), f"{path.name}:age_regression_yte.npy")
        meta_tr = _read_meta(zf, "meta_tr.csv", len(Xtr), path) if "meta_tr.csv" in names else None
        meta_te = _read_meta(zf, "meta_te.csv", len(Xte), path) if "meta_te.csv" in names else None
    return FaceData(Xtr, ytr, Xte, yte, meta_tr, meta_te, path)


def train_val_split(X, y, val_fraction=DEFAULTS["val_fraction"], seed=DEFAULTS["seed"]):
    """Split training data into (X_train, y_train, X_val, y_val) with a seeded shuffle (notebook 03 §1).

    Choose settings on the validation part; keep the test split for the final report.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}.")
    n = len(X)
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    val, tr = order[:n_val], order[n_val:]
    return X[tr], y[tr], X[val], y[val]


def _write_atomically(path: Path, write):
    """Call write(f) on a temporary file beside path, then rename it over path (one step on every OS):
    a Ctrl-C, a kill or a full disk leaves the previous file whole, never a half-written one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


MAX_AGE = 116  # UTKFace's ages run from 1 to 116 years
MAX_IMAGE_BYTES = 20 * 2**20  # UTKFace's images are 5-50 kB: a bigger "image" is not one of its faces
MAX_IMAGE_PIXELS = 25_000_000  # larger images are skipped before decoding (decompression bombs)


def _parse_utkface_name(name: str):
    """UTKFace file names read age_gender_race_date.jpg; return (age, gender, race), -1 for unknown
    gender or race. Raises ValueError saying why the name cannot be a UTKFace face's."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("file name is not valid UTF-8") from None
    if not name.isprintable():
        raise ValueError("control characters (e.g. a newline) in the file name")
    parts = name.split("_")
    if not re.fullmatch("[0-9]+", parts[0]) or len(parts) < 2:
        raise ValueError("file name does not start with an age (age_gender_race_date.jpg)")
    age = int(parts[0])
    if not 1 <= age <= MAX_AGE:
        raise ValueError(f"age outside 1-{MAX_AGE} years")
    gender = int(parts[1]) if parts[1] in ("0", "1") else -1
    race = int(parts[2]) if len(parts) > 2 and parts[2] in ("0", "1", "2", "3", "4") else -1
    return age, gender, race


def _iter_utkface_images(source: Path):
    """Yield (file name, image bytes, None) for every .jpg in a UTKFace folder or .tar.gz archive, or
    (file name, None, why it was skipped).

    Only regular files are read (a FIFO would hang, a link to /dev/zero never ends), and an archive
    is read to its end, where gzip verifies its checksum: a damaged download fails, never loses faces.
    """
    if source.is_dir():
        for p in sorted(source.rglob("*.jpg")):
            if not p.is_file():  # follows links: a link to a device is not a regular file
                yield p.name, None, "not a regular file"
            elif p.stat().st_size > MAX_IMAGE_BYTES:
                yield p.name, None, f"larger than {MAX_IMAGE_BYTES // 2**20} MB"
            else:
                yield p.name, p.read_bytes(), None
        return
    try:
        if not source.is_file():
            raise tarfile.ReadError("not a regular file")
        with tarfile.open(source, "r:*") as tf:
            for member in tf:  # in archive order: one pass over the compressed stream
                if not member.name.endswith(".jpg"):
                    continue
                name = Path(member.name).name
                if not member.isfile():
                    yield name, None, "not a regular file"
                elif member.size > MAX_IMAGE_BYTES:
                    yield name, None, f"larger than {MAX_IMAGE_BYTES // 2**20} MB"
                else:
                    yield name, tf.extractfile(member).read(), None
            while tf.fileobj.read(2**20):  # past tar's end-of-archive blocks to gzip's checksum
                pass
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{source} is not a folder nor a readable .tar.gz archive of UTKFace images, or it is "
                        f"damaged ({e}). Download UTKFace.tar.gz again, or pass its unpacked folder.") from None


def _face_from_image(raw: bytes) -> np.ndarray:
    """A 48x48 uint8 face from image bytes: grayscale, resized with Lanczos. Raises ValueError saying
    why the image cannot be a face.

    16-bit and floating-point images are scaled to 0-255 first: Pillow's own conversion to 8 bits
    clips 16-bit pixels (a nearly white face) and truncates [0, 1] floats (a black one).
    """
    from PIL import Image  # Pillow comes with matplotlib; imported here to keep start-up fast
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as im:
                if im.width * im.height > MAX_IMAGE_PIXELS:
                    raise ValueError(f"larger than {MAX_IMAGE_PIXELS // 10**6} megapixels")
                if im.mode == "F" or im.mode.startswith("I"):
                    pixels = np.asarray(im, dtype=np.float64)
                    top = 1.0 if im.mode == "F" else 65535.0
                    if not (np.isfinite(pixels).all() and pixels.min() >= 0 and pixels.max() <= top):
                        raise ValueError(f"{im.mode} pixels outside 0-{top:g}")
                    gray = Image.fromarray(np.round(pixels * (255 / top)).astype(np.uint8))
                else:
                    gray = im.convert("L")
                return np.asarray(gray.resize(IMAGE_SHAPE[::-1], Image.LANCZOS), dtype=np.uint8)
    except ValueError:
        raise
    except Exception as e:  # Pillow raises many kinds on a damaged file; one bad image must not stop the build
        raise ValueError(f"not a readable image ({type(e).__name__})") from None


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
    shared members. The command line's build-data keeps each group within one split."""
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


def _split_by_groups(n, groups, test_fraction, seed):
    """Seeded (train, test) index arrays with each group of near-duplicates wholly in one split."""
    grouped = {i for g in groups for i in g}
    units = sorted(groups + [[i] for i in range(n) if i not in grouped])
    n_test = max(1, int(round(n * test_fraction)))
    train, test = [], []
    for u in np.random.default_rng(seed).permutation(len(units)):  # without groups: the plain seeded split
        (test if len(test) < n_test else train).extend(units[u])
    return np.array(train, dtype=int), np.array(test, dtype=int)


_DATA_README = """UTKFace at 48x48 grayscale, for age regression (built by faceage_helpers.py build-data)

Arrays (NumPy .npy): age_regression_Xtr.npy / Xte.npy uint8 (N, 48, 48); ytr / yte float64 ages.
meta_tr.csv, meta_te.csv: age, gender ({GENDERS}, -1 unknown),
race ({RACES}, -1 unknown), source file name.

Source: UTKFace (Zhang, Song and Qi, CVPR 2017). Each image converted to grayscale and resized to
48x48 (Lanczos); exact duplicates merged, duplicates whose ages disagree dropped. Near-duplicates
(the same photograph re-encoded, re-cropped or mirrored: centred pixel correlation above {NEAR_DUPLICATE}, as
they are or mirrored) are kept, each group wholly in one split; the split is seeded.
Licence: non-commercial research only; the images' copyright belongs to their owners.
Never commit this file or anything made from it.
""".format(GENDERS=", ".join(f"{code} {name}" for code, name in enumerate(GENDER_NAMES)),
           RACES=", ".join(f"{code} {name}" for code, name in enumerate(RACE_NAMES)), NEAR_DUPLICATE=NEAR_DUPLICATE)


TEST_FRACTION = 0.19  # build-data's share of faces for the test split


def build_data_zip(source, out="data.zip", test_fraction=TEST_FRACTION, seed=0) -> Path:
    """Build a course-layout data.zip from a UTKFace 'Aligned & Cropped' folder or .tar.gz (command line: build-data).

    Age, gender and race come from the file names; images become 48x48 grayscale (Lanczos). Files
    that cannot be UTKFace faces are skipped and counted by reason; the same photograph never lies
    in both splits (near_duplicate_groups). The zip is replaced whole or not at all.
    """
    source, out = Path(source), Path(out)
    if not source.exists():
        raise DataError(f"{source} does not exist. Download UTKFace's 'Aligned & Cropped Faces' "
                        f"(UTKFace.tar.gz) and pass the archive or its unpacked folder.")
    if out.is_dir():
        raise DataError(f"--out {out} is a folder; give the zip file to write, e.g. --out {out / 'data.zip'}.")
    if not 0 < test_fraction < 1:
        raise DataError(f"test_fraction must be between 0 and 1, got {test_fraction}.")
    found, skipped = [], {}  # skipped: reason -> names
    for name, raw, reason in _iter_utkface_images(source):
        try:
            if reason:
                raise ValueError(reason)
            labels = _parse_utkface_name(name)  # the name first: a bad one is skipped without decoding
            found.append((name, _face_from_image(raw), labels))
        except ValueError as e:
            skipped.setdefault(str(e), []).append(name)
    by_hash = {}  # image hash -> [pixels, age, gender, race, source] ; None once ages disagree
    for name, face, labels in sorted(found, key=lambda r: r[0]):  # by name: the same zip from folder or archive
        key = hashlib.sha1(face.tobytes()).hexdigest()
        if key in by_hash:
            if by_hash[key] is not None and by_hash[key][1] != labels[0]:
                by_hash[key] = None  # same face, two ages: trust neither
            continue
        by_hash[key] = [face, *labels, name]
    records = [r for r in by_hash.values() if r is not None]
    n_skipped = sum(map(len, skipped.values()))
    if n_skipped:
        print(f"skipped {n_skipped} files that cannot be UTKFace faces:")
        for reason, names in sorted(skipped.items(), key=lambda item: -len(item[1])):
            print(f"  {len(names)}: {reason} (e.g. {names[0]!r})")
    if len(records) < 2:
        raise DataError(f"{source}: found {len(records)} usable UTKFace images (file names like "
                        f"'25_0_1_20170116174525125.jpg.chip.jpg'); need at least 2.")
    if len(records) > 5000:
        print(f"looking for near-duplicates among {len(records)} faces (a minute or two for all of UTKFace)")
    groups = near_duplicate_groups(np.stack([r[0] for r in records]))
    train, test = _split_by_groups(len(records), groups, test_fraction, seed)
    if len(train) == 0:
        raise DataError(f"{source}: with near-duplicates kept together, no face is left for training; "
                        f"add more images or lower --test-fraction.")
    print(f"near-duplicates: {sum(map(len, groups))} faces in {len(groups)} groups (centred pixel correlation "
          f"above {NEAR_DUPLICATE}, as they are or mirrored), each group kept within one split")

    def write(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as zf:
            for split, idx in (("tr", train), ("te", test)):
                X = np.stack([records[i][0] for i in idx])
                y = np.array([records[i][1] for i in idx], dtype=np.float64)
                for key, arr in ((f"X{split}", X), (f"y{split}", y)):
                    buf = io.BytesIO()
                    np.save(buf, arr)
                    zf.writestr(f"age_regression_{key}.npy", buf.getvalue())
                text = io.StringIO()
                csv.writer(text, lineterminator="\n").writerows(
                    [("age", "gender", "race", "source")] + [records[i][1:] for i in idx])
                zf.writestr(f"meta_{split}.csv", text.getvalue())
            zf.writestr("README.txt", _DATA_README)

    _write_atomically(out, write)
    print(f"wrote {out}: {len(train)} train and {len(test)} test faces "
          f"({n_skipped} files skipped, {len(by_hash) - len(records)} conflicting duplicates dropped)")
    return out


# =============================================================================
# Model: z = W1 x + b1, h = relu(z), y^ = W2 h + b2, loss = mean squared error
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


def gradient_check(params, X, y, n_entries=None, seed=0, h=1e-5, forward_fn=None, backward_fn=None):
    """Compare backward with centered differences in float64, parameter by parameter (notebook 02 §6).

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


def add_weight_decay(grads, params, weight_decay):
    """L2 weight decay: add lambda * W, the gradient of lambda/2 * ||W||^2, to the gradients of W1 and W2
    (not the biases) and return grads (notebook 05 §2). train() calls it before each step."""
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


def _check_loss(loss, epoch, lr, start_loss):
    """Stop with advice when the loss is non-finite or has grown a thousandfold."""
    if not np.isfinite(loss) or loss > 1e3 * max(start_loss, 1.0):
        raise TrainingDiverged(
            f"Training diverged in epoch {epoch}: the loss became {loss:.3g} (it started at "
            f"{start_loss:.3g}). The learning rate {lr:g} is too large; try {lr / 10:g}.")


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


def train(X_train, y_train, X_val=None, y_val=None, n_hidden=DEFAULTS["n_hidden"], lr=DEFAULTS["lr"],
          lr_decay=DEFAULTS["lr_decay"], batch_size=DEFAULTS["batch_size"], epochs=DEFAULTS["epochs"],
          mirror=DEFAULTS["mirror"], seed=DEFAULTS["seed"], dtype=np.float32, snapshot_every=None,
          verbose=True, lesson=None, weight_decay=0.0, momentum=0.0, keep_best=False) -> Model:
    """Train the network with minibatch SGD and return a Model that predicts in years (notebook 03 §6).

    Inputs are standardised per pixel and targets scaled with training statistics; the loss
    in history is in those scaled units (1.0 = predicting the mean age). The learning rate of
    epoch e is lr * lr_decay**(e - 1): big steps early, small steps to settle. mirror=True also
    trains on every face flipped left-right (a mirrored face has the same age: twice the data for
    free). snapshot_every=k keeps a copy of W1 every k epochs (epoch 0 included) for the weight browser.
    lesson: whose forward, mse_loss, backward, sgd_step and train_epoch train (and later predict):
    this module's by default; fh.lesson_functions() hands in the notebooks' own.
    Notebook 05: weight_decay=lambda adds lambda * W to the gradients of W1 and W2 before each step
    (lesson.add_weight_decay); momentum=mu steps with a velocity (lesson.momentum_step); keep_best=True
    restores the weights of the epoch with the lowest validation RMSE (history["best_epoch"]).
    """
    lesson = lesson or _this_module
    if weight_decay < 0 or not 0 <= momentum < 1:
        raise ValueError(f"weight_decay must be >= 0 and momentum at least 0 and below 1 "
                         f"(got weight_decay={weight_decay:g}, momentum={momentum:g}).")
    if keep_best and X_val is None:
        raise ValueError("keep_best=True needs validation faces, train(X_train, y_train, X_val, y_val, ...): "
                         "the best epoch is the one with the lowest validation error.")
    dtype = np.dtype(dtype)
    X_train = as_face_rows(X_train, "X_train")
    y_train = as_ages(y_train, len(X_train), "y_train")
    n = len(X_train)
    Xs = np.empty((2 * n if mirror else n, N_PIXELS), dtype)  # the one whole-set copy training keeps
    Xs[:n] = X_train
    if mirror:
        for start in range(0, n, 4096):  # in chunks: a mirrored copy of all faces at once would cost ~130 MB more
            Xs[n + start:n + start + 4096] = mirror_faces(X_train[start:start + 4096])
        y_train = np.concatenate([y_train, y_train])
    x_mean, x_std = standardize_fit(Xs)
    Xs -= x_mean  # standardised in place
    Xs /= x_std
    y_mean, y_std = float(y_train.mean()), float(y_train.std()) or 1.0
    ys = ((y_train - y_mean) / y_std).astype(dtype)
    model = Model(init_params(n_hidden, seed=seed, dtype=dtype), x_mean, x_std, y_mean, y_std,
                  settings=dict(n_hidden=n_hidden, lr=lr, lr_decay=lr_decay, batch_size=batch_size, epochs=epochs,
                                mirror=mirror, seed=seed, dtype=dtype.name, weight_decay=weight_decay,
                                momentum=momentum, keep_best=keep_best), lesson=lesson)
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
    train_epoch = lesson.train_epoch
    if weight_decay or momentum:  # the same loop, stepping with weight decay and momentum (notebook 05)
        train_epoch = _epoch_with_extras(lesson, model.params, weight_decay, momentum)
    best = None  # (epoch, validation RMSE, copy of the weights) of the best epoch so far, for keep_best
    for epoch in range(1, epochs + 1):
        epoch_lr = lr * lr_decay ** (epoch - 1)
        with np.errstate(over="ignore", invalid="ignore"):  # a diverging run is reported by _check_loss
            train_loss = train_epoch(model.params, Xs, ys, epoch_lr, batch_size, rng)
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
        if keep_best and (best is None or val_rmse < best[1]):
            best = (epoch, val_rmse, {name: p.copy() for name, p in model.params.items()})
        if snapshot_every and epoch % snapshot_every == 0:
            history["W1_epochs"].append(epoch)
            history["W1_snapshots"].append(model.params["W1"].copy())
        if live:
            print("\r" + _progress(epoch, epochs, train_loss, val_rmse), end="", flush=True)
        elif verbose:
            print(_progress(epoch, epochs, train_loss, val_rmse))
    if live:
        print()
    if keep_best:  # early stopping, after the fact: the weights of the best epoch, not of the last
        history["best_epoch"] = best[0]
        model.params.update(best[2])
    model.history = history
    return model


def _epoch_with_extras(lesson, params, weight_decay, momentum):
    """lesson.train_epoch, stepping with weight decay and momentum (notebook 05 §2 and §3).

    The loop itself is not copied or changed: the same code runs with its name sgd_step bound to a
    step that adds lambda * W (lesson.add_weight_decay), then moves with a velocity kept for the
    whole run (lesson.momentum_step), or with lesson.sgd_step when momentum is 0.
    """
    import types
    needed = ["add_weight_decay"] * bool(weight_decay) + ["momentum_step"] * bool(momentum)
    for name in needed:
        if not callable(getattr(lesson, name, None)):
            raise AttributeError(f"the lesson has no {name}: write it in notebook 05 and hand it over with "
                                 f"the others, lesson.{name} = {name}, then fh.train(..., lesson=lesson).")
    velocity = {name: np.zeros_like(p) for name, p in params.items()}  # at rest before the first step
    n_steps = 0

    def step(params, grads, lr):
        nonlocal n_steps
        if weight_decay:
            grads = lesson.add_weight_decay(grads, params, weight_decay)
        if momentum:
            lesson.momentum_step(params, grads, velocity, lr, momentum)
        else:
            lesson.sgd_step(params, grads, lr)
        n_steps += 1

    loop = lesson.train_epoch
    loop = types.FunctionType(loop.__code__, dict(loop.__globals__, sgd_step=step), loop.__name__,
                              loop.__defaults__, loop.__closure__)

    def train_epoch(params, X, y, lr, batch_size, rng):
        before = n_steps
        loss = loop(params, X, y, lr, batch_size, rng)
        if n_steps == before:
            raise ValueError("train_epoch never called sgd_step, so weight decay and momentum could not act: "
                             "train() hands them to your loop through that name. Call sgd_step(params, grads, lr) "
                             "for each batch, as in notebook 03 §4.")
        return loss
    return train_epoch


# Whose code trains: the exercises of notebooks 02 and 03 define these functions (the classroom edition
# ships the exercises without answers, so there the student's own code is what trains).
LESSON_FUNCTIONS = {"forward": "02", "mse_loss": "02", "backward": "02", "sgd_step": "03", "train_epoch": "03"}


def lesson_functions(folder=None, verbose=True, names=None, **yours):
    """Your own forward, mse_loss, backward (notebook 02) and sgd_step, train_epoch (notebook 03), for
    fh.train(..., lesson=...) (notebook 03 §5): read from the saved notebooks, so save them first.

    From each notebook, the code cells that define one of these functions (with `def`, or by importing
    it from the teacher's released faceage_reference) are run, their imports and defs only, in a fresh
    namespace holding np and fh. folder: where the notebooks are (default: the current folder if it
    holds them, else notebooks/ beside this module). names: only these functions. yours: functions of
    the running notebook, used as they are (notebook 03 passes its sgd_step and train_epoch, so the
    versions in the kernel train, saved or not). The result's .who says whose code it is.
    """
    import ast
    import types
    wanted = [name for name in LESSON_FUNCTIONS if names is None or name in names]
    folders = [Path(folder)] if folder is not None else [Path.cwd(), HERE / "notebooks", HERE]
    namespace = {"np": np, "fh": _this_module}
    found = {name: "this notebook" for name in yours}
    for number in sorted({LESSON_FUNCTIONS[name] for name in wanted if name not in yours}):
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
            released = {(a.asname or a.name) for node in tree.body if isinstance(node, ast.ImportFrom)
                        and node.module == REFERENCE_MODULE for a in node.names}
            if not (defs | released) & {name for name, nb in LESSON_FUNCTIONS.items() if nb == number}:
                continue
            keep = [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.Import, ast.ImportFrom))]
            exec(compile(ast.Module(keep, type_ignores=[]), str(paths[0]), "exec"), namespace)
            found.update(dict.fromkeys(defs & set(LESSON_FUNCTIONS), paths[0].name))
            found.update(dict.fromkeys(released & set(LESSON_FUNCTIONS), f"the teacher's {REFERENCE_MODULE}.py"))
    missing = [name for name in wanted if name not in found]
    if missing:
        raise NameError(f"no `def {missing[0]}` found in notebook {LESSON_FUNCTIONS[missing[0]]}: write the "
                        f"exercise there, save the notebook, and run this cell again.")
    lesson = types.SimpleNamespace(**{name: yours.get(name, namespace.get(name)) for name in wanted})
    sources = dict.fromkeys(found[name] for name in wanted)
    lesson.who = "the code of your notebooks: " + "; ".join(
        f"{_join([n for n in wanted if found[n] == source])} from {source}" for source in sources)
    if verbose:
        print(f"{'Training runs' if names is None else 'Using'} {lesson.who}.")
    return lesson


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
    return None


def load_model(path) -> Model:
    """Load a model written by save_model, after checking its shapes, dtypes and finiteness (command line: evaluate)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"No model file at {path}. Train one first: python faceage_helpers.py "
                        f"(it writes model.npz).")
    fix = "Train and save it again: python faceage_helpers.py (it writes model.npz), or fh.save_model()."
    with _open_zip(path, f"It is not a FaceAge model file. {fix}") as zf:
        missing = [k for k in MODEL_ARRAYS if f"{k}.npy" not in zf.namelist()]
        if missing:
            raise DataError(f"{path} is not a FaceAge model file (it has no {missing[0]}). {fix}")
        a = {k: _read_npy(zf, f"{k}.npy", path, MAX_HIDDEN * N_PIXELS, fix, kinds="uifU") for k in MODEL_ARRAYS}
    problem = _check_model_arrays(a)
    try:
        settings = json.loads(str(a["settings"]))
    except ValueError as e:
        problem = problem or f"its settings are not JSON ({e})"
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


def fit_ridge(X, y, lam=100.0, chunk=2048):
    """Ridge regression in closed form, w = (Xc^T Xc + lam I)^-1 Xc^T yc on centred data; returns
    predict(X) (notebook 01 §5, inside fh.baselines).

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
# Weight browsers: the interactive widgets of notebooks 04 and 06
# =============================================================================
# Each browser is a VBox(IntSlider, HTML caption, Output holding one PNG). Everything slow
# (activations, gradients, rankings, colour limits, the figure itself) is done once when the browser is built;
# a slider move only swaps new pictures and numbers into that figure and its PNG into the Output.

BROWSER_DPI = 80  # small PNGs: a redraw stays well under a second, and projects fine


def hidden_activations(model, X):
    """Hidden activations h = relu(W1 x + b1), shape (N, hidden), of faces X standardised as in training
    (notebook 04 §3)."""
    H = np.empty((len(X), len(model.params["W1"])), dtype=model.params["W1"].dtype)
    for rows, _, (_, _, H_rows) in _forward_in_chunks(model, X):
        H[rows] = H_rows
    return H


def input_gradient(model, X, backward_to_input, batch_size=1024):
    """dŷ/dx for every face X: how many years the predicted age moves per unit of brightness of each
    pixel (0 black, 1 white), shape (N, 2304), computed with your backward_to_input (notebook 06 §4).

    The model's own forward (model.lesson.forward) runs on the faces standardised as in training;
    backward_to_input(params, cache, dy_hat) then gets dy_hat = 1 for every face, so row n is
    dŷ_n/dx_n (face n's prediction depends on face n alone). The chain rule through the two
    scalings, x' = (x - mean) / std and age = y' * y_std + y_mean, multiplies by y_std / x_std.
    """
    if not callable(backward_to_input):
        raise TypeError(f"backward_to_input must be your function backward_to_input(params, cache, dy_hat) "
                        f"(notebook 06 §2), not a {type(backward_to_input).__name__}.")
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


def input_gradient_browser(model, X_faces, ages, backward_to_input, face=0):
    """A slider over faces: each face, its gradient map dŷ/dx, and the predicted age (notebook 06 §5).

    The maps come from input_gradient with your backward_to_input, once for all faces. They share one
    colour scale (99.9% of all |dŷ/dx| fit in it), so a face whose prediction reacts more strongly to
    its pixels looks stronger. Returns a VBox (IntSlider "face", HTML caption "face i of N: ...", Output).
    """
    from matplotlib import colormaps
    from matplotlib.colors import Normalize
    X = as_face_rows(X_faces, "X_faces")
    ages = as_ages(ages, len(X), "ages")
    if not 0 <= int(face) < len(X):
        raise ValueError(f"face must be between 0 and {len(X) - 1} (there are {len(X)} faces), got {face}.")
    G = input_gradient(model, X, backward_to_input)
    pred = predict(model, X)
    lim = float(np.percentile(np.abs(G), 99.9)) or 1.0
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

    def view(i):
        g = G[i].reshape(IMAGE_SHAPE)
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


# =============================================================================
# Exercise checks: run right after each exercise in the notebooks
# =============================================================================
# check_forward(forward) and its siblings run your function on small, seeded float64 problems and
# compare what it returns with the reference answers to those problems. They print one line when
# it agrees; otherwise they raise ExerciseCheckError saying what is wrong and how to fix it.
# The reference answers, and the typical wrong answers the checks recognise, come from
# _reference_answers(): computed with this module's reference code here, and read from
# check_answers.npz in the classroom edition, whose module has no reference code to compute them
# (tools/make_student.py writes that file).
# (__tracebackhide__ = True: IPython and pytest then show the message, not the checks' own code.)

class ExerciseCheckError(AssertionError):
    """An exercise check failed; the message names the likely mistake and how to fix it (notebook 02 §3)."""


CHECK_TOL = 1e-6  # rel_error below which your array counts as equal to the reference
CHECK_ANSWERS_FILE = HERE / "check_answers.npz"  # only in the classroom edition
REFERENCE_MODULE = "faceage_reference"  # the file `make reference` writes, released after the deadline
# (N, batch_size, seed) of the train_epoch check's epochs: last batches of 3, 1 and 4 samples, and one
# batch larger than N, so that loops which drop or repeat a batch, or an unweighted mean, show up.
EPOCH_CASES = ((11, 4, 0), (9, 4, 1), (12, 4, 2), (5, 8, 3))
SHUFFLES = ("rng.permutation", "rng.choice", "no shuffle")  # the orders the train_epoch check recognises
_ref = _this_module  # check_x(x) parameters shadow the reference x
_answers = {}


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
    if fn is getattr(_ref, name, None):
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


def _one_hot_problem(n, n_hidden=3, seed=0):
    """n samples where sample i is pixel i (X = I): only a step on sample i moves column i of W1."""
    rng = np.random.default_rng(seed)
    params = {"W1": 0.1 * rng.standard_normal((n_hidden, n)),
              "b1": np.ones(n_hidden),  # z > 0 for every sample: every visit moves its column of W1
              "W2": rng.standard_normal((1, n_hidden)), "b2": np.zeros(1)}
    return params, np.eye(n), rng.standard_normal(n)


def _decay_problem():
    """Parameters, their gradients and lambda for the add_weight_decay check."""
    params, grads, _ = _sgd_problem()
    return params, grads, 0.1


def _momentum_problem():
    """Parameters, the gradients of three steps, lr and momentum for the momentum_step check."""
    rng = np.random.default_rng(1)
    shapes = {"W1": (3, 4), "b1": (3,), "W2": (1, 3), "b2": (1,)}
    params = {k: rng.standard_normal(s) for k, s in shapes.items()}
    return params, [{k: rng.standard_normal(s) for k, s in shapes.items()} for _ in range(3)], 0.1, 0.9


def _reference_answers():
    """Every answer the checks compare with, from this module's reference functions: {key: array}.

    tools/make_student.py saves them as check_answers.npz for the classroom edition, whose module
    has no reference code (this function included).
    """
    out = {}
    params, X, y = _net_problem()
    W1, b1, W2, b2 = params["W1"], params["b1"], params["W2"], params["b2"]
    y_hat, (_, Z, H) = forward(params, X)
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
    p, g, lr = _sgd_problem()
    for k in p:
        out.update({f"sgd_step.{k}": p[k] - lr * g[k], f"sgd_step.{k}.uphill": p[k] + lr * g[k],
                    f"sgd_step.{k}.without_lr": p[k] - g[k]})
    for n, batch_size, seed in EPOCH_CASES:
        start, X, y = _one_hot_problem(n, seed=seed)
        orders = {"rng.permutation": np.random.default_rng(seed).permutation(n),
                  "rng.choice": np.random.default_rng(seed).choice(n, n, replace=False),
                  "no shuffle": np.arange(n)}
        for how, order in orders.items():  # replay the lesson loop in this order, keeping every batch's loss
            key, p, losses = f"epoch{n}_{batch_size}.{how}", _copy(start), []
            for s in range(0, n, batch_size):
                batch = order[s:s + batch_size]
                y_hat, cache = forward(p, X[batch])
                loss, dy = mse_loss(y_hat, y[batch])
                sgd_step(p, backward(p, cache, dy), 1e-3)
                losses.append(loss)
            sizes = [len(order[s:s + batch_size]) for s in range(0, n, batch_size)]
            out.update({f"{key}.{k}": v for k, v in p.items()})
            out.update({f"{key}.order": order, f"{key}.loss": np.array(np.dot(losses, sizes) / n),
                        f"{key}.loss_unweighted": np.array(np.mean(losses)),
                        f"{key}.loss_sum": np.array(np.sum(losses)), f"{key}.loss_last": np.array(losses[-1])})
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
        raise ExerciseCheckError("forward: it must return (y_hat, cache) with cache = (X, Z, H), the "
                                 "values backward needs: end with `return y_hat, (X, Z, H)`.")
    y_hat, (X_out, Z, H) = out
    _fail_if("forward", _mismatch("the X in the cache", X_out, X, "the cache is (X, Z, H), in that order."))
    _fail_if("forward", _mismatch(
        "Z", Z, Z_ref, "Z = X @ W1.T + b1 (one row per face, one column per hidden unit).",
        mistakes=[(_answer("forward.Z_without_b1"), "b1 is missing: Z = X @ W1.T + b1."),
                  (_answer("forward.Z_minus_b1"), "b1 is subtracted: Z = X @ W1.T + b1.")],
        shapes={(hidden, N): "it looks transposed (hidden units in rows): X @ W1.T + b1 puts faces in rows."}))
    _fail_if("forward", _mismatch(
        "H", H, H_ref, "H = relu(Z) = np.maximum(Z, 0).",
        mistakes=[(Z_ref, "it equals Z: the ReLU is missing: H = np.maximum(Z, 0)."),
                  (Z_ref > 0, "it is the mask Z > 0; the ReLU keeps the values: H = np.maximum(Z, 0)."),
                  (np.minimum(Z_ref, 0), "it keeps the negative values; ReLU keeps the positive ones: "
                                         "H = np.maximum(Z, 0).")]))
    _fail_if("forward", _mismatch(
        "y_hat", y_hat, _answer("forward.y_hat"), "y_hat = H @ W2[0] + b2[0] (one age per face).",
        mistakes=[(_answer("forward.y_without_b2"), "b2 is missing: y_hat = H @ W2[0] + b2[0]."),
                  (_answer("forward.y_from_Z"), "it uses Z; the output layer reads H, after the ReLU: "
                                                "y_hat = H @ W2[0] + b2[0].")],
        shapes={(N, 1): "H @ W2.T is (N, 1); one number per face is H @ W2[0] + b2[0] (or .ravel()).",
                (1, N): "W2 @ H.T is (1, N); one number per face is H @ W2[0] + b2[0]."}))
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
            raise ExerciseCheckError("mse_loss: it must return two things, the loss and its gradient: end "
                                     "with `return loss, dy_hat`.")
        loss, dy_hat = out
        _fail_if("mse_loss", _mismatch(
            f"the loss (N = {n})", loss, _answer(f"mse_loss{n}.loss"), "L = mean((y_hat - y)^2), one number.",
            mistakes=[(_answer(f"mse_loss{n}.mae"), "it is the mean absolute error; square the differences: "
                                                    "np.mean((y_hat - y) ** 2).")],
            shapes={(n,): "it has one squared error per face; the loss is their mean, one number: np.mean(...)."},
            factors={n: f"{n} times too large (N = {n}): it is the sum of the squared errors; the mean divides by N.",
                     -1: "negative: square the differences, (y_hat - y) ** 2."}),
            _mismatch(
            f"dy_hat (N = {n})", dy_hat, _answer(f"mse_loss{n}.dy_hat"),
            "dL/dy_hat = 2 (y_hat - y) / N, one entry per face.",
            shapes={(): "it is one number; dL/dy_hat has one entry per face: 2 (y_hat - y) / N, shape (N,).",
                    (1,): "it is one number; dL/dy_hat has one entry per face: 2 (y_hat - y) / N, shape (N,).",
                    (n, 1): "it is a column; keep the shape of y_hat, (N,).", (1, n): "keep the shape of y_hat, (N,)."},
            factors={-1: "minus the right values: the derivative of (y_hat - y)^2 with respect to y_hat is "
                         "2 (y_hat - y), not 2 (y - y_hat).",
                     n: f"{n} times too large (N = {n}): the mean's 1/N stays in the gradient: 2 (y_hat - y) / N.",
                     0.5: "half the right values: d(u^2)/du = 2u, so keep the factor 2.",
                     n / 2: f"{n / 2:g} times too large: it lacks the 2 and the 1/N: 2 (y_hat - y) / N."}))
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
        raise ExerciseCheckError(f"backward: it must return a dict of gradients named like the parameters, "
                                 f"{{'W1': dW1, 'b1': db1, 'W2': dW2, 'b2': db2}}, not a {type(grads).__name__}.")
    missing = [k for k in params if k not in grads]
    if missing:
        raise ExerciseCheckError(f"backward: no gradient for {', '.join(missing)} (the dict has keys "
                                 f"{', '.join(map(repr, grads)) or 'none'}). Name each gradient like its "
                                 f"parameter: {{'W1': dW1, 'b1': db1, 'W2': dW2, 'b2': db2}}.")
    N, hidden = Z.shape
    scale = {-1: "minus the right values: a sign error. backward returns the gradient itself; "
                 "the minus of gradient descent belongs in sgd_step.",
             1 / N: f"{N} times too small (N = {N} faces): dy_hat already holds the 1/N of the mean "
                    f"(it is 2 (y^ - y) / N), so don't divide by N again, and sum (not average) over the batch.",
             N: f"{N} times too large (N = {N} faces): dy_hat already holds the 1/N of the mean; "
                f"don't multiply by N.",
             2: "2 times too large: dy_hat already holds the 2 of d(u^2)/du = 2u.",
             0.5: "half the right values: don't divide by 2; dy_hat = 2 (y^ - y) / N is the whole loss gradient."}
    no_mask = "the ReLU mask is missing: gradient flows back only where z > 0, so dZ = dH * (Z > 0)"
    times_h = "dH is multiplied by H; multiply it by the ReLU mask: dZ = dH * (Z > 0)."
    problems = {
        "dW2": _mismatch(
            "dW2", grads["W2"], _answer("backward.dW2"), "dW2 = dy_hat[None, :] @ H, shape (1, hidden) like W2.",
            mistakes=[(_answer("backward.dW2_from_Z"), "it uses Z; this layer's input is H = relu(Z): "
                                                       "dW2 = dy_hat[None, :] @ H.")],
            shapes={(hidden,): "a gradient has its parameter's shape: dW2 = dy_hat[None, :] @ H is (1, hidden).",
                    (hidden, 1): "it looks transposed: dW2 = dy_hat[None, :] @ H has W2's shape (1, hidden).",
                    (N, hidden): "it is not summed over the batch: dy_hat[None, :] @ H adds up the faces' terms."},
            factors=scale),
        "db2": _mismatch(
            "db2", grads["b2"], _answer("backward.db2"), "db2 = dy_hat.sum(keepdims=True), shape (1,) like b2.",
            shapes={(): "a gradient has its parameter's shape: db2 = dy_hat.sum(keepdims=True) is (1,).",
                    (N,): "it is not summed over the batch: db2 = dy_hat.sum(keepdims=True)."},
            factors=scale),
        "dW1": _mismatch(
            "dW1", grads["W1"], _answer("backward.dW1"),
            "dW1 = dZ.T @ X with dZ = dH * (Z > 0) and dH = dy_hat[:, None] * W2.",
            mistakes=[(_answer("backward.dW1_without_mask"), no_mask + "; then dW1 = dZ.T @ X."),
                      (_answer("backward.dW1_times_H"), times_h)],
            shapes={(N_PIXELS, hidden): "it looks transposed: dW1 = dZ.T @ X has W1's shape (hidden, 2304)."},
            factors=scale),
        "db1": _mismatch(
            "db1", grads["b1"], _answer("backward.db1"),
            "db1 = dZ.sum(axis=0): one entry per hidden unit, summed over the faces.",
            mistakes=[(_answer("backward.db1_without_mask"), no_mask + "; then db1 = dZ.sum(axis=0)."),
                      (_answer("backward.db1_times_H"), times_h)],
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
    """Check your centered differences on f(x) = sum(c x^2 / 2 + b x) (notebook 02 §5)."""
    __tracebackhide__ = True
    if _not_yours("numerical_gradient", numerical_gradient):
        return
    x, c, b, indices, h = _quadratic_problem()

    def f():  # its gradient is c x + b; centered differences are exact for a quadratic
        return float(np.sum(0.5 * c * x ** 2 + b * x))

    x0 = x.copy()
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
        "the result", got, _answer("numerical_gradient"),
        "for each i in indices: (f() at x[i] + h  -  f() at x[i] - h) / (2 h).",
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
    """Check that your sgd_step(params, grads, lr) moves every parameter by -lr * gradient, in place
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
        raise ExerciseCheckError(
            f"sgd_step: it puts new arrays into params ({', '.join(rebound)}) instead of changing the arrays "
            f"already there, which other code (your training loop, the model) still holds. Update in place: "
            f"params[name] -= lr * grads[name].")
    if len(unchanged) == len(arrays):
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
        k, arrays[k], _answer(f"sgd_step.{k}"), "p -= lr * g: a step of size lr against the gradient.",
        mistakes=[(_answer(f"sgd_step.{k}.uphill"), "it moves along the gradient (uphill, the loss grows): "
                                                   "subtract it, p -= lr * g."),
                  (_answer(f"sgd_step.{k}.without_lr"), "the step ignores the learning rate: p -= lr * g.")])
        for k in arrays}))
    print("sgd_step: all checks passed.")


def _problem_of(check, fn):
    """The message check(fn) fails with, or None when fn passes (its success line is not printed)."""
    import contextlib
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            check(fn)
        except ExerciseCheckError as e:
            return str(e)
    return None


def _broken_helper(train_epoch):
    """A message naming the first function train_epoch calls (by name) that fails its own check, or None.

    A train_epoch that is right but calls a wrong sgd_step (or backward, ...) gives wrong parameters:
    the fault, and the fix, are in that function.
    """
    names = getattr(train_epoch, "__globals__", {})
    helpers = {"forward": check_forward, "mse_loss": check_mse_loss, "backward": check_backward,
               "sgd_step": check_sgd_step}
    for name, check in helpers.items():
        fn = names.get(name)
        if callable(fn) and fn is not getattr(_ref, name) and getattr(fn, "__module__", None) != REFERENCE_MODULE:
            problem = _problem_of(check, fn)
            if problem:
                return (f"train_epoch calls your {name}, and {name} is not right yet, so train_epoch cannot "
                        f"be either: fix {name} first (fh.check_{name}({name}) says: {problem})")
    return None


def _batch_sizes(n, batch_size):
    sizes = [min(batch_size, n - s) for s in range(0, n, batch_size)]
    return ", ".join(map(str, sizes[:-1])) + f" and {sizes[-1]}" if len(sizes) > 1 else str(sizes[0])


def _check_one_epoch(train_epoch, n, batch_size, seed, shuffle=None):
    """One epoch of your train_epoch on a one-hot problem, compared with the reference replays.

    Returns how it shuffles (one of SHUFFLES); shuffle: the way found in an earlier epoch, now required.
    """
    __tracebackhide__ = True
    name, lr = "train_epoch", 1e-3
    start, X, y = _one_hot_problem(n, seed=seed)
    params, rng = _copy(start), np.random.default_rng(seed)
    rng_state = rng.bit_generator.state
    loss = _run(name, train_epoch, params, X, y, lr, batch_size, rng)
    where = f"with N = {n} and batch_size = {batch_size}"
    frozen = [k for k in start if np.array_equal(params[k], start[k])]
    if frozen:
        raise ExerciseCheckError(f"{name}: {', '.join(frozen)} did not change during the epoch: after "
                                 f"backward, call sgd_step(params, grads, lr) for each batch.")
    replays = {how: (_answer(f"epoch{n}_{batch_size}.{how}.order"),
                     {k: _answer(f"epoch{n}_{batch_size}.{how}.{k}") for k in start}) for how in SHUFFLES}
    visited = np.any(params["W1"] != start["W1"], axis=0)
    if not visited.all():
        missed, r = set(np.flatnonzero(~visited).tolist()), n % batch_size or batch_size
        if any(missed == set(order[-r:].tolist()) for order, _ in replays.values()):
            raise ExerciseCheckError(
                f"{name}: the last batch is dropped: {where} the batches have {_batch_sizes(n, batch_size)} "
                f"samples, and the last {r} sample{'s were' if r > 1 else ' was'} never used. Loop over start in "
                f"range(0, N, batch_size) (not N - 1 or N - batch_size); the slice order[start:start + batch_size] "
                f"is shorter at the end.")
        if visited.sum() == min(batch_size, n):
            raise ExerciseCheckError(
                f"{name}: every step used the same batch: only {batch_size} of {n} samples were visited. "
                f"Take batch = order[start:start + batch_size] for start = 0, batch_size, 2 * batch_size, ...")
        raise ExerciseCheckError(
            f"{name}: {len(missed)} of {n} samples were never used ({where}): one epoch visits every sample "
            f"exactly once. Shuffle once per epoch, order = rng.permutation(N), then walk through it in slices "
            f"of batch_size (random draws per batch repeat some samples and miss others).")
    matches = [how for how, (_, p) in replays.items() if all(_close(params[k], p[k], 1e-9) for k in p)]
    match = matches[0] if matches else None
    if match == "no shuffle" and n > 1:
        raise ExerciseCheckError(
            f"{name}: the samples are not shuffled: every epoch would see them in the same order. "
            f"Shuffle with the rng you are given: order = rng.permutation(N); batch = order[start:start + batch_size].")
    if match is None:
        if rng.bit_generator.state == rng_state:
            again = _copy(start)
            _run(name, train_epoch, again, X, y, lr, batch_size, np.random.default_rng(seed + 100))
            if all(np.array_equal(again[k], params[k]) for k in start):
                raise ExerciseCheckError(
                    f"{name}: it seeds its own generator (a fixed seed inside train_epoch, e.g. "
                    f"np.random.default_rng(0) or np.random.seed(0)), so it shuffles the same way whatever rng it "
                    f"is given: every epoch of a run then sees the samples in the same order. Shuffle with the rng "
                    f"argument: order = rng.permutation(N).")
            raise ExerciseCheckError(
                f"{name}: it does not use the rng argument but an unseeded generator of its own (np.random or "
                f"np.random.default_rng() without a seed), so the caller's seed does not control the shuffle "
                f"and a run cannot be repeated. Shuffle with it: order = rng.permutation(N).")
        moved = sum(np.sum((params[k] - start[k]) ** 2) for k in start) ** 0.5
        ref = replays["rng.permutation"][1]
        ratio = moved / sum(np.sum((ref[k] - start[k]) ** 2) for k in start) ** 0.5
        if ratio > 1.5:
            raise ExerciseCheckError(
                f"{name}: the parameters moved {ratio:.1f} times as far as in one reference epoch ({where}): one "
                f"epoch visits each sample once, with one sgd_step per batch.")
        raise ExerciseCheckError(
            f"{name}: after one epoch {where} the parameters differ from a reference epoch with the same rng. "
            f"Check that X and y are indexed with the same batch indices, that each batch goes through forward, "
            f"mse_loss, backward and one sgd_step with lr, and shuffle with order = rng.permutation(N) so "
            f"this check can replay your epoch.")
    if shuffle is not None and shuffle not in matches:
        raise ExerciseCheckError(f"{name}: {where} it shuffles differently than with N = {EPOCH_CASES[0][0]}; "
                                 f"shuffle the same way every epoch: order = rng.permutation(N).")
    match = shuffle or match
    key = f"epoch{n}_{batch_size}.{match}"
    n_batches = -(-n // batch_size)
    _fail_if(name, _mismatch(
        f"the returned loss ({where})", loss, _answer(f"{key}.loss"),
        "return the mean loss of the epoch: add up loss * len(batch) over the batches, then divide by N.",
        mistakes=[(_answer(f"{key}.loss_unweighted"), "it is the plain mean of the batch losses, but the last "
                   f"batch is smaller (the batches have {_batch_sizes(n, batch_size)} samples): weight each batch's "
                   f"loss by its size, total_loss += loss * len(batch), and return total_loss / N."),
                  (_answer(f"{key}.loss_sum"), f"it is the sum of the {n_batches} batch losses: add up "
                   f"loss * len(batch) and divide by N, the mean over the samples."),
                  (_answer(f"{key}.loss_last"), "it is the last batch's loss: add up every batch's "
                   "loss * len(batch) during the loop and return total_loss / N after it.")],
        tol=1e-9))
    return match


def check_train_epoch(train_epoch):
    """Check your train_epoch(params, X, y, lr, batch_size, rng) over epochs of several sizes (notebook 03 §4).

    The inputs are one-hot (sample i is pixel i), so the columns of W1 that moved tell which
    samples the epoch visited; the parameters at the end are compared with reference epochs.
    """
    __tracebackhide__ = True
    if _not_yours("train_epoch", train_epoch):
        return
    try:
        shuffle = None
        for n, batch_size, seed in EPOCH_CASES:
            shuffle = _check_one_epoch(train_epoch, n, batch_size, seed, shuffle)
    except ExerciseCheckError as error:
        blame = _broken_helper(train_epoch)
        if blame:
            raise ExerciseCheckError(blame) from None
        raise error from None
    print("train_epoch: all checks passed.")


def check_weight_image(weight_image):
    """Check that your weight_image(W1, j) returns row j of W1 as a 48x48 image (notebook 04 §2)."""
    __tracebackhide__ = True
    if _not_yours("weight_image", weight_image):
        return
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


def check_add_weight_decay(add_weight_decay):
    """Check that your add_weight_decay(grads, params, weight_decay) adds weight_decay * W to the
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
        raise ExerciseCheckError(
            f"{name}: it changed params ({_join(changed)}); it only adds lambda * W to the gradients. The step "
            f"then moves the weights, p -= lr * (g + lambda * W): shrinking them here as well applies the decay twice.")
    if result is None:
        raise ExerciseCheckError(f"{name}: it returns None: end with `return grads` (train() takes the step "
                                 f"with the gradients it returns).")
    if not isinstance(result, dict) or any(k not in result for k in grads):
        raise ExerciseCheckError(f"{name}: it must return the dict of gradients with all four keys, W1, b1, W2 "
                                 f"and b2, with lambda * W added to W1's and W2's.")
    weights = {"none": "lambda * W is missing: add weight_decay * params[name] to the gradients of W1 and W2.",
               "one": "the factor lambda is missing: add weight_decay * W, not W.",
               "twice": "lambda * W is added twice (or the 1/2 of lambda/2 ||W||^2 was dropped: the derivative "
                        "of lambda/2 w^2 is lambda w).",
               "half": "it adds lambda/2 * W: the derivative of lambda/2 w^2 is lambda w (the 2 of the square "
                       "cancels the 1/2).",
               "minus": "lambda * W is subtracted: the penalty's gradient is added to the loss's (the step "
                        "subtracts the sum).",
               "only": "it replaces backward's gradient by lambda * W: add it, "
                       "grads[name] + weight_decay * params[name]."}
    biases = {"lambda": "the bias is decayed too: the penalty is on the weights W1 and W2 only (a bias multiplies "
                        "no pixel, and keeping it free costs no overfitting): leave its gradient as backward "
                        "computed it.",
              "one": "the bias is decayed too, without the factor lambda: decay W1 and W2 only."}
    _fail_if(name, *_grouped({k: _mismatch(
        k, result[k], _answer(f"{name}.{k}"),
        f"{k}'s gradient is backward's plus lambda * {k}." if k[0] == "W" else
        f"leave the gradient of {k} as backward computed it.",
        mistakes=[(_answer(f"{name}.{k}.{how}"), text) for how, text in (weights if k[0] == "W" else biases).items()])
        for k in grads}))
    print(f"{name}: all checks passed.")


def check_momentum_step(momentum_step):
    """Check three steps of your momentum_step(params, grads, velocity, lr, momentum) against
    v <- momentum * v - lr * g, then p <- p + v, from a velocity of zeros (notebook 05 §3)."""
    __tracebackhide__ = True
    name = "momentum_step"
    if _not_yours(name, momentum_step):
        return
    _, all_grads, lr, mu = _momentum_problem()
    velocity_mistakes = {
        "uphill": "it has the wrong sign: v <- momentum * v - lr * g (the velocity points downhill, against the "
                  "gradient).",
        "forgets": "the new velocity forgets the old one: v <- momentum * v - lr * g keeps a fraction momentum of "
                   "it (is velocity reset, or not kept, between steps?).",
        "without_momentum": "the factor momentum is missing: v <- momentum * v - lr * g.",
        "without_lr": "the learning rate is missing: v <- momentum * v - lr * g (then p <- p + v, without lr).",
        "average": "this is a running average of the gradients; this notebook's momentum is "
                   "v <- momentum * v - lr * g, then p <- p + v."}
    param_mistakes = {
        "minus_v": "it has the wrong sign: p <- p + v (v already points downhill).",
        "old_v": "it moved with the velocity of the step before (at the first step: not at all): update v "
                 "first, then p <- p + v.",
        "start": "it did not change: p += v, in place, for every parameter.",
        "sgd": "it took a plain SGD step: p <- p + v, with the new velocity."}
    for t, grads in enumerate(all_grads, 1):  # each step starts from the reference's state after the step before
        params = {k: np.array(_answer(f"momentum{t}.p_start.{k}")) for k in grads}
        velocity = {k: np.array(_answer(f"momentum{t}.v_start.{k}")) for k in grads}
        arrays, v_before = dict(params), _copy(velocity)  # arrays: the update must change them in place
        _run(name, momentum_step, params, {k: g.copy() for k, g in grads.items()}, velocity, lr, mu)
        at = f"{name} (step {t} of 3)"
        rebound = [k for k in grads if params.get(k) is not arrays[k]]
        if rebound:
            raise ExerciseCheckError(
                f"{at}: it puts new arrays into params ({_join(rebound)}) instead of changing the arrays already "
                f"there, which the training loop and the model still hold. Update in place: params[name] += v.")
        if any(k not in velocity for k in grads):
            raise ExerciseCheckError(f"{at}: velocity lost one of its keys W1, b1, W2, b2: update velocity[name] "
                                     f"for every parameter (in place, or velocity[name] = ...).")
        still = [k for k in grads if np.array_equal(velocity[k], v_before[k])]
        if still and len(still) < len(grads):
            raise ExerciseCheckError(f"{at}: the velocity of {_join(still)} did not change: update every "
                                     f"parameter and its velocity (loop over params.items()).")
        if still:
            raise ExerciseCheckError(
                f"{at}: velocity did not change, so the next step cannot remember this one (every step would be "
                f"plain SGD). Keep the new velocity in the dict you are given: v = velocity[name]; v *= momentum; "
                f"v -= lr * g (a new array, `v = momentum * v - lr * g`, only renames; velocity[name] = ... "
                f"stores it).")
        _fail_if(at, *("velocity: " + line for line in _grouped({k: _mismatch(
            k, velocity[k], _answer(f"momentum{t}.v.{k}"), "v <- momentum * v - lr * g.",
            mistakes=[(_answer(f"momentum{t}.v.{k}.{how}"), text) for how, text in velocity_mistakes.items()])
            for k in grads})))
        _fail_if(at, *("params: " + line for line in _grouped({k: _mismatch(
            k, params[k], _answer(f"momentum{t}.p.{k}"), "p <- p + v, with the velocity of this step.",
            mistakes=[(_answer(f"momentum{t}.p.{k}.{how}"), text) for how, text in param_mistakes.items()])
            for k in grads})))
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
              hint="dZ is (N, hidden) and W1 is (hidden, 2304), so dX = dZ @ W1 needs no .T: for one face "
                   "dx = W1^T dz, and with faces in rows that product becomes dz @ W1.")
    _fail_if(name, _mismatch(
        "dX", dX, _answer(f"{name}.dX"), "dH = dy_hat[:, None] * W2, dZ = dH * (Z > 0), then dX = dZ @ W1.",
        mistakes=[(_answer(f"{name}.without_mask"), "the ReLU mask is missing: gradient reaches the pixels only "
                                                    "through units that are on, so dZ = dH * (Z > 0); then "
                                                    "dX = dZ @ W1."),
                  (_answer(f"{name}.times_H"), "dH is multiplied by H; multiply it by the ReLU mask: "
                                               "dZ = dH * (Z > 0)."),
                  (_answer(f"{name}.without_dy_hat"), "dy_hat is missing: dH = dy_hat[:, None] * W2 (with dy_hat = 1 "
                                                      "for every face, dX is dŷ/dx).")],
        shapes={(hidden, N_PIXELS): "that is the shape of W1 and of dW1 = dZ.T @ X, the gradient for the "
                                    "weights, summed over the faces. For the faces swap the roles of X and W1: "
                                    "dX = dZ @ W1, one row per face.",
                (N_PIXELS, N): "it looks transposed: dX has the shape of X, one row per face: dX = dZ @ W1.",
                (N, hidden): "that is dZ; one more step takes it to the pixels: dX = dZ @ W1.",
                (N_PIXELS,): "it is summed over the faces; each face has its own gradient: dX = dZ @ W1 is (N, 2304)."},
        factors={-1: "minus the right values: a sign error; return the gradient itself.",
                 1 / N: f"{N} times too small (N = {N} faces): dy_hat already holds the 1/N of the mean; "
                        f"don't divide by N again.",
                 N: f"{N} times too large (N = {N} faces): dy_hat already holds the 1/N of the mean."}))
    print(f"{name}: all checks passed.")


# =============================================================================
# Command line
# =============================================================================


def _cmd_train(args):
    t0 = time.perf_counter()
    out = Path(args.out)
    if out.exists() and not out.is_dir():  # checked now, not after an hour of training
        raise DataError(f"--out {out} is a file; give a folder for weight_images/ and model.npz, e.g. --out results")
    data = load_data(args.data)
    print(data.summary())
    baseline_rows = baselines(data)  # ridge needs the whole training split: fit it before training
    X_train, y_train, X_val, y_val = train_val_split(data.Xtr, data.ytr, args.val_fraction, args.seed)
    X_test, y_test = data.Xte, data.yte
    del data  # the split holds the training faces now; dropping the original keeps the peak near 0.5 GB
    print(f"training on {len(X_train)} faces, validating on {len(X_val)}: hidden={args.hidden} "
          f"lr={args.lr:g} (x{args.lr_decay:g} per epoch) batch={args.batch_size} epochs={args.epochs} "
          f"mirror={args.mirror} seed={args.seed} dtype={args.dtype}")
    model = train(X_train, y_train, X_val, y_val, n_hidden=args.hidden, lr=args.lr, lr_decay=args.lr_decay,
                  mirror=args.mirror, batch_size=args.batch_size, epochs=args.epochs, seed=args.seed, dtype=args.dtype)
    rows = {f"network ({split})": regression_metrics(y, predict(model, X))
            for split, X, y in (("train", X_train, y_train), ("validation", X_val, y_val),
                                ("test", X_test, y_test))}
    rows.update({f"baseline: {k} (test)": v for k, v in baseline_rows.items()})
    print(format_metrics_table(rows))
    paths = save_weight_images(model.params["W1"], out / "weight_images")
    args.written.append(out / "weight_images")
    save_model(model, out / "model.npz")
    args.written.append(out / "model.npz")
    print(f"wrote {len(paths) - 1} weight images and weight_grid.png to {out / 'weight_images'}, "
          f"and {out / 'model.npz'} ({time.perf_counter() - t0:.0f} s)")


def _cmd_evaluate(args):
    model = load_model(args.model)
    data = load_data(args.data)
    m = regression_metrics(data.yte, predict(model, data.Xte))
    print(f"{args.model} on the test split of {data.path}: RMSE {m['rmse']:.2f} years, MAE {m['mae']:.2f} years")


def _cmd_build_data(args):
    build_data_zip(args.source, args.out, args.test_fraction, args.seed)
    args.written.append(Path(args.out))


# Each command's options and their defaults. The parser itself has no defaults (SUPPRESS), so the
# parsed arguments hold exactly what was typed, before or after the command's name; main() refuses an
# option the command does not use and fills in the rest from here.
COMMAND_OPTIONS = {
    "train": dict(data=None, hidden=DEFAULTS["n_hidden"], lr=DEFAULTS["lr"], lr_decay=DEFAULTS["lr_decay"],
                  batch_size=DEFAULTS["batch_size"], epochs=DEFAULTS["epochs"], mirror=DEFAULTS["mirror"],
                  seed=DEFAULTS["seed"], val_fraction=DEFAULTS["val_fraction"], dtype="float32", out="."),
    "evaluate": dict(model="model.npz", data=None),
    "build-data": dict(source=None, out="data.zip", test_fraction=TEST_FRACTION, seed=0),
}


def _whole(minimum, example):
    """An argparse type: a whole number >= minimum."""
    def parse(text):
        if not re.fullmatch(r"[+-]?[0-9]+", text.strip()) or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number of at least {minimum} "
                                             f"(e.g. {example}), not {text!r}")
        return int(text)
    return parse


def _number(low, high=None, high_ok=False, example=None):
    """An argparse type: a finite number above low (and below high, or up to it when high_ok)."""
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
    p.add_argument("--hidden", type=_whole(1, d["hidden"]), help=f"hidden units (default {d['hidden']})")
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


def make_parser():
    """The command line's options and its commands train (the default), evaluate and build-data."""
    parser = argparse.ArgumentParser(
        prog="python faceage_helpers.py", argument_default=argparse.SUPPRESS,
        description="FaceAge: train the age-estimating network on data.zip (the default), evaluate a "
                    "saved model, or build data.zip from UTKFace. Options may come before or after the command.")
    _add_training_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="{train,evaluate,build-data}")
    _add_training_options(sub.add_parser("train", argument_default=argparse.SUPPRESS,
                                         help="train with the options above (the default when no command is given)"))
    ev = sub.add_parser("evaluate", argument_default=argparse.SUPPRESS, help="test-split RMSE and MAE of a saved model")
    ev.add_argument("--model", help="model file from training (default model.npz)")
    ev.add_argument("--data", help="data.zip in the course layout (default: $FACEAGE_DATA, then ./data.zip)")
    bd = sub.add_parser("build-data", argument_default=argparse.SUPPRESS,
                        help="build data.zip from UTKFace's 'Aligned & Cropped' folder or .tar.gz")
    d = COMMAND_OPTIONS["build-data"]
    bd.add_argument("source", help="UTKFace folder or UTKFace.tar.gz")
    bd.add_argument("--out", help=f"zip to write (default {d['out']})")
    bd.add_argument("--test-fraction", type=_number(0, 1, example=d["test_fraction"]),
                    help=f"share of faces for the test split (default {d['test_fraction']})")
    bd.add_argument("--seed", type=_whole(0, d["seed"]), help=f"seed for the train/test split (default {d['seed']})")
    return parser


def main(argv=None):
    """Run the command line (python faceage_helpers.py --help); returns the exit status."""
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
    args.written = []  # outputs finished so far, for the message after a Ctrl-C
    try:
        {"train": _cmd_train, "evaluate": _cmd_evaluate, "build-data": _cmd_build_data}[command](args)
    except (DataError, TrainingDiverged, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        kept = (f"It finished writing {', '.join(map(str, args.written))}; every other file" if args.written
                else "Nothing was written: every file")
        print(f"error: interrupted (Ctrl-C). {kept} is as it was before this run (files are replaced whole or "
              f"not at all). Run the command again to finish.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
