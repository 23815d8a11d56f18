"""Training: SGD lowers the loss, recovers a known function, is reproducible, and stops clearly on divergence."""
import numpy as np
import pytest

import faceage_helpers as fh


def teacher_problem(n=600, seed=0):
    """Fake faces drawn from 4 hidden factors, with an 'age' that is a known ReLU function of them."""
    basis = np.random.default_rng(99).standard_normal((4, 2304))  # the same 4 patterns for every call
    u = np.random.default_rng(seed).standard_normal((n, 4))
    X = np.clip(0.5 + 0.05 * u @ basis, 0, 1).astype(np.float32)
    age = 40 + 10 * np.maximum(u[:, 0] + u[:, 1], 0) - 8 * np.maximum(u[:, 2] - u[:, 3], 0) + 5 * u[:, 0]
    return X, age


def test_sgd_step_updates_in_place_against_the_gradient():
    params = {"W": np.array([1.0, -2.0])}
    W = params["W"]
    fh.sgd_step(params, {"W": np.array([0.5, -1.0])}, lr=0.1)
    assert params["W"] is W
    np.testing.assert_allclose(W, [0.95, -1.9])


def test_training_lowers_the_loss_and_recovers_a_known_function():
    X, y = teacher_problem(2000)
    X_val, y_val = teacher_problem(500, seed=1)
    model = fh.train(X, y, X_val, y_val, n_hidden=32, lr=0.003, lr_decay=0.95, batch_size=32, epochs=15,
                     mirror=False, verbose=False)
    losses = model.history["train_loss"]
    assert losses[-1] < 0.1 * losses[0]
    rmse = fh.regression_metrics(y_val, fh.predict(model, X_val))["rmse"]
    assert rmse < 0.1 * y_val.std(), f"validation RMSE {rmse:.2f} vs spread {y_val.std():.2f}"
    assert len(model.history["val_rmse"]) == 15 and model.history["val_rmse"][-1] == pytest.approx(rmse)


def test_same_seed_same_result_other_seed_other_result():
    X, y = teacher_problem(300)
    kw = dict(n_hidden=8, epochs=3, batch_size=50, verbose=False)
    a, b, c = fh.train(X, y, seed=1, **kw), fh.train(X, y, seed=1, **kw), fh.train(X, y, seed=2, **kw)
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name])
    assert not np.array_equal(a.params["W1"], c.params["W1"])
    assert a.history["train_loss"] == b.history["train_loss"]


def test_a_learning_rate_that_explodes_stops_with_advice():
    X, y = teacher_problem(300)
    with pytest.raises(fh.TrainingDiverged) as e:
        fh.train(X, y, n_hidden=16, lr=5.0, epochs=3, verbose=False)
    msg = str(e.value)
    assert "epoch 1" in msg and "learning rate 5 is too large; try 0.5" in msg


def test_float64_training_and_snapshots():
    X, y = teacher_problem(200)
    model = fh.train(X, y, n_hidden=5, epochs=4, dtype=np.float64, snapshot_every=2, verbose=False)
    assert model.params["W1"].dtype == np.float64
    assert model.history["W1_epochs"] == [0, 2, 4]
    snaps = model.history["W1_snapshots"]
    assert not np.array_equal(snaps[0], snaps[1])
    np.testing.assert_array_equal(snaps[-1], model.params["W1"])


def test_mirror_doubles_the_data_with_flipped_faces():
    X = np.arange(2 * 2304, dtype=np.float32).reshape(2, 2304) / 5000
    flipped = fh.mirror_faces(X).reshape(2, 48, 48)
    np.testing.assert_array_equal(flipped[1, 5], X.reshape(2, 48, 48)[1, 5, ::-1])
    np.testing.assert_array_equal(fh.mirror_faces(fh.mirror_faces(X)), X)


def test_progress_lines_are_printed(capsys):
    X, y = teacher_problem(200)
    fh.train(X, y, X[:50], y[:50], n_hidden=4, epochs=2, verbose=True)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("epoch   1/2 [") and "val RMSE" in out[1]


def test_predict_is_in_years_and_save_load_round_trips(tmp_path):
    X, y = teacher_problem(300)
    model = fh.train(X, y, X[:50], y[:50], n_hidden=6, epochs=2, verbose=False)
    pred = fh.predict(model, X[:20])
    assert abs(pred.mean() - y.mean()) < 3 * y.std()  # years, not standardised units
    uint8_faces = np.round(X[:20] * 255).astype(np.uint8).reshape(20, 48, 48)
    assert np.abs(fh.predict(model, uint8_faces) - pred).max() < 0.5
    fh.save_model(model, tmp_path / "model.npz")
    loaded = fh.load_model(tmp_path / "model.npz")
    np.testing.assert_array_equal(fh.predict(loaded, X[:20]), pred)
    assert loaded.settings == model.settings
    assert loaded.history["val_rmse"] == pytest.approx(model.history["val_rmse"])


def test_load_model_errors_are_clear(tmp_path):
    with pytest.raises(fh.DataError, match="No model file at .*Train one first"):
        fh.load_model(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(fh.DataError, match="is not a FaceAge model file"):
        fh.load_model(tmp_path / "other.npz")


def test_predict_rejects_wrong_shapes_clearly():
    X, y = teacher_problem(100)
    model = fh.train(X, y, n_hidden=3, epochs=1, verbose=False)
    with pytest.raises(fh.DataError, match=r"shape \(5, 100\); expected \(N, 48, 48\) or \(N, 2304\)"):
        fh.predict(model, np.zeros((5, 100)))



def lesson_epoch(params, X, y, lr, batch_size, rng):
    """The loop as notebook 03 writes it: forward, mse_loss, backward, sgd_step per batch."""
    order = rng.permutation(len(X))
    losses = []
    for start in range(0, len(X), batch_size):
        batch = order[start:start + batch_size]
        y_hat, cache = fh.forward(params, X[batch])
        loss, dy_hat = fh.mse_loss(y_hat, y[batch])
        fh.sgd_step(params, fh.backward(params, cache, dy_hat), lr)
        losses.append(loss * len(batch))
    return sum(losses) / len(X)


def test_train_epoch_is_the_lesson_loop_up_to_rounding():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((70, 2304)), rng.standard_normal(70)
    fast, slow = fh.init_params(6, dtype=np.float64), fh.init_params(6, dtype=np.float64)
    for seed in (1, 2):  # two epochs; batches of 16, 16, 16, 16 and a partial one of 6
        loss_fast = fh.train_epoch(fast, X, y, 0.01, 16, np.random.default_rng(seed))
        loss_slow = lesson_epoch(slow, X, y, 0.01, 16, np.random.default_rng(seed))
        assert abs(loss_fast - loss_slow) < 1e-12 * abs(loss_slow)
    for name in slow:
        assert fh.rel_error(fast[name], slow[name]) < 1e-12, name


def test_float32_training_stays_float32_whatever_the_data_dtype():
    rng = np.random.default_rng(0)
    X64, y64 = rng.standard_normal((40, 2304)), rng.standard_normal(40)
    reference = fh.init_params(4)  # float32
    fh.train_epoch(reference, X64.astype(np.float32), y64.astype(np.float32), 0.01, 16, np.random.default_rng(1))
    params = fh.init_params(4)
    fh.train_epoch(params, X64, y64, np.float64(0.01), 16, np.random.default_rng(1))  # float64 data, numpy lr
    for name, p in params.items():
        assert p.dtype == np.float32, name
        np.testing.assert_array_equal(p, reference[name])  # batches converted to float32, the same arithmetic


def test_train_epoch_updates_the_callers_arrays_and_leaves_W1_row_major():
    X, age = teacher_problem(50)
    params = fh.init_params(5)
    arrays = dict(params)
    fh.train_epoch(params, X, (age - age.mean()) / age.std(), 0.01, 16, np.random.default_rng(0))
    for name, p in params.items():
        assert p is arrays[name], name
    assert params["W1"].flags.c_contiguous


def test_the_blas_fast_path_and_the_numpy_fallback_train_alike(monkeypatch):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((70, 2304)).astype(np.float32), rng.standard_normal(70).astype(np.float32)
    fast, slow = fh.init_params(6), fh.init_params(6)
    fh.train_epoch(fast, X, y, 0.01, 16, np.random.default_rng(1))
    monkeypatch.setattr(fh, "_GEMM", {})  # as where NumPy's BLAS cannot be reached
    fh.train_epoch(slow, X, y, 0.01, 16, np.random.default_rng(1))
    for name in slow:
        assert fh.rel_error(fast[name], slow[name]) < 1e-6, name  # float32 roundoff at most


def test_a_diverging_epoch_still_writes_back_the_steps_it_took():
    X, age = teacher_problem(64)
    params = fh.init_params(4)
    W1_start = params["W1"].copy()
    with pytest.raises(fh.TrainingDiverged, match="epoch 1"):  # a first step far too big, then the loss explodes
        fh.train_epoch(params, X, (age - age.mean()) / age.std(), 1e3, 16, np.random.default_rng(0))
    assert not np.array_equal(params["W1"], W1_start)  # the steps taken on the epoch's copy of W1 are kept


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-6), (np.float64, 1e-14)])
@pytest.mark.parametrize("orders", ["CCC", "CCF", "CFC", "CFF", "FCC", "FCF", "FFC", "FFF"])  # C, A, B
@pytest.mark.parametrize("gemm", ["bundled BLAS", "NumPy fallback"])
def test_subtract_matmul_is_c_minus_a_at_b_in_place(monkeypatch, dtype, tol, orders, gemm):
    if gemm == "NumPy fallback":
        monkeypatch.setattr(fh, "_GEMM", {})
    rng = np.random.default_rng(0)
    A = np.asarray(rng.standard_normal((7, 3)), dtype, order=orders[1])
    B = np.asarray(rng.standard_normal((3, 5)), dtype, order=orders[2])
    C = np.asarray(rng.standard_normal((7, 5)), dtype, order=orders[0])
    expected, C_array = C - A @ B, C
    fh._subtract_matmul(C, A, B)
    assert C is C_array
    assert fh.rel_error(C, expected) < tol


def test_subtract_matmul_falls_back_for_strided_or_mixed_inputs():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((7, 6)).astype(np.float32)[:, ::2]  # neither C- nor F-contiguous
    B, C = rng.standard_normal((3, 5)).astype(np.float32), rng.standard_normal((7, 5)).astype(np.float32)
    expected = C - A @ B
    fh._subtract_matmul(C, A, B)
    assert fh.rel_error(C, expected) < 1e-6
    C64 = rng.standard_normal((7, 5))
    expected = C64 - A @ B
    fh._subtract_matmul(C64, A, B)  # float32 operands, float64 C
    assert fh.rel_error(C64, expected) < 1e-6


def test_numpys_bundled_openblas_is_used_where_the_wheel_has_it():
    if not fh._wheel_openblas_files():
        pytest.skip("this NumPy has no bundled OpenBLAS (e.g. conda's or Apple's BLAS): train_epoch uses NumPy alone")
    assert set(fh._GEMM) == {np.dtype(np.float32), np.dtype(np.float64)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_train_epoch_takes_every_W1_step_in_one_gemm_call(monkeypatch, dtype):
    if not fh._GEMM:
        pytest.skip("this NumPy has no bundled OpenBLAS: train_epoch uses NumPy alone")
    calls = []
    counted = {t: (lambda *args, gemm=gemm: calls.append(args[3:6]) or gemm(*args)) for t, gemm in fh._GEMM.items()}
    monkeypatch.setattr(fh, "_GEMM", counted)
    X, age = teacher_problem(70)
    fh.train_epoch(fh.init_params(6, dtype=dtype), X, (age - age.mean()) / age.std(), 0.01, 16,
                   np.random.default_rng(0))
    batches = [16, 16, 16, 16, 6]
    if dtype == np.float32:  # column-major W1: W1.T (2304, 6) -= X_b.T @ step_Z
        assert calls == [(2304, 6, b) for b in batches]
    else:                    # W1 as stored: W1 (6, 2304) -= step_Z.T @ X_b
        assert calls == [(6, 2304, b) for b in batches]
