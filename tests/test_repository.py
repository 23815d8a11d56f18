"""Repository-level facts: one environment for pip and conda, no face data committed, notebooks committed executed,
the README lists the test files, every helper names the notebook section that uses it."""
import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def pins(lines):
    return sorted(l.strip() for l in lines if re.match(r"^[A-Za-z0-9_.\-\[\]]+==\S+$", l.strip()))


def test_requirements_and_environment_yml_pin_the_same_packages():
    req = pins((ROOT / "requirements.txt").read_text().splitlines())
    yml = (ROOT / "environment.yml").read_text()
    pip_section = yml.split("- pip:", 1)[1].splitlines()
    yml_pins = pins(l.strip().removeprefix("- ") for l in pip_section)
    assert req and req == yml_pins
    assert re.search(r"^\s*- python=3\.11\s*$", yml, re.M)


def test_face_data_is_ignored_and_not_tracked():
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert {"data.zip", "*.npy", "*.npz", "*.jpg"} <= set(ignored)
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert tracked, "not a git checkout?"
    faces = [f for f in tracked if re.search(r"(^|/)data\.zip$|\.(npy|npz|jpe?g)$", f, re.I)]
    assert not faces, f"face data must never be committed: {faces}"


def test_the_series_is_numbered_from_01_without_gaps():
    assert len(NOTEBOOKS) >= 4
    assert [p.name[:3] for p in NOTEBOOKS] == [f"{k:02d}_" for k in range(1, len(NOTEBOOKS) + 1)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_executed_in_order_without_images(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]
    counts = [c["execution_count"] for c in code]
    assert None not in counts, "every code cell needs an execution count (strict nbval checks only those)"
    assert counts == list(range(1, len(code) + 1)), "run the notebook top to bottom on a fresh kernel"
    images = [k for c in code for o in c.get("outputs", []) for k in o.get("data", {})
              if k.startswith("image/")]
    assert not images, f"{len(images)} image outputs committed: run `make strip` (faces must never be committed)"
    assert not any(o.get("output_type") == "error" for c in code for o in c.get("outputs", []))
    raw = path.read_text(encoding="utf-8")
    assert "iVBORw0KGgo" not in raw and "/9j/" not in raw, "a PNG or JPEG is embedded (widget state?): run `make strip`"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make lab" in readme and "make test" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^lab:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


def test_the_readme_lists_every_test_file_and_only_those():
    """The README's table of test files is how a newcomer finds the tests of a part of the module."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = {name for line in readme.splitlines() if line.startswith("| tests/")
             for name in re.findall(r"tests/test_\w+\.py", line)}
    files = {f"tests/{p.name}" for p in (ROOT / "tests").glob("test_*.py")}
    assert table == files, f"in the README only: {sorted(table - files)}; not in the README: {sorted(files - table)}"


def last_code_cell(path):
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return "".join([c for c in cells if c["cell_type"] == "code"][-1]["source"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_notebook_ends_by_handing_its_memory_back_and_says_why(path):
    """Students leave kernels running (issue 24): the last cell deletes the variables and returns the memory."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    assert cells[-1]["cell_type"] == "code"
    code = "".join(cells[-1]["source"])
    assert code.startswith("%reset -f") and "fh.release_memory()" in code
    why = "".join(cells[-2]["source"])
    assert why.startswith("## Before you move on: free the memory")
    assert "Running Terminals and Kernels" in why and "release_memory" in why


def test_release_memory_collects_what_only_a_cycle_kept_alive():
    import gc
    import weakref

    import faceage_helpers as fh

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a  # a reference cycle: freed only by the garbage collector
    alive = weakref.ref(a)
    gc.disable()  # so that only release_memory can collect it
    try:
        del a, b
        assert alive() is not None
        fh.release_memory()
        assert alive() is None
    finally:
        gc.enable()


def public_helpers():
    """(name, docstring) of every public function and class the module defines."""
    import inspect

    import faceage_helpers as fh
    return [(name, inspect.getdoc(obj) or "") for name, obj in vars(fh).items()
            if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
            and obj.__module__ == fh.__name__]


@pytest.mark.parametrize("name, doc", public_helpers(), ids=[name for name, _ in public_helpers()])
def test_each_helper_names_the_notebook_section_that_teaches_it(name, doc):
    """d2l's rule: a helper's docstring names its section, so the lessons and the module cannot drift apart."""
    refs = re.findall(r"notebook (\d\d) §(\d+)", doc)
    if "the last cell of every notebook" in doc:  # fh.release_memory
        assert all(f"fh.{name}()" in last_code_cell(path) for path in NOTEBOOKS), f"{name}: not in every last cell"
    elif not refs:
        assert "command line" in doc, f"{name}: its docstring names no 'notebook NN §k' (nor 'command line')"
    for number, section in refs:
        path = next((p for p in NOTEBOOKS if p.name.startswith(f"{number}_")), None)
        assert path, f"{name}: notebook {number} does not exist"
        text = path.read_text(encoding="utf-8")
        assert re.search(rf'"## {section}\. ', text), f"{name}: notebook {number} has no section {section}"
        if not name[0].isupper():  # a function (not an exception or a result class) is called by name
            used = re.search(r"inside fh\.(\w+)", doc)  # e.g. as_ages works inside fh.load_data
            mentioned = used.group(1) if used else name
            assert re.search(rf"\b{mentioned}\b", text), f"{name}: notebook {number} never mentions {mentioned}"
