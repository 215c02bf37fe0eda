"""The install advice for ecacli's optional extras: the extras' own requirements, as declared, in a pip command that works from a clone and from an installed package."""

from __future__ import annotations

import re
import shlex
import sys
import tomllib

import pytest

from conftest import REPO
from ecacli import extras

DECLARED = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("-", "_")


def test_the_onnx_advice_names_its_packages_and_their_ranges():
    assert extras.install_command("onnx") == 'pip install "onnx>=1.17" "onnxscript>=0.2" "onnxruntime>=1.20" "torch>=2.6"'
    assert extras.install_command("hub") == 'pip install "huggingface_hub>=0.34"'


@pytest.mark.parametrize("extra", sorted(extras.EXTRA_MODULES))
def test_every_extra_is_declared_and_its_command_installs_its_requirements(extra):
    assert extra in DECLARED, f"pyproject.toml declares no extra {extra!r}"
    assert shlex.split(extras.install_command(extra)) == ["pip", "install", *DECLARED[extra]]
    named = {requirement_name(r) for r in DECLARED[extra]}
    assert set(extras.EXTRA_MODULES[extra]) <= named  # each module the extra provides is a distribution of the same name


def test_an_installed_package_reads_the_same_requirements_from_its_metadata(monkeypatch, tmp_path):
    """Without a pyproject.toml beside the package (a wheel), the requirements come from the distribution's metadata."""
    metadata = [f"{r}; extra == \"{extra}\"" for extra, requirements in DECLARED.items() for r in requirements]
    metadata.insert(0, "torch>=2.4")
    monkeypatch.setattr(extras, "PYPROJECT", tmp_path / "pyproject.toml")
    monkeypatch.setattr(extras.importlib.metadata, "requires", lambda name: metadata if name == "ecacli" else None)
    extras.declared_extras.cache_clear()
    try:
        assert extras.declared_extras() == {extra: tuple(requirements) for extra, requirements in DECLARED.items()}
    finally:
        extras.declared_extras.cache_clear()


def test_another_projects_pyproject_beside_the_package_is_not_read(monkeypatch, tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "other"\n[project.optional-dependencies]\nonnx = ["something-else"]\n')
    monkeypatch.setattr(extras, "PYPROJECT", tmp_path / "pyproject.toml")
    monkeypatch.setattr(extras.importlib.metadata, "requires", lambda name: ['onnx>=1.17; extra == "onnx"'])
    extras.declared_extras.cache_clear()
    try:
        assert extras.requirements("onnx") == ("onnx>=1.17",)
    finally:
        extras.declared_extras.cache_clear()


def test_a_missing_module_is_refused_with_the_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(extras.MissingExtraError) as refusal:
        extras.require(extras.EXTRA_MODULES["plot"], "--plot", "plot")
    assert str(refusal.value) == '--plot needs matplotlib, not installed here. Install them with: pip install "matplotlib>=3.7"'
    assert refusal.value.exit_code == 2


def test_no_message_names_an_extra_pip_cannot_find():
    """ecacli is not on the package index: `pip install "ecacli[...]"` works nowhere but in a clone's folder."""
    offenders = [str(path.relative_to(REPO)) for path in (REPO / "ecacli").rglob("*.py") if "ecacli[" in path.read_text()]
    assert offenders == []
