"""build_node / call_bound / Lazy: binding config nodes to constructor signatures."""

from __future__ import annotations

import dataclasses
import pathlib

import pytest
from torch import nn

from masklab.config import Derived, Lazy, build_dataclass, build_node, call_bound, load_config, registries
from masklab.config.nodes import Config
from masklab.config.registry import Registry
from masklab.errors import ConfigError, DataError

E = "config_components:Everything"


def build_everything(**keys):
    return build_node({"type": E, **keys}, path="obj", source="x.yaml")


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("i", 3, 3),
        ("f", 2, 2.0),
        ("f", 0.5, 0.5),
        ("s", "txt", "txt"),
        ("b", True, True),
        ("none", None, None),
        ("opt", None, None),
        ("opt", 4, 4),
        ("union", "x", "x"),
        ("union", 5, 5),
        ("pipe", [1, 2.5], [1.0, 2.5]),
        ("pipe", 3, 3.0),
        ("lit", "b", "b"),
        ("ints", [1, 2], [1, 2]),
        ("var_tuple", [1, 2, 3], (1, 2, 3)),
        ("pair", [1, "a"], (1, "a")),
        ("table", {"a": 1, "b": 0.5}, {"a": 1.0, "b": 0.5}),
        ("seq", ["a", "b"], ["a", "b"]),
        ("mapping", {"k": 1}, {"k": 1}),
        ("anything", {"free": [1]}, {"free": [1]}),
        ("path", "some/dir", pathlib.Path("some/dir")),
    ],
)
def test_supported_annotations_accept_good_values(key, value, expected):
    obj = build_everything(**{key: value})
    got = getattr(obj, key)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("i", True, "expected int, got bool True"),
        ("i", 1.5, "expected int, got float 1.5"),
        ("f", "1e-3x", "expected float, got str"),
        ("f", False, "expected float, got bool"),
        ("s", 3, "expected str, got int 3"),
        ("b", 1, "expected bool, got int 1"),
        ("none", 0, "expected None, got int 0"),
        ("opt", "x", r"expected int \| None, got str 'x'"),
        ("union", 1.5, r"expected int \| str, got float 1.5"),
        ("lit", "c", "expected one of 'a', 'b', got str 'c'"),
        ("ints", [1, "two"], r"obj\.ints\.1: expected int, got str 'two'"),
        ("ints", 3, r"expected list\[int\] \| None, got int 3"),
        ("var_tuple", [1, None], r"obj\.var_tuple\.1: expected int, got NoneType"),
        ("pair", [1], r"expected tuple\[int, str\] \(2 items\), got 1 items"),
        ("pair", [1, 2], r"obj\.pair\.1: expected str, got int 2"),
        ("table", {"a": "x"}, r"obj\.table\.a: expected float, got str 'x'"),
        ("seq", "abc", r"expected Sequence\[str\], got str 'abc'"),
        ("mapping", [1], r"expected Mapping\[str, int\] \| None"),
        ("path", 3, r"expected Path \| None, got int 3"),
    ],
)
def test_supported_annotations_reject_bad_values(key, value, message):
    with pytest.raises(ConfigError, match=rf"^x\.yaml: (obj[\w.]*: )?.*{message}"):
        build_everything(**{key: value})


def test_dataclass_param_from_mapping_without_type():
    obj = build_everything(loss={"weight": 2})
    assert obj.loss.weight == 2.0 and obj.loss.name == "loss_ce"
    with pytest.raises(
        ConfigError, match=r"obj\.loss\.wieght: unknown key for Loss; did you mean 'weight'\?"
    ):
        build_everything(loss={"wieght": 2})


def test_all_errors_of_a_node_at_once_with_suggestions():
    node = {"type": E, "i": "one", "lit": "z", "flaot": 1.0, "seq": "s"}
    with pytest.raises(ConfigError) as err:
        build_node(node, path="obj", source="x.yaml")
    parts = str(err.value).split("; x.yaml: ")
    assert len(parts) == 4, str(err.value)
    assert "obj.i: expected int" in str(err.value)
    assert "obj.lit: expected one of" in str(err.value)
    assert "obj.seq: expected Sequence[str]" in str(err.value)
    assert "obj.flaot: unknown key for Everything" in str(err.value)
    assert "\n" not in str(err.value)


def test_nearest_key_suggestion():
    with pytest.raises(ConfigError, match=r"obj\.optt: unknown key for Everything; did you mean 'opt'\?"):
        build_everything(optt=1)


MODEL = {
    "type": "config_components:Model",
    "backbone": {"type": "config_components:Backbone", "out_channels": 5},
    "decode_head": {"type": "config_components:Head", "channels": 7},
    "aux_heads": [{"type": "config_components:Head"}, {"type": "config_components:Head", "channels": 2}],
    "num_classes": 3,
}


def test_nested_modules_lazy_and_list_of_lazy():
    model = build_node(MODEL, path="model")
    assert isinstance(model.backbone, nn.Module) and model.backbone.out_channels == 5
    assert model.decode_head.conv.in_channels == 5 and model.decode_head.conv.out_channels == 3
    assert model.decode_head.channels == 7
    assert [h.channels for h in model.aux_heads] == [4, 2]


def test_lazy_typos_fail_before_any_constructor_runs(monkeypatch):
    calls = []
    import config_components

    original = config_components.Backbone.__init__

    def spy(self, *a, **k):
        calls.append(1)
        original(self, *a, **k)

    monkeypatch.setattr(config_components.Backbone, "__init__", spy)
    bad = {**MODEL, "decode_head": {"type": "config_components:Head", "chanels": 7}}
    with pytest.raises(
        ConfigError, match=r"model\.decode_head\.chanels: unknown key for Head; did you mean 'channels'\?"
    ):
        build_node(bad, path="model")
    assert calls == []


def test_lazy_completion_checks_types_and_conflicts():
    lazy = Lazy(__import__("config_components").Head, {"num_classes": 5}, path="model.head", source="m.yaml")
    head = lazy(in_channels=2)
    assert head.conv.out_channels == 5
    with pytest.raises(
        ConfigError, match=r"m\.yaml: model\.head\.num_classes: config says 5 but the caller derives 8"
    ):
        lazy(in_channels=2, num_classes=8)
    with pytest.raises(
        ConfigError, match=r"m\.yaml: model\.head: missing required key 'in_channels' for Head"
    ):
        lazy()


def test_lazy_node_restating_derived_value_differently():
    bad = {**MODEL, "decode_head": {"type": "config_components:Head", "in_channels": 9}}
    with pytest.raises(
        ConfigError, match=r"model\.decode_head\.in_channels: config says 9 but the caller derives 5"
    ):
        build_node(bad, path="model")
    same = {**MODEL, "decode_head": {"type": "config_components:Head", "in_channels": 5}}
    assert build_node(same, path="model").decode_head.conv.in_channels == 5


def test_wrong_class_for_annotation():
    bad = {**MODEL, "backbone": {"type": "config_components:Head", "in_channels": 1, "num_classes": 1}}
    with pytest.raises(
        ConfigError, match=r"model\.backbone\.type: 'config_components:Head' is not a Backbone"
    ):
        build_node(bad, path="model")


def test_protocol_annotations_are_checked_by_their_members():
    # Protocol annotations without @runtime_checkable made isinstance() raise a TypeError traceback.
    P = "config_components:UsesProtocols"
    obj = build_node(
        {"type": P, "scorer": {"type": "config_components:Doubler", "factor": 3},
         "named": {"type": "config_components:Tag", "name": "x"}},
        path="p",
    )  # fmt: skip
    assert obj.scorer(2.0) == 6.0 and obj.named.describe() == "x"
    with pytest.raises(ConfigError, match=r"^p\.scorer\.type: 'config_components:Tag' is not a Scorer"):
        build_node({"type": P, "scorer": {"type": "config_components:Tag"}}, path="p")
    with pytest.raises(ConfigError, match=r"^p\.named\.type: 'config_components:Doubler' is not a Named"):
        build_node({"type": P, "named": {"type": "config_components:Doubler"}}, path="p")
    with pytest.raises(ConfigError, match=r"^p\.scorer: expected Scorer \| None, got int 3$"):
        build_node({"type": P, "scorer": 3}, path="p")


def test_ohem_sampler_from_config():
    """docs/semantic.md's sampler node binds (decode_head.sampler is a PixelSampler Protocol);
    values OHEM cannot use are one-line errors naming the key."""
    from masklab.errors import ModelError
    from masklab.models.losses import OHEMPixelSampler

    head = {"type": "FCNHead", "in_channels": [8], "channels": 8, "num_classes": 3, "num_convs": 1,
            "sampler": {"type": "OHEMPixelSampler", "thresh": 0.7, "min_kept": 100000}}  # fmt: skip
    built = build_node(head, path="model.decode_head", source="ohem.yaml")
    assert isinstance(built.sampler, OHEMPixelSampler)
    assert (built.sampler.thresh, built.sampler.min_kept) == (0.7, 100000)
    for key, value, message in [
        ("thresh", 1.5, r"^OHEMPixelSampler\.thresh: expected a probability in \(0, 1\], got 1\.5$"),
        ("thresh", 0.0, r"^OHEMPixelSampler\.thresh: expected a probability in \(0, 1\], got 0\.0$"),
        ("min_kept", 0, r"^OHEMPixelSampler\.min_kept: expected >= 1, got 0$"),
        ("min_kept", -5, r"^OHEMPixelSampler\.min_kept: expected >= 1, got -5$"),
    ]:
        bad = {**head, "sampler": {**head["sampler"], key: value}}
        with pytest.raises(ModelError, match=message):
            build_node(bad, path="model.decode_head", source="ohem.yaml")
    bad = {**head, "sampler": {**head["sampler"], "thresh": "high"}}
    with pytest.raises(
        ConfigError, match=r"ohem\.yaml: model\.decode_head\.sampler\.thresh: expected float \| None, got str"
    ):
        build_node(bad, path="model.decode_head", source="ohem.yaml")


def test_module_param_needs_a_type_node():
    bad = {**MODEL, "backbone": {"out_channels": 5}}
    with pytest.raises(ConfigError, match=r"model\.backbone: expected a \{type: \.\.\.\} node for Backbone"):
        build_node(bad, path="model")


def test_provided_values_and_conflicts():
    node = {"type": "config_components:Head", "in_channels": 2, "num_classes": 5}
    with pytest.raises(
        ConfigError, match=r"h\.yaml: head\.num_classes: config says 5 but the dataset metadata has 8 classes"
    ):
        build_node(
            node, path="head", source="h.yaml", num_classes=Derived(8, "the dataset metadata has 8 classes")
        )
    head = build_node({"type": "config_components:Head", "in_channels": 2}, path="head", num_classes=8)
    assert head.conv.out_channels == 8
    assert build_node(node, path="head", num_classes=5).conv.out_channels == 5
    with pytest.raises(ConfigError, match=r"head: Head does not take 'depth'"):
        build_node(node, path="head", depth=3)


def test_missing_required_and_var_kwargs():
    with pytest.raises(ConfigError, match=r"f: missing required key 'a' for Flexible"):
        build_node({"type": "config_components:Flexible"}, path="f")
    obj = build_node({"type": "config_components:Flexible", "a": 1, "b": [2], "c": {"d": 3}}, path="f")
    assert obj.a == 1 and obj.extra == {"b": [2], "c": {"d": 3}}


def test_factory_function_by_dotted_path():
    assert build_node({"type": "config_components:make_pair", "left": 3}, path="p") == (3, 1)


def test_bad_dotted_paths():
    with pytest.raises(ConfigError, match=r"x\.yaml: p\.type: cannot import 'no_such_module_xyz'"):
        build_node({"type": "no_such_module_xyz:Thing"}, path="p", source="x.yaml")
    with pytest.raises(ConfigError, match=r"p\.type: module 'config_components' has no attribute 'Nope'"):
        build_node({"type": "config_components:Nope"}, path="p")
    with pytest.raises(ConfigError, match=r"p: missing 'type'"):
        build_node({"a": 1}, path="p")


def test_constructor_errors():
    # The error names the key the constructor's message starts with (its value is already in it).
    with pytest.raises(ConfigError, match=r"^x\.yaml: p\.mode: mode 'value' is not supported$"):
        build_node({"type": "config_components:Picky", "mode": "value"}, path="p", source="x.yaml")
    with pytest.raises(DataError, match=r"^labels\.png: label 9 out of range$"):
        build_node({"type": "config_components:Picky", "mode": "data"}, path="p", source="x.yaml")


def test_registry_lookup_with_suggestion(monkeypatch):
    # Filling the global registries imports every model package; this test needs none of them.
    monkeypatch.setattr(registries, "populate", lambda: None)
    reg = Registry("widget")

    @reg.register()
    class Widget:
        def __init__(self, size: int = 1) -> None:
            self.size = size

    assert build_node({"type": "Widget", "size": 2}, path="w", registry=reg).size == 2
    with pytest.raises(
        ConfigError, match=r"x\.yaml: w\.type: unknown widget type 'Widgte'; did you mean 'Widget'\?"
    ):
        build_node({"type": "Widgte"}, path="w", source="x.yaml", registry=reg)


def test_errors_name_the_file_that_set_each_key(write):
    write(
        "base.yaml",
        "model:\n  type: config_components:Model\n  backbone: {type: config_components:Backbone}\n",
    )
    top = write(
        "top.yaml",
        "_base_: base.yaml\nmodel:\n  backbone: {out_chanels: 3}\n  decode_head: {type: config_components:Head}\n",
    )
    cfg = load_config(top, ["model.num_classes=two"])
    with pytest.raises(ConfigError) as err:
        build_node(cfg.model, path="model")
    msg = str(err.value)
    assert f"{top}: model.backbone.out_chanels: unknown key for Backbone; did you mean 'out_channels'?" in msg
    assert "<override>: model.num_classes: expected int, got str 'two'" in msg


def test_lazy_conflict_names_the_file_that_set_the_key(write):
    """A derived key restated in a child file (or an override) is blamed on that file, not on the
    base that set the node's ``type``."""
    write(
        "base.yaml",
        "model:\n  type: config_components:Model\n  backbone: {type: config_components:Backbone, out_channels: 5}\n"
        "  decode_head: {type: config_components:Head}\n",
    )
    top = write("top.yaml", "_base_: base.yaml\nmodel:\n  decode_head: {in_channels: 9}\n")
    with pytest.raises(ConfigError, match=rf"^{top}: model\.decode_head\.in_channels: config says 9"):
        build_node(load_config(top).model, path="model")
    cfg = load_config(top, ["model.decode_head.in_channels=8"])
    with pytest.raises(ConfigError, match=r"^<override>: model\.decode_head\.in_channels: config says 8"):
        build_node(cfg.model, path="model")


def test_call_bound_checks_then_calls():
    import config_components

    assert call_bound(config_components.make_pair, {"left": 1, "right": 2}, path="p") == (1, 2)
    with pytest.raises(ConfigError, match=r"p\.left: expected int, got str 'a'"):
        call_bound(config_components.make_pair, {"left": "a"}, path="p")


def test_no_suggestion_for_a_merely_similar_key():
    from masklab.config.suggest import closest

    # num_convs (an FCNHead key) on another head is not a misspelt num_classes (ratio 0.6).
    assert closest("num_convs", ["in_channels", "num_classes", "channels"]) is None
    assert closest("chanels", ["in_channels", "num_classes", "channels"]) == "channels"
    with pytest.raises(ConfigError) as err:
        build_node({"type": "config_components:Head", "num_convs": 2}, path="h", in_channels=3, num_classes=2)
    assert "h.num_convs: unknown key for Head (valid keys: in_channels, num_classes, channels)" in str(
        err.value
    )
    assert "did you mean" not in str(err.value)


@dataclasses.dataclass
class _Ordered:
    a: int
    b: int

    def __post_init__(self) -> None:
        if self.a <= self.b + 1:
            raise ValueError("a must exceed b")


def test_constructor_check_blames_the_key_it_names():
    # A rule over several keys blames the one an override set, else the one it leads with, and
    # shows that key's value (the message did not).
    cfg = Config({"a": 1, "b": 0}, {"a": "x.yaml", "b": "<override>"}, filename="x.yaml")
    with pytest.raises(ConfigError, match=r"^<override>: p\.b: a must exceed b \(got 0\)$"):
        build_dataclass(_Ordered, cfg, path="p")
    cfg = Config({"a": 1, "b": 0}, {"a": "x.yaml", "b": "y.yaml"}, filename="x.yaml")
    with pytest.raises(ConfigError, match=r"^x\.yaml: p\.a: a must exceed b \(got 1\)$"):
        build_dataclass(_Ordered, cfg, path="p")
