"""HuBERT-ECG: a self-supervised foundation model for 12-lead ECGs.

>>> import hubert_ecg
>>> model = hubert_ecg.load_model("path/to/checkpoint")        # doctest: +SKIP
>>> model(x).last_hidden_state                                   # doctest: +SKIP
>>> hubert_ecg.embed(model, signals, fs=500)   # (N, 12, samples) -> (N, hidden)   # doctest: +SKIP
>>> hubert_ecg.predict(finetuned, signals, fs=500).probabilities                 # doctest: +SKIP

The public names are imported lazily, so that data-only tools (readers, preprocessing, the store
workers) start without loading PyTorch.
"""

from __future__ import annotations

import importlib
from typing import Any


def _installed_version() -> str:
    # One source of truth: the version in pyproject.toml, as installed.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hubert-ecg")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


__version__ = _installed_version()

_EXPORTS = {
    "CheckpointError": "checkpoint",
    "load_model": "checkpoint",
    "save_pretrained": "checkpoint",
    "CheckpointInfo": "config",
    "HeadConfig": "config",
    "ModelConfig": "config",
    "create_config": "config",
    "HubertECG": "model",
    "HubertECGOutput": "model",
    "create_model": "model",
    "PreprocessSpec": "preprocess",
    "read_record": "io",
    "Record": "io",
    "ECGPipeline": "pipeline",
    "Prediction": "pipeline",
    "Predictions": "pipeline",
    "embed": "pipeline",
    "predict": "pipeline",
    "embed_files": "pipeline",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'hubert_ecg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
