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
        fs: sampling rate of the inputs (one number, or one per record for a list).
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
        fs: float | Sequence[float] | None = 500.0,
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
        return np.asarray(
            self._pipeline().embed(_as_batch(X), self.fs, leads=self.leads, layer=self.layer), dtype=np.float32
        )

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

        key = (id(self.model), self.windows, self.stride_s, self.aggregate, self.batch_size, self.engine)
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
    """A 2-D array is read as ONE record by the pipeline; scikit-learn always means a batch."""
    if isinstance(X, np.ndarray) and X.ndim == 2:
        raise ValueError(f"expected a batch of records (N, 12, samples) or a list of records, got shape {X.shape}")
    return X
