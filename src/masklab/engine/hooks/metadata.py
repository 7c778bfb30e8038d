"""Carry plain run metadata (class names, palette, attributes) inside every checkpoint."""

from __future__ import annotations

from typing import Any

from masklab.config.registries import HOOKS
from masklab.engine.hooks.base import Hook


@HOOKS.register()
class MetadataHook(Hook):
    """Stores ``data`` under ``payload[key]`` so a checkpoint alone can drive inference.

    The data must be plain (lists, dicts, str, numbers) so it loads under ``weights_only``.
    """

    priority = 90

    def __init__(self, data: dict[str, Any], key: str = "dataset_meta") -> None:
        self.data = dict(data)
        self.payload_key = key

    def state_dict(self) -> dict[str, Any] | None:
        return self.data

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # The metadata of the run being resumed wins only if the dataset has none of its own.
        self.data = self.data or dict(state)
