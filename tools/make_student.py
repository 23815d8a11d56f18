"""Make the classroom (exercise) edition of the FaceAge notebooks from the solution notebooks.

The solution notebooks in notebooks/ are the single source of truth. In a code cell, the lines a
student should write sit between two marker lines, indented like the code they belong to:

    def forward(params, X):
        W1, b1, W2, b2 = params["W1"], params["b1"], params["W2"], params["b2"]
        ### BEGIN SOLUTION
        ### HINT: Z = X W1^T + b1 and H = relu(Z) are (N, hidden)
        Z = X @ W1.T + b1
        ...
        ### END SOLUTION
        return y_hat, (X, Z, H)

The line right after BEGIN is `### HINT: <one line hint>`. A cell may hold several blocks (one per
step of a longer function); blocks do not nest. In the exercise edition each block becomes

        # YOUR CODE HERE
        raise NotImplementedError("Z = X W1^T + b1 and H = relu(Z) are (N, hidden)")

at the block's indentation. Every code cell loses its outputs and execution count; everything else
(markdown, metadata, the source of all other cells) is copied unchanged. Malformed markers (BEGIN
without END, END without BEGIN, a nested BEGIN, a missing or empty HINT, END indented differently,
a misspelt marker) stop the script with the notebook, cell and line, and nothing is written.

Output, a self-contained folder to hand out (generated, never committed):
    OUT/notebooks/NN_name.ipynb    every notebook, exercises stubbed, outputs cleared
    OUT/faceage_helpers.py, requirements.txt, environment.yml    copied from the repository root
(the notebooks import the module from "..", so it sits one level above them, as in the repository).

Usage: python tools/make_student.py [NOTEBOOKS_DIR] [OUT_DIR]     (defaults: notebooks build/student)
"""
from __future__ import annotations

import argparse
import ast
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat

BEGIN, END, HINT = "### BEGIN SOLUTION", "### END SOLUTION", "### HINT:"
STUB = "# YOUR CODE HERE"
SUPPORT_FILES = ("faceage_helpers.py", "requirements.txt", "environment.yml")
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


def exercise_notebook(nb, nb_path="notebook"):
    """The exercise edition of a solution notebook (a new notebook; nb is unchanged)."""
    out = nbformat.from_dict(nb)  # a deep copy
    for index, cell in enumerate(out.cells):
        if cell.cell_type == "code":
            cell.source = exercise_source(cell.source, describe(nb_path, index, cell))
            cell.outputs = []
            cell.execution_count = None
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


def make_student(notebooks_dir="notebooks", out_dir="build/student") -> list[Path]:
    """Write the exercise edition of every notebook in notebooks_dir to out_dir/notebooks/."""
    notebooks_dir, out_dir = Path(notebooks_dir), Path(out_dir)
    paths = sorted(notebooks_dir.glob("*.ipynb"))
    if not paths:
        raise SystemExit(f"no notebooks in {notebooks_dir}/")
    out_nb_dir = out_dir / "notebooks"
    if out_nb_dir.resolve() == notebooks_dir.resolve():
        raise SystemExit(f"refusing to write the exercise edition over the solutions in {notebooks_dir}/")
    solutions = {path: nbformat.read(path, as_version=4) for path in paths}
    editions = {path: exercise_notebook(nb, path) for path, nb in solutions.items()}  # all checked before writing
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
    root = notebooks_dir.resolve().parent
    for name in SUPPORT_FILES:
        if (root / name).is_file():
            shutil.copy2(root / name, out_dir / name)
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="?", default="notebooks", help="solution notebooks (default %(default)s)")
    parser.add_argument("out", nargs="?", default="build/student", help="output folder (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        make_student(args.notebooks, args.out)
    except MarkerError as e:
        sys.exit(f"make_student: {e}")


if __name__ == "__main__":
    main()
