"""Make the classroom (exercise) edition of the FaceAge notebooks, its nbgrader course, and the reference.

The solution notebooks in notebooks/ are the single source of truth. Every notebook author (05, 06
and later included) marks exercises the same way.

**Code exercises.** In a code cell, the lines a student should write sit between two marker lines,
indented like the code they belong to; the line right after BEGIN is a one-line hint:

    def forward(params, X):
        W1, b1, W2, b2 = params["W1"], params["b1"], params["W2"], params["b2"]
        ### BEGIN SOLUTION
        ### HINT: Z = X W1^T + b1 and H = relu(Z) are (N, hidden)
        Z = X @ W1.T + b1
        ...
        ### END SOLUTION
        return y_hat, (X, Z, H)

A cell may hold several blocks (one per step of a longer function); blocks do not nest. The next
code cell is the exercise's check, one call `fh.check_<name>(<function>)`, worth CHECK_POINTS[name]
points in nbgrader (1 for a name not listed). Markdown never spells a marker out (nbgrader would read
it as a solution region); malformed markers (BEGIN without END, END without BEGIN, a nested BEGIN, a
missing or empty HINT, END indented differently, a misspelt marker) stop the script with the
notebook, cell and line, and nothing is written.

**Written answers.** A Markdown cell tagged `written-answer` (cell metadata "tags") holds a model
answer; its first bold words (e.g. `**My derivation.**`) stay as the label of the student's cell.
nbgrader grades it by hand (WRITTEN_POINTS points).

Outputs (generated, never committed):
    OUT/notebooks/NN_name.ipynb  each block becomes `# YOUR CODE HERE` and `raise NotImplementedError("<hint>")`,
                                 each written answer an empty answer cell; every output is cleared
    OUT/faceage_helpers.py       the module without answers: each module function named like an exercise's
                                 function (forward, mse_loss, backward, numerical_gradient, sgd_step,
                                 train_epoch, and relu; not weight_image) calls the student's function of the
                                 same name in the running notebook; the checks' reference code is gone
    OUT/check_answers.npz        what the checks compare with, computed here by the solution module
    OUT/requirements.txt, environment.yml
(the notebooks import the module from "..", so it sits one level above them, as in the repository).
With --nbgrader DIR, also an nbgrader course: DIR/source/faceage/ holds the solution notebooks with
nbgrader cell metadata (solution cells, locked check cells with points and a hidden test that the
function is the student's own, hints moved above the solution regions), the module and the answers;
DIR/nbgrader_config.py is tools/nbgrader_config.py. With --reference FILE, the teacher's reference
solutions as one module (faceage_reference.py), to release after the deadline.

Usage: python tools/make_student.py [NOTEBOOKS_DIR] [OUT_DIR] [--nbgrader DIR] [--reference FILE]
       (defaults: notebooks build/student)
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat
import numpy as np

BEGIN, END, HINT = "### BEGIN SOLUTION", "### END SOLUTION", "### HINT:"
STUB = "# YOUR CODE HERE"
SUPPORT_FILES = ("requirements.txt", "environment.yml")
MODULE = "faceage_helpers.py"
ANSWERS_FILE = "check_answers.npz"
REFERENCE_MODULE = "faceage_reference"
WRITTEN = "written-answer"  # the cell tag of a written (Markdown) answer
WRITTEN_POINTS = 3
ASSIGNMENT = "faceage"  # the nbgrader assignment: every notebook, the module and the checks' answers
# nbgrader points of each check cell; a check not listed here is worth 1.
CHECK_POINTS = {"forward": 2, "mse_loss": 1, "backward": 3, "numerical_gradient": 2, "sgd_step": 1,
                "train_epoch": 2, "weight_image": 1}
# The module's functions that answer an exercise, which in the classroom edition call the student's own:
# every module function named like a function that holds a solution block in the notebooks, and relu
# (forward's ReLU). weight_image stays: every weight plot uses it, and its exercise is one reshape.
ALSO_ANSWERS, NOT_ANSWERS = ("relu",), ("weight_image",)
REFERENCE_CODE = ("_reference_answers",)  # the checks' reference code: replaced by check_answers.npz
# Anything that looks like a marker but is not exactly one: caught so a typo cannot leak a solution.
MARKER_LIKE = re.compile(r"#+\s*(BEGIN|END)\s*SOLUTION|(?-i:##+\s*HINT)", re.IGNORECASE)


class MarkerError(ValueError):
    """A solution block is malformed; the message names the notebook, cell and line."""


@dataclass
class Block:
    """One solution block of a cell: lines[begin] is BEGIN, lines[end] is END."""
    begin: int
    end: int
    indent: str
    hint: str
    solution: list  # the solution lines, without the markers


def find_blocks(source: str, where: str = "cell") -> list[Block]:
    """The solution blocks of a code cell's source, checked for well-formed markers."""
    lines = source.split("\n")
    blocks, open_at = [], None
    for n, line in enumerate(lines):
        text = line.strip()
        indent = line[:len(line) - len(line.lstrip())]
        at = f"{where}, line {n + 1}"
        if text == BEGIN:
            if open_at is not None:
                raise MarkerError(f"{at}: BEGIN SOLUTION inside the block opened on line {open_at + 1} "
                                  f"(blocks do not nest; close it with {END!r} first).")
            hint_line = lines[n + 1].strip() if n + 1 < len(lines) else ""
            if not hint_line.startswith(HINT) or not hint_line[len(HINT):].strip():
                raise MarkerError(f"{at}: the line after {BEGIN!r} must be '{HINT} <one line hint>' "
                                  f"(found {hint_line!r}).")
            open_at, open_indent = n, indent
        elif text == END:
            if open_at is None:
                raise MarkerError(f"{at}: END SOLUTION without a BEGIN SOLUTION before it.")
            if indent != open_indent:
                raise MarkerError(f"{at}: END SOLUTION is indented differently from its BEGIN SOLUTION "
                                  f"(line {open_at + 1}); both sit at the indentation of the code.")
            hint = lines[open_at + 1].strip()[len(HINT):].strip()
            blocks.append(Block(open_at, n, open_indent, hint, lines[open_at + 2:n]))
            open_at = None
        elif MARKER_LIKE.search(line) and not (text.startswith(HINT) and open_at == n - 1):
            raise MarkerError(f"{at}: {text!r} looks like a marker but is not one; the markers are "
                              f"{BEGIN!r}, then '{HINT} ...', ..., {END!r}.")
    if open_at is not None:
        raise MarkerError(f"{where}, line {open_at + 1}: BEGIN SOLUTION without a matching {END!r}.")
    return blocks


def stub_lines(block: Block) -> list[str]:
    """What replaces a solution block in the exercise edition."""
    message = block.hint.replace("\\", "\\\\").replace('"', '\\"')
    return [f"{block.indent}{STUB}", f'{block.indent}raise NotImplementedError("{message}")']


def exercise_source(source: str, where: str = "cell") -> str:
    """A cell's source with every solution block replaced by its stub."""
    lines = source.split("\n")
    for block in reversed(find_blocks(source, where)):  # from the end, so earlier line numbers hold
        lines[block.begin:block.end + 1] = stub_lines(block)
    return "\n".join(lines)


def describe(nb_path, index: int, cell) -> str:
    """Where a cell is, for messages: the notebook, the cell's number (from 1) and its first line."""
    first = cell.source.strip().split("\n", 1)[0][:50]
    return f"{nb_path}: cell {index + 1} ({first!r})"


def is_written_answer(cell) -> bool:
    return cell.cell_type == "markdown" and WRITTEN in cell.metadata.get("tags", [])


def answer_prompt(cell) -> str:
    """A written answer's cell in the exercise edition: its bold label, then where to write."""
    label = re.match(r"\*\*[^*]+\*\*", cell.source)
    return f"{label.group(0) + ' ' if label else ''}*(Double-click this cell and write your answer here.)*"


def exercise_notebook(nb, nb_path="notebook"):
    """The exercise edition of a solution notebook (a new notebook; nb is unchanged)."""
    out = nbformat.from_dict(nb)  # a deep copy
    for index, cell in enumerate(out.cells):
        if cell.cell_type == "code":
            cell.source = exercise_source(cell.source, describe(nb_path, index, cell))
            cell.outputs = []
            cell.execution_count = None
        elif is_written_answer(cell):
            cell.source = answer_prompt(cell)
    return out


def count_blocks(nb, nb_path="notebook") -> int:
    """How many exercises (solution blocks) a notebook has."""
    return sum(len(find_blocks(c.source, describe(nb_path, i, c)))
               for i, c in enumerate(nb.cells) if c.cell_type == "code")


def fill_in(exercise: str, solution: str, keep_stubs=()) -> str:
    """Paste a cell's solution lines back over its stubs, as a student would (no markers).

    exercise is the generated source, solution the source it came from; stubs whose block index
    is in keep_stubs stay (to test one stub at a time).
    """
    blocks = find_blocks(solution)
    lines, out, k = exercise.split("\n"), [], 0
    n = 0
    while n < len(lines):
        if k < len(blocks) and lines[n:n + 2] == stub_lines(blocks[k]):
            out += stub_lines(blocks[k]) if k in keep_stubs else blocks[k].solution
            k, n = k + 1, n + 2
        else:
            out.append(lines[n])
            n += 1
    if k != len(blocks):
        raise ValueError(f"found {k} of the {len(blocks)} stubs of this cell; was it generated from this solution?")
    return "\n".join(out)


def filled_notebook(exercise_nb, solution_nb):
    """The exercise notebook with every solution pasted back in (outputs stay cleared)."""
    out = nbformat.from_dict(exercise_nb)
    for cell, solution in zip(out.cells, solution_nb.cells, strict=True):
        if cell.cell_type == "code":
            cell.source = fill_in(cell.source, solution.source)
    return out


def stub_functions(source: str, blocks: list[Block]) -> list:
    """For each block, the name of the function whose body holds it (None at the top level of the cell)."""
    functions = [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef)]
    names = []
    for block in blocks:
        inside = [f for f in functions if f.lineno <= block.begin + 1 <= f.end_lineno]
        names.append(max(inside, key=lambda f: f.lineno).name if inside else None)
    return names


# --- the module without answers -------------------------------------------------------------

CALL_YOURS = '''

# Classroom edition (written by tools/make_student.py): this module has no answers. Each function
# that answers an exercise calls the student's function of the same name in the running notebook.
_YOURS_BUSY = set()  # names being delegated now: a student's function that calls fh's own comes back here


def _yours(name, *args):
    """Call the running notebook's own `name` (the classroom edition's fh.name has no code of its own)."""
    fn = getattr(sys.modules.get("__main__"), name, None)
    if not callable(fn) or fn is globals()[name] or name in _YOURS_BUSY:
        raise NotImplementedError(
            f"fh.{name} has no code in the classroom edition: it calls your own {name}, and this notebook "
            f"has none (or yours calls fh.{name}). Define {name} in this notebook (run its cell), or train "
            f"with lesson=fh.lesson_functions().")
    _YOURS_BUSY.add(name)
    try:
        return fn(*args)
    finally:
        _YOURS_BUSY.discard(name)
'''


def exercise_functions(solutions: dict) -> set:
    """The names of the functions whose bodies hold solution blocks, over all the notebooks."""
    names = set()
    for nb in solutions.values():
        for cell in nb.cells:
            if cell.cell_type == "code" and find_blocks(cell.source):
                names.update(n for n in stub_functions(cell.source, find_blocks(cell.source)) if n)
    return names


def student_module(source: str, exercises=()) -> str:
    """The module's source without answers: the functions named in exercises (and ALSO_ANSWERS) call
    the student's own, REFERENCE_CODE raises. Each keeps its signature and docstring; only its body changes.
    """
    tree = ast.parse(source)
    lines = source.split("\n")
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    answers = sorted((set(exercises) | set(ALSO_ANSWERS)) - set(NOT_ANSWERS) & set(functions))
    if not set(REFERENCE_CODE) <= set(functions):
        raise SystemExit(f"make_student: the module defines no {', '.join(REFERENCE_CODE)}; update REFERENCE_CODE.")
    first = min(functions[name].lineno for name in answers + list(REFERENCE_CODE))
    for name in sorted(answers + list(REFERENCE_CODE), key=lambda n: -functions[n].lineno):
        node = functions[name]
        body = node.body[1:] if ast.get_docstring(node) is not None else node.body
        indent = " " * body[0].col_offset
        args = ", ".join(a.arg for a in node.args.args)
        if name in answers:
            new = [f"{indent}return _yours({name!r}{', ' if args else ''}{args})"]
        else:
            new = [f'{indent}raise NotImplementedError("the classroom edition has no reference code: '
                   f'its checks read {ANSWERS_FILE}")']
        lines[body[0].lineno - 1:node.end_lineno] = new
    lines[first - 1:first - 1] = CALL_YOURS.split("\n")[1:] + [""]
    return "\n".join(lines)


def load_module(path: Path):
    """Import the solution module from its file (the one beside the notebooks, not whatever is on sys.path)."""
    spec = importlib.util.spec_from_file_location("faceage_solution_module", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


# --- the nbgrader course -------------------------------------------------------------------

def checked_function(source: str):
    """(check name, function) of a check cell `fh.check_<name>(<function>)`, else None."""
    found = re.search(r"fh\.check_(\w+)\((\w+)\)", source)
    return found.groups() if found else None


def nbgrader_source(source: str, where: str) -> str:
    """A solution cell's source for nbgrader: each HINT line moves above its BEGIN (nbgrader deletes
    the whole region, hint included)."""
    lines = source.split("\n")
    for block in reversed(find_blocks(source, where)):
        lines[block.begin:block.begin + 2] = [f"{block.indent}# Hint: {block.hint}", lines[block.begin]]
    return "\n".join(lines)


def nbgrader_notebook(nb, nb_path="notebook"):
    """The solution notebook as an nbgrader source notebook (a new notebook; nb is unchanged)."""
    out = nbformat.from_dict(nb)
    stem = Path(str(nb_path)).stem[:2]
    for index, cell in enumerate(out.cells):
        where = describe(nb_path, index, cell)
        meta = {"schema_version": 3, "task": False, "locked": False, "grade": False, "solution": False}
        if cell.cell_type == "markdown" and MARKER_LIKE.search(cell.source):
            raise MarkerError(f"{where}: Markdown spells out a solution marker; nbgrader would read it as a "
                              f"solution region. Describe the exercises without the marker text.")
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        if cell.cell_type == "code" and find_blocks(cell.source, where):
            function = stub_functions(cell.source, find_blocks(cell.source))[0]
            cell.source = nbgrader_source(cell.source, where)
            meta.update(solution=True, grade_id=f"{stem}-{function or f'cell{index + 1}'}")
        elif cell.cell_type == "code" and checked_function(cell.source):
            name, function = checked_function(cell.source)
            cell.source += (f"\n### BEGIN HIDDEN TESTS\nassert {function}.__module__ == \"__main__\", "
                            f"\"{function} is not defined in this notebook: the check above grades your own code\"\n"
                            f"### END HIDDEN TESTS")
            meta.update(grade=True, locked=True, points=CHECK_POINTS.get(name, 1), grade_id=f"{stem}-check_{name}")
        elif is_written_answer(cell):
            meta.update(grade=True, solution=True, points=WRITTEN_POINTS, grade_id=f"{stem}-written{index + 1}")
        else:
            continue
        cell.metadata["nbgrader"] = meta
    return out


# --- the reference, released after the deadline ------------------------------------------

def reference_module(solutions: dict) -> str:
    """faceage_reference.py: every function whose body holds a solution block, markers removed."""
    parts, names = [], []
    for path, nb in solutions.items():
        for cell in nb.cells:
            if cell.cell_type != "code" or not find_blocks(cell.source):
                continue
            source = "\n".join(line for line in cell.source.split("\n")
                                if not line.strip().startswith((BEGIN, END, HINT)))
            for node in ast.parse(source).body:
                if isinstance(node, ast.FunctionDef):
                    parts.append(f"# from {Path(str(path)).name}\n" + ast.get_source_segment(source, node))
                    names.append(node.name)
    return (f'''"""The teacher's reference solutions to the FaceAge exercises, released after the deadline.

Import the functions you need in place of your own, with one visible line, e.g.
    from faceage_reference import backward
Importing prints that the reference is in use, and the checks name these functions as the reference.
"""
import numpy as np

import faceage_helpers as fh

print("faceage_reference: the teacher's reference solutions are in use ({", ".join(names)}); "
      "they are not your own code.")


''' + "\n\n\n".join(parts) + "\n")


def make_student(notebooks_dir="notebooks", out_dir="build/student", nbgrader_dir=None) -> list[Path]:
    """Write the exercise edition of every notebook in notebooks_dir to out_dir/notebooks/, the module
    without answers and the checks' answers beside them (and the nbgrader course to nbgrader_dir)."""
    notebooks_dir, out_dir = Path(notebooks_dir), Path(out_dir)
    paths = sorted(notebooks_dir.glob("*.ipynb"))
    if not paths:
        raise SystemExit(f"no notebooks in {notebooks_dir}/")
    out_nb_dir = out_dir / "notebooks"
    if out_nb_dir.resolve() == notebooks_dir.resolve():
        raise SystemExit(f"refusing to write the exercise edition over the solutions in {notebooks_dir}/")
    solutions = {path: nbformat.read(path, as_version=4) for path in paths}
    editions = {path: exercise_notebook(nb, path) for path, nb in solutions.items()}  # all checked before writing
    graded = {path: nbgrader_notebook(nb, path) for path, nb in solutions.items()} if nbgrader_dir else {}
    root = notebooks_dir.resolve().parent
    module = student_module((root / MODULE).read_text(encoding="utf-8"), exercise_functions(solutions))
    answers = load_module(root / MODULE)._reference_answers()
    out_nb_dir.mkdir(parents=True, exist_ok=True)
    for old in out_nb_dir.glob("*.ipynb"):  # a regenerated folder: no stale notebooks
        old.unlink()
    written = []
    for path, nb in editions.items():
        target = out_nb_dir / path.name
        nbformat.write(nb, target)
        n = count_blocks(solutions[path], path)
        print(f"{target}: {n} exercise{'s' if n != 1 else ''}")
        written.append(target)
    for folder in [out_dir] + ([Path(nbgrader_dir) / "source" / ASSIGNMENT] if nbgrader_dir else []):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MODULE).write_text(module, encoding="utf-8")
        np.savez(folder / ANSWERS_FILE, **answers)
    for name in SUPPORT_FILES:
        if (root / name).is_file():
            shutil.copy2(root / name, out_dir / name)
    if nbgrader_dir:
        source = Path(nbgrader_dir) / "source" / ASSIGNMENT
        for old in source.glob("*.ipynb"):
            old.unlink()
        for path, nb in graded.items():
            nbformat.write(nb, source / path.name)
        shutil.copy2(Path(__file__).with_name("nbgrader_config.py"), Path(nbgrader_dir) / "nbgrader_config.py")
        print(f"{source}/: the nbgrader source of assignment {ASSIGNMENT!r}")
    return written


def write_reference(notebooks_dir, target) -> Path:
    """Write the teacher's reference module (faceage_reference.py) made from the solution notebooks."""
    solutions = {p: nbformat.read(p, as_version=4) for p in sorted(Path(notebooks_dir).glob("*.ipynb"))}
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(reference_module(solutions), encoding="utf-8")
    print(f"{target}: the reference solutions; hand it out only after the deadline")
    return target


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="?", default="notebooks", help="solution notebooks (default %(default)s)")
    parser.add_argument("out", nargs="?", default="build/student", help="output folder (default %(default)s)")
    parser.add_argument("--nbgrader", metavar="DIR", help="also write the nbgrader course (source folder) to DIR")
    parser.add_argument("--reference", metavar="FILE", help="only write the reference solutions module to FILE")
    args = parser.parse_args(argv)
    try:
        if args.reference:
            write_reference(args.notebooks, args.reference)
        else:
            make_student(args.notebooks, args.out, args.nbgrader)
    except MarkerError as e:
        sys.exit(f"make_student: {e}")


if __name__ == "__main__":
    main()
