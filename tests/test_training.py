"""Training: fh.train runs the lesson's loop and functions, lowers the loss, recovers a known function, is
reproducible, keeps snapshots and the best epoch, stops clearly on divergence; Model and predict; the
steps notebook 05 builds (weight decay, momentum) go in with dataclasses.replace(lesson, sgd_step=step).
"""
import dataclasses

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


def problem(n=96, seed=0):
    """Random fake faces whose 'age' is a noisy linear function of their pixels (no real faces)."""
    rng = np.random.default_rng(seed)
    X = rng.random((n, 2304), dtype=np.float32)
    age = 35 + 400 * (X[:, :300].mean(axis=1) - X[:, 300:600].mean(axis=1)) + rng.normal(0, 3, n)
    return X, age


def counted(lesson=fh.REFERENCE, names=("forward", "mse_loss", "backward", "sgd_step", "train_epoch")):
    """(lesson, calls): the lesson with each named function counting its calls."""
    calls = dict.fromkeys(names, 0)

    def wrap(name, fn):
        def counting(*args):
            calls[name] += 1
            return fn(*args)
        counting.__name__ = f"counted_{name}"  # not an exercise's name: fh.train's vetting leaves it alone
        return counting
    return dataclasses.replace(lesson, **{n: wrap(n, getattr(lesson, n)) for n in names}), calls


# --- fh.train runs the lesson it is given ---------------------------------------------------

def test_train_calls_train_epoch_once_per_epoch_and_the_lessons_functions_once_per_minibatch():
    lesson, calls = counted()
    X, y = teacher_problem(70)
    model = fh.train(X, y, lesson=lesson, n_hidden=4, batch_size=16, epochs=2, mirror=False, verbose=False)
    batches = 2 * 5  # 2 epochs of batches of 16, 16, 16, 16 and 6
    assert calls == {"forward": batches + 1, "mse_loss": batches + 1,  # + the starting loss
                     "backward": batches, "sgd_step": batches, "train_epoch": 2}
    assert model.lesson is lesson


def test_with_validation_faces_predict_runs_the_lessons_forward_once_per_epoch():
    lesson, calls = counted()
    X, y = teacher_problem(70)
    fh.train(X, y, X[:30], y[:30], lesson=lesson, n_hidden=4, batch_size=35, epochs=3, mirror=True, verbose=False)
    batches = 3 * 4  # 140 faces with their mirror images: batches of 35
    assert calls["forward"] == batches + 1 + 3 and calls["backward"] == batches and calls["train_epoch"] == 3


def test_train_and_predict_run_the_given_lessons_functions_not_the_modules(monkeypatch):
    students = {name: getattr(fh, name) for name in ("forward", "mse_loss", "backward", "sgd_step", "train_epoch")}

    def not_me(*args):
        raise AssertionError("the module's own function ran, not the lesson's")
    for name in students:
        monkeypatch.setattr(fh, name, not_me)  # only what the lesson holds can run
    lesson, calls = counted(fh.Lesson(**students))
    X, y = teacher_problem(40)
    model = fh.train(X, y, lesson=lesson, n_hidden=3, batch_size=20, epochs=1, mirror=False, verbose=False)
    before = calls["forward"]
    fh.predict(model, X[:5])
    assert calls["forward"] == before + 1
    assert model.settings["step"] == "counted_sgd_step"  # the name of the lesson's step function


def test_the_module_calls_no_c_code_of_its_own():
    assert "ctypes" not in vars(fh)


def test_another_network_trains_through_the_same_train_epoch():
    """A deeper network (two hidden layers) goes in with dataclasses.replace: fh.train_epoch, fh.sgd_step and
    fh.train stay as they are."""
    def init(n_hidden, seed=0, dtype=np.float32):
        rng = np.random.default_rng(seed)
        return {"W1": (rng.standard_normal((n_hidden, 2304)) * np.sqrt(2 / 2304) * 0.1).astype(dtype),
                "b1": np.zeros(n_hidden, dtype), "W2": (rng.standard_normal((n_hidden, n_hidden))
                                                        * np.sqrt(2 / n_hidden)).astype(dtype),
                "b2": np.zeros(n_hidden, dtype),
                "W3": (rng.standard_normal((1, n_hidden)) * np.sqrt(1 / n_hidden)).astype(dtype),
                "b3": np.zeros(1, dtype)}

    def forward(p, X):
        Z1 = X @ p["W1"].T + p["b1"]
        H1 = np.maximum(Z1, 0)
        Z2 = H1 @ p["W2"].T + p["b2"]
        H2 = np.maximum(Z2, 0)
        return H2 @ p["W3"][0] + p["b3"][0], (X, Z1, H1, Z2, H2)

    def backward(p, cache, dy):
        X, Z1, H1, Z2, H2 = cache
        dZ2 = dy[:, None] * p["W3"] * (Z2 > 0)
        dZ1 = (dZ2 @ p["W2"]) * (Z1 > 0)
        return {"W3": dy[None, :] @ H2, "b3": dy.sum(keepdims=True), "W2": dZ2.T @ H1, "b2": dZ2.sum(axis=0),
                "W1": dZ1.T @ X, "b1": dZ1.sum(axis=0)}

    deep, calls = counted(dataclasses.replace(fh.REFERENCE, init_params=init, forward=forward, backward=backward),
                          names=("forward", "backward", "train_epoch"))
    small = {k: np.asarray(v, np.float64) for k, v in init(4).items()}  # its backward is right
    results = fh.gradient_check(small, *teacher_problem(6)[:1], np.ones(6), lesson=deep, n_entries=20)
    assert max(r.rel_error for r in results.values()) < 1e-6
    X, y = teacher_problem(600)
    model = fh.train(X, y, X[:100], y[:100], lesson=deep, n_hidden=16, lr=0.002, batch_size=32, epochs=6,
                     mirror=False, verbose=False)
    assert set(model.params) == {"W1", "b1", "W2", "b2", "W3", "b3"} and calls["train_epoch"] == 6
    losses = model.history["train_loss"]
    assert losses[-1] < 0.5 * losses[0], losses
    assert fh.predict(model, X[:5]).shape == (5,)


# --- what training does -------------------------------------------------------------------

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


def test_a_wrong_backward_in_the_lesson_diverges_with_advice():
    def uphill(params, cache, dy_hat):  # a sign error: every step climbs
        return {k: -g for k, g in fh.backward(params, cache, dy_hat).items()}
    X, y = teacher_problem(300)
    with pytest.raises(fh.TrainingDiverged, match="Training diverged in epoch"):
        fh.train(X, y, lesson=dataclasses.replace(fh.REFERENCE, backward=uphill), n_hidden=8, lr=0.05, epochs=20,
                 verbose=False)


def test_float64_training_and_snapshots():
    X, y = teacher_problem(200)
    model = fh.train(X, y, n_hidden=5, epochs=4, dtype=np.float64, snapshot_every=2, verbose=False)
    assert model.params["W1"].dtype == np.float64
    assert model.history["W1_epochs"] == [0, 2, 4]
    snaps = model.history["W1_snapshots"]
    assert not np.array_equal(snaps[0], snaps[1])
    np.testing.assert_array_equal(snaps[0], fh.init_params(5, seed=0, dtype=np.float64)["W1"])
    np.testing.assert_array_equal(snaps[-1], model.params["W1"])


def test_mirror_doubles_the_data_with_flipped_faces():
    X = np.arange(2 * 2304, dtype=np.float32).reshape(2, 2304) / 5000
    flipped = fh.mirror_faces(X).reshape(2, 48, 48)
    np.testing.assert_array_equal(flipped[1, 5], X.reshape(2, 48, 48)[1, 5, ::-1])
    np.testing.assert_array_equal(fh.mirror_faces(fh.mirror_faces(X)), X)
    lesson, calls = counted()
    fh.train(*teacher_problem(40), lesson=lesson, n_hidden=2, batch_size=40, epochs=1, mirror=True, verbose=False)
    assert calls["backward"] == 2  # 80 faces: the 40 and their mirror images


@pytest.mark.parametrize("mirror", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_training_faces_are_the_whole_set_standardised_batch_by_batch(mirror, dtype):
    """fh.train keeps no standardised copy (issue 24): each batch equals, bit for bit, the same rows of the
    whole set (with its mirror images) standardised first, and the faces given are not copied or changed."""
    X, y = teacher_problem(50)
    before = X.copy()
    Xs, ys, x_mean, x_std, _, _ = fh._training_arrays(X, y, mirror=mirror, dtype=dtype)
    assert Xs.X is X and len(Xs) == len(ys) == (100 if mirror else 50) and Xs.shape == (len(ys), 2304)
    whole = np.concatenate([X, fh.mirror_faces(X)]) if mirror else X
    whole = (whole.astype(dtype) - x_mean) / x_std
    batch = np.random.default_rng(0).permutation(len(Xs))[:30]
    for index in (batch, slice(3, 9), slice(None, None, -7), -1, 0, [len(Xs) - 1]):
        assert Xs[index].dtype == dtype
        np.testing.assert_array_equal(Xs[index], whole[index])
    np.testing.assert_array_equal(X, before)
    with pytest.raises(IndexError):
        Xs[len(Xs)]


def test_progress_lines_are_printed(capsys):
    X, y = teacher_problem(200)
    fh.train(X, y, X[:50], y[:50], n_hidden=4, epochs=2, verbose=True)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("epoch   1/2 [") and "val RMSE" in out[1]


def test_standardize_fit_matches_numpy_without_a_float64_copy():
    X = np.random.default_rng(0).random((5000, 2304), dtype=np.float32)  # more rows than one chunk
    mean, std = fh.standardize_fit(X)
    assert mean.dtype == std.dtype == np.float32
    np.testing.assert_allclose(mean, X.mean(axis=0, dtype=np.float64), rtol=1e-6)
    np.testing.assert_allclose(std, X.std(axis=0, dtype=np.float64), rtol=1e-5)


# --- Model, predict, save and load --------------------------------------------------------------

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
    assert loaded.settings == model.settings and loaded.lesson is fh.REFERENCE
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


def test_a_model_predicts_with_the_lesson_it_holds():
    X, y = teacher_problem(100)
    model = fh.train(X, y, n_hidden=3, epochs=1, verbose=False)
    assert model.lesson is fh.REFERENCE
    doubled = dataclasses.replace(model, lesson=dataclasses.replace(
        fh.REFERENCE, forward=lambda p, X: (2 * fh.forward(p, X)[0], None)))
    scaled = (fh.predict(model, X[:4]) - model.y_mean) * 2 + model.y_mean
    np.testing.assert_allclose(fh.predict(doubled, X[:4]), scaled, rtol=1e-5)


# --- keep_best and bad settings -----------------------------------------------------------------

def test_keep_best_restores_the_epoch_with_the_lowest_validation_error():
    X, y = problem(200)
    X_val, y_val = problem(100, seed=1)
    kw = dict(n_hidden=32, lr=0.003, lr_decay=1.0, batch_size=8, mirror=False, verbose=False)  # overfits soon
    model = fh.train(X, y, X_val, y_val, epochs=8, keep_best=True, **kw)
    rmse = model.history["val_rmse"]
    best = model.history["best_epoch"]
    assert best == int(np.argmin(rmse)) + 1 and best < 8, rmse  # the last epoch is not the best here
    shorter = fh.train(X, y, X_val, y_val, epochs=best, **kw)  # the same run, stopped at the best epoch
    for k in model.params:
        np.testing.assert_array_equal(model.params[k], shorter.params[k])
    assert fh.regression_metrics(y_val, fh.predict(model, X_val))["rmse"] == pytest.approx(min(rmse))


def test_patience_stops_once_that_many_epochs_brought_no_new_lowest_validation_error():
    X, y = problem(200)
    X_val, y_val = problem(100, seed=1)
    kw = dict(n_hidden=32, lr=0.003, lr_decay=1.0, batch_size=8, mirror=False, verbose=False)  # overfits soon
    full = fh.train(X, y, X_val, y_val, epochs=12, **kw)
    rmse = full.history["val_rmse"]
    lowest_so_far = [e for e in range(1, 13) if rmse[e - 1] == min(rmse[:e])]
    stop = next(e for e in range(1, 13) if e - max(b for b in lowest_so_far if b <= e) >= 2)  # this run overfits
    stopped = fh.train(X, y, X_val, y_val, epochs=12, patience=2, **kw)
    assert stop < 12 and stopped.history["stopped_epoch"] == stop == len(stopped.history["val_rmse"]), rmse
    assert stopped.history["val_rmse"] == pytest.approx(rmse[:stop])  # the same run, cut short
    kept = fh.train(X, y, X_val, y_val, epochs=12, patience=2, keep_best=True, **kw)
    assert kept.history["best_epoch"] == int(np.argmin(rmse[:stop])) + 1


def test_bad_settings_get_clear_messages():
    X, y = problem(20)
    for needs_val in (dict(keep_best=True), dict(patience=2)):
        with pytest.raises(ValueError, match="keep_best and patience need validation faces"):
            fh.train(X, y, n_hidden=2, epochs=1, verbose=False, **needs_val)
    for gone in (dict(weight_decay=0.1), dict(momentum=0.9)):  # now steps of notebook 05, not settings
        with pytest.raises(TypeError, match="unexpected keyword argument"):
            fh.train(X, y, n_hidden=2, epochs=1, verbose=False, **gone)


def test_the_default_settings_never_touch_the_additions(monkeypatch):
    def untouchable(*args):
        raise AssertionError("called with the default settings")
    monkeypatch.setattr(fh, "add_weight_decay", untouchable)
    monkeypatch.setattr(fh, "momentum_step", untouchable)
    X, y = problem(40)
    model = fh.train(X, y, X[:10], y[:10], n_hidden=3, epochs=2, mirror=False, verbose=False)
    assert "best_epoch" not in model.history


# --- notebook 05's steps: dataclasses.replace(lesson, sgd_step=step) --------------------------------

def make_step(lesson, momentum=0.0, weight_decay=0.0, add_weight_decay=fh.add_weight_decay,
              momentum_step=fh.momentum_step):
    """A step for one run, as notebook 05 §5 builds it: decay (if any), then momentum with a velocity kept
    for the whole run (if any), else the lesson's sgd_step."""
    velocity = {}

    def step(params, grads, lr):
        if weight_decay:
            grads = add_weight_decay(grads, params, weight_decay)
        if not momentum:
            lesson.sgd_step(params, grads, lr)
            return
        if not velocity:
            velocity.update({name: np.zeros_like(p) for name, p in params.items()})
        momentum_step(params, grads, velocity, lr, momentum)
    return step


def hand_epoch(weight_decay, momentum):
    """An epoch that does decay and momentum itself: a second loop, written out here only to compare
    fh.train's result with."""
    velocity = {}

    def train_epoch(lesson, params, X, y, lr, batch_size, rng):
        if not velocity:
            velocity.update({k: np.zeros_like(p) for k, p in params.items()})
        order, total = rng.permutation(len(X)), 0.0
        for start in range(0, len(X), batch_size):
            batch = order[start:start + batch_size]
            y_hat, cache = fh.forward(params, X[batch])
            loss, dy_hat = fh.mse_loss(y_hat, y[batch])
            grads = fh.backward(params, cache, dy_hat)
            for k, p in params.items():
                g = grads[k] + weight_decay * p if k in ("W1", "W2") else grads[k]
                velocity[k] = momentum * velocity[k] - lr * g
                p += velocity[k]
            total += loss * len(batch)
        return total / len(X)
    return train_epoch


@pytest.mark.parametrize("weight_decay, momentum", [(0.05, 0.0), (0.0, 0.8), (0.05, 0.8)])
def test_a_step_with_decay_and_momentum_matches_the_loop_written_out(weight_decay, momentum):
    X, y = problem()
    kw = dict(n_hidden=4, lr=0.01, lr_decay=0.7, batch_size=20, epochs=3, mirror=False, verbose=False)
    step = make_step(fh.REFERENCE, momentum, weight_decay)
    model = fh.train(X, y, lesson=dataclasses.replace(fh.REFERENCE, sgd_step=step), **kw)
    by_hand = fh.train(X, y, lesson=dataclasses.replace(fh.REFERENCE, train_epoch=hand_epoch(weight_decay, momentum)),
                       **kw)  # velocity kept across epochs
    plain = fh.train(X, y, **kw)
    for k in model.params:
        np.testing.assert_allclose(model.params[k], by_hand.params[k], rtol=1e-5, atol=1e-7, err_msg=k)
    assert not np.allclose(model.params["W1"], plain.params["W1"], rtol=1e-3, atol=0)
    assert model.settings["step"] == "step"


def test_weight_decay_shrinks_the_weights():
    X, y = problem()
    kw = dict(n_hidden=4, lr=0.02, epochs=4, batch_size=16, mirror=False, verbose=False)
    norms = [np.linalg.norm(fh.train(X, y, lesson=dataclasses.replace(
        fh.REFERENCE, sgd_step=make_step(fh.REFERENCE, weight_decay=lam)), **kw).params["W1"]) for lam in (0.0, 2.0)]
    assert norms[1] < 0.7 * norms[0], norms  # each step multiplies W by 1 - lr * lambda = 0.96


@pytest.mark.parametrize("momentum, stepper", [(0.9, "momentum_step"), (0.0, "sgd_step")])
def test_the_step_runs_the_students_functions_once_per_batch(momentum, stepper):
    calls = dict.fromkeys(["add_weight_decay", "momentum_step", "sgd_step"], 0)

    def counting(name):
        def fn(*args):
            calls[name] += 1
            return getattr(fh, name)(*args)
        return fn
    student = dataclasses.replace(fh.REFERENCE, sgd_step=counting("sgd_step"))
    step = make_step(student, momentum, 0.01, counting("add_weight_decay"), counting("momentum_step"))
    X, y = problem(50)
    fh.train(X, y, lesson=dataclasses.replace(student, sgd_step=step), n_hidden=3, batch_size=16, epochs=2,
             mirror=False, verbose=False)
    batches = 2 * 4  # 2 epochs of batches of 16, 16, 16 and 2
    assert calls["add_weight_decay"] == calls[stepper] == batches
    assert calls["momentum_step" if stepper == "sgd_step" else "sgd_step"] == 0


def test_each_run_gets_a_fresh_velocity():
    X, y = problem(60)
    kw = dict(n_hidden=3, lr=0.01, batch_size=20, epochs=2, mirror=False, verbose=False)
    runs = [fh.train(X, y, lesson=dataclasses.replace(fh.REFERENCE, sgd_step=make_step(fh.REFERENCE, 0.9)), **kw)
            for _ in range(2)]
    for k in runs[0].params:
        np.testing.assert_array_equal(runs[0].params[k], runs[1].params[k])


def test_train_says_so_before_training_with_a_backward_that_fails_its_check(capsys):
    """A backward without the ReLU mask must not train quietly, and a run that then diverges blames it."""
    def backward(params, cache, dy_hat):  # the ReLU mask forgotten: every unit treated as active
        X, Z, H = cache
        return fh.backward(params, (X, np.ones_like(Z), H), dy_hat)
    lesson = dataclasses.replace(fh.REFERENCE, backward=backward)
    X, y = teacher_problem(40)
    fh.train(X, y, lesson=lesson, n_hidden=3, batch_size=20, epochs=1, mirror=False, verbose=False)
    assert capsys.readouterr().out.startswith("Before training: your backward (test_training) fails its check")
    with pytest.raises(fh.TrainingDiverged, match="Your backward failed its check") as info:
        fh.train(X, y, lesson=lesson, n_hidden=3, lr=1e6, batch_size=20, epochs=1, mirror=False, verbose=False)
    assert "learning rate is not the cause" in str(info.value)
    capsys.readouterr()
    fh.train(X, y, n_hidden=3, batch_size=20, epochs=1, mirror=False, verbose=False)  # the reference: no such line
    assert "Before training" not in capsys.readouterr().out
