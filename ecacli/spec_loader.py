"""Reading specs: presets, safe YAML parsing, `--set` overrides and one-paragraph error messages.

Everything a user can get wrong in a spec ends here as a `SpecError` naming the file, the key
(with its line where known) and what is allowed; nothing here imports torch.

All YAML goes through one bounded reader (`read_yaml` for files, `parse_yaml_text` for `--set`
values and specs stored in checkpoints): regular files only, at most `MAX_SPEC_BYTES`, plain
text without control characters, nesting at most `MAX_DEPTH` levels, integers of at most
`MAX_INT_DIGITS` digits, keys that are plain scalars, no anchors, aliases or repeated keys.
"""

from __future__ import annotations

import copy
import os
import re
import stat
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import ValidationError

from ecacli.errors import SpecError, cut, describe_path, file_kind, first_line, shown, user_path
from ecacli.spec import FAMILIES, SPEC_ADAPTER, NetworkSpec, attention_model, suggest

MAX_SPEC_BYTES = 256 * 1024
MAX_OVERRIDE_CHARS = 1000
MAX_DEPTH = 16
MAX_INT_DIGITS = 100
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
    text = str(source)
    names = preset_names()
    if not text.strip() or "\0" in text:
        raise SpecError(f"{shown(text)} is not a spec: give a path to a YAML spec or a preset name ({', '.join(names)}).")
    looks_like_path = isinstance(source, Path) or "/" in text or "\\" in text or text.endswith((".yaml", ".yml"))
    if looks_like_path or os.path.lexists(text):
        return Path(source)
    if text in names:
        return presets_dir() / f"{text}{PRESET_SUFFIX}"
    raise SpecError(
        f"'{describe_path(text)}' is neither a spec file nor a preset.{suggest(text, names) if len(text) <= 64 else ''} "
        f"Presets: {', '.join(names)} (see `ecacli specs`); or give a path to a YAML spec."
    )


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader for specs: no anchors or aliases (no alias bombs), bounded nesting, scalar keys given once, bounded integers."""

    def __init__(self, text: str, max_depth: int) -> None:
        super().__init__(text)
        self.depth_left = max_depth

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
        if self.depth_left <= 0:
            raise yaml.MarkedYAMLError(
                problem=f"nested deeper than a spec can be (at most {MAX_DEPTH} levels of mappings and lists)", problem_mark=event.start_mark
            )
        self.depth_left -= 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth_left += 1

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        digits = sum(c.isdigit() for c in node.value)
        if digits > MAX_INT_DIGITS:
            raise yaml.MarkedYAMLError(
                problem=f"an integer of {digits:,} digits is too long (at most {MAX_INT_DIGITS})", problem_mark=node.start_mark
            )
        return super().construct_yaml_int(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        """Refuse a key that is a list or mapping, and a key given twice (YAML would silently keep the last one)."""
        first_line: dict = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                kind = "list" if isinstance(key_node, yaml.SequenceNode) else "mapping"
                raise yaml.MarkedYAMLError(
                    problem=f"a key must be a plain word or number, not a {kind}", problem_mark=key_node.start_mark
                )
            key = self.construct_object(key_node, deep=True)
            if key in first_line:
                raise yaml.MarkedYAMLError(
                    problem=f"key {shown(key)} is given twice (first at line {first_line[key]})", problem_mark=key_node.start_mark
                )
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)
# YAML 1.2 reads 1e-3 as a number; PyYAML's YAML 1.1 rules would make it the string '1e-3'.
_BoundedLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+(\.[0-9]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


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


def _line_and_column(text: str, offset: int) -> str:
    line = text.count("\n", 0, offset) + 1
    return f"line {line}, column {offset - (text.rfind(chr(10), 0, offset) + 1) + 1}"


def parse_yaml_text(text: str, label: str, max_depth: int = MAX_DEPTH) -> tuple[Any, dict[tuple, int]]:
    """Parse one YAML document within the spec bounds; returns the data and the line of every key."""
    if len(text) > MAX_SPEC_BYTES:
        raise SpecError(f"{label}: {len(text):,} characters is too large for a spec (the limit is {MAX_SPEC_BYTES:,}).")
    control = yaml.reader.Reader.NON_PRINTABLE.search(text)
    if control:
        raise SpecError(
            f"{label}: control character {control.group()!r} at {_line_and_column(text, control.start())}; a spec is plain text."
        )
    loader = None
    try:
        loader = _BoundedLoader(text, max_depth)
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise SpecError(f"{label}: YAML error{where}: {problem}.") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{label}: YAML error: {first_line(exc)}.") from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, (_positions(node) if node is not None else {})


def _refuse_unless_regular(fd: int, label: str, max_bytes: int, what: str) -> None:
    """Close `fd` and raise a SpecError saying what it is, unless it is a regular file of at most `max_bytes`."""
    info = os.fstat(fd)
    problem = None
    if stat.S_ISDIR(info.st_mode):
        problem = f"{label}: is a directory, not {what}. Give the path of a file inside it."
    elif not stat.S_ISREG(info.st_mode):
        problem = f"{label}: is {file_kind(info.st_mode)}, not a regular file; give the path of {what}."
    elif info.st_size > max_bytes:
        problem = f"{label}: {info.st_size:,} bytes is too large for {what} (the limit is {max_bytes:,} bytes)."
    if problem:
        os.close(fd)
        raise SpecError(problem)


def read_text_file(path: Path, max_bytes: int, what: str, hint: str = "") -> str:
    """The UTF-8 text of a regular YAML file of at most `max_bytes`; anything else is a SpecError naming the path.

    Opened without blocking and checked on the open descriptor, so a FIFO or a device
    (`/dev/zero`) is refused rather than waited on or read without end.
    """
    label = describe_path(path)
    with user_path(path, "read it", SpecError):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0))
        except FileNotFoundError:
            raise SpecError(f"{label}: no such file.{hint}") from None
        _refuse_unless_regular(fd, label, max_bytes, what)
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise SpecError(f"{label}: over {max_bytes:,} bytes is too large for {what} (the limit is {max_bytes:,} bytes).")
    if b"\x00" in raw:
        raise SpecError(f"{label}: binary data, not a YAML text file.")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{label}: not UTF-8 text (byte {exc.start}); a spec must be a YAML text file.") from None


def read_yaml(path: Path) -> tuple[dict[str, Any], dict[tuple, int]]:
    """Read a spec file into a mapping, refusing anything that is not a small YAML mapping."""
    label = describe_path(path)
    hint = f" Give a path to a YAML spec or a preset name ({', '.join(preset_names())})."
    text = read_text_file(path, MAX_SPEC_BYTES, "a spec", hint)
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
        if len(item) > MAX_OVERRIDE_CHARS:
            raise SpecError(f"--set '{cut(item, 40)}': too long for one override (at most {MAX_OVERRIDE_CHARS:,} characters).")
        key, sep, value_text = item.partition("=")
        keys = key.strip().split(".")
        if not sep or not all(keys):
            raise SpecError(f"--set '{item}': expected KEY.PATH=VALUE, e.g. --set attention.k_size=3.")
        if len(keys) >= MAX_DEPTH:
            raise SpecError(f"--set {key}: {len(keys)} levels of keys is deeper than a spec can be (at most {MAX_DEPTH - 1}).")
        value, _ = parse_yaml_text(value_text, f"--set {key}", max_depth=MAX_DEPTH - len(keys))
        target = result
        for depth, part in enumerate(keys[:-1]):
            child = target.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(keys[: depth + 1])
                raise SpecError(f"--set {key}: '{where}' is {shown(child)}, not a mapping, so it has no key '{keys[depth + 1]}'.")
            target = child
        target[keys[-1]] = value
        if keys == ["attention", "type"]:
            _keep_keys_of_type(target, value)
    return result


def _keep_keys_of_type(attention: dict[str, Any], type_name: Any) -> None:
    """After `--set attention.type=X`, drop the old type's options that X does not take."""
    model = attention_model(type_name)
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
    return suggest(value, allowed) if isinstance(value, str) and len(value) <= 64 else ""


SELF_DESCRIBING = ("unknown_key", "k_size", "k_size_even", "layout", "attention_type", "missing", "odd", "kernel_wider")


def _cut_echo(message: str, value: Any) -> str:
    """`message` with a long repr of the offending value (as a validator may echo it) cut to a readable length."""
    try:
        echoed = repr(value)
    except ValueError:  # an int too long for str()
        return message
    return message.replace(echoed, shown(value)) if len(echoed) > len(shown(value)) else message


def format_validation_error(error: ValidationError, label: str, data: dict, positions: dict[tuple, int]) -> str:
    """One paragraph: the file, then for each problem the key, its line, and what is allowed."""
    lines = [f"{label}: invalid spec:"]
    for item in error.errors(include_url=False):
        path = _key_path(item["loc"], data)
        if item["type"] == "unknown_key":
            path = path + (item["ctx"]["key"],)
        elif item["type"] == "missing" and item["loc"]:
            path = _key_path(item["loc"][:-1], data) + (item["loc"][-1],)
        elif item["type"] in ("layout", "kernel_wider") and "at" in item.get("ctx", {}):
            path = tuple(item["ctx"]["at"].split("."))  # a whole-spec rule about one key: name that key
        elif item["type"] == "arch":
            path = ("arch",)
        key = ".".join(str(p) for p in path) or "(top level)"
        line = positions.get(path) or (positions.get(path[:-1]) if item["type"] == "missing" else None)
        where = f" (line {line})" if line else ""
        message = "required, but missing." if item["type"] == "missing" else _cut_echo(item["msg"], item["input"])
        if item["type"] == "arch":
            got = data.get("arch") if isinstance(data, dict) else None
            message += f"{suggest(str(got), list(FAMILIES)) if isinstance(got, str) else ''} (got {shown(got)})."
        elif item["type"] not in SELF_DESCRIBING:
            message += f" (got {shown(item['input'])})."
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
    return spec_from_data(apply_overrides(data, overrides), with_overrides(describe_path(path), overrides), positions)


def with_overrides(label: str, overrides: list[str]) -> str:
    """'label (with --set a=1 b=2)' for messages, each override cut to a readable length."""
    if not overrides:
        return label
    return f"{label} (with --set {' '.join(cut(item, 40) for item in overrides)})"
