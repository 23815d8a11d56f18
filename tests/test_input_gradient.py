"""Notebook 06's gradient maps: fh.input_gradient, fh.check_backward_to_input and fh.input_gradient_browser.

input_gradient is compared with centered differences of the predicted age in years (not with a copy of
its own formula); the check must pass a right answer with one line and name each typical mistake; the
browser is driven as a Python object (tests/test_browser.py drives it in JupyterLab and Voila).
"""
import types

import numpy as np
import pytest

import check_support
import faceage_helpers as fh
from fakes import fake_faces


def backward_to_input(params, cache, dy_hat):
    """A right answer to the exercise of notebook 06 §2."""
    X, Z, H = cache
    dZ = dy_hat[:, None] * params["W2"] * (Z > 0)
    return dZ @ params["W1"]


def small_model(n_hidden=5, seed=0, lesson=None):
    """A float64 network with made-up standardisation; its biases give z both signs on random faces."""
    rng = np.random.default_rng(seed)  # fixed seed: the same network every run
    params = fh.init_params(n_hidden, seed=seed, dtype=np.float64, w1_gain=1.0)
    params["b1"] = 0.5 * rng.standard_normal(n_hidden)
    x_mean, x_std = rng.uniform(0.3, 0.6, fh.N_PIXELS), rng.uniform(0.1, 0.3, fh.N_PIXELS)
    return fh.Model(params, x_mean, x_std, y_mean=33.0, y_std=20.0, lesson=lesson)


def faces(n, seed=1):
    return np.random.default_rng(seed).uniform(0, 1, (n, fh.N_PIXELS))


# --- fh.input_gradient ------------------------------------------------------------------------

def test_input_gradient_is_the_slope_of_the_predicted_age_in_years_per_unit_of_brightness():
    model, X = small_model(), faces(3)

    def age(x):  # the predicted age in years of one face x, in float64 (fh.predict rounds faces to float32)
        xs = (x - model.x_mean) / model.x_std
        return fh.forward(model.params, xs[None, :])[0][0] * model.y_std + model.y_mean

    G = fh.input_gradient(model, X, backward_to_input)
    assert G.shape == (3, fh.N_PIXELS)
    pixels, h = np.random.default_rng(2).choice(fh.N_PIXELS, 20, replace=False), 1e-6
    for n in range(3):
        numeric = []
        for i in pixels:
            plus, minus = X[n].copy(), X[n].copy()
            plus[i] += h
            minus[i] -= h
            numeric.append((age(plus) - age(minus)) / (2 * h))
        assert fh.rel_error(G[n, pixels], numeric) < 1e-6, f"face {n}"
    assert len({float(np.abs(G[n]).sum()) for n in range(3)}) == 3  # each face gets its own row


def test_input_gradient_runs_the_models_forward_and_the_given_function_in_chunks():
    calls = []

    def forward(params, X):
        calls.append(len(X))
        return fh.forward(params, X)

    model = small_model(lesson=types.SimpleNamespace(forward=forward))
    X = faces(5)
    chunked = fh.input_gradient(model, X, backward_to_input, batch_size=2)
    assert calls == [2, 2, 1]
    np.testing.assert_allclose(chunked, fh.input_gradient(model, X, backward_to_input), rtol=1e-12)

    def ones(params, cache, dy_hat):  # dX = 1 everywhere: what is left is the conversion to years
        return np.ones_like(cache[0])

    np.testing.assert_allclose(fh.input_gradient(model, X, ones), np.tile(model.y_std / model.x_std, (5, 1)))


def test_input_gradient_bad_arguments_get_clear_messages():
    model, X = small_model(), faces(2)
    with pytest.raises(TypeError, match=r"backward_to_input must be your function .*not a ndarray"):
        fh.input_gradient(model, X, np.ones((2, fh.N_PIXELS)))
    with pytest.raises(ValueError, match=r"returned shape \(5, 2304\) for 2 faces.*check_backward_to_input"):
        fh.input_gradient(model, X, lambda params, cache, dy_hat: params["W1"])
    with pytest.raises(fh.DataError, match="expected \\(N, 48, 48\\) or \\(N, 2304\\)"):
        fh.input_gradient(model, X[:, :100], backward_to_input)


# --- fh.check_backward_to_input ---------------------------------------------------------------

def fails(fn, *phrases):
    """fh.check_backward_to_input(fn) fails, naming the phrases; returns its message."""
    return check_support.fails(fh.check_backward_to_input, fn, *phrases)


def test_check_passes_a_right_answer_with_one_line(capsys):
    fh.check_backward_to_input(backward_to_input)
    assert capsys.readouterr().out == "backward_to_input: all checks passed.\n"


def dZ_of(params, cache, dy_hat):
    return dy_hat[:, None] * params["W2"] * (cache[1] > 0)


MISTAKES = [  # (wrong answer, phrases the check must say)
    (lambda p, c, d: (d[:, None] * p["W2"]) @ p["W1"], ["dX is wrong: the ReLU mask is missing", "dZ = dH * (Z > 0)"]),
    (lambda p, c, d: dZ_of(p, c, d) @ p["W1"].T, ["backward_to_input raised ValueError", "needs no .T"]),
    (lambda p, c, d: (p["W1"].T @ dZ_of(p, c, d).T), ["has shape (2304, 5), expected (5, 2304)", "transposed"]),
    (lambda p, c, d: dZ_of(p, c, d).T @ c[0], ["has shape (4, 2304)", "dW1 = dZ.T @ X", "dX = dZ @ W1"]),
    (lambda p, c, d: (d[:, None] * p["W2"] * c[2]) @ p["W1"], ["dH is multiplied by H"]),
    (lambda p, c, d: (p["W2"] * (c[1] > 0)) @ p["W1"], ["dy_hat is missing"]),
    (lambda p, c, d: dZ_of(p, c, d), ["has shape (5, 4)", "that is dZ"]),
    (lambda p, c, d: (dZ_of(p, c, d) @ p["W1"]).sum(axis=0), ["summed over the faces"]),
    (lambda p, c, d: -(dZ_of(p, c, d) @ p["W1"]), ["minus the right values"]),
    (lambda p, c, d: dZ_of(p, c, d) @ p["W1"] / len(d), ["5 times too small"]),
    (lambda p, c, d: None, ["dX is None: is a `return` missing?"]),
]


@pytest.mark.parametrize("mutant, phrases", MISTAKES)
def test_check_names_the_typical_mistakes(mutant, phrases):
    fails(mutant, *phrases)


def test_check_does_not_pass_the_teachers_reference_as_the_students_work(capsys):
    def released(params, cache, dy_hat):
        return backward_to_input(params, cache, dy_hat)
    released.__module__ = fh.REFERENCE_MODULE  # as if imported from the released faceage_reference.py
    fh.check_backward_to_input(released)
    assert "not your own code: not checked" in capsys.readouterr().out


def test_check_repeats_the_hint_of_an_unfilled_stub():
    def stub(params, cache, dy_hat):
        raise NotImplementedError("dH and dZ as in your backward, then dX = dZ W1")
    fails(stub, "backward_to_input is not implemented yet", "Hint: dH and dZ as in your backward")


# --- fh.input_gradient_browser ----------------------------------------------------------------

pytest.importorskip("ipywidgets")


@pytest.fixture(scope="module")
def browsed():
    X, ages = fake_faces(8, seed=4)
    return small_model(), X, ages


def parts(box):
    slider, caption, output = box.children
    return slider, caption.value, output.outputs[0]["data"]["image/png"]


def test_browser_redraws_face_map_and_prediction_for_every_slider_value(browsed, monkeypatch):
    model, X, ages = browsed
    figures = []
    make_figure = fh._figure
    monkeypatch.setattr(fh, "_figure", lambda *a: figures.append(make_figure(*a)) or figures[-1])
    box = fh.input_gradient_browser(model, X, ages, backward_to_input)
    pred, G = fh.predict(model, X), fh.input_gradient(model, X, backward_to_input)
    slider, caption, png = parts(box)
    assert (slider.min, slider.max, slider.value) == (0, 7, 0)
    seen = {png}
    for face in (7, 3, 0):  # the far end, the middle, and back to the start
        slider.value = face
        _, caption, png = parts(box)
        assert caption.startswith(f"face {face} of 8: true age {ages[face]:.0f} y, predicted {pred[face]:.0f} y; "
                                  f"largest |dŷ/dx| {np.abs(G[face]).max():.1f} years per unit of brightness")
        assert caption.endswith(f"by {0.01 * G[face].sum():+.1f} years (to first order)")
        seen.add(png)
    assert len(seen) == 3  # face 0 drawn again gives the same picture as at the start
    assert len(figures) == 1, "the figure is built once; a slider move only swaps data into it"


def test_browser_starts_at_the_given_face_and_prints_as_text(browsed):
    model, X, ages = browsed
    box = fh.input_gradient_browser(model, X, ages, backward_to_input, face=7)
    slider, caption, _ = parts(box)
    assert slider.value == 7 and caption.startswith("face 7 of 8:")
    assert repr(box) == ("[face browser over 8 faces and their gradient maps: a slider; run the notebook in "
                         "JupyterLab or Voila to use it]")


def test_browser_bad_arguments_get_clear_messages(browsed):
    model, X, ages = browsed
    for face in (8, -1):
        with pytest.raises(ValueError, match=rf"face must be between 0 and 7 \(there are 8 faces\), got {face}"):
            fh.input_gradient_browser(model, X, ages, backward_to_input, face=face)
    with pytest.raises(fh.DataError, match="ages holds 7 ages but there are 8 faces"):
        fh.input_gradient_browser(model, X, ages[:7], backward_to_input)
