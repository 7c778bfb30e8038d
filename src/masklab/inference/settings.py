"""Which settings ``masklab infer`` and the :class:`~masklab.inference.inferencer.Inferencer` run
with: the ``inference`` section, with ``evaluate``'s value for every key it leaves unset.

``inference`` and ``evaluate`` share the keys of :class:`~masklab.config.schema.InferenceModeConfig`
(``mode``, ``crop_size``, ``stride``, ``tta.scales``, ``tta.flip``, ``max_dets``, ``batch_size``,
``checkpoint``). The schema fills an absent section with its defaults, so a config that only says
``evaluate: {mode: slide, crop_size: ..., stride: ...}`` (the SegFormer Cityscapes configs) would infer whole
images if ``inference`` were read as resolved. "Unset" is therefore read from the loaded config
(bases merged, overrides applied): a key that is absent there, or null, takes ``evaluate``'s
value; a key the config writes wins, even when it equals the default (``inference.mode: whole``
infers whole images while evaluation slides). Evaluation and validation read ``evaluate`` only.
"""

from __future__ import annotations

import dataclasses

from masklab.config.schema import InferenceConfig, InferenceModeConfig, ResolvedConfig, TTAConfig
from masklab.errors import ConfigError

SHARED_KEYS = tuple(f.name for f in dataclasses.fields(InferenceModeConfig))
"""Keys ``inference`` takes from ``evaluate`` when the config leaves them unset (``tta`` per sub-key)."""


def _written(rc: ResolvedConfig, key: str) -> bool:
    """Whether the loaded config sets ``inference.<key>`` to something other than null."""
    return rc.config.get_path(f"inference.{key}", None) is not None


def inference_settings(rc: ResolvedConfig) -> InferenceConfig:
    """``rc.inference`` with the shared keys it leaves unset taken from ``rc.evaluate``.

    Raises:
        ConfigError: the merged settings do not hold together (e.g. ``inference.crop_size`` smaller
            than the ``evaluate.stride`` it is paired with), naming where each key came from.
    """
    inf, ev = rc.inference, rc.evaluate
    values = {key: getattr(inf if _written(rc, key) else ev, key) for key in SHARED_KEYS if key != "tta"}
    tta = TTAConfig(
        scales=list((inf if _written(rc, "tta.scales") else ev).tta.scales),
        flip=(inf if _written(rc, "tta.flip") else ev).tta.flip,
    )
    try:
        return dataclasses.replace(inf, **values, tta=tta)
    except ValueError as exc:  # e.g. inference.crop_size below evaluate.stride
        origin = ", ".join(f"{setting_source(rc, k)}" for k in ("mode", "crop_size", "stride"))
        raise ConfigError(
            f"{rc.config.source('inference')}: inference: {exc} (taken from {origin}: keys the "
            "inference section leaves unset come from evaluate)"
        ) from None


def setting_source(rc: ResolvedConfig, key: str) -> str:
    """``inference.<key>`` or ``evaluate.<key>``: the config key an effective setting came from."""
    return f"{'inference' if _written(rc, key) else 'evaluate'}.{key}"
