"""A restricted unpickler for published ``.pt`` checkpoints: data in, never code.

The published training checkpoints pickle their ``model_config`` as a ``hubert_ecg.HuBERTECGConfig``
or ``transformers...HubertConfig`` object. Plain ``torch.load(weights_only=False)`` would import
those modules and could execute anything a hostile file asks for. This unpickler maps the known
config classes to :class:`ConfigBag` (a plain attribute bag), allows tensors and plain containers,
and refuses every other global with an error naming it; nothing from the file runs.
"""

from __future__ import annotations

import collections
import pickle
import types
from typing import Any

import torch


class UnsafeCheckpointError(pickle.UnpicklingError):
    """Raised when a checkpoint asks for a global outside the allow-list."""


class ConfigBag:
    """Stands in for pickled configuration classes: keeps their attributes as plain data."""

    _source_class: str = ""

    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)
        elif isinstance(state, tuple) and state and isinstance(state[0], dict):
            self.__dict__.update(state[0])

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __repr__(self) -> str:
        return f"ConfigBag({self._source_class or 'config'}, {len(self.__dict__)} fields)"


def _config_class(qualified: str) -> type:
    return type("ConfigBag", (ConfigBag,), {"_source_class": qualified})


def _reconstructor(cls: type, base: type, state: Any) -> Any:
    # copyreg._reconstructor, restricted to plain objects of allowed classes.
    if base is not object:
        raise UnsafeCheckpointError(f"refusing copyreg._reconstructor with base {base!r}")
    return object.__new__(cls)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("builtins", "object"): object,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
}
for _name in dir(torch):
    if isinstance(getattr(torch, _name, None), torch.dtype):
        _ALLOWED[("torch", _name)] = getattr(torch, _name)

_CONFIG_MODULE_PREFIXES = ("hubert_ecg", "transformers.")


def _numpy_global(module: str, name: str) -> Any | None:
    import numpy as np

    allowed = {
        ("numpy", "dtype"): np.dtype,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy.core.multiarray", "scalar"): None,
        ("numpy._core.multiarray", "scalar"): None,
        ("numpy.core.multiarray", "_reconstruct"): None,
        ("numpy._core.multiarray", "_reconstruct"): None,
        ("_codecs", "encode"): None,
    }
    if (module, name) not in allowed:
        return None
    if module == "_codecs":
        import codecs
        return codecs.encode
    if allowed[(module, name)] is not None:
        return allowed[(module, name)]
    import importlib
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:
        return getattr(importlib.import_module(module.replace("_core", "core")), name)


class RestrictedUnpickler(pickle.Unpickler):
    """Allows tensors, plain containers and known config classes; refuses everything else."""

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in _ALLOWED:
            return _ALLOWED[key]
        if module.startswith(_CONFIG_MODULE_PREFIXES) and name.endswith("Config"):
            return _config_class(f"{module}.{name}")
        value = _numpy_global(module, name)
        if value is not None:
            return value
        raise UnsafeCheckpointError(
            f"refusing to load global {module}.{name}: only tensors, plain containers and known "
            f"config classes are allowed in a checkpoint")


def _load(file: Any, **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


restricted_pickle_module = types.ModuleType("hubert_ecg_restricted_pickle")
restricted_pickle_module.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
restricted_pickle_module.load = _load  # type: ignore[attr-defined]
restricted_pickle_module.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]


def safe_torch_load(path: str, map_location: Any = "cpu") -> Any:
    """``torch.load`` through the restricted unpickler (also for files torch would call unsafe)."""
    try:
        return torch.load(path, map_location=map_location, pickle_module=restricted_pickle_module,
                          weights_only=False)
    except UnsafeCheckpointError as err:
        raise UnsafeCheckpointError(f"{path}: {err}") from None
