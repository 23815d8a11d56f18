"""Build the course's data.zip from UTKFace's "Aligned & Cropped Faces" (a teacher's tool).

    python tools/build_data.py UTKFace.tar.gz --out data.zip [--test-fraction 0.19] [--seed 0]

SOURCE is the downloaded UTKFace.tar.gz (or .tar.xz, .tar.bz2) or its unpacked folder. Ages,
genders and races come from the file names; each image becomes a 48x48 grayscale face (Lanczos);
exact duplicates are merged, and faces that are one photograph (centred pixel correlation above
fh.NEAR_DUPLICATE, as they are or mirrored) stay within one split. Files that cannot be UTKFace
faces are skipped and counted by reason. The zip is replaced whole or not at all, keeps an earlier
data.zip's permissions (0600 for a new one: the data is licensed), and holds the same bytes on every
run with the same source and seed, so a rebuilt data.zip can be checked by its checksum.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import re
import signal
import sys
import tarfile
import tempfile
import warnings
import zipfile
from pathlib import Path

if __name__ == "__main__":  # a Ctrl-C while NumPy loads: one line, not a traceback (fh._run_command takes over)
    signal.signal(signal.SIGINT, lambda *_: sys.exit("error: interrupted (Ctrl-C) while starting: nothing written."))

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import faceage_helpers as fh  # noqa: E402

MAX_AGE = 116  # UTKFace's ages run from 1 to 116 years
MAX_IMAGE_BYTES = 20 * 2**20  # UTKFace's images are 5-50 kB: a bigger "image" is not one of its faces
MAX_IMAGE_PIXELS = 25_000_000  # larger images are skipped before decoding (decompression bombs)
MAX_DEPTH = 8  # folders below SOURCE searched for images (UTKFace's archive holds one folder of them)
TEST_FRACTION = 0.19  # the share of faces for the test split
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # every member's timestamp: the same source and seed give the same bytes
DATA_MODE = 0o600  # a new data.zip is readable by its owner only (UTKFace is licensed); an old one keeps its mode


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


def _folder_images(source: Path):
    """(path, None) for every *.jpg below the folder source in sorted order, or (name, why it was skipped).

    The folders are walked with a list, not by recursion (a hostile, deeply nested folder cannot
    exhaust Python's stack), links to folders are not followed (no loops), and at most MAX_DEPTH deep.
    """
    found, todo = [], [(source, 0)]
    while todo:
        folder, depth = todo.pop()
        try:
            entries = list(folder.iterdir())
        except OSError as e:
            found.append((folder.name, f"folder not readable ({e.strerror})"))
            continue
        for p in entries:
            if p.is_dir() and not p.is_symlink():
                if depth < MAX_DEPTH:
                    todo.append((p, depth + 1))
                else:
                    found.append((p.name, f"folder nested more than {MAX_DEPTH} levels below {source.name}"))
            elif p.name.endswith(".jpg"):
                found.append((p, None))
    return sorted(found, key=lambda item: str(item[0]))


def _iter_utkface_images(source: Path):
    """Yield (file name, image bytes, None) for every .jpg in a UTKFace folder or tar archive, or
    (file name, None, why it was skipped).

    Only regular files are read (a FIFO would hang, a link to /dev/zero never ends), and an archive
    is read to its end, where gzip verifies its checksum: a damaged download fails, never loses faces.
    """
    if source.is_dir():
        for p, reason in _folder_images(source):
            if reason:
                yield p, None, reason
            elif not p.is_file():  # follows links: a link to a device is not a regular file
                yield p.name, None, "not a regular file"
            elif p.stat().st_size > MAX_IMAGE_BYTES:
                yield p.name, None, f"larger than {MAX_IMAGE_BYTES // 2**20} MB"
            else:
                try:
                    raw = p.read_bytes()
                except OSError as e:
                    yield p.name, None, f"not readable ({e.strerror})"
                else:
                    yield p.name, raw, None
        return
    try:
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
            while tf.fileobj.read(2**20):  # past tar's end-of-archive blocks to the compressor's checksum
                pass
    except (tarfile.TarError, *fh._UNREADABLE) as e:
        raise fh.DataError(f"{source} is not a folder nor a readable .tar.gz archive of UTKFace images, or it is "
                           f"damaged ({type(e).__name__}: {e}). Download UTKFace.tar.gz again, or pass its "
                           f"unpacked folder.") from None


def _face_from_image(raw: bytes) -> np.ndarray:
    """A 48x48 uint8 face from image bytes: grayscale, resized with Lanczos. Raises ValueError saying
    why the image cannot be a face.

    16-bit and floating-point images are scaled to 0-255 first: Pillow's own conversion to 8 bits
    clips 16-bit pixels (a nearly white face) and truncates [0, 1] floats (a black one).
    """
    from PIL import Image  # Pillow comes with matplotlib
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
                return np.asarray(gray.resize(fh.IMAGE_SHAPE[::-1], Image.LANCZOS), dtype=np.uint8)
    except ValueError:
        raise
    except Exception as e:  # Pillow raises many kinds on a damaged file; one bad image must not stop the build
        raise ValueError(f"not a readable image ({type(e).__name__})") from None


def _split_by_groups(n, groups, test_fraction, seed):
    """Seeded (train, test) index arrays with each group of near-duplicates wholly in one split."""
    grouped = {i for g in groups for i in g}
    units = sorted(groups + [[i] for i in range(n) if i not in grouped])
    n_test = max(1, int(round(n * test_fraction)))
    train, test = [], []
    for u in np.random.default_rng(seed).permutation(len(units)):  # without groups: the plain seeded split
        (test if len(test) < n_test else train).extend(units[u])
    return np.array(train, dtype=int), np.array(test, dtype=int)


DATA_README = """UTKFace at 48x48 grayscale, for age regression (built by tools/build_data.py)

Arrays (NumPy .npy): age_regression_Xtr.npy / Xte.npy uint8 (N, 48, 48); ytr / yte float64 ages.
meta_tr.csv, meta_te.csv: age, gender ({GENDERS}, -1 unknown),
race ({RACES}, -1 unknown), source file name.

Source: UTKFace (Zhang, Song and Qi, CVPR 2017). Each image converted to grayscale and resized to
48x48 (Lanczos); exact duplicates merged, duplicates whose ages disagree dropped. Near-duplicates
(the same photograph re-encoded, re-cropped or mirrored: centred pixel correlation above {NEAR_DUPLICATE}, as
they are or mirrored) are kept, each group wholly in one split; the split is seeded.
Licence: non-commercial research only; the images' copyright belongs to their owners.
Never commit this file or anything made from it.
""".format(GENDERS=", ".join(f"{code} {name}" for code, name in enumerate(fh.GENDER_NAMES)),
           RACES=", ".join(f"{code} {name}" for code, name in enumerate(fh.RACE_NAMES)),
           NEAR_DUPLICATE=fh.NEAR_DUPLICATE)


def _is_course_zip(path: Path) -> bool:
    """Whether path is a zip in the course layout (one this tool could have written), safe to replace."""
    try:
        with zipfile.ZipFile(path) as zf:
            return all(f"age_regression_{k}.npy" in zf.namelist() for k in fh.ARRAY_NAMES)
    except (zipfile.BadZipFile, *fh._UNREADABLE):
        return False


def _check_arguments(source: Path, out: Path, test_fraction):
    """Refuse, before any image is read, a source or --out that cannot work or that would lose a file."""
    if not (source.is_dir() or source.is_file()):
        raise fh.DataError(f"{source} {fh._path_kind(source)}. Download UTKFace's 'Aligned & Cropped Faces' "
                           f"(UTKFace.tar.gz) and pass the archive or its unpacked folder.")
    if not 0 < test_fraction < 1:
        raise fh.DataError(f"--test-fraction must be between 0 and 1, got {test_fraction}.")
    if out.is_dir():
        raise fh.DataError(f"--out {out} is a folder; give the zip file to write, e.g. --out {out / 'data.zip'}.")
    src, dst = source.resolve(), out.resolve()
    if dst == src or src in dst.parents:
        raise fh.DataError(f"--out {out} would be written {'over' if dst == src else 'inside'} the source {source}: "
                           f"choose a path outside it, e.g. --out data.zip beside the download.")
    if out.exists() or out.is_symlink():
        if not out.is_file():
            raise fh.DataError(f"--out {out} {fh._path_kind(out)}; give a zip file to write, e.g. --out data.zip.")
        if not _is_course_zip(out):
            raise fh.DataError(f"--out {out} exists and is not a data.zip (it holds no age_regression_*.npy "
                               f"arrays): it is left as it is. Choose another --out, or move that file away first.")
    folder = next(p for p in out.absolute().parents if p.exists())  # where the zip (or its folder) will be made
    try:
        with tempfile.NamedTemporaryFile(prefix=".faceage-probe.", suffix=".tmp", dir=folder):
            pass
    except OSError as e:
        raise fh.DataError(f"--out {out}: cannot write in {folder} ({e.strerror}); choose another --out "
                           f"or fix that folder's permissions.") from None


def _zip_member(zf: zipfile.ZipFile, name: str, data):
    """One member with a fixed timestamp and permissions: the zip's bytes depend on its contents only."""
    info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)


def build_data_zip(source, out="data.zip", test_fraction=TEST_FRACTION, seed=0) -> Path:
    """Build a course-layout data.zip from a UTKFace 'Aligned & Cropped' folder or tar archive.

    Age, gender and race come from the file names; images become 48x48 grayscale (Lanczos). Files
    that cannot be UTKFace faces are skipped and counted by reason; the same photograph never lies
    in both splits (fh.near_duplicate_groups at fh.NEAR_DUPLICATE). The zip is replaced whole or not at all.
    """
    if not str(source).strip():  # Path("") would be the current folder
        raise fh.DataError("SOURCE is empty: give the UTKFace folder or UTKFace.tar.gz, "
                           "e.g. python tools/build_data.py UTKFace.tar.gz --out data.zip")
    source, out = Path(source), Path(out)
    _check_arguments(source, out, test_fraction)
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
        for reason, names in sorted(skipped.items(), key=lambda item: (-len(item[1]), item[0])):
            print(f"  {len(names)}: {reason} (e.g. {names[0]!r})")
    if len(records) < 2:
        raise fh.DataError(f"{source}: found {len(records)} usable UTKFace images (file names like "
                           f"'25_0_1_20170116174525125.jpg.chip.jpg'); need at least 2.")
    if len(records) > 5000:
        print(f"looking for near-duplicates among {len(records)} faces (a minute or two for all of UTKFace)")
    groups = fh.near_duplicate_groups(np.stack([r[0] for r in records]))
    train, test = _split_by_groups(len(records), groups, test_fraction, seed)
    if len(train) == 0:
        raise fh.DataError(f"{source}: with near-duplicates kept together, no face is left for training; "
                           f"add more images or lower --test-fraction.")
    print(f"near-duplicates: {sum(map(len, groups))} faces in {len(groups)} groups (centred pixel correlation "
          f"above {fh.NEAR_DUPLICATE}, as they are or mirrored), each group kept within one split")

    def write(f):
        with zipfile.ZipFile(f, "w") as zf:
            for split, idx in (("tr", train), ("te", test)):
                X = np.stack([records[i][0] for i in idx])
                y = np.array([records[i][1] for i in idx], dtype=np.float64)
                for key, arr in ((f"X{split}", X), (f"y{split}", y)):
                    buf = io.BytesIO()
                    np.save(buf, arr)
                    _zip_member(zf, f"age_regression_{key}.npy", buf.getvalue())
                text = io.StringIO()
                csv.writer(text, lineterminator="\n").writerows(
                    [("age", "gender", "race", "source")] + [records[i][1:] for i in idx])
                _zip_member(zf, f"meta_{split}.csv", text.getvalue())
            _zip_member(zf, "README.txt", DATA_README)

    fh._write_atomically(out, write, mode=DATA_MODE)
    print(f"wrote {out}: {len(train)} train and {len(test)} test faces "
          f"({n_skipped} files skipped, {len(by_hash) - len(records)} conflicting duplicates dropped)")
    return out


def make_parser():
    parser = argparse.ArgumentParser(
        prog="python tools/build_data.py",
        description="Build the course's data.zip from UTKFace's 'Aligned & Cropped Faces' "
                    "(UTKFace.tar.gz or its unpacked folder).")
    parser.add_argument("source", help="UTKFace folder or UTKFace.tar.gz")
    parser.add_argument("--out", default="data.zip", help="zip to write (default data.zip)")
    parser.add_argument("--test-fraction", type=fh._number(0, 1, example=TEST_FRACTION), default=TEST_FRACTION,
                        help=f"share of faces for the test split (default {TEST_FRACTION})")
    parser.add_argument("--seed", type=fh._whole(0, 0), default=0,
                        help="seed for the train/test split (default 0)")
    return parser


def main(argv=None):
    """Run the tool; returns the exit status (an `error:` line and a non-zero status on failure)."""
    args = make_parser().parse_args(argv)

    def build(written):
        build_data_zip(args.source, args.out, args.test_fraction, args.seed)
        written.append(Path(args.out))

    return fh._run_command(build)


if __name__ == "__main__":
    sys.exit(main())
