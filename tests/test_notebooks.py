"""Every notebook in ``notebooks/`` runs top to bottom in its fast setting, and is stored clean.

Each notebook is executed with nbclient in a fresh kernel of *this* interpreter: a kernel spec
written to a temporary directory (found through ``JUPYTER_PATH``) starts
``sys.executable -m ipykernel_launcher``, so the test uses the environment it runs in, whatever
kernels are installed elsewhere on the machine. The kernel gets ``SYMOG_NOTEBOOK_FAST=1`` (tiny
data and epochs) and temporary directories for the runs it trains, so nothing is written into the
repository; its working directory is ``notebooks/``, as when a person opens the notebook. A cell
that raises fails the test with the cell's traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

# Every notebook runs end to end: the end-to-end tier.
pytestmark = pytest.mark.e2e

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
KERNEL_NAME = "symog-jax-test"
CELL_TIMEOUT_S = 600
#: Figures (PNG outputs) each notebook shows at least; notebooks not listed are not checked.
MIN_FIGURES = {"symog_weight_distributions": 5, "quantizer_design_and_bit_allocation": 4,
               "method_comparison": 3}


def test_notebooks_exist():
    names = {p.name for p in NOTEBOOKS}
    assert {"symog_weight_distributions.ipynb", "quantizer_design_and_bit_allocation.ipynb",
            "method_comparison.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, \
                f"{path.name} cell {i} has outputs: clear them before committing"


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """A kernel spec for ``sys.executable`` in a temporary ``JUPYTER_PATH``; fast settings."""
    root = tmp_path_factory.mktemp("jupyter")
    runs = tmp_path_factory.mktemp("notebook-runs")
    spec_dir = root / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": f"Python ({sys.executable})", "language": "python",
            "env": {"SYMOG_NOTEBOOK_FAST": "1", "SYMOG_NOTEBOOK_RUNS": str(runs / "design"),
                    "SYMOG_RUNS_DIR": str(runs / "methods"), "JAX_PLATFORMS": "cpu",
                    "TF_CPP_MIN_LOG_LEVEL": "3"}}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(root))
        yield runs


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, kernel_env):
    nb = nbformat.read(path, as_version=4)
    # First cell (not saved): the kernel is this interpreter's environment.
    nb.cells.insert(0, nbformat.v4.new_code_cell("import sys; print(sys.prefix)"))
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL_NAME, timeout=CELL_TIMEOUT_S,
                                     resources={"metadata": {"path": str(NOTEBOOKS_DIR)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(f"{path.name}: a cell failed:\n{e}", pytrace=False)
    prefix = "".join(o.get("text", "") for o in nb.cells[0].outputs).strip()
    assert prefix == sys.prefix
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
                 for o in c.outputs)
    assert images >= MIN_FIGURES.get(path.stem, 0), f"{path.name} showed {images} figures"
