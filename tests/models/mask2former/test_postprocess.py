import re

import pytest
import torch

from masklab.errors import ModelError
from masklab.models.mask2former import AttributeSpec, Mask2FormerPostProcessor
from masklab.models.mask2former.outputs import Mask2FormerLayerOutput
from masklab.structures import SampleMeta

SPEC = AttributeSpec("color", 3)


def _planted(q: int = 5) -> Mask2FormerLayerOutput:
    """Query 3: confident class 1, its own square mask and colour 2; others: weak class, colour 0."""
    cls = torch.full((1, q, 3), -2.0)
    cls[0, :, 0] = 0.0
    cls[0, 3] = torch.tensor([-6.0, 6.0, -6.0])
    masks = torch.full((1, q, 8, 8), -4.0)
    for i in range(q):
        masks[0, i, i : i + 3, 0:3] = 4.0
    masks[0, 3] = -4.0
    masks[0, 3, 4:8, 4:8] = 4.0
    attr = torch.zeros(1, q, 4)
    attr[0, :, 0] = 5.0
    attr[0, 3] = torch.tensor([-5.0, -5.0, 5.0, -5.0])
    return Mask2FormerLayerOutput(cls, masks, {"color": attr})


META = SampleMeta(ori_shape=(32, 32), img_shape=(32, 32), pad_shape=(32, 32))


def test_attributes_are_gathered_by_query_index() -> None:
    post = Mask2FormerPostProcessor(2, [SPEC], test_topk=1)
    pred = post.instance(_planted(), 0, META, (32, 32))
    assert pred.query_index.tolist() == [3]
    assert pred.labels.tolist() == [1]
    assert pred.attributes["color"].labels.tolist() == [2]
    assert pred.attributes["color"].scores[0] > 0.9
    assert pred.masks[0, 20:, 20:].all() and not pred.masks[0, :10, :10].any()
    assert pred.boxes[0].tolist() == [16.0, 16.0, 32.0, 32.0]


def test_topk_sets_the_number_of_instances() -> None:
    for k in (1, 4, 10):
        pred = Mask2FormerPostProcessor(2, [SPEC], test_topk=k).instance(_planted(), 0, META, (32, 32))
        assert len(pred) == k == pred.attributes["color"].labels.numel()


def test_no_object_attribute_drop_or_unknown() -> None:
    out = _planted()
    out.attribute_logits["color"][0, 3] = torch.tensor([-5.0, -5.0, -5.0, 5.0])  # no-object wins
    unknown = Mask2FormerPostProcessor(2, [SPEC], test_topk=1).instance(out, 0, META, (32, 32))
    assert unknown.attributes["color"].labels.tolist() == [-1]
    drop = Mask2FormerPostProcessor(2, [SPEC], test_topk=1, attribute_no_object="drop").instance(
        out, 0, META, (32, 32)
    )
    assert len(drop) == 0


def test_duplicate_suppression_keeps_the_better_scored_mask() -> None:
    out = _planted()
    out.mask_logits[0, 2] = out.mask_logits[0, 3]  # query 2 repeats query 3's object
    out.class_logits[0, 2] = torch.tensor([-6.0, 4.0, -6.0])
    plain = Mask2FormerPostProcessor(2, [SPEC], test_topk=2).instance(out, 0, META, (32, 32))
    assert sorted(plain.query_index.tolist()) == [2, 3]
    dedup = Mask2FormerPostProcessor(2, [SPEC], test_topk=2, duplicate_iou=0.5).instance(
        out, 0, META, (32, 32)
    )
    assert dedup.query_index.tolist() == [3]


def test_ranking_product_uses_attribute_probability() -> None:
    out = _planted()
    out.attribute_logits["color"][0, 3] = torch.tensor([0.0, 0.0, 0.5, 0.0])  # unsure colour
    cls_rank = Mask2FormerPostProcessor(2, [SPEC], test_topk=3).instance(out, 0, META, (32, 32))
    prod = Mask2FormerPostProcessor(2, [SPEC], test_topk=3, ranking="product").instance(
        out, 0, META, (32, 32)
    )
    i_cls = cls_rank.query_index.tolist().index(3)
    i_prod = prod.query_index.tolist().index(3)
    assert prod.scores[i_prod] < cls_rank.scores[i_cls]


def test_min_class_score_filters() -> None:
    post = Mask2FormerPostProcessor(2, [SPEC], test_topk=10, min_class_score=0.9)
    pred = post.instance(_planted(), 0, META, (32, 32))
    assert pred.query_index.tolist() == [3]


def test_panoptic_segments_do_not_overlap_and_stuff_merges() -> None:
    post = Mask2FormerPostProcessor(
        2, [SPEC], object_mask_threshold=0.5, overlap_threshold=0.0, stuff_classes=(0,)
    )
    pred = post.panoptic(_planted(), 0, META, (32, 32))
    assert int(pred.masks.sum(0).max()) == 1
    assert pred.labels.tolist().count(0) == 1  # the class-0 queries form one stuff segment
    assert 3 in pred.query_index.tolist() and 1 in pred.labels.tolist()


def test_stuff_classes_take_no_instance_even_when_topk_exceeds_thing_pairs() -> None:
    # 5 queries x 1 thing class = 5 pairs; a top-k of 10 must not fill up with class-0 (stuff) pairs.
    post = Mask2FormerPostProcessor(2, [SPEC], test_topk=10, stuff_classes=(0,))
    pred = post.instance(_planted(), 0, META, (32, 32))
    assert len(pred) == 5
    assert set(pred.labels.tolist()) == {1}


def test_panoptic_segments_carry_their_query_attributes() -> None:
    post = Mask2FormerPostProcessor(2, [SPEC], object_mask_threshold=0.5, overlap_threshold=0.0)
    pred = post.panoptic(_planted(), 0, META, (32, 32))
    assert "color" in pred.attributes
    colour = dict(zip(pred.query_index.tolist(), pred.attributes["color"].labels.tolist()))
    assert colour[3] == 2  # query 3's planted colour
    assert all(v == 0 for q, v in colour.items() if q != 3)
    assert pred.attributes["color"].scores.shape == (len(pred),)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("min_class_score", 2.0),
        ("min_attribute_score", -0.1),
        ("duplicate_iou", -1.0),
        ("duplicate_iou", "high"),
        ("object_mask_threshold", 1.5),
        ("overlap_threshold", -0.5),
        ("stuff_classes", (7,)),
        ("stuff_classes", ("sky",)),
    ],
)
def test_out_of_range_settings_are_one_line_model_errors(key: str, value: object) -> None:
    with pytest.raises(
        ModelError,
        match=rf"^model\.{key}: .*{re.escape(repr(value[0] if isinstance(value, tuple) else value))}",
    ):
        Mask2FormerPostProcessor(2, [SPEC], **{key: value})
