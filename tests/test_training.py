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
