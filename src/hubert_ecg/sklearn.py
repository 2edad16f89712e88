"""scikit-learn wrapper: HuBERT-ECG embeddings as a transformer inside ``Pipeline`` / ``cross_val_score``.

>>> from sklearn.linear_model import LogisticRegression
>>> from sklearn.model_selection import cross_val_score
>>> from sklearn.pipeline import make_pipeline
>>> from hubert_ecg.sklearn import Embedder
>>> probe = make_pipeline(Embedder(model, fs=500), LogisticRegression(max_iter=1000))   # doctest: +SKIP
>>> cross_val_score(probe, X, y, cv=5, scoring="roc_auc")    # X: (N, 12, samples)     # doctest: +SKIP

The model is frozen: ``fit`` learns nothing (it returns ``self``), so cross-validation cannot leak
labels into the features and every fold reuses the same weights. ``transform`` accepts what
:func:`hubert_ecg.embed` accepts for a batch (an array ``(N, 12, samples)`` at ``fs``, or a list of
records of any lengths) and returns ``(N, hidden)`` float32.

``model`` may be a loaded :class:`~hubert_ecg.model.HubertECG` or a path / Hub id, loaded on first
use; with a path, :func:`sklearn.base.clone` (which copies constructor arguments) stays cheap and the
estimator pickles without the weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

__all__ = ["Embedder"]


class Embedder(TransformerMixin, BaseEstimator):
    """Raw ECGs -> pooled HuBERT-ECG embeddings (N, hidden), a stateless scikit-learn transformer.

    Args:
        model: a :class:`~hubert_ecg.model.HubertECG`, or a checkpoint path / Hub id.
        fs: sampling rate of the inputs (one number, or one per record for a list); required unless
            the inputs are :class:`hubert_ecg.io.Record` objects, which carry their own.
        leads: lead names of the input rows when not in the order I..V6.
        layer: hidden-state index (0 = encoder input, i = output of layer i; default the last).
        windows: how records longer than 5 s are cut (as in :class:`hubert_ecg.ECGPipeline`).
        stride_s: seconds between sliding windows (default: no overlap).
        aggregate: ``mean`` or ``max`` over a record's windows.
        batch_size: windows per forward call.
        engine: ``eager`` (exact float32) or a fast engine (``auto``, ``bf16``, ``int8``, ``onnx``).
        device: where a model given as a path is loaded (``auto``: CUDA when available).
    """

    def __init__(
        self,
        model: Any = None,
        *,
        fs: float | Sequence[float] | None = None,
        leads: Sequence[str] | None = None,
        layer: int | None = None,
        windows: str = "sliding",
        stride_s: float | None = None,
        aggregate: str = "mean",
        batch_size: int = 64,
        engine: str = "eager",
        device: str = "auto",
    ) -> None:
        self.model = model
        self.fs = fs
        self.leads = leads
        self.layer = layer
        self.windows = windows
        self.stride_s = stride_s
        self.aggregate = aggregate
        self.batch_size = batch_size
        self.engine = engine
        self.device = device

    def fit(self, X: Any, y: Any = None) -> Embedder:  # noqa: N803  (scikit-learn's argument names)
        """No-op (the network is frozen); checks the model loads and records the output width."""
        self.n_features_out_ = self._pipeline().model.config.hidden_size
        return self

    def transform(self, X: Any) -> np.ndarray:  # noqa: N803
        """(N, 12, samples) array or list of records -> (N, hidden) float32."""
        batch = _as_batch(X)
        records = isinstance(batch, list) and all(hasattr(r, "signal") and hasattr(r, "fs") for r in batch)
        fs = None if records else self.fs  # Record objects carry their own rate
        if fs is None and not records:
            # no default rate: a silent 500 Hz would resample 250 or 1000 Hz ECGs to the wrong speed
            raise ValueError("Embedder needs the sampling rate of its inputs: Embedder(model, fs=500)")
        if fs is not None and np.ndim(fs) == 1 and len(fs) != len(batch):  # type: ignore[arg-type]
            raise ValueError(
                f"fs has {len(fs)} rates for {len(batch)} records; one rate per record cannot follow the "  # type: ignore[arg-type]
                "rows that a Pipeline or cross-validation split selects: resample to one rate and pass fs=<number>"
            )
        out = np.asarray(self._pipeline().embed(batch, fs, leads=self.leads, layer=self.layer), dtype=np.float32)
        return out.reshape(len(batch), -1)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        width = self._pipeline().model.config.hidden_size
        return np.asarray([f"embedding{i}" for i in range(width)], dtype=object)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.requires_fit = False  # stateless: transform works without fit
        tags.input_tags.two_d_array = False  # takes 3-D signals or lists of records
        return tags

    def _pipeline(self) -> Any:
        from .pipeline import ECGPipeline

        model_key = self.model if isinstance(self.model, (str, bytes)) else id(self.model)
        key = (model_key, self.windows, self.stride_s, self.aggregate, self.batch_size, self.engine, self.device)
        cached = self.__dict__.get("_cache")
        if cached is None or cached[0] != key:
            model = self.model
            if model is None:
                raise ValueError("Embedder needs a model: Embedder(hubert_ecg.load_model(...)) or Embedder('path')")
            if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
                from .checkpoint import load_model
                from .runtime import resolve_device

                model = load_model(model, device=str(resolve_device(self.device)))
            pipe = ECGPipeline(
                model,
                windows=self.windows,
                stride_s=self.stride_s,
                aggregate=self.aggregate,
                batch_size=self.batch_size,
                engine=self.engine,
            )
            self.__dict__["_cache"] = cached = (key, pipe)
        return cached[1]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_cache", None)  # rebuilt on use; fast engines do not pickle
        return state


def _as_batch(X: Any) -> Any:  # noqa: N803
    """The pipeline reads a 2-D array (or a list of 1-D rows) as ONE record; scikit-learn always means
    a batch, so anything that is not a batch of 2-D records is refused rather than reshaped."""
    import torch

    if isinstance(X, torch.Tensor):
        X = X.detach().cpu()  # noqa: N806
        X = (X.float() if X.is_floating_point() else X).numpy()  # noqa: N806
    if isinstance(X, np.ndarray) and X.dtype != object:
        if X.ndim != 3:
            raise ValueError(f"expected a batch of records (N, 12, samples) or a list of records, got shape {X.shape}")
        return X
    if isinstance(X, (str, bytes)) or not hasattr(X, "__iter__"):
        raise TypeError(f"expected a batch of records (N, 12, samples) or a list of records, got {type(X).__name__}")
    items = list(X)
    for i, item in enumerate(items):
        if hasattr(item, "signal") and hasattr(item, "fs"):
            continue  # a Record object
        ndim = item.ndim if hasattr(item, "ndim") else np.ndim(item)
        if ndim != 2:
            raise ValueError(f"record {i} has {ndim} dimensions; each record must be (12, samples)")
    return items
