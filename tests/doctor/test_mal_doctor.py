"""The doctor on a correct MAL config: no false errors or warnings (each row used to assume a
semantic/instance run: an LR without base_batch_size, a dataset with ``metainfo``, one image view)."""

from __future__ import annotations

from pathlib import Path

from masklab.config.assemble import resolve
from masklab.doctor import DoctorContext
from masklab.doctor.registry import all_checks
from masklab.doctor.runner import run_checks

MAL = Path(__file__).resolve().parents[2] / "configs" / "mal" / "mal_tiny_synthetic-64.yaml"


def test_a_correct_mal_config_has_no_errors_or_warnings(synth_root: Path, tmp_path: Path) -> None:
    overrides = [
        f"dataset.{key}={synth_root / sub}"
        for key, sub in (
            ("train_ann_path", "annotations/train.json"),
            ("train_img_dir", "images/train"),
            ("val_ann_path", "annotations/val.json"),
            ("val_img_dir", "images/val"),
        )
    ]
    rc = resolve(MAL, overrides)
    ctx = DoctorContext(rc, tmp_path / "doctor", steps=1, samples=2)
    rows = {f.check: f for f in run_checks(ctx, [c for c in all_checks() if c.family != "data"])}
    assert {f.status for f in rows.values()} <= {"ok", "skip"}, [
        (f.check, f.evidence) for f in rows.values() if f.status not in ("ok", "skip")
    ]
    assert "per sample x batch 8" in rows["config.lr_batch"].evidence
    assert "teacher" in rows["model.input_dependence"].evidence
    assert "BoxCropDataset" in rows["transforms.train_pipeline"].evidence
