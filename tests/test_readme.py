"""The README and docs/ as a user reads them: the set-up commands are what CI runs, links resolve, and no page speaks of how the project was built.

That every command in them runs is `test_docs_commands.py`; that docs/design.md's table is the
tail's decision is `test_tail_dispatch.py`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
FENCED = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)


def test_readme_opens_with_the_ci_setup_commands():
    """The README's first two code blocks are, character for character, the two set-up lines `.ci/run` runs."""
    blocks = FENCED.findall(README.read_text())
    first_two = [text.rstrip("\n") for _, text in blocks[:2]]
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line.startswith("python3 -m venv")]
    assert first_two == ci and len(ci) == 2
    assert "pip install torch==2.14.1 torchvision==0.29.1" in first_two[1] and 'pip install -e ".[test]"' in first_two[1]


BUILD_TALK = [
    "these machines", "this machine keeps", "on disk here", "this project's", "previous stop", "this work",
    "session", "measured here", "here (2-core", "our machine", "the lead",
]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_pages_do_not_speak_of_how_the_project_was_built(page: Path):
    text = page.read_text().lower()
    assert [phrase for phrase in BUILD_TALK if phrase in text] == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page: Path):
    """Every relative Markdown link names a file that exists (and, with #anchor, a heading on that page)."""
    for target in re.findall(r"\]\(([^)#:]+\.md)(#[^)]*)?\)", page.read_text()):
        path, anchor = target
        linked = (page.parent / path).resolve()
        assert linked.is_file(), f"{page.name} links to missing {path}"
        if anchor:
            slugs = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.*)$", linked.read_text(), re.M)}
            assert anchor[1:] in slugs, f"{page.name} links to {path}{anchor}, not a heading there"


def test_the_write_up_is_introduced_once_in_the_readme():
    """'the write-up' (the seed implementation's) is introduced once, in the README, before any other use."""
    text = README.read_text()
    assert text.count("*the write-up*") == 1
    section = text.index("## What ECA-Net is")
    assert section < text.index("write-up") < text.index("*the write-up*") < text.index("\n## ", section + 1)


def test_readme_sections_a_user_looks_for():
    headings = re.findall(r"^## (.*)$", README.read_text(), re.M)
    for wanted in ("What ECA-Net is", "Install", "A five-minute tour", "Commands", "Library", "Exit statuses", "Read more"):
        assert wanted in headings
    assert len(README.read_text().splitlines()) <= 400


def test_install_advice_works_from_a_clone():
    """Extras are installed from the clone (`pip install -e ".[onnx]"`), never as `ecacli[...]` from the package index."""
    for page in PAGES:
        assert not re.search(r"pip install ['\"]?ecacli\[", page.read_text()), page.name


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_yaml_examples_are_valid_specs(page: Path, tmp_path: Path):
    """Every ```yaml block of the pages is a spec that validates as shown (but one after a `<!-- not run -->` line)."""
    from ecacli.spec_loader import load_spec

    blocks = re.findall(r"(<!-- not run[^\n]*\n)?```(\w*)\n(.*?)^```$", page.read_text(), re.M | re.S)
    for index, (marked, language, text) in enumerate(blocks):
        if language == "yaml" and not marked:
            path = tmp_path / f"example{index}.yaml"
            path.write_text(text)
            assert load_spec(str(path)).name


def test_every_preset_is_documented():
    """docs/specs.md's preset table names every preset that ships (`ecacli.list_models()`)."""
    from ecacli import list_models

    text = (REPO / "docs" / "specs.md").read_text()
    assert [name for name in list_models() if f"`{name}`" not in text] == []
