"""Notebook 07's checks: check_affine_backward, check_relu_backward, check_deep_backward, check_matmul, check_add.

Each check must pass a right answer with one line, fail each typical mistake with a message that names it (which
array, which shape, which factor, where to look) without handing over the line that fixes it, and not give "all
checks passed" to the teacher's reference. The right answers here are written out as a student would write them;
the deep ones are compared with centered differences, not with a copy of the checks' reference code.
"""
import numpy as np
import pytest

import check_support
import faceage_helpers as fh

# --- right answers, as a student writes them in notebook 07 -----------------------------------


def affine_backward(dY, cache):
    X, W = cache
    return dY @ W, dY.T @ X, dY.sum(axis=0)


def relu_backward(dH, cache):
    return dH * (cache > 0)


def deep_backward(params, cache, dy_hat):
    grads, dZ = {}, dy_hat[:, None]
    for l in range(len(cache), 0, -1):
        dH, grads[f"W{l}"], grads[f"b{l}"] = affine_backward(dZ, cache[l - 1][0])
        if l > 1:
            dZ = relu_backward(dH, cache[l - 2][1])
    return grads


class Value:
    """Notebook 07's Value, as given there."""

    def __init__(self, data, parents=()):
        self.data, self.parents, self.grad, self._backward = np.asarray(data), parents, None, lambda: None

    def accumulate(self, g):
        self.grad = g if self.grad is None else self.grad + g


def unbroadcast(g, shape):
    while g.ndim > len(shape):
        g = g.sum(axis=0)
    return g.sum(axis=tuple(i for i, n in enumerate(shape) if n == 1), keepdims=True)


def make_matmul(send_a, send_b):
    """matmul(a, b) whose backward hands send_a(a, b, out) to a and send_b(a, b, out) to b (None: nothing)."""
    def matmul(a, b):
        out = Value(a.data @ b.data, (a, b))

        def matmul_backward():
            if send_a:
                a.accumulate(send_a(a.data, b.data, out.grad))
            if send_b:
                b.accumulate(send_b(a.data, b.data, out.grad))
        out._backward = matmul_backward
        return out
    return matmul


def make_add(reduce):
    """add(a, b) whose backward hands reduce(out.grad, input's shape) to each input with accumulate."""
    def add(a, b):
        out = Value(a.data + b.data, (a, b))

        def add_backward():
            a.accumulate(reduce(out.grad, a.data.shape))
            b.accumulate(reduce(out.grad, b.data.shape))
        out._backward = add_backward
        return out
    return add


matmul = make_matmul(lambda A, B, G: G @ B.T, lambda A, B, G: A.T @ G)
add = make_add(unbroadcast)

CHECKS = {"affine_backward": (fh.check_affine_backward, affine_backward),
          "relu_backward": (fh.check_relu_backward, relu_backward),
          "deep_backward": (fh.check_deep_backward, deep_backward),
          "matmul": (fh.check_matmul, matmul), "add": (fh.check_add, add)}


@pytest.mark.parametrize("name", CHECKS)
def test_check_passes_a_right_answer_with_one_line(name, capsys):
    check, right = CHECKS[name]
    check(right)
    assert capsys.readouterr().out == f"{name}: all checks passed.\n"


@pytest.mark.parametrize("name", CHECKS)
def test_check_does_not_pass_the_teachers_reference_as_the_students_work(name, capsys):
    check, right = CHECKS[name]
    released = check_support.twin(right, module=fh.REFERENCE_MODULE)  # as if imported from faceage_reference.py
    check(released)
    assert "not your own code: not checked" in capsys.readouterr().out


@pytest.mark.parametrize("name", CHECKS)
def test_check_repeats_the_hint_of_an_unfilled_stub(name):
    check, _ = CHECKS[name]

    def stub(*args):
        raise NotImplementedError("the shapes say where the transpose goes")
    check_support.fails(check, stub, f"{name} is not implemented yet", "Hint: the shapes say where")


def test_the_op_checks_find_a_stub_inside_the_backward_closure():
    """The classroom edition stubs the closure's body, so the stub raises only when the backward runs."""
    def stub(a, b):
        out = Value(a.data @ b.data, (a, b))

        def matmul_backward():
            raise NotImplementedError("out.grad has the shape of out")
        out._backward = matmul_backward
        return out
    check_support.fails(fh.check_matmul, stub, "matmul is not implemented yet", "Hint: out.grad has the shape")


@pytest.mark.parametrize("sizes", fh.DEEP_CASES)
def test_deep_backward_is_right_by_centered_differences(sizes):
    """The answer the check compares with is the gradient of L = sum(dy_hat * y_hat), whose dL/dy_hat is dy_hat."""
    params, cache, dy_hat = fh._deep_problem(sizes)
    grads = deep_backward(params, cache, dy_hat)
    X = cache[0][0][0]

    def loss():
        H = X
        for l in range(1, len(sizes)):
            Z = H @ params[f"W{l}"].T + params[f"b{l}"]
            H = np.maximum(Z, 0)
        return float(dy_hat @ Z[:, 0])
    for name, p in params.items():
        numeric = fh.numerical_gradient(loss, p, np.arange(p.size))
        assert fh.rel_error(grads[name].reshape(-1), numeric) < 1e-7, name


def test_every_hidden_layer_of_the_deep_problems_has_units_on_and_off():
    """Otherwise a missing mask could go unseen in that layer."""
    for sizes in fh.DEEP_CASES:
        _, cache, _ = fh._deep_problem(sizes)
        for _, Z in cache[:-1]:
            assert (Z > 0).any() and (Z < 0).any()


# --- the typical mistakes, and what each check must say about them ------------------------------

def tr(f):
    """A wrong affine_backward built from the right one: f(dY, X, W) -> (dX, dW, db)."""
    return lambda dY, cache: f(dY, *cache)


AFFINE_MISTAKES = [
    (tr(lambda dY, X, W: (dY @ W.T, dY.T @ X, dY.sum(axis=0))), ["affine_backward raised ValueError",
                                                                  "W is (out, in) = (3, 6)", "transpose goes"]),
    (tr(lambda dY, X, W: (W.T @ dY.T, dY.T @ X, dY.sum(axis=0))), ["dX has shape (6, 5), expected (5, 6)",
                                                                    "looks transposed"]),
    (tr(lambda dY, X, W: (dY @ W, X.T @ dY, dY.sum(axis=0))), ["dW has shape (6, 3), expected (3, 6)",
                                                                "looks transposed", "dX and db are right"]),
    (tr(lambda dY, X, W: (dY @ W, dY.T @ X, dY)), ["db has shape (5, 3), expected (3,)", "not summed over the faces"]),
    (tr(lambda dY, X, W: (dY @ W, dY.T @ X, dY.sum(axis=1))), ["db has shape (5,)", "summed over the wrong axis"]),
    (tr(lambda dY, X, W: (dY @ W, dY.T @ X, dY.sum(axis=0, keepdims=True))), ["it is a row (1, 3)"]),
    (tr(lambda dY, X, W: (dY @ W, dY.T @ X / len(X), dY.mean(axis=0))), ["dW and db are 5 times too small",
                                                                          "already carries the loss's 1/N"]),
    (tr(lambda dY, X, W: (-(dY @ W), -(dY.T @ X), -dY.sum(axis=0))), ["minus the right values"]),
    (tr(lambda dY, X, W: (dY.T @ X, dY @ W, dY.sum(axis=0))), ["that is W's shape", "order of the returned"]),
    (tr(lambda dY, X, W: (dY @ W, dY.T @ X)), ["three gradients, (dX, dW, db)"]),
]


def square_only(wrong):
    """An affine_backward that is right on the 5x6x3 layer and makes the mistake on the square one."""
    return tr(lambda dY, X, W: wrong(dY, X, W) if X.shape == W.shape else (dY @ W, dY.T @ X, dY.sum(axis=0)))


AFFINE_MISTAKES += [
    (square_only(lambda dY, X, W: (dY @ W.T, dY.T @ X, dY.sum(axis=0))), ["N = 4 faces", "dX is wrong",
                                                                          "W transposed"]),
    (square_only(lambda dY, X, W: (dY @ W, X.T @ dY, dY.sum(axis=0))), ["dW is wrong", "the transpose of the right"]),
    (square_only(lambda dY, X, W: (dY @ W, dY.T @ X, dY.sum(axis=1))), ["db is wrong", "summed over the wrong axis"]),
]

RELU_MISTAKES = [
    (lambda dH, Z: dH, ["dZ is wrong: it equals dH: the ReLU mask is missing"]),
    (lambda dH, Z: dH * (dH > 0), ["the mask is taken from the upstream gradient dH"]),
    (lambda dH, Z: Z * (Z > 0), ["it is relu(Z)", "applied to Z instead of to the upstream gradient"]),
    (lambda dH, Z: dH * Z, ["multiplied by Z itself"]),
    (lambda dH, Z: dH * np.maximum(Z, 0), ["multiplied by relu(Z)"]),
    (lambda dH, Z: dH * (Z < 0), ["the mask is inverted"]),
    (lambda dH, Z: Z > 0, ["the mask alone"]),
    (lambda dH, Z: dH * (Z >= 0), ["where z = 0 exactly"]),
    (lambda dH, Z: -dH * (Z > 0), ["minus the right values"]),
    (lambda dH, Z: (dH * (Z > 0)).sum(axis=0), ["summed over the faces"]),
    (lambda dH, Z: None, ["dZ is None: is a `return` missing?"]),
]


def relu_in_place(dH, Z):
    Z[Z <= 0] = 0
    return dH * (Z > 0)


RELU_MISTAKES.append((relu_in_place, ["changed the cache Z in place"]))


def deep_variant(mask=True, first=1, top_mask=False, scale=1.0, names="W{l}", column=True, affine=None):
    """A wrong deep_backward: no mask between the layers, a loop that stops early, a ReLU at the output, ..."""
    def backward(params, cache, dy_hat):
        grads, dZ = {}, dy_hat[:, None] if column else dy_hat
        if top_mask:
            dZ = relu_backward(dZ, cache[-1][1])
        for l in range(len(cache), first - 1, -1):
            dH, grads[names.format(l=l)], grads[f"b{l}"] = (affine or affine_backward)(dZ * scale, cache[l - 1][0])
            if l > 1:
                dZ = relu_backward(dH, cache[l - 2][1]) if mask else dH
        return grads
    return backward


def two_layers_only(params, cache, dy_hat):
    """Written for the network of notebook 02 (one hidden layer), whatever the cache holds."""
    dH, dW2, db2 = affine_backward(dy_hat[:, None], cache[1][0])
    _, dW1, db1 = affine_backward(relu_backward(dH, cache[0][1]), cache[0][0])
    return {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2}


DEEP_MISTAKES = [
    (deep_variant(mask=False), ["layer sizes (6, 5, 1): 1 hidden layer", "W1 and b1 are wrong (W2 and b2 are right)",
                                "the ReLU mask is missing between the layers", "between two layers"]),
    (deep_variant(first=2), ["no gradient for W1 and b1", "the range of your loop"]),
    (deep_variant(top_mask=True), ["deep_backward raised TypeError", "output layer's relu cache is None"]),
    (deep_variant(column=False), ["deep_backward raised ValueError", "dy_hat is (N,) = (5,)", "(N, 1)"]),
    (deep_variant(scale=1 / 5), ["are 5 times too small", "already carries the loss's 1/N"]),
    (deep_variant(scale=-1.0), ["minus the right values"]),
    (deep_variant(names="W"), ["no gradient for W1 (it returned 'W' and 'b1')", "the names you store"]),
    (two_layers_only, ["deep_backward raised IndexError", "layer sizes (6, 1)"]),
    (lambda params, cache, dy_hat: [dy_hat], ["must return a dict of gradients"]),
]


def recursion_doubles_below_the_top(params, cache, dy_hat):
    """Right at the top; below it, each step down doubles the gradient it hands on."""
    grads, dZ = {}, dy_hat[:, None]
    for l in range(len(cache), 0, -1):
        dH, grads[f"W{l}"], grads[f"b{l}"] = affine_backward(dZ, cache[l - 1][0])
        if l > 1:
            dZ = relu_backward(dH, cache[l - 2][1]) * 2 if l < len(cache) else relu_backward(dH, cache[l - 2][1])
    return grads


DEEP_MISTAKES.append((recursion_doubles_below_the_top, ["layer sizes (6, 4, 4, 4, 1)", "(W3, b3, W4 and b4 are right)",
                                             "The output layer's gradients are right"]))


MATMUL_MISTAKES = [
    (make_matmul(lambda A, B, G: G @ B, lambda A, B, G: A.T @ G), ["matmul raised ValueError", "a is (5, 3)",
                                                                   "where a transpose goes"]),
    (make_matmul(lambda A, B, G: (B @ G.T), lambda A, B, G: A.T @ G), ["a.grad has shape (3, 5), expected (5, 3)",
                                                                       "looks transposed"]),
    (make_matmul(lambda A, B, G: G @ B.T, None), ["b.grad is None after the backward", "nothing was handed"]),
    (make_matmul(lambda A, B, G: -(G @ B.T), lambda A, B, G: A.T @ G), ["a.grad is minus the right values",
                                                                        "(b.grad is right)"]),
]


def square_matmul(send_a, send_b):
    """Right on the (5, 3) @ (3, 4) product, wrong on square ones."""
    return make_matmul(lambda A, B, G: send_a(A, B, G) if A.shape == B.shape else G @ B.T,
                       lambda A, B, G: send_b(A, B, G) if A.shape == B.shape else A.T @ G)


MATMUL_MISTAKES += [
    (square_matmul(lambda A, B, G: G @ B, lambda A, B, G: A.T @ G), ["(4, 4) @ (4, 4)", "a transpose of b is missing"]),
    (square_matmul(lambda A, B, G: G @ B.T, lambda A, B, G: A @ G), ["b.grad is wrong", "a transpose of a is missing"]),
    (square_matmul(lambda A, B, G: A.T @ G, lambda A, B, G: G @ B.T), ["a's and b's are swapped"]),
]


def overwriting_matmul(a, b):
    out = Value(a.data @ b.data, (a, b))

    def matmul_backward():
        a.grad = out.grad @ b.data.T  # overwrites what a already held
        b.grad = a.data.T @ out.grad
    out._backward = matmul_backward
    return out


MATMUL_MISTAKES.append((overwriting_matmul, ["a already holds a gradient", "overwritten, not added to"]))


def overwriting_only_when_used_twice(a, b):
    """Adds to what a held before, but computes both parts from a copy of it: the second part replaces the first."""
    out = Value(a.data @ b.data, (a, b))

    def matmul_backward():
        before_a, before_b = a.grad, b.grad
        a.grad = out.grad @ b.data.T if before_a is None else before_a + out.grad @ b.data.T
        b.grad = a.data.T @ out.grad if before_b is None else before_b + a.data.T @ out.grad
    out._backward = matmul_backward
    return out


MATMUL_MISTAKES.append((overwriting_only_when_used_twice, ["matmul(a, a) uses a twice", "as the right input",
                                                           "overwrote the first"]))


def add_variant(reduce_a=None, reduce_b=None, overwrite=False):
    def add(a, b):
        out = Value(a.data + b.data, (a, b))

        def add_backward():
            for v, reduce in ((a, reduce_a or unbroadcast), (b, reduce_b or unbroadcast)):
                g = reduce(out.grad, v.data.shape)
                if overwrite:
                    v.grad = g
                else:
                    v.accumulate(g)
        out._backward = add_backward
        return out
    return add


def no_sum(g, shape):
    return g


def mean_not_sum(g, shape):
    while g.ndim > len(shape):
        g = g.mean(axis=0)
    return g.mean(axis=tuple(i for i, n in enumerate(shape) if n == 1), keepdims=True)


ADD_MISTAKES = [
    (add_variant(reduce_b=no_sum), ["add ((5, 4) + (4,))", "b.grad has shape (5, 4), expected (4,)",
                                    "still has out's shape", "(a.grad is right)"]),
    (add_variant(reduce_b=lambda g, s: g.sum(axis=1)), ["b.grad has shape (5,)", "summed over the wrong axis"]),
    (add_variant(reduce_b=lambda g, s: g.sum(axis=0, keepdims=True)), ["keeps a leading axis of length 1"]),
    (add_variant(reduce_b=lambda g, s: g.sum(axis=0) if g.ndim == len(s) else unbroadcast(g, s)),
     ["add ((5, 4) + (1, 4))", "b.grad has shape (4,), expected (1, 4)", "lost b's leading axis"]),
    (add_variant(reduce_b=mean_not_sum), ["b.grad is 5 times too small", "averaged over the 5 rows"]),
    (add_variant(reduce_a=lambda g, s: g if len(s) == g.ndim else g.sum(axis=0) / 3),
     ["add ((4,) + (3, 4))", "a.grad is 3 times too small"]),
    (add_variant(overwrite=True), ["a already holds a gradient", "overwritten, not added to"]),
    (add_variant(reduce_a=lambda g, s: -unbroadcast(g, s)), ["a.grad is minus the right values"]),
    (lambda a, b: a.data + b.data, ["it must return a Value", "not a ndarray"]),
]


def overwriting_add(a, b):
    out = Value(a.data + b.data, (a, b))

    def add_backward():
        a.grad = unbroadcast(out.grad, a.data.shape)
        b.accumulate(unbroadcast(out.grad, b.data.shape))
    out._backward = add_backward
    return out


ADD_MISTAKES.append((overwriting_add, ["a already holds a gradient", "overwritten, not added to"]))


def overwriting_add_only_when_used_twice(a, b):
    """Adds to what a held before, but computes both parts from a copy of it: the second part replaces the first."""
    out = Value(a.data + b.data, (a, b))

    def add_backward():
        before_a, before_b = a.grad, b.grad
        a.grad = unbroadcast(out.grad, a.data.shape) + (0 if before_a is None else before_a)
        b.grad = unbroadcast(out.grad, b.data.shape) + (0 if before_b is None else before_b)
    out._backward = add_backward
    return out


ADD_MISTAKES.append((overwriting_add_only_when_used_twice, ["add (add(a, a))", "half the right values",
                                                            "overwrote the first"]))

MISTAKES = ([("affine_backward", *m) for m in AFFINE_MISTAKES] + [("relu_backward", *m) for m in RELU_MISTAKES]
            + [("deep_backward", *m) for m in DEEP_MISTAKES] + [("matmul", *m) for m in MATMUL_MISTAKES]
            + [("add", *m) for m in ADD_MISTAKES])


@pytest.mark.parametrize("name, mutant, phrases", MISTAKES, ids=[f"{m[0]}-{i}" for i, m in enumerate(MISTAKES)])
def test_check_names_the_typical_mistake(name, mutant, phrases):
    check, _ = CHECKS[name]
    message = check_support.fails(check, mutant, *phrases)
    assert "all checks passed" not in message


def test_deep_backward_with_a_wrong_layer_points_at_the_layer_first():
    """A deep_backward is only as right as the affine_backward it calls; with no hidden layer it is nothing else."""
    def averaging_affine(dY, cache):  # db averaged over the faces instead of summed
        X, W = cache
        return dY @ W, dY.T @ X, dY.mean(axis=0)
    check_support.fails(fh.check_deep_backward, deep_variant(affine=averaging_affine),
                        "layer sizes (6, 1): no hidden layer", "b1 is wrong (W1 is right)", "look there first",
                        "fh.check_affine_backward(affine_backward)")


def test_messages_do_not_hand_over_the_fixing_line():
    """A failure says what is wrong and where to look; the expression that fixes it is the student's to write."""
    formulas = ("dY @ W", "dY.T @ X", "dY.sum(axis=0)", "dH * (Z > 0)", "out.grad @ b.data.T", "a.data.T @ out.grad",
                ".sum(axis=0)", "np.maximum(Z, 0)", "dZ @ W", "dZ.T @")
    messages = [check_support.fails(CHECKS[name][0], mutant) for name, mutant, _ in MISTAKES]
    for message in messages:
        for formula in formulas:
            assert formula not in message, f"{formula!r} in:\n{message}"


def test_answers_are_keyed_for_check_answers_npz():
    """The classroom edition saves them with np.savez: string keys, float arrays, every key the checks read."""
    answers = fh._any_depth_answers()
    assert all(k.startswith("depth.") for k in answers)
    assert all(np.asarray(v).dtype.kind == "f" for v in answers.values())
