"""Notebook 05: weight decay, momentum and the best epoch in fh.train, and the checks of their exercises.

The additions run inside the lesson's own loop (train_epoch calls sgd_step; train() binds that name
to a step with decay and momentum), so the tests compare train() with loops written out by hand.
"""
import re
import types
from pathlib import Path

import numpy as np
import pytest

import faceage_helpers as fh
from check_support import fails, twin


def problem(n=96, seed=0):
    """Random fake faces whose 'age' is a noisy linear function of their pixels (no real faces)."""
    rng = np.random.default_rng(seed)
    X = rng.random((n, 2304), dtype=np.float32)
    age = 35 + 400 * (X[:, :300].mean(axis=1) - X[:, 300:600].mean(axis=1)) + rng.normal(0, 3, n)
    return X, age


def small_params(seed=0):
    rng = np.random.default_rng(seed)
    return {"W1": rng.standard_normal((3, 4)), "b1": rng.standard_normal(3),
            "W2": rng.standard_normal((1, 3)), "b2": rng.standard_normal(1)}


def test_add_weight_decay_adds_lambda_w_to_the_weights_only():
    params, grads = small_params(0), small_params(1)
    out = fh.add_weight_decay({k: g.copy() for k, g in grads.items()}, params, 0.1)
    for name in ("W1", "W2"):
        np.testing.assert_allclose(out[name], grads[name] + 0.1 * params[name])
    for name in ("b1", "b2"):
        np.testing.assert_array_equal(out[name], grads[name])


def test_momentum_step_keeps_its_velocity_and_without_momentum_is_sgd():
    params, g1, g2 = small_params(0), small_params(1), small_params(2)
    start, arrays = {k: p.copy() for k, p in params.items()}, dict(params)
    velocity = {k: np.zeros_like(p) for k, p in params.items()}
    fh.momentum_step(params, g1, velocity, 0.1, 0.9)
    fh.momentum_step(params, g2, velocity, 0.1, 0.9)
    for k in params:
        v2 = 0.9 * (-0.1 * g1[k]) - 0.1 * g2[k]
        np.testing.assert_allclose(velocity[k], v2)
        np.testing.assert_allclose(params[k], start[k] - 0.1 * g1[k] + v2)
        assert params[k] is arrays[k]  # in place: the model holds these arrays
    plain, sgd = {k: p.copy() for k, p in start.items()}, {k: p.copy() for k, p in start.items()}
    fh.momentum_step(plain, g1, {k: np.zeros_like(p) for k, p in start.items()}, 0.1, 0.0)
    fh.sgd_step(sgd, g1, 0.1)
    for k in start:
        np.testing.assert_array_equal(plain[k], sgd[k])


def hand_lesson(weight_decay, momentum):
    """The lesson functions, with a train_epoch that does decay and momentum itself (a second loop, written
    out here only to compare train()'s result with)."""
    velocity = {}

    def train_epoch(params, X, y, lr, batch_size, rng):
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
    return types.SimpleNamespace(forward=fh.forward, mse_loss=fh.mse_loss, backward=fh.backward,
                                 sgd_step=fh.sgd_step, train_epoch=train_epoch)


@pytest.mark.parametrize("weight_decay, momentum", [(0.05, 0.0), (0.0, 0.8), (0.05, 0.8)])
def test_train_with_decay_and_momentum_matches_the_loop_written_out(weight_decay, momentum):
    X, y = problem()
    kw = dict(n_hidden=4, lr=0.01, lr_decay=0.7, batch_size=20, epochs=3, mirror=False, verbose=False)
    model = fh.train(X, y, weight_decay=weight_decay, momentum=momentum, **kw)
    by_hand = fh.train(X, y, lesson=hand_lesson(weight_decay, momentum), **kw)  # velocity kept across epochs
    plain = fh.train(X, y, **kw)
    for k in model.params:
        np.testing.assert_allclose(model.params[k], by_hand.params[k], rtol=1e-5, atol=1e-7, err_msg=k)
    assert not np.allclose(model.params["W1"], plain.params["W1"], rtol=1e-3, atol=0)
    assert model.settings["weight_decay"] == weight_decay and model.settings["momentum"] == momentum


def test_weight_decay_shrinks_the_weights():
    X, y = problem()
    kw = dict(n_hidden=4, lr=0.02, epochs=4, batch_size=16, mirror=False, verbose=False)
    norms = [np.linalg.norm(fh.train(X, y, weight_decay=lam, **kw).params["W1"]) for lam in (0.0, 2.0)]
    assert norms[1] < 0.7 * norms[0], norms  # each step multiplies W by 1 - lr * lambda = 0.96


STUDENT_LOOP = '''
def train_epoch(params, X, y, lr, batch_size, rng):
    order, total = rng.permutation(len(X)), 0.0
    for start in range(0, len(X), batch_size):
        batch = order[start:start + batch_size]
        y_hat, cache = forward(params, X[batch])
        loss, dy_hat = mse_loss(y_hat, y[batch])
        sgd_step(params, backward(params, cache, dy_hat), lr)
        total += loss * len(batch)
    return total / len(X)
'''


def student_lesson(loop=STUDENT_LOOP):
    """A lesson as fh.lesson_functions builds one: the loop runs in its own namespace, every call counted."""
    calls = dict.fromkeys(["forward", "mse_loss", "backward", "sgd_step", "add_weight_decay", "momentum_step"], 0)
    namespace = {"np": np, "fh": fh}
    for name in calls:
        original = getattr(fh, name)

        def counted(*args, _name=name, _original=original):
            calls[_name] += 1
            return _original(*args)
        namespace[name] = counted
    exec(loop, namespace)
    return types.SimpleNamespace(calls=calls, **namespace), calls


@pytest.mark.parametrize("momentum, stepper", [(0.9, "momentum_step"), (0.0, "sgd_step")])
def test_the_students_loop_steps_with_the_students_functions(momentum, stepper):
    lesson, calls = student_lesson()
    X, y = problem(50)
    fh.train(X, y, n_hidden=3, batch_size=16, epochs=2, mirror=False, verbose=False, lesson=lesson,
             weight_decay=0.01, momentum=momentum)
    batches = 2 * 4  # 2 epochs of batches of 16, 16, 16 and 2
    assert calls["backward"] == calls["add_weight_decay"] == calls[stepper] == batches
    assert calls["momentum_step" if stepper == "sgd_step" else "sgd_step"] == 0


def test_the_default_settings_never_touch_the_additions(monkeypatch):
    def untouchable(*args):
        raise AssertionError("called with the default settings")
    monkeypatch.setattr(fh, "add_weight_decay", untouchable)
    monkeypatch.setattr(fh, "momentum_step", untouchable)
    X, y = problem(40)
    model = fh.train(X, y, X[:10], y[:10], n_hidden=3, epochs=2, mirror=False, verbose=False)
    assert "best_epoch" not in model.history


def test_a_lesson_without_the_functions_or_a_loop_without_sgd_step_is_named():
    X, y = problem(40)
    kw = dict(n_hidden=3, epochs=1, mirror=False, verbose=False)
    lesson = types.SimpleNamespace(**{name: getattr(fh, name) for name in fh.LESSON_FUNCTIONS})
    with pytest.raises(AttributeError, match=r"no momentum_step: write it in notebook 05 .* "
                                             r"lesson\.momentum_step = momentum_step"):
        fh.train(X, y, lesson=lesson, momentum=0.9, **kw)
    inlined, _ = student_lesson(STUDENT_LOOP.replace("sgd_step(params, backward(params, cache, dy_hat), lr)",
                                                     "fh.sgd_step(params, backward(params, cache, dy_hat), lr)"))
    with pytest.raises(ValueError, match=r"train_epoch never called sgd_step.*sgd_step\(params, grads, lr\)"):
        fh.train(X, y, lesson=inlined, weight_decay=0.1, **kw)


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


def test_bad_settings_get_clear_messages():
    X, y = problem(20)
    with pytest.raises(ValueError, match="keep_best=True needs validation faces"):
        fh.train(X, y, n_hidden=2, epochs=1, keep_best=True, verbose=False)
    for bad in (dict(weight_decay=-0.1), dict(momentum=1.0), dict(momentum=-0.5)):
        with pytest.raises(ValueError, match="weight_decay must be >= 0 and momentum at least 0 and below 1"):
            fh.train(X, y, n_hidden=2, epochs=1, verbose=False, **bad)


# --- the exercise checks: the reference passes; each typical mistake is named ---

EXERCISES = ["add_weight_decay", "momentum_step"]


@pytest.mark.parametrize("name", EXERCISES)
def test_the_reference_code_passes_with_one_line_and_the_modules_own_is_named(name, capsys):
    check = getattr(fh, f"check_{name}")
    check(twin(getattr(fh, name)))
    assert capsys.readouterr().out == f"{name}: all checks passed.\n"
    fails(check, getattr(fh, name), f"{name}: this is fh.{name}, the module's own function, not yours")


def decay_biases(grads, params, weight_decay):
    return {k: grads[k] + weight_decay * params[k] for k in grads}


def decay_without_lambda(grads, params, weight_decay):
    return {k: grads[k] + params[k] if k[0] == "W" else grads[k] for k in grads}


def decay_twice(grads, params, weight_decay):
    for k in ("W1", "W2"):
        grads[k] += weight_decay * params[k]
    return {k: grads[k] + weight_decay * params[k] if k[0] == "W" else grads[k] for k in grads}


def decay_the_weights_too(grads, params, weight_decay):
    for k in ("W1", "W2"):
        grads[k] += weight_decay * params[k]
        params[k] *= 1 - weight_decay
    return grads


def decay_in_place_only(grads, params, weight_decay):
    for k in ("W1", "W2"):
        grads[k] += weight_decay * params[k]


def decay_stub(grads, params, weight_decay):
    raise NotImplementedError("grads[name] + weight_decay * params[name] for W1 and W2")


DECAY_MISTAKES = [
    (decay_biases, ["b1 and b2 are wrong: the bias is decayed too", "W1 and W2 only"]),
    (decay_without_lambda, ["W1 and W2 are wrong: the factor lambda is missing"]),
    (decay_twice, ["lambda * W is added twice"]),
    (decay_the_weights_too, ["it changed params (W1 and W2)", "applies the decay twice"]),
    (decay_in_place_only, ["it returns None: end with `return grads`"]),
    (decay_stub, ["add_weight_decay is not implemented yet", "Hint: grads[name] + weight_decay"]),
]


@pytest.mark.parametrize("mutant, phrases", DECAY_MISTAKES)
def test_check_add_weight_decay_names_the_mistake(mutant, phrases):
    fails(fh.check_add_weight_decay, mutant, *phrases)


def velocity_not_kept(params, grads, velocity, lr, momentum):
    for k, p in params.items():
        v = velocity[k]
        v = momentum * v - lr * grads[k]  # a new array: velocity[k] never changes
        p += v


def velocity_reset(params, grads, velocity, lr, momentum):
    for k, p in params.items():
        velocity[k] = -lr * grads[k]
        p += velocity[k]


def velocity_uphill(params, grads, velocity, lr, momentum):
    for k, p in params.items():
        velocity[k] = momentum * velocity[k] + lr * grads[k]
        p += velocity[k]


def params_minus_velocity(params, grads, velocity, lr, momentum):
    for k, p in params.items():
        velocity[k] = momentum * velocity[k] - lr * grads[k]
        p -= velocity[k]


def step_before_velocity(params, grads, velocity, lr, momentum):
    for k, p in params.items():
        p += velocity[k]
        velocity[k] = momentum * velocity[k] - lr * grads[k]


def new_param_arrays(params, grads, velocity, lr, momentum):
    for k, p in params.items():
        velocity[k] = momentum * velocity[k] - lr * grads[k]
        params[k] = p + velocity[k]


def weights_only(params, grads, velocity, lr, momentum):
    for k in ("W1", "W2"):
        velocity[k] = momentum * velocity[k] - lr * grads[k]
        params[k] += velocity[k]


MOMENTUM_MISTAKES = [
    (velocity_not_kept, ["(step 1 of 3): velocity did not change", "every step would be plain SGD"]),
    (velocity_reset, ["(step 2 of 3): velocity: W1, b1, W2 and b2 are wrong: the new velocity forgets the old one"]),
    (velocity_uphill, ["velocity: W1, b1, W2 and b2 are wrong: it has the wrong sign: v <- momentum * v - lr * g"]),
    (params_minus_velocity, ["params: W1, b1, W2 and b2 are wrong: it has the wrong sign: p <- p + v"]),
    (step_before_velocity, ["it moved with the velocity of the step before", "update v first"]),
    (new_param_arrays, ["it puts new arrays into params"]),
    (weights_only, ["the velocity of b1 and b2 did not change"]),
]


@pytest.mark.parametrize("mutant, phrases", MOMENTUM_MISTAKES)
def test_check_momentum_step_names_the_mistake(mutant, phrases):
    fails(fh.check_momentum_step, mutant, *phrases)


def test_the_messages_teaching_md_quotes_are_what_the_checks_say():
    """The quotes in TEACHING.md's paragraphs on these two checks come from the messages of the mutants above."""
    tables = {fh.check_add_weight_decay: DECAY_MISTAKES, fh.check_momentum_step: MOMENTUM_MISTAKES}
    messages = [" ".join(str(pytest.raises(fh.ExerciseCheckError, check, mutant).value).split())
                for check, table in tables.items() for mutant, _ in table]
    guide = (Path(__file__).resolve().parents[1] / "TEACHING.md").read_text(encoding="utf-8")
    paragraphs = re.findall(r"\*\*(?:add_weight_decay|momentum_step)\*\* \(notebook 05\):(.*?)\n\n", guide, re.S)
    quoted = [" ".join(q.split()) for paragraph in paragraphs for q in re.findall(r'"([^"]+)"', paragraph)]
    assert len(paragraphs) == 2 and len(quoted) >= 5
    for quote in quoted:
        assert any(quote in m for m in messages), f"TEACHING.md quotes a message no check gives: {quote!r}"
