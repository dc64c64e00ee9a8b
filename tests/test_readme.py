"""The README's library examples run, and their weights end on the levels (issue 14, point 4).

The ```python blocks of the section "## Using the transforms on your own model" are executed in
order, in one namespace (later blocks reuse the data and ``steps`` of the first), in a temporary
working directory. After each block: the integer codes it saved with ``np.savez`` are in range
and equal ``result.codes``; for SYMOG, every quantized weight is on its level; for the
straight-through block, the exported weights are exactly those its forward pass used.
"""

from __future__ import annotations

import re
from pathlib import Path

import jax
import numpy as np
import pytest

import symog_jax as sj

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "## Using the transforms on your own model"


def section_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start:end if end != -1 else len(text)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_section_has_the_promised_examples():
    blocks = section_blocks()
    assert len(blocks) >= 3
    joined = "\n".join(blocks)
    for needed in ("flax.linen", "from flax import nnx", "nnx.Optimizer", "symog_jax.symog(",
                   "track_formats", "fake_quantize", "hard_quantize", "np.savez"):
        assert needed in joined, needed
    assert all("hard_quantize" in b and "np.savez" in b for b in blocks)


def test_readme_examples_run_and_end_on_the_levels(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme_example"}
    seen: set[str] = set()
    for i, block in enumerate(section_blocks()):
        exec(compile(block, f"README.md[python block {i}]", "exec"), namespace)  # noqa: S102
        written = sorted(p.name for p in tmp_path.glob("*.npz") if p.name not in seen)
        assert len(written) == 1, f"block {i} should save one .npz file, saved {written}"
        seen.update(written)
        result = namespace["result"]
        assert isinstance(result, sj.HardQuantized) and result.report
        with np.load(tmp_path / written[0]) as saved:
            codes = jax.tree_util.tree_leaves(result.codes)
            for r, c in zip(result.report, codes):
                lo, hi = r.format.code_min, r.format.code_max
                assert saved[r.path].dtype == np.int32
                assert lo <= saved[r.path].min() and saved[r.path].max() <= hi
                np.testing.assert_array_equal(saved[r.path], np.asarray(c))
                assert len(np.unique(saved[r.path])) > 1          # not all on one level
        if "fake_quantize" in block:
            # Straight-through: what was exported is what the forward pass computed with.
            from flax import nnx
            model, optimizer = namespace["model"], namespace["optimizer"]
            fq = sj.fake_quantize(nnx.state(model, nnx.Param),
                                  sj.find_formats(optimizer.opt_state))
            for a, b in zip(jax.tree_util.tree_leaves(fq),
                            jax.tree_util.tree_leaves(result.params)):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        else:
            # SYMOG: the trained float weights are already on the levels.
            for r in result.report:
                assert r.near_level_fraction == 1.0, result.summary()
                assert r.max_abs_error_in_steps < 1e-3, result.summary()
        loss = namespace.get("loss")
        assert loss is not None and np.isfinite(float(loss))


@pytest.mark.parametrize("bad", ["symog_jax.symog(2, optax.adam(1e-3), form='exact')"])
def test_readme_warning_about_the_exact_form_holds(bad):
    # The section says symog refuses the exact form with modes that merge.
    import optax
    assert "sigma < 0.5" in README.read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="sigma < 0.5"):
        eval(bad, {"optax": optax, "symog_jax": sj})  # noqa: S307
