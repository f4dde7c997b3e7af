"""The notebooks execute (quick mode: a tiny random BERT built from a config, a few sentences)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

import captum_attcat  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"


def _execute(name: str, monkeypatch) -> nbformat.NotebookNode:
    # the kernel imports this checkout, whatever the installed copy points to
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("CAPTUM_ATTCAT_NOTEBOOK_QUICK", "1")
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()
    return notebook


def _outputs(notebook, kind: str) -> str:
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if kind == "text" and output.get("output_type") == "stream":
                texts.append(output["text"])
            data = output.get("data", {})
            if kind in data:
                texts.append(data[kind] if isinstance(data[kind], str) else "".join(data[kind]))
    return "\n".join(texts)


def _committed_outputs(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def test_quickstart_executes(monkeypatch):
    notebook = _execute("quickstart.ipynb", monkeypatch)
    text = _outputs(notebook, "text")
    assert "tiny random BERT (quick mode)" in text
    html = _outputs(notebook, "text/html")
    assert html.count('class="tok ') > 0 and "<mark" in html  # our page and Captum's records
    assert _outputs(notebook, "image/png")  # the per-block heatmap
    for name in captum_attcat.METHODS:
        assert f'data-method="{name}"' in html


def test_compare_methods_executes(monkeypatch):
    notebook = _execute("compare_methods.ipynb", monkeypatch)
    text = _outputs(notebook, "text")
    table = text[text.index("| method |"):]
    for name in [*captum_attcat.METHODS, "IntegratedGradients", "Saliency", "Random"]:
        assert f"| {name} |" in table
    assert 'data-method="IntegratedGradients"' in _outputs(notebook, "text/html")


@pytest.mark.parametrize("name", ["quickstart.ipynb", "compare_methods.ipynb"])
def test_committed_notebooks_hold_a_real_run(name):
    """The committed notebooks carry the outputs of a run on the default fine-tuned model."""
    notebook = _committed_outputs(name)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), "every code cell was executed"
    assert not any(o.get("output_type") == "error" for c in code for o in c.get("outputs", []))
    text = _outputs(notebook, "text")
    assert "minilm-sst2" in text and "quick mode" not in text
