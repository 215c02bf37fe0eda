"""Deployment: a model written as a graph that runs without ecacli (ONNX, TorchScript, torch.export's .pt2) or as weights, checked in its runtime; graph files described.

`export_model(model_or_spec, path, format=...)` is the library call behind `ecacli export`;
`describe_graph(path)` is the one behind `ecacli inspect FILE.onnx` (and .ts, .pt2).
"""

from __future__ import annotations

from ecacli.deploy.describe import GraphDescription, GraphFileError, describe_graph
from ecacli.deploy.export import ExportedModel, ExportError, ExportRequest, Verification, export_model
from ecacli.deploy.formats import FORMATS, GRAPH_FORMATS, WEIGHT_FORMATS, format_for, graph_format_of
from ecacli.extras import MissingExtraError

__all__ = [
    "FORMATS",
    "GRAPH_FORMATS",
    "WEIGHT_FORMATS",
    "ExportError",
    "ExportRequest",
    "ExportedModel",
    "GraphDescription",
    "GraphFileError",
    "MissingExtraError",
    "Verification",
    "describe_graph",
    "export_model",
    "format_for",
    "graph_format_of",
]
