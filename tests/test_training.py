"""Training: SGD lowers the loss, recovers a known function, is reproducible, and stops clearly on divergence."""
import json
import sys

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


class Counted:
    """The module's lesson functions, each counting its calls."""

    def __init__(self, monkeypatch=None):
        self.calls = dict.fromkeys(fh.LESSON_FUNCTIONS, 0)
        for name in self.calls:
            original = getattr(fh, name)

            def counted(*args, _name=name, _original=original):
                self.calls[_name] += 1
                return _original(*args)
            setattr(self, name, counted)
            if monkeypatch is not None:
                monkeypatch.setattr(fh, name, counted)


def test_train_runs_the_lesson_functions_for_every_minibatch(monkeypatch):
    counted = Counted(monkeypatch)  # patched into the module: fh.train_epoch looks them up there
    X, y = teacher_problem(70)
    fh.train(X, y, n_hidden=4, batch_size=16, epochs=2, mirror=False, verbose=False)
    batches = 2 * 5  # 2 epochs of batches of 16, 16, 16, 16 and 6
    assert counted.calls == {"forward": batches + 1, "mse_loss": batches + 1,  # + the starting loss
                             "backward": batches, "sgd_step": batches, "train_epoch": 2}


def test_the_module_has_one_loop_and_no_calls_into_c():
    source = open(fh.__file__, encoding="utf-8").read()
    assert "ctypes" not in source and "ctypes" not in sys.modules.get("faceage_helpers").__dict__
    assert source.count("for start in range(0, N, batch_size)") == 1  # the lesson loop, once


def test_train_and_predict_run_the_lesson_it_is_given():
    lesson = Counted()  # not patched into the module: only train(..., lesson=lesson) can call it
    X, y = teacher_problem(40)
    model = fh.train(X, y, n_hidden=3, batch_size=20, epochs=1, mirror=False, verbose=False, lesson=lesson)
    assert lesson.calls["train_epoch"] == 1 and lesson.calls["forward"] == 1 and model.lesson is lesson
    before = lesson.calls["forward"]
    fh.predict(model, X[:5])
    assert lesson.calls["forward"] == before + 1


def test_train_epoch_updates_the_callers_arrays_and_keeps_float32():
    X, age = teacher_problem(50)
    params = fh.init_params(5)
    arrays = dict(params)
    loss = fh.train_epoch(params, X, ((age - age.mean()) / age.std()).astype(np.float32), 0.01, 16,
                          np.random.default_rng(0))
    for name, p in params.items():
        assert p is arrays[name] and p.dtype == np.float32, name
    assert np.isfinite(loss)


def test_the_epoch_loss_weights_each_batch_by_its_size():
    X, age = teacher_problem(40)
    y = ((age - age.mean()) / age.std()).astype(np.float32)
    params, rng = fh.init_params(3), np.random.default_rng(0)
    start = {k: v.copy() for k, v in params.items()}
    loss = fh.train_epoch(params, X, y, 0.0, 32, rng)  # lr 0: the loss of the start, in batches of 32 and 8
    assert loss == pytest.approx(fh.mse_loss(fh.forward(start, X)[0], y)[0], rel=1e-5)


def test_standardize_fit_matches_numpy_without_a_float64_copy():
    X = np.random.default_rng(0).random((5000, 2304), dtype=np.float32)  # more rows than one chunk
    mean, std = fh.standardize_fit(X)
    assert mean.dtype == std.dtype == np.float32
    np.testing.assert_allclose(mean, X.mean(axis=0, dtype=np.float64), rtol=1e-6)
    np.testing.assert_allclose(std, X.std(axis=0, dtype=np.float64), rtol=1e-5)


def write_notebook(path, *sources):
    nb = {"cells": [{"cell_type": "code", "source": src, "metadata": {}, "outputs": [], "execution_count": None}
                    for src in sources], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))


def test_lesson_functions_reads_the_notebooks_defs(tmp_path, capsys):
    write_notebook(tmp_path / "02_backprop.ipynb", "import numpy as np\nprint('not run')",
                   "def relu(z):\n    return np.maximum(z, 0)\n\ndef forward(params, X):\n    return 'mine'",
                   "def mse_loss(y_hat, y):\n    return 1.0, y_hat - y\nprint('not run either')",
                   "%matplotlib inline", "def backward(params, cache, dy_hat):\n    return relu(dy_hat)")
    write_notebook(tmp_path / "03_training.ipynb", "def sgd_step(params, grads, lr):\n    pass",
                   "def train_epoch(params, X, y, lr, batch_size, rng):\n    return 0.5")
    lesson = fh.lesson_functions(tmp_path)
    assert capsys.readouterr().out == ("Training runs the code of your notebooks: forward, mse_loss and backward "
                                       "from 02_backprop.ipynb; sgd_step and train_epoch from 03_training.ipynb.\n")
    assert lesson.forward(None, None) == "mine" and lesson.train_epoch(*[None] * 6) == 0.5
    assert list(lesson.backward(None, None, np.array([-1.0, 2.0]))) == [0.0, 2.0]  # its helper came along


def test_lesson_functions_says_what_is_missing(tmp_path):
    write_notebook(tmp_path / "02_backprop.ipynb", "def forward(params, X):\n    pass")
    write_notebook(tmp_path / "03_training.ipynb", "x = 1")
    with pytest.raises(NameError, match="no `def mse_loss` found in notebook 02"):
        fh.lesson_functions(tmp_path)
