"""plot_predicted_vs_true (notebook 01 §5, notebook 03): the lines it promises, against a direct computation."""
import matplotlib.pyplot as plt
import numpy as np
import pytest

import faceage_helpers as fh


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def fake_predictions(n=600, seed=0):
    """Ages 1-90 and a shrunk, noisy prediction of them: a cloud flatter than the diagonal."""
    rng = np.random.default_rng(seed)
    y_true = rng.integers(1, 91, n).astype(np.float64)
    y_pred = 33 + 0.6 * (y_true - 33) + rng.normal(0, 8, n)
    return y_true, y_pred


def lines(ax):
    """{label: (x, y)} of every Line2D drawn on ax."""
    return {line.get_label(): (np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float))
            for line in ax.get_lines()}


def by_width(by, y_true, y_pred, width, min_count):
    """(mean true, mean predicted) per bin [k * width, (k + 1) * width) of `by` that holds min_count faces."""
    key = np.floor(by / width)
    points = [(y_true[key == k].mean(), y_pred[key == k].mean())
              for k in np.unique(key) if np.sum(key == k) >= min_count]
    return np.array(points).T


def binned(by, y_true, y_pred, edges, min_count):
    """(mean true, mean predicted) per bin of `by` between edges, the first open below and the last above."""
    lows, highs = [-np.inf, *edges[1:]], [*edges[1:], np.inf]
    inside = [(by >= lo) & (by < hi) for lo, hi in zip(lows, highs)]
    return np.array([(y_true[m].mean(), y_pred[m].mean()) for m in inside if m.sum() >= min_count]).T


def test_draws_the_diagonal_and_both_binned_means_of_5_year_bins():
    y_true, y_pred = fake_predictions()
    ax = fh.plot_predicted_vs_true(y_true, y_pred, title="fake")
    drawn = lines(ax)
    assert len(drawn) == 3 and len(ax.collections) == 1  # diagonal, two binned lines; one scatter
    assert ax.collections[0].get_offsets().shape == (len(y_true), 2)
    diagonal = drawn["perfect prediction (predicted = true)"]
    np.testing.assert_array_equal(diagonal[0], diagonal[1])
    for label, by in (("mean prediction per 5-year bin of true age", y_true),
                      ("mean true age per 5-year bin of prediction", y_pred)):
        np.testing.assert_allclose(np.vstack(drawn[label]), by_width(by, y_true, y_pred, 5, 10))
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert set(legend) == set(drawn) | {"one face"}
    assert ax.get_title() == "fake" and ax.get_xlabel() == "true age (years)" and "predicted" in ax.get_ylabel()


def test_the_lines_tell_shrinkage_from_calibration():
    """A calibrated prediction (the age is drawn around it, so E[true | predicted] = predicted): its mean
    prediction per true age is flatter than the diagonal, its mean true age per prediction is not."""
    rng = np.random.default_rng(1)
    y_pred = rng.uniform(10, 70, 4000)
    y_true = y_pred + rng.normal(0, 10, 4000)  # calibrated: E[true | predicted] = predicted
    drawn = lines(fh.plot_predicted_vs_true(y_true, y_pred))
    given_true = drawn["mean prediction per 5-year bin of true age"]
    given_pred = drawn["mean true age per 5-year bin of prediction"]
    assert np.polyfit(*given_true, 1)[0] < 0.9  # regression to the mean
    assert abs(np.polyfit(*given_pred, 1)[0] - 1) < 0.1  # on the diagonal


def test_bin_edges_such_as_the_age_bands_and_min_count():
    y_true, y_pred = fake_predictions(n=300, seed=2)
    y_pred[:5] = -3.0  # below the first edge: counts in the first band
    ax = fh.plot_predicted_vs_true(y_true, y_pred, bins=fh.AGE_BANDS, min_count=30, limits=(-20, 100))
    drawn = lines(ax)
    for label, by in (("mean prediction per bin of true age", y_true), ("mean true age per bin of prediction", y_pred)):
        np.testing.assert_allclose(np.vstack(drawn[label]), binned(by, y_true, y_pred, fh.AGE_BANDS, 30))
    assert ax.get_xlim() == (-20, 100) and ax.get_ylim() == (-20, 100)
    few = lines(fh.plot_predicted_vs_true(y_true, y_pred, bins=fh.AGE_BANDS, min_count=len(y_true) + 1))
    assert len(few["mean prediction per bin of true age"][0]) == 0  # no bin is big enough: nothing drawn


def test_axes_fit_the_points_in_steps_of_10_years_and_draw_on_a_given_ax():
    y_true, y_pred = np.array([3.0, 40, 87]), np.array([-12.0, 35, 70])
    _, ax = plt.subplots()
    assert fh.plot_predicted_vs_true(y_true, y_pred, ax=ax, min_count=1) is ax
    assert ax.get_xlim() == (-20, 90) and ax.get_ylim() == (-20, 90)


@pytest.mark.parametrize("y_pred, bins, message", [
    (np.zeros(4), 5, "y_pred holds 4 ages but there are 5 faces"),
    (np.zeros(5), 0, "bins=0: expected a bin width in years above 0"),
    (np.zeros(5), [10, 5], "at least two increasing bin edges"),
])
def test_bad_input_gets_a_one_line_message(y_pred, bins, message):
    with pytest.raises(fh.DataError, match=message) as e:
        fh.plot_predicted_vs_true(np.arange(5.0), y_pred, bins=bins)
    assert "\n" not in str(e.value)
