"""Reading specs: presets, safe YAML parsing, `--set` overrides and one-paragraph error messages.

Everything a user can get wrong in a spec ends here as a `SpecError` naming the file, the key
(with its line where known) and what is allowed; nothing here imports torch.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import ValidationError

from ecacli.errors import SpecError
from ecacli.spec import ATTENTION_TYPES, FAMILIES, SPEC_ADAPTER, NetworkSpec, suggest

MAX_SPEC_BYTES = 256 * 1024
MAX_OVERRIDE_CHARS = 1000
PRESET_SUFFIX = ".yaml"


def presets_dir() -> Path:
    """Where the preset specs live: packaged inside ecacli, or specs/ beside it in a source checkout."""
    here = Path(__file__).resolve().parent
    packaged = here / "presets"
    return packaged if packaged.is_dir() else here.parent / "specs"


def preset_names() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob(f"*{PRESET_SUFFIX}"))


def preset_descriptions() -> list[tuple[str, str]]:
    """(name, one-line description) for every preset, read straight from the YAML."""
    rows = []
    for name in preset_names():
        data, _ = read_yaml(presets_dir() / f"{name}{PRESET_SUFFIX}")
        rows.append((name, str(data.get("description", ""))))
    return rows


def resolve_source(source: str | Path) -> Path:
    """A path to an existing file, or the file of the preset of that name."""
    path = Path(source)
    text = str(source)
    looks_like_path = isinstance(source, Path) or "/" in text or "\\" in text or text.endswith((".yaml", ".yml"))
    if path.exists() or looks_like_path:
        return path
    preset = presets_dir() / f"{text}{PRESET_SUFFIX}"
    if preset.is_file():
        return preset
    names = preset_names()
    raise SpecError(
        f"'{text}' is neither a spec file nor a preset.{suggest(text, names)} "
        f"Presets: {', '.join(names)} (see `ecacli specs`); or give a path to a YAML spec."
    )


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors and aliases, so an alias bomb cannot expand during validation."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.MarkedYAMLError(
                problem="YAML aliases (*name) are not allowed in specs", problem_mark=event.start_mark
            )
        event = self.peek_event()
        if getattr(event, "anchor", None):
            raise yaml.MarkedYAMLError(
                problem="YAML anchors (&name) are not allowed in specs", problem_mark=event.start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        """Refuse a key given twice: YAML would silently keep the last one."""
        first_line: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in first_line:
                raise yaml.MarkedYAMLError(
                    problem=f"key '{key}' is given twice (first at line {first_line[key]})", problem_mark=key_node.start_mark
                )
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


# YAML 1.2 reads 1e-3 as a number; PyYAML's YAML 1.1 rules would make it the string '1e-3'.
_NoAliasLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+(\.[0-9]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def _positions(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """Map each key path in a composed YAML tree to its 1-based line number."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key_path = path + (key_node.value,)
            out[key_path] = key_node.start_mark.line + 1
            _positions(value_node, key_path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[path + (i,)] = item.start_mark.line + 1
            _positions(item, path + (i,), out)
    return out


def parse_yaml_text(text: str, label: str) -> tuple[Any, dict[tuple, int]]:
    """Parse one YAML document safely; returns the data and the line of every key."""
    loader = _NoAliasLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise SpecError(f"{label}: YAML error{where}: {problem}.") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{label}: YAML error: {exc}.") from None
    finally:
        loader.dispose()
    return data, (_positions(node) if node is not None else {})


def read_yaml(path: Path) -> tuple[dict[str, Any], dict[tuple, int]]:
    """Read a spec file into a mapping, refusing anything that is not a small YAML mapping."""
    label = str(path)
    if not path.exists():
        raise SpecError(f"{label}: no such file. Give a path to a YAML spec or a preset name ({', '.join(preset_names())}).")
    if path.is_dir():
        raise SpecError(f"{label}: is a directory, not a spec file. Give a path to a YAML spec inside it.")
    size = path.stat().st_size
    if size > MAX_SPEC_BYTES:
        raise SpecError(f"{label}: {size:,} bytes is too large for a spec (the limit is {MAX_SPEC_BYTES:,} bytes).")
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise SpecError(f"{label}: binary data, not a YAML text file.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{label}: not UTF-8 text (byte {exc.start}); a spec must be a YAML text file.") from None
    data, positions = parse_yaml_text(text, label)
    if data is None:
        raise SpecError(f"{label}: the file is empty; a spec needs at least 'name' and 'depth' (or 'layers' and 'block').")
    if not isinstance(data, dict):
        raise SpecError(f"{label}: a spec must be a YAML mapping of keys to values, not a {type(data).__name__}.")
    return data, positions


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply `key.path=value` overrides (values parsed as YAML) to a copy of the spec data."""
    result = copy.deepcopy(data)
    for item in overrides:
        key, sep, value_text = item.partition("=")
        keys = key.strip().split(".")
        if not sep or not all(keys) or len(item) > MAX_OVERRIDE_CHARS:
            raise SpecError(f"--set '{item[:80]}': expected KEY.PATH=VALUE, e.g. --set attention.k_size=3.")
        value, _ = parse_yaml_text(value_text, f"--set {key}")
        target = result
        for depth, part in enumerate(keys[:-1]):
            child = target.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(keys[: depth + 1])
                raise SpecError(f"--set {key}: '{where}' is {child!r}, not a mapping, so it has no key '{keys[depth + 1]}'.")
            target = child
        target[keys[-1]] = value
        if keys == ["attention", "type"]:
            _keep_keys_of_type(target, value)
    return result


def _keep_keys_of_type(attention: dict[str, Any], type_name: Any) -> None:
    """After `--set attention.type=X`, drop the old type's options that X does not take."""
    model = ATTENTION_TYPES.get(type_name)
    if model is not None:
        for key in [k for k in attention if k not in model.model_fields]:
            del attention[key]


def _key_path(loc: tuple, data: Any) -> tuple:
    """The part of a pydantic error location that names keys of the input (union tags dropped)."""
    path: list = []
    current = data
    for part in loc:
        if isinstance(current, dict) and part in current:
            current = current[part]
            path.append(part)
        elif isinstance(current, list) and isinstance(part, int) and part < len(current):
            current = current[part]
            path.append(part)
    return tuple(path)


def _literal_hint(value: Any, expected: str) -> str:
    """A hint for a value outside a fixed set: quoted numbers, or the closest allowed word."""
    allowed = [part.strip(" '") for part in expected.replace(" or ", ",").split(",")]
    if isinstance(value, str) and value in allowed and "'" not in expected:
        return f" Write {value} as a number, without quotes."
    return suggest(str(value), allowed) if isinstance(value, str) else ""


def format_validation_error(error: ValidationError, label: str, data: dict, positions: dict[tuple, int]) -> str:
    """One paragraph: the file, then for each problem the key, its line, and what is allowed."""
    lines = [f"{label}: invalid spec:"]
    for item in error.errors(include_url=False):
        path = _key_path(item["loc"], data)
        if item["type"] == "unknown_key":
            path = path + (item["ctx"]["key"],)
        elif item["type"] == "layout" and "at" in item.get("ctx", {}):
            path = tuple(item["ctx"]["at"].split("."))  # a whole-spec rule about one key: name that key
        elif item["type"] == "arch":
            path = ("arch",)
        key = ".".join(str(p) for p in path) or "(top level)"
        line = positions.get(path)
        where = f" (line {line})" if line else ""
        message = item["msg"]
        if item["type"] == "arch":
            got = data.get("arch") if isinstance(data, dict) else None
            message += f"{suggest(str(got), list(FAMILIES))} (got {got!r})."
        elif item["type"] not in ("unknown_key", "k_size", "k_size_even", "layout", "attention_type", "missing"):
            message += f" (got {item['input']!r})."
        if item["type"] == "literal_error":
            message += _literal_hint(item["input"], item["ctx"]["expected"])
        lines.append(f"  {key}{where}: {message}")
    return "\n".join(lines)


def spec_from_data(data: dict[str, Any], label: str = "spec", positions: dict[tuple, int] | None = None) -> NetworkSpec:
    """Validate already-parsed spec data (any family, by its `arch`), turning schema errors into a SpecError."""
    try:
        return SPEC_ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, label, data, positions or {})) from None


def load_spec(source: str | Path, overrides: Iterable[str] = ()) -> NetworkSpec:
    """Load and validate a spec from a YAML path or a preset name, with optional `--set` overrides."""
    path = resolve_source(source)
    data, positions = read_yaml(path)
    overrides = list(overrides)
    label = str(path) if not overrides else f"{path} (with --set {' '.join(overrides)})"
    return spec_from_data(apply_overrides(data, overrides), label, positions)
