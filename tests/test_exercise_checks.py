"""Exercise checks: each passes the module's reference and names the mistake in typical wrong answers.

The mutants below are the mistakes students make; each test asserts the check fails with the
message that explains that mistake (and, for the reference, prints exactly one line).
"""
import re
from pathlib import Path

import numpy as np
import pytest

import faceage_helpers as fh
from check_support import fails, twin


def stub(*args):
    raise NotImplementedError("Z = X @ W1.T + b1, then H = relu(Z)")


LESSON = ["forward", "mse_loss", "backward", "numerical_gradient", "sgd_step", "train_epoch"]
CHECKS = [getattr(fh, f"check_{name}") for name in LESSON] + [fh.check_weight_image]


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
    (forward_without_relu, ["forward: H is wrong", "the ReLU is missing", "np.maximum(Z, 0)"]),
    (forward_without_b1, ["Z is wrong: b1 is missing"]),
    (forward_transposed, ["Z has shape (4, 5), expected (5, 4)", "looks transposed"]),
    (forward_column_output, ["y_hat has shape (5, 1), expected (5,)", "H @ W2[0] + b2[0]"]),
    (forward_output_from_z, ["y_hat is wrong: it uses Z"]),
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
    (loss_gradient_without_n, ["dy_hat (N = 5) is 5 times too large", "2 (y_hat - y) / N"]),
    (loss_gradient_without_2, ["dy_hat (N = 5) is half the right values", "keep the factor 2"]),
    (loss_gradient_wrong_sign, ["dy_hat (N = 5) is minus the right values", "not 2 (y - y_hat)"]),
    (loss_gradient_averaged, ["dy_hat (N = 5) has shape (), expected (5,)", "one entry per face"]),
    (loss_absolute, ["the loss (N = 5) is wrong: it is the mean absolute error"]),
    (loss_fixed_batch_size, ["the loss (N = 3) is", "dy_hat (N = 3) is"]),
    (loss_only, ["must return two things", "return loss, dy_hat"]),
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
                                  "db1 has shape (5, 4), expected (4,)", "not summed over the batch"]),
    (backward_divides_by_n_again, ["5 times too small", "dy_hat already holds the 1/N"]),
    (backward_db1_wrong_axis, ["db1 has shape (5,), expected (4,)", "wrong axis"]),
    (backward_overflows, ["backward: dW2 is wrong (db2, dW1 and db1 are right)", "dW2 contains NaN or inf"]),
    (backward_named_by_gradient, ["no gradient for W1, b1, W2, b2", "'dW1'"]),
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
    (one_sided_difference, ["one-sided difference (f(x + h) - f(x)) / h", "centered"]),
    (divides_by_h, ["twice the right values", "divide by 2h"]),
    (perturbs_a_copy, ["all zeros", "x.flatten()"]),
    (forgets_to_restore, ["x was not restored"]),
    (ignores_indices, ["entries 0, 1, 2, 3 of x, not at the given indices"]),
    (integer_result, ["returns integers", "np.zeros(len(indices))"]),
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
    (sgd_plus, ["W1, b1, W2 and b2 are wrong: it moves along the gradient (uphill", "p -= lr * g"]),
    (sgd_returns_copies, ["returns new arrays but leaves params unchanged", "in place"]),
    (sgd_rebinds_loop_variable, ["params did not change", "`p -= lr * g`"]),
    (sgd_new_arrays_in_dict, ["puts new arrays into params (W1, b1, W2, b2)", "in place"]),
    (sgd_without_lr, ["ignores the learning rate"]),
    (sgd_weights_only, ["b1, b2 did not change"]),
]


@pytest.mark.parametrize("mutant, phrases", SGD_STEP_MISTAKES)
def test_sgd_step_mistakes(mutant, phrases):
    fails(fh.check_sgd_step, mutant, *phrases)


# --- train_epoch ---------------------------------------------------------------------------

def step(params, X, y, lr):
    """One minibatch step with the module's pieces; returns the batch loss (as students write it)."""
    y_hat, cache = fh.forward(params, X)
    loss, dy_hat = fh.mse_loss(y_hat, y)
    fh.sgd_step(params, fh.backward(params, cache, dy_hat), lr)
    return loss


def epoch_over(order, params, X, y, lr, batch_size, stop=None):
    """The epoch in the given order, batch starts in range(0, stop or N, batch_size); the weighted mean loss."""
    total = 0.0
    for s in range(0, len(order) if stop is None else stop, batch_size):
        batch = order[s:s + batch_size]
        total += step(params, X[batch], y[batch], lr) * len(batch)
    return total / len(order)


def epoch_with_choice(params, X, y, lr, batch_size, rng):  # correct, shuffled differently
    return epoch_over(rng.choice(len(X), len(X), replace=False), params, X, y, lr, batch_size)


def epoch_unweighted_mean(params, X, y, lr, batch_size, rng):
    order = rng.permutation(len(X))
    return float(np.mean([step(params, X[order[s:s + batch_size]], y[order[s:s + batch_size]], lr)
                          for s in range(0, len(X), batch_size)]))


def epoch_without_shuffle(params, X, y, lr, batch_size, rng):
    return epoch_over(np.arange(len(X)), params, X, y, lr, batch_size)


def epoch_same_batch(params, X, y, lr, batch_size, rng):
    order = rng.permutation(len(X))
    for _ in range(0, len(X), batch_size):
        step(params, X[order[:batch_size]], y[order[:batch_size]], lr)
    return 1.0


def epoch_drops_last_batch(params, X, y, lr, batch_size, rng):
    order = rng.permutation(len(X))
    return epoch_over(order, params, X, y, lr, batch_size, stop=len(X) // batch_size * batch_size)


def epoch_off_by_one(params, X, y, lr, batch_size, rng):  # right unless the last batch has one sample
    return epoch_over(rng.permutation(len(X)), params, X, y, lr, batch_size, stop=len(X) - 1)


def epoch_random_batches(params, X, y, lr, batch_size, rng):
    for _ in range(0, len(X), batch_size):
        batch = rng.integers(0, len(X), batch_size)
        step(params, X[batch], y[batch], lr)
    return 1.0


def epoch_seeds_its_own(params, X, y, lr, batch_size, rng):
    return epoch_over(np.random.default_rng(123).permutation(len(X)), params, X, y, lr, batch_size)


def epoch_unseeded(params, X, y, lr, batch_size, rng):
    return epoch_over(np.random.default_rng().permutation(len(X)), params, X, y, lr, batch_size)


def epoch_twice(params, X, y, lr, batch_size, rng):
    order = rng.permutation(len(X))
    epoch_over(order, params, X, y, lr, batch_size)
    return epoch_over(order, params, X, y, lr, batch_size)


def epoch_shuffles_x_only(params, X, y, lr, batch_size, rng):
    order = rng.permutation(len(X))
    for s in range(0, len(X), batch_size):
        step(params, X[order[s:s + batch_size]], y[s:s + batch_size], lr)
    return 1.0


def epoch_returns_sum(params, X, y, lr, batch_size, rng):
    order = rng.permutation(len(X))
    return sum(step(params, X[order[s:s + batch_size]], y[order[s:s + batch_size]], lr)
               for s in range(0, len(X), batch_size))


def epoch_returns_last_loss(params, X, y, lr, batch_size, rng):
    order = rng.permutation(len(X))
    for s in range(0, len(X), batch_size):
        loss = step(params, X[order[s:s + batch_size]], y[order[s:s + batch_size]], lr)
    return loss


def epoch_without_update(params, X, y, lr, batch_size, rng):
    return fh.mse_loss(fh.forward(params, X)[0], y)[0]


def test_train_epoch_accepts_another_shuffle(capsys):
    fh.check_train_epoch(epoch_with_choice)
    assert capsys.readouterr().out == "train_epoch: all checks passed.\n"


TRAIN_EPOCH_MISTAKES = [
    (epoch_unweighted_mean, ["the returned loss (with N = 11 and batch_size = 4) is wrong: it is the plain mean of the "
                             "batch losses", "4, 4 and 3 samples", "total_loss += loss * len(batch)"]),
    (epoch_without_shuffle, ["not shuffled", "rng.permutation(N)"]),
    (epoch_same_batch, ["every step used the same batch", "only 4 of 11 samples"]),
    (epoch_drops_last_batch, ["the last batch is dropped", "4, 4 and 3 samples", "the last 3 samples were never used"]),
    (epoch_off_by_one, ["the last batch is dropped: with N = 9 and batch_size = 4 the batches have 4, 4 and 1 "
                        "samples, and the last 1 sample was never used", "range(0, N, batch_size)"]),
    (epoch_random_batches, ["samples were never used", "exactly once"]),
    (epoch_seeds_its_own, ["it seeds its own generator", "whatever rng it is given", "order = rng.permutation(N)"]),
    (epoch_unseeded, ["an unseeded generator of its own", "cannot be repeated"]),
    (epoch_twice, ["moved 2.0 times as far as in one reference epoch"]),
    (epoch_shuffles_x_only, ["differ from a reference epoch", "X and y are indexed with the same batch indices"]),
    (epoch_returns_sum, ["it is the sum of the 3 batch losses"]),
    (epoch_returns_last_loss, ["it is the last batch's loss"]),
    (epoch_without_update, ["W1, b1, W2, b2 did not change", "sgd_step"]),
]


@pytest.mark.parametrize("mutant, phrases", TRAIN_EPOCH_MISTAKES)
def test_train_epoch_mistakes(mutant, phrases):
    fails(fh.check_train_epoch, mutant, *phrases)


LESSON_LOOP = """
def train_epoch(params, X, y, lr, batch_size, rng):
    n = len(X)
    order = rng.permutation(n)
    total = 0.0
    for start in range(0, n, batch_size):
        batch = order[start:start + batch_size]
        y_hat, cache = forward(params, X[batch])
        loss, dy_hat = mse_loss(y_hat, y[batch])
        sgd_step(params, backward(params, cache, dy_hat), lr)
        total += loss * len(batch)
    return total / n
"""


def notebook_train_epoch(**helpers):
    """A correct train_epoch, defined as in notebook 03 where the names it calls are the notebook's own."""
    namespace = {"forward": twin(fh.forward), "mse_loss": twin(fh.mse_loss), "backward": twin(fh.backward),
                 "sgd_step": twin(fh.sgd_step), **helpers}
    exec(LESSON_LOOP, namespace)
    return namespace["train_epoch"]


def test_a_correct_train_epoch_over_the_notebooks_own_functions_passes(capsys):
    fh.check_train_epoch(notebook_train_epoch())
    assert capsys.readouterr().out == "train_epoch: all checks passed.\n"


@pytest.mark.parametrize("broken, phrases", [
    ({"sgd_step": sgd_rebinds_loop_variable}, ["train_epoch calls your sgd_step, and sgd_step is not right yet",
                                               "fix sgd_step first", "params did not change"]),
    ({"sgd_step": sgd_plus}, ["your sgd_step", "uphill"]),
    ({"backward": backward_flipped_sign}, ["train_epoch calls your backward", "a sign error"]),
    ({"mse_loss": loss_gradient_without_2}, ["train_epoch calls your mse_loss", "keep the factor 2"]),
])
def test_a_broken_helper_is_blamed_not_train_epoch(broken, phrases):
    message = fails(fh.check_train_epoch, notebook_train_epoch(**broken), *phrases)
    assert message.startswith("train_epoch calls your")


# --- weight_image --------------------------------------------------------------------------

WEIGHT_IMAGE_MISTAKES = [
    (lambda W1, j: W1[j].reshape(48, 48).T, ["the image of unit 3 is wrong: it is transposed"]),
    (lambda W1, j: W1[j].reshape(48, 48, order="F"), ["it is transposed"]),
    (lambda W1, j: W1[:, j].reshape(48, 48), ["weight_image raised ValueError", "a column W1[:, j]"]),
    (lambda W1, j: W1[j], ["has shape (2304,), expected (48, 48)", "reshape the row"]),
    (lambda W1, j: W1[j + 1].reshape(48, 48), ["it is row 4 of W1"]),
    (lambda W1, j: W1[j].reshape(48, 48) / np.abs(W1[j]).max(), ["times the right values", "the raw weights"]),
]


@pytest.mark.parametrize("mutant, phrases", WEIGHT_IMAGE_MISTAKES)
def test_weight_image_mistakes(mutant, phrases):
    fails(fh.check_weight_image, mutant, *phrases)


# --- the teacher's guide quotes these messages ---------------------------------------------

def test_messages_quoted_in_teaching_md_are_what_the_checks_say():
    """Every line of a ```text block in TEACHING.md is part of a message some mistake above produces."""
    tables = {fh.check_forward: FORWARD_MISTAKES, fh.check_backward: BACKWARD_MISTAKES,
              fh.check_numerical_gradient: NUMERICAL_GRADIENT_MISTAKES, fh.check_sgd_step: SGD_STEP_MISTAKES,
              fh.check_mse_loss: MSE_LOSS_MISTAKES,
              fh.check_train_epoch: TRAIN_EPOCH_MISTAKES, fh.check_weight_image: WEIGHT_IMAGE_MISTAKES}
    messages = [fails(check, mutant) for check, table in tables.items() for mutant, _ in table]
    messages += [fails(fh.check_backward, backward_without_mask), fails(fh.check_forward, stub),
                 fails(fh.check_train_epoch, notebook_train_epoch(sgd_step=sgd_plus))]
    guide = (Path(__file__).resolve().parents[1] / "TEACHING.md").read_text(encoding="utf-8")
    quoted = [line for block in re.findall(r"```text\n(.*?)```", guide, re.S)
              for line in block.splitlines() if line.strip()]
    assert len(quoted) >= 10
    for line in quoted:
        assert any(line.strip() in m for m in messages), f"TEACHING.md quotes a message no check gives: {line!r}"
