"""masklab configuration: YAML loading, typed sections, registries and building objects from nodes.

Public API::

    cfg = load_config("configs/fcn.yaml", ["train.optim.lr=1e-3"])
    resolved = check_config(cfg)                  # every section and node checked, nothing built
    resolved = resolve_sections(cfg)              # typed runtime/train/evaluate/inference/export only
    model = build_node(cfg.model, path="model")   # {type: ...} nodes -> objects
"""

from __future__ import annotations

from masklab.config.build import Derived, build_dataclass, build_model, build_node, call_bound, check_node
from masklab.config.check import check_config
from masklab.config.lazy import Lazy
from masklab.config.load import load_config, show_config
from masklab.config.nodes import Config
from masklab.config.schema import ResolvedConfig, register_schema, resolve_sections

__all__ = [
    "Config",
    "Derived",
    "Lazy",
    "ResolvedConfig",
    "build_dataclass",
    "build_model",
    "build_node",
    "call_bound",
    "check_config",
    "check_node",
    "load_config",
    "register_schema",
    "resolve_sections",
    "show_config",
]
