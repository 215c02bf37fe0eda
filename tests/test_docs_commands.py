"""Every ```bash and ```python block of the README and docs/ runs as written, in order, in a fresh folder.

The blocks run with the installed `ecacli` (and this interpreter as `python`) in one temporary
folder that holds a copy of the clone's `specs/`, so a later block finds the files an earlier one
wrote, as a reader following the pages would. Not run: set-up and install commands (virtual
environments and pip; `.ci/run` runs the README's two), and a block right after a `<!-- slow -->`
line (minutes of benchmarking, or hardware such as GPUs) or a `<!-- not run: why -->` line (the
network, say). Everything else must exit 0.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SKIP_MARKS = ("<!-- slow -->", "<!-- not run")
LANGUAGES = ("bash", "python")
INSTALLS = ("python3 -m venv ", "pip install ")
FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass(frozen=True)
class Block:
    """A fenced code block: its page, first line number, language, text and whether the line before it marks it not to run."""

    page: Path
    line: int
    language: str
    text: str
    marked: bool

    @property
    def label(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"

    @property
    def installs(self) -> bool:
        """A set-up or install command (a virtual environment, pip): what `.ci/run` does, not what the pages teach."""
        return all(line.startswith(INSTALLS) for line in self.text.splitlines())


def code_blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page, in order."""
    lines = page.read_text().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].rstrip() == "```")
        before = next((lines[i].strip() for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        blocks.append(Block(page, index + 1, opening.group(1), "\n".join(lines[index + 1 : end]), before.startswith(SKIP_MARKS)))
        index = end + 1
    return blocks


def shown_output(block: Block) -> str:
    """The ```text block right after `block` on its page (the output the page shows for it), or ''."""
    blocks = code_blocks(block.page)
    following = next((b for b in blocks if b.line > block.line), None)
    return following.text if following is not None and following.language == "text" else ""


def graph_digests(output: str) -> list[str]:
    """The `size:` and `sha256:` lines of every ONNX file an output says it wrote (ONNX files are byte for byte reproducible)."""
    lines, found, in_onnx = output.splitlines(), [], False
    for line in lines:
        if line.startswith("wrote "):
            in_onnx = "(onnx," in line
        elif in_onnx and line.strip().startswith(("size:", "sha256:")):
            found.append(line.strip())
    return found


def runnable_blocks() -> list[Block]:
    """The blocks the test runs, in reading order: README first, then docs/ by name."""
    return [b for page in PAGES for b in code_blocks(page) if b.language in LANGUAGES and not b.installs and not b.marked]


def command(block: Block) -> list[str]:
    return ["bash", "-euo", "pipefail", "-c", block.text] if block.language == "bash" else [sys.executable, "-c", block.text]


def test_the_blocks_left_out_are_installs_or_marked():
    """The extraction finds the README's tour; the README's first two code blocks are the set-up commands, which it leaves out."""
    every = [b for page in PAGES for b in code_blocks(page) if b.language == "bash"]
    readme = code_blocks(REPO / "README.md")
    assert readme[0].installs and readme[1].installs and readme[0].text.startswith("python3 -m venv")
    assert any("ecacli export r50 -o r50.onnx" in b.text for b in runnable_blocks())
    assert any(graph_digests(shown_output(b)) for b in runnable_blocks()), "the README's sample export digest is checked"
    for block in every:
        assert block.text.strip(), f"{block.label}: an empty bash block"


@pytest.fixture(scope="module")
def reader_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("reader")
    shutil.copytree(REPO / "specs", folder / "specs")
    return folder


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("block", runnable_blocks(), ids=lambda b: b.label)
def test_block_runs(block: Block, reader_folder: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", "COLUMNS": "80", "NO_COLOR": "1"}
    env.pop("ECACLI_DEBUG", None)
    result = subprocess.run(command(block), cwd=reader_folder, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{block.label} exited {result.returncode}:\n{block.text}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
    import torch

    shown = shown_output(block)
    if f"pytorch {torch.__version__}," in shown:  # the digests hold for the versions the page names
        printed = [line.strip() for line in result.stdout.splitlines()]
        missing = [line for line in graph_digests(shown) if line not in printed]
        assert not missing, f"{block.label}: the page shows {missing}, which this run did not print; paste its output:\n{result.stdout}"


if __name__ == "__main__":  # print each block's output, to paste real output into the pages
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        shutil.copytree(REPO / "specs", Path(folder) / "specs")
        wanted = sys.argv[1:]
        for block in runnable_blocks():
            if wanted and not any(word in block.text for word in wanted):
                continue
            print(f"===== {block.label}\n{block.text}\n-----", flush=True)
            env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1"}
            done = subprocess.run(command(block), cwd=folder, env=env, text=True, capture_output=True)
            print(done.stdout, f"--- stderr\n{done.stderr}[exit {done.returncode}]", flush=True)
