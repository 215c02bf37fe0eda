"""ecacli's optional extras: the modules each provides and the install command that gets them (no torch).

ecacli is installed from a clone or a wheel, not from the package index, so pip cannot fetch it
by name with an extra. The advice names the extra's own requirements instead, read from the
project's pyproject.toml (a clone) or the installed distribution's metadata: the version ranges
are the ones declared and cannot drift.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import shlex
from functools import cache
from pathlib import Path

from ecacli.errors import UserError

DISTRIBUTION = "ecacli"
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"

EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "onnx": ("onnx", "onnxscript", "onnxruntime"),
    "plot": ("matplotlib",),
    "vision": ("torchvision",),
    "hub": ("huggingface_hub",),
    "timm": ("timm",),
}
"""The modules each extra provides, as they are imported."""

_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


class MissingExtraError(UserError):
    """An optional package that a request needs is not installed."""


@cache
def declared_extras() -> dict[str, tuple[str, ...]]:
    """Every extra and its requirements as declared: from pyproject.toml beside the package (a clone), else the installed metadata."""
    if PYPROJECT.is_file():
        import tomllib

        project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8")).get("project", {})
        if project.get("name") == DISTRIBUTION:
            return {extra: tuple(requirements) for extra, requirements in project.get("optional-dependencies", {}).items()}
    extras: dict[str, list[str]] = {}
    for line in importlib.metadata.requires(DISTRIBUTION) or ():
        requirement, _, marker = line.partition(";")
        found = _EXTRA_MARKER.search(marker)
        if found:
            extras.setdefault(found.group(1), []).append(requirement.strip())
    return {extra: tuple(requirements) for extra, requirements in extras.items()}


def requirements(extra: str) -> tuple[str, ...]:
    """The requirements `extra` declares, e.g. ('onnx>=1.17', 'onnxscript>=0.2', ...)."""
    declared = declared_extras()
    if extra not in declared:
        raise KeyError(f"ecacli declares no extra {extra!r}; extras: {', '.join(sorted(declared))}")
    return declared[extra]


def install_command(extra: str) -> str:
    """A pip command that installs `extra`'s requirements, working the same for an installed ecacli and a clone."""
    return "pip install " + " ".join(f'"{r}"' if shlex.quote(r) != r else r for r in requirements(extra))


def extra_providing(module: str) -> str | None:
    """The extra that provides top-level `module` (e.g. 'torchvision' -> 'vision'), or None."""
    return next((extra for extra, modules in EXTRA_MODULES.items() if module in modules), None)


def installed(module: str) -> bool:
    """Whether `module` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module set to None in sys.modules
        return False


def require(modules: tuple[str, ...], purpose: str, extra: str) -> None:
    """Refuse `purpose` when any of `modules` (of `extra`'s, `EXTRA_MODULES`) is missing, naming them and the command that installs `extra`."""
    missing = [name for name in modules if not installed(name)]
    if missing:
        raise MissingExtraError(f"{purpose} needs {', '.join(missing)}, not installed here. Install them with: {install_command(extra)}")
