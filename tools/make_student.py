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
code cell is the exercise's check, one call `fh.check_<name>(<function>)`, worth the points that the
module's table fh.EXERCISES gives it in nbgrader; HIDDEN_TESTS below must hold its hidden test (the grade).
Markdown never spells a marker out (nbgrader would read it as a solution region); malformed markers (BEGIN
without END, END without BEGIN, a nested BEGIN, a missing or empty HINT, END indented differently, a misspelt
marker) stop the script with the notebook, cell and line, and nothing is written.

**Written answers.** A Markdown cell tagged `written-answer` (cell metadata "tags") holds a model
answer; its first bold words (e.g. `**My derivation.**`) stay as the label of the student's cell.
nbgrader grades it by hand (WRITTEN_POINTS points). A Markdown cell tagged `reference-only` right after
it (e.g. notebook 02's worked derivation) never reaches the students: the classroom edition leaves it
out, the nbgrader source appends it to the written answer as its rubric (nbgrader removes it on
release), and --reference writes it to reference_answers.md.

Outputs (generated, never committed):
    OUT/notebooks/NN_name.ipynb  each block becomes `# YOUR CODE HERE` and `raise NotImplementedError("<hint>")`,
                                 each written answer an empty answer cell; every output is cleared
    OUT/faceage_helpers.py       the module without answers: the same top-level names as the solution module;
                                 the body of each function named like an exercise (forward, mse_loss, backward,
                                 ..., and relu; not weight_image) raises NotImplementedError, and so does the
                                 checks' reference code. Every network trains with the student's own functions,
                                 handed over as a Lesson (fh.lesson_functions and dataclasses.replace)
    OUT/check_answers.npz        what the checks compare with, computed here by the solution module
    OUT/requirements.txt, environment.yml
(the notebooks import the module from "..", so it sits one level above them, as in the repository).
With --nbgrader DIR, also an nbgrader course: DIR/source/faceage/ holds the solution notebooks with
nbgrader cell metadata (solution cells; locked check cells with points, each ending in a hidden test that
grades the student's own function on fresh random problems against reference code of its own; hints moved
above the solution regions), the module and the answers;
DIR/nbgrader_config.py is tools/nbgrader_config.py. With --reference FILE, the teacher's reference
solutions as one module (faceage_reference.py) and the worked answers (reference_answers.md), to
release after the deadline.

Usage: python tools/make_student.py [NOTEBOOKS_DIR] [OUT_DIR] [--nbgrader DIR] [--reference FILE]
       (defaults: notebooks build/student)
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
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, where the module lives
import faceage_helpers as fh  # noqa: E402

BEGIN, END, HINT = "### BEGIN SOLUTION", "### END SOLUTION", "### HINT:"
STUB = "# YOUR CODE HERE"
SUPPORT_FILES = ("requirements.txt", "environment.yml")
MODULE = "faceage_helpers.py"
ANSWERS_FILE = "check_answers.npz"
REFERENCE_MODULE = "faceage_reference"
WRITTEN = "written-answer"  # the cell tag of a written (Markdown) answer
REFERENCE_ONLY = "reference-only"  # the cell tag of a worked answer that only the teacher's reference carries
WRITTEN_POINTS = 3
ASSIGNMENT = "faceage"  # the nbgrader assignment: every notebook, the module and the checks' answers
# The module's functions that answer an exercise, which in the classroom edition call the student's own:
# every module function named like a function that holds a solution block in the notebooks, and relu
# (forward's ReLU). weight_image stays: every weight plot uses it, and its exercise is one reshape.
ALSO_ANSWERS, NOT_ANSWERS = ("relu",), ("weight_image",)
REFERENCE_CODE = ("_reference_answers", "_any_depth_answers")  # the checks' reference code: check_answers.npz
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


def is_reference_only(cell) -> bool:
    return REFERENCE_ONLY in cell.metadata.get("tags", [])


def answer_prompt(cell) -> str:
    """A written answer's cell in the exercise edition: its bold label, then where to write."""
    label = re.match(r"\*\*[^*]+\*\*", cell.source)
    return f"{label.group(0) + ' ' if label else ''}*(Double-click this cell and write your answer here.)*"


def exercise_notebook(nb, nb_path="notebook"):
    """The exercise edition of a solution notebook (a new notebook; nb is unchanged)."""
    out = nbformat.from_dict(nb)  # a deep copy
    out.cells = [cell for cell in out.cells if not is_reference_only(cell)]
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
    solutions = [cell for cell in solution_nb.cells if not is_reference_only(cell)]
    for cell, solution in zip(out.cells, solutions, strict=True):
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


def exercise_functions(solutions: dict) -> set:
    """The names of the functions whose bodies hold solution blocks, over all the notebooks."""
    names = set()
    for nb in solutions.values():
        for cell in nb.cells:
            if cell.cell_type == "code" and find_blocks(cell.source):
                names.update(n for n in stub_functions(cell.source, find_blocks(cell.source)) if n)
    return names


def student_module(source: str, exercises=()) -> str:
    """The module's source without answers: the bodies of the functions named in exercises (and ALSO_ANSWERS)
    and of REFERENCE_CODE raise NotImplementedError. Each keeps its signature and docstring; only its body
    changes, so the classroom module defines exactly the solution module's names.
    """
    tree = ast.parse(source)
    lines = source.split("\n")
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    answers = sorted((set(exercises) | set(ALSO_ANSWERS)) - set(NOT_ANSWERS) & set(functions))
    if not set(REFERENCE_CODE) <= set(functions):
        raise SystemExit(f"make_student: the module defines no {', '.join(REFERENCE_CODE)}; update REFERENCE_CODE.")
    for name in sorted(answers + list(REFERENCE_CODE), key=lambda n: -functions[n].lineno):
        node = functions[name]
        body = node.body[1:] if ast.get_docstring(node) is not None else node.body
        indent = " " * body[0].col_offset
        if name in answers:  # the docstring goes too: the solution module's states the derived formulas
            notebook, section, _ = fh.EXERCISES.get(name, ("02", "§3", 0))
            new = [f'{indent}"""Your own {name} does this (notebook {notebook} {section}); the classroom edition has '
                   f'no code for it."""',
                   f'{indent}raise NotImplementedError("the classroom edition\'s fh.{name} has no code: your own '
                   f'{name} trains, handed over in a lesson (fh.lesson_functions, dataclasses.replace)")']
            body = node.body
        else:
            new = [f'{indent}raise NotImplementedError("the classroom edition has no reference code: '
                   f'its checks read {ANSWERS_FILE}")']
        lines[body[0].lineno - 1:node.end_lineno] = new
    return "\n".join(lines)


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


# --- the hidden tests: what grades each exercise -------------------------------------------------
# Each check cell of the nbgrader source ends with a hidden test (nbgrader removes it on release): the
# student's function on a fresh random problem (a new seed every run) against reference code that lives
# only in the hidden test, plain NumPy, nothing from faceage_helpers (a cell can replace the module's checks,
# comparisons and answers; it cannot reach this code). Functions that call other exercises run with known-good
# helpers defined here, so each exercise's points depend on that exercise alone.
HIDDEN_HEAD = '''### BEGIN HIDDEN TESTS
def _hidden_test(fn):  # the graded test: fresh random problems, reference code of its own
    import sys
    import numpy as np
    assert getattr(fn, "__module__", None) == "__main__", "{name}: {function} is not defined in this notebook"
    reference = sys.modules.get("faceage_reference")
    if reference is not None:  # a wrapper around the teacher's released reference is not your code
        import inspect
        seen = inspect.getclosurevars(fn)
        used = [*seen.globals.values(), *seen.nonlocals.values()]
        assert not any(u is reference or getattr(u, "__module__", None) == "faceage_reference" for u in used), \
            "{name}: it calls the teacher's reference: not your code"
    rng = np.random.default_rng()  # a new seed every run: stored answers cannot pass

    def close(a, b):
        a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        return a.shape == b.shape and bool(np.all(np.abs(a - b) <= 1e-6 * (1 + np.abs(b))))

    def net(n, k):
        p = {{"W1": rng.standard_normal((k, 2304)) / 48, "b1": 0.5 * rng.standard_normal(k),
              "W2": rng.standard_normal((1, k)), "b2": rng.standard_normal(1)}}
        X = rng.standard_normal((n, 2304))
        Z = X @ p["W1"].T + p["b1"]
        return p, X, Z, np.maximum(Z, 0)

    def copy(d):
        return {{key: np.array(v) for key, v in d.items()}}
'''
HIDDEN_TAIL = '''

_hidden_test({function})
del _hidden_test
### END HIDDEN TESTS'''
HIDDEN_TESTS = {
    "forward": '''
    for n, k in ((int(rng.integers(3, 9)), int(rng.integers(3, 8))), (1, 2)):
        p, X, Z, H = net(n, k)
        y_hat, (_, Z_out, H_out) = fn(copy(p), X.copy())
        assert close(Z_out, Z) and close(H_out, H), "forward: Z or H is wrong on a fresh problem"
        assert close(y_hat, H @ p["W2"][0] + p["b2"][0]), "forward: y_hat is wrong on a fresh problem"''',
    "mse_loss": '''
    for n in (int(rng.integers(2, 12)), 1):
        y_hat, y = rng.standard_normal(n), rng.standard_normal(n)
        loss, dy_hat = fn(y_hat.copy(), y.copy())
        assert close(loss, np.mean((y_hat - y) ** 2)), "mse_loss: the loss is wrong on a fresh problem"
        assert close(dy_hat, 2 * (y_hat - y) / n), "mse_loss: dy_hat is wrong on a fresh problem"''',
    "backward": '''
    n, k = int(rng.integers(3, 9)), int(rng.integers(3, 8))
    p, X, Z, H = net(n, k)
    dy = rng.standard_normal(n)
    dZ = dy[:, None] * p["W2"] * (Z > 0)
    right = {"W1": dZ.T @ X, "b1": dZ.sum(axis=0), "W2": dy[None, :] @ H, "b2": dy.sum(keepdims=True)}
    grads = fn(copy(p), (X.copy(), Z.copy(), H.copy()), dy.copy())
    wrong = [key for key in right if not close(grads[key], right[key])]
    assert not wrong, f"backward: d{', d'.join(wrong)} wrong on a fresh problem"''',
    "numerical_gradient": '''
    x = rng.standard_normal((int(rng.integers(2, 5)), int(rng.integers(2, 6))))
    c, b = rng.uniform(1, 10, x.shape), rng.standard_normal(x.shape)
    x0, indices = x.copy(), rng.choice(x.size, size=min(5, x.size), replace=False)
    got = fn(lambda: float(np.sum(0.5 * c * x ** 2 + b * x)), x, indices, 1e-5)
    assert np.array_equal(x, x0), "numerical_gradient: x is not restored"
    assert close(got, (c * x0 + b).reshape(-1)[indices]), "numerical_gradient: wrong on a fresh problem"''',
    "sgd_step": '''
    shapes = {"W1": (3, 5), "b1": (3,), "W2": (1, 3), "b2": (1,)}
    p = {key: rng.standard_normal(s) for key, s in shapes.items()}
    g = {key: rng.standard_normal(s) for key, s in shapes.items()}
    lr, arrays, before = float(rng.uniform(0.01, 1)), dict(p), copy(p)
    fn(p, copy(g), lr)
    assert all(p[key] is arrays[key] for key in shapes), "sgd_step: params not changed in place"
    assert all(close(p[key], before[key] - lr * g[key]) for key in shapes), "sgd_step: wrong on a fresh problem"''',
    "train_epoch": '''
    class Lesson:  # known-good functions (a linear model): only the loop is graded
        def __init__(self):
            self.batches, self.losses = [], []

        def forward(self, params, X):
            self.batches.append(np.asarray(X)[:, 0].astype(int).tolist())  # column 0: each sample's index
            return X[:, 1:] @ params["w"], X

        def mse_loss(self, y_hat, y):
            d = y_hat - y
            self.losses.append(float(np.mean(d ** 2)))
            return self.losses[-1], 2 * d / len(y)

        def backward(self, params, cache, dy_hat):
            return {"w": cache[:, 1:].T @ dy_hat}

        def sgd_step(self, params, grads, lr):
            params["w"] -= lr * grads["w"]

    n, size, seed = int(rng.integers(20, 40)), int(rng.integers(3, 9)), int(rng.integers(1 << 30))
    n += (n % size == 0)  # a shorter last batch
    X = np.column_stack([np.arange(n), rng.standard_normal((n, 3))])
    y, w0, lr = rng.standard_normal(n), rng.standard_normal(3), 0.05

    def run(s):
        lesson, params = Lesson(), {"w": w0.copy()}
        return lesson, params, fn(lesson, params, X, y, lr, size, np.random.default_rng(s))
    lesson, params, loss = run(seed)
    seen = [i for b in lesson.batches for i in b]
    assert sorted(seen) == list(range(n)), "train_epoch: one epoch does not use every sample exactly once"
    assert seen != list(range(n)), "train_epoch: the samples are not shuffled"
    assert [len(b) for b in lesson.batches] == [min(size, n - s) for s in range(0, n, size)], "train_epoch: batch sizes"
    assert run(seed)[0].batches == lesson.batches, "train_epoch: the shuffle does not come from the rng given"
    assert run(seed + 1)[0].batches != lesson.batches, "train_epoch: the shuffle ignores the rng given"
    w, total = w0.copy(), 0.0
    for b in lesson.batches:  # the reference loop over the same batches
        d = X[b, 1:] @ w - y[b]
        total += float(np.mean(d ** 2)) * len(b)
        w -= lr * X[b, 1:].T @ (2 * d / len(b))
    assert close(params["w"], w), "train_epoch: the steps differ from one step per batch"
    assert close(loss, total / n), "train_epoch: the returned loss is not the mean over the samples"''',
    "weight_image": '''
    W1 = rng.standard_normal((int(rng.integers(3, 9)), 2304))
    j = int(rng.integers(len(W1)))
    assert close(fn(W1.copy(), j), W1[j].reshape(48, 48)), "weight_image: wrong on a fresh problem"''',
    "add_weight_decay": '''
    shapes = {"W1": (3, 5), "b1": (3,), "W2": (1, 3), "b2": (1,)}
    p = {key: rng.standard_normal(s) for key, s in shapes.items()}
    g = {key: rng.standard_normal(s) for key, s in shapes.items()}
    lam, mine = float(rng.uniform(0.01, 1)), copy(p)
    out = fn(copy(g), mine, lam)
    assert all(np.array_equal(mine[key], p[key]) for key in shapes), "add_weight_decay: params changed"
    right = {key: g[key] + lam * p[key] if key[0] == "W" else g[key] for key in shapes}
    assert all(close(out[key], right[key]) for key in shapes), "add_weight_decay: wrong on a fresh problem"''',
    "momentum_step": '''
    shapes = {"W1": (3, 5), "b1": (3,), "W2": (1, 3), "b2": (1,)}
    p = {key: rng.standard_normal(s) for key, s in shapes.items()}
    v = {key: np.zeros(s) for key, s in shapes.items()}
    mine, velocity = copy(p), copy(v)
    lr, mu, arrays = float(rng.uniform(0.01, 0.5)), float(rng.uniform(0.5, 0.95)), dict(mine)
    for _ in range(3):
        g = {key: rng.standard_normal(s) for key, s in shapes.items()}
        fn(mine, copy(g), velocity, lr, mu)
        assert all(mine[key] is arrays[key] for key in shapes), "momentum_step: params not changed in place"
        for key in shapes:
            v[key] = mu * v[key] - lr * g[key]
            p[key] = p[key] + v[key]
        assert all(close(mine[key], p[key]) and close(velocity[key], v[key]) for key in shapes), \\
            "momentum_step: wrong on a fresh problem"''',
    "backward_to_input": '''
    n, k = int(rng.integers(3, 9)), int(rng.integers(3, 8))
    p, X, Z, H = net(n, k)
    dy = rng.standard_normal(n)
    dX = fn(copy(p), (X.copy(), Z.copy(), H.copy()), dy.copy())
    assert close(dX, (dy[:, None] * p["W2"] * (Z > 0)) @ p["W1"]), "backward_to_input: wrong on a fresh problem"''',
    "affine_backward": '''
    n, i, o = (int(v) for v in rng.integers(2, 7, size=3))
    X, W, dY = rng.standard_normal((n, i)), rng.standard_normal((o, i)), rng.standard_normal((n, o))
    dX, dW, db = fn(dY.copy(), (X.copy(), W.copy()))
    assert close(dX, dY @ W) and close(dW, dY.T @ X) and close(db, dY.sum(axis=0)), \\
        "affine_backward: wrong on a fresh problem"''',
    "relu_backward": '''
    Z, dH = rng.standard_normal((4, 6)), rng.standard_normal((4, 6))
    assert close(fn(dH.copy(), Z.copy()), dH * (Z > 0)), "relu_backward: wrong on a fresh problem"''',
    "deep_backward": '''
    def affine(dY, cache):
        X, W = cache
        return dY @ W, dY.T @ X, dY.sum(axis=0)

    def relu(dH, Z):
        return dH * (Z > 0)
    sizes = [7] + [int(v) for v in rng.integers(2, 6, size=int(rng.integers(1, 4)))] + [1]
    n, L = int(rng.integers(3, 7)), len(sizes) - 1
    p = {}
    for l in range(1, L + 1):
        p[f"W{l}"], p[f"b{l}"] = rng.standard_normal((sizes[l], sizes[l - 1])), 0.3 * rng.standard_normal(sizes[l])
    H, cache = rng.standard_normal((n, sizes[0])), []
    for l in range(1, L + 1):
        Z = H @ p[f"W{l}"].T + p[f"b{l}"]
        cache.append(((H, p[f"W{l}"]), Z if l < L else None))
        H = np.maximum(Z, 0)
    dy, right = rng.standard_normal(n), {}
    dZ = dy[:, None]
    for l in range(L, 0, -1):
        dH, right[f"W{l}"], right[f"b{l}"] = affine(dZ, cache[l - 1][0])
        if l > 1:
            dZ = relu(dH, cache[l - 2][1])
    names = globals()  # the notebook's: where deep_backward looks its layers up
    kept = {name: names.get(name) for name in ("affine_backward", "relu_backward")}
    names.update(affine_backward=affine, relu_backward=relu)  # known-good layers: only the recursion is graded
    try:
        grads = fn(copy(p), cache, dy.copy())
    finally:
        names.update(kept)
    assert all(close(grads[key], right[key]) for key in right), "deep_backward: wrong on a fresh problem"''',
    "matmul": '''
    m, k, n = (int(v) for v in rng.integers(2, 6, size=3))
    A, B, G = rng.standard_normal((m, k)), rng.standard_normal((k, n)), rng.standard_normal((m, n))
    Value = globals()["Value"]  # the notebook's
    a, b = Value(A.copy()), Value(B.copy())
    out = fn(a, b)
    out.grad = G.copy()
    out._backward()
    assert close(a.grad, G @ B.T) and close(b.grad, A.T @ G), "matmul: wrong on a fresh problem"''',
    "add": '''
    m, n = (int(v) for v in rng.integers(2, 6, size=2))
    shape_a, shape_b = [((m, n), (n,)), ((m, n), (1, n)), ((n,), (m, n)), ((m, 1), (m, n))][int(rng.integers(4))]
    A, B = rng.standard_normal(shape_a), rng.standard_normal(shape_b)
    G = rng.standard_normal(np.broadcast_shapes(shape_a, shape_b))

    def unbroadcast(g, shape):
        g = g.sum(axis=tuple(range(g.ndim - len(shape)))) if g.ndim > len(shape) else g
        return g.sum(axis=tuple(i for i, s in enumerate(shape) if s == 1), keepdims=True)
    Value = globals()["Value"]  # the notebook's
    a, b = Value(A.copy()), Value(B.copy())
    out = fn(a, b)
    out.grad = G.copy()
    out._backward()
    assert close(a.grad, unbroadcast(G, shape_a)) and close(b.grad, unbroadcast(G, shape_b)), \\
        "add: wrong on a fresh problem"''',
}


def hidden_test(name: str, function: str) -> str:
    """The hidden test block of the check cell fh.check_<name>(<function>) (nbgrader removes it on release)."""
    if name not in HIDDEN_TESTS:
        raise MarkerError(f"no hidden test grades fh.check_{name}: add one to HIDDEN_TESTS in tools/make_student.py "
                          f"(reference code of its own, on fresh random problems).")
    return (HIDDEN_HEAD.format(name=name, function=function) + HIDDEN_TESTS[name]
            + HIDDEN_TAIL.format(function=function))


def nbgrader_notebook(nb, nb_path="notebook"):
    """The solution notebook as an nbgrader source notebook (a new notebook; nb is unchanged)."""
    out = nbformat.from_dict(nb)
    stem = Path(str(nb_path)).stem[:2]
    kept = []
    for index, cell in enumerate(out.cells):  # a worked answer joins the written answer before it: nbgrader
        if not is_reference_only(cell):       # removes it on release, and the grader reads it as the rubric
            kept.append(cell)
        elif kept and is_written_answer(kept[-1]):
            kept[-1].source += "\n\n**Rubric: the reference answer.**\n\n" + cell.source
        else:
            raise MarkerError(f"{describe(nb_path, index, cell)}: a {REFERENCE_ONLY!r} cell must follow a "
                              f"{WRITTEN!r} cell (it becomes that answer's rubric in nbgrader).")
    out.cells = kept
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
            cell.source += "\n" + hidden_test(name, function)
            points = fh.EXERCISES.get(name, (None, None, 1))[2]
            meta.update(grade=True, locked=True, points=points, grade_id=f"{stem}-check_{name}")
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
    answers = {**fh._reference_answers(), **fh._any_depth_answers()}  # notebooks 02-06 and 07
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


def reference_notes(solutions: dict) -> str:
    """The worked answers (cells tagged reference-only, e.g. notebook 02's derivation) as one Markdown file."""
    parts = [f"## {Path(str(path)).name}\n\n{cell.source}" for path, nb in solutions.items()
             for cell in nb.cells if is_reference_only(cell)]
    return "# FaceAge: the worked answers, released after the deadline\n\n" + "\n\n".join(parts) + "\n"


def write_reference(notebooks_dir, target) -> Path:
    """Write the teacher's reference module (faceage_reference.py) made from the solution notebooks, and
    beside it reference_answers.md, the worked answers that the classroom edition leaves out."""
    solutions = {p: nbformat.read(p, as_version=4) for p in sorted(Path(notebooks_dir).glob("*.ipynb"))}
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(reference_module(solutions), encoding="utf-8")
    notes = target.with_name("reference_answers.md")
    notes.write_text(reference_notes(solutions), encoding="utf-8")
    print(f"{target} and {notes.name}: the reference solutions; hand them out only after the deadline")
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
