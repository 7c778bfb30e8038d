"""Shared helpers for config tests: write YAML files, import the test components module."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _components_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # `type: config_components:Name` must be importable by its dotted path.
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str], Path]:
    """``write("sub/a.yaml", text)`` writes dedented YAML under a temporary folder."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return _write
