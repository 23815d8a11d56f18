"""The known mistakes (fh.MISTAKES, one table that the checks read): each row's wrong answer, written as a student
would, fails its check with that row's message, and no message or string of the classroom module hands over
a derived formula (issue 23: messages say what is wrong and where to look, never the fixed line).
"""
import ast
from pathlib import Path

import nbformat
import numpy as np
import pytest

import faceage_helpers as fh
from check_support import MODULE_EXERCISES, fails

ROOT = Path(__file__).resolve().parents[1]


def mine(fn):
    fn.__module__ = "__main__"  # written in the notebook, as a student's function is
    return fn


# --- one wrong student function per row of MISTAKES ------------------------------------------------

def forward_with(z=None, h=None, y=None, cache=True):
    def forward(params, X):
        Z = X @ params["W1"].T + params["b1"] if z is None else z(params, X)
        H = np.maximum(Z, 0) if h is None else h(Z)
        y_hat = H @ params["W2"][0] + params["b2"][0] if y is None else y(params, H, Z)
        return (y_hat, (X, Z, H)) if cache else y_hat
    return mine(forward)


def loss_with(loss=None, dy=None, pair=True):
    def mse_loss(y_hat, y_true):
        d = y_hat - y_true
        value = float(np.mean(d ** 2)) if loss is None else loss(d)
        grad = 2 * d / len(d) if dy is None else dy(d)
        return (value, grad) if pair else value
    return mine(mse_loss)


def backward_with(scale=1.0, as_list=False, **changes):
    def backward(params, cache, dy_hat):
        X, Z, H = cache
        parts = dict(X=X, Z=Z, H=H, dy=dy_hat, dH=dy_hat[:, None] * params["W2"])
        parts["dZ"] = parts["dH"] * (Z > 0)
        grads = {"W1": parts["dZ"].T @ X, "b1": parts["dZ"].sum(axis=0), "W2": dy_hat[None, :] @ H,
                 "b2": dy_hat.sum(keepdims=True)}
        grads.update({k: f(parts) for k, f in changes.items()})
        grads = {k: scale * g for k, g in grads.items()}
        return list(grads.values()) if as_list else grads
    return mine(backward)


def numerical_with(kind):
    def numerical_gradient(f, x, indices, h=1e-5):
        grad = np.zeros(len(indices), dtype=int if kind == "integers" else float)
        flat = x.reshape(-1) if kind != "copy" else x.flatten()
        for k, i in enumerate(indices):
            i = k if kind == "ignores_indices" else i
            old = flat[i]
            flat[i] = old + h
            up = f()
            flat[i] = old - h
            down = f()
            flat[i] = old if kind != "not_restored" else old + 1
            centre = f()
            grad[k] = {"forward_difference": (up - centre) / h, "backward_difference": (centre - down) / h,
                       "twice": (up - down) / h, "sign": (down - up) / (2 * h)}.get(kind, (up - down) / (2 * h))
        if kind == "whole_x":
            return np.zeros(x.shape)
        return grad
    return mine(numerical_gradient)


def sgd_with(kind):
    def sgd_step(params, grads, lr):
        for name in list(params):
            if kind == "rebinds":
                params[name] = params[name] - lr * grads[name]
            elif kind == "unchanged":
                p = params[name]
                p = p - lr * grads[name]  # noqa: F841 (the mistake under test)
            elif kind == "some_unchanged" and name[0] == "b":
                pass
            elif kind == "uphill":
                params[name] += lr * grads[name]
            elif kind == "without_lr":
                params[name] -= grads[name]
            elif kind != "returns_copies":
                params[name] -= lr * grads[name]
        if kind == "returns_copies":
            return {name: p - lr * grads[name] for name, p in params.items()}
    return mine(sgd_step)


def epoch_with(kind):
    def train_epoch(lesson, params, X, y, lr, batch_size, rng):
        n = len(X)
        order = {"unshuffled": lambda: np.arange(n), "unseeded": lambda: np.random.default_rng().permutation(n),
                 "fixed_seed": lambda: np.random.default_rng(0).permutation(n)}.get(kind, lambda: rng.permutation(n))()
        total = 0.0
        for start in range(0, n, batch_size):
            if kind == "no_calls":
                continue
            batch = order[start:start + batch_size]
            y_hat, cache = lesson.forward(params, X[batch])
            loss, dy_hat = lesson.mse_loss(y_hat, y[batch])
            lesson.sgd_step(params, lesson.backward(params, cache, dy_hat), lr)
            total += loss * len(batch)
        return total / n
    return mine(train_epoch)


def image_with(kind):
    def weight_image(W1, j):
        if kind == "changes_w1":
            W1 *= 2
        row = {"next_row": (j + 1) % len(W1), "previous_row": j - 1}.get(kind, j)
        image = W1[row].reshape(48, 48)
        return {"transposed": image.T, "flat": W1[j], "flat_row": W1[j][None], "negated": -image}.get(kind, image)
    return mine(weight_image)


def decay_with(kind):
    def add_weight_decay(grads, params, weight_decay):
        factor = {"none": 0, "one": 1 / weight_decay, "twice": 2, "half": 0.5, "minus": -1}.get(kind, 1)
        for name in grads:
            decayed = name[0] == "W" or kind.startswith("bias")
            if kind == "bias_decayed_without_lambda" and name[0] == "b":
                grads[name] = grads[name] + params[name]
            elif kind == "only" and decayed:
                grads[name] = weight_decay * params[name]
            elif decayed:
                grads[name] = grads[name] + factor * weight_decay * params[name]
            if kind == "changes_params" and name[0] == "W":
                params[name] *= 1 - weight_decay
        if kind == "returns":
            return {"W1": grads["W1"]}
        return None if kind == "returns_none" else grads
    return mine(add_weight_decay)


def momentum_with(kind):
    def momentum_step(params, grads, velocity, lr, momentum):
        for name in list(params):
            v, g = velocity[name], grads[name]
            if kind == "some_still" and name[0] == "b":
                continue
            if kind == "not_kept":
                v = momentum * v - lr * g
            else:
                old = v.copy()
                new = {"uphill": momentum * v + lr * g, "forgets": -lr * g, "without_momentum": v - lr * g,
                       "without_lr": momentum * v - g, "average": momentum * v + (1 - momentum) * g}.get(
                           kind, momentum * v - lr * g)
                v[...] = new
            move = {"minus_v": -v, "old_v": old if kind != "not_kept" else v,
                    "sgd": -lr * g}.get(kind, v)
            if kind == "rebinds":
                params[name] = params[name] + move
            else:
                params[name] += move
        if kind == "lost_key":
            velocity.pop("b2")
    return mine(momentum_step)


def to_input_with(kind):
    def backward_to_input(params, cache, dy_hat):
        X, Z, H = cache
        dH = (dy_hat[:, None] if kind != "no_dy_hat" else 1.0) * params["W2"]
        dZ = dH * {"no_mask": 1.0, "times_h": H}.get(kind, Z > 0)
        dX = dZ @ params["W1"]
        return {"weights_gradient": lambda: dZ.T @ X, "transposed": lambda: dX.T, "stops_at_dz": lambda: dZ,
                "summed": lambda: dX.sum(axis=0), "sign": lambda: -dX, "divided_by_n": lambda: dX / len(X),
                "times_n": lambda: dX * len(X)}.get(kind, lambda: dX)()
    return mine(backward_to_input)


WRONG = {
    ("forward", "cache"): forward_with(cache=False),
    ("forward", "z_without_b1"): forward_with(z=lambda p, X: X @ p["W1"].T),
    ("forward", "z_minus_b1"): forward_with(z=lambda p, X: X @ p["W1"].T - p["b1"]),
    ("forward", "z_transposed"): forward_with(z=lambda p, X: (X @ p["W1"].T + p["b1"]).T,
                                              h=lambda Z: np.maximum(Z, 0).T),
    ("forward", "no_relu"): forward_with(h=lambda Z: Z),
    ("forward", "mask"): forward_with(h=lambda Z: (Z > 0) * 1.0),
    ("forward", "negative_part"): forward_with(h=lambda Z: np.minimum(Z, 0)),
    ("forward", "y_without_b2"): forward_with(y=lambda p, H, Z: H @ p["W2"][0]),
    ("forward", "y_from_z"): forward_with(y=lambda p, H, Z: Z @ p["W2"][0] + p["b2"][0]),
    ("forward", "y_column"): forward_with(y=lambda p, H, Z: H @ p["W2"].T + p["b2"]),
    ("forward", "y_row"): forward_with(y=lambda p, H, Z: p["W2"] @ H.T + p["b2"]),
    ("mse_loss", "returns"): loss_with(pair=False),
    ("mse_loss", "absolute"): loss_with(loss=lambda d: float(np.mean(np.abs(d)))),
    ("mse_loss", "per_face"): loss_with(loss=lambda d: d ** 2),
    ("mse_loss", "summed"): loss_with(loss=lambda d: float(np.sum(d ** 2))),
    ("mse_loss", "negative_loss"): loss_with(loss=lambda d: -float(np.mean(d ** 2))),
    ("mse_loss", "dy_scalar"): loss_with(dy=lambda d: float(np.mean(2 * d))),
    ("mse_loss", "dy_column"): loss_with(dy=lambda d: (2 * d / len(d))[:, None]),
    ("mse_loss", "dy_sign"): loss_with(dy=lambda d: -2 * d / len(d)),
    ("mse_loss", "dy_without_mean"): loss_with(dy=lambda d: 2 * d),
    ("mse_loss", "dy_half"): loss_with(dy=lambda d: d / len(d)),
    ("mse_loss", "dy_neither"): loss_with(dy=lambda d: d),
    ("backward", "returns"): backward_with(as_list=True),
    ("backward", "sign"): backward_with(scale=-1.0),
    ("backward", "divided_by_n"): backward_with(scale=1 / 5),
    ("backward", "times_n"): backward_with(scale=5.0),
    ("backward", "twice"): backward_with(scale=2.0),
    ("backward", "halved"): backward_with(scale=0.5),
    ("backward", "dW2_from_z"): backward_with(W2=lambda q: q["dy"][None, :] @ q["Z"]),
    ("backward", "dW2_vector"): backward_with(W2=lambda q: q["dy"] @ q["H"]),
    ("backward", "dW2_transposed"): backward_with(W2=lambda q: (q["dy"][None, :] @ q["H"]).T),
    ("backward", "dW2_per_face"): backward_with(W2=lambda q: q["dy"][:, None] * q["H"]),
    ("backward", "db2_scalar"): backward_with(b2=lambda q: q["dy"].sum()),
    ("backward", "db2_per_face"): backward_with(b2=lambda q: q["dy"]),
    ("backward", "no_mask"): backward_with(W1=lambda q: q["dH"].T @ q["X"]),
    ("backward", "times_h"): backward_with(W1=lambda q: (q["dH"] * q["H"]).T @ q["X"]),
    ("backward", "dW1_transposed"): backward_with(W1=lambda q: q["X"].T @ q["dZ"]),
    ("backward", "db1_no_mask"): backward_with(b1=lambda q: q["dH"].sum(axis=0)),
    ("backward", "db1_times_h"): backward_with(b1=lambda q: (q["dH"] * q["H"]).sum(axis=0)),
    ("backward", "db1_per_face"): backward_with(b1=lambda q: q["dZ"]),
    ("backward", "db1_wrong_axis"): backward_with(b1=lambda q: q["dZ"].sum(axis=1)),
    ("backward", "db1_row"): backward_with(b1=lambda q: q["dZ"].sum(axis=0, keepdims=True)),
    **{("numerical_gradient", kind): numerical_with(kind) for kind in (
        "not_restored", "integers", "forward_difference", "backward_difference", "ignores_indices", "whole_x",
        "twice", "sign", "copy")},
    **{("sgd_step", kind): sgd_with(kind) for kind in (
        "rebinds", "returns_copies", "unchanged", "some_unchanged", "uphill", "without_lr")},
    **{("train_epoch", kind): epoch_with(kind) for kind in ("no_calls", "unshuffled", "unseeded", "fixed_seed")},
    **{("weight_image", kind): image_with(kind) for kind in (
        "changes_w1", "transposed", "next_row", "previous_row", "flat", "flat_row", "negated")},
    **{("add_weight_decay", kind): decay_with(kind) for kind in (
        "changes_params", "returns_none", "returns", "none", "one", "twice", "half", "minus", "only", "bias_decayed",
        "bias_decayed_without_lambda")},
    **{("momentum_step", kind): momentum_with(kind) for kind in (
        "rebinds", "lost_key", "some_still", "not_kept", "uphill", "forgets", "without_momentum", "without_lr",
        "average", "minus_v", "old_v", "sgd")},
    **{("backward_to_input", kind): to_input_with(kind) for kind in (
        "no_mask", "times_h", "no_dy_hat", "weights_gradient", "transposed", "stops_at_dz", "summed", "sign",
        "divided_by_n", "times_n")},
}
# The sizes each check's messages are formatted with (its seeded problem's).
SIZES = {"mse_loss": dict(n=5, n2="2.5"), "backward": dict(N=5, hidden=4), "backward_to_input": dict(N=5, hidden=4),
         "weight_image": dict(j=3, next=4, previous=2), "sgd_step": dict(names="W1, b1, W2, b2"),
         "momentum_step": dict(names="W1, b1, W2 and b2")}
RIGHT = {"forward": forward_with(), "mse_loss": loss_with(), "backward": backward_with(),
         "numerical_gradient": numerical_with("right"), "sgd_step": sgd_with("right"),
         "train_epoch": epoch_with("right"),
         "weight_image": image_with("right"), "add_weight_decay": decay_with("right"),
         "momentum_step": momentum_with("right"), "backward_to_input": to_input_with("right")}


def expected_message(exercise, mistake):
    """The row's message as its check formats it; the few with a list of arrays name the ones this mutant breaks."""
    names = {("sgd_step", "rebinds"): "W1, b1, W2, b2", ("sgd_step", "some_unchanged"): "b1 and b2",
             ("add_weight_decay", "changes_params"): "W1 and W2", ("momentum_step", "rebinds"): "W1, b1, W2 and b2",
             ("momentum_step", "some_still"): "b1 and b2"}.get((exercise, mistake), "")
    return fh._says(exercise, mistake, **dict(SIZES.get(exercise, {}), names=names))


def test_every_row_of_the_table_has_a_wrong_answer_here_and_ids_are_unique():
    rows = [row[:2] for row in fh.MISTAKES]
    assert len(rows) == len(set(rows))
    assert sorted(rows) == sorted(WRONG)
    assert {row[0] for row in fh.MISTAKES} == set(MODULE_EXERCISES)


@pytest.mark.parametrize("exercise, mistake", sorted(WRONG))
def test_each_known_mistake_fails_with_exactly_its_rows_message(exercise, mistake, capsys):
    message = fails(getattr(fh, f"check_{exercise}"), WRONG[exercise, mistake])
    assert expected_message(exercise, mistake) in message, message
    others = [row for row in fh.MISTAKES if row[0] == exercise and row[1] != mistake
              and row[3][0] in ("answer", "says") and "{" not in row[4]
              and row[4] != expected_message(exercise, mistake)]
    for row in others:  # it is this row's message, not another's
        assert row[4] not in message, (row[1], message)
    assert "all checks passed" not in capsys.readouterr().out


@pytest.mark.parametrize("exercise", sorted(RIGHT))
def test_the_right_answer_passes(exercise, capsys):
    getattr(fh, f"check_{exercise}")(RIGHT[exercise])
    assert capsys.readouterr().out == f"{exercise}: all checks passed.\n"


def test_an_unknown_mistake_says_which_entries_are_wrong():
    def forward(params, X):
        y_hat, (X, Z, H) = fh.forward(params, X)
        Z = Z.copy()
        Z[2, 1] += 1.0
        return y_hat, (X, Z, np.maximum(Z, 0))
    fails(fh.check_forward, mine(forward), "Z is wrong in 1 of 20 entries (the first, [2, 1], is")


# --- no derived formula in any message or string of the classroom module ---------------------------------
# What the exercises ask students to derive and write, as the checks' old messages and the module's docstrings
# spelled it. The forward equations stay: they define the network (and the cell's docstring gives them).
FORBIDDEN = ("np.maximum(Z, 0)", "max(z, 0)", "X @ W1.T", "dZ.T @ X", "dZ^T X", "dZ @ W1", "W1^T dz", "dH * (Z > 0)",
             "dZ = dH", "2 (y_hat - y) / N", "2 (y^ - y) / N", "2 * diff", "dy_hat[None, :] @ H",
             "dy_hat[:, None] * W2",
             "dy_hat.sum(", "dZ.sum(axis=0)", "H @ W2[0]", "p -= lr * g", "lr * grads[name]", "v <- momentum * v",
             "p <- p + v", "p <- p - lr", "reshape(48, 48)", "weight_decay * params[name]", "lambda * W", "+ lambda w",
             "(f(x + h) - f(x - h))", "/ (2 h)", "np.mean((y_hat - y) ** 2)", "total_loss += loss * len(batch)",
             "order[start:start + batch_size]", "v *= momentum", "v -= lr", "dy_hat = 2")


def classroom_module():
    import make_student as ms
    solutions = {p: nbformat.read(p, as_version=4) for p in sorted((ROOT / "notebooks").glob("*.ipynb"))}
    return ms.student_module((ROOT / "faceage_helpers.py").read_text(encoding="utf-8"),
                             ms.exercise_functions(solutions))


def strings(source):
    return [node.value for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def test_no_message_or_string_of_the_classroom_module_hands_over_a_derived_formula():
    import sys
    sys.path.insert(0, str(ROOT / "tools"))
    found = {(fragment, text[:90]) for text in strings(classroom_module()) for fragment in FORBIDDEN
             if fragment in text}
    assert not found, "the classroom module states derived answers:\n" + "\n".join(map(str, sorted(found)))


def test_the_table_s_messages_hand_over_no_derived_formula():
    found = [(row[1], fragment) for row in fh.MISTAKES for fragment in FORBIDDEN if fragment in row[4]]
    assert not found
