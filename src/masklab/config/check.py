"""Checking a whole config when it is resolved: sections, component nodes, family sections.

:func:`check_config` is what every command (through :func:`masklab.config.assemble.resolve`) and
``masklab config show`` run before anything is built. It binds every key, with nothing
constructed and no data read:

- the typed sections (``runtime``, ``train``, ``evaluate``, ``inference``, ``export``);
- ``model`` and ``dataset.<split>`` nodes against their constructors' signatures (the check-only
  pass of :func:`masklab.config.build.build_node`), leaving out the keys the build derives;
- a family's own sections (MAL's TAO-shaped ``dataset`` / ``model`` and its recipe settings).

Every problem of every section comes out in one ``; ``-separated line, in config order.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from masklab.config import registries
from masklab.config.build import check_node
from masklab.config.nodes import Config
from masklab.config.schema import Problems, ResolvedConfig, collect_sections
from masklab.errors import ConfigError

__all__ = ["DATASET_DERIVED", "MODEL_DERIVED", "SPLITS", "check_config"]

SPLITS = ("train", "val", "test")
# Keys :func:`masklab.config.assemble.build_model` passes to a model that takes them (from the
# dataset metadata and ``evaluate.max_dets``): a config may leave them out.
MODEL_DERIVED = ("num_classes", "class_names", "dataset_meta", "attributes", "test_topk")
# ``dataset.root`` is passed to a dataset that takes ``root`` and leaves it out.
DATASET_DERIVED = ("root",)
# A family check's message that names a dotted key but no file: ``model.teacher_momentum: ...``.
_KEYED = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)(?:/\w+)*: ")


def check_config(cfg: Config) -> ResolvedConfig:
    """Resolve the sections of ``cfg`` and check every node of it, without building anything.

    Raises:
        ConfigError: every problem found, in one line (see the module docstring).
    """
    problems = Problems(cfg)
    rc = collect_sections(cfg, problems)
    if rc is not None:
        if rc.task == "mal":
            _check_mal(rc, problems)
        else:
            _check_nodes(rc, problems)
        _check_inference_settings(rc, problems)
    problems.raise_if_any()
    assert rc is not None
    return rc


def _check_nodes(rc: ResolvedConfig, problems: Problems) -> None:
    cfg = rc.config
    if rc.model is not None:
        for line in check_node(
            rc.model, path="model", source=rc.source, registry=registries.MODELS, deferred=MODEL_DERIVED
        ):
            problems.add("model", line)
    if rc.dataset is None:
        return
    deferred = DATASET_DERIVED if rc.dataset.get("root") is not None else ()
    for split in SPLITS:
        if split in rc.dataset:
            node = rc.dataset[split]
            for line in check_node(
                node,
                path=f"dataset.{split}",
                source=cfg.source(f"dataset.{split}"),
                registry=registries.DATASETS,
                deferred=deferred,
            ):
                problems.add("dataset", line)


def _check_inference_settings(rc: ResolvedConfig, problems: Problems) -> None:
    """``inference`` takes the keys it leaves unset from ``evaluate``; check the combination too
    (an inference stride longer than the evaluation crop it is paired with)."""
    if rc.inference is None or rc.evaluate is None:
        return
    try:
        from masklab.inference.settings import inference_settings
    except ImportError:  # the merge lives with the Inferencer; without it there is no pair to check
        return
    try:
        inference_settings(rc)
    except ConfigError as exc:
        problems.add("inference", str(exc))


def _attempt(problems: Problems, cfg: Config, section: str, check: Callable[[], Any]) -> bool:
    """Run ``check``; a ConfigError it raises is filed under the section of the key it names, with
    the file that set that key when the message names none (``model.teacher_momentum: ...``)."""
    try:
        check()
    except ConfigError as exc:
        message, match = str(exc), _KEYED.match(str(exc))
        if match:
            section = match.group(1).split(".")[0]
            message = f"{cfg.source(match.group(1))}: {message}"
        problems.add(section, message)
        return False
    return True


def _check_mal(rc: ResolvedConfig, problems: Problems) -> None:
    """MAL's TAO-shaped ``dataset`` / ``model`` sections, then the recipe's value ranges that the
    model checks when it is built (the teacher momentum, CRF settings), without building it."""
    from masklab.models.mal.config import (
        MalTrainConfig,
        check_mal_nodes,
        mal_dataset_config,
        mal_model_config,
    )

    cfg = rc.config
    dataset_ok = _attempt(problems, cfg, "dataset", lambda: mal_dataset_config(rc))
    model_ok = _attempt(problems, cfg, "model", lambda: mal_model_config(rc))
    if not (dataset_ok and model_ok and _attempt(problems, cfg, "model", lambda: check_mal_nodes(rc))):
        return
    if isinstance(rc.train, MalTrainConfig):
        _attempt(problems, cfg, "model", lambda: _check_mal_settings(rc))


def _check_mal_settings(rc: ResolvedConfig) -> None:
    from masklab.models.mal.config import mal_model_config
    from masklab.models.mal.model import check_settings  # the checks MALModel.__init__ runs

    m, t = mal_model_config(rc), rc.train
    check_settings(
        momentum=m.teacher_momentum,
        kernel_size=t.crf_kernel_size,
        zeta=t.crf_zeta,
        num_iter=t.crf_num_iter,
        low=t.crf_value_low_thres,
        high=t.crf_value_high_thres,
        mask_thres=t.mask_thres,
        mil_step=t.loss_mil_step,
        crf_step=t.loss_crf_step,
    )
