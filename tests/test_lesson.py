"""Whose code trains: fh.Lesson (who, require), fh.REFERENCE, and fh.lesson_functions reading the `#@save`
cells of saved notebooks, as a student leaves them: Jupyter's "-Copy1" duplicates, helpers in cells of their
own, IPython magics, mistakes in the cells, broken files. Notebooks are generated in tmp_path under the
canonical names of fh.NOTEBOOKS.
"""
import dataclasses
import os
import traceback

import nbformat
import numpy as np
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

import faceage_helpers as fh
from check_support import RIGHT_LOOP, exec_source

NB02, NB03, NB04 = fh.NOTEBOOKS[1], fh.NOTEBOOKS[2], fh.NOTEBOOKS[3]

RELU = "#@save\ndef relu(z):\n    return np.maximum(z, 0)"
FORWARD = '''#@save
def forward(params, X):
    W1, b1, W2, b2 = params["W1"], params["b1"], params["W2"], params["b2"]
    Z = X @ W1.T + b1
    H = relu(Z)
    return H @ W2[0] + b2[0], (X, Z, H)'''
MSE_LOSS = '''#@save
def mse_loss(y_hat, y):
    diff = y_hat - y
    return float(np.mean(diff ** 2)), 2 * diff / len(y)'''
BACKWARD = '''#@save
def backward(params, cache, dy_hat):
    X, Z, H = cache
    dZ = dy_hat[:, None] * params["W2"] * (Z > 0)
    return {"W1": dZ.T @ X, "b1": dZ.sum(axis=0), "W2": dy_hat[None, :] @ H, "b2": dy_hat.sum(keepdims=True)}'''
SGD_STEP = '''#@save
def sgd_step(params, grads, lr):
    for name, p in params.items():
        p -= lr * grads[name]'''
TRAIN_EPOCH = "#@save" + RIGHT_LOOP


def write(path, *sources, markdown="# a notebook"):
    """A notebook at path: a Markdown cell, then one code cell per source (cell k + 1 holds sources[k - 1])."""
    nb = new_notebook(cells=[new_markdown_cell(markdown)] + [new_code_cell(s) for s in sources])
    nbformat.write(nb, path)
    return path


def course(folder, nb02=(RELU, FORWARD, MSE_LOSS, BACKWARD), nb03=(SGD_STEP, TRAIN_EPOCH)):
    """Notebooks 02 and 03 of a student who has done the exercises."""
    write(folder / NB02, "import numpy as np\nimport faceage_helpers as fh", *nb02)
    write(folder / NB03, *nb03)
    return folder


def fake_faces(n=40, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.random((n, 2304), dtype=np.float32)
    return X, 30 + 100 * (X[:, :200].mean(axis=1) - 0.5) + rng.normal(0, 1, n)


def older(path, seconds=100):
    """Make path look saved `seconds` before now."""
    t = path.stat().st_mtime - seconds
    os.utime(path, (t, t))


# --- fh.Lesson and fh.REFERENCE -------------------------------------------------------------

def test_the_reference_lesson_holds_the_modules_own_functions_and_says_so():
    r = fh.REFERENCE
    assert (r.forward, r.mse_loss, r.backward, r.sgd_step, r.train_epoch, r.numerical_gradient,
            r.backward_to_input, r.init_params) == (fh.forward, fh.mse_loss, fh.backward, fh.sgd_step,
                                                    fh.train_epoch, fh.numerical_gradient, fh.backward_to_input,
                                                    fh.init_params)
    assert r.who == ("forward, mse_loss, backward, sgd_step, train_epoch, numerical_gradient and backward_to_input "
                     "from faceage_helpers.py")


def test_who_names_this_notebook_the_saved_notebook_and_the_module():
    mine = exec_source("def forward(params, X):\n    return 1, 2")["forward"]
    saved = exec_source("def backward(params, cache, dy_hat):\n    return {}", module=NB02)["backward"]
    lesson = fh.Lesson(mine, fh.mse_loss, saved)
    assert lesson.who == f"forward from this notebook; mse_loss from faceage_helpers.py; backward from {NB02}"
    released = exec_source("def sgd_step(p, g, lr):\n    pass", module=fh.REFERENCE_MODULE)["sgd_step"]
    assert "sgd_step from the teacher's faceage_reference.py" in dataclasses.replace(lesson, sgd_step=released).who


def test_a_lesson_is_frozen_and_takes_functions_only():
    with pytest.raises(dataclasses.FrozenInstanceError):
        fh.REFERENCE.forward = print
    with pytest.raises(TypeError, match=r"Lesson\(sgd_step=...\) must be a function, not a float"):
        fh.Lesson(fh.forward, fh.mse_loss, fh.backward, sgd_step=0.1)
    with pytest.raises(TypeError, match=r"Lesson\(forward=...\) must be a function, not a NoneType"):
        fh.Lesson(None, fh.mse_loss, fh.backward)


def test_one_function_changes_with_dataclasses_replace():
    def forward(params, X):
        return fh.forward(params, X)
    lesson = dataclasses.replace(fh.REFERENCE, forward=forward)
    assert lesson.forward is forward and lesson.backward is fh.backward and fh.REFERENCE.forward is fh.forward


def test_require_names_what_is_missing_and_where_it_is_written():
    lesson = fh.Lesson(fh.forward, fh.mse_loss, fh.backward)
    with pytest.raises(fh.LessonError) as info:
        lesson.require("sgd_step", "train_epoch", purpose="training")
    assert str(info.value) == ("training needs sgd_step and train_epoch, and this lesson has none (sgd_step: notebook "
                               "03 §3; train_epoch: notebook 03 §4). Build the lesson with them: "
                               "dataclasses.replace(lesson, sgd_step=sgd_step).")
    lesson.require("forward", purpose="anything")  # what it has: no error
    X, y = fake_faces(10)
    with pytest.raises(fh.LessonError, match="training needs sgd_step and train_epoch"):
        fh.train(X, y, lesson=lesson, n_hidden=2, epochs=1, verbose=False)
    model = fh.train(X, y, n_hidden=2, epochs=1, verbose=False)
    with pytest.raises(fh.LessonError, match="input_gradient needs backward_to_input, .*notebook 06 §2"):
        fh.input_gradient(model, X, lesson=lesson)


# --- lesson_functions: the #@save cells, whole and in order ---------------------------------

def test_lesson_functions_builds_a_lesson_that_trains_and_says_whose_code_it_is(tmp_path, capsys):
    course(tmp_path)
    lesson = fh.lesson_functions(before="04", folder=tmp_path)
    assert capsys.readouterr().out == (f"Your code from the saved notebooks: forward, mse_loss and backward from "
                                       f"{NB02}; sgd_step and train_epoch from {NB03}.\n")
    X, y = fake_faces(60)
    model = fh.train(X, y, lesson=lesson, n_hidden=4, batch_size=16, epochs=3, mirror=False, verbose=False)
    reference = fh.train(X, y, n_hidden=4, batch_size=16, epochs=3, mirror=False, verbose=False)
    for k in model.params:  # the student's code is the reference's: the same run
        np.testing.assert_allclose(model.params[k], reference.params[k], rtol=1e-5, atol=1e-7)
    assert model.lesson is lesson and lesson.init_params is fh.init_params
    assert fh.lesson_functions(before="04", folder=tmp_path, verbose=False).who == lesson.who
    assert capsys.readouterr().out == ""


def test_a_helper_in_its_own_save_cell_is_found_and_used_by_forward(tmp_path):
    course(tmp_path)
    lesson = fh.lesson_functions(before="03", folder=tmp_path, verbose=False)
    params = fh.init_params(3, n_in=4, seed=0, dtype=np.float64)
    params["b1"][:] = [-5.0, 0.0, 5.0]
    y_hat, (_, Z, H) = lesson.forward(params, np.ones((2, 4)))
    np.testing.assert_array_equal(H, np.maximum(Z, 0))  # relu, defined two cells above forward, ran
    assert lesson.forward.__module__ == NB02 and lesson.sgd_step is None


def test_a_helper_saved_after_the_function_that_calls_it_is_found_too(tmp_path):
    course(tmp_path, nb02=(FORWARD, MSE_LOSS, BACKWARD, RELU))
    lesson = fh.lesson_functions(before="03", folder=tmp_path, verbose=False)
    assert lesson.forward(fh.init_params(2, n_in=3, dtype=np.float64), np.ones((1, 3)))[0].shape == (1,)


def test_a_helper_in_a_cell_without_the_mark_is_named_where_it_is_missing(tmp_path):
    course(tmp_path, nb02=(RELU.replace("#@save\n", ""), FORWARD, MSE_LOSS, BACKWARD))
    lesson = fh.lesson_functions(before="04", folder=tmp_path, verbose=False)
    X, y = fake_faces(10)
    with pytest.raises(NameError) as info:
        fh.train(X, y, lesson=lesson, n_hidden=2, epochs=1, verbose=False)
    text = "".join(traceback.format_exception(info.value))
    assert f'File "{NB02}, cell 4", line 5, in forward' in text and "H = relu(Z)" in text
    assert "name 'relu' is not defined" in text


def test_the_saved_numerical_gradient_checks_the_saved_backward(tmp_path):
    import inspect
    saved = "#@save\n" + inspect.getsource(fh.numerical_gradient)
    course(tmp_path, nb02=(RELU, FORWARD, MSE_LOSS, BACKWARD, saved))
    lesson = fh.lesson_functions(before="03", folder=tmp_path, verbose=False)
    assert lesson.numerical_gradient.__module__ == NB02
    params = fh.init_params(3, n_in=5, seed=0, dtype=np.float64)
    params["b1"] += 0.1
    rng = np.random.default_rng(0)
    results = fh.gradient_check(params, rng.standard_normal((4, 5)), rng.standard_normal(4), lesson=lesson)
    assert fh.report_gradient_check(results)


def test_magics_and_shell_lines_in_a_save_cell_work(tmp_path):
    course(tmp_path, nb02=("%%time\n" + RELU, FORWARD.replace("def forward", "%timeit 1 + 1\n!ls\ndef forward", 1),
                           MSE_LOSS, "%matplotlib inline\n" + BACKWARD))
    lesson = fh.lesson_functions(before="03", folder=tmp_path, verbose=False)
    params, X = fh.init_params(2, n_in=3, dtype=np.float64), np.ones((2, 3))
    np.testing.assert_allclose(lesson.forward(params, X)[0], fh.forward(params, X)[0])
    assert set(lesson.backward(params, lesson.forward(params, X)[1], np.ones(2))) == {"W1", "b1", "W2", "b2"}


def test_cells_without_the_mark_are_not_run(tmp_path):
    course(tmp_path, nb02=(RELU, FORWARD, MSE_LOSS, BACKWARD, "raise RuntimeError('this cell must not run')",
                           "# a comment first\n#@save\nraise RuntimeError('the mark must be the first line')",
                           "def forward(params, X):\n    return 'not saved'"))
    lesson = fh.lesson_functions(before="03", folder=tmp_path, verbose=False)
    assert lesson.forward(fh.init_params(2, n_in=3, dtype=np.float64), np.ones((1, 3)))[0] != "not saved"


def test_the_kernels_own_function_replaces_a_saved_one_with_one_plain_call(tmp_path):
    course(tmp_path)
    mine = exec_source(SGD_STEP.replace("#@save\n", ""))["sgd_step"]
    lesson = dataclasses.replace(fh.lesson_functions(before="04", folder=tmp_path, verbose=False), sgd_step=mine)
    assert lesson.who == (f"forward, mse_loss and backward from {NB02}; sgd_step from this notebook; "
                          f"train_epoch from {NB03}")


def test_before_excludes_later_notebooks(tmp_path):
    course(tmp_path, nb03=(SGD_STEP, TRAIN_EPOCH, "#@save\nraise RuntimeError('notebook 03 must not be read')"))
    lesson = fh.lesson_functions(before="03", folder=tmp_path, verbose=False)
    assert lesson.sgd_step is None and lesson.train_epoch is None
    with pytest.raises(fh.LessonError, match=rf"{NB03}, cell 4, line 2: RuntimeError"):
        fh.lesson_functions(before="04", folder=tmp_path, verbose=False)


def test_before_given_as_a_number_reads_the_same_notebooks(tmp_path):
    """before=3 is how a student may well write "03": it must not read notebook 03 (or later) silently."""
    course(tmp_path, nb03=(SGD_STEP, "#@save\nraise RuntimeError('notebook 03 must not be read')"))
    try:
        lesson = fh.lesson_functions(before=3, folder=tmp_path, verbose=False)
    except fh.LessonError as e:
        pytest.fail(f"before=3 read notebook 03 (and would read every later one): {e}")
    except (TypeError, ValueError) as e:  # a clear refusal is fine too
        assert "before" in str(e), str(e)
    else:
        assert lesson.sgd_step is None


def test_a_later_notebook_redefines_an_earlier_function(tmp_path):
    course(tmp_path, nb03=(SGD_STEP, TRAIN_EPOCH, "#@save\ndef forward(params, X):\n    return 'from 03', None"))
    lesson = fh.lesson_functions(before="04", folder=tmp_path, verbose=False)
    assert lesson.forward(None, None)[0] == "from 03" and lesson.forward.__module__ == NB03


def test_the_modules_own_functions_are_not_taken_as_the_students(tmp_path):
    course(tmp_path, nb02=("#@save\nforward = fh.forward\nfrom faceage_helpers import mse_loss", BACKWARD))
    with pytest.raises(fh.LessonError) as info:
        fh.lesson_functions(before="03", folder=tmp_path, verbose=False)
    message = str(info.value)
    assert message.startswith(f"no forward and mse_loss in a `#@save` cell of {tmp_path / NB02}: write forward there")
    course(tmp_path, nb02=(RELU, FORWARD, MSE_LOSS, BACKWARD), nb03=("#@save\nsgd_step = fh.sgd_step", TRAIN_EPOCH))
    assert fh.lesson_functions(before="04", folder=tmp_path, verbose=False).sgd_step is None


def test_the_current_folder_is_read_by_default(tmp_path, monkeypatch):
    course(tmp_path, nb03=("#@save\ndef sgd_step(params, grads, lr):\n    return 'from the current folder'",))
    monkeypatch.chdir(tmp_path)
    assert fh.lesson_functions(before="04", verbose=False).sgd_step(None, None, 0) == "from the current folder"


def test_no_notebooks_at_all_says_where_to_write(tmp_path):
    with pytest.raises(fh.LessonError, match=rf"no forward, mse_loss and backward in a `#@save` cell of "
                                             rf".*{NB02}: write forward there in a cell whose first line is #@save"):
        fh.lesson_functions(before="03", folder=tmp_path, verbose=False)


# --- Jupyter's "Duplicate": a -Copy1 notebook never trains silently ----------------------------

def test_a_newer_copy_beside_the_real_notebook_is_refused_naming_both(tmp_path):
    course(tmp_path)
    copy = write(tmp_path / NB02.replace(".ipynb", "-Copy1.ipynb"), RELU, FORWARD, MSE_LOSS, BACKWARD)
    older(tmp_path / NB02)
    with pytest.raises(fh.LessonError) as info:
        fh.lesson_functions(before="03", folder=tmp_path, verbose=False)
    message = str(info.value)
    assert NB02 in message and copy.name in message and "which one holds your work?" in message
    assert "\n" not in message


def test_an_older_copy_beside_the_real_notebook_is_ignored_and_the_real_one_read(tmp_path):
    course(tmp_path)
    copy = write(tmp_path / NB02.replace(".ipynb", "-Copy1.ipynb"),
                 "#@save\ndef forward(params, X):\n    return 'the stale copy', None", MSE_LOSS, BACKWARD)
    older(copy)
    lesson = fh.lesson_functions(before="03", folder=tmp_path, verbose=False)
    assert lesson.forward.__module__ == NB02
    assert lesson.forward(fh.init_params(2, n_in=3, dtype=np.float64), np.ones((1, 3)))[0] != "the stale copy"


def test_a_copy_alone_is_refused_naming_it(tmp_path):
    copy = write(tmp_path / NB02.replace(".ipynb", "-Copy1.ipynb"), RELU, FORWARD, MSE_LOSS, BACKWARD)
    with pytest.raises(fh.LessonError) as info:
        fh.lesson_functions(before="03", folder=tmp_path, verbose=False)
    assert copy.name in str(info.value) and NB02 in str(info.value)


# --- a failing student function: its traceback shows the cell, not the notebook's JSON -----------

def test_a_failing_students_function_has_a_short_traceback_naming_notebook_cell_and_line(tmp_path):
    broken = BACKWARD.replace('    X, Z, H = cache\n', '    X, Z, H = cache\n    dW2 = dy_hat @ H.T  # the mistake\n')
    course(tmp_path, nb02=(RELU, FORWARD, MSE_LOSS, broken))
    lesson = fh.lesson_functions(before="04", folder=tmp_path, verbose=False)
    X, y = fake_faces(30)
    with pytest.raises(ValueError) as info:
        fh.train(X, y, lesson=lesson, n_hidden=3, batch_size=10, epochs=1, mirror=False, verbose=False)
    text = "".join(traceback.format_exception(info.value))
    cell = 2 + 4  # a Markdown cell, the imports, relu, forward, mse_loss: backward is cell 6
    assert f'File "{NB02}, cell {cell}", line 4, in backward' in text, text
    assert "dW2 = dy_hat @ H.T  # the mistake" in text
    assert f'File "{NB03}, cell' in text  # the student's train_epoch, which called it
    assert '"cell_type"' not in text and '"source"' not in text and "nbformat" not in text
    assert len(text.splitlines()) < 40, text


@pytest.mark.parametrize("source, line, error", [
    ("#@save\ndef forward(params, X)\n    return 1", 2, "SyntaxError"),
    ("#@save\nimport numpy as np\nfoo = undefined_name + 1", 3, "NameError: name 'undefined_name' is not defined"),
    ("#@save\n\ndef forward(params, X):\n    return X\n\nforward(None, 1 / 0)", 6, "ZeroDivisionError"),
])
def test_an_error_while_a_save_cell_runs_names_notebook_cell_and_line(tmp_path, source, line, error):
    course(tmp_path, nb02=(RELU, source, MSE_LOSS, BACKWARD))
    with pytest.raises(fh.LessonError) as info:
        fh.lesson_functions(before="03", folder=tmp_path, verbose=False)
    message = str(info.value)
    assert message.startswith(f"{NB02}, cell 4, line {line}: {error}"), message
    assert "Fix that cell, save the notebook" in message and "\n" not in message


# --- broken files: one clear message naming the file ----------------------------------------------

@pytest.mark.parametrize("content, problem", [
    (b'{"cells": [', "is not valid notebook JSON"),
    ('{"cells": [], "note": "caf\u00e9"}'.encode("latin-1"), "is not UTF-8 text"),
    (b'{"nbformat": 3, "nbformat_minor": 0, "worksheets": [{"cells": []}], "metadata": {}}',
     "is not an nbformat 4 notebook (it is nbformat 3)"),
    (b'[1, 2, 3]', "is not an nbformat 4 notebook"),
    (b'', "is not valid notebook JSON"),
])
def test_a_broken_notebook_file_gets_a_message_naming_it(tmp_path, content, problem):
    course(tmp_path)
    (tmp_path / NB03).write_bytes(content)
    with pytest.raises(fh.LessonError) as info:
        fh.lesson_functions(before="04", folder=tmp_path, verbose=False)
    message = str(info.value)
    assert message.startswith(f"{NB03} {problem}"), message
    assert "save it again" in message and "\n" not in message


def test_a_notebook_with_odd_cells_still_reads_its_save_cells(tmp_path):
    """Cells nbformat would not write (a list source, a raw cell, a cell that is not an object) are read or
    skipped, not a crash."""
    course(tmp_path)
    nb = nbformat.read(tmp_path / NB03, as_version=4)
    cells = [dict(c) for c in nb.cells]
    cells[1]["source"] = cells[1]["source"].splitlines(True)  # as Jupyter writes it on disk
    raw = {"cell_type": "raw", "metadata": {}, "source": "#@save\nraise RuntimeError('raw')"}
    import json
    (tmp_path / NB03).write_text(json.dumps({**nb, "cells": [raw, 7, *cells]}), encoding="utf-8")
    lesson = fh.lesson_functions(before="04", folder=tmp_path, verbose=False)
    assert lesson.sgd_step.__module__ == NB03 and lesson.train_epoch.__module__ == NB03
