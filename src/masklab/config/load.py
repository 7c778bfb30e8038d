"""Reading YAML configs: ``_base_`` inheritance, ``_delete_``, dotted overrides, provenance.

A config is data: files are parsed with a ``yaml.SafeLoader`` subclass, so a ``!!python/...`` tag
(or any custom tag) is an error rather than code execution. Merging rules:

- ``_base_: a.yaml`` or a list; paths are relative to the including file; bases are merged
  depth-first in order, later wins, and the including file wins over its bases;
- mappings merge key by key; lists and scalars replace;
- a mapping with ``_delete_: true`` replaces the base mapping instead of merging;
- a mapping whose ``type:`` differs from the base's is replaced too, so keys of the old component
  never leak into the new one;
- overrides ``a.b.c=value`` (value parsed as YAML, list indices allowed) apply last, as one more
  layer: ``a.b.type=Other`` replaces ``a.b`` like a file would, keeping only keys set by overrides.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from masklab.config.nodes import OVERRIDE, Config, join, split
from masklab.errors import ConfigError

BASE_KEY = "_base_"
DELETE_KEY = "_delete_"

# YAML 1.1 (PyYAML) reads `1e-3` as a string because its float pattern needs a dot; configs are
# full of learning rates written that way, so the dialect accepts them as floats.
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class ConfigLoader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float."""


class ConfigDumper(yaml.SafeDumper):
    """SafeDumper that quotes strings the loader would read as floats (``'1e-3'``)."""


# YAML 1.2 booleans: only true/false. YAML 1.1 also reads on/off/yes/no as booleans, which turns
# `auto_scale_lr: off` (a string option) into False behind the user's back.
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")

for _cls in (ConfigLoader, ConfigDumper):
    _cls.yaml_implicit_resolvers = {
        k: [(tag, rx) for tag, rx in v if tag not in ("tag:yaml.org,2002:float", "tag:yaml.org,2002:bool")]
        for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
    _cls.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL, list("tTfF"))


def _represent_tuple(dumper: yaml.SafeDumper, data: tuple[Any, ...]) -> yaml.Node:
    return dumper.represent_list(list(data))


ConfigDumper.add_representer(tuple, _represent_tuple)


# -- reading one file ---------------------------------------------------------------------------
def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    try:
        data = yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - ConfigLoader is a SafeLoader
    except yaml.constructor.ConstructorError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        tag = re.search(r"tag '([^']*)'", str(exc.problem))
        what = f"tag {tag.group(1)!r}" if tag else str(exc.problem)
        raise ConfigError(
            f"{path}: line {line}: {what} is not allowed; configs are plain YAML data (no Python or custom tags)"
        ) from None
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        raise ConfigError(f"{path}: line {line}: invalid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping at the top level, got {type(data).__name__}")
    return data


def _record(value: Any, path: str, source: str, prov: dict[str, str]) -> None:
    """Mark ``path`` and every key below it as set by ``source``."""
    if path:
        prov[path] = source
    if isinstance(value, dict):
        for k, v in value.items():
            _record(v, join(path, str(k)), source, prov)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _record(v, join(path, i), source, prov)


def _forget(path: str, prov: dict[str, str]) -> None:
    head = path + "."
    for k in [k for k in prov if k == path or k.startswith(head)]:
        del prov[k]


def _strip_delete(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_delete(v) for k, v in value.items() if k != DELETE_KEY}
    if isinstance(value, list):
        return [_strip_delete(v) for v in value]
    return value


def _merge(
    base: dict[str, Any],
    child: dict[str, Any],
    prov: dict[str, str],
    child_prov: dict[str, str],
    prefix: str,
    child_file: str,
) -> None:
    """Merge ``child`` into ``base`` (in place), moving provenance along."""
    for key, cval in child.items():
        path = join(prefix, str(key))
        bval = base.get(key)
        if isinstance(cval, dict) and isinstance(bval, dict):
            delete = cval.get(DELETE_KEY, False)
            if not isinstance(delete, bool):
                raise ConfigError(
                    f"{child_file}: {join(path, DELETE_KEY)}: expected true or false, got {delete!r}"
                )
            type_changed = "type" in cval and "type" in bval and cval["type"] != bval["type"]
            if not delete and not type_changed:
                _merge(
                    bval,
                    {k: v for k, v in cval.items() if k != DELETE_KEY},
                    prov,
                    child_prov,
                    path,
                    child_file,
                )
                continue
        _forget(path, prov)
        base[key] = _strip_delete(cval)
        head = path + "."
        prov.update({k: v for k, v in child_prov.items() if k == path or k.startswith(head)})


def _load_tree(path: Path, stack: tuple[Path, ...]) -> tuple[dict[str, Any], dict[str, str]]:
    resolved = path.resolve()
    if resolved in stack:
        chain = " -> ".join(str(p) for p in (*stack[stack.index(resolved) :], resolved))
        raise ConfigError(f"{stack[-1]}: _base_ cycle: {chain}")
    own = _read_yaml(path)
    bases = own.pop(BASE_KEY, [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: {BASE_KEY}: expected a file name or a list of file names, got {bases!r}")
    data: dict[str, Any] = {}
    prov: dict[str, str] = {}
    for name in bases:
        base_path = Path(os.path.normpath(path.parent / name))
        if not base_path.is_file():
            raise ConfigError(f"{path}: {BASE_KEY}: {name!r} not found (looked at {base_path})")
        bdata, bprov = _load_tree(base_path, (*stack, resolved))
        _merge(data, bdata, prov, bprov, "", str(base_path))
    own_prov: dict[str, str] = {}
    _record(own, "", str(path), own_prov)
    _merge(data, own, prov, own_prov, "", str(path))
    return data, prov


# -- overrides ----------------------------------------------------------------------------------
_KEY = re.compile(r"^[A-Za-z_][\w-]*(\.(?:[A-Za-z_][\w-]*|-?\d+))*$")


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``a.b.c=value`` into the dotted key and the YAML-parsed value.

    Raises:
        ConfigError: the override is not ``key=value`` or its value is not valid YAML.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not _KEY.match(key):
        raise ConfigError(f"override {text!r}: expected key.sub=value (e.g. train.optim.lr=1e-3)")
    try:
        value = yaml.load(raw, Loader=ConfigLoader)  # noqa: S506 - ConfigLoader is a SafeLoader
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({problem})") from None
    return key, value


def apply_override(data: dict[str, Any], prov: dict[str, str], text: str) -> None:
    """Apply one ``key=value`` override to ``data`` in place (provenance ``<override>``)."""
    key, value = parse_override(text)
    segs = split(key)
    node: Any = data
    for depth, seg in enumerate(segs):
        last = depth == len(segs) - 1
        parent = ".".join(segs[:depth]) or "the config root"
        if isinstance(node, dict):
            if last and seg == "type" and depth > 0 and "type" in node and node["type"] != value:
                _replace_node(node, ".".join(segs[:depth]), value, prov)
            elif last and isinstance(value, dict) and DELETE_KEY in value:
                _merge_override(node, seg, key, value, prov, text)
                return
            elif last:
                node[seg] = value
            else:
                node = node.setdefault(seg, {})
        elif isinstance(node, list):
            if not seg.lstrip("-").isdigit() or not -len(node) <= int(seg) < len(node):
                raise ConfigError(
                    f"override {text!r}: {parent} is a list of {len(node)} items; {seg!r} is not a valid index"
                )
            if last:
                node[int(seg)] = value
            else:
                node = node[int(seg)]
        else:
            raise ConfigError(
                f"override {text!r}: {parent} is {type(node).__name__} {node!r}, not a mapping or list"
            )
    _forget(key, prov)
    _record(value, key, OVERRIDE, prov)


def _merge_override(
    node: dict[str, Any], seg: str, key: str, value: dict[str, Any], prov: dict[str, str], text: str
) -> None:
    """A mapping override that writes ``_delete_`` (MMEngine's spelling) is one more layer, merged
    by :func:`_merge` exactly as a child file's mapping: ``false`` merges, ``true`` (or a changed
    ``type``) replaces the node, and the key itself never reaches the config."""
    delete = value[DELETE_KEY]
    if not isinstance(delete, bool):
        raise ConfigError(
            f"override {text!r}: {join(key, DELETE_KEY)}: expected true or false, got {delete!r}"
        )
    layer_prov: dict[str, str] = {}
    _record(value, key, OVERRIDE, layer_prov)
    _merge(node, {seg: value}, prov, layer_prov, key.rpartition(".")[0], OVERRIDE)


def _replace_node(node: dict[str, Any], path: str, new_type: Any, prov: dict[str, str]) -> None:
    """``path.type=New`` on a node of another type: the node is replaced, as a file layer with a
    changed ``type:`` replaces its base's mapping (the old component's keys would not bind to the
    new one). Keys set by earlier overrides stay: the command line is one layer, in any order."""
    head = path + "."
    kept = {k: v for k, v in node.items() if k != "type" and prov.get(head + str(k)) == OVERRIDE}
    kept_prov = {
        k: v for k, v in prov.items() if any(k == head + c or k.startswith(f"{head}{c}.") for c in kept)
    }
    node.clear()
    node["type"] = new_type
    node.update(kept)
    _forget(path, prov)
    prov[path] = OVERRIDE
    prov.update(kept_prov)


# -- public -------------------------------------------------------------------------------------
def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML config with its ``_base_`` files and apply dotted overrides.

    Args:
        path: the config file.
        overrides: ``key.sub=value`` strings, values parsed as YAML, applied in order.

    Returns:
        The merged :class:`Config`, which knows the file (or ``<override>``) behind every key.

    Raises:
        ConfigError: a missing or unreadable file, invalid YAML, a disallowed tag, a ``_base_``
            cycle or a malformed override.
    """
    if isinstance(overrides, str):
        overrides = [overrides]
    path = Path(path)
    data, prov = _load_tree(path, ())
    for text in overrides:
        apply_override(data, prov, text)
    return Config(data, prov, filename=str(path))


def show_config(path: str | Path, overrides: Sequence[str] = ()) -> str:
    """The fully resolved config as YAML text: bases merged, overrides applied, schema defaults filled.

    This is what ``masklab config show`` prints; the config is checked on the way as a run checks
    it (every section, and every model and dataset node against its constructor, nothing built),
    so a bad key fails here with the same one-line error.
    """
    from masklab.config.check import check_config  # check builds on this module

    resolved = check_config(load_config(path, overrides))
    text = yaml.dump(resolved.to_dict(), Dumper=ConfigDumper, sort_keys=False, default_flow_style=False)
    return f"# resolved from {path}\n{text}"
