"""The network and its gradients: backward must match centered differences in float64."""
import numpy as np
import pytest

import faceage_helpers as fh


def small_problem(n_hidden=6, n_in=12, n=9, seed=0):
    rng = np.random.default_rng(seed)
    params = fh.init_params(n_hidden, n_in=n_in, seed=seed, dtype=np.float64)
    params["b1"] += rng.normal(0, 0.1, n_hidden)  # non-zero biases, so their gradients are tested too
    return params, rng.standard_normal((n, n_in)), rng.standard_normal(n)


def test_init_params_shapes_dtype_and_relu_scale():
    p = fh.init_params(50, seed=0)
    assert {k: v.shape for k, v in p.items()} == {"W1": (50, 2304), "b1": (50,), "W2": (1, 50), "b2": (1,)}
    assert p["W1"].dtype == np.float32
    he = np.sqrt(2 / 2304)  # He initialisation, shrunk by w1_gain for the first layer
    assert abs(p["W1"].std() - 0.1 * he) < 0.05 * 0.1 * he
    assert abs(fh.init_params(50, seed=0, w1_gain=1.0)["W1"].std() - he) < 0.05 * he
    assert not p["b1"].any()
    np.testing.assert_array_equal(p["W1"], fh.init_params(50, seed=0)["W1"])


def test_forward_matches_the_single_example_formula():
    params, X, _ = small_problem()
    y_hat, (Xc, Z, H) = fh.forward(params, X)
    x = X[4]
    z = params["W1"] @ x + params["b1"]
    h = np.maximum(z, 0)
    assert y_hat.shape == (len(X),)
    np.testing.assert_allclose(Z[4], z)
    np.testing.assert_allclose(H[4], h)
    np.testing.assert_allclose(y_hat[4], params["W2"] @ h + params["b2"])


def test_mse_loss_and_its_gradient():
    loss, d = fh.mse_loss(np.array([1.0, 4.0]), np.array([2.0, 1.0]))
    assert loss == pytest.approx((1 + 9) / 2)
    np.testing.assert_allclose(d, [2 * -1 / 2, 2 * 3 / 2])


@pytest.mark.parametrize("seed,n_hidden,n", [(0, 3, 1), (1, 6, 9), (2, 20, 32), (3, 50, 5)])
def test_backward_matches_centered_differences(seed, n_hidden, n):
    params, X, y = small_problem(n_hidden, n_in=15, n=n, seed=seed)
    results = fh.gradient_check(params, X, y, seed=seed)
    for name, r in results.items():
        assert r.n_checked == params[name].size
        assert r.rel_error < 1e-7, f"{name}: {r.rel_error:.2e}"


def test_gradient_shapes_and_names_match_params():
    params, X, y = small_problem()
    y_hat, cache = fh.forward(params, X)
    grads = fh.backward(params, cache, fh.mse_loss(y_hat, y)[1])
    assert {k: g.shape for k, g in grads.items()} == {k: p.shape for k, p in params.items()}


def backward_without_relu_mask(params, cache, dy_hat):
    X, Z, H = cache
    dZ = dy_hat[:, None] * params["W2"]  # the bug: gradient flows through units that were off
    return {"W1": dZ.T @ X, "b1": dZ.sum(axis=0), "W2": dy_hat[None, :] @ H, "b2": dy_hat.sum(keepdims=True)}


def test_a_broken_backward_is_caught_and_named(capsys):
    params, X, y = small_problem(8, n=10, seed=5)
    results = fh.gradient_check(params, X, y, backward_fn=backward_without_relu_mask)
    assert results["W1"].rel_error > 1e-3 and results["b1"].rel_error > 1e-3
    assert results["W2"].rel_error < 1e-7 and results["b2"].rel_error < 1e-7
    assert not fh.report_gradient_check(results)
    out = capsys.readouterr().out
    assert "W1 relative error" in out and "FAILED" in out and "should be < 1e-07" in out
    with pytest.raises(fh.GradientCheckError, match=r"gradient check failed for W1\[\d+, \d+\]: backward gives"):
        fh.report_gradient_check(results, raise_on_failure=True)


def test_a_gradient_of_the_wrong_shape_is_reported():
    params, X, y = small_problem()

    def transposed(params, cache, dy_hat):
        grads = fh.backward(params, cache, dy_hat)
        grads["W1"] = grads["W1"].T
        return grads
    with pytest.raises(fh.GradientCheckError, match=r"dW1 has shape \(12, 6\) but W1 has shape \(6, 12\)"):
        fh.gradient_check(params, X, y, backward_fn=transposed)


def test_random_subset_of_entries_on_a_full_size_network():
    params = fh.init_params(30, seed=1)
    rng = np.random.default_rng(1)
    X, y = rng.random((16, 2304)), rng.standard_normal(16)
    results = fh.gradient_check(params, X, y, n_entries=25, seed=1)
    assert results["W1"].n_checked == 25 and results["W1"].size == 30 * 2304
    assert results["b2"].n_checked == 1
    assert max(r.rel_error for r in results.values()) < 1e-6  # a kink within h of 0 can cost ~1e-7


def test_rel_error_formula():
    assert fh.rel_error([1.0, 2.0], [1.0, 2.0]) == 0
    assert fh.rel_error([1.0], [3.0]) == pytest.approx(0.5)
    assert fh.rel_error([0.0], [0.0]) == 0  # the 1e-8 floor avoids 0/0
