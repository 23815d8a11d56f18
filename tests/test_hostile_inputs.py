"""Hostile inputs and interrupted runs (issue 13): every case ends in the tool's own `error:` line
that names the file or option and the fix, never a traceback, and never costs a file that was there.

Every fixture is generated here (fake faces, hand-made zips, archives and images). Runs that could
eat memory or hang go to a subprocess with a 2 GB address-space limit and a timeout.
"""
import io
import os
import signal
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

import faceage_helpers as fh
from fakes import (
    ROOT,
    assert_refused,
    fake_faces,
    fake_utkface_folder,
    make_fake_zip,
    npy_bytes,
    refused,
    run_limited,
    tool,
)

bd = tool("build_data")


@pytest.fixture(autouse=True)
def no_data_env(monkeypatch):
    monkeypatch.delenv("FACEAGE_DATA", raising=False)


def run_main(main, capsys, *args):
    """Run a command's main(argv) in this process: (exit code, stdout, stderr). argparse's errors exit with 2."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def cli(capsys, *args):
    """faceage_helpers.py's command line, in this process."""
    return run_main(fh.main, capsys, *args)


def tool_cli(capsys, *args):
    """tools/build_data.py's command line, in this process."""
    return run_main(bd.main, capsys, *args)


def run_cli(*args, cwd, code=None, timeout=120, tool=None):
    """The command line (or `python -c code`, or a tool) in a subprocess under the memory limit."""
    return run_limited(*args, cwd=cwd, code=code, tool=tool, timeout=timeout)


def snapshot(folder):
    """Every file under folder with its bytes: compare before and after to show nothing was lost."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# Hand-made zips and compressed streams
# ---------------------------------------------------------------------------------------------

def deflate_parts(*parts):
    """A raw deflate stream of (bytes, repeat) parts without compressing the repeats one by one.

    Each part is compressed once and ends with a full flush, so it refers to nothing before it and
    can be repeated: 1 MiB of zeros repeated 2500 times inflates to 2.5 GB from 2.5 MB.
    """
    stream = b""
    for data, repeat in parts:
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        stream += (c.compress(data) + c.flush(zlib.Z_FULL_FLUSH)) * repeat
    return stream + zlib.compressobj(9, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)


def raw_zip(path, members):
    """A zip written byte by byte: members are (name, stored bytes, method, crc, declared size, flags),
    so tests can declare what zipfile would never write (bombs, encryption flags, duplicates)."""
    out, central = bytearray(), bytearray()
    for name, data, method, crc, size, flags in members:
        n = name.encode()
        offset = len(out)
        out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, flags, method, 0, 0x21, crc, len(data), size,
                           len(n), 0) + n + data
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, flags, method, 0, 0x21, crc, len(data),
                               size, len(n), 0, 0, 0, 0, 0, offset) + n
    start = len(out)
    out += central + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central),
                                 start, 0)
    Path(path).write_bytes(bytes(out))
    return path


def stored(name, data, flags=0):
    return (name, data, 0, zlib.crc32(data), len(data), flags)


def course_members(n=8, **replace):
    """Stored members of a small valid data.zip; replace={member: entry} swaps one for a hostile one."""
    X, y = fake_faces(n)
    members = {f"age_regression_{k}.npy": stored(f"age_regression_{k}.npy", npy_bytes(a))
               for k, a in (("Xtr", X), ("ytr", y), ("Xte", X), ("yte", y))}
    members.update(replace)
    return list(members.values())


def npy_header(shape, descr="|u1"):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# 1. Options before the subcommand: honoured or refused, never ignored
# ---------------------------------------------------------------------------------------------

_utkface_folder = fake_utkface_folder


@pytest.mark.parametrize("args", [("build-data", "UTKFace", "--out", "d.zip"),
                                  ("--seed", "5", "build-data", "UTKFace")])
def test_build_data_on_the_module_points_to_the_tool(tmp_path, capsys, monkeypatch, args):
    _utkface_folder(tmp_path / "UTKFace", n=4)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    code, out, err = cli(capsys, *args)
    assert_refused(code, err, "tools/build_data.py", fix=["SOURCE --out"])
    assert snapshot(tmp_path) == before


def test_data_before_evaluate_is_honoured_or_refused(tmp_path, capsys, monkeypatch):
    wanted = make_fake_zip(tmp_path / "wanted.zip", n_train=60, n_test=20)
    other = make_fake_zip(tmp_path / "other.zip", n_train=40, n_test=10, seed=3)
    monkeypatch.setenv("FACEAGE_DATA", str(other))
    assert cli(capsys, "--data", wanted, "--epochs", 1, "--hidden", 4, "--out", tmp_path)[0] == 0
    code, out, err = cli(capsys, "--data", wanted, "evaluate", "--model", tmp_path / "model.npz")
    if code == 0:
        assert "wanted.zip" in out and "other.zip" not in out
    else:
        assert_refused(code, err, "--data", fix=["after", "evaluate"])


@pytest.mark.parametrize("args, option", [
    (("--hidden", 5, "evaluate"), "--hidden"),
    (("train", "--model", "m.npz"), "--model"),
    (("evaluate", "--lr", "0.1"), "--lr"),
])
def test_an_option_the_command_does_not_use_is_refused(tmp_path, capsys, monkeypatch, args, option):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, *args)
    assert_refused(code, err, option, fix=["train", "drop", "remove", "unrecognized"])
    assert snapshot(tmp_path) == {}


def test_training_options_after_train_are_honoured(tmp_path, capsys):
    data = make_fake_zip(tmp_path / "d.zip", n_train=60, n_test=20)
    code, out, err = cli(capsys, "train", "--data", data, "--hidden", 3, "--epochs", 1, "--out", tmp_path / "o")
    assert code == 0, err
    assert "hidden=3" in out and "epochs=1" in out
    assert fh.load_model(tmp_path / "o" / "model.npz").params["W1"].shape == (3, 2304)


# ---------------------------------------------------------------------------------------------
# 2. Atomic writes and interruptions: a file is replaced whole or not at all
# ---------------------------------------------------------------------------------------------

def test_interrupted_build_data_keeps_the_previous_zip(tmp_path, capsys, monkeypatch):
    source = _utkface_folder(tmp_path / "UTKFace")
    (tmp_path / "out").mkdir()
    out = make_fake_zip(tmp_path / "out" / "data.zip")
    before = snapshot(tmp_path / "out")
    real_writestr = zipfile.ZipFile.writestr
    calls = []

    def ctrl_c_midway(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_writestr(self, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "writestr", ctrl_c_midway)
    code, _, err = tool_cli(capsys, source, "--out", out)
    assert_refused(code, err, "interrupt", fix=["unchanged", "kept", "as it was", "nothing"])
    assert snapshot(tmp_path / "out") == before  # no half-written zip, no temporary file left over


def test_interrupted_model_save_keeps_the_previous_model(tmp_path, capsys, monkeypatch):
    data = make_fake_zip(tmp_path / "d.zip", n_train=60, n_test=20)
    assert cli(capsys, "--data", data, "--epochs", 1, "--hidden", 4, "--out", tmp_path / "o")[0] == 0
    before = (tmp_path / "o" / "model.npz").read_bytes()

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np.lib.format, "write_array", ctrl_c)
    code, _, err = cli(capsys, "--data", data, "--epochs", 1, "--hidden", 5, "--out", tmp_path / "o")
    assert_refused(code, err, "interrupt", fix=["unchanged", "kept", "as it was"])
    assert (tmp_path / "o" / "model.npz").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["model.npz", "weight_images"]


@pytest.mark.parametrize("sig, says", [(signal.SIGINT, "interrupted (Ctrl-C)"),
                                       (signal.SIGTERM, "interrupted (SIGTERM")])
def test_a_signal_during_training_says_so_and_keeps_the_files(tmp_path, sig, says):
    data = make_fake_zip(tmp_path / "d.zip", n_train=300, n_test=20)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "model.npz").write_bytes(b"an earlier model")
    env = {k: v for k, v in os.environ.items() if k != "FACEAGE_DATA"}
    env.update(MPLBACKEND="Agg", OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(ROOT / "faceage_helpers.py"), "--data", str(data),
                             "--epochs", "100000", "--hidden", "4", "--out", str(tmp_path / "o")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stdout:
            if line.startswith("epoch"):  # training is under way
                proc.send_signal(sig)
                break
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig
    assert_refused(proc.returncode, err, says, fix=["Nothing was written"])
    assert snapshot(tmp_path / "o") == {Path("model.npz"): b"an earlier model"}


def test_weight_images_are_replaced_as_a_set(tmp_path):
    rng = np.random.default_rng(0)
    fh.save_weight_images(rng.standard_normal((40, 2304)), tmp_path / "w")
    (tmp_path / "w" / "notes.txt").write_text("mine")  # not a weight image: left alone
    fh.save_weight_images(rng.standard_normal((8, 2304)), tmp_path / "w")
    names = sorted(p.name for p in (tmp_path / "w").iterdir())
    assert names == sorted([f"weight_image_{j}.png" for j in range(8)] + ["weight_grid.png", "notes.txt"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]  # no temporary folder left over


def test_interrupted_weight_images_keep_the_previous_set(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    rng = np.random.default_rng(0)
    fh.save_weight_images(rng.standard_normal((10, 2304)), tmp_path / "w")
    before = snapshot(tmp_path)
    real_imsave, calls = plt.imsave, []

    def ctrl_c_midway(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_imsave(*args, **kwargs)

    monkeypatch.setattr(plt, "imsave", ctrl_c_midway)
    with pytest.raises(KeyboardInterrupt):
        fh.save_weight_images(rng.standard_normal((10, 2304)), tmp_path / "w")
    assert snapshot(tmp_path) == before


def test_epochs_0_is_refused_and_keeps_the_model(tmp_path, capsys):
    data = make_fake_zip(tmp_path / "d.zip")
    (tmp_path / "model.npz").write_bytes(b"trained for hours")
    code, out, err = cli(capsys, "--data", data, "--epochs", 0, "--out", tmp_path)
    assert_refused(code, err, "--epochs", fix=["at least 1", ">= 1", "positive"])
    assert (tmp_path / "model.npz").read_bytes() == b"trained for hours"


# ---------------------------------------------------------------------------------------------
# 3. Size limits: hostile data files are refused before they are read (2 GB address space)
# ---------------------------------------------------------------------------------------------

LOAD = "import sys, faceage_helpers as fh; sys.exit(fh.main(['--epochs', '1', '--data', sys.argv[1]]))"


def test_a_valid_zip_loads_under_the_memory_limit(tmp_path):
    data = make_fake_zip(tmp_path / "d.zip", n_train=60, n_test=20)
    code = "import sys, faceage_helpers as fh; print(fh.load_data(sys.argv[1]).summary())"
    run = run_cli(data, cwd=tmp_path, code=code)
    assert run.returncode == 0, run.stderr
    assert "train:     60 faces" in run.stdout


def test_npy_header_claiming_a_gigantic_shape(tmp_path):
    huge = npy_header((10**7, 48, 48)) + bytes(4096)  # claims 23 GB, holds 4 kB
    path = raw_zip(tmp_path / "d.zip", course_members(Xtr=stored("age_regression_Xtr.npy", huge)))
    before = snapshot(tmp_path)
    run = run_cli(path, cwd=tmp_path, code=LOAD)
    assert_refused(run.returncode, run.stderr, "d.zip", "age_regression_Xtr.npy",
                   fix=["download", "rebuild", "build-data"])
    assert snapshot(tmp_path) == before


def test_zip_bomb_member_is_refused_before_it_is_inflated(tmp_path):
    n = 1_100_000  # faces: 2.5 GB of zeros, consistent with its .npy header, from a 2.5 MB zip
    header = npy_header((n, 48, 48))
    body = deflate_parts((header, 1), (bytes(2**20), (n * 2304) // 2**20), (bytes((n * 2304) % 2**20), 1))
    # The CRC is never reached: the loader must stop at the declared size, long before the end.
    bomb = ("age_regression_Xtr.npy", body, 8, 0, len(header) + n * 2304, 0)
    path = raw_zip(tmp_path / "d.zip", course_members(Xtr=bomb))
    assert path.stat().st_size < 5 * 2**20
    run = run_cli(path, cwd=tmp_path, code=LOAD)
    assert_refused(run.returncode, run.stderr, "age_regression_Xtr.npy", fix=["download", "rebuild", "build-data"])


def test_huge_meta_csv_is_refused(tmp_path):
    rows = b"30,0,1,30_0_1_x.jpg\n" * 52428  # ~1 MiB of rows, repeated 2500 times: 2.6 GB of CSV
    body = deflate_parts((b"age,gender,race,source\n", 1), (rows, 2500))
    size = len(b"age,gender,race,source\n") + len(rows) * 2500
    meta = ("meta_tr.csv", body, 8, 0, size, 0)
    path = raw_zip(tmp_path / "d.zip", course_members(**{"meta_tr.csv": meta}))
    run = run_cli(path, cwd=tmp_path, code=LOAD)
    assert_refused(run.returncode, run.stderr, "meta_tr.csv", fix=["download", "rebuild", "build-data"])


def test_model_whose_w1_header_claims_a_gigantic_shape(trained, tmp_path):
    huge = npy_header((10**6, 2304), "<f8") + bytes(4096)  # claims 18 GB, holds 4 kB
    with zipfile.ZipFile(trained[0]) as zf:
        members = [stored(n, huge if n == "W1.npy" else zf.read(n)) for n in zf.namelist()]
    path = raw_zip(tmp_path / "model.npz", members)
    run = run_cli("evaluate", "--model", path, "--data", trained[1], cwd=tmp_path)
    assert_refused(run.returncode, run.stderr, "model.npz", "W1", fix=["train", "save_model", "again"])


# ---------------------------------------------------------------------------------------------
# 3, 4, 6. build-data: what cannot be a UTKFace face is skipped and counted; the rest is kept
# ---------------------------------------------------------------------------------------------

def png_bomb(path, width=16383, height=16384):
    """A 268-megapixel grayscale PNG of zeros in 260 kB: Pillow refuses to open it (decompression bomb)."""
    row = bytes(width + 1)  # filter byte + pixels
    n = len(row) * height
    assert n % 2**20 == 0
    idat = b"\x78\xda" + deflate_parts((bytes(2**20), n // 2**20)) + struct.pack(">I", (n % 65521) << 16 | 1)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">2I5B", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _sources(data):
    return {s: (split, i) for split, meta in (("tr", data.meta_tr), ("te", data.meta_te))
            for i, s in enumerate(meta["source"])}


def test_build_data_skips_fifos_devices_and_decompression_bombs(tmp_path):
    source = _utkface_folder(tmp_path / "UTKFace", n=10)
    os.mkfifo(source / "20_0_0_fifo.jpg.chip.jpg")
    os.symlink("/dev/zero", source / "21_0_0_zero.jpg.chip.jpg")
    png_bomb(source / "22_0_0_bomb.jpg.chip.jpg")
    run = run_cli(source, "--out", tmp_path / "d.zip", cwd=tmp_path, timeout=60, tool="build_data")
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert "skipped 3" in run.stdout, run.stdout
    data = fh.load_data(tmp_path / "d.zip")
    assert len(data.ytr) + len(data.yte) == 10


def test_build_data_skips_names_that_cannot_be_utkface_and_keeps_the_rest(tmp_path):
    source = _utkface_folder(tmp_path / "UTKFace", n=6)
    from PIL import Image
    face = Image.fromarray(np.random.default_rng(9).integers(0, 256, (40, 40), dtype=np.uint8))
    bad = ["30_0_0_new\nline.jpg", "12345678901234567890123_0_0_x.jpg", "-5_0_0_x.jpg", "0_0_0_x.jpg",
           "150_0_0_x.jpg", "x_0_0_y.jpg"]
    for i, name in enumerate(bad):
        face.rotate(7 * i + 7).save(source / name, format="JPEG")
    face.rotate(100).save(os.path.join(os.fsencode(source), b"31_0_0_\xff\xfe.jpg"), format="JPEG")
    face.rotate(120).save(source / "25_\u00b2_0_x.jpg", format="JPEG")  # a superscript: gender unknown
    face.rotate(140).save(source / "26_1_2_a,b.jpg", format="JPEG")    # a comma: quoted in the CSV
    run = run_cli(source, "--out", tmp_path / "d.zip", "--test-fraction", 0.3, cwd=tmp_path, tool="build_data")
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert "skipped 7" in run.stdout, run.stdout
    data = fh.load_data(tmp_path / "d.zip")
    ages = np.concatenate([data.ytr, data.yte])
    assert len(ages) == 8 and ages.min() >= 1 and ages.max() <= 116
    sources = _sources(data)
    assert "26_1_2_a,b.jpg" in sources and "25_\u00b2_0_x.jpg" in sources
    meta = {k: np.concatenate([data.meta_tr[k], data.meta_te[k]]) for k in ("source", "gender", "race")}
    i = list(meta["source"]).index("25_\u00b2_0_x.jpg")
    assert meta["gender"][i] == -1 and meta["race"][i] == 0


@pytest.mark.parametrize("where", [0.3, 0.5, 0.8])
def test_corrupt_tar_gz_fails_clearly_and_keeps_the_previous_zip(tmp_path, capsys, where):
    source = _utkface_folder(tmp_path / "UTKFace", n=40)
    archive = tmp_path / "UTKFace.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(source, arcname="UTKFace")
    raw = bytearray(archive.read_bytes())
    raw[int(len(raw) * where)] ^= 0x10
    archive.write_bytes(bytes(raw))
    (tmp_path / "out").mkdir()
    out = make_fake_zip(tmp_path / "out" / "data.zip")
    before = snapshot(tmp_path / "out")
    code, _, err = tool_cli(capsys, archive, "--out", out)
    assert_refused(code, err, "UTKFace.tar.gz", fix=["download", "again"])
    assert snapshot(tmp_path / "out") == before


def test_16_bit_png_and_float_tiff_become_real_faces(tmp_path):
    from PIL import Image
    source = _utkface_folder(tmp_path / "UTKFace", n=4)
    ramp = np.linspace(0, 1, 200)[None, :] * np.ones((200, 1))  # left dark, right bright: mean 0.5
    Image.fromarray(np.round(ramp * 65535).astype(np.uint16)).save(source / "40_0_0_sixteen.jpg", format="PNG")
    Image.fromarray(ramp.T.astype(np.float32)).save(source / "41_0_0_float.jpg", format="TIFF")  # top dark
    bd.build_data_zip(source, tmp_path / "d.zip", test_fraction=0.3)
    data = fh.load_data(tmp_path / "d.zip")
    sources = _sources(data)
    for name, transpose in (("40_0_0_sixteen.jpg", False), ("41_0_0_float.jpg", True)):
        split, i = sources[name]
        face = getattr(data, f"X{split}")[i].reshape(48, 48)
        face = face.T if transpose else face
        assert 0.4 < face.mean() < 0.6, (name, face.mean())
        assert face[:, 0].mean() < 0.1 and face[:, -1].mean() > 0.9


def test_build_data_checks_its_arguments_before_reading(tmp_path, capsys):
    source = _utkface_folder(tmp_path / "UTKFace", n=4)
    (tmp_path / "adir").mkdir()
    code, _, err = tool_cli(capsys, source, "--out", tmp_path / "adir")
    assert_refused(code, err, "--out", "adir", fix=[".zip", "file"])
    for bad in ("0", "1", "1.5", "nan"):
        code, _, err = tool_cli(capsys, source, "--out", tmp_path / "d.zip", "--test-fraction", bad)
        assert_refused(code, err, "--test-fraction", fix=["between 0 and 1"])
    assert not (tmp_path / "d.zip").exists()


# ---------------------------------------------------------------------------------------------
# 7. The tool's `error:` line instead of a traceback
# ---------------------------------------------------------------------------------------------

def test_encrypted_zip_member(tmp_path, capsys):
    members = course_members(4)
    name, data, *_ = members[0]
    members[0] = stored(name, data, flags=0x1)  # "encrypted": zipfile asks for a password
    path = raw_zip(tmp_path / "d.zip", members)
    before = snapshot(tmp_path)
    code, _, err = cli(capsys, "--data", path, "--epochs", 1)
    assert_refused(code, err, "d.zip", name, fix=["password", "encrypt"])
    assert snapshot(tmp_path) == before


def test_empty_model_file(tmp_path, capsys):
    data = make_fake_zip(tmp_path / "d.zip")
    (tmp_path / "model.npz").write_bytes(b"")
    code, _, err = cli(capsys, "evaluate", "--model", tmp_path / "model.npz", "--data", data)
    assert_refused(code, err, "model.npz", fix=["train", "again"])
    assert (tmp_path / "model.npz").read_bytes() == b""


@pytest.mark.parametrize("option, values", [
    ("--hidden", ["0", "-3", "2.5", "many"]),
    ("--batch-size", ["0", "-1", "x"]),
    ("--val-fraction", ["0", "1", "1.5", "-0.1", "nan"]),
    ("--lr", ["0", "-0.1", "nan", "inf", "fast"]),
    ("--lr-decay", ["0", "-1", "nan"]),
    ("--epochs", ["0", "-2"]),
    ("--seed", ["-1", "1.5"]),
])
def test_invalid_option_values_are_refused_before_any_work(tmp_path, capsys, option, values):
    data = make_fake_zip(tmp_path / "d.zip", n_train=10, n_test=5)
    for value in values:
        code, out, err = cli(capsys, "--data", data, option, value, "--out", tmp_path / "o")
        assert_refused(code, err, option, value, fix=["expected", "must be", "invalid"])
        assert out == "" and not (tmp_path / "o").exists()


def test_out_that_is_a_file_is_refused_before_training(tmp_path, capsys):
    data = make_fake_zip(tmp_path / "d.zip")
    (tmp_path / "taken").write_text("not a folder")
    code, out, err = cli(capsys, "--data", data, "--out", tmp_path / "taken")
    assert_refused(code, err, "--out", "taken", fix=["folder"])
    assert "epoch" not in out
    assert (tmp_path / "taken").read_text() == "not a folder"


# ---------------------------------------------------------------------------------------------
# 8. load_model checks what it reads
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trained")
    data = make_fake_zip(folder / "d.zip", n_train=60, n_test=20)
    assert fh.main(["--data", str(data), "--epochs", "1", "--hidden", "4", "--out", str(folder)]) == 0
    return folder / "model.npz", data


def _tampered(trained, tmp_path, **changes):
    with np.load(trained[0]) as f:
        arrays = {k: f[k] for k in f.files}
    arrays.update(changes)
    np.savez(tmp_path / "model.npz", **arrays)
    return tmp_path / "model.npz"


@pytest.mark.parametrize("change, words", [
    (lambda a: {"W1": (a["W1"] * 1000).astype(np.int64)}, ["W1", "int64"]),
    (lambda a: {"W1": np.where(np.arange(a["W1"].size).reshape(a["W1"].shape) == 5, np.nan, a["W1"])},
     ["W1", "finite"]),
    (lambda a: {"W2": np.full_like(a["W2"], np.inf)}, ["W2", "finite"]),
    (lambda a: {"W1": a["W1"][:, :2000]}, ["W1", "2304"]),
    (lambda a: {"b1": a["b1"][:3]}, ["b1"]),
    (lambda a: {"x_std": np.zeros_like(a["x_std"])}, ["x_std"]),
])
def test_load_model_checks_shapes_dtypes_and_finiteness(trained, tmp_path, capsys, change, words):
    with np.load(trained[0]) as f:
        arrays = {k: f[k] for k in f.files}
    path = _tampered(trained, tmp_path, **change(arrays))
    code, out, err = cli(capsys, "evaluate", "--model", path, "--data", trained[1])
    assert_refused(code, err, "model.npz", *words, fix=["train", "again", "save_model"])
    assert "RMSE" not in out


def test_model_with_a_duplicate_member(trained, tmp_path, capsys):
    with zipfile.ZipFile(trained[0]) as zf:
        members = [stored(n, zf.read(n)) for n in zf.namelist()]
    path = raw_zip(tmp_path / "model.npz", members + [stored("W1.npy", npy_bytes(np.zeros((4, 2304))))])
    code, _, err = cli(capsys, "evaluate", "--model", path, "--data", trained[1])
    assert_refused(code, err, "model.npz", "W1.npy", fix=["train", "again", "save_model"])


# ---------------------------------------------------------------------------------------------
# 9. Smaller ones
# ---------------------------------------------------------------------------------------------

def test_mistyped_faceage_data_is_an_error_not_a_fallback(tmp_path, capsys, monkeypatch):
    make_fake_zip(tmp_path / "data.zip")
    monkeypatch.setattr(fh, "HERE", tmp_path)  # a data.zip beside the module that must NOT be used
    monkeypatch.setenv("FACEAGE_DATA", str(tmp_path / "dta.zip"))
    with pytest.raises(fh.DataError) as e:
        fh.find_data()
    assert "$FACEAGE_DATA" in str(e.value) and "dta.zip" in str(e.value) and "does not exist" in str(e.value)
    code, out, err = cli(capsys, "--epochs", 1, "--out", tmp_path / "o")
    assert_refused(code, err, "$FACEAGE_DATA", "dta.zip", fix=["FACEAGE_DATA="])


def test_regression_metrics_accept_column_vectors_and_refuse_mismatches():
    y = np.array([10.0, 20.0, 30.0])
    m = fh.regression_metrics(y, y.reshape(-1, 1))
    assert m == {"mse": 0.0, "rmse": 0.0, "mae": 0.0}
    assert fh.regression_metrics(y.reshape(-1, 1), y + 1)["mae"] == pytest.approx(1.0)
    with pytest.raises(fh.DataError, match="3 .* 2"):
        fh.regression_metrics(y, y[:2])


def test_duplicate_members_in_data_zip(tmp_path, capsys):
    _, y = fake_faces(6, seed=2)
    path = raw_zip(tmp_path / "d.zip", course_members(4) + [stored("age_regression_ytr.npy", npy_bytes(y))])
    code, _, err = cli(capsys, "--data", path, "--epochs", 1)
    assert_refused(code, err, "d.zip", "age_regression_ytr.npy", fix=["download", "rebuild", "build-data"])


# ---------------------------------------------------------------------------------------------
# make lab: for every newcomer, root included, at the repository root with notebook 01 open
# ---------------------------------------------------------------------------------------------

def test_make_lab_opens_the_repository_root_and_works_as_root():
    run = subprocess.run(["make", "-n", "lab"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    line = next(l for l in run.stdout.splitlines() if "jupyter lab" in l or "jupyter-lab" in l)
    assert "notebooks/01_explore_the_faces.ipynb" in line
    assert "root_dir" in line or "notebook-dir" in line
    if os.geteuid() == 0:
        assert "--allow-root" in run.stdout and "root" in run.stdout.replace("--allow-root", "")
    else:
        assert "--allow-root" not in run.stdout


# ---------------------------------------------------------------------------------------------
# Round 2 (issue 22): each class of failure, run as a command in a subprocess under the 2 GB limit;
# refused() asserts the `error:` line, a non-zero exit, no traceback, and every earlier file unchanged
# with nothing left behind (checksums of the whole folder); run_limited's timeout bounds the time.
# ---------------------------------------------------------------------------------------------

DATA_FIX = ["Fetch data.zip again", "rebuild"]
N = 500  # faces in each split of these zips: the meta CSV's size bound (1 kB a row) then allows 0.5 MB


def _raw(name, data, method):
    return (name, data, method, zlib.crc32(data), len(data) + 1000, 0)


def _meta(rows, header="age,gender,race,source"):
    return stored("meta_tr.csv", (header + "\n" + "".join(rows)).encode())


@pytest.mark.parametrize("member, words", [
    (_raw("age_regression_Xtr.npy", b"\x00" * 64, 9), ["age_regression_Xtr.npy", "NotImplementedError"]),  # Deflate64
    (_raw("age_regression_Xtr.npy", b"\x09\x04\x05\x00]\x00\x00\x80\x00" + bytes(range(256)) * 4, 14),
     ["age_regression_Xtr.npy"]),  # a corrupt LZMA member
    (stored("age_regression_Xtr.npy", npy_header((0, 10**30))), ["age_regression_Xtr.npy", "shape"]),
    (_meta(["30,0,1,x.jpg\n"] * 3 + ["30,0,1,x.jpg,one,field,too,many\n"] * (N - 3)),
     ["meta_tr.csv", "line 5", "fields"]),
    (_meta(["30,0,1,x.jpg\n"] * (N + 1)), ["meta_tr.csv", f"line {N + 2}", f"one more than the {N} faces"]),
    (_meta(["1\n"] * N, header="a," * 199_999 + "a"), ["meta_tr.csv", "200000 columns"]),
    (stored("age_regression_Xte.npy", npy_bytes(np.zeros((0, 48, 48), np.uint8))), ["Xte.npy", "no faces"]),
    (stored("age_regression_Xtr.npy", npy_bytes(np.zeros((0, 2304), np.uint8))), ["Xtr.npy", "no faces"]),
    (stored("age_regression_Xte.npy", npy_header((fh.MAX_FACES, 48, 48)) + bytes(4096)), ["Xte.npy", "declares"]),
], ids=["deflate64", "lzma", "shape overflow", "long rows", "extra row", "200k columns", "no test faces",
        "no training faces", "too many faces in all"])
def test_every_unreadable_data_zip_is_the_tools_own_error(tmp_path, member, words):
    members = {m[0]: m for m in course_members(N)}
    members[member[0]] = member
    path = raw_zip(tmp_path / "d.zip", list(members.values()))
    run = refused(tmp_path, "--data", path, "--epochs", 1, "--out", tmp_path / "o", names=["d.zip", *words],
                  fix=DATA_FIX)
    assert "epoch" not in run.stdout


def test_float64_faces_load_in_memory_near_their_float32_size(tmp_path):
    # 30,000 float64 faces (550 MB) inflate from 0.6 MB. Read whole, then converted, they needed 4-6 times
    # their float32 size (5.7 GB at MAX_FACES); a chunk at a time, the float32 rows (280 MB) and one chunk.
    # So the child gets 768 MB of address space (Python, NumPy and the module take about 150 MB).
    n = 30_000
    header = npy_header((n, 48, 48), "<f8")
    size, crc, zeros = n * 2304 * 8, zlib.crc32(header), bytes(2**20)
    for _ in range(size // 2**20):
        crc = zlib.crc32(zeros, crc)
    crc = zlib.crc32(bytes(size % 2**20), crc)
    body = deflate_parts((header, 1), (zeros, size // 2**20), (bytes(size % 2**20), 1))
    members = {m[0]: m for m in course_members(20)}
    members.update({"age_regression_Xtr.npy": ("age_regression_Xtr.npy", body, 8, crc, len(header) + size, 0),
                    "age_regression_ytr.npy": stored("age_regression_ytr.npy", npy_bytes(np.full(n, 30.0)))})
    path = raw_zip(tmp_path / "d.zip", list(members.values()))
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (768 * 2**20, 768 * 2**20)); "
            "import faceage_helpers as fh; print(fh.load_data(sys.argv[1]).summary())")
    run = run_limited(path, cwd=tmp_path, code=code, timeout=120)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert f"train: {n:6d} faces" in run.stdout and "float32" in run.stdout


@pytest.mark.parametrize("change, words", [
    (lambda a: {"settings": np.array("[" * 100_000 + "]" * 100_000)}, ["settings", "RecursionError"]),
    (lambda a: {"settings": np.array("[1, 2]")}, ["settings", "list"]),
    (lambda a: {"train_loss": np.array(3.0)}, ["train_loss", "one number per epoch"]),
    (lambda a: {"val_rmse": np.array(["a", "b"])}, ["val_rmse", "one number per epoch"]),
], ids=["nested JSON", "settings a list", "0-d history", "text history"])
def test_a_model_file_that_cannot_be_read_is_named(trained, tmp_path, change, words):
    with np.load(trained[0]) as f:
        arrays = {k: f[k] for k in f.files}
    path = _tampered(trained, tmp_path, **change(arrays))
    run = refused(tmp_path, "evaluate", "--model", path, "--data", trained[1], names=["model.npz", *words],
                  fix=["Train and save it again"])
    assert "RMSE" not in run.stdout


@pytest.mark.parametrize("change", [
    lambda a: {"x_std": np.full_like(a["x_std"], 1e-30)},  # positive, but no training run gives it
    lambda a: {"y_std": np.array(1e200)},
    lambda a: {"W1": np.full_like(a["W1"], 3e38), "W2": np.full_like(a["W2"], 3e38)},  # overflows to inf, then NaN
], ids=["tiny x_std", "huge y_std", "overflowing weights"])
def test_evaluate_refuses_a_model_whose_predictions_are_absurd(trained, tmp_path, change):
    with np.load(trained[0]) as f:
        arrays = {k: f[k] for k in f.files}
    path = _tampered(trained, tmp_path, **change(arrays))
    run = refused(tmp_path, "evaluate", "--model", path, "--data", trained[1], names=["model.npz", "predicts"],
                  fix=["broken"])
    assert "RMSE" not in run.stdout and "Warning" not in run.stderr


@pytest.mark.parametrize("args, words", [
    (("--hidden", "10001"), ["--hidden", "10,000"]),
    (("--hidden", "1000000"), ["--hidden", "10,000"]),
    (("--val-fraction", "0.001"), ["--val-fraction", "0 validation faces"]),
    (("--val-fraction", "0.999"), ["--val-fraction", "0 training"]),
], ids=["hidden 10001", "hidden 1e6", "no validation faces", "no training faces"])
def test_arguments_that_cannot_work_are_refused_before_training(tmp_path, args, words):
    data = make_fake_zip(tmp_path / "d.zip", n_train=60, n_test=20)
    run = refused(tmp_path, "--data", data, *args, "--epochs", 1, "--out", tmp_path / "o", names=words,
                  fix=["expected", "choose"])
    assert "epoch" not in run.stdout


@pytest.mark.parametrize("case", ["weight_images a file", "model.npz a folder", "read-only place"])
def test_an_unwritable_out_is_found_before_training(tmp_path, case):
    data = make_fake_zip(tmp_path / "d.zip", n_train=60, n_test=20)
    out = tmp_path / "o"
    out.mkdir()
    if case == "weight_images a file":
        (out / "weight_images").write_text("my notes")
        names = ["weight_images", "is a file"]
    elif case == "model.npz a folder":
        (out / "model.npz").mkdir()
        names = ["model.npz", "is a folder"]
    else:
        out, names = "/sys/faceage-test", ["cannot write in /sys"]  # not writable, even by root
    run = refused(tmp_path, "--data", data, "--epochs", 1, "--out", out, names=["--out", *names],
                  fix=["choose another --out"])
    assert "epoch" not in run.stdout


@pytest.mark.parametrize("what, make, words", [
    ("--data", lambda p: p.mkdir(), ["is a folder"]),
    ("--data", os.mkfifo, ["is a FIFO"]),  # opening it to read would wait forever
    ("--data", lambda p: p.symlink_to("/dev/zero"), ["is a device"]),
    ("FACEAGE_DATA", lambda p: p.mkdir(), ["$FACEAGE_DATA", "is a folder"]),
    ("--model", lambda p: p.mkdir(), ["No model file", "is a folder"]),
], ids=["folder", "fifo", "device", "env folder", "model folder"])
def test_a_path_that_is_not_a_file_is_called_what_it_is(tmp_path, what, make, words):
    data = make_fake_zip(tmp_path / "d.zip", n_train=10, n_test=5)
    odd = tmp_path / "odd.zip"
    make(odd)
    args = {"--data": ("--data", odd, "--out", tmp_path / "o"), "FACEAGE_DATA": ("--out", tmp_path / "o"),
            "--model": ("evaluate", "--model", odd, "--data", data)}[what]
    env = {"FACEAGE_DATA": str(odd)} if what == "FACEAGE_DATA" else {}
    refused(tmp_path, *args, names=["odd.zip", *words], fix=["fix the path", "Train one first"], env=env, timeout=30)


def test_non_utf8_paths_are_printed_safely(tmp_path):
    data = make_fake_zip(tmp_path / os.fsdecode(b"d\xff.zip"), n_train=30, n_test=10)
    out = tmp_path / os.fsdecode(b"out\xfe")
    run = run_limited("--data", data, "--epochs", 1, "--hidden", 3, "--out", out, cwd=tmp_path, env={"LC_ALL": "C"})
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert "wrote 3 weight images" in run.stdout and (out / "model.npz").is_file()
    refused(tmp_path, "evaluate", "--model", out / "model.npz", "--data", tmp_path / os.fsdecode(b"gone\xff.zip"),
            names=["gone", "does not exist"], fix=["fix the path"], env={"LC_ALL": "C"})


# A training run whose save meets a full disk, a signal, or a Ctrl-C while the new set is moved in; the
# event comes from inside (np.save's writer or os.replace patched), so it lands at the same place every run.
SAVE_EVENT = """import errno, os, signal, sys
import numpy as np
import faceage_helpers as fh
event, out = sys.argv[1], sys.argv[-1]
real_write, real_replace = np.lib.format.write_array, os.replace
def write_array(*args, **kwargs):
    if event == "full disk":
        raise OSError(errno.ENOSPC, "No space left on device")
    os.kill(os.getpid(), getattr(signal, event))
    return real_write(*args, **kwargs)
def replace(src, dst, **kwargs):
    moving_in = os.fspath(dst) == os.path.join(out, "model.npz") and "old" not in os.fspath(src)
    if event == "Ctrl-C while moving in" and moving_in:
        os.kill(os.getpid(), signal.SIGINT)  # the first file of the new set moves in: the rest must follow
    return real_replace(src, dst, **kwargs)
if event != "Ctrl-C while moving in":
    np.lib.format.write_array = write_array
os.replace = replace
sys.exit(fh.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("event, words", [
    ("full disk", ["model.npz", "the disk is full"]),
    ("SIGTERM", ["interrupted (SIGTERM", "Nothing was written"]),
    ("SIGHUP", ["interrupted (SIGHUP", "Nothing was written"]),
])
def test_a_failed_save_keeps_the_earlier_model_and_images_as_one_set(tmp_path, event, words):
    data = make_fake_zip(tmp_path / "d.zip", n_train=60, n_test=20)
    assert fh.main(["--data", str(data), "--epochs", "1", "--hidden", "6", "--out", str(tmp_path / "o")]) == 0
    run = refused(tmp_path, event, "--data", data, "--epochs", 1, "--hidden", 4, "--out", tmp_path / "o",
                  names=words, fix=["free some space", "as it was"], code=SAVE_EVENT, timeout=60)
    assert run.returncode == (1 if event == "full disk" else 128 + getattr(signal, event))


def test_ctrl_c_while_the_new_set_moves_in_finishes_the_set_and_says_so(tmp_path):
    data = make_fake_zip(tmp_path / "d.zip", n_train=60, n_test=20)
    out = tmp_path / "o"
    assert fh.main(["--data", str(data), "--epochs", "1", "--hidden", "6", "--out", str(out)]) == 0
    (out / "weight_images" / "notes.txt").write_text("mine")
    run = run_limited("Ctrl-C while moving in", "--data", data, "--epochs", 1, "--hidden", 4, "--out", out,
                      cwd=tmp_path, code=SAVE_EVENT, timeout=60)
    assert run.returncode == 130 and "Traceback" not in run.stderr, run.stderr
    assert "interrupted (Ctrl-C)" in run.stderr and f"It finished writing {out / 'weight_images'}" in run.stderr
    assert fh.load_model(out / "model.npz").params["W1"].shape == (4, 2304)  # the new model, with ...
    assert sorted(p.name for p in (out / "weight_images").iterdir()) == sorted(
        [f"weight_image_{j}.png" for j in range(4)] + ["weight_grid.png", "notes.txt"])  # ... its own images only
    assert sorted(p.name for p in out.iterdir()) == ["model.npz", "weight_images"]  # no staging folder left


@pytest.mark.parametrize("script", ["faceage_helpers.py", "tools/build_data.py"])
def test_ctrl_c_while_numpy_loads_is_one_line(tmp_path, script):
    fake = tmp_path / "slow" / "numpy"
    fake.mkdir(parents=True)  # a numpy that is interrupted while it loads, as a Ctrl-C would
    (fake / "__init__.py").write_text("import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(5)\n")
    run = refused(tmp_path, str(ROOT / script), "--help", code="import runpy, sys; sys.argv = sys.argv[1:]; "
                  "runpy.run_path(sys.argv[0], run_name='__main__')", env={"PYTHONPATH": str(tmp_path / "slow")},
                  names=["interrupted (Ctrl-C) while starting"], fix=["nothing written"], timeout=30)
    assert run.stderr.count("\n") == 1


def test_leftovers_of_an_interrupted_run_are_ignored_by_git():
    leftovers = [".data.zip.k3j2_x.tmp", "runs/a/.model.npz.8fa_1.tmp", ".faceage-run.x8z1/model.npz",
                 "runs/a/.faceage-run.x8z1/weight_images/weight_image_0.png", ".weight_images.q1w2/weight_grid.png",
                 ".faceage-probe.abc.tmp"]
    run = subprocess.run(["git", "check-ignore", "--no-index", *leftovers], cwd=ROOT, capture_output=True,
                         text=True, timeout=30)
    assert sorted(run.stdout.split()) == sorted(leftovers), run.stdout
