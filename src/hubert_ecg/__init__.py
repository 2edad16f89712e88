"""HuBERT-ECG: a self-supervised foundation model for 12-lead ECGs.

>>> import hubert_ecg
>>> model = hubert_ecg.load_model("path/to/checkpoint")        # doctest: +SKIP
>>> model(x).last_hidden_state                                   # doctest: +SKIP

The public names are imported lazily, so that data-only tools (readers, preprocessing, the store
workers) start without loading PyTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "CheckpointError": "checkpoint", "load_model": "checkpoint", "save_pretrained": "checkpoint",
    "CheckpointInfo": "config", "HeadConfig": "config", "ModelConfig": "config", "create_config": "config",
    "HubertECG": "model", "HubertECGOutput": "model", "create_model": "model",
    "PreprocessSpec": "preprocess", "read_record": "io", "Record": "io",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'hubert_ecg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
