"""The network (the module's first part): init, relu, forward, mse_loss, backward, backward_to_input,
sgd_step, train_epoch, weight decay, momentum, weight_image, rel_error, numerical_gradient, gradient_check.

Gradients are compared with centered differences in float64, never with a copy of their own formula;
train_epoch is run with a lesson whose functions count and record their calls.
"""
import dataclasses

import numpy as np
import pytest

import faceage_helpers as fh


def small_problem(n_hidden=6, n_in=12, n=9, seed=0):
    rng = np.random.default_rng(seed)
    params = fh.init_params(n_hidden, n_in=n_in, seed=seed, dtype=np.float64)
    params["b1"] += rng.normal(0, 0.1, n_hidden)  # non-zero biases, so their gradients are tested too
    return params, rng.standard_normal((n, n_in)), rng.standard_normal(n)


def small_params(seed=0):
    rng = np.random.default_rng(seed)
    return {"W1": rng.standard_normal((3, 4)), "b1": rng.standard_normal(3),
            "W2": rng.standard_normal((1, 3)), "b2": rng.standard_normal(1)}


# --- init_params, relu, forward, mse_loss ----------------------------------------------------

def test_init_params_shapes_dtype_and_relu_scale():
    p = fh.init_params(50, seed=0)
    assert {k: v.shape for k, v in p.items()} == {"W1": (50, 2304), "b1": (50,), "W2": (1, 50), "b2": (1,)}
    assert p["W1"].dtype == np.float32
    he = np.sqrt(2 / 2304)  # He initialisation, shrunk by w1_gain for the first layer
    assert abs(p["W1"].std() - 0.1 * he) < 0.05 * 0.1 * he
    assert abs(fh.init_params(50, seed=0, w1_gain=1.0)["W1"].std() - he) < 0.05 * he
    assert not p["b1"].any()
    np.testing.assert_array_equal(p["W1"], fh.init_params(50, seed=0)["W1"])
    assert not np.array_equal(p["W1"], fh.init_params(50, seed=1)["W1"])


def test_relu_keeps_the_positive_part_elementwise():
    z = np.array([[-2.0, 0.0, 3.5], [1e-9, -1e-9, 7.0]])
    np.testing.assert_array_equal(fh.relu(z), [[0.0, 0.0, 3.5], [1e-9, 0.0, 7.0]])
    assert fh.relu(z).shape == z.shape


def test_forward_matches_the_single_example_formula():
    params, X, _ = small_problem()
    y_hat, (Xc, Z, H) = fh.forward(params, X)
    x = X[4]
    z = params["W1"] @ x + params["b1"]
    h = np.maximum(z, 0)
    assert y_hat.shape == (len(X),) and Xc is X
    np.testing.assert_allclose(Z[4], z)
    np.testing.assert_allclose(H[4], h)
    np.testing.assert_allclose(y_hat[4], params["W2"] @ h + params["b2"])


def test_mse_loss_and_its_gradient():
    loss, d = fh.mse_loss(np.array([1.0, 4.0]), np.array([2.0, 1.0]))
    assert loss == pytest.approx((1 + 9) / 2) and isinstance(loss, float)
    np.testing.assert_allclose(d, [2 * -1 / 2, 2 * 3 / 2])


# --- backward and backward_to_input against centered differences -----------------------------

@pytest.mark.parametrize("seed,n_hidden,n", [(0, 3, 1), (1, 6, 9), (2, 20, 32), (3, 50, 5)])
def test_backward_matches_centered_differences(seed, n_hidden, n):
    params, X, y = small_problem(n_hidden, n_in=15, n=n, seed=seed)
    results = fh.gradient_check(params, X, y, lesson=fh.REFERENCE, seed=seed)
    for name, r in results.items():
        assert r.n_checked == params[name].size
        assert r.rel_error < 1e-7, f"{name}: {r.rel_error:.2e}"


def test_gradient_shapes_and_names_match_params():
    params, X, y = small_problem()
    y_hat, cache = fh.forward(params, X)
    grads = fh.backward(params, cache, fh.mse_loss(y_hat, y)[1])
    assert {k: g.shape for k, g in grads.items()} == {k: p.shape for k, p in params.items()}


def test_backward_to_input_matches_centered_differences_of_the_loss_in_the_faces():
    params, X, y = small_problem(n_hidden=7, n_in=10, n=4, seed=4)

    def loss():
        return fh.mse_loss(fh.forward(params, X)[0], y)[0]

    y_hat, cache = fh.forward(params, X)
    dX = fh.backward_to_input(params, cache, fh.mse_loss(y_hat, y)[1])
    assert dX.shape == X.shape
    numeric = fh.numerical_gradient(loss, X, np.arange(X.size)).reshape(X.shape)
    assert fh.rel_error(dX, numeric) < 1e-7
    assert len({float(np.abs(row).sum()) for row in dX}) == len(X)  # each face its own row


# --- sgd_step, add_weight_decay, momentum_step ------------------------------------------------

def test_sgd_step_updates_in_place_against_the_gradient():
    params = {"W": np.array([1.0, -2.0])}
    W = params["W"]
    fh.sgd_step(params, {"W": np.array([0.5, -1.0])}, lr=0.1)
    assert params["W"] is W
    np.testing.assert_allclose(W, [0.95, -1.9])


def test_add_weight_decay_adds_lambda_w_to_the_weights_only():
    params, grads = small_params(0), small_params(1)
    out = fh.add_weight_decay({k: g.copy() for k, g in grads.items()}, params, 0.1)
    for name in ("W1", "W2"):
        np.testing.assert_allclose(out[name], grads[name] + 0.1 * params[name])
    for name in ("b1", "b2"):
        np.testing.assert_array_equal(out[name], grads[name])
    np.testing.assert_array_equal(params["W1"], small_params(0)["W1"])  # the weights themselves are not moved


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


# --- train_epoch: the one loop, run with a lesson whose functions record their calls -----------

def recording(lesson=fh.REFERENCE):
    """(lesson, calls): the lesson's forward, mse_loss, backward and sgd_step, each recording its call
    (forward: the rows of X it got; sgd_step: the learning rate)."""
    calls = []

    def forward(params, X):
        calls.append(("forward", X.copy()))
        return lesson.forward(params, X)

    def mse_loss(y_hat, y):
        calls.append(("mse_loss", y.copy()))
        return lesson.mse_loss(y_hat, y)

    def backward(params, cache, dy_hat):
        calls.append(("backward", None))
        return lesson.backward(params, cache, dy_hat)

    def sgd_step(params, grads, lr):
        calls.append(("sgd_step", lr))
        return lesson.sgd_step(params, grads, lr)

    return dataclasses.replace(lesson, forward=forward, mse_loss=mse_loss, backward=backward,
                               sgd_step=sgd_step), calls


def epoch_problem(n=11, n_in=6, seed=0):
    rng = np.random.default_rng(seed)
    X = np.arange(n, dtype=np.float64)[:, None] + rng.random((n, n_in)) * 0.1  # row i starts with about i
    return fh.init_params(3, n_in=n_in, seed=seed, dtype=np.float64), X, rng.standard_normal(n)


def test_train_epoch_calls_the_lessons_functions_once_per_batch_in_order_on_every_sample_once():
    lesson, calls = recording()
    params, X, y = epoch_problem(n=11)
    fh.train_epoch(lesson, params, X, y, 0.01, 4, np.random.default_rng(0))
    names = [name for name, _ in calls]
    assert names == ["forward", "mse_loss", "backward", "sgd_step"] * 3  # batches of 4, 4 and 3
    rows = [np.round(got[:, 0]).astype(int) for name, got in calls if name == "forward"]
    targets = [got for name, got in calls if name == "mse_loss"]
    assert [len(r) for r in rows] == [4, 4, 3]
    assert sorted(np.concatenate(rows).tolist()) == list(range(11))
    assert np.concatenate(rows).tolist() != list(range(11))  # shuffled
    for r, t in zip(rows, targets):
        np.testing.assert_array_equal(t, y[r])  # the ages of the same faces
    assert [lr for name, lr in calls if name == "sgd_step"] == [0.01] * 3


def test_train_epoch_shuffles_with_the_rng_it_is_given():
    def order(seed):
        lesson, calls = recording()
        params, X, y = epoch_problem()
        fh.train_epoch(lesson, params, X, y, 0.0, 4, np.random.default_rng(seed))
        return np.concatenate([np.round(got[:, 0]) for name, got in calls if name == "forward"]).tolist()
    assert order(5) == order(5) and order(5) != order(6)
    assert order(5) == np.random.default_rng(5).permutation(11).tolist()


def test_train_epoch_updates_the_callers_arrays_and_keeps_float32():
    rng = np.random.default_rng(0)
    X, y = rng.random((50, 2304), dtype=np.float32), rng.standard_normal(50).astype(np.float32)
    params = fh.init_params(5)
    arrays = {k: (p, p.copy()) for k, p in params.items()}
    loss = fh.train_epoch(fh.REFERENCE, params, X, y, 0.01, 16, np.random.default_rng(0))
    for name, p in params.items():
        assert p is arrays[name][0] and p.dtype == np.float32, name
        assert not np.array_equal(p, arrays[name][1]), f"{name} did not move"
    assert np.isfinite(loss)


def test_the_epoch_loss_weights_each_batch_by_its_size():
    params, X, y = epoch_problem(n=40, n_in=5)
    start = {k: v.copy() for k, v in params.items()}
    loss = fh.train_epoch(fh.REFERENCE, params, X, y, 0.0, 32, np.random.default_rng(0))  # lr 0: batches of 32, 8
    assert loss == pytest.approx(fh.mse_loss(fh.forward(start, X)[0], y)[0], rel=1e-12)


def test_train_epoch_runs_the_step_the_lesson_holds():
    steps = []

    def step(params, grads, lr):  # notebook 05's way: a step of one's own in the lesson
        steps.append(lr)
        fh.sgd_step(params, fh.add_weight_decay(grads, params, 0.5), lr)

    params, X, y = epoch_problem(n=10)
    plain = {k: v.copy() for k, v in params.items()}
    fh.train_epoch(dataclasses.replace(fh.REFERENCE, sgd_step=step), params, X, y, 0.1, 3,
                   np.random.default_rng(0))
    fh.train_epoch(fh.REFERENCE, plain, X, y, 0.1, 3, np.random.default_rng(0))
    assert steps == [0.1] * 4  # batches of 3, 3, 3 and 1
    assert np.linalg.norm(params["W1"]) < np.linalg.norm(plain["W1"])


# --- weight_image ----------------------------------------------------------------------------

def test_weight_image_is_row_j_of_W1_pixel_for_pixel():
    W1 = np.random.default_rng(0).standard_normal((4, 2304))
    image = fh.weight_image(W1, 2)
    assert image.shape == (48, 48)
    assert image[0, 5] == W1[2, 5] and image[1, 0] == W1[2, 48] and image[47, 47] == W1[2, 2303]


# --- rel_error, numerical_gradient, gradient_check --------------------------------------------

def test_rel_error_formula():
    assert fh.rel_error([1.0, 2.0], [1.0, 2.0]) == 0
    assert fh.rel_error([1.0], [3.0]) == pytest.approx(0.5)
    assert fh.rel_error([0.0], [0.0]) == 0  # the 1e-8 floor avoids 0/0
    assert fh.rel_error([1e-3, 100.0], [2e-3, 100.0]) < 1e-5  # against the largest entry, not entry by entry


def test_numerical_gradient_is_exact_on_a_quadratic_and_restores_x():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4))
    c, b = rng.uniform(1, 5, x.shape), rng.standard_normal(x.shape)
    x0 = x.copy()
    got = fh.numerical_gradient(lambda: float(np.sum(0.5 * c * x ** 2 + b * x)), x, [7, 2, 10])
    np.testing.assert_allclose(got, (c * x + b).reshape(-1)[[7, 2, 10]], rtol=1e-8)
    np.testing.assert_array_equal(x, x0)


def backward_without_relu_mask(params, cache, dy_hat):
    X, Z, H = cache
    dZ = dy_hat[:, None] * params["W2"]  # the bug: gradient flows through units that were off
    return {"W1": dZ.T @ X, "b1": dZ.sum(axis=0), "W2": dy_hat[None, :] @ H, "b2": dy_hat.sum(keepdims=True)}


def test_a_broken_backward_is_caught_and_named(capsys):
    params, X, y = small_problem(8, n=10, seed=5)
    broken = dataclasses.replace(fh.REFERENCE, backward=backward_without_relu_mask)
    results = fh.gradient_check(params, X, y, lesson=broken)
    assert results["W1"].rel_error > 1e-3 and results["b1"].rel_error > 1e-3
    assert results["W2"].rel_error < 1e-7 and results["b2"].rel_error < 1e-7
    assert not fh.report_gradient_check(results)
    out = capsys.readouterr().out
    assert "W1 relative error" in out and "FAILED" in out and "should be < 1e-07" in out
    with pytest.raises(fh.GradientCheckError, match=r"gradient check failed for W1\[\d+, \d+\]: backward gives"):
        fh.report_gradient_check(results, raise_on_failure=True)


def test_a_gradient_of_the_wrong_shape_or_a_missing_one_is_reported():
    params, X, y = small_problem()

    def transposed(params, cache, dy_hat):
        grads = fh.backward(params, cache, dy_hat)
        grads["W1"] = grads["W1"].T
        return grads

    def without_b2(params, cache, dy_hat):
        return {k: g for k, g in fh.backward(params, cache, dy_hat).items() if k != "b2"}

    with pytest.raises(fh.GradientCheckError, match=r"dW1 has shape \(12, 6\) but W1 has shape \(6, 12\)"):
        fh.gradient_check(params, X, y, lesson=dataclasses.replace(fh.REFERENCE, backward=transposed))
    with pytest.raises(fh.GradientCheckError, match=r"backward returned no gradient for b2"):
        fh.gradient_check(params, X, y, lesson=dataclasses.replace(fh.REFERENCE, backward=without_b2))


def test_gradient_check_uses_the_lessons_own_functions_only():
    """The lesson's forward, mse_loss, backward and numerical_gradient do the work (the classroom module
    has none of its own), each called as often as the check needs."""
    calls = dict.fromkeys(["forward", "mse_loss", "backward", "numerical_gradient"], 0)

    def counted(name):
        def fn(*args):
            calls[name] += 1
            return getattr(fh, name)(*args)
        return fn

    lesson = fh.Lesson(**{name: counted(name) for name in calls})
    params, X, y = small_problem(n_hidden=3, n_in=4, n=5)
    results = fh.gradient_check(params, X, y, lesson=lesson, n_entries=2)
    assert max(r.rel_error for r in results.values()) < 1e-7
    entries = sum(r.n_checked for r in results.values())  # 2 + 2 + 2 + 1
    assert calls == {"forward": 1 + 2 * entries, "mse_loss": 1 + 2 * entries, "backward": 1,
                     "numerical_gradient": 4}


def test_gradient_check_needs_a_lesson_with_numerical_gradient():
    params, X, y = small_problem()
    with pytest.raises(TypeError, match="gradient_check needs a lesson with numerical_gradient"):
        fh.gradient_check(params, X, y, lesson=fh.Lesson(fh.forward, fh.mse_loss, fh.backward))
    with pytest.raises(TypeError):
        fh.gradient_check(params, X, y)  # no lesson: whose code is checked must be said


def test_random_subset_of_entries_on_a_full_size_network():
    params = fh.init_params(30, seed=1)
    rng = np.random.default_rng(1)
    X, y = rng.random((16, 2304)), rng.standard_normal(16)
    results = fh.gradient_check(params, X, y, lesson=fh.REFERENCE, n_entries=25, seed=1)
    assert results["W1"].n_checked == 25 and results["W1"].size == 30 * 2304
    assert results["b2"].n_checked == 1
    assert max(r.rel_error for r in results.values()) < 1e-6  # a kink within h of 0 can cost ~1e-7
