"""The exercise checks (notebooks 02-06): each passes a right answer with one line, refuses the module's own
function and the released reference, and names the mistake in typical wrong answers.

The mutants below are the mistakes students make; each test asserts the check fails with the message that
explains that mistake. check_train_epoch runs the loop with a spy lesson, so only the loop is checked, and
its messages say what is wrong without handing over the fixed code.
"""
import re
from pathlib import Path

import numpy as np
import pytest

import faceage_helpers as fh
from check_support import MODULE_EXERCISES, RIGHT_LOOP, exec_source, fails, twin


def stub(*args):
    raise NotImplementedError("Z = X @ W1.T + b1, then H = relu(Z)")


LESSON = ["forward", "mse_loss", "backward", "numerical_gradient", "sgd_step", "train_epoch", "add_weight_decay",
          "momentum_step", "backward_to_input"]
CHECKS = [getattr(fh, f"check_{name}") for name in LESSON] + [fh.check_weight_image]


def test_every_exercise_of_the_table_has_a_check_here():
    # notebook 07's checks have tests of their own (tests/test_any_depth.py)
    assert sorted(LESSON + ["weight_image"]) == sorted(MODULE_EXERCISES)


@pytest.mark.parametrize("name", LESSON)
def test_reference_code_passes_with_one_line(name, capsys):
    getattr(fh, f"check_{name}")(twin(getattr(fh, name)))
    assert capsys.readouterr().out == f"{name}: all checks passed.\n"


def test_weight_image_passes_with_one_line(capsys):
    fh.check_weight_image(lambda W1, j: W1[j].reshape(48, 48))
    assert capsys.readouterr().out == "weight_image: all checks passed.\n"


@pytest.mark.parametrize("name", LESSON + ["weight_image"])
def test_the_modules_own_function_is_named_as_such_not_passed(name, capsys):
    fails(getattr(fh, f"check_{name}"), getattr(fh, name),
          f"{name}: this is fh.{name}, the module's own function, not yours")
    assert "all checks passed" not in capsys.readouterr().out


@pytest.mark.parametrize("name", LESSON)
def test_the_released_reference_is_named_as_such_not_passed(name, capsys):
    getattr(fh, f"check_{name}")(twin(getattr(fh, name), module=fh.REFERENCE_MODULE))
    assert capsys.readouterr().out == (f"{name}: this is the teacher's reference (faceage_reference.py), "
                                       f"not your own code: not checked.\n")


@pytest.mark.parametrize("check", CHECKS)
def test_unfilled_stub_says_not_implemented_and_repeats_the_hint(check):
    name = check.__name__.removeprefix("check_")
    message = fails(check, stub, f"{name} is not implemented yet: fill in the cell above",
                    "Hint: Z = X @ W1.T + b1, then H = relu(Z)")
    assert isinstance(fh.ExerciseCheckError(message), AssertionError)


def test_a_crash_is_reported_with_its_cause_and_a_non_function_is_refused():
    def forward(params, X):
        return undefined_name  # noqa: F821 (the mistake under test)
    fails(fh.check_forward, forward, "forward raised NameError", "undefined_name")
    fails(fh.check_forward, 3.0, "pass your function itself", "fh.check_forward(forward)")


# --- forward -------------------------------------------------------------------------------

def forward_without_relu(params, X):
    Z = X @ params["W1"].T + params["b1"]
    return Z @ params["W2"][0] + params["b2"][0], (X, Z, Z)


def forward_without_b1(params, X):
    Z = X @ params["W1"].T
    H = np.maximum(Z, 0)
    return H @ params["W2"][0] + params["b2"][0], (X, Z, H)


def forward_transposed(params, X):
    Z = params["W1"] @ X.T + params["b1"][:, None]
    H = np.maximum(Z, 0)
    return params["W2"][0] @ H + params["b2"][0], (X, Z, H)


def forward_column_output(params, X):
    Z = X @ params["W1"].T + params["b1"]
    H = np.maximum(Z, 0)
    return H @ params["W2"].T + params["b2"], (X, Z, H)


def forward_output_from_z(params, X):
    Z = X @ params["W1"].T + params["b1"]
    return Z @ params["W2"][0] + params["b2"][0], (X, Z, np.maximum(Z, 0))


def forward_without_cache(params, X):
    return fh.forward(params, X)[0]


FORWARD_MISTAKES = [
    (forward_without_relu, ["forward: H is wrong", "the ReLU is missing"]),
    (forward_without_b1, ["Z is wrong: b1 is missing"]),
    (forward_transposed, ["Z has shape (4, 5), expected (5, 4)", "looks transposed"]),
    (forward_column_output, ["y_hat has shape (5, 1), expected (5,)", "a column"]),
    (forward_output_from_z, ["y_hat is wrong: it is computed from Z"]),
    (forward_without_cache, ["must return (y_hat, cache)"]),
]


@pytest.mark.parametrize("mutant, phrases", FORWARD_MISTAKES)
def test_forward_mistakes(mutant, phrases):
    fails(fh.check_forward, mutant, *phrases)


# --- mse_loss ------------------------------------------------------------------------------

def loss_summed(y_hat, y):
    return float(np.sum((y_hat - y) ** 2)), 2 * (y_hat - y) / len(y)


def loss_gradient_without_n(y_hat, y):
    return float(np.mean((y_hat - y) ** 2)), 2 * (y_hat - y)


def loss_gradient_without_2(y_hat, y):
    return float(np.mean((y_hat - y) ** 2)), (y_hat - y) / len(y)


def loss_gradient_wrong_sign(y_hat, y):
    return float(np.mean((y_hat - y) ** 2)), 2 * (y - y_hat) / len(y)


def loss_gradient_averaged(y_hat, y):
    return float(np.mean((y_hat - y) ** 2)), np.mean(2 * (y_hat - y))


def loss_absolute(y_hat, y):
    return float(np.mean(np.abs(y_hat - y))), 2 * (y_hat - y) / len(y)


def loss_fixed_batch_size(y_hat, y):  # right for the notebook's first batch of 5, wrong for any other N
    return float(np.sum((y_hat - y) ** 2) / 5), 2 * (y_hat - y) / 5


def loss_only(y_hat, y):
    return float(np.mean((y_hat - y) ** 2))


MSE_LOSS_MISTAKES = [
    (loss_summed, ["the loss (N = 5) is 5 times too large", "the sum of the squared errors"]),
    (loss_gradient_without_n, ["dy_hat (N = 5) is 5 times too large", "the mean's 1/N stays in the gradient"]),
    (loss_gradient_without_2, ["dy_hat (N = 5) is half the right values", "the derivative of a square"]),
    (loss_gradient_wrong_sign, ["dy_hat (N = 5) is minus the right values", "check the sign of your derivative"]),
    (loss_gradient_averaged, ["dy_hat (N = 5) has shape (), expected (5,)", "one entry per face"]),
    (loss_absolute, ["the loss (N = 5) is wrong: it is the mean absolute error"]),
    (loss_fixed_batch_size, ["the loss (N = 3) is", "dy_hat (N = 3) is"]),
    (loss_only, ["must return two things", "the loss and its gradient"]),
]


@pytest.mark.parametrize("mutant, phrases", MSE_LOSS_MISTAKES)
def test_mse_loss_mistakes(mutant, phrases):
    fails(fh.check_mse_loss, mutant, *phrases)


# --- backward ------------------------------------------------------------------------------

def backward_parts(params, cache, dy_hat):
    """The pieces of a correct backward pass, for mutants to get one piece wrong."""
    X, Z, H = cache
    dH = dy_hat[:, None] * params["W2"]
    return X, Z, H, dH, dH * (Z > 0)


def backward_without_mask(params, cache, dy_hat):
    X, Z, H, dH, dZ = backward_parts(params, cache, dy_hat)
    return {"W1": dH.T @ X, "b1": dH.sum(axis=0), "W2": dy_hat[None, :] @ H, "b2": dy_hat.sum(keepdims=True)}


def backward_flipped_sign(params, cache, dy_hat):
    return {k: -g for k, g in fh.backward(params, cache, dy_hat).items()}


def backward_transposed_dW1(params, cache, dy_hat):
    X, Z, H, dH, dZ = backward_parts(params, cache, dy_hat)
    return {**fh.backward(params, cache, dy_hat), "W1": X.T @ dZ}


def backward_biases_not_summed(params, cache, dy_hat):
    X, Z, H, dH, dZ = backward_parts(params, cache, dy_hat)
    return {**fh.backward(params, cache, dy_hat), "b1": dZ, "b2": dy_hat}


def backward_divides_by_n_again(params, cache, dy_hat):
    return {k: g / len(dy_hat) for k, g in fh.backward(params, cache, dy_hat).items()}


def backward_db1_wrong_axis(params, cache, dy_hat):
    X, Z, H, dH, dZ = backward_parts(params, cache, dy_hat)
    return {**fh.backward(params, cache, dy_hat), "b1": dZ.sum(axis=1)}


def backward_overflows(params, cache, dy_hat):
    return {**fh.backward(params, cache, dy_hat), "W2": np.full((1, 4), np.nan)}  # e.g. after a division by 0


def backward_named_by_gradient(params, cache, dy_hat):
    return {"d" + k: g for k, g in fh.backward(params, cache, dy_hat).items()}


def test_backward_missing_relu_mask_names_dW1_and_db1_only():
    message = fails(fh.check_backward, backward_without_mask,
                    "backward: dW1 and db1 are wrong (dW2 and db2 are right)", "the ReLU mask is missing")
    assert message.count("the ReLU mask is missing") == 2


BACKWARD_MISTAKES = [
    (backward_flipped_sign, ["dW2, db2, dW1 and db1 are wrong",
                             "dW2, db2, dW1 and db1 are minus the right values: a sign error", "belongs in sgd_step"]),
    (backward_transposed_dW1, ["backward: dW1 is wrong (dW2, db2 and db1 are right)",
                               "dW1 has shape (2304, 4), expected (4, 2304)", "looks transposed"]),
    (backward_biases_not_summed, ["db2 and db1 are wrong", "db2 has shape (5,), expected (1,)",
                                  "db1 has shape (5, 4), expected (4,)", "one row per face"]),
    (backward_divides_by_n_again, ["5 times too small", "dy_hat already holds the mean's 1/N"]),
    (backward_db1_wrong_axis, ["db1 has shape (5,), expected (4,)", "instead of over the faces"]),
    (backward_overflows, ["backward: dW2 is wrong (db2, dW1 and db1 are right)", "dW2 contains NaN or inf"]),
    (backward_named_by_gradient, ["It has no W1, b1, W2 and b2", "'dW1'"]),
]


@pytest.mark.parametrize("mutant, phrases", BACKWARD_MISTAKES)
def test_backward_mistakes(mutant, phrases):
    fails(fh.check_backward, mutant, *phrases)


# --- numerical_gradient --------------------------------------------------------------------

def one_sided_difference(f, x, indices, h=1e-5):
    flat, grad = x.reshape(-1), np.zeros(len(indices))
    for k, i in enumerate(indices):
        f0 = f()
        flat[i] += h
        grad[k] = (f() - f0) / h
        flat[i] -= h
    return grad


def divides_by_h(f, x, indices, h=1e-5):
    return 2 * fh.numerical_gradient(f, x, indices, h)


def perturbs_a_copy(f, x, indices, h=1e-5):
    return fh.numerical_gradient(f, x.flatten(), indices, h)


def forgets_to_restore(f, x, indices, h=1e-5):
    flat, grad = x.reshape(-1), np.zeros(len(indices))
    for k, i in enumerate(indices):
        flat[i] += h
        f_plus = f()
        flat[i] -= 2 * h
        grad[k] = (f_plus - f()) / (2 * h)
    return grad


def ignores_indices(f, x, indices, h=1e-5):
    return fh.numerical_gradient(f, x, np.arange(len(indices)), h)


def integer_result(f, x, indices, h=1e-5):
    grad = np.zeros_like(indices)
    grad[:] = fh.numerical_gradient(f, x, indices, h)
    return grad


NUMERICAL_GRADIENT_MISTAKES = [
    (one_sided_difference, ["one-sided difference, x + h against x itself", "centered"]),
    (divides_by_h, ["twice the right values", "2h apart"]),
    (perturbs_a_copy, ["all zeros", "x.flatten()"]),
    (forgets_to_restore, ["x was not restored"]),
    (ignores_indices, ["entries 0, 1, 2, 3 of x, not at the given indices"]),
    (integer_result, ["returns integers", "must hold floats"]),
]


@pytest.mark.parametrize("mutant, phrases", NUMERICAL_GRADIENT_MISTAKES)
def test_numerical_gradient_mistakes(mutant, phrases):
    fails(fh.check_numerical_gradient, mutant, *phrases)


def test_numerical_gradient_check_is_stricter_than_one_sided_accuracy():
    # The one-sided mutant is only ~5e-6 off; it must be told apart from a correct answer (< 1e-8).
    x = np.array([[0.3, -1.2]])
    f = lambda: float(np.sum(4 * x ** 2))  # noqa: E731
    gap = fh.rel_error(one_sided_difference(f, x, [0, 1]), fh.numerical_gradient(f, x, [0, 1]))
    assert 1e-8 < gap < 1e-3


# --- sgd_step ------------------------------------------------------------------------------

def sgd_plus(params, grads, lr):
    for name in params:
        params[name] += lr * grads[name]


def sgd_returns_copies(params, grads, lr):
    return {name: p - lr * grads[name] for name, p in params.items()}


def sgd_rebinds_loop_variable(params, grads, lr):
    for p, g in zip(params.values(), grads.values()):
        p = p - lr * g  # noqa: F841 (the mistake under test)


def sgd_new_arrays_in_dict(params, grads, lr):
    for name in params:
        params[name] = params[name] - lr * grads[name]


def sgd_without_lr(params, grads, lr):
    for name in params:
        params[name] -= grads[name]


def sgd_weights_only(params, grads, lr):
    for name in ("W1", "W2"):
        params[name] -= lr * grads[name]


SGD_STEP_MISTAKES = [
    (sgd_plus, ["W1, b1, W2 and b2 are wrong: it moves along the gradient (uphill", "against it"]),
    (sgd_returns_copies, ["returns new arrays but leaves params unchanged", "in place"]),
    (sgd_rebinds_loop_variable, ["params did not change", "augmented assignment (-=)"]),
    (sgd_new_arrays_in_dict, ["puts new arrays into params (W1, b1, W2, b2)", "in place"]),
    (sgd_without_lr, ["ignores the learning rate"]),
    (sgd_weights_only, ["b1 and b2 did not change"]),
]


@pytest.mark.parametrize("mutant, phrases", SGD_STEP_MISTAKES)
def test_sgd_step_mistakes(mutant, phrases):
    fails(fh.check_sgd_step, mutant, *phrases)


# --- train_epoch: the check runs the loop with a spy lesson; the loop alone is checked ------------


def loop(*changes, **names):
    """The right loop with (old, new) replacements, defined as in a notebook cell (names: its globals)."""
    source = RIGHT_LOOP
    for old, new in changes:
        assert old in source, old
        source = source.replace(old, new)
    return exec_source(source, **names)["train_epoch"]


@pytest.mark.parametrize("changes", [
    (),
    (("order = rng.permutation(n)", "order = rng.choice(n, n, replace=False)"),),  # another shuffle
    (("order = rng.permutation(n)", "order = np.arange(n)\n    rng.shuffle(order)"),),
    (("total += loss * len(batch)", "total += loss * len(y[batch])"),),
], ids=["the lesson's loop", "rng.choice", "rng.shuffle", "len(y[batch])"])
def test_a_right_loop_passes_with_one_line(changes, capsys):
    fh.check_train_epoch(loop(*changes))
    assert capsys.readouterr().out == "train_epoch: all checks passed.\n"


def test_the_loop_is_checked_alone_whatever_the_notebooks_other_functions_do(capsys):
    def broken(*args):
        raise AssertionError("the check must not run the notebook's own functions")
    fh.check_train_epoch(loop(forward=broken, mse_loss=broken, backward=broken, sgd_step=broken))
    assert capsys.readouterr().out == "train_epoch: all checks passed.\n"


STARTS = "for start in range(0, n, batch_size):"
TRAIN_EPOCH_MISTAKES = {  # name: (changes to the right loop, globals of its cell, phrases the check must say)
    "drops the last batch": (
        [(STARTS, "for start in range(0, n - batch_size + 1, batch_size):")], {},
        ["with N = 11 and batch_size = 4 one epoch should use every sample exactly once, in batches of 4, 4 and 3",
         "yours had batches of 4, 4 and never used 3 sample(s)"]),
    "stops one short": (
        [(STARTS, "for start in range(0, n - 1, batch_size):")], {},
        ["with N = 9 and batch_size = 4", "batches of 4, 4 and 1", "never used 1 sample(s)"]),
    "repeats a batch": (
        [("batch = order[start:start + batch_size]", "batch = order[:batch_size]")], {},
        ["yours had batches of 4, 4, 4 and never used 7 sample(s)"]),
    "random batches": (
        [("batch = order[start:start + batch_size]", "batch = rng.integers(0, n, batch_size)")], {},
        ["every sample exactly once"]),
    "does not shuffle": (
        [("order = rng.permutation(n)", "order = np.arange(n)")], {},
        ["the samples are not shuffled: every epoch would see them in the same order"]),
    "seeds a generator of its own": (
        [("order = rng.permutation(n)", "order = np.random.default_rng(0).permutation(n)")], {},
        ["it shuffles the same way whatever rng it is given (a fixed seed of its own?)", "use the rng it is given"]),
    "an unseeded generator of its own": (
        [("order = rng.permutation(n)", "order = np.random.default_rng().permutation(n)")], {},
        ["an unseeded generator of its own, so a run cannot be repeated", "use the rng it is given"]),
    "NumPy's global generator": (
        [("order = rng.permutation(n)", "order = np.random.permutation(n)")], {},
        ["an unseeded generator of its own"]),
    "the module's forward": (
        [("lesson.forward(", "fh.forward(")], {}, ["lesson.forward"]),
    "the notebook's own forward": (
        [("lesson.forward(", "forward(")], {"forward": twin(fh.forward)}, ["lesson.forward"]),
    "the module's backward": (
        [("lesson.backward(", "fh.backward(")], {}, ["lesson.backward"]),
    "the module's mse_loss": (
        [("lesson.mse_loss(", "fh.mse_loss(")], {}, ["it never called lesson.mse_loss"]),
    "the module's sgd_step": (
        [("lesson.sgd_step(", "fh.sgd_step(")], {}, ["it never called lesson.sgd_step"]),
    "mixes the X and y of different batches": (
        [("y[batch]", "y[start:start + batch_size]")], {},
        ["batch 1 gave lesson.forward samples", "but lesson.mse_loss the targets of samples",
         "the faces and the ages of a batch must be the same samples"]),
    "an unweighted mean": (
        [("total += loss * len(batch)", "total += loss"), ("return total / n", "return total / -(-n // batch_size)")],
        {}, ["the returned loss (with N = 11 and batch_size = 4) is the plain mean of the batch losses, but the "
             "batches have 4, 4 and 3 samples: the mean is over the samples"]),
    "the summed losses": (
        [("total += loss * len(batch)", "total += loss"), ("return total / n", "return total")], {},
        ["the returned loss (with N = 11 and batch_size = 4) is the sum of the batch losses"]),
    "the last batch's loss": (
        [("return total / n", "return loss")], {}, ["is the last batch's loss, not the mean over the whole epoch"]),
    "no loss returned": (
        [("return total / n", "pass")], {}, ["it returned NoneType, not the epoch's mean loss"]),
    "two steps per batch": (
        [("lesson.sgd_step(params, grads, lr)", "lesson.sgd_step(params, grads, lr)\n        "
                                                "lesson.sgd_step(params, grads, lr)")], {},
        ["its calls came in the order forward, mse_loss, backward, sgd_step, sgd_step",
         "forward, mse_loss, backward and sgd_step once each, in that order"]),
    "another learning rate": (
        [("lesson.sgd_step(params, grads, lr)", "lesson.sgd_step(params, grads, 0.5 * lr)")], {},
        ["lesson.sgd_step got the learning rate 0.00615, not lr (0.0123)"]),
    "a learning rate of its own": (
        [("lesson.sgd_step(params, grads, lr)", "lesson.sgd_step(params, grads, 0.01)")], {}, ["not lr"]),
    "the gradients of no backward": (
        [("lesson.sgd_step(params, grads, lr)", "lesson.sgd_step(params, {'w': np.zeros(1)}, lr)")], {},
        ["lesson.sgd_step did not get this batch's gradients from lesson.backward"]),
    "no lesson at all": (
        [("y_hat, cache = lesson.forward(params, X[batch])", "return 0.0")], {},
        ["it never called the lesson's functions", "lesson.forward, lesson.mse_loss, lesson.backward, "
                                                   "lesson.sgd_step"]),
}
FIXED_CODE = ("rng.permutation", "range(0, N, batch_size)", "range(0, n, batch_size)", "order[start:start",
              "loss * len(batch)", "total_loss")


@pytest.mark.parametrize("name", TRAIN_EPOCH_MISTAKES)
def test_train_epoch_mistakes_say_what_is_wrong_without_the_fixed_code(name):
    changes, names, phrases = TRAIN_EPOCH_MISTAKES[name]
    message = fails(fh.check_train_epoch, loop(*changes, **names), *phrases)
    assert message.startswith("train_epoch") and "\n" not in message
    shown = [code for code in FIXED_CODE if code in message]
    assert not shown, f"the message hands over the answer ({shown}): {message}"


# --- weight_image --------------------------------------------------------------------------

WEIGHT_IMAGE_MISTAKES = [
    (lambda W1, j: W1[j].reshape(48, 48).T, ["the image of unit 3 is wrong: it is transposed"]),
    (lambda W1, j: W1[j].reshape(48, 48, order="F"), ["it is transposed"]),
    (lambda W1, j: W1[:, j].reshape(48, 48), ["weight_image raised ValueError", "a column W1[:, j]"]),
    (lambda W1, j: W1[j], ["has shape (2304,), expected (48, 48)", "still a row of 2304 weights"]),
    (lambda W1, j: W1[j + 1].reshape(48, 48), ["it is row 4 of W1"]),
    (lambda W1, j: W1[j].reshape(48, 48) / np.abs(W1[j]).max(),
     ["times the right values", "unit j's 2304 weights as they are"]),
]


@pytest.mark.parametrize("mutant, phrases", WEIGHT_IMAGE_MISTAKES)
def test_weight_image_mistakes(mutant, phrases):
    fails(fh.check_weight_image, mutant, *phrases)


# --- the teacher's guide quotes these messages ---------------------------------------------

def message_of(check, fn):
    """The message of check(fn), or "" when it passes."""
    try:
        check(fn)
    except fh.ExerciseCheckError as e:
        return str(e)
    return ""


def test_messages_quoted_in_teaching_md_are_what_the_checks_say():
    """Every line of a ```text block in TEACHING.md is part of a message some mistake above produces."""
    tables = {fh.check_forward: FORWARD_MISTAKES, fh.check_backward: BACKWARD_MISTAKES,
              fh.check_numerical_gradient: NUMERICAL_GRADIENT_MISTAKES, fh.check_sgd_step: SGD_STEP_MISTAKES,
              fh.check_mse_loss: MSE_LOSS_MISTAKES,
              fh.check_weight_image: WEIGHT_IMAGE_MISTAKES}
    messages = [fails(check, mutant) for check, table in tables.items() for mutant, _ in table]
    messages += [fails(fh.check_backward, backward_without_mask), fails(fh.check_forward, stub)]
    messages += [message_of(fh.check_train_epoch, loop(*changes, **names))  # (each must fail: tested above)
                 for changes, names, _ in TRAIN_EPOCH_MISTAKES.values()]
    guide = (Path(__file__).resolve().parents[1] / "TEACHING.md").read_text(encoding="utf-8")
    quoted = [line for block in re.findall(r"```text\n(.*?)```", guide, re.S)
              for line in block.splitlines() if line.strip()]
    assert len(quoted) >= 10
    for line in quoted:
        assert any(line.strip() in m for m in messages), f"TEACHING.md quotes a message no check gives: {line!r}"


# --- add_weight_decay and momentum_step (notebook 05) ------------------------------------

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
    (decay_without_lambda, ["W1 and W2 are wrong: the factor lambda (weight_decay) is missing"]),
    (decay_twice, ["the penalty's gradient is added twice"]),
    (decay_the_weights_too, ["it changed params (W1 and W2)", "applies the decay twice"]),
    (decay_in_place_only, ["it returns None: the cell's last line returns grads"]),
    (decay_stub, ["add_weight_decay is not implemented yet", "Hint: "]),
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
    (velocity_uphill, ["velocity: W1, b1, W2 and b2 are wrong: it has the wrong sign: the velocity points downhill"]),
    (params_minus_velocity, ["params: W1, b1, W2 and b2 are wrong: it has the wrong sign: the velocity already "
                             "points downhill"]),
    (step_before_velocity, ["it moved with the velocity of the step before", "update the velocity first"]),
    (new_param_arrays, ["it puts new arrays into params"]),
    (weights_only, ["the velocity of b1 and b2 did not change"]),
]


@pytest.mark.parametrize("mutant, phrases", MOMENTUM_MISTAKES)
def test_check_momentum_step_names_the_mistake(mutant, phrases):
    fails(fh.check_momentum_step, mutant, *phrases)


# --- backward_to_input (notebook 06) --------------------------------------------------------

def dZ_of(params, cache, dy_hat):
    return dy_hat[:, None] * params["W2"] * (cache[1] > 0)


BACKWARD_TO_INPUT_MISTAKES = [  # (wrong answer, phrases the check must say)
    (lambda p, c, d: (d[:, None] * p["W2"]) @ p["W1"], ["dX is wrong: the ReLU mask is missing", "units that are on"]),
    (lambda p, c, d: dZ_of(p, c, d) @ p["W1"].T,
     ["backward_to_input raised ValueError", "which product of the two has that shape"]),
    (lambda p, c, d: (p["W1"].T @ dZ_of(p, c, d).T), ["has shape (2304, 5), expected (5, 2304)", "transposed"]),
    (lambda p, c, d: dZ_of(p, c, d).T @ c[0],
     ["has shape (4, 2304)", "the gradient for the weights", "dX has X's shape"]),
    (lambda p, c, d: (d[:, None] * p["W2"] * c[2]) @ p["W1"], ["dH is multiplied by H"]),
    (lambda p, c, d: (p["W2"] * (c[1] > 0)) @ p["W1"], ["dy_hat is missing"]),
    (lambda p, c, d: dZ_of(p, c, d), ["has shape (5, 4)", "that is dZ's shape"]),
    (lambda p, c, d: (dZ_of(p, c, d) @ p["W1"]).sum(axis=0), ["summed over the faces"]),
    (lambda p, c, d: -(dZ_of(p, c, d) @ p["W1"]), ["minus the right values"]),
    (lambda p, c, d: dZ_of(p, c, d) @ p["W1"] / len(d), ["5 times too small"]),
    (lambda p, c, d: None, ["dX is None: is a `return` missing?"]),
]


@pytest.mark.parametrize("mutant, phrases", BACKWARD_TO_INPUT_MISTAKES)
def test_check_backward_to_input_names_the_mistake(mutant, phrases):
    fails(fh.check_backward_to_input, mutant, *phrases)
