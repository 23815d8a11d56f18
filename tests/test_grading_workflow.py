"""What grades (issue 23): the hidden tests of the nbgrader source, grading mode, the vetting of a lesson before it
trains, and the collect patterns. nbgrader itself is the teacher's tool, not in .venv: tools/grading_check.py
(`make grading-check`, run by CI after `make test`) runs these with nbgrader's own code; here the hidden tests
run as a kernel would run them, in a __main__ namespace.
"""
import ast
import re
import sys
import types
from pathlib import Path

import nbformat
import numpy as np
import pytest
from test_check_messages import RIGHT, WRONG, mine

import faceage_helpers as fh

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import make_student as ms  # noqa: E402


def graded(name, fn, namespace=None, **names):
    """Run the hidden test of fh.check_<name>(<name>) on fn, in a notebook's namespace; True when it passes."""
    namespace = namespace if namespace is not None else {"__name__": "__main__", "np": np, "fh": fh}
    namespace.update({name: fn, **names})
    try:
        exec(compile(ms.hidden_test(name, name), "hidden", "exec"), namespace)
    except Exception:
        return False
    return True


def test_the_hidden_test_lives_only_in_the_teachers_source():
    hidden = ms.hidden_test("backward", "backward")
    assert hidden.startswith("### BEGIN HIDDEN TESTS") and hidden.endswith("### END HIDDEN TESTS")
    assert "fh." not in hidden and "faceage_helpers" not in hidden.replace('"faceage_reference"', "")
    nb = nbformat.read(ROOT / "notebooks" / "02_backprop_and_gradient_checking.ipynb", as_version=4)
    source = ms.nbgrader_notebook(nb, "02_backprop_and_gradient_checking.ipynb")
    checks = [c for c in source.cells if c.cell_type == "code" and ms.checked_function(c.source)]
    assert checks and all(ms.hidden_test(*ms.checked_function(c.source)) in c.source for c in checks)
    student = ms.exercise_notebook(nb, "02")
    assert not any("HIDDEN" in c.source or "_hidden_test" in c.source for c in student.cells)


@pytest.mark.parametrize("name", sorted(RIGHT))
def test_the_right_answer_earns_the_points(name):
    assert graded(name, RIGHT[name])


@pytest.mark.parametrize("exercise, mistake", sorted(WRONG))
def test_every_known_mistake_earns_nothing(exercise, mistake):
    assert not graded(exercise, WRONG[exercise, mistake])


def stored(name):
    """A function that returns what the visible check compares with, computed nowhere."""
    return mine({
        "forward": lambda params, X: (fh._answer("forward.y_hat"),
                                      (X, fh._answer("forward.Z"), fh._answer("forward.H"))),
        "mse_loss": lambda y_hat, y: (float(fh._answer(f"mse_loss{len(y)}.loss")),
                                      fh._answer(f"mse_loss{len(y)}.dy_hat")),
        "backward": lambda params, cache, dy: {k: fh._answer(f"backward.d{k}") for k in ("W1", "b1", "W2", "b2")},
        "numerical_gradient": lambda f, x, indices, h=1e-5: fh._answer("numerical_gradient"),
        "backward_to_input": lambda params, cache, dy: fh._answer("backward_to_input.dX"),
    }[name])


@pytest.mark.parametrize("name", ["forward", "mse_loss", "backward", "numerical_gradient", "backward_to_input"])
def test_stored_answers_pass_the_visible_check_and_earn_nothing(name, capsys):
    getattr(fh, f"check_{name}")(stored(name))
    assert capsys.readouterr().out == f"{name}: all checks passed.\n"  # the visible check is fooled ...
    assert not graded(name, stored(name))  # ... the grade is not


def test_a_disabled_check_changes_no_grade():
    fh_disabled = types.SimpleNamespace(check_backward=lambda f: print("backward: all checks passed."))
    assert not graded("backward", WRONG["backward", "no_mask"], fh=fh_disabled)
    assert graded("backward", RIGHT["backward"], fh=fh_disabled)


def test_the_modules_own_the_reference_and_a_wrapper_around_it_earn_nothing(monkeypatch):
    assert not graded("backward", fh.backward)
    reference = types.FunctionType(fh.backward.__code__, fh.backward.__globals__, "backward")
    reference.__module__ = fh.REFERENCE_MODULE
    assert not graded("backward", reference)
    released = types.ModuleType(fh.REFERENCE_MODULE)
    released.backward = reference
    monkeypatch.setitem(sys.modules, fh.REFERENCE_MODULE, released)
    assert not graded("backward", mine(lambda params, cache, dy: reference(params, cache, dy)))
    namespace = {"__name__": "__main__"}
    exec("import faceage_reference\n\ndef backward(params, cache, dy_hat):\n"
         "    return faceage_reference.backward(params, cache, dy_hat)\n", namespace)
    assert not graded("backward", namespace["backward"])
    assert graded("backward", RIGHT["backward"])  # the reference beside it costs an own function nothing


def test_each_exercise_is_graded_alone():
    """A wrong mse_loss or backward saved beside a right train_epoch costs the loop nothing: its hidden test
    trains with known-good functions of its own; deep_backward's runs with known-good layers."""
    wrong = {"mse_loss": WRONG["mse_loss", "summed"], "backward": WRONG["backward", "no_mask"],
             "sgd_step": WRONG["sgd_step", "uphill"]}
    assert graded("train_epoch", RIGHT["train_epoch"], **wrong)
    notebook = notebook_namespace("07_any_depth.ipynb")  # deep_backward looks its layers up here, as in a kernel
    broken = {"affine_backward": mine(lambda dY, cache: (0 * dY, 0, 0)), "relu_backward": mine(lambda dH, Z: dH)}
    assert graded("deep_backward", notebook["deep_backward"], notebook, **broken)
    assert notebook["affine_backward"] is broken["affine_backward"]  # the student's (broken) layers are back


def notebook_namespace(name):
    """The names a solution notebook's #@save and given cells define (run in order, as the kernel would)."""
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    namespace = {"__name__": "__main__", "np": np, "fh": fh}
    for cell in nb.cells:
        if cell.cell_type == "code" and (cell.source.startswith("#@save") or "class Value" in cell.source
                                         or re.match(r"def (matmul|add)\(", cell.source)):
            source = "\n".join(line for line in cell.source.split("\n") if not line.strip().startswith("###"))
            exec(compile(source, name, "exec"), namespace)
    return namespace


@pytest.mark.parametrize("name", ["affine_backward", "relu_backward", "deep_backward", "matmul", "add"])
def test_notebook_07s_solutions_earn_the_points_and_a_stub_does_not(name):
    namespace = notebook_namespace("07_any_depth.ipynb")
    assert graded(name, namespace[name], namespace)
    assert not graded(name, mine(lambda *args: None), namespace)


def test_a_check_without_a_hidden_test_stops_the_course_build():
    with pytest.raises(ms.MarkerError, match="no hidden test grades fh.check_something"):
        ms.hidden_test("something", "something")


# --- grading mode ------------------------------------------------------------------------------------

def test_grading_mode_trains_a_tiny_budget_and_says_so(monkeypatch, capsys):
    X, y = np.zeros((5000, 3)), np.arange(5000.0)
    assert fh.grading_budget(30, X, y) == (30, X, y)
    assert capsys.readouterr().out == ""
    monkeypatch.setenv(fh.GRADING_ENV, "1")
    epochs, X_small, y_small = fh.grading_budget(30, X, y)
    assert (epochs, len(X_small), len(y_small)) == (1, 1000, 1000)
    assert capsys.readouterr().out.startswith("grading mode (FACEAGE_GRADING=1): training 1 epoch on 1,000 of the "
                                              "5,000 faces")


def test_grading_mode_loads_every_kth_face_and_says_so(monkeypatch, capsys):
    rng = np.random.default_rng(0)
    data = fh.FaceData(rng.random((9000, 4)), rng.uniform(1, 90, 9000), rng.random((1200, 4)), rng.uniform(1, 90, 1200),
                       {"age": np.arange(9000)}, None)
    assert fh.grading_faces(data) is data
    monkeypatch.setenv(fh.GRADING_ENV, "1")
    small = fh.grading_faces(data)
    assert (len(small.Xtr), len(small.ytr), len(small.Xte), len(small.meta_tr["age"])) == (2000, 2000, 500, 2000)
    assert np.array_equal(small.Xtr[1], data.Xtr[4]) and np.array_equal(small.meta_tr["age"][:3], [0, 4, 8])
    assert capsys.readouterr().out.startswith("grading mode (FACEAGE_GRADING=1): 2,000 of the 9,000 training faces")


def test_the_course_config_sets_grading_mode_and_a_timeout_for_the_slowest_cell():
    config = (ROOT / "tools" / "nbgrader_config.py").read_text(encoding="utf-8")
    assert 'os.environ["FACEAGE_GRADING"] = "1"' in config
    timeout = int(re.search(r"^c\.Execute\.timeout = (\d+)$", config, re.MULTILINE).group(1))
    assert 30 <= timeout <= 300
    assert "c.Autograde.exclude_overwriting = {}" in config and "c.CourseDirectory.include" in config


# --- vetting a lesson before it trains -----------------------------------------------------------------

def lesson(**changes):
    functions = {name: RIGHT[name] for name in fh.VETTED}
    functions.update(changes)
    return fh.Lesson(**functions)


def test_a_missing_relu_mask_fails_backward_and_only_backward(capsys):
    failed = fh._failed_checks(lesson(backward=WRONG["backward", "no_mask"]))
    assert list(failed) == ["backward"] and "the ReLU mask is missing" in failed["backward"]
    out = capsys.readouterr().out
    assert out.startswith("Before training: your backward (this notebook) fails its check: dW1 is wrong")
    assert out.count("\n") == 1
    assert fh._failed_checks(lesson()) == {} and capsys.readouterr().out == ""
    assert fh._failed_checks(fh.REFERENCE) == {}  # the module's own functions are not the student's to vet


def test_a_diverging_run_blames_the_function_that_failed_its_check():
    assert fh._divergence_cause({}) is None
    cause = fh._divergence_cause({"mse_loss": "...", "sgd_step": "..."})
    assert cause.startswith("Your mse_loss failed its check") and "the learning rate is not the cause" in cause


# --- the collect patterns (nbgrader's re.match on each extracted file's absolute path) --------------------

def patterns():
    tree = ast.parse((ROOT / "tools" / "nbgrader_config.py").read_text(encoding="utf-8"))
    return {node.targets[0].id.lower(): ast.literal_eval(node.value) for node in tree.body
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") in ("CANVAS", "MOODLE")}


BASE = "/srv/t_a/course_2026_x/downloaded/faceage/extracted/"


@pytest.mark.parametrize("lms, name, student, notebook", [
    ("canvas", "doejane_12345_67890_02_backprop_and_gradient_checking.ipynb", "12345",
     "02_backprop_and_gradient_checking"),
    ("canvas", "doejane_late_12345_67891_03_training_with_sgd.ipynb", "12345", "03_training_with_sgd"),
    ("canvas", "doejane_12345_67890_05_make_it_better-1.ipynb", "12345", "05_make_it_better"),
    ("moodle", "Jane Doe_1234567_assignsubmission_file_02_backprop_and_gradient_checking.ipynb", "1234567",
     "02_backprop_and_gradient_checking"),
    ("moodle", "Jane_Doe_1234567_assignsubmission_file/06_which_pixels_matter-2.ipynb", "1234567",
     "06_which_pixels_matter"),
])
def test_the_collect_patterns_read_the_file_name_of_an_absolute_path(lms, name, student, notebook):
    found = re.match(patterns()[lms], BASE + name)
    assert found and (found["student_id"], found["file_id"]) == (student, notebook)
