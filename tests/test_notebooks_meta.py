"""The notebooks as committed: titled, clean (no outputs), and the workshop's exercises and
hidden solutions in place. Executing them is nbmake's job (``pytest notebooks``); this checks
their structure in milliseconds."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
WORKSHOP = NOTEBOOKS / "workshop"


def _notebooks(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


ALL = _notebooks(NOTEBOOKS)
WORKSHOP_NOTEBOOKS = _notebooks(WORKSHOP)


def _ids(paths):
    return [str(p.relative_to(NOTEBOOKS)) for p in paths]


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _tags(cell: dict) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def test_notebooks_found():
    assert len(ALL) >= 2, f"no notebooks under {NOTEBOOKS}"
    assert (NOTEBOOKS / "00_tour.ipynb").exists()
    assert len(WORKSHOP_NOTEBOOKS) >= 5, "the workshop needs its notebooks"


@pytest.mark.parametrize("path", ALL, ids=_ids(ALL))
def test_title_cell(path):
    cells = _load(path)["cells"]
    assert cells, f"{path.name} is empty"
    first = cells[0]
    assert first["cell_type"] == "markdown", f"{path.name}: the first cell must be markdown"
    assert re.match(r"#\s+\S", _source(first).lstrip()), (
        f"{path.name}: the first cell must start with a '# Title' heading")


@pytest.mark.parametrize("path", ALL, ids=_ids(ALL))
def test_committed_clean(path):
    for i, cell in enumerate(_load(path)["cells"]):
        if cell["cell_type"] != "code":
            continue
        assert cell.get("outputs", []) == [], f"{path.name}, cell {i}: stored outputs"
        assert cell.get("execution_count") is None, f"{path.name}, cell {i}: execution count"


@pytest.mark.parametrize("path", WORKSHOP_NOTEBOOKS, ids=_ids(WORKSHOP_NOTEBOOKS))
def test_workshop_exercises_and_hidden_solutions(path):
    cells = _load(path)["cells"]
    exercises = [i for i, c in enumerate(cells) if "exercise" in _tags(c)]
    solutions = [i for i, c in enumerate(cells) if "solution" in _tags(c)]
    assert exercises, f"{path.name}: no cell tagged 'exercise'"
    assert solutions, f"{path.name}: no cell tagged 'solution'"
    for i in exercises:
        assert cells[i]["cell_type"] == "code", f"{path.name}, cell {i}: an exercise is code"
        assert "TODO" in _source(cells[i]), f"{path.name}, cell {i}: say what to change (# TODO)"
        assert not cells[i].get("metadata", {}).get("jupyter", {}).get("source_hidden"), (
            f"{path.name}, cell {i}: an exercise must be visible")
    for i in solutions:
        cell = cells[i]
        assert cell["cell_type"] == "code", f"{path.name}, cell {i}: a solution is code"
        assert cell.get("metadata", {}).get("jupyter", {}).get("source_hidden") is True, (
            f"{path.name}, cell {i}: solution not hidden (metadata jupyter.source_hidden)")
        above = cells[i - 1] if i else None
        assert above is not None and above["cell_type"] == "markdown" \
            and "Solution (click to expand)" in _source(above), (
                f"{path.name}, cell {i}: put a 'Solution (click to expand)' heading above it")
    # every exercise has its solution before the next exercise starts
    bounds = exercises + [len(cells)]
    for start, end in zip(bounds, bounds[1:]):
        assert any(start < s < end for s in solutions), (
            f"{path.name}: the exercise in cell {start} has no solution after it")


@pytest.mark.parametrize("path", WORKSHOP_NOTEBOOKS, ids=_ids(WORKSHOP_NOTEBOOKS))
def test_workshop_learning_goals(path):
    intro = _source(_load(path)["cells"][0])
    assert "After this notebook you can" in intro, f"{path.name}: state the learning goals"


def test_workshop_readme_schedules_every_notebook():
    readme = (WORKSHOP / "README.md").read_text(encoding="utf-8")
    for path in WORKSHOP_NOTEBOOKS:
        assert f"]({path.name})" in readme, f"README.md does not link {path.name}"
    assert "pip install torch==2.13.0" in readme and "jupyter lab notebooks/workshop" in readme
    assert "mybinder.org" in readme


LINK = re.compile(r"\]\(([^)\s]+?\.(?:ipynb|md))\)")


@pytest.mark.parametrize("path", [NOTEBOOKS / "00_tour.ipynb", *WORKSHOP_NOTEBOOKS],
                         ids=_ids([NOTEBOOKS / "00_tour.ipynb", *WORKSHOP_NOTEBOOKS]))
def test_relative_links_resolve(path):
    text = "\n".join(_source(c) for c in _load(path)["cells"] if c["cell_type"] == "markdown")
    for target in LINK.findall(text):
        if "://" in target:
            continue
        assert (path.parent / target).exists(), f"{path.name} links to missing {target}"
