"""load_config: _base_ merging, _delete_, type replacement, overrides, provenance, safety."""

from __future__ import annotations

import pytest

from masklab.config import Config, load_config
from masklab.errors import ConfigError


def test_bases_merge_depth_first_later_wins_lists_replace(write):
    write("a.yaml", "x: {p: 1, q: [1, 2, 3]}\nonly_a: 1\n")
    write("b.yaml", "_base_: a.yaml\nx: {p: 2, r: 1}\n")
    write("c.yaml", "x: {p: 3, s: 1}\n")
    top = write("top.yaml", "_base_: [b.yaml, c.yaml]\nx: {q: [9]}\n")
    cfg = load_config(top)
    # b (with its base a) first, then c over it, then the file itself.
    assert cfg.to_dict() == {"x": {"p": 3, "q": [9], "r": 1, "s": 1}, "only_a": 1}


def test_delete_replaces_base_mapping(write):
    write("base.yaml", "model: {type: M, head: {a: 1, b: 2}}\n")
    top = write("top.yaml", "_base_: base.yaml\nmodel:\n  head: {_delete_: true, c: 3}\n")
    assert load_config(top).to_dict() == {"model": {"type": "M", "head": {"c": 3}}}


def test_changing_type_replaces_the_node(write):
    write("base.yaml", "head: {type: FCNHead, num_convs: 2, channels: 8}\n")
    top = write("top.yaml", "_base_: base.yaml\nhead: {type: PSPHead, pool_scales: [1, 2]}\n")
    assert load_config(top).to_dict()["head"] == {"type": "PSPHead", "pool_scales": [1, 2]}


def test_same_type_merges(write):
    write("base.yaml", "head: {type: FCNHead, num_convs: 2}\n")
    top = write("top.yaml", "_base_: base.yaml\nhead: {type: FCNHead, channels: 4}\n")
    assert load_config(top).to_dict()["head"] == {"type": "FCNHead", "num_convs": 2, "channels": 4}


def test_base_paths_are_relative_to_the_including_file(write):
    write("_base_/models/m.yaml", "model: {type: M}\n")
    write("_base_/schedules/s.yaml", "_base_: ../models/m.yaml\ntrain: {batch_size: 2}\n")
    top = write("fam/deep/x.yaml", "_base_: ../../_base_/schedules/s.yaml\n")
    assert load_config(top).to_dict() == {"model": {"type": "M"}, "train": {"batch_size": 2}}


def test_base_cycle_is_an_error(write):
    write("a.yaml", "_base_: b.yaml\n")
    write("b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match=r"_base_ cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_config(write("a.yaml", "_base_: b.yaml\n"))


def test_missing_base_names_the_including_file(write):
    top = write("top.yaml", "_base_: nope.yaml\n")
    with pytest.raises(ConfigError, match=r"top\.yaml: _base_: 'nope\.yaml' not found"):
        load_config(top)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"absent\.yaml: config file not found"):
        load_config(tmp_path / "absent.yaml")


def test_invalid_yaml_names_file_and_line(write):
    bad = write("bad.yaml", "a: 1\nb: [1, 2\nc: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: line \d+: invalid YAML"):
        load_config(bad)


def test_python_tags_are_refused(write):
    bad = write("evil.yaml", "a: 1\nb: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match=r"evil\.yaml: line 2: tag .*python/object/apply.* not allowed"):
        load_config(bad)
    custom = write("custom.yaml", "a: !include other.yaml\n")
    with pytest.raises(ConfigError, match=r"custom\.yaml: line 1: tag '!include' is not allowed"):
        load_config(custom)


def test_top_level_must_be_a_mapping(write):
    with pytest.raises(ConfigError, match=r"list\.yaml: a config must be a mapping"):
        load_config(write("list.yaml", "- 1\n- 2\n"))


def test_exponent_floats_without_dot(write):
    cfg = load_config(write("x.yaml", "lr: 1e-3\nname: '1e-3'\n"))
    assert cfg.lr == pytest.approx(1e-3) and isinstance(cfg.lr, float)
    assert cfg.name == "1e-3"


@pytest.mark.parametrize(
    ("override", "path", "expected"),
    [
        ("train.optim.lr=1e-3", "train.optim.lr", 1e-3),
        ("train.sizes=[1,2]", "train.sizes", [1, 2]),
        ("train.name=null", "train.name", None),
        ("train.flag=true", "train.flag", True),
        ("train.sizes.0=7", "train.sizes", [7, 5]),
        ("train.new.deep=x", "train.new.deep", "x"),
        ("train.optim={type: SGD}", "train.optim", {"type": "SGD"}),
    ],
)
def test_overrides(write, override, path, expected):
    top = write("x.yaml", "train: {optim: {lr: 0.1, type: AdamW}, sizes: [3, 5], name: a, flag: false}\n")
    value = load_config(top, [override]).get_path(path)
    assert (value.to_dict() if isinstance(value, Config) else value) == expected
    assert load_config(top, [override]).source(override.partition("=")[0]) == "<override>"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.optim.lr", r"override 'train\.optim\.lr': expected key\.sub=value"),
        ("=3", r"override '=3': expected key\.sub=value"),
        ("a..b=1", r"expected key\.sub=value"),
        ("train.x=[1,", r"override 'train\.x=\[1,': the value is not valid YAML"),
        ("train.flag.deep=1", r"override 'train\.flag\.deep=1': train\.flag is bool False, not a mapping"),
        ("train.sizes.5=1", r"train\.sizes is a list of 2 items; '5' is not a valid index"),
        ("train.sizes.k=1", r"'k' is not a valid index"),
    ],
)
def test_bad_overrides(write, override, message):
    top = write("x.yaml", "train: {sizes: [3, 5], flag: false}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(top, [override])


def test_override_mapping_with_delete_key(write):
    """MMEngine's ``_delete_`` in a mapping override: true replaces (as any mapping override does),
    false merges into the node as a child file would; the key itself never reaches the config."""
    top = write("x.yaml", "model: {head: {type: H, a: 1, b: {c: 2, d: 3}}}\n")
    replaced = load_config(top, ["model.head={_delete_: true, type: G, e: 5}"])
    assert replaced.to_dict()["model"]["head"] == {"type": "G", "e": 5}
    merged = load_config(top, ["model.head={_delete_: false, a: 7, b: {c: 8}}"])
    assert merged.to_dict()["model"]["head"] == {"type": "H", "a": 7, "b": {"c": 8, "d": 3}}
    assert merged.source("model.head.a") == "<override>" and merged.source("model.head.b.c") == "<override>"
    assert merged.source("model.head.b.d") == str(top)
    with pytest.raises(ConfigError, match=r"model\.head\._delete_: expected true or false, got 3"):
        load_config(top, ["model.head={_delete_: 3, a: 1}"])


def test_override_with_delete_false_follows_file_merging(write):
    """``_delete_: false`` merges as a child file would: a changed ``type`` still replaces the node
    (the old component's keys would not bind to the new one), and a missing node is created."""
    top = write("x.yaml", "model: {head: {type: H, a: 1}}\n")
    cfg = load_config(
        top, ["model.head={_delete_: false, type: G, e: 5}", "model.neck={_delete_: false, k: 1}"]
    )
    assert cfg.to_dict()["model"] == {"head": {"type": "G", "e": 5}, "neck": {"k": 1}}
    assert cfg.source("model.head.e") == "<override>" and cfg.source("model.neck.k") == "<override>"


def test_provenance_follows_merges_and_overrides(write):
    base = write("base.yaml", "model: {type: A, x: 1, head: {type: H, k: 1}}\ntrain: {lr: 1}\n")
    top = write("top.yaml", "_base_: base.yaml\nmodel: {x: 2, head: {type: G}}\n")
    cfg = load_config(top, ["train.lr=3"])
    assert cfg.source("model.x") == str(top)
    assert cfg.source("model.type") == str(base)
    assert cfg.source("model.head.type") == str(top)
    # The replaced head node no longer remembers the base's keys.
    assert "model.head.k" not in cfg.provenance()
    assert cfg.source("train.lr") == "<override>"
    # Sections are views that keep provenance and report it relative to themselves.
    assert cfg.model.source("x") == str(top)
    assert cfg["model"]["head"].source("type") == str(top)


def test_access_and_dump_round_trip(write, tmp_path):
    top = write("x.yaml", "a: {b: {c: [1, {d: 2}]}}\ns: '1e-3'\nf: 1e-3\nt: ~\n")
    cfg = load_config(top)
    assert cfg.a.b.c[1]["d"] == 2
    assert cfg.get_path("a.b.c.1.d") == 2
    assert cfg.get_path("a.zz", default=None) is None
    with pytest.raises(ConfigError, match=r"a\.zz: no such key"):
        cfg.get_path("a.zz")
    with pytest.raises(AttributeError):
        _ = cfg.missing
    out = tmp_path / "dumped" / "config.yaml"
    cfg.dump(out)
    again = load_config(out)
    assert again.to_dict() == cfg.to_dict()
    assert isinstance(again.s, str) and isinstance(again.f, float)


def test_to_dict_is_a_copy(write):
    cfg = load_config(write("x.yaml", "a: {b: 1}\n"))
    d = cfg.to_dict()
    d["a"]["b"] = 2
    assert cfg.a.b == 1


def test_on_off_yes_no_stay_strings_true_false_are_booleans(tmp_path) -> None:
    from masklab.config.load import load_config

    path = tmp_path / "c.yaml"
    path.write_text("a: off\nb: yes\nc: true\nd: False\ne: 'on'\n")
    cfg = load_config(path, ["f=off", "g=true"])
    assert cfg.to_dict() == {"a": "off", "b": "yes", "c": True, "d": False, "e": "on", "f": "off", "g": True}
    assert load_config(path).pretty().count("off") >= 1  # dumps back as a string the loader reads the same


def test_overriding_type_replaces_the_node_as_a_file_would(write):
    write("base.yaml", "model: {type: M, head: {type: FCNHead, num_convs: 2, channels: 8}}\n")
    top = write("top.yaml", "_base_: base.yaml\n")
    cfg = load_config(top, ["model.head.type=PSPHead"])
    assert cfg.to_dict()["model"]["head"] == {"type": "PSPHead"}  # num_convs does not carry over
    assert cfg.source("model.head") == "<override>" and cfg.source("model.head.channels") == "<override>"
    # The command line is one layer: keys it sets survive a type change, before or after it.
    for overrides in (
        ["model.head.type=PSPHead", "model.head.channels=16"],
        ["model.head.channels=16", "model.head.type=PSPHead"],
    ):
        cfg = load_config(top, overrides)
        assert cfg.to_dict()["model"]["head"] == {"type": "PSPHead", "channels": 16}, overrides
        assert cfg.source("model.head.channels") == "<override>"
    # The same type is an ordinary key: the node's other keys stay.
    same = load_config(top, ["model.head.type=FCNHead"]).to_dict()["model"]["head"]
    assert same == {"type": "FCNHead", "num_convs": 2, "channels": 8}
