"""``masklab demo --model instance``: wiring of the instance (Mask2Former + attributes) demo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from masklab.cli import demo
from masklab.cli.main import main


class _Stop(Exception):
    pass


def _captured_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, argv: list[str]) -> Any:
    """Run ``masklab demo`` up to the trainer build and return the resolved config it trains."""
    import masklab.config.assemble as assemble

    seen: dict[str, Any] = {}

    def fake_build_trainer(rc: Any, **kwargs: Any) -> Any:
        seen["rc"] = rc
        raise _Stop

    monkeypatch.setattr(assemble, "build_trainer", fake_build_trainer)
    with pytest.raises(_Stop):
        main(["demo", "--quick", "--no-progress", "--data-root", str(tmp_path / "d"), *argv])
    return seen["rc"]


def test_model_instance_trains_the_mask2former_attribute_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rc = _captured_config(monkeypatch, tmp_path, ["--model", "instance"])
    assert rc.task == "instance"
    assert rc.model["type"] == "Mask2Former"
    assert [a["name"] for a in rc.model["attributes"]] == ["color", "pattern"]
    assert Path(str(rc.source)).name == Path(demo.INSTANCE_CONFIG).name


def test_default_model_stays_semantic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rc = _captured_config(monkeypatch, tmp_path, [])
    assert rc.task != "instance"
    assert Path(str(rc.source)).name == Path(demo.DEMO_CONFIG).name


def test_summary_reports_ap_attribute_accuracy_and_joint_ap() -> None:
    metrics = {"segm/AP": 0.61, "attr/color/acc": 0.95, "attr/pattern/acc": 0.9, "joint/AP": 0.5}
    line = demo.summary("instance", metrics)
    assert line == "val segm AP 0.610, color acc 0.950, pattern acc 0.900, joint AP 0.500"
    assert demo.summary("semantic", {"mIoU": 0.7}) == "val mIoU 0.700"
