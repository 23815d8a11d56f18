"""Metrics, baselines, plots, saved weight images and the command line, on tiny generated data."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import faceage_helpers as fh
from fakes import make_fake_zip

ROOT = Path(__file__).resolve().parents[1]


def test_regression_metrics_by_hand():
    m = fh.regression_metrics([10, 20, 30], [11, 17, 30])  # errors +1, -3, 0
    assert m["mse"] == pytest.approx(10 / 3)
    assert m["rmse"] == pytest.approx(np.sqrt(10 / 3))
    assert m["mae"] == pytest.approx(4 / 3)


def test_ridge_recovers_a_linear_function_and_beats_the_mean():
    rng = np.random.default_rng(0)
    X = rng.random((400, 30))
    w = rng.standard_normal(30)
    y = 7 + X @ w
    predict = fh.fit_ridge(X, y, lam=1e-6)
    np.testing.assert_allclose(predict(X), y, atol=1e-4)
    shrunk = fh.fit_ridge(X, y, lam=1e4)(X)
    assert 0 < np.std(shrunk) < 0.5 * np.std(y)  # a large lambda shrinks towards the mean


def test_baselines_on_fake_data(tmp_path):
    data = fh.load_data(make_fake_zip(tmp_path / "d.zip", n_train=200, n_test=50))
    rows = fh.baselines(data)
    assert set(rows) == {"mean", "ridge (lambda=100)"}
    assert rows["mean"]["mae"] == pytest.approx(np.mean(np.abs(data.yte - data.ytr.mean())))
    table = fh.format_metrics_table(rows).splitlines()
    assert table[0].split() == ["model", "RMSE", "(y)", "MAE", "(y)"]
    assert table[2].startswith("ridge (lambda=100)")


def test_plots_have_titles_and_labels():
    import matplotlib.pyplot as plt
    rng = np.random.default_rng(0)
    fig = fh.show_faces(rng.random((5, 2304)), [1, 2, 3, 4, 5], ncols=3)
    assert fig._suptitle.get_text() and fig.axes[0].get_title() == "1 y"
    ax = fh.plot_learning_curves({"epoch": [1, 2], "train_loss": [1.0, 0.5], "val_loss": [1.1, 0.7]})
    assert ax.get_xlabel() == "epoch" and "MSE" in ax.get_ylabel() and ax.get_title()
    fig = fh.plot_weight_grid(rng.standard_normal((40, 2304)), n=30)
    images = [a.images[0] for a in fig.axes if a.images]
    assert len(images) == 30
    lo, hi = images[0].get_clim()
    assert lo == -hi and images[0].get_cmap().name == "RdBu_r"  # diverging, centred on zero
    plt.close("all")


def test_save_weight_images_writes_30_pngs_and_a_grid(tmp_path):
    from PIL import Image
    W1 = np.random.default_rng(0).standard_normal((64, 2304))
    paths = fh.save_weight_images(W1, tmp_path / "weights")
    names = sorted(p.name for p in (tmp_path / "weights").iterdir())
    assert names == sorted([f"weight_image_{j}.png" for j in range(30)] + ["weight_grid.png"])
    assert len(paths) == 31
    img = np.asarray(Image.open(tmp_path / "weights" / "weight_image_7.png"))
    assert img.shape[:2] == (192, 192)


def run_cli(*args, env_data=None, cwd=None):
    env = {k: v for k, v in os.environ.items() if k != "FACEAGE_DATA"}
    env["MPLBACKEND"] = "Agg"
    if env_data:
        env["FACEAGE_DATA"] = str(env_data)
    return subprocess.run([sys.executable, str(ROOT / "faceage_helpers.py"), *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=300)


def test_command_line_trains_evaluates_and_writes_weight_images(tmp_path):
    data = make_fake_zip(tmp_path / "tiny.zip", n_train=120, n_test=30)
    run = run_cli("--epochs", "2", "--hidden", "32", "--out", str(tmp_path / "out"), env_data=data, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "train:    120 faces" in out and "epoch   2/2" in out
    for row in ("network (train)", "network (validation)", "network (test)", "baseline: mean (test)",
                "baseline: ridge (lambda=100) (test)"):
        assert row in out
    assert len(list((tmp_path / "out" / "weight_images").glob("weight_image_*.png"))) == 30
    assert (tmp_path / "out" / "weight_images" / "weight_grid.png").is_file()
    model = tmp_path / "out" / "model.npz"
    ev = run_cli("evaluate", "--model", str(model), "--data", str(data), cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    assert "RMSE" in ev.stdout and "MAE" in ev.stdout and "tiny.zip" in ev.stdout
    test_line = next(l for l in out.splitlines() if l.startswith("network (test)"))
    assert test_line.split()[-1] in ev.stdout  # the same test MAE as at the end of training


def test_command_line_without_data_explains_instead_of_a_traceback(tmp_path):
    run = run_cli("--data", str(tmp_path / "missing.zip"), cwd=tmp_path)
    assert run.returncode == 1
    assert run.stderr.startswith("error: No data.zip found") and "Traceback" not in run.stderr


def test_command_line_help_and_build_data_in_its_tool(tmp_path):
    help_text = run_cli("--help").stdout
    for option in ("--data", "--hidden", "--lr", "--lr-decay", "--batch-size", "--epochs", "--seed",
                   "--val-fraction", "--dtype", "--out", "--no-mirror", "evaluate", "tools/build_data.py"):
        assert option in help_text
    assert "{train,evaluate}" in help_text  # build-data is a teacher's tool now
    run = run_cli("build-data", str(tmp_path / "nothing"), "--out", str(tmp_path / "d.zip"))
    assert run.returncode == 2 and "python tools/build_data.py SOURCE --out data.zip" in run.stderr
    tool = subprocess.run([sys.executable, str(ROOT / "tools" / "build_data.py"), "--help"], capture_output=True,
                          text=True, timeout=60)
    for option in ("SOURCE", "source", "--out", "--test-fraction", "--seed"):
        assert option in tool.stdout or option in tool.stdout.upper()
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "build_data.py"), str(tmp_path / "nothing"),
                          "--out", str(tmp_path / "d.zip")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "does not exist" in run.stderr and not (tmp_path / "d.zip").exists()


def test_command_line_trains_with_the_notebooks_code_and_the_classroom_edition_says_how(tmp_path):
    """--code notebooks trains with the #@save cells of the saved notebooks 02 and 03; the classroom module,
    whose exercise functions have no bodies, says so in one line instead of a traceback."""
    import nbformat

    from fakes import tool
    ms = tool("make_student")
    data = make_fake_zip(tmp_path / "tiny.zip", n_train=80, n_test=20)
    run = run_cli("--code", "notebooks", "--epochs", "1", "--hidden", "8", "--out", str(tmp_path / "a"),
                  env_data=data, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert ("code: forward, mse_loss, backward and numerical_gradient from 02_backprop_and_gradient_checking.ipynb; "
            "sgd_step and train_epoch from 03_training_with_sgd.ipynb") in run.stdout

    edition = tmp_path / "classroom"
    ms.make_student(ROOT / "notebooks", edition)
    classroom = [sys.executable, str(edition / "faceage_helpers.py"), "--epochs", "1", "--hidden", "8", "--data",
                 str(data)]
    refused = subprocess.run([*classroom, "--out", str(tmp_path / "b")], capture_output=True, text=True,
                             cwd=tmp_path, timeout=300, env=dict(os.environ, MPLBACKEND="Agg"))
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith("error: this is the classroom edition") and "--code notebooks" in refused.stderr
    assert not (tmp_path / "b").exists()
    for name in ("02_backprop_and_gradient_checking.ipynb", "03_training_with_sgd.ipynb"):  # a student who did 02, 03
        filled = ms.filled_notebook(nbformat.read(edition / "notebooks" / name, as_version=4),
                                    nbformat.read(ROOT / "notebooks" / name, as_version=4))
        nbformat.write(filled, edition / "notebooks" / name)
    mine = subprocess.run([*classroom, "--code", "notebooks", "--out", str(tmp_path / "c")], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300, env=dict(os.environ, MPLBACKEND="Agg"))
    assert mine.returncode == 0, mine.stderr
    assert (tmp_path / "c" / "model.npz").is_file() and "from 03_training_with_sgd.ipynb" in mine.stdout
