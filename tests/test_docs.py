"""The documentation is runnable and its links hold.

* Every ```python block of ``docs/*.md`` runs on its own: a fresh namespace, a fresh temporary
  working directory, no data or variables from another block. Blocks that need data or long
  runs are written as ```bash or ```text and are not executed. A block that exports a network
  (``hard_quantize`` + ``np.savez``) gets the README's checks (``check_exported_example``).
* ``benchmarks/RESULTS.md`` opens with a "Current numbers" table; every row links a section of
  RESULTS.md (or RESULTS_ARCHIVE.md) that exists and at least one raw file in
  ``benchmarks/results/`` that exists.
* Relative links in ``docs/*.md`` and the README point at files and sections that exist.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from test_readme import check_exported_example, python_blocks, run_block

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
RESULTS = ROOT / "benchmarks" / "RESULTS.md"

DOC_BLOCKS = [(path, i, block) for path in DOCS for i, block in enumerate(python_blocks(path))]


def test_docs_pages_exist_and_have_examples():
    names = {p.name for p in DOCS}
    for page in ("library.md", "methods.md", "experiments.md", "pruning.md", "export.md",
                 "multi_device.md"):
        assert page in names, page
    assert len(DOC_BLOCKS) >= 3


@pytest.mark.parametrize("path,index,block", DOC_BLOCKS,
                         ids=[f"{p.name}[{i}]" for p, i, _ in DOC_BLOCKS])
def test_docs_block_runs_alone(path, index, block, tmp_path, monkeypatch):
    namespace = run_block(block, f"docs/{path.name}[python block {index}]", tmp_path,
                          monkeypatch)
    if "hard_quantize" in block and "np.savez" in block:
        check_exported_example(block, namespace, tmp_path)


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a markdown heading (ASCII headings): lower case, punctuation other
    than ``-`` and ``_`` dropped, each space a hyphen."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^a-z0-9 _-]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """All heading anchors of a markdown file (duplicates get GitHub's ``-1``, ``-2``)."""
    seen: dict[str, int] = {}
    result = set()
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        anchor = github_anchor(line.lstrip("#"))
        n = seen.get(anchor, 0)
        seen[anchor] = n + 1
        result.add(anchor if n == 0 else f"{anchor}-{n}")
    return result


def test_github_anchor_matches_hand_computed_cases():
    assert github_anchor(" SYMOG recipe study: start x prior (issue 10)") == \
        "symog-recipe-study-start-x-prior-issue-10"
    assert github_anchor(" Step-time overhead (`benchmarks/overhead.py`)") == \
        "step-time-overhead-benchmarksoverheadpy"


def current_numbers_rows() -> list[str]:
    text = RESULTS.read_text(encoding="utf-8")
    start = text.index("## Current numbers")
    end = text.index("\n## ", start + 1)
    return [line for line in text[start:end].splitlines()
            if line.startswith("|") and not line.startswith("|---")][1:]


def test_results_opens_with_the_current_numbers_table():
    text = RESULTS.read_text(encoding="utf-8")
    first_section = re.search(r"^## .*$", text, re.M).group(0)
    assert first_section == "## Current numbers"
    assert len(current_numbers_rows()) >= 5


def test_every_current_number_links_a_section_and_a_raw_file():
    available = {"RESULTS.md": anchors(RESULTS)}
    archive = RESULTS.parent / "RESULTS_ARCHIVE.md"
    if archive.exists():
        available["RESULTS_ARCHIVE.md"] = anchors(archive)
    for row in current_numbers_rows():
        links = re.findall(r"\]\(([^)]+)\)", row)
        sections = [link for link in links if "#" in link]
        raw = [link for link in links if link.startswith("results/")]
        assert sections, f"no section link in: {row}"
        assert raw, f"no raw file link in: {row}"
        for link in sections:
            page, anchor = link.split("#", 1)
            page = page or "RESULTS.md"
            assert anchor in available[page], f"no section #{anchor} in {page}"
        for link in raw:
            assert (RESULTS.parent / link).is_file(), f"missing raw file {link}"


@pytest.mark.parametrize("path", DOCS + [ROOT / "README.md"], ids=lambda p: p.name)
def test_links_point_at_existing_files_and_sections(path):
    for target, anchor in re.findall(r"\]\(([^)#]*)(?:#([^)]*))?\)",
                                     path.read_text(encoding="utf-8")):
        if "://" in target:
            continue
        linked = (path.parent / target) if target else path
        assert linked.exists(), f"{path.name}: {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{path.name}: no section #{anchor} in {target}"
