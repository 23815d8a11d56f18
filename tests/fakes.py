"""Tiny fake data for the tests: random 'faces', zips in the course layout and UTKFace-like folders (no
real faces), and the runner that feeds hostile files to the command line under a memory limit."""
import hashlib
import io
import os
import resource
import subprocess
import sys
import zipfile
from pathlib import Path

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


def fake_utkface_folder(folder, n=12, seed=0, size=40):
    """n small random JPEGs named like UTKFace's (age_gender_race_date.jpg.chip.jpg)."""
    from PIL import Image
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8))
        img.save(folder / f"{10 + 3 * i}_{i % 2}_{i % 5}_2017011{i:04d}.jpg.chip.jpg")
    return folder


# ---------------------------------------------------------------------------------------------
# Running the command line on hostile input: a subprocess, an address-space limit, a timeout
# ---------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
MEMORY_LIMIT = 2 * 2**30  # bytes of address space for a subprocess that reads hostile files


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_limited(*args, cwd, code=None, tool=None, timeout=60, env=None, **popen):
    """faceage_helpers.py (or tools/<tool>.py, or `python -c code`) with args, in a subprocess under
    MEMORY_LIMIT and a timeout (the test fails if it runs longer: a hang or a runaway loop)."""
    full_env = {k: v for k, v in os.environ.items() if k != "FACEAGE_DATA"}
    full_env.update(MPLBACKEND="Agg", OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    full_env.update(env or {})
    command = ([sys.executable, "-c", code] if code else
               [sys.executable, str(ROOT / "tools" / f"{tool}.py")] if tool else
               [sys.executable, str(ROOT / "faceage_helpers.py")])
    args = [os.fsdecode(a) if isinstance(a, (bytes, os.PathLike)) else str(a) for a in args]
    return subprocess.run([*command, *args], capture_output=True, text=True, env=full_env, cwd=cwd,
                          timeout=timeout, preexec_fn=_limit_memory, **popen)


def checksums(folder):
    """Every file, folder and link under folder (hidden ones and temporary files included) with a
    checksum of its bytes: equal before and after a run means nothing changed and nothing was left."""
    found, todo = {}, [Path(folder)]
    while todo:  # a list, not recursion: a test may plant a folder nested a thousand levels deep
        for p in todo.pop().iterdir():
            if p.is_symlink():
                found[p.relative_to(folder)] = "link to " + os.readlink(p)
            elif p.is_dir():
                found[p.relative_to(folder)] = "folder"
                todo.append(p)
            else:
                found[p.relative_to(folder)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "special"
    return found


def assert_refused(code, err, *names, fix):
    """Non-zero exit, the tool's error line naming each of `names`, a fix, and no traceback."""
    assert code not in (0, None), err
    assert "Traceback" not in err and "MemoryError" not in err, err
    assert "error:" in err, err
    for name in names:
        assert os.fsdecode(name) in err or ascii(os.fsdecode(name))[1:-1] in err, (name, err)
    assert any(word in err for word in fix), (fix, err)


def refused(folder, *args, names=(), fix, **run):
    """Run the command line (run_limited) on args and assert it refused (assert_refused) leaving every
    file under folder exactly as it was. Returns the finished run."""
    before = checksums(folder)
    result = run_limited(*args, **{"cwd": folder, **run})
    assert_refused(result.returncode, result.stderr, *names, fix=fix)
    assert checksums(folder) == before, "a file changed, or a temporary file was left behind"
    return result


def tool(name):
    """A teacher's tool (tools/<name>.py) imported as a module, for tests that call it in-process."""
    import importlib
    if str(ROOT / "tools") not in sys.path:
        sys.path.insert(0, str(ROOT / "tools"))
    return importlib.import_module(name)


def remove_tree(top):
    """Remove a folder and everything in it with a list, not recursion (shutil.rmtree, and so pytest's
    own clean-up of old temporary folders, fail on a folder nested a thousand levels deep)."""
    order, todo = [], [Path(top)]
    while todo:
        folder = todo.pop()
        order.append(folder)
        for p in folder.iterdir():
            if p.is_dir() and not p.is_symlink():
                todo.append(p)
            else:
                p.unlink()
    for folder in reversed(order):
        folder.rmdir()
