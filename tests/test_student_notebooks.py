"""The classroom edition: tools/make_student.py turns solution blocks into stubs and nothing else.

First on a small fixture notebook (exact stubs, hints, cleared outputs, untouched cells, malformed
markers refused), then on the real notebooks: no solution line survives, every stub fails its
check cell with its own hint, and the exercise notebook with the solutions pasted back runs top
to bottom (one kernel per notebook: these runs dominate the time of this file).
"""
import os
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
    ("### BEGIN SOLUTION\n### HINT: h\n### BEGIN SOLUTION\n### HINT: h\n### END SOLUTION", "line 3: BEGIN SOLUTION inside"),
    ("### BEGIN SOLUTION\nx = 2\n### END SOLUTION", "line 1: the line after '### BEGIN SOLUTION' must be '### HINT:"),
    ("### BEGIN SOLUTION\n### HINT:   \nx = 2\n### END SOLUTION", "must be '### HINT: <one line hint>'"),
    ("x = 2\n### END SOLUTION", "line 2: END SOLUTION without a BEGIN"),
    ("def f():\n    ### BEGIN SOLUTION\n    ### HINT: h\n    return 1\n### END SOLUTION", "line 5: END SOLUTION is indented"),
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
    (tmp_path / "faceage_helpers.py").write_text("# the module\n")
    nbformat.write(fixture_notebook(), tmp_path / "notebooks" / "02_good.ipynb")
    ms.main([str(tmp_path / "notebooks"), str(tmp_path / "out")])
    assert "02_good.ipynb: 2 exercises" in capsys.readouterr().out
    written = nbformat.read(tmp_path / "out" / "notebooks" / "02_good.ipynb", as_version=4)
    assert written.cells[2].source == EXERCISE_STUBBED
    assert (tmp_path / "out" / "faceage_helpers.py").read_text() == "# the module\n"

    nbformat.write(fixture_notebook("### BEGIN SOLUTION\n### HINT: h\nx = 1"), tmp_path / "notebooks" / "03_bad.ipynb")
    with pytest.raises(SystemExit) as info:
        ms.main([str(tmp_path / "notebooks"), str(tmp_path / "out2")])
    assert "03_bad.ipynb: cell 3 ('### BEGIN SOLUTION'), line 1: BEGIN SOLUTION without" in str(info.value)
    assert not (tmp_path / "out2").exists()
    with pytest.raises(SystemExit, match="refusing to write the exercise edition over the solutions"):
        ms.make_student(tmp_path / "notebooks", tmp_path)


# --- the real notebooks --------------------------------------------------------------------

SOLUTIONS = {p.name: nbformat.read(p, as_version=4) for p in sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))}
WITH_EXERCISES = [name for name, nb in SOLUTIONS.items() if ms.count_blocks(nb, name)]
CHECKS = ["check_forward", "check_backward", "check_numerical_gradient", "check_sgd_step",
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


@pytest.mark.parametrize("name", WITH_EXERCISES)
def test_filled_in_notebook_runs_and_each_stub_fails_its_check_with_its_hint(name, edition, monkeypatch):
    data_or_skip()
    out, student = edition
    solution = SOLUTIONS[name]
    nb = ms.filled_notebook(student[name], solution)
    monkeypatch.setenv("MPLBACKEND", "Agg")  # figures are not looked at here
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(out / "notebooks")}})
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                error = run(client, cell, index)
                assert error is None, f"{name}: cell {index + 1} failed with the solutions pasted in: {error}"
        for index, blocks in exercise_cells(solution):
            check = next_code_cell(nb, index)
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
            assert run(client, nb.cells[index], index) is None  # the solution again, for the next exercises
