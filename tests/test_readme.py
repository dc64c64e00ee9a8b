"""Every ```python block of the README runs on its own, and its weights end where it says.

Each block is executed alone, in a fresh namespace, in a fresh temporary working directory: no
block may rely on another's imports, data or variables. A block that exports a network
(``hard_quantize`` + ``np.savez``) is then checked against the library, independently of what
the block printed: the saved integer codes are in their format's range and equal
``result.codes``; for SYMOG every quantized weight is on its level; for straight-through
rounding the exported weights are exactly those the forward pass used (``fake_quantize`` of the
trained weights with the tracked formats).

``check_exported_example`` is shared with ``tests/test_docs.py`` (the same checks for the
``docs/*.md`` examples).
"""

from __future__ import annotations

import re
from pathlib import Path

import jax
import numpy as np
import pytest

import symog_jax as sj

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(path: Path) -> list[str]:
    """The ```python blocks of a markdown file, in order."""
    return PYTHON_BLOCK.findall(path.read_text(encoding="utf-8"))


def run_block(block: str, name: str, workdir: Path, monkeypatch) -> dict:
    """Executes ``block`` alone in a fresh namespace with ``workdir`` as working directory."""
    monkeypatch.chdir(workdir)
    namespace: dict = {"__name__": "__doc_example__"}
    exec(compile(block, name, "exec"), namespace)  # noqa: S102
    return namespace


def check_exported_example(block: str, namespace: dict, workdir: Path) -> None:
    """The checks for a block that ends with ``hard_quantize`` and ``np.savez`` of the codes."""
    written = sorted(workdir.glob("*.npz"))
    assert len(written) == 1, f"the block should save one .npz file, saved {written}"
    result = namespace["result"]
    assert isinstance(result, sj.HardQuantized) and result.report
    with np.load(written[0]) as saved:
        for r, c in zip(result.report, jax.tree_util.tree_leaves(result.codes)):
            lo, hi = r.format.code_min, r.format.code_max
            assert saved[r.path].dtype == np.int32
            assert lo <= saved[r.path].min() and saved[r.path].max() <= hi
            np.testing.assert_array_equal(saved[r.path], np.asarray(c))
            assert len(np.unique(saved[r.path])) > 1          # not all on one level
    if "fake_quantize" in block:
        # Straight-through: what was exported is what the forward pass computed with.
        if "optimizer" in namespace:           # NNX: the model and its nnx.Optimizer
            from flax import nnx
            trained = nnx.state(namespace["model"], nnx.Param)
            opt_state = namespace["optimizer"].opt_state
        else:                                  # linen: params and an optax state
            trained, opt_state = namespace["params"], namespace["opt_state"]
        forward = sj.fake_quantize(trained, sj.find_formats(opt_state))
        for a, b in zip(jax.tree_util.tree_leaves(forward),
                        jax.tree_util.tree_leaves(result.params)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    else:
        # SYMOG: the trained float weights are already on the levels.
        for r in result.report:
            assert r.near_level_fraction == 1.0, result.summary()
            assert r.max_abs_error_in_steps < 1e-3, result.summary()
    loss = namespace.get("loss")
    assert loss is not None and np.isfinite(float(loss))


README_BLOCKS = python_blocks(README)


def test_readme_has_the_promised_examples():
    assert len(README_BLOCKS) >= 2
    joined = "\n".join(README_BLOCKS)
    for needed in ("flax.linen", "from flax import nnx", "nnx.Optimizer", "symog_jax.symog(",
                   "track_formats", "fake_quantize", "hard_quantize", "np.savez"):
        assert needed in joined, needed
    assert all("hard_quantize" in b and "np.savez" in b for b in README_BLOCKS)
    # Each block brings its own imports (none continues another).
    assert all(re.search(r"^import |^from ", b, re.M) for b in README_BLOCKS)


@pytest.mark.parametrize("index", range(len(README_BLOCKS)))
def test_readme_block_runs_alone_and_ends_on_the_levels(index, tmp_path, monkeypatch):
    block = README_BLOCKS[index]
    namespace = run_block(block, f"README.md[python block {index}]", tmp_path, monkeypatch)
    check_exported_example(block, namespace, tmp_path)


def test_readme_warning_about_the_exact_form_holds():
    # docs/library.md says symog refuses the exact form with modes that merge.
    import optax
    assert "sigma < 0.5" in (ROOT / "docs" / "library.md").read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="sigma < 0.5"):
        sj.symog(2, optax.adam(1e-3), form="exact")


def test_readme_links_to_existing_files():
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert targets
    for target in targets:
        if "://" not in target:
            assert (ROOT / target).exists(), target
