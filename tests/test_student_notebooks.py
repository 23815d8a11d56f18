"""The classroom edition: tools/make_student.py turns solution blocks into stubs and nothing else.

First on a small fixture notebook (exact stubs, hints, cleared outputs, untouched cells, malformed
markers refused), then on the real notebooks: no solution line survives, every stub fails its
check cell with its own hint, and the exercise notebook with the solutions pasted back runs top
to bottom (one kernel per notebook: these runs dominate the time of this file).
"""
import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import make_student as ms  # noqa: E402

EXERCISE = '''def clipped_sum(values, limit):
    """Sum of the values, each clipped to [-limit, limit]."""
    total = 0.0
    for v in values:
        ### BEGIN SOLUTION
        ### HINT: clip v with "min" and "max", then add it to total
        v = max(-limit, min(limit, v))
        total += v
        ### END SOLUTION
    ### BEGIN SOLUTION
    ### HINT: return the total \\ nothing else
    return total
    ### END SOLUTION'''

EXERCISE_STUBBED = '''def clipped_sum(values, limit):
    """Sum of the values, each clipped to [-limit, limit]."""
    total = 0.0
    for v in values:
        # YOUR CODE HERE
        raise NotImplementedError("clip v with \\"min\\" and \\"max\\", then add it to total")
    # YOUR CODE HERE
    raise NotImplementedError("return the total \\\\ nothing else")'''


def fixture_notebook(exercise=EXERCISE):
    """Markdown, a plain code cell, an exercise cell and its check, all with outputs and metadata."""
    nb = new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                                "faceage": {"note": "kept"}})
    nb.cells = [new_markdown_cell("# Title\n\nSome *text* with `### BEGIN SOLUTION` quoted in prose."),
                new_code_cell("import math\nprint(math.pi)", execution_count=1,
                              outputs=[new_output("stream", name="stdout", text="3.14\n")]),
                new_code_cell(exercise, execution_count=2, metadata={"tags": ["exercise"]}),
                new_code_cell("print(clipped_sum([5, -1, 0.5], 1))", execution_count=3,
                              outputs=[new_output("stream", name="stdout", text="0.5\n")])]
    return nb


def test_stubs_replace_blocks_and_everything_else_is_kept():
    nb = fixture_notebook()
    out = ms.exercise_notebook(nb, "fixture.ipynb")
    assert out.cells[2].source == EXERCISE_STUBBED
    assert nb.cells[2].source == EXERCISE, "the solution notebook must not change"
    for before, after in zip(nb.cells, out.cells):
        assert after.cell_type == before.cell_type and after.metadata == before.metadata
        if before.cell_type == "code":
            assert after.outputs == [] and after.execution_count is None
        if before is not nb.cells[2]:
            assert after.source == before.source
    assert out.metadata == nb.metadata
    assert ms.count_blocks(nb) == 2


def test_stub_raises_its_hint_and_the_pasted_solution_works():
    out = ms.exercise_notebook(fixture_notebook())
    namespace = {}
    exec(out.cells[2].source, namespace)
    with pytest.raises(NotImplementedError) as info:
        namespace["clipped_sum"]([1.0], 1)
    assert str(info.value) == 'clip v with "min" and "max", then add it to total'
    assert ms.stub_functions(EXERCISE, ms.find_blocks(EXERCISE)) == ["clipped_sum", "clipped_sum"]

    exec(ms.fill_in(out.cells[2].source, EXERCISE, keep_stubs={1}), namespace)
    with pytest.raises(NotImplementedError, match=r"return the total \\ nothing else"):
        namespace["clipped_sum"]([1.0], 1)
    filled = ms.filled_notebook(out, fixture_notebook())
    exec(filled.cells[2].source, namespace)
    assert namespace["clipped_sum"]([5, -1, 0.5], 1) == 0.5
    assert "SOLUTION" not in filled.cells[2].source and filled.cells[2].outputs == []


@pytest.mark.parametrize("source, problem", [
    ("x = 1\n### BEGIN SOLUTION\n### HINT: h\nx = 2", "line 2: BEGIN SOLUTION without a matching"),
    ("### BEGIN SOLUTION\n### HINT: h\n### BEGIN SOLUTION\n### HINT: h\n### END SOLUTION",
     "line 3: BEGIN SOLUTION inside"),
    ("### BEGIN SOLUTION\nx = 2\n### END SOLUTION", "line 1: the line after '### BEGIN SOLUTION' must be '### HINT:"),
    ("### BEGIN SOLUTION\n### HINT:   \nx = 2\n### END SOLUTION", "must be '### HINT: <one line hint>'"),
    ("x = 2\n### END SOLUTION", "line 2: END SOLUTION without a BEGIN"),
    ("def f():\n    ### BEGIN SOLUTION\n    ### HINT: h\n    return 1\n### END SOLUTION",
     "line 5: END SOLUTION is indented"),
    ("### BEGIN SOLUTIONS\n### HINT: h\nx = 2\n### END SOLUTION", "line 1: '### BEGIN SOLUTIONS' looks like a marker"),
    ("x = 2  ## HINT: stray", "line 1: 'x = 2  ## HINT: stray' looks like a marker"),
])
def test_malformed_markers_are_refused_naming_notebook_cell_and_line(source, problem):
    with pytest.raises(ms.MarkerError) as info:
        ms.exercise_notebook(fixture_notebook(source), "fixture.ipynb")
    assert str(info.value).startswith("fixture.ipynb: cell 3 (")
    assert problem in str(info.value)


def test_command_writes_a_self_contained_folder_and_writes_nothing_on_bad_markers(tmp_path, capsys):
    (tmp_path / "notebooks").mkdir()
    shutil.copy2(ROOT / "faceage_helpers.py", tmp_path / "faceage_helpers.py")
    nbformat.write(fixture_notebook(), tmp_path / "notebooks" / "02_good.ipynb")
    ms.main([str(tmp_path / "notebooks"), str(tmp_path / "out")])
    assert "02_good.ipynb: 2 exercises" in capsys.readouterr().out
    written = nbformat.read(tmp_path / "out" / "notebooks" / "02_good.ipynb", as_version=4)
    assert written.cells[2].source == EXERCISE_STUBBED
    assert "def _yours(name, *args):" in (tmp_path / "out" / "faceage_helpers.py").read_text()
    assert (tmp_path / "out" / "check_answers.npz").is_file()

    nbformat.write(fixture_notebook("### BEGIN SOLUTION\n### HINT: h\nx = 1"), tmp_path / "notebooks" / "03_bad.ipynb")
    with pytest.raises(SystemExit) as info:
        ms.main([str(tmp_path / "notebooks"), str(tmp_path / "out2")])
    assert "03_bad.ipynb: cell 3 ('### BEGIN SOLUTION'), line 1: BEGIN SOLUTION without" in str(info.value)
    assert not (tmp_path / "out2").exists()
    with pytest.raises(SystemExit, match="refusing to write the exercise edition over the solutions"):
        ms.make_student(tmp_path / "notebooks", tmp_path)


def test_written_answers_become_empty_answer_cells():
    nb = fixture_notebook()
    nb.cells.append(new_markdown_cell("**My derivation.** $dW_2 = d\\hat y^T H$", metadata={"tags": [ms.WRITTEN]}))
    out = ms.exercise_notebook(nb)
    assert out.cells[-1].source == "**My derivation.** *(Double-click this cell and write your answer here.)*"
    assert out.cells[-1].metadata == nb.cells[-1].metadata and out.cells[0].source == nb.cells[0].source


# --- the real notebooks --------------------------------------------------------------------

SOLUTIONS = {p.name: nbformat.read(p, as_version=4) for p in sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))}
WITH_EXERCISES = [name for name, nb in SOLUTIONS.items() if ms.count_blocks(nb, name)]
CHECKS = ["check_forward", "check_mse_loss", "check_backward", "check_numerical_gradient", "check_sgd_step",
          "check_train_epoch", "check_weight_image"]


@pytest.fixture(scope="module")
def edition(tmp_path_factory):
    """The classroom edition of the real notebooks, generated once: {name: exercise notebook}."""
    out = tmp_path_factory.mktemp("student")
    ms.make_student(ROOT / "notebooks", out)
    return out, {name: nbformat.read(out / "notebooks" / name, as_version=4) for name in SOLUTIONS}


def exercise_cells(nb):
    """(index, blocks) of each code cell with solution blocks."""
    return [(i, ms.find_blocks(c.source)) for i, c in enumerate(nb.cells)
            if c.cell_type == "code" and ms.find_blocks(c.source)]


def next_code_cell(nb, index):
    return next((j for j in range(index + 1, len(nb.cells)) if nb.cells[j].cell_type == "code"), None)


def test_every_exercise_of_the_course_is_there_and_followed_by_its_check():
    calls = []
    for name in WITH_EXERCISES:
        nb = SOLUTIONS[name]
        for index, _ in exercise_cells(nb):
            j = next_code_cell(nb, index)
            assert j is not None and "fh.check_" in nb.cells[j].source, \
                f"{name}: cell {index + 1} is an exercise; the next code cell must call its fh.check_... function"
            calls += [c for c in CHECKS if f"fh.{c}(" in nb.cells[j].source]
    assert sorted(set(calls)) == sorted(CHECKS), f"exercises found with checks {sorted(set(calls))}"


def test_no_solution_line_survives_and_nothing_else_changes(edition):
    _, student = edition
    assert len(WITH_EXERCISES) >= 3
    for name, solution in SOLUTIONS.items():
        nb = student[name]
        # Code students get anyway (outside the blocks) may repeat a solution line; nothing else may.
        given = "\n".join(ms.exercise_source(c.source) for c in solution.cells if c.cell_type == "code")
        text = "\n".join(c.source for c in nb.cells)
        for _, blocks in exercise_cells(solution):
            for block in blocks:
                for line in block.solution:
                    code = line.split("#")[0].strip()  # the code, without its comment
                    if len(code) > 6 and code not in given:
                        assert code not in text, f"{name}: solution line {code!r} is in the exercise notebook"
                assert ms.stub_lines(block)[1].strip() in text
        for before, after in zip(solution.cells, nb.cells, strict=True):
            assert after.metadata == before.metadata
            if before.cell_type == "code":
                assert after.outputs == [] and after.execution_count is None
                assert ms.find_blocks(before.source) or after.source == before.source
                assert not ms.find_blocks(after.source) and ms.BEGIN not in after.source
            elif ms.is_written_answer(before):
                assert after.source == ms.answer_prompt(before) and after.source != before.source
            else:
                assert after.source == before.source
        assert nb.metadata == solution.metadata


def data_or_skip():
    """The notebooks need data.zip; with FACEAGE_DATA set (as in CI) a missing file is an error."""
    if os.environ.get("FACEAGE_DATA"):
        assert Path(os.environ["FACEAGE_DATA"]).is_file(), f"FACEAGE_DATA={os.environ['FACEAGE_DATA']} does not exist"
    elif not (ROOT / "data.zip").is_file():
        pytest.skip("no data.zip: set FACEAGE_DATA or put data.zip at the repository root")


def run(client, cell, index):
    """Execute one cell in the running kernel; return (ename, evalue) of its error, or None."""
    try:
        client.execute_cell(cell, index)
    except CellExecutionError as e:
        return e.ename, e.evalue
    return None


def save_filled_in(out, student, replace=None):
    """Paste every solution into the classroom edition and save it, as a student would (lesson_functions
    reads the saved notebooks); replace: {(notebook, function): new source of that exercise cell}."""
    filled = {}
    for name, nb in student.items():
        nb = ms.filled_notebook(nb, SOLUTIONS[name])
        for (target, function), source in (replace or {}).items():
            if target == name:
                [cell] = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith(f"def {function}(")]
                cell.source = source
        nbformat.write(nb, out / "notebooks" / name)
        filled[name] = nb
    return filled


def client_for(nb, out, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")  # figures are not looked at here
    return NotebookClient(nb, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(out / "notebooks")}})


@pytest.mark.parametrize("name", WITH_EXERCISES)
def test_filled_in_notebook_runs_and_each_stub_fails_its_check_with_its_hint(name, edition, monkeypatch):
    """The classroom edition with the answers filled in runs top to bottom on its own module (no answers
    in it): notebook 03's training cells train with the notebooks' functions and say so."""
    data_or_skip()
    out, student = edition
    solution = SOLUTIONS[name]
    nb = save_filled_in(out, student)[name]
    client = client_for(nb, out, monkeypatch)
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                error = run(client, cell, index)
                assert error is None, f"{name}: cell {index + 1} failed with the solutions pasted in: {error}"
        printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
        if name.startswith("03"):
            assert ("Training runs the code of your notebooks: forward, mse_loss and backward from "
                    "02_backprop_and_gradient_checking.ipynb; sgd_step and train_epoch from this notebook.") in printed
        for index, blocks in exercise_cells(solution):
            check = next_code_cell(nb, index)
            filled = new_code_cell(nb.cells[index].source)  # execute_cell puts the cell it runs into nb
            for k, block in enumerate(blocks):
                stubbed = new_code_cell(ms.fill_in(student[name].cells[index].source, solution.cells[index].source,
                                                   keep_stubs={k}))
                error = run(client, stubbed, index)
                in_function = ms.stub_functions(solution.cells[index].source, blocks)[k] is not None
                if in_function:
                    assert error is None, f"{name}: cell {index + 1} with stub {k + 1} failed to run: {error}"
                    error = run(client, new_code_cell(nb.cells[check].source), check)
                    assert error and error[0] == "ExerciseCheckError", \
                        f"{name}: the check after cell {index + 1} did not catch stub {k + 1}: {error}"
                    assert "is not implemented yet: fill in the cell above" in error[1]
                    assert f"Hint: {block.hint}" in error[1], f"{name}: cell {index + 1}, stub {k + 1}: {error[1]}"
                else:
                    assert error == ("NotImplementedError", block.hint), f"{name}: cell {index + 1}: {error}"
            assert run(client, filled, index) is None  # the solution again, for the next exercises


SIGN_ERROR = """def backward(params, cache, dy_hat):
    X, Z, H = cache
    dH = dy_hat[:, None] * params["W2"]
    dZ = dH * (Z > 0)
    return {"W1": -(dZ.T @ X), "b1": -dZ.sum(axis=0), "W2": -(dy_hat[None, :] @ H), "b2": -dy_hat.sum(keepdims=True)}"""


def test_a_wrong_backward_in_02_is_what_notebook_03_reports(tmp_path_factory, monkeypatch):
    """Notebook 03 trains with the backward saved in notebook 02: a wrong one is named by the train_epoch
    check, and training with it diverges."""
    data_or_skip()
    out = tmp_path_factory.mktemp("wrong")
    ms.make_student(ROOT / "notebooks", out)
    student = {name: nbformat.read(out / "notebooks" / name, as_version=4) for name in SOLUTIONS}
    name = "03_training_with_sgd.ipynb"
    wrong = {("02_backprop_and_gradient_checking.ipynb", "backward"): SIGN_ERROR}
    nb = save_filled_in(out, student, replace=wrong)[name]
    training = next(i for i, c in enumerate(nb.cells) if "lesson=lesson" in c.source)
    client = client_for(nb, out, monkeypatch)
    with client.setup_kernel():
        errors = [(i, run(client, cell, i)) for i, cell in enumerate(nb.cells[:training + 1])
                  if cell.cell_type == "code"]
    failed = [(i, e) for i, e in errors if e]
    assert failed[0][1][0] == "ExerciseCheckError" and "fh.check_train_epoch" in nb.cells[failed[0][0]].source
    assert failed[0][1][1].startswith("train_epoch calls your backward, and backward is not right yet")
    assert failed[-1] == (training, failed[-1][1]) and failed[-1][1][0] == "TrainingDiverged"


# --- no answers ship ---------------------------------------------------------------------

class _BlankStrings(ast.NodeTransformer):
    """Strings (docstrings, the checks' messages and hints) become empty: only code is left."""

    def visit_Constant(self, node):
        return ast.Constant("") if isinstance(node.value, str) else node

    def visit_JoinedStr(self, node):
        return ast.Constant("")


def code_lines(source, only=None, without=()):
    """The module's code as canonical lines (ast.unparse, strings blanked): of the top-level functions
    named in only (all code if None), leaving out those named in without."""
    tree = _BlankStrings().visit(ast.parse(source))
    nodes = [n for n in tree.body if (only is None or getattr(n, "name", None) in only)
             and getattr(n, "name", None) not in without]
    return {line.strip() for n in nodes for line in ast.unparse(n).split("\n")
            if line.strip() and not line.strip().startswith("def ")}


ANSWERS = ["relu", "forward", "mse_loss", "backward", "numerical_gradient", "sgd_step", "train_epoch",
           "_reference_answers"]


def test_the_classroom_module_holds_no_answer_code(edition):
    out, _ = edition
    solution = (ROOT / "faceage_helpers.py").read_text(encoding="utf-8")
    student = (out / "faceage_helpers.py").read_text(encoding="utf-8")
    answers = code_lines(solution, only=ANSWERS)
    other = code_lines(solution, without=ANSWERS)  # code the module has anyway, outside the answers
    leaked = sorted(line for line in answers & code_lines(student) - other if len(line) > 12)
    assert len(answers) > 40 and not leaked, f"the classroom module still holds answer code: {leaked}"
    assert code_lines(student, only=["forward"]) == {'""""""', "return _yours('', params, X)"}  # docstring, call


STUDENT_MODULE_SCRIPT = """
import sys, types
sys.path.insert(0, sys.argv[1])
import faceage_helpers as fh
assert fh.CHECK_ANSWERS_FILE.is_file()
ns = {"np": fh.np, "fh": fh}
for source in sys.argv[2:]:
    exec(source, ns)
for name in ("forward", "mse_loss", "backward", "numerical_gradient", "sgd_step", "train_epoch"):
    getattr(fh, "check_" + name)(ns[name])
try:
    fh.check_backward(fh.backward)
except fh.ExerciseCheckError as e:
    print(e)
try:
    fh.forward({}, None)
except NotImplementedError as e:
    print(e)
import __main__
__main__.mse_loss = ns["mse_loss"]
print("fh.mse_loss runs yours:", fh.mse_loss(fh.np.ones(2), fh.np.zeros(2))[0])
"""


def test_the_classroom_module_checks_with_the_saved_answers_and_calls_the_students_code(edition):
    out, _ = edition
    sources = [ms.filled_notebook(nb, SOLUTIONS[name]).cells[i].source
               for name, nb in edition[1].items() if name[:2] in ("02", "03")
               for i, _ in exercise_cells(SOLUTIONS[name])]
    sources = [s.replace("fh.forward(", "forward(") for s in sources]
    result = subprocess.run([sys.executable, "-c", STUDENT_MODULE_SCRIPT, str(out), *sources],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line for line in lines if line.endswith("all checks passed.")] == [
        f"{n}: all checks passed." for n in ("forward", "mse_loss", "backward", "numerical_gradient", "sgd_step",
                                             "train_epoch")]
    assert "backward: this is fh.backward, the module's own function, not yours" in result.stdout
    assert "fh.forward has no code in the classroom edition: it calls your own forward" in result.stdout
    assert "fh.mse_loss runs yours: 1.0" in lines


def test_the_released_reference_prints_that_it_is_in_use_and_is_named_by_the_checks(edition, tmp_path):
    out, _ = edition
    ms.write_reference(ROOT / "notebooks", out / "faceage_reference.py")
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import faceage_helpers as fh\n"
              "from faceage_reference import backward, train_epoch\n"
              "fh.check_backward(backward); fh.check_train_epoch(train_epoch)")
    result = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("faceage_reference: the teacher's reference solutions are in use (forward, mse_loss, "
                               "backward, numerical_gradient, sgd_step, train_epoch, weight_image")
    assert lines[0].endswith("); they are not your own code.")
    assert lines[1:] == [
        "backward: this is the teacher's reference (faceage_reference.py), not your own code: not checked.",
        "train_epoch: this is the teacher's reference (faceage_reference.py), not your own code: not checked."]
    reference = (out / "faceage_reference.py").read_text()
    assert ms.BEGIN not in reference and ms.HINT not in reference
