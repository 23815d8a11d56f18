"""The browsers as Python objects, without a browser: the weight browsers of notebook 04, and notebook 06's
gradient maps (fh.input_gradient, against centered differences of the predicted age in years) and their
face browser.

Each browser is VBox(slider, caption, output). Moving the slider must change the caption to the new
unit, rank, epoch or face and swap in a new PNG; the slider's ends work; bad arguments get clear messages.
tests/test_browser.py checks the same in JupyterLab and Voila, where Chromium is available.
"""
import dataclasses

import numpy as np
import pytest

import faceage_helpers as fh
from fakes import fake_faces

pytest.importorskip("ipywidgets")


@pytest.fixture(scope="module")
def trained():
    """A small network trained for 4 epochs on fake faces, with a W1 snapshot every 2 epochs."""
    X, ages = fake_faces(120, seed=3)
    model = fh.train(X, ages, X[:30], ages[:30], n_hidden=6, epochs=4, batch_size=16, snapshot_every=2,
                     mirror=False, verbose=False)
    return model, X, ages


def parts(box):
    slider, caption, output = box.children
    return slider, caption.value, output.outputs[0]["data"]["image/png"]


def test_unit_browser_redraws_for_every_unit(trained):
    model, X, ages = trained
    box = fh.unit_browser(model, X, ages, top_k=4)
    slider, caption, png = parts(box)
    assert (slider.min, slider.max, slider.value) == (0, 5, 0)
    assert caption.startswith("unit 0: output weight W2 = ")
    seen = {png}
    for unit in (1, 5, 0):  # the far end, and back to the start
        slider.value = unit
        _, caption, png = parts(box)
        assert caption.startswith(f"unit {unit}: output weight W2 = {model.params['W2'][0, unit]:+.3f}")
        seen.add(png)
    assert len(seen) == 3  # unit 0 drawn again gives the same picture as at the start


def test_rank_browser_runs_from_largest_to_smallest_output_weight(trained):
    model, X, ages = trained
    box = fh.rank_browser(model, X, ages, top_k=4)
    slider, caption, _ = parts(box)
    order = np.argsort(-model.params["W2"][0], kind="stable")
    assert (slider.min, slider.max) == (1, 6)
    assert caption.startswith(f"rank 1 of 6 by output weight: unit {order[0]},")
    slider.value = 6
    assert parts(box)[1].startswith(f"rank 6 of 6 by output weight: unit {order[-1]},")


def test_epoch_browser_shows_each_snapshot(trained):
    model, _, _ = trained
    box = fh.epoch_browser(model.history, units=(0, 1, 2))
    slider, caption, png0 = parts(box)
    assert (slider.min, slider.max, slider.step) == (0, 4, 2)
    assert caption == "epoch 0 of 4: the random start, before any training"
    slider.value = 4
    _, caption, png4 = parts(box)
    assert caption == f"epoch 4 of 4: validation RMSE {model.history['val_rmse'][-1]:.2f} years"
    assert png4 != png0


def test_a_browser_prints_as_text_not_as_a_picture(trained):
    model, X, ages = trained
    assert repr(fh.unit_browser(model, X, ages, top_k=2)) == \
        "[unit browser over 6 hidden units: a slider; run the notebook in JupyterLab or Voila to use it]"


def test_bad_arguments_get_clear_messages(trained):
    model, X, ages = trained
    with pytest.raises(ValueError, match=r"unit must be between 0 and 5 \(the network has 6 hidden units\), got 6"):
        fh.unit_browser(model, X, ages, unit=6)
    with pytest.raises(ValueError, match="top_k must be between 1 and the number of faces"):
        fh.unit_browser(model, X, ages, top_k=0)
    with pytest.raises(ValueError, match=r"snapshot_every=k"):
        fh.epoch_browser({"epoch": [1]})


# --- notebook 06: fh.input_gradient and the face browser ---------------------------------------

def backward_to_input(params, cache, dy_hat):
    """A right answer to the exercise of notebook 06 §2."""
    X, Z, H = cache
    dZ = dy_hat[:, None] * params["W2"] * (Z > 0)
    return dZ @ params["W1"]


def small_model(n_hidden=5, seed=0, lesson=fh.REFERENCE):
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
    yours = dataclasses.replace(fh.REFERENCE, backward_to_input=backward_to_input)

    def age(x):  # the predicted age in years of one face x, in float64 (fh.predict rounds faces to float32)
        xs = (x - model.x_mean) / model.x_std
        return fh.forward(model.params, xs[None, :])[0][0] * model.y_std + model.y_mean

    G = fh.input_gradient(model, X, lesson=yours)
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

    model = small_model(lesson=dataclasses.replace(fh.REFERENCE, forward=forward, backward_to_input=backward_to_input))
    X = faces(5)
    chunked = fh.input_gradient(model, X, batch_size=2)  # the model's lesson: its forward and backward_to_input
    assert calls == [2, 2, 1]
    np.testing.assert_allclose(chunked, fh.input_gradient(model, X), rtol=1e-12)

    def ones(params, cache, dy_hat):  # dX = 1 everywhere: what is left is the conversion to years
        return np.ones_like(cache[0])

    converted = fh.input_gradient(model, X, lesson=dataclasses.replace(model.lesson, backward_to_input=ones))
    np.testing.assert_allclose(converted, np.tile(model.y_std / model.x_std, (5, 1)))
    assert calls[3:] == [5, 5]  # the model's forward, whoever's backward_to_input


def test_input_gradient_bad_arguments_get_clear_messages():
    model, X = small_model(), faces(2)
    with pytest.raises(TypeError, match=r"Lesson\(backward_to_input=...\) must be a function, not a ndarray"):
        dataclasses.replace(fh.REFERENCE, backward_to_input=np.ones((2, fh.N_PIXELS)))
    wrong = dataclasses.replace(fh.REFERENCE, backward_to_input=lambda params, cache, dy_hat: params["W1"])
    with pytest.raises(ValueError, match=r"returned shape \(5, 2304\) for 2 faces.*check_backward_to_input"):
        fh.input_gradient(model, X, lesson=wrong)
    with pytest.raises(fh.DataError, match="expected \\(N, 48, 48\\) or \\(N, 2304\\)"):
        fh.input_gradient(model, X[:, :100])
    no_map = fh.Model(model.params, model.x_mean, model.x_std, model.y_mean, model.y_std,
                      lesson=fh.Lesson(fh.forward, fh.mse_loss, fh.backward))
    with pytest.raises(fh.LessonError, match=r"input_gradient needs backward_to_input, .*notebook 06 §2"):
        fh.input_gradient(no_map, X)


# --- fh.input_gradient_browser ----------------------------------------------------------------

@pytest.fixture(scope="module")
def browsed():
    X, ages = fake_faces(8, seed=4)
    return small_model(), X, ages


YOURS = dataclasses.replace(fh.REFERENCE, backward_to_input=backward_to_input)  # a student's, not the model's


def test_browser_redraws_face_map_and_prediction_for_every_slider_value(browsed, monkeypatch):
    model, X, ages = browsed
    figures = []
    make_figure = fh._figure
    monkeypatch.setattr(fh, "_figure", lambda *a: figures.append(make_figure(*a)) or figures[-1])
    box = fh.input_gradient_browser(model, X, ages, lesson=YOURS)
    pred, G = fh.predict(model, X), fh.input_gradient(model, X, lesson=YOURS)
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
    box = fh.input_gradient_browser(model, X, ages, face=7)
    slider, caption, _ = parts(box)
    assert slider.value == 7 and caption.startswith("face 7 of 8:")
    assert repr(box) == ("[face browser over 8 faces and their gradient maps: a slider; run the notebook in "
                         "JupyterLab or Voila to use it]")


def test_browser_bad_arguments_get_clear_messages(browsed):
    model, X, ages = browsed
    for face in (8, -1):
        with pytest.raises(ValueError, match=rf"face must be between 0 and 7 \(there are 8 faces\), got {face}"):
            fh.input_gradient_browser(model, X, ages, face=face)
    with pytest.raises(fh.DataError, match="ages holds 7 ages but there are 8 faces"):
        fh.input_gradient_browser(model, X, ages[:7])
