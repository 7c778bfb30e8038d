import pytest
from torch import nn

from masklab.errors import ModelError
from masklab.models.mask2former import AttributeSpec
from masklab.models.mask2former.attribute_spec import as_attribute_specs
from masklab.models.mask2former.heads import Mask2FormerHeads


def test_head_width_has_no_object_slot() -> None:
    spec = AttributeSpec("color", 4)
    assert spec.num_outputs == 5 and spec.no_object_index == 4


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "color", "num_values": 0},
        {"name": "color", "num_values": 3, "loss_weight": -1.0},
        {"name": "color", "num_values": 3, "cost_weight": 0.0},
        {"name": "color", "num_values": 2, "value_names": ("red",)},
        {"name": "", "num_values": 2},
    ],
)
def test_invalid_specs_raise_one_line(kwargs: dict) -> None:
    with pytest.raises(ModelError) as err:
        AttributeSpec(**kwargs)
    assert "\n" not in str(err.value)


def test_zero_cost_allowed_only_explicitly() -> None:
    spec = AttributeSpec("color", 3, cost_weight=0.0, allow_zero_cost=True)
    assert spec.cost_weight == 0.0
    assert AttributeSpec("color", 3, cost_weight=0.0, loss_weight=0.0).loss_weight == 0.0


def test_duplicate_names_and_unknown_keys() -> None:
    with pytest.raises(ModelError, match="declared twice"):
        as_attribute_specs([AttributeSpec("a", 2), {"name": "a", "num_values": 3}])
    with pytest.raises(ModelError, match="unknown key 'num_vals'"):
        as_attribute_specs([{"name": "a", "num_vals": 3}])
    specs = as_attribute_specs([{"name": "a", "num_values": 3}])
    assert specs[0] == AttributeSpec("a", 3)


def test_head_of_wrong_width_is_loud() -> None:
    heads = Mask2FormerHeads(8, 8, 3, [AttributeSpec("color", 4)])
    heads.attribute_embed["color"] = nn.Linear(8, 4)  # forgot the no-object slot
    with pytest.raises(ModelError, match=r"head has 4 outputs, expected num_values 4 \+ 1"):
        heads.validate()
    heads.attribute_embed["color"] = nn.Linear(8, 5)
    heads.class_embed = nn.Linear(8, 3)
    with pytest.raises(ModelError, match="class head has 3 outputs"):
        heads.validate()
