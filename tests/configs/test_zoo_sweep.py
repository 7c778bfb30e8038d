"""Every config in ``configs/``: resolves, names its pieces right, builds in a tiny size (through
overrides only) and trains two iterations on tiny synthetic input."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from masklab.config import registries
from masklab.config.assemble import build_model, build_optimizer_and_schedule, resolve
from masklab.config.load import load_config
from masklab.data.meta import DatasetMeta
from masklab.structures.batch import Batch
from masklab.structures.sample import SampleMeta

ROOT = Path(__file__).resolve().parents[2] / "configs"
ALL_CONFIGS = sorted(p for p in ROOT.rglob("*.yaml") if "_base_" not in p.parts)
# This sweep covers the semantic zoo (EncoderDecoder); other families sweep their own configs.
CONFIGS = [p for p in ALL_CONFIGS if load_config(p).get("model", {}).get("type") == "EncoderDecoder"]
NAME = re.compile(r"^[a-z0-9+]+_[a-z0-9.-]+_\d+xb\d+-\d+[ki]?_[a-z0-9]+-\d+x\d+\.yaml$")
DATASET_TYPES = {"CityscapesDataset", "ADE20KDataset", "VOCDataset", "SyntheticSemanticDataset"}
META = DatasetMeta(classes=("a", "b", "c"))


def _ids() -> Iterator[str]:
    return (str(p.relative_to(ROOT)) for p in CONFIGS)


def tiny_overrides(path: Path) -> list[str]:
    """Overrides shrinking a config's model to seconds-per-test size, keyed on what it contains."""
    cfg = load_config(path)
    model = cfg["model"]
    out = ["model.decode_head.channels=16"]
    if cfg["train"].get("schedule", {}).get("decay_after_warmup"):
        out.append("train.schedule.warmup_iters=1")  # the decay must start within the 2 iterations run
    backbone = model["backbone"]
    if backbone["type"] == "TimmBackbone":
        out.append("model.backbone.model_name=resnet10t")
    elif backbone["type"] == "MixVisionTransformer":
        out += ["model.backbone.embed_dims=8", "model.backbone.num_layers=[1, 1, 1, 1]"]
    if "auxiliary_head" in model and model["auxiliary_head"] is not None:
        out.append("model.auxiliary_head.channels=16")
    if "neck" in model and model["neck"] is not None:
        out.append("model.neck.out_channels=16")
    if "c1_channels" in model["decode_head"]:
        out.append("model.decode_head.c1_channels=8")
    if model.get("data_preprocessor", {}).get("size") is not None:
        out.append("model.data_preprocessor.size=[64, 64]")  # the crop would pad the 64 px batch
    return out


def test_the_zoo_has_every_family_for_both_datasets() -> None:
    names = {p.name for p in CONFIGS}
    for algo in ("fcn_r50-d8", "pspnet_r50-d8", "deeplabv3_r50-d8", "deeplabv3plus_r50-d8", "upernet_r50"):
        assert any(n.startswith(algo) and "cityscapes" in n for n in names), algo
        assert any(n.startswith(algo) and "ade20k" in n for n in names), algo
    for arch in ("b0", "b1", "b2"):
        for data in ("cityscapes", "ade20k"):
            assert any(n.startswith(f"segformer_mit-{arch}") and data in n for n in names), (arch, data)
    families = {p.parent.name for p in CONFIGS if "synthetic" in p.name}
    assert families >= {"fcn", "pspnet", "deeplabv3", "deeplabv3plus", "upernet", "segformer", "fpn"}


@pytest.mark.parametrize("path", CONFIGS, ids=list(_ids()))
def test_config_resolves_and_follows_the_naming_scheme(path: Path) -> None:
    assert NAME.match(path.name), (
        f"{path.name}: expected {{algo}}_{{backbone}}_{{NxbM}}-{{schedule}}_{{dataset}}-{{HxW}}"
    )
    rc = resolve(path)
    assert rc.model is not None and rc.train is not None and rc.dataset is not None
    for split in ("train", "val"):
        assert rc.dataset[split]["type"] in DATASET_TYPES
    gpus, per_gpu = map(int, re.search(r"_(\d+)xb(\d+)-", path.name).groups())
    assert rc.train.batch_size == per_gpu
    assert rc.train.optim.base_batch_size == gpus * per_gpu
    count, unit = re.search(r"xb\d+-(\d+)([ki]?)_", path.name).groups()
    assert rc.train.max_iters == int(count) * (1000 if unit == "k" else 1), "schedule in the name"
    height, width = map(int, re.search(r"-(\d+)x(\d+)\.yaml$", path.name).groups())
    crops = [t["crop_size"] for t in rc.dataset["train"].get("pipeline", []) if t["type"] == "RandomCrop"]
    if crops:  # the crop in the name is the one trained on, and batches pad to it (MMSeg's size=crop_size)
        assert [list(c) for c in crops] == [[height, width]], "crop size in the name"
        assert list(rc.model["data_preprocessor"]["size"]) == [height, width]


def _tiny_groups() -> dict[str, list[Path]]:
    """Configs grouped by their tiny model + optimizer: Cityscapes/ADE20K/synthetic variants of a
    family often shrink to the same model, which needs building and training only once."""
    groups: dict[str, list[Path]] = {}
    for path in CONFIGS:
        cfg = load_config(path, tiny_overrides(path))
        key = repr((cfg["model"], cfg["train"]["optim"]["type"]))
        groups.setdefault(key, []).append(path)
    return groups


GROUPS = list(_tiny_groups().values())


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run faster on one intra-op thread, and leave the other core to parallel work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_config_is_in_a_tiny_group() -> None:
    assert sorted(p for g in GROUPS for p in g) == CONFIGS


@pytest.mark.parametrize("paths", GROUPS, ids=[str(g[0].relative_to(ROOT)) for g in GROUPS])
def test_config_builds_tiny_and_trains_two_iterations(paths: list[Path]) -> None:
    torch.manual_seed(0)
    path = paths[0]
    rc = resolve(path, tiny_overrides(path))
    model = build_model(rc, META).train()
    optimizer, scheduler, _ = build_optimizer_and_schedule(rc, model, max_iters=2)
    metas = [SampleMeta(ori_shape=(64, 64), img_shape=(64, 64)) for _ in range(2)]
    for _ in range(2):
        batch = Batch(
            images=torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8),
            metas=metas,
            semantic=torch.randint(0, 3, (2, 64, 64)),
        )
        losses = model(model.data_preprocessor(batch, training=True), mode="loss")
        total = sum(v for k, v in losses.items() if k.startswith("loss"))
        assert torch.isfinite(total), losses
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        scheduler.step()
    assert "loss_ce" in losses
    if rc.model.get("auxiliary_head") is not None:
        assert "loss_aux_ce" in losses
    model.eval()
    preds = model(model.data_preprocessor(batch, training=False), mode="predict")
    assert tuple(preds[0].label_map.shape) == (64, 64)


def test_dataset_types_named_by_the_zoo_exist_once_registered() -> None:
    """The zoo names the data package's classes; those already registered bind the zoo's keys."""
    registries.populate()
    from masklab.config.build import _signature  # noqa: PLC2701 - the binder's own view of a signature

    for path in CONFIGS:
        rc = resolve(path)
        for split in ("train", "val"):
            node = rc.dataset[split]
            if node["type"] not in registries.DATASETS._table:  # noqa: SLF001 - being written in parallel
                continue
            params, _, var_kw = _signature(registries.DATASETS.get(node["type"]))
            unknown = [k for k in node if k != "type" and k not in params and not var_kw]
            assert not unknown, f"{path.name}: dataset.{split}: {unknown}"
