"""Torch modules from the torch-free description (`ecacli.arch`): each node becomes its kind's class, built with the node's arguments."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from functools import cache
from importlib import import_module
from typing import Any

from torch import nn

from ecacli.arch import KINDS, Node
from ecacli.extras import MissingExtraError, extra_providing, install_command


@cache
def module_class(kind: str) -> type[nn.Module]:
    """The torch class a kind of node is built as."""
    path, _, name = KINDS[kind].module.partition(":")
    try:
        return getattr(import_module(path), name)
    except ImportError as exc:
        package = path.partition(".")[0]
        extra = extra_providing(package)
        if extra is None:
            raise
        raise MissingExtraError(f"{name} comes from {package}, which is not installed; install it with: {install_command(extra)}") from exc


def build(node: Node) -> nn.Module:
    """The module a node describes: a Sequential of its built children, or its class called with its arguments."""
    cls = module_class(node.kind)
    if cls is nn.Sequential:
        return nn.Sequential(OrderedDict((child.name, build(child)) for child in node.children))
    return cls(**node.args)


def add_children(module: nn.Module, kind: str, args: Mapping[str, Any]) -> None:
    """Build the children the description gives a `kind` module built with `args` (in its kind's creation order), and register them in order."""
    description = KINDS[kind]
    children = description.children(args)
    built = {child.name: build(child) for child in description.creation_order(children)}
    for child in children:
        module.add_module(child.name, built[child.name])
