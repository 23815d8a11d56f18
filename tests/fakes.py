"""Tiny fake data for the tests: random 'faces' and zips in the course layout (no real faces)."""
import io
import zipfile

import numpy as np


def fake_faces(n, seed=0):
    """n random uint8 'faces' (n, 48, 48) whose ages depend on their brightness (so there is signal)."""
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, size=(n, 48, 48), dtype=np.uint8)
    ages = np.round(5 + 80 * X.mean(axis=(1, 2)) / 255 + rng.normal(0, 2, n)).clip(1, 116)
    return X, ages.astype(np.float64)


def npy_bytes(a):
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def write_zip(path, arrays, extra=None):
    """Write {name: array} as age_regression_{name}.npy (plus {member: text} extras) into a zip."""
    with zipfile.ZipFile(path, "w") as zf:
        for key, a in arrays.items():
            zf.writestr(f"age_regression_{key}.npy", npy_bytes(a))
        for member, text in (extra or {}).items():
            zf.writestr(member, text)
    return path


def make_fake_zip(path, n_train=60, n_test=20, seed=0, meta=True):
    """A complete course-layout data.zip with fake faces, ages and meta CSVs."""
    Xtr, ytr = fake_faces(n_train, seed)
    Xte, yte = fake_faces(n_test, seed + 1)
    extra = {}
    if meta:
        for split, y in (("tr", ytr), ("te", yte)):
            rows = [f"{a:.0f},{i % 2},{i % 5},{a:.0f}_{i % 2}_{i % 5}_fake.jpg" for i, a in enumerate(y)]
            extra[f"meta_{split}.csv"] = "age,gender,race,source\n" + "\n".join(rows) + "\n"
    return write_zip(path, {"Xtr": Xtr, "ytr": ytr, "Xte": Xte, "yte": yte}, extra)
