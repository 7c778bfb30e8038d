"""Reading checkpoints other frameworks pickled, without importing or running their code.

MMSegmentation / MMEngine checkpoints are pickles that name classes of packages masklab does not
install (``mmengine.logging.HistoryBuffer`` in a 1.x training checkpoint's ``message_hub``,
``mmcv`` config objects, numpy arrays). ``torch.load(weights_only=True)`` refuses them, and
``weights_only=False`` alone would import and call whatever the file names. :func:`load_foreign_checkpoint`
loads with ``weights_only=False`` but through :data:`STUB_PICKLE`, whose unpickler resolves only
tensor reconstruction (torch's own ``weights_only`` allow-list), plain containers, safe builtin types and
numpy's array/scalar reconstruction; every other global becomes an inert :class:`ForeignObject`
subclass, so the file's own classes are never imported, constructed or called.
"""

from __future__ import annotations

import pickle
import types
import zipfile
from functools import cache
from pathlib import Path
from typing import Any

import torch

from masklab.errors import CheckpointError

# Builtin types that construct plain data and nothing else (no getattr, eval, __import__, ...).
_BUILTINS = frozenset(
    {"set", "frozenset", "slice", "range", "complex", "bytearray", "bytes", "list", "dict", "tuple", "int"}
    | {"float", "str", "bool", "object"}
)
_COLLECTIONS = frozenset({"OrderedDict", "defaultdict", "deque", "Counter"})
# numpy's array and scalar reconstruction (old files name numpy.core, numpy >= 2 numpy._core).
_NUMPY = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
)


class ForeignObject:
    """Stands in for an object of a class the file names but masklab does not import.

    It accepts any construction and keeps what the pickle gives it: ``args`` (constructor
    arguments), ``state`` (``__setstate__``), ``items`` and ``values`` (dict / list contents).
    Subclasses are created per foreign name; ``foreign_name`` is ``module.Class``.
    """

    foreign_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> ForeignObject:
        obj = object.__new__(cls)
        obj.__dict__.update(args=args, kwargs=kwargs, state=None, items={}, values=[])
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__["items"][key] = value

    def append(self, value: Any) -> None:
        self.__dict__["values"].append(value)

    def extend(self, values: Any) -> None:
        self.__dict__["values"].extend(values)

    def __repr__(self) -> str:
        return f"<foreign {self.foreign_name}>"


@cache
def _stub(module: str, name: str) -> type[ForeignObject]:
    return type(name, (ForeignObject,), {"foreign_name": f"{module}.{name}", "__module__": "masklab.foreign"})


@cache
def _torch_allowed() -> frozenset[str]:
    """``module.name`` of every global ``torch.load(weights_only=True)`` accepts."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        return frozenset(_get_allowed_globals())
    except (ImportError, AttributeError):  # a torch without the private helper: the essentials
        return frozenset(
            {"torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter", "torch.Size"}
            | {"collections.OrderedDict", "torch._tensor._rebuild_from_type_v2", "_codecs.encode"}
        )


def _is_safe(module: str, name: str) -> bool:
    if f"{module}.{name}" in _torch_allowed():
        return True
    if module == "builtins":
        return name in _BUILTINS
    if module == "collections":
        return name in _COLLECTIONS
    if module == "torch" and name.endswith("Storage"):  # storage types of files from older torch
        return True
    return (module, name) in _NUMPY


class StubUnpickler(pickle.Unpickler):
    """Resolves the safe globals normally and every other one to an inert :class:`ForeignObject` class."""

    def find_class(self, module: str, name: str) -> Any:
        if _is_safe(module, name):
            if module.startswith("numpy.core."):
                import numpy as np

                if int(np.__version__.split(".")[0]) >= 2:  # numpy.core is a deprecated alias there
                    module = "numpy._core." + module[len("numpy.core.") :]
            return super().find_class(module, name)
        return _stub(module, name)


def _load(file: Any, **kwargs: Any) -> Any:
    return StubUnpickler(file, **kwargs).load()


def _loads(data: bytes, **kwargs: Any) -> Any:
    import io

    return _load(io.BytesIO(data), **kwargs)


# A module object for ``torch.load(pickle_module=...)``: torch subclasses its ``Unpickler`` and
# calls its ``load`` for files in the legacy (pre-1.6, non-zip) format.
STUB_PICKLE = types.ModuleType("masklab_stub_pickle")
STUB_PICKLE.Unpickler = StubUnpickler  # type: ignore[attr-defined]
STUB_PICKLE.load = _load  # type: ignore[attr-defined]
STUB_PICKLE.loads = _loads  # type: ignore[attr-defined]
STUB_PICKLE.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]


def load_foreign_checkpoint(path: str | Path) -> Any:
    """Load a checkpoint pickled by another framework, its foreign objects as :class:`ForeignObject`.

    Raises:
        CheckpointError: the file is missing or is not a torch checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=STUB_PICKLE)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, RuntimeError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: not a readable checkpoint (torn or not a torch file: {type(exc).__name__})"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any other decoding failure is the file's, not a bug here
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from None
