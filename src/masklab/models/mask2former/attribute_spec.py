"""``AttributeSpec``: the one declaration of a per-query attribute (colour, state, material, ...).

The same spec drives the head size (``num_values + 1``, the last slot is "no object"), the matcher cost,
the loss, post-processing, metrics and the COCO writer, so none of them can silently skip an attribute.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from masklab.errors import ModelError


@dataclass(frozen=True)
class AttributeSpec:
    """One attribute predicted for every query.

    Args:
        name: attribute name, as in the dataset metadata and in ``Instances.attributes``.
        num_values: number of real values V (the head has V + 1 outputs; slot V is "no object").
        loss_weight: weight of this attribute's cross-entropy loss.
        cost_weight: weight of ``-p(gt value)`` in the Hungarian matching cost. Zero while the loss
            weight is positive is refused unless ``allow_zero_cost`` is set: a matcher that ignores an
            attribute is the classic reason attribute heads never learn.
        eos_coef: class weight of the "no object" slot in this attribute's cross-entropy.
        value_names: optional names of the V values (from dataset metadata).
        allow_zero_cost: explicit opt-in for ``cost_weight == 0`` with a positive loss weight.
    """

    name: str
    num_values: int
    loss_weight: float = 1.0
    cost_weight: float = 1.0
    eos_coef: float = 0.1
    value_names: tuple[str, ...] = ()
    allow_zero_cost: bool = False

    def __post_init__(self) -> None:
        where = f"model.attributes[{self.name!r}]"
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ModelError(f"model.attributes: name {self.name!r} must be a non-empty identifier")
        if not isinstance(self.num_values, int) or self.num_values < 1:
            raise ModelError(f"{where}.num_values: expected an integer >= 1, got {self.num_values!r}")
        for key in ("loss_weight", "cost_weight", "eos_coef"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or value < 0:
                raise ModelError(f"{where}.{key}: expected a number >= 0, got {value!r}")
        if self.cost_weight == 0 and self.loss_weight > 0 and not self.allow_zero_cost:
            raise ModelError(
                f"{where}.cost_weight: 0 with loss_weight {self.loss_weight} makes the matcher ignore the "
                "attribute (it will not learn); set a positive cost_weight or allow_zero_cost: true"
            )
        names = tuple(self.value_names)
        object.__setattr__(self, "value_names", names)
        if names and len(names) != self.num_values:
            raise ModelError(f"{where}.value_names: {len(names)} names for num_values {self.num_values}")

    @property
    def num_outputs(self) -> int:
        """Head width: the V values plus the "no object" slot."""
        return self.num_values + 1

    @property
    def no_object_index(self) -> int:
        """Index of the "no object" slot in the head output."""
        return self.num_values


def as_attribute_specs(
    specs: Sequence[AttributeSpec | Mapping[str, Any]] | None,
) -> tuple[AttributeSpec, ...]:
    """Normalise a list of specs (or spec mappings from a config) and check that names are unique.

    Raises:
        ModelError: on an unknown key in a mapping or a repeated name.
    """
    allowed = {f.name for f in fields(AttributeSpec)}
    out: list[AttributeSpec] = []
    for i, spec in enumerate(specs or ()):
        if isinstance(spec, Mapping):
            unknown = sorted(set(spec) - allowed)
            if unknown:
                raise ModelError(
                    f"model.attributes[{i}]: unknown key {unknown[0]!r} (expected {sorted(allowed)})"
                )
            spec = AttributeSpec(**spec)
        if not isinstance(spec, AttributeSpec):
            raise ModelError(
                f"model.attributes[{i}]: expected an AttributeSpec or mapping, got {type(spec).__name__}"
            )
        out.append(spec)
    seen: set[str] = set()
    for spec in out:
        if spec.name in seen:
            raise ModelError(f"model.attributes: attribute name {spec.name!r} is declared twice")
        seen.add(spec.name)
    return tuple(out)
