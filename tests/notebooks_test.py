"""Executes every teaching notebook in quick mode and checks its layout."""

import os
import pathlib
import re

import nbformat
import pytest

pytestmark = pytest.mark.backends(
    "tensorflow", reason="the notebooks set their own backend"
)

NOTEBOOKS_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = [
    "01_pruning.ipynb",
    "02_quantization_aware_training.ipynb",
    "03_distillation.ipynb",
    "04_transfer_learning.ipynb",
    "05_structured_pruning.ipynb",
    "06_int8_tflite_for_phones.ipynb",
]
REFERENCE = re.compile(
    r"References?:.*?(19|20)\d\d.*?arxiv\.org/abs/\d{4}\.\d{4,5}", re.S
)


def _read(name):
    return nbformat.read(NOTEBOOKS_DIR / name, as_version=4)


def _parameters_index(nb):
    for index, cell in enumerate(nb.cells):
        if "parameters" in cell.metadata.get("tags", []):
            return index
    return None


def test_every_notebook_is_listed():
    found = sorted(p.name for p in NOTEBOOKS_DIR.glob("*.ipynb"))
    assert found == NOTEBOOKS


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_starts_with_guarded_install_cell(name):
    first = _read(name).cells[0]
    assert first.cell_type == "code"
    assert 'find_spec("keras_slim") is None' in first.source
    assert "pip" in first.source and "git+https://github.com/" in first.source
    assert "%pip" not in first.source and "!pip" not in first.source


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_has_parameters_cell_with_quick_and_dataset(name):
    nb = _read(name)
    index = _parameters_index(nb)
    assert index is not None, "no cell tagged `parameters`"
    source = nb.cells[index].source
    assert "QUICK = False" in source
    assert 'DATASET = "digits"' in source
    for alternative in ("mnist", "cifar10", "tf_flowers"):
        assert alternative in source


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_teaches_with_a_reference(name):
    markdown = [
        c.source for c in _read(name).cells if c.cell_type == "markdown"
    ]
    assert any(REFERENCE.search(text) for text in markdown)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_does_not_download(name):
    code = "\n".join(
        c.source for c in _read(name).cells if c.cell_type == "code"
    )
    assert 'weights="imagenet"' not in code
    assert 'DATASET = "digits"' in code


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_quick_mode(name, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    nb = _read(name)
    index = _parameters_index(nb)
    injected = nbformat.v4.new_code_cell("QUICK = True")
    nb.cells.insert(index + 1, injected)
    repo = str(NOTEBOOKS_DIR.parent)
    monkeypatch.setenv(
        "PYTHONPATH",
        os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p),
    )
    monkeypatch.chdir(tmp_path)
    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError on any error
    errors = [
        output
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors
    assert not any(p.suffix == ".tflite" for p in tmp_path.rglob("*"))
