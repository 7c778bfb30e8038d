import pytest

from masklab.config.build import build_node
from masklab.errors import ConfigError
from masklab.models.mask2former import AttributeSpec, Mask2Former

NODE = {
    "type": "Mask2Former",
    "backbone": {"type": "TimmBackbone", "model_name": "resnet18", "out_indices": [1, 2, 3, 4]},
    "num_classes": 3,
    "attributes": [{"name": "color", "num_values": 4, "cost_weight": 2.0}],
    "pixel_decoder": {
        "type": "MSDeformAttnPixelDecoder",
        "conv_dim": 32,
        "mask_dim": 32,
        "num_layers": 1,
        "num_heads": 2,
    },
    "decoder": {
        "type": "Mask2FormerTransformerDecoder",
        "num_queries": 5,
        "hidden_dim": 32,
        "num_layers": 2,
        "nheads": 2,
    },
}


def test_builds_from_a_config_node_with_derived_channels() -> None:
    model = build_node(NODE, path="model")
    assert isinstance(model, Mask2Former)
    assert model.attributes == (AttributeSpec("color", 4, cost_weight=2.0),)
    assert model.decoder.heads.attribute_embed["color"].out_features == 5
    assert model.pixel_decoder.input_proj[0][0].in_channels == 512  # resnet18 stride-32 channels


def test_typo_in_child_node_is_config_error() -> None:
    node = {**NODE, "decoder": {**NODE["decoder"], "num_querys": 3}}
    with pytest.raises(ConfigError, match="model.decoder.num_querys: unknown key"):
        build_node(node, path="model")


def test_mask_piloting_from_config_keeps_types_and_checks_keys() -> None:
    piloted = {**NODE["decoder"], "mask_piloting": {"groups": 2, "label_noise": 0.5}}
    model = build_node({**NODE, "decoder": piloted}, path="model")
    piloting = model.decoder.piloting
    assert piloting is not None and piloting.groups == 2 and isinstance(piloting.groups, int)
    assert piloting.label_noise == 0.5 and piloting.label_embed.num_embeddings == 3
    assert build_node(NODE, path="model").decoder.piloting is None  # off unless configured
    typo = {**NODE["decoder"], "mask_piloting": {"group": 2}}
    with pytest.raises(ConfigError, match="model.decoder.mask_piloting.group: unknown key"):
        build_node({**NODE, "decoder": typo}, path="model")


def test_null_attributes_over_a_zoo_base_are_derived_from_the_data(tmp_path) -> None:
    from pathlib import Path

    from masklab.config.assemble import build_model
    from masklab.data.meta import AttributeMeta, DatasetMeta

    zoo = (
        Path(__file__).resolve().parents[3]
        / "configs/mask2former/mask2former_r18_1xb8-1000i_synthetic-128x128.yaml"
    )
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"_base_: {zoo}\nmodel:\n  attributes: null\n")
    meta = DatasetMeta(("a", "b"), attributes=(AttributeMeta("shade", ("light", "dark")),))
    model = build_model(cfg, meta)
    assert [(s.name, s.num_values, s.value_names) for s in model.attributes] == [
        ("shade", 2, ("light", "dark"))
    ]
    assert model.decoder.heads.attribute_embed["shade"].out_features == 3  # + the no-object slot
    # Declared attributes are still checked against the data.
    cfg.write_text(f"_base_: {zoo}\n")
    with pytest.raises(ConfigError, match=r"model.attributes: config declares \[color:4, pattern:3\]"):
        build_model(cfg, meta)
