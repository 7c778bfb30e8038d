"""Binding config nodes to constructor signatures (STYLE principle 2: the signature is the schema).

``build_node({type: FCNHead, channels: 256, ...}, path="model.decode_head")`` finds ``FCNHead``
(a registry name or ``pkg.module:Name``), checks every key against ``FCNHead.__init__``'s
parameters and type annotations, and only then calls it. The whole node tree is checked before any
constructor runs, and every problem found is reported in one ``; ``-separated line, each naming its
file and dotted key::

    configs/x.yaml: model.decode_head.chanels: unknown key for FCNHead; did you mean 'channels'?

Supported annotations: ``int`` (``bool`` is not an int), ``float`` (ints accepted), ``str``,
``bool``, ``None``/``Optional``, ``Union``/``X | Y``, ``Literal``, ``list[T]``, ``tuple[T, ...]``,
``tuple[A, B]``, ``dict[str, T]``, ``Sequence``, ``Mapping``, ``Any``, ``pathlib.Path`` (from a
string), classes (a ``{type: ...}`` node is built recursively; a mapping without ``type`` builds an
annotated dataclass from its fields), ``typing.Protocol`` classes, runtime-checkable or not (a node's
class, or a value, must have the protocol's members), ``Lazy[T]`` and ``list[Lazy[T]]``.
"""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import difflib
import importlib
import inspect
import pathlib
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, Union

from masklab.config import registries
from masklab.config.lazy import Lazy
from masklab.config.nodes import OVERRIDE, Config, join
from masklab.config.registry import Registry
from masklab.config.suggest import did_you_mean
from masklab.errors import ConfigError, MasklabError

__all__ = ["Derived", "build_dataclass", "build_model", "build_node", "call_bound", "check_node", "describe"]

_NONE = type(None)
_FAIL = object()  # conversion failed; the reason is already in Context.errors


@dataclass(frozen=True)
class Derived:
    """A value the caller derives, with the reason shown when the config states another one.

    ``build_node(node, path="model", num_classes=Derived(8, "the dataset metadata has 8 classes"))``
    fails with ``...: model.num_classes: config says 5 but the dataset metadata has 8 classes``.
    """

    value: Any
    reason: str = ""


class _Deferred:
    """A value the owner will derive when it builds the node (check-only passes: see :func:`check_node`)."""

    def __repr__(self) -> str:
        return "<derived by the owner>"


_DEFERRED = _Deferred()


@dataclass(frozen=True)
class _Checked:
    """Stands for a node that passed its checks during the check-only pass (nothing was built)."""

    factory: Callable[..., Any]


@dataclass
class _Context:
    """State of one binding: where keys come from, collected errors, and whether to build."""

    root_path: str
    origin: Callable[[str], str]  # full dotted path -> file that set it
    build: bool = False
    errors: list[str] = field(default_factory=list)
    top: str = ""  # the file the config was loaded from (its own keys win over its bases')

    def where(self, path: str) -> str:
        return self.origin(path)

    def error(self, path: str, message: str) -> None:
        file = self.where(path)
        line = f"{file}: {path}: {message}" if file else f"{path}: {message}"
        if line not in self.errors:
            self.errors.append(line)

    def fork(self) -> _Context:
        return _Context(self.root_path, self.origin, self.build, top=self.top)

    def raise_errors(self) -> None:
        if self.errors:
            raise ConfigError("; ".join(self.errors))


def _new_context(node: object, path: str, source: str) -> _Context:
    top = node.filename if isinstance(node, Config) else source
    return _Context(path, _origin_for(node, path, source), top=top)


def _origin_for(node: object, path: str, source: str) -> Callable[[str], str]:
    """Map a display path under ``path`` to the file that set it (per key for a :class:`Config`)."""
    if not isinstance(node, Config):
        return lambda _p: source
    base = node.prefix

    def origin(p: str) -> str:
        rel = p[len(path) :].lstrip(".") if p.startswith(path) else ""
        return node.source_of_full(join(base, rel) if rel else base) or source

    return origin


# -- describing values and annotations ---------------------------------------------------------
def describe(ann: Any) -> str:
    """A short human name for an annotation (``int | None``, ``list[float]``, ``one of 'a', 'b'``)."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if ann is _NONE or ann is None:
        return "None"
    if origin in (Union, types.UnionType):
        return " | ".join(describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join('...' if a is Ellipsis else describe(a) for a in args)}]" if args else name
    return getattr(ann, "__name__", str(ann))


def _show(value: Any) -> str:
    if isinstance(value, Mapping):
        text = repr(value.to_dict() if isinstance(value, Config) else dict(value))
        kind = "mapping"
    else:
        text, kind = repr(value), type(value).__name__
    return f"{kind} {text[:57] + '...' if len(text) > 60 else text}"


def _is_node(value: Any) -> bool:
    return isinstance(value, Mapping) and "type" in value


def _plain(value: Any) -> Any:
    return value.to_dict() if isinstance(value, Config) else value


# -- conversion per annotation -----------------------------------------------------------------
def _convert(value: Any, ann: Any, path: str, ctx: _Context) -> Any:
    """``value`` checked (and converted) against ``ann``; ``_FAIL`` after recording an error."""
    if ann is Any or ann is inspect.Parameter.empty or isinstance(ann, TypeVar):
        return _build_node(value, None, path, ctx) if _is_node(value) else _plain(value)
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if ann in (list, tuple, dict, cabc.Sequence, cabc.Mapping):
        origin, args = ann, ()
    if ann is None or ann is _NONE:
        return None if value is None else _fail(value, ann, path, ctx)
    if origin in (Union, types.UnionType):
        return _convert_union(value, ann, args, path, ctx)
    if origin is Literal:
        hit = any(value == a and type(value) is type(a) for a in args)
        return value if hit else _fail(value, ann, path, ctx)
    if origin is Lazy or ann is Lazy:
        return _convert_lazy(value, args[0] if args else Any, path, ctx)
    if origin in (list, cabc.Sequence, cabc.MutableSequence):
        return _convert_list(value, ann, args[0] if args else Any, path, ctx)
    if origin is tuple:
        return _convert_tuple(value, ann, args, path, ctx)
    if origin in (dict, cabc.Mapping, cabc.MutableMapping):
        return _convert_dict(value, ann, args, path, ctx)
    if origin is cabc.Callable:
        # A callable may be given as a component node (a transform in a pipeline): build it.
        if _is_node(value):
            return _build_node(value, None, path, ctx)
        if callable(value):
            return value
        return _fail_callable(value, path, ctx)
    if origin is not None:  # other typing constructs are not checked
        return value
    return _convert_class(value, ann, path, ctx)


def _fail_callable(value: Any, path: str, ctx: _Context) -> object:
    """A component node was expected (a pipeline transform): name what is missing."""
    if isinstance(value, Mapping):
        glued = [str(k) for k in value if str(k).startswith("type:")]
        if glued:  # YAML reads '{type:RandomCrop}' (no space after the colon) as one key
            ctx.error(
                path,
                f"key {glued[0]!r} is not 'type': write 'type: {glued[0][5:]}' with a space after the colon",
            )
        else:
            keys = ", ".join(str(k) for k in value) or "none"
            ctx.error(
                path,
                f"missing 'type' (expected a component such as {{type: RandomCrop, ...}}; keys given: {keys})",
            )
        return _FAIL
    ctx.error(path, f"expected a component node {{type: NAME, ...}}, got {_show(value)}")
    return _FAIL


def _fail(value: Any, ann: Any, path: str, ctx: _Context) -> object:
    ctx.error(path, f"expected {describe(ann)}, got {_show(value)}")
    return _FAIL


def _convert_class(value: Any, ann: Any, path: str, ctx: _Context) -> Any:
    if ann is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return float(value) if ok else _fail(value, ann, path, ctx)
    if ann is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return value if ok else _fail(value, ann, path, ctx)
    if ann in (str, bool):
        return value if isinstance(value, ann) else _fail(value, ann, path, ctx)
    if isinstance(ann, type) and issubclass(ann, pathlib.PurePath):
        return ann(value) if isinstance(value, (str, pathlib.PurePath)) else _fail(value, ann, path, ctx)
    if not isinstance(ann, type):  # a string annotation that did not resolve: nothing to check
        return value
    if _instance(value, ann) or (isinstance(value, _Checked) and _subclass(value.factory, ann)):
        return value
    if isinstance(value, Mapping) and dataclasses.is_dataclass(ann) and not _is_node(value):
        return _build_dataclass(ann, value, path, ctx)
    if isinstance(value, Mapping) and dataclasses.is_dataclass(ann) and _has_type_field(ann):
        return _build_dataclass(ann, value, path, ctx)
    if _is_node(value):
        return _build_node(value, ann, path, ctx)
    if isinstance(value, Mapping):
        ctx.error(path, f"expected a {{type: ...}} node for {ann.__name__}, got a mapping without 'type'")
        return _FAIL
    return _fail(value, ann, path, ctx)


def _has_type_field(cls: type) -> bool:
    return any(f.name == "type" for f in dataclasses.fields(cls))


def _subclass(factory: Any, ann: Any) -> bool:
    # Factory functions cannot be checked before they run; classes can.
    if not isinstance(factory, type) or not isinstance(ann, type):
        return True
    if _is_protocol(ann):
        # A class has a protocol's methods; its data members may be set by __init__: unchecked.
        # Looked up in the class's own MRO: ``getattr(cls, "__call__")`` finds ``type.__call__``.
        namespaces = [vars(c) for c in factory.__mro__]
        return all(
            any(callable(ns.get(m)) for ns in namespaces) for m in _protocol_members(ann, methods_only=True)
        )
    return issubclass(factory, ann)


def _instance(value: Any, ann: type) -> bool:
    """``isinstance`` that also takes a ``typing.Protocol``, runtime-checkable or not, by its members."""
    if _is_protocol(ann):
        return not isinstance(value, (Mapping, _Checked)) and all(
            hasattr(value, m) for m in _protocol_members(ann)
        )
    return isinstance(value, ann)


def _is_protocol(ann: type) -> bool:
    # ``isinstance``/``issubclass`` refuse a Protocol without @runtime_checkable (and one with data
    # members), so a Protocol annotation (DecodeHead's ``sampler: PixelSampler``) is checked
    # structurally here, as @runtime_checkable would: every member is present.
    return bool(getattr(ann, "_is_protocol", False)) and ann is not typing.Protocol


# Names every class namespace has, which a Protocol does not declare as members.
_NOT_MEMBERS = frozenset(
    {"__abstractmethods__", "__annotations__", "__annotate__", "__class_getitem__", "__dict__",
     "__doc__", "__firstlineno__", "__init__", "__init_subclass__", "__module__", "__new__",
     "__non_callable_proto_members__", "__orig_bases__", "__parameters__", "__protocol_attrs__",
     "__qualname__", "__slots__", "__static_attributes__", "__subclasshook__", "__type_params__",
     "__weakref__", "_is_protocol", "_is_runtime_protocol"}
)  # fmt: skip


def _protocol_members(proto: type, *, methods_only: bool = False) -> list[str]:
    """The attributes a Protocol declares (methods and annotated data members), bases included."""
    names: dict[str, None] = {}
    for base in proto.__mro__[:-1]:
        if base.__name__ in ("Protocol", "Generic") or not getattr(base, "_is_protocol", False):
            continue
        namespace = vars(base)
        declared = [*namespace, *([] if methods_only else namespace.get("__annotations__", {}))]
        for name in declared:
            if name in _NOT_MEMBERS or name.startswith("_abc_"):
                continue
            if methods_only and not callable(namespace.get(name)):
                continue
            names[name] = None
    return list(names)


def _accepts_mapping(ann: Any) -> bool:
    origin = typing.get_origin(ann)
    if origin is Lazy or origin in (dict, cabc.Mapping, cabc.MutableMapping) or ann in (dict, cabc.Mapping):
        return True
    return (
        isinstance(ann, type) and ann not in (int, float, str, bool) and not issubclass(ann, pathlib.PurePath)
    )


def _convert_union(value: Any, ann: Any, args: tuple[Any, ...], path: str, ctx: _Context) -> Any:
    if value is None and _NONE in args:
        return None
    arms = [a for a in args if a is not _NONE]
    if len(arms) == 1:  # Optional[X]: the X errors are the useful ones
        out = _convert(value, arms[0], path, ctx)
        if out is _FAIL and ctx.errors:
            ctx.errors[-1] = ctx.errors[-1].replace(
                f"expected {describe(arms[0])},", f"expected {describe(ann)},"
            )
        return out
    for arm in arms:
        sub = ctx.fork()
        out = _convert(value, arm, path, sub)
        if not sub.errors:
            return out
    structural = [a for a in arms if _accepts_mapping(a)]
    if isinstance(value, Mapping) and len(structural) == 1:
        return _convert(value, structural[0], path, ctx)
    return _fail(value, ann, path, ctx)


def _convert_list(value: Any, ann: Any, item: Any, path: str, ctx: _Context) -> Any:
    if not isinstance(value, (list, tuple)):
        return _fail(value, ann, path, ctx)
    out = [_convert(v, item, join(path, i), ctx) for i, v in enumerate(value)]
    return _FAIL if any(v is _FAIL for v in out) else out


def _convert_tuple(value: Any, ann: Any, args: tuple[Any, ...], path: str, ctx: _Context) -> Any:
    if not isinstance(value, (list, tuple)):
        return _fail(value, ann, path, ctx)
    if len(args) == 2 and args[1] is Ellipsis:
        items = [args[0]] * len(value)
    elif not args:
        items = [Any] * len(value)
    elif len(args) != len(value):
        ctx.error(
            path, f"expected {describe(ann)} ({len(args)} items), got {len(value)} items {list(value)!r}"
        )
        return _FAIL
    else:
        items = list(args)
    out = [_convert(v, a, join(path, i), ctx) for i, (v, a) in enumerate(zip(value, items))]
    return _FAIL if any(v is _FAIL for v in out) else tuple(out)


def _convert_dict(value: Any, ann: Any, args: tuple[Any, ...], path: str, ctx: _Context) -> Any:
    if not isinstance(value, Mapping):
        return _fail(value, ann, path, ctx)
    key_ann, val_ann = args if len(args) == 2 else (Any, Any)
    out: dict[Any, Any] = {}
    for k, v in value.items():
        if key_ann is str and not isinstance(k, str):
            ctx.error(join(path, k), f"expected a string key, got {_show(k)}")
            out[k] = _FAIL
            continue
        out[k] = _convert(v, val_ann, join(path, k), ctx)
    return _FAIL if any(v is _FAIL for v in out.values()) else out


def _convert_lazy(value: Any, target: Any, path: str, ctx: _Context) -> Any:
    if isinstance(value, Lazy):
        return value
    if _is_node(value) and not (dataclasses.is_dataclass(target) and _has_type_field(target)):
        return _build_node(value, target if isinstance(target, type) else None, path, ctx, lazy=True)
    if isinstance(value, Mapping) and isinstance(target, type):
        kwargs = _bind(target, value, path, ctx, allow_missing=True, skip_type=False)
        if kwargs is _FAIL:
            return _FAIL
        return (
            Lazy(target, kwargs, path, source=ctx.where(path), origin=ctx.origin)
            if ctx.build
            else _Checked(target)
        )
    ctx.error(path, f"expected a {{type: ...}} node for {describe(Lazy[target])}, got {_show(value)}")
    return _FAIL


# -- binding a mapping to a signature ----------------------------------------------------------
def _signature(factory: Callable[..., Any]) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    """Keyword-bindable parameters, their resolved annotations, and whether ``**kwargs`` exists."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without a signature: accept anything
        return {}, {}, True
    params = {
        n: p
        for n, p in sig.parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    target = (
        factory if dataclasses.is_dataclass(factory) or not isinstance(factory, type) else factory.__init__
    )
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - e.g. names imported under TYPE_CHECKING: check what resolves
        hints = {n: p.annotation for n, p in params.items() if not isinstance(p.annotation, str)}
    if var_kw and isinstance(factory, type):
        # A subclass that forwards ``**kwargs`` to its base (FCNHead -> DecodeHead) accepts the
        # base's keywords: bind and check them against the base's signature, so typos and nested
        # nodes in those keys are handled as if they were written out.
        base = next((b for b in factory.__mro__[1:] if "__init__" in vars(b) and b is not object), None)
        if base is not None and base.__init__ is not object.__init__:
            b_params, b_hints, b_var_kw = _signature(base)
            for name, param in b_params.items():
                if name not in params:
                    params[name] = param
                    if name in b_hints:
                        hints[name] = b_hints[name]
            var_kw = b_var_kw
    return params, hints, var_kw


def _name(factory: Any) -> str:
    return getattr(factory, "__name__", repr(factory))


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - tensors and friends: not comparable means not equal
        return False


def _bind(
    factory: Callable[..., Any],
    node: Mapping[str, Any],
    path: str,
    ctx: _Context,
    *,
    allow_missing: bool = False,
    provided: Mapping[str, Any] | None = None,
    skip_type: bool = True,
) -> Any:
    """Check ``node``'s keys against ``factory``'s signature; the converted kwargs or ``_FAIL``."""
    params, hints, var_kw = _signature(factory)
    name, before = _name(factory), len(ctx.errors)
    kwargs: dict[str, Any] = {}
    for key, raw in node.items():
        if key == "type" and skip_type:
            continue
        kpath = join(path, key)
        if key in params or var_kw:
            kwargs[key] = _convert(raw, hints.get(key, Any), kpath, ctx)
            continue
        hint = did_you_mean(key, params) or f" (valid keys: {', '.join(params) or 'none'})"
        ctx.error(kpath, f"unknown key for {name}{hint}")
    for key, given in (provided or {}).items():
        if given is _DEFERRED:
            # Derived later by the owner, only for constructors that name the key (as the owner
            # checks); a value the config states is checked against its annotation above.
            if key in params and key not in node:
                kwargs[key] = given
            continue
        value, reason = (given.value, given.reason) if isinstance(given, Derived) else (given, "")
        if key not in params and not var_kw:
            ctx.error(path, f"{name} does not take {key!r}, which its owner supplies; pick a type that does")
        elif (
            key in node
            and node[key] is not None
            and kwargs.get(key, _FAIL) is not _FAIL
            and not _equal(kwargs[key], value)
        ):
            ctx.error(
                join(path, key),
                f"config says {_plain(node[key])!r} but {reason or f'the caller derives {value!r}'}",
            )
        kwargs[key] = value
    if not allow_missing:
        for key, p in params.items():
            if p.default is inspect.Parameter.empty and key not in kwargs:
                ctx.error(path, f"missing required key {key!r} for {name}")
    return _FAIL if len(ctx.errors) > before else kwargs


def _call(factory: Callable[..., Any], kwargs: dict[str, Any], path: str, ctx: _Context) -> Any:
    """``factory(**kwargs)``; a ``TypeError``/``ValueError`` it raises (a cross-field check in
    ``__post_init__``) is recorded against the key it is about, and ``_FAIL`` returned."""
    try:
        return factory(**kwargs)
    except MasklabError:
        raise
    except (TypeError, ValueError) as exc:
        key, message = _blame(factory, kwargs, path, str(exc), ctx)
        ctx.error(join(path, key) if key else path, message)
        return _FAIL


_LEAD = re.compile(r"^([A-Za-z_]\w*)(:\s*)?")


def _blame(
    factory: Callable[..., Any], kwargs: Mapping[str, Any], path: str, message: str, ctx: _Context
) -> tuple[str | None, str]:
    """The key a constructor's error is about, and the message to show under it.

    Constructors word their checks ``"name: expected ..."`` or ``"name must ..."``, or name the
    fields a rule ties together (``"set exactly one of max_iters and max_epochs"``). Of the keys
    named, the one set last is blamed (it is what the user just changed): by a command-line
    override, then by the config file itself, then by a base; a key left at its default comes last.
    Ties go to the leading key, then to the order of mention. Nothing named: the node's own path.
    """
    params = _signature(factory)[0]
    spots = {p: m.start() for p in params if (m := re.search(rf"(?<![\w.]){re.escape(p)}(?!\w)", message))}
    lead = _LEAD.match(message)
    leader = lead.group(1) if lead and lead.group(1) in params else None
    named = sorted(spots, key=lambda p: (p != leader, spots[p]))

    def layer(p: str) -> int:
        if p not in kwargs:
            return 3
        where = ctx.where(join(path, p))
        return 0 if where == OVERRIDE else 1 if where == ctx.top else 2

    key = min(named, key=layer) if named else None
    if key is None:
        return None, f"{_name(factory)}: {message}"
    if key == leader and lead.group(2):
        message = message[lead.end() :]
    shown = repr(_shown(kwargs[key])) if key in kwargs else ""
    if shown and "got" not in message and shown not in message:
        message += f" (got {shown})"
    return key, message


def _shown(value: Any) -> Any:
    """A converted value as the config wrote it (tuples back to lists)."""
    if isinstance(value, (list, tuple)):
        return [_shown(v) for v in value]
    return _plain(value)


def _build_dataclass(cls: type, node: Mapping[str, Any], path: str, ctx: _Context) -> Any:
    kwargs = _bind(cls, node, path, ctx, skip_type=not _has_type_field(cls))
    if kwargs is _FAIL:
        return _FAIL
    return _call(cls, kwargs, path, ctx) if ctx.build else _Checked(cls)


# -- resolving type names ----------------------------------------------------------------------
def _import(name: str, tpath: str, ctx: _Context) -> Any:
    module_name, _, attr = name.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        ctx.error(tpath, f"cannot import {module_name!r} for type {name!r} ({exc})")
        return _FAIL
    for part in attr.split("."):
        if not hasattr(obj, part):
            ctx.error(tpath, f"module {module_name!r} has no attribute {attr!r}")
            return _FAIL
        obj = getattr(obj, part)
    if not callable(obj):
        ctx.error(tpath, f"{name!r} is not a class or function")
        return _FAIL
    return obj


def _resolve(name: Any, path: str, ctx: _Context, registry: Registry | None, expected: Any) -> Any:
    tpath = join(path, "type")
    if not isinstance(name, str) or not name:
        ctx.error(tpath, f"expected a registered name or pkg.module:Name, got {_show(name)}")
        return _FAIL
    if ":" in name:
        return _import(name, tpath, ctx)
    if registry is not None:
        try:
            return registry.get(name, where=f"{ctx.where(tpath)}: {tpath}")
        except ConfigError as exc:
            ctx.errors.append(str(exc))
            return _FAIL
    hits = [reg.get(name) for reg in registries.ALL.values() if name in reg]
    if len(hits) > 1 and isinstance(expected, type):
        hits = [h for h in hits if _subclass(h, expected)] or hits
    hits = list(dict.fromkeys(hits))
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        ctx.error(tpath, f"type {name!r} is registered in several registries; write pkg.module:Name")
        return _FAIL
    known = [n for reg in registries.ALL.values() for n in reg.names()]
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    ctx.error(tpath, f"unknown type {name!r}{hint} (a registered name or pkg.module:Name)")
    return _FAIL


def _build_node(
    node: Mapping[str, Any],
    expected: Any,
    path: str,
    ctx: _Context,
    *,
    registry: Registry | None = None,
    provided: Mapping[str, Any] | None = None,
    lazy: bool = False,
) -> Any:
    factory = _resolve(node["type"], path, ctx, registry, expected)
    if factory is _FAIL:
        return _FAIL
    ok = True
    if expected is not None and not _subclass(factory, expected):
        ctx.error(join(path, "type"), f"{node['type']!r} is not a {describe(expected)}")
        ok = False
    kwargs = _bind(factory, node, path, ctx, allow_missing=lazy, provided=provided)
    if kwargs is _FAIL or not ok:
        return _FAIL
    if not ctx.build:
        return _Checked(factory)
    if lazy:
        return Lazy(factory, kwargs, path, source=ctx.where(join(path, "type")), origin=ctx.origin)
    return _call(factory, kwargs, path, ctx)


def _two_pass(run: Callable[[_Context], Any], ctx: _Context) -> Any:
    """Check everything first (no constructor runs), then build."""
    run(ctx)
    ctx.raise_errors()
    ctx.build = True
    out = run(ctx)
    ctx.raise_errors()
    return out


def _check_shape(node: Any, path: str, source: str, ctx: _Context) -> None:
    """A node is a mapping with a ``type``; anything else is one error before any binding."""
    if not isinstance(node, Mapping):
        raise ConfigError(
            f"{source + ': ' if source else ''}{path}: expected a {{type: ...}} mapping, got {_show(node)}"
        )
    if "type" not in node:
        where = ctx.where(path)
        raise ConfigError(
            f"{where + ': ' if where else ''}{path}: missing 'type' (a registered name or pkg.module:Name)"
        )


# -- public API --------------------------------------------------------------------------------
def build_node(
    node: Mapping[str, Any],
    *,
    path: str,
    source: str = "",
    registry: Registry | None = None,
    **provided: Any,
) -> Any:
    """Build the object a ``{type: Name, key: value, ...}`` node describes.

    Args:
        node: the node; a :class:`Config` section gives per-key file names in errors.
        path: dotted path of the node in its config (``model.decode_head``), for errors.
        source: file to name in errors when ``node`` is a plain mapping.
        registry: where to look ``type`` up; default: every registry. ``pkg.module:Name`` always works.
        **provided: values derived by the caller (plain or :class:`Derived`); the config may restate
            them only with the same value.

    Raises:
        ConfigError: every unknown, missing or mistyped key in the node tree, in one line.
    """
    ctx = _new_context(node, path, source)
    _check_shape(node, path, source, ctx)
    return _two_pass(lambda c: _build_node(node, None, path, c, registry=registry, provided=provided), ctx)


def check_node(
    node: Any,
    *,
    path: str,
    source: str = "",
    registry: Registry | None = None,
    deferred: tuple[str, ...] = (),
) -> list[str]:
    """Every problem :func:`build_node` would report for ``node``, without building anything.

    The check-only pass of the build: types are looked up (importing their modules) and every key
    is bound against its constructor's signature and annotations; no constructor runs.

    Args:
        node: the ``{type: ...}`` node (a :class:`Config` gives per-key file names).
        path: dotted path of the node, for errors.
        source: file to name when ``node`` is a plain mapping.
        registry: where to look ``type`` up (default: every registry).
        deferred: keys the owner derives when it builds (``num_classes`` from the dataset
            metadata): they may be missing; a value the config states is still type-checked.

    Returns:
        One-line problems (empty when the node would bind).
    """
    ctx = _new_context(node, path, source)
    try:
        _check_shape(node, path, source, ctx)
        _build_node(node, None, path, ctx, registry=registry, provided=dict.fromkeys(deferred, _DEFERRED))
    except ConfigError as exc:
        ctx.errors.append(str(exc))
    return ctx.errors


def node_factory(
    node: Mapping[str, Any], *, path: str, source: str = "", registry: Registry | None = None
) -> Callable[..., Any]:
    """The class or function a ``{type: ...}`` node names (registered or ``pkg.module:Name``).

    Lets a caller look at the signature before building, e.g. to pass derived values only to
    constructors that accept them.
    """
    ctx = _new_context(node, path, source)
    factory = _resolve(node.get("type") if isinstance(node, Mapping) else None, path, ctx, registry, None)
    ctx.raise_errors()
    return factory


def build_dataclass(
    cls: type, node: Mapping[str, Any], *, path: str, source: str = "", **provided: Any
) -> Any:
    """Build dataclass ``cls`` from a mapping of its fields, with the same checks as :func:`build_node`."""
    ctx = _new_context(node, path, source)
    if not isinstance(node, Mapping):
        where = ctx.where(path)
        raise ConfigError(f"{where + ': ' if where else ''}{path}: expected a mapping, got {_show(node)}")

    def run(c: _Context) -> Any:
        kwargs = _bind(cls, node, path, c, provided=provided, skip_type=not _has_type_field(cls))
        return kwargs if kwargs is _FAIL or not c.build else _call(cls, kwargs, path, c)

    return _two_pass(run, ctx)


def call_bound(
    factory: Callable[..., Any],
    kwargs: Mapping[str, Any],
    path: str,
    *,
    source: str = "",
    origin: Callable[[str], str] | None = None,
    provided: Mapping[str, Any] | None = None,
) -> Any:
    """Check ``kwargs`` (plus caller-``provided`` ones) against ``factory``'s signature, then call it.

    This is what :class:`Lazy` runs when its owner completes it with derived values. ``origin`` maps
    a dotted key to the file that set it (default: ``source`` for every key).
    """
    ctx = _Context(path, origin or (lambda _p: source))

    def run(c: _Context) -> Any:
        bound = _bind(factory, kwargs, path, c, provided=provided, skip_type=False)
        return bound if bound is _FAIL or not c.build else _call(factory, bound, path, c)

    return _two_pass(run, ctx)


def build_model(cfg: Mapping[str, Any], **provided: Any) -> Any:
    """Build ``cfg["model"]`` through the model registry (see :func:`build_node` for ``provided``)."""
    if "model" not in cfg:
        name = cfg.filename if isinstance(cfg, Config) else "config"
        raise ConfigError(f"{name}: model: missing section (a {{type: ...}} node)")
    source = cfg.filename if isinstance(cfg, Config) else ""
    return build_node(cfg["model"], path="model", source=source, registry=registries.MODELS, **provided)
