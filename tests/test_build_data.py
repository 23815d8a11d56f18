"""tools/build_data.py, the teacher's tool that builds data.zip from UTKFace: faces, labels and skips
from a generated UTKFace-like folder or archive; near-duplicate photographs (re-encoded, re-cropped or
mirrored) kept within one split (issue 12) at fh.NEAR_DUPLICATE; and, run as a command under a memory
limit, hostile sources and --out paths (issue 22): an `error:` line, nothing overwritten or left behind,
and the same bytes from the same source and seed."""
import hashlib
import os
import re
import signal
import stat
import tarfile
import zipfile

import numpy as np
import pytest

import faceage_helpers as fh
from fakes import ROOT, fake_utkface_folder, make_fake_zip, refused, remove_tree, run_limited, tool

bd = tool("build_data")


def _smooth_face(rng, size=96):
    """A smooth random 'face': 8x8 random values upsampled, so unrelated faces correlate weakly."""
    from PIL import Image
    small = Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8))
    return small.resize((size, size), Image.BICUBIC)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """30 unrelated faces plus 4 planted groups (9 faces), each copy labelled with another age."""
    from PIL import Image
    folder = tmp_path_factory.mktemp("UTKFace")
    rng = np.random.default_rng(0)
    faces = [_smooth_face(rng) for _ in range(34)]

    def save(img, age, tag, **kwargs):
        name = f"{age}_{age % 2}_{age % 5}_{tag}.jpg.chip.jpg"
        img.save(folder / name, format="JPEG", **kwargs)
        return name

    for i, img in enumerate(faces[:30]):
        save(img, 10 + 2 * i, f"plain{i:02d}", quality=95)
    a, b, c, d = faces[30:]
    w = a.size[0]
    groups = [
        [save(a, 20, "a", quality=95), save(a, 26, "a_reencoded", quality=40)],
        [save(b, 35, "b", quality=95), save(b.transpose(Image.FLIP_LEFT_RIGHT), 41, "b_mirrored", quality=95)],
        [save(c, 50, "c", quality=95),
         save(c.crop((2, 2, w - 2, w - 2)).resize((w, w)), 47, "c_recropped", quality=95)],
        [save(d, 60, "d", quality=95), save(d, 72, "d_reencoded", quality=50),
         save(d.transpose(Image.FLIP_LEFT_RIGHT), 66, "d_mirrored", quality=80)],
    ]
    return folder, groups


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_near_duplicates_are_counted_and_kept_within_one_split(planted, tmp_path, capsys, seed):
    folder, groups = planted
    out = bd.build_data_zip(folder, tmp_path / "d.zip", test_fraction=0.5, seed=seed)
    printed = capsys.readouterr().out
    assert re.search(r"\b9 faces in 4 groups\b", printed), printed  # the planted ones, and nothing else
    data = fh.load_data(out)
    assert len(data.ytr) + len(data.yte) == 39
    assert abs(len(data.yte) - 19.5) <= 3  # groups move whole, so the split is near, not exactly, 50%
    test_sources = set(data.meta_te["source"])
    for group in groups:
        in_test = {name in test_sources for name in group}
        assert len(in_test) == 1, (group, seed)  # all of the group in train, or all in test


def test_the_groups_land_on_both_sides_across_seeds(planted, tmp_path, capsys):
    folder, groups = planted
    sides = []
    for seed in range(4):
        data = fh.load_data(bd.build_data_zip(folder, tmp_path / f"{seed}.zip", test_fraction=0.5, seed=seed))
        sides.append(tuple(group[0] in set(data.meta_te["source"]) for group in groups))
    assert len(set(sides)) > 1  # seeded, but groups do not always land on the same side: still a random split


def test_near_duplicate_groups_directly():
    rng = np.random.default_rng(1)
    faces = rng.integers(0, 256, (6, 48, 48), dtype=np.uint8)
    faces[3] = faces[0][:, ::-1]                             # a mirror image
    faces[4] = np.clip(faces[1].astype(int) + 20, 0, 255)    # brighter: correlation unchanged
    faces[5] = 7                                             # a constant image correlates with nothing
    groups = fh.near_duplicate_groups(faces)
    assert sorted(map(sorted, groups)) == [[0, 3], [1, 4]]


def _fake_utkface_folder(folder):
    """A few 200x200 JPEGs named like UTKFace's, with a duplicate of conflicting age and a bad name."""
    from PIL import Image
    folder.mkdir()
    rng = np.random.default_rng(0)
    ages = [3, 25, 41, 67, 90, 33]
    for i, age in enumerate(ages):
        img = Image.fromarray(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8))
        img.save(folder / f"{age}_{i % 2}_{i % 5}_2017011{i}.jpg.chip.jpg")
    img.save(folder / "50_1_2_20170119.jpg.chip.jpg")        # same picture as age 33: conflicting, dropped
    img.save(folder / "notanage_0_0_2017.jpg.chip.jpg")       # unparseable name: skipped
    Image.fromarray(np.zeros((200, 200, 3), np.uint8)).save(folder / "39_1_20170116174525125.jpg.chip.jpg")  # no race
    return folder


@pytest.mark.parametrize("as_archive", [False, True])
def test_build_data_zip_from_a_utkface_folder_or_archive(tmp_path, as_archive, capsys):
    source = _fake_utkface_folder(tmp_path / "UTKFace")
    if as_archive:
        archive = tmp_path / "UTKFace.tar.gz"
        with tarfile.open(archive, "w:gz") as tf:
            tf.add(source, arcname="UTKFace")
        source = archive
    out = bd.build_data_zip(source, tmp_path / "built" / "data.zip", test_fraction=0.25, seed=0)
    assert "1 conflicting duplicates dropped" in capsys.readouterr().out
    names = set(zipfile.ZipFile(out).namelist())
    assert {"age_regression_Xtr.npy", "meta_te.csv", "README.txt"} <= names
    data = fh.load_data(out)
    assert len(data.ytr) + len(data.yte) == 6  # 5 distinct good images + the race-less one
    assert sorted(np.concatenate([data.ytr, data.yte])) == [3, 25, 39, 41, 67, 90]
    all_meta = {k: np.concatenate([data.meta_tr[k], data.meta_te[k]]) for k in ("age", "race", "source")}
    assert all_meta["race"][list(all_meta["age"]).index(39)] == -1
    np.testing.assert_array_equal(data.meta_tr["age"], data.ytr)


def test_build_data_zip_rejects_a_missing_or_empty_source(tmp_path):
    with pytest.raises(fh.DataError, match="does not exist"):
        bd.build_data_zip(tmp_path / "nope", tmp_path / "d.zip")
    (tmp_path / "empty").mkdir()
    with pytest.raises(fh.DataError, match="found 0 usable UTKFace images"):
        bd.build_data_zip(tmp_path / "empty", tmp_path / "d.zip")


# ---------------------------------------------------------------------------------------------
# The split's threshold: one home, fh.NEAR_DUPLICATE (the course data.zip was built at 0.93)
# ---------------------------------------------------------------------------------------------

def _pair_at(rng, base, low, high):
    """A noisy copy of base whose centred pixel correlation with it, as uint8, lies in (low, high)."""
    lo, hi = 0.0, 200.0  # noise scale, found by bisection
    for _ in range(60):
        scale = (lo + hi) / 2
        copy = np.clip(base + rng.standard_normal(base.shape) * scale, 0, 255).round().astype(np.uint8)
        corr = float(np.dot(*fh.centred_unit_rows(np.stack([base.round().astype(np.uint8), copy]))))
        if low < corr < high:
            return copy
        lo, hi = (scale, hi) if corr > high else (lo, scale)
    raise AssertionError("no copy in the wanted band")


def test_faces_correlating_above_near_duplicate_stay_in_one_split_and_below_do_not_group(tmp_path, capsys):
    from PIL import Image
    rng = np.random.default_rng(3)
    folder = tmp_path / "UTKFace"
    folder.mkdir()
    smooth = [np.asarray(_smooth_face(rng, 48), dtype=np.float64) for _ in range(2)]
    above = _pair_at(rng, smooth[0], fh.NEAR_DUPLICATE + 0.01, fh.NEAR_DUPLICATE + 0.03)  # 0.94-0.96
    below = _pair_at(rng, smooth[1], fh.NEAR_DUPLICATE - 0.03, fh.NEAR_DUPLICATE - 0.01)  # 0.90-0.92
    faces = {"20_0_0_a": smooth[0], "24_0_0_a_copy": above, "40_1_1_b": smooth[1], "44_1_1_b_copy": below}
    faces.update({f"{10 + i}_0_2_noise{i:02d}": rng.integers(0, 256, (48, 48)) for i in range(20)})
    for name, face in faces.items():  # lossless PNG bytes under UTKFace's .jpg names: the pixels stay exact
        Image.fromarray(np.asarray(face).round().astype(np.uint8)).save(folder / f"{name}.jpg", format="PNG")
    for seed in range(3):
        data = fh.load_data(bd.build_data_zip(folder, tmp_path / f"{seed}.zip", test_fraction=0.5, seed=seed))
        assert re.search(r"\b2 faces in 1 groups\b", capsys.readouterr().out)  # the pair above, not the one below
        test_sources = set(data.meta_te["source"])
        assert ("20_0_0_a.jpg" in test_sources) == ("24_0_0_a_copy.jpg" in test_sources)


# ---------------------------------------------------------------------------------------------
# Issue 22 on the tool: run as a command, in a subprocess under a 2 GB address-space limit
# ---------------------------------------------------------------------------------------------

def _archive(folder, path, mode="w:gz"):
    with tarfile.open(path, mode) as tf:
        tf.add(folder, arcname="UTKFace")
    return path


def test_same_source_and_seed_write_the_same_bytes(tmp_path, monkeypatch, capsys):
    import time
    source = fake_utkface_folder(tmp_path / "UTKFace", n=10)
    first = bd.build_data_zip(source, tmp_path / "a.zip", seed=1)
    later = time.time() + 3 * 3600  # a colleague's rebuild, hours later
    monkeypatch.setattr(time, "time", lambda: later)
    again = bd.build_data_zip(source, tmp_path / "b.zip", seed=1)
    from_archive = bd.build_data_zip(_archive(source, tmp_path / "UTKFace.tar.gz"), tmp_path / "c.zip", seed=1)
    other_seed = bd.build_data_zip(source, tmp_path / "d.zip", seed=2)
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (first, again, from_archive, other_seed)}
    assert digest["a.zip"] == digest["b.zip"] == digest["c.zip"]
    assert digest["d.zip"] != digest["a.zip"]  # the seed still moves faces between the splits
    with zipfile.ZipFile(first) as zf:
        assert [i.date_time for i in zf.infolist()] == [bd.ZIP_TIME] * 7


def test_a_new_data_zip_is_private_and_a_rebuilt_one_keeps_its_mode(tmp_path, capsys):
    source = fake_utkface_folder(tmp_path / "UTKFace", n=6)
    new = bd.build_data_zip(source, tmp_path / "new.zip")
    assert stat.S_IMODE(new.stat().st_mode) == 0o600  # UTKFace is licensed: owner only
    shared = make_fake_zip(tmp_path / "shared.zip")
    os.chmod(shared, 0o640)  # a teacher's choice for a course group
    bd.build_data_zip(source, shared)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o640
    assert len(fh.load_data(shared).ytr) + len(fh.load_data(shared).yte) == 6  # rebuilt, not the fake one


def test_the_temporary_file_is_never_a_planted_link(tmp_path, capsys):
    source = fake_utkface_folder(tmp_path / "UTKFace", n=6)
    victim = tmp_path / "victim.txt"
    victim.write_text("someone else's file")
    (tmp_path / "out").mkdir()
    for name in (f".data.zip.{os.getpid()}.tmp", ".data.zip.tmp", "data.zip.tmp"):  # names a guess could pick
        (tmp_path / "out" / name).symlink_to(victim)
    bd.build_data_zip(source, tmp_path / "out" / "data.zip")
    assert victim.read_text() == "someone else's file"
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.is_symlink()) == ["data.zip"]
    assert all((tmp_path / "out" / n).is_symlink() for n in (".data.zip.tmp", "data.zip.tmp"))


@pytest.mark.parametrize("case", ["empty", "fifo", "device", "corrupt .tar.xz", "deep folder"])
def test_hostile_sources_are_refused_by_name(tmp_path, case):
    source = fake_utkface_folder(tmp_path / "UTKFace", n=6)
    names, fix = [], ["Download", "download", "UTKFace.tar.gz"]
    if case == "empty":
        arg, names = "", ["SOURCE is empty"]
    elif case == "fifo":
        arg = tmp_path / "UTKFace.tar.gz"
        os.mkfifo(arg)  # reading it would wait forever
        names = [arg, "FIFO"]
    elif case == "device":
        arg = tmp_path / "UTKFace.tar.gz"
        arg.symlink_to("/dev/zero")  # reading it would never end
        names = [arg, "device"]
    elif case == "corrupt .tar.xz":
        arg = _archive(source, tmp_path / "UTKFace.tar.xz", "w:xz")
        raw = bytearray(arg.read_bytes())
        raw[len(raw) // 2] ^= 0x55
        arg.write_bytes(bytes(raw))
        names = [arg, "damaged"]
    else:
        deep = tmp_path / "deep"
        bottom = deep
        for _ in range(1000):  # Path.rglob recursed once per level: RecursionError
            bottom = bottom / "d"
            bottom.mkdir(parents=True)
        fake_utkface_folder(bottom, n=3)
        arg, names, fix = deep, [deep, "need at least 2"], ["UTKFace images"]
    try:
        run = refused(tmp_path, arg, "--out", tmp_path / "data.zip", names=names, fix=fix, tool="build_data",
                      timeout=60)
        if case == "deep folder":
            assert f"nested more than {bd.MAX_DEPTH} levels" in run.stdout
    finally:
        if case == "deep folder":
            remove_tree(arg)


@pytest.mark.parametrize("case", ["the source", "inside the source", "README.md", "a zip of other files", "unwritable"])
def test_out_that_would_lose_a_file_is_refused_before_reading(tmp_path, case):
    source = fake_utkface_folder(tmp_path / "UTKFace", n=6)
    fix = ["choose", "Choose", "move"]
    if case == "the source":
        source = _archive(source, tmp_path / "UTKFace.tar.gz")
        out, names = source, ["--out", "over the source"]
    elif case == "inside the source":
        out, names = source / "data.zip", ["--out", "inside the source"]
    elif case == "README.md":
        out, names = tmp_path / "README.md", ["--out", "README.md", "not a data.zip"]
        out.write_text("# my course\n")
    elif case == "a zip of other files":
        out, names = tmp_path / "notes.zip", ["--out", "notes.zip", "not a data.zip"]
        with zipfile.ZipFile(out, "w") as zf:
            zf.writestr("notes.txt", "mine")
    else:
        out, names = "/sys/faceage-test/data.zip", ["--out", "cannot write in /sys"]  # not writable, even by root
    run = refused(tmp_path, source, "--out", out, names=names, fix=fix, tool="build_data", timeout=30)
    assert run.stdout == ""  # refused before any image was read


def test_an_earlier_data_zip_is_replaced(tmp_path):
    source = fake_utkface_folder(tmp_path / "UTKFace", n=6)
    out = make_fake_zip(tmp_path / "data.zip")
    run = run_limited(source, "--out", out, cwd=tmp_path, tool="build_data", timeout=60)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert len(fh.load_data(out).ytr) + len(fh.load_data(out).yte) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["UTKFace", "data.zip"]  # no temporary file left


# A build told to stop while it writes the zip (the signal sent from inside, at the third member).
STOPPED = """import os, signal, sys, zipfile
sys.path.insert(0, "tools")
import build_data
real, calls = zipfile.ZipFile.writestr, []
def writestr(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 3:
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    return real(self, *args, **kwargs)
zipfile.ZipFile.writestr = writestr
sys.exit(build_data.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_a_signal_while_writing_keeps_the_earlier_zip_and_leaves_nothing(tmp_path, sig):
    source = fake_utkface_folder(tmp_path / "UTKFace", n=6)
    out = make_fake_zip(tmp_path / "data.zip")
    run = refused(tmp_path, sig, source, "--out", out, names=["interrupted", "Nothing was written"],
                  fix=["as it was"], code=STOPPED, cwd=ROOT, timeout=60)
    assert run.returncode == 128 + getattr(signal, sig)
    assert (sig if sig != "SIGINT" else "Ctrl-C") in run.stderr


def test_non_utf8_names_print_safely(tmp_path):
    folder = tmp_path / os.fsdecode(b"UTK\xff")
    fake_utkface_folder(folder, n=6)
    out = tmp_path / os.fsdecode(b"data\xfe.zip")
    run = run_limited(folder, "--out", out, cwd=tmp_path, tool="build_data", timeout=60, env={"LC_ALL": "C"})
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert "wrote" in run.stdout and len(fh.load_data(out).ytr) > 0
    refused(tmp_path, tmp_path / os.fsdecode(b"missing\xff"), "--out", tmp_path / "d.zip",
            names=["missing", "does not exist"], fix=["Download"], tool="build_data", env={"LC_ALL": "C"})
