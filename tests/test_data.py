"""Data loading, validation and splitting: on tiny generated data (building data.zip: test_build_data.py)."""

import numpy as np
import pytest

import faceage_helpers as fh
from fakes import fake_faces, make_fake_zip, write_zip


@pytest.fixture
def fake_zip(tmp_path):
    return make_fake_zip(tmp_path / "data.zip")


def test_load_data_returns_float_rows_in_unit_range_with_meta(fake_zip):
    data = fh.load_data(fake_zip)
    assert data.Xtr.shape == (60, 2304) and data.Xte.shape == (20, 2304)
    assert data.Xtr.dtype == np.float32
    assert 0 <= data.Xtr.min() and data.Xtr.max() <= 1
    X_raw, y_raw = fake_faces(60, 0)
    np.testing.assert_allclose(data.Xtr[3], X_raw[3].ravel() / 255, rtol=1e-6)
    np.testing.assert_array_equal(data.ytr, y_raw)
    assert set(data.meta_tr) == {"age", "gender", "race", "source"}
    np.testing.assert_array_equal(data.meta_te["age"], data.yte.astype(int))
    assert "train:     60 faces" in data.summary()


def test_float_pixels_and_flat_rows_are_accepted(tmp_path):
    X, y = fake_faces(10)
    as_float_flat = X.reshape(10, 2304).astype(np.float64) / 255
    path = write_zip(tmp_path / "f.zip", {"Xtr": as_float_flat, "ytr": y, "Xte": X, "yte": y})
    data = fh.load_data(path)
    np.testing.assert_allclose(data.Xtr, data.Xte, atol=1e-6)
    assert data.meta_tr is None


def test_path_order_argument_then_env_then_beside_module(tmp_path, monkeypatch):
    env_zip = make_fake_zip(tmp_path / "env.zip", n_train=5, n_test=3)
    arg_zip = make_fake_zip(tmp_path / "arg.zip", n_train=7, n_test=3)
    monkeypatch.setenv("FACEAGE_DATA", str(env_zip))
    assert fh.find_data() == env_zip
    assert fh.find_data(arg_zip) == arg_zip
    assert len(fh.load_data().Xtr) == 5
    monkeypatch.delenv("FACEAGE_DATA")
    monkeypatch.setattr(fh, "HERE", tmp_path)
    (tmp_path / "data.zip").write_bytes(arg_zip.read_bytes())
    assert fh.find_data() == tmp_path / "data.zip"


def test_missing_file_says_where_it_looked_and_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEAGE_DATA", str(tmp_path / "nowhere.zip"))
    monkeypatch.setattr(fh, "HERE", tmp_path)
    with pytest.raises(fh.DataError) as e:
        fh.load_data()
    msg = str(e.value)
    assert "nowhere.zip" in msg and "$FACEAGE_DATA" in msg and "does not exist" in msg
    assert "tools/build_data.py" in msg
    monkeypatch.delenv("FACEAGE_DATA")
    with pytest.raises(fh.DataError) as e:
        fh.load_data()
    assert str(tmp_path / "data.zip") in str(e.value)
    with pytest.raises(fh.DataError, match="the path you gave"):
        fh.load_data(tmp_path / "typo.zip")


def test_not_a_zip(tmp_path):
    bad = tmp_path / "data.zip"
    bad.write_text("<html>404 not found</html>")
    with pytest.raises(fh.DataError, match=r"data\.zip is not a readable zip file"):
        fh.load_data(bad)


def test_missing_array_is_named(tmp_path):
    X, y = fake_faces(4)
    path = write_zip(tmp_path / "d.zip", {"Xtr": X, "ytr": y, "Xte": X})
    with pytest.raises(fh.DataError, match="has no age_regression_yte.npy"):
        fh.load_data(path)


def test_corrupt_array_is_named(tmp_path):
    X, y = fake_faces(4)
    path = write_zip(tmp_path / "d.zip", {"Xtr": X, "ytr": y, "Xte": X}, {"age_regression_yte.npy": "garbage"})
    with pytest.raises(fh.DataError, match="age_regression_yte.npy is not a readable .npy"):
        fh.load_data(path)


def test_mismatched_lengths(tmp_path):
    X, y = fake_faces(4)
    path = write_zip(tmp_path / "d.zip", {"Xtr": X, "ytr": y[:3], "Xte": X, "yte": y})
    with pytest.raises(fh.DataError, match="holds 3 ages but there are 4 faces"):
        fh.load_data(path)


def test_wrong_image_size(tmp_path):
    X, y = fake_faces(4)
    path = write_zip(tmp_path / "d.zip", {"Xtr": X[:, :32, :32], "ytr": y, "Xte": X, "yte": y})
    with pytest.raises(fh.DataError, match=r"shape \(4, 32, 32\); expected \(N, 48, 48\)"):
        fh.load_data(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values(tmp_path, bad):
    X, y = fake_faces(4)
    Xf = X.astype(np.float32) / 255
    Xf[1, 2, 3] = bad
    y_bad = y.copy()
    y_bad[0] = bad
    path = write_zip(tmp_path / "x.zip", {"Xtr": Xf, "ytr": y, "Xte": X, "yte": y})
    with pytest.raises(fh.DataError, match="1 non-finite values"):
        fh.load_data(path)
    path = write_zip(tmp_path / "y.zip", {"Xtr": X, "ytr": y_bad, "Xte": X, "yte": y})
    with pytest.raises(fh.DataError, match="1 non-finite ages"):
        fh.load_data(path)


def test_float_pixels_outside_unit_range_are_rejected():
    with pytest.raises(fh.DataError, match="Divide 0-255 images by 255"):
        fh.as_face_rows(np.full((2, 48, 48), 200.0))


def test_train_val_split_is_seeded_disjoint_and_complete():
    X = np.arange(100, dtype=np.float32).reshape(100, 1) * np.ones((1, 2304), np.float32)
    y = np.arange(100.0)
    a = fh.train_val_split(X, y, 0.2, seed=3)
    b = fh.train_val_split(X, y, 0.2, seed=3)
    c = fh.train_val_split(X, y, 0.2, seed=4)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[3], c[3])
    X_train, y_train, X_val, y_val = a
    assert len(y_val) == 20 and len(y_train) == 80
    assert sorted(np.concatenate([y_train, y_val])) == list(y)
    np.testing.assert_array_equal(X_val[:, 0], y_val)  # rows stay with their ages
    with pytest.raises(ValueError, match="between 0 and 1"):
        fh.train_val_split(X, y, 1.5)


def test_train_val_split_refuses_a_fraction_that_leaves_a_side_empty():
    X, y = np.arange(10.0)[:, None], np.arange(10.0)
    for fraction, words in ((0.01, "0 validation"), (0.97, "0 training")):
        with pytest.raises(fh.DataError, match=words):
            fh.train_val_split(X, y, fraction)


def test_write_atomically_keeps_a_mode_sets_a_new_one_and_names_a_failed_write(tmp_path):
    target = tmp_path / "data.zip"
    fh._write_atomically(target, lambda f: f.write(b"one"), mode=0o600)
    assert target.read_bytes() == b"one" and target.stat().st_mode & 0o777 == 0o600
    target.chmod(0o640)
    fh._write_atomically(target, lambda f: f.write(b"two"), mode=0o600)
    assert target.read_bytes() == b"two" and target.stat().st_mode & 0o777 == 0o640  # kept

    def full_disk(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError) as e:
        fh._write_atomically(target, full_disk)
    assert e.value.filename == str(target) and "as it was" in e.value.strerror
    assert target.read_bytes() == b"two" and sorted(p.name for p in tmp_path.iterdir()) == ["data.zip"]


def test_meta_csv_blank_lines_are_skipped_and_repeated_columns_refused(tmp_path):
    X, y = fake_faces(3)
    arrays = {"Xtr": X, "ytr": y, "Xte": X, "yte": y}
    rows = "age,gender,race,source\n" + "".join(f"{a:.0f},0,1,x{i}.jpg\n\n" for i, a in enumerate(y))
    data = fh.load_data(write_zip(tmp_path / "a.zip", arrays, {"meta_tr.csv": rows}))
    assert list(data.meta_tr["source"]) == ["x0.jpg", "x1.jpg", "x2.jpg"]
    repeated = "age,age,race,source\n" + "1,2,3,x\n" * 3
    with pytest.raises(fh.DataError, match="4 columns .some repeated."):
        fh.load_data(write_zip(tmp_path / "b.zip", arrays, {"meta_tr.csv": repeated}))
