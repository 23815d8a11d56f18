"""The weight browsers of notebook 04 driven as Python objects, without a browser.

Each browser is VBox(slider, caption, output). Moving the slider must change the caption to the new
unit, rank or epoch and swap in a new PNG; the slider's ends work; bad arguments get clear messages.
tests/test_browser.py checks the same in JupyterLab and Voila, where Chromium is available.
"""
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
