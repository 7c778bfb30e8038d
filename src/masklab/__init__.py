"""masklab: config-driven image segmentation on current PyTorch.

Public API (everything else is reachable through its module path):

- :func:`load_config` – read a YAML config with ``_base_`` inheritance and dotted overrides.
- :func:`build_model` – build the model a config describes.
- :class:`Inferencer` – three-line inference on paths, arrays or folders.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_config", "build_model", "Inferencer", "MasklabError"]

from masklab.errors import MasklabError


def __getattr__(name: str):  # lazy: `import masklab` stays cheap for the CLI's --help
    if name == "load_config":
        from masklab.config.load import load_config

        return load_config
    if name == "build_model":
        from masklab.config.build import build_model

        return build_model
    if name == "Inferencer":
        from masklab.inference.inferencer import Inferencer

        return Inferencer
    raise AttributeError(f"module 'masklab' has no attribute {name!r}")
