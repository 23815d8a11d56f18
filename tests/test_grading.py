"""The nbgrader course that tools/make_student.py writes: cell metadata, hints, hidden tests, config.

The full round trip (generate, submit, autograde) is `make grading-check`; these tests need no nbgrader.
"""
import re
import runpy
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import make_student as ms  # noqa: E402

SOLUTION = '''def sgd_step(params, grads, lr):
    """One step."""
    ### BEGIN SOLUTION
    ### HINT: subtract lr times the gradient
    for name, p in params.items():
        p -= lr * grads[name]
    ### END SOLUTION'''


def course_notebook():
    return new_notebook(cells=[new_markdown_cell("Fill in the gaps marked `# YOUR CODE HERE`."),
                               new_code_cell(SOLUTION), new_code_cell("fh.check_sgd_step(sgd_step)"),
                               new_markdown_cell("**My answer.** p - lr g", metadata={"tags": [ms.WRITTEN]}),
                               new_code_cell("x = 1")])


def test_solution_check_and_written_cells_get_nbgrader_metadata():
    nb = course_notebook()
    out = ms.nbgrader_notebook(nb, "03_training.ipynb")
    solution, check, written = (out.cells[i].metadata["nbgrader"] for i in (1, 2, 3))
    assert solution == {"schema_version": 3, "task": False, "locked": False, "grade": False, "solution": True,
                        "grade_id": "03-sgd_step"}
    assert check == {"schema_version": 3, "task": False, "locked": True, "grade": True, "solution": False,
                     "points": 1, "grade_id": "03-check_sgd_step"}
    assert written["solution"] and written["grade"] and written["points"] == ms.WRITTEN_POINTS
    assert "nbgrader" not in out.cells[0].metadata and "nbgrader" not in out.cells[4].metadata
    assert "nbgrader" not in nb.cells[1].metadata, "the solution notebook must not change"


def test_hints_sit_above_the_solution_region_and_the_hidden_test_wants_the_students_own_function():
    out = ms.nbgrader_notebook(course_notebook(), "03_training.ipynb")
    lines = out.cells[1].source.split("\n")
    assert lines[2:4] == ["    # Hint: subtract lr times the gradient", "    ### BEGIN SOLUTION"]
    assert ms.HINT not in out.cells[1].source
    assert out.cells[2].source == ('fh.check_sgd_step(sgd_step)\n### BEGIN HIDDEN TESTS\n'
                                   'assert sgd_step.__module__ == "__main__", "sgd_step is not defined in this '
                                   'notebook: the check above grades your own code"\n### END HIDDEN TESTS')


def test_the_hidden_test_fails_for_an_aliased_function_and_passes_for_the_students():
    import faceage_helpers as fh
    hidden = ms.nbgrader_notebook(course_notebook(), "03.ipynb").cells[2].source.split("\n")[2]
    exec(SOLUTION.replace("### HINT", "#"), own := {"__name__": "__main__"})
    exec(hidden, own)
    with pytest.raises(AssertionError, match="sgd_step is not defined in this notebook"):
        exec(hidden, {"sgd_step": fh.sgd_step})


def test_markdown_that_spells_a_marker_is_refused():
    nb = course_notebook()
    nb.cells[0].source = "Code between `### BEGIN SOLUTION` and `### END SOLUTION` is yours."
    with pytest.raises(ms.MarkerError, match="cell 1 .*Markdown spells out a solution marker"):
        ms.nbgrader_notebook(nb, "02.ipynb")


def test_every_exercise_of_the_real_notebooks_is_graded():
    for path in sorted((ROOT / "notebooks").glob("[0-9]*.ipynb")):
        out = ms.nbgrader_notebook(nbformat.read(path, as_version=4), path.name)
        meta = [c.metadata.get("nbgrader", {}) for c in out.cells]
        solutions = [m for m in meta if m.get("solution") and not m.get("grade")]
        checks = [m for m in meta if m.get("grade") and m.get("locked")]
        assert len(solutions) == len(checks), path.name
        assert len({m["grade_id"] for m in meta if m}) == sum(1 for m in meta if m), "grade ids are unique"


@pytest.mark.parametrize("name, student, notebook", [
    ("doejane_12345_67890_02_backprop_and_gradient_checking.ipynb", "doejane",
     "02_backprop_and_gradient_checking.ipynb"),
    ("doejane_late_12345_67890_03_training_with_sgd.ipynb", "doejane", "03_training_with_sgd.ipynb"),
])
def test_the_example_config_collects_canvas_downloads(name, student, notebook):
    class Config:
        def __getattr__(self, attr):
            return self.__dict__.setdefault(attr, type("Section", (), {})())
    config = Config()
    runpy.run_path(str(ROOT / "tools" / "nbgrader_config.py"), init_globals={"get_config": lambda: config})
    assert config.Execute.timeout >= 600
    found = re.match(config.FileNameCollectorPlugin.named_regexp, name)
    assert found and found["student_id"] == student and found["file_id"] == notebook


def test_nbgrader_is_the_teachers_tool_only():
    student = (ROOT / "requirements.txt").read_text()
    teacher = (ROOT / "requirements-teacher.txt").read_text()
    assert "nbgrader" not in student.lower() and "nbgrader==0.9.6" in teacher and "-r requirements.txt" in teacher
    pins = [line for line in teacher.splitlines() if line and not line.startswith(("#", "-r"))]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9.]+", pin) for pin in pins), pins
