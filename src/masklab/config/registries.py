"""The registries of masklab, one per kind of component, and the import that fills them."""

from __future__ import annotations

import importlib

from masklab.config.registry import Registry

MODELS = Registry("model")
BACKBONES = Registry("backbone")
NECKS = Registry("neck")
HEADS = Registry("head")
LOSSES = Registry("loss")
DATASETS = Registry("dataset")
TRANSFORMS = Registry("transform")
EVALUATORS = Registry("evaluator")
HOOKS = Registry("hook")

ALL = {r.kind: r for r in (MODELS, BACKBONES, NECKS, HEADS, LOSSES, DATASETS, TRANSFORMS, EVALUATORS, HOOKS)}

# Packages whose import registers components. Each package's __init__ imports its modules.
_PACKAGES = (
    "masklab.models",
    "masklab.data",
    "masklab.evaluation",
    "masklab.engine.hooks",
)
_populated = False


def populate() -> None:
    """Import every package that registers components (once)."""
    global _populated
    if _populated:
        return
    _populated = True
    for pkg in _PACKAGES:
        importlib.import_module(pkg)


def find(name: str) -> tuple[Registry, object] | None:
    """Look ``name`` up in every registry (names are unique within a registry, not across)."""
    populate()
    for reg in ALL.values():
        if name in reg._table:  # noqa: SLF001 - same module family
            return reg, reg._table[name]
    return None
