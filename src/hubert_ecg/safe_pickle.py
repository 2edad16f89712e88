"""Checkpoint files in, data out, never code: container checks and a restricted unpickler.

Before anything is unpickled, :func:`inspect_container` looks at the file itself (magic bytes, zip
member names) and refuses every container that is not a plain ``torch.save`` weights file:
TorchScript archives (``code/``, ``constants.pkl``), zip files with extra pickles or unknown members,
legacy tar-format ``torch.save`` archives and anything that is not a pickle at all. A plain zip file or
a legacy (pre-1.6) raw pickle is then read by :class:`RestrictedUnpickler`, whose allow-list names
each permitted global exactly (tensor rebuild helpers, ``torch.Size``, dtypes, ``OrderedDict``,
a few numpy reconstructors); the two published config classes are mapped to :class:`ConfigBag`, a
plain attribute bag. Any other global is refused with its name before it is looked up, so nothing
from the file runs. :func:`check_safetensors_header` does the same sanity check for safetensors files.
"""

from __future__ import annotations

import _compat_pickle
import collections
import json
import pickle
import re
import struct
import types
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the reason (one line)."""


class UnsafeCheckpointError(CheckpointError):
    """A file refused before anything in it ran: an unsafe container or a global outside the allow-list."""


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


# The configuration classes the published .pt files pickle (reference doc §2.2), by exact name.
PUBLISHED_CONFIG_CLASSES = frozenset(
    {
        ("hubert_ecg", "HuBERTECGConfig"),
        ("transformers.models.hubert.configuration_hubert", "HubertConfig"),
    }
)
_CONFIG_BAGS = {key: _config_class(".".join(key)) for key in PUBLISHED_CONFIG_CLASSES}


def _reconstructor(cls: type, base: type, state: Any) -> Any:
    # copyreg._reconstructor (pickle protocols 0/1), restricted to the config bags above.
    if base is not object or not (isinstance(cls, type) and issubclass(cls, ConfigBag)):
        raise UnsafeCheckpointError(f"refusing copyreg._reconstructor of {cls!r} with base {base!r}")
    return object.__new__(cls)


# torch pickles each dtype as a global of the torch module (torch.float32, ...): name them all,
# but only dtypes; a name that is not a dtype in this torch is simply absent.
_DTYPE_NAMES = (
    "float64",
    "float32",
    "float16",
    "bfloat16",
    "complex64",
    "complex128",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
    "float8_e4m3fn",
    "float8_e5m2",
)

ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,  # state dicts
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("builtins", "object"): object,  # only as the base argument of copyreg._reconstructor
    ("copyreg", "_reconstructor"): _reconstructor,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,  # legacy format
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    **{
        ("torch", name): getattr(torch, name)
        for name in _DTYPE_NAMES
        if isinstance(getattr(torch, name, None), torch.dtype)
    },
}

# numpy scalars and arrays (e.g. a ``best_val_loss`` saved as np.float64); resolved on first use so
# that numpy is imported only when a file asks for it.
NUMPY_GLOBALS = frozenset(
    {
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("_codecs", "encode"),  # how protocol-2 pickles spell the bytes of a numpy scalar
    }
)


def _numpy_global(module: str, name: str) -> Any:
    import codecs

    import numpy as np

    if (module, name) == ("_codecs", "encode"):
        return codecs.encode
    if module == "numpy":
        return {"dtype": np.dtype, "ndarray": np.ndarray}[name]
    multiarray = getattr(np, "_core", None) or np.core
    return getattr(multiarray.multiarray, name)


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals named in :data:`ALLOWED_GLOBALS`, :data:`NUMPY_GLOBALS` and the published
    config classes (as :class:`ConfigBag`); refuses every other global before importing anything."""

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 spellings (protocol < 3 pickles write __builtin__.set, copy_reg...), mapped the way
        # pickle.Unpickler.find_class maps them, so that the allow-list and refusals use one spelling.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        key = (module, name)
        if key in ALLOWED_GLOBALS:
            return ALLOWED_GLOBALS[key]
        if key in _CONFIG_BAGS:
            return _CONFIG_BAGS[key]
        if key in NUMPY_GLOBALS:
            return _numpy_global(module, name)
        raise UnsafeCheckpointError(
            f"refusing to load global {module}.{name} (only tensors, plain containers and the published "
            f"config classes are allowed in a checkpoint)"
        )


def _load(file: Any, **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


restricted_pickle_module = types.ModuleType("hubert_ecg_restricted_pickle")
restricted_pickle_module.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
restricted_pickle_module.load = _load  # type: ignore[attr-defined]
restricted_pickle_module.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------
# Container checks (nothing is unpickled or imported here)
# ---------------------------------------------------------------------------------------------
# Members of a plain torch.save zip, relative to its one top-level folder.
_ZIP_MEMBERS = re.compile(
    r"data\.pkl|data/\d+|version|\.format_version|\.storage_alignment|byteorder"
    r"|\.data/serialization_id|\.data/version"
)


def _zip_kind(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (damaged zip archive: {err})") from None
    prefixes = {name.split("/", 1)[0] for name in names}
    if len(prefixes) != 1 or any("/" not in name for name in names):
        raise UnsafeCheckpointError(
            f"{path}: refused: a zip archive that is not a torch.save file "
            f"(members outside one top-level folder: {', '.join(sorted(names)[:3])})"
        )
    relative = [name.split("/", 1)[1] for name in names]
    script = [r for r in relative if r.startswith("code/") or r == "constants.pkl" or r.endswith(".py")]
    if script:
        raise UnsafeCheckpointError(
            f"{path}: refused: a TorchScript archive (torch.jit.save; member {script[0]}); "
            f"loading it would run its code - save a state dict or use `hubert-ecg convert` "
            f"on the original weights"
        )
    pickles = [r for r in relative if r.endswith(".pkl") and r != "data.pkl"]
    if pickles:
        raise UnsafeCheckpointError(f"{path}: refused: a zip archive with an extra pickle member ({pickles[0]})")
    unexpected = [r for r in relative if not _ZIP_MEMBERS.fullmatch(r)]
    if unexpected:
        raise UnsafeCheckpointError(f"{path}: refused: a zip archive with an unexpected member ({unexpected[0]})")
    if "data.pkl" not in relative:
        raise CheckpointError(f"{path}: not a torch.save file (zip archive without data.pkl)")


def inspect_container(path: str | Path) -> str:
    """What kind of file ``path`` is, from its bytes alone: ``"zip"`` (a plain ``torch.save`` archive) or
    ``"pickle"`` (a legacy raw pickle). Raises :class:`UnsafeCheckpointError` for any other container."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read ({err.strerror or err})") from None
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        _zip_kind(path)
        return "zip"
    if len(head) >= 262 and head[257:262] == b"ustar" or _is_v7_tar(head):
        raise UnsafeCheckpointError(
            f"{path}: refused: a legacy tar-format torch.save archive (PyTorch < 0.4); "
            f"re-save it as a state dict with a trusted PyTorch first"
        )
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    raise CheckpointError(
        f"{path}: not a readable PyTorch checkpoint (neither a torch.save zip nor a pickle; first bytes {head[:8]!r})"
    )


def _is_v7_tar(head: bytes) -> bool:
    # A pre-POSIX tar header has no magic; its checksum field (bytes 148-155) is what identifies it.
    if len(head) < 512 or head[:1] in (b"\x80", b"\x00"):
        return False
    try:
        stored = int(head[148:156].split(b"\x00")[0].strip() or b"-1", 8)
    except ValueError:
        return False
    return stored == sum(head[:148]) + 8 * 32 + sum(head[156:512])


def safe_torch_load(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load`` through the restricted unpickler, after :func:`inspect_container` accepted the file."""
    inspect_container(path)
    try:
        return torch.load(
            str(path), map_location=map_location, pickle_module=restricted_pickle_module, weights_only=False
        )
    except UnsafeCheckpointError as err:
        raise UnsafeCheckpointError(f"{path}: {err}") from None


# ---------------------------------------------------------------------------------------------
# safetensors header sanity
# ---------------------------------------------------------------------------------------------
_SAFETENSORS_DTYPES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "U16": 2,
    "U32": 4,
    "U64": 8,
}
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit


def check_safetensors_header(path: str | Path) -> dict[str, Any]:
    """Validate a ``.safetensors`` header before the library maps the file: size, JSON, dtypes, shapes,
    and byte ranges that tile the data section exactly. Returns the header (tensor name -> entry)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
            (length,) = struct.unpack("<Q", raw)
            if length > min(_MAX_HEADER, size - 8):
                raise CheckpointError(f"{path}: not a safetensors file (header length {length} exceeds the file)")
            text = fh.read(length)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read ({err.strerror or err})") from None
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (header is not a JSON object)")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, Mapping) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: safetensors __metadata__ must map strings to strings")
    spans = []
    for name, entry in header.items():
        ok = (
            isinstance(entry, Mapping)
            and entry.get("dtype") in _SAFETENSORS_DTYPES
            and isinstance(entry.get("shape"), list)
            and all(isinstance(d, int) and d >= 0 for d in entry["shape"])
            and isinstance(entry.get("data_offsets"), list)
            and len(entry["data_offsets"]) == 2
            and all(isinstance(o, int) and o >= 0 for o in entry["data_offsets"])
        )
        if not ok:
            raise CheckpointError(f"{path}: tensor {name}: malformed safetensors header entry {str(entry)[:80]}")
        begin, end = entry["data_offsets"]
        numel = 1
        for d in entry["shape"]:
            numel *= d
        if end - begin != numel * _SAFETENSORS_DTYPES[entry["dtype"]]:
            raise CheckpointError(
                f"{path}: tensor {name}: byte range {begin}-{end} does not match {entry['dtype']} {entry['shape']}"
            )
        spans.append((begin, end, name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise CheckpointError(f"{path}: tensor {name}: byte ranges overlap or leave gaps in the data section")
        position = end
    if position != size - 8 - length:
        raise CheckpointError(
            f"{path}: the data section is {size - 8 - length} bytes, the header describes "
            f"{position} (truncated or padded file)"
        )
    return header
