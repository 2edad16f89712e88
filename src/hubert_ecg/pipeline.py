"""Embeddings and predictions for ECG arrays in memory: one record, a batch, or records of mixed rates.

The network (:class:`hubert_ecg.model.HubertECG`) knows nothing about sampling rates, lead orders,
filters or thresholds; this module puts them around it, as Hugging Face keeps inference in
``pipelines/`` and torchaudio keeps the sample rate on a bundle:

>>> import hubert_ecg
>>> model = hubert_ecg.load_model("Edoardo-BS/hubert-ecg-small")              # doctest: +SKIP
>>> hubert_ecg.embed(model, x, fs=500)          # x (N, 12, samples) -> (N, hidden)   # doctest: +SKIP
>>> pipe = hubert_ecg.ECGPipeline(finetuned, engine="int8")                       # doctest: +SKIP
>>> pipe.predict([rec_500hz, rec_1000hz], fs=[500, 1000]).probabilities  # (2, labels)  # doctest: +SKIP

What goes in (``signals``):

* one record, an array ``(12, samples)`` (or ``(samples, 12)``) -> one result;
* a batch at one rate, an array ``(N, 12, samples)`` -> N results;
* a list of records of any lengths, each an array with its rate in ``fs`` (one number for all or one
  per record), or :class:`hubert_ecg.io.Record` objects (which carry their own rate).

Each record is preprocessed with the checkpoint's own :class:`~hubert_ecg.preprocess.PreprocessSpec`
(records sharing rate and length in one vectorised call), cut into 5 s windows (sliding by default)
and the windows of *all* records are forwarded together in batches of ``batch_size`` windows, so a
GPU is fed full batches rather than one record at a time. Window outputs are then averaged (or
max-pooled) back to one vector per record. Batching changes nothing in the numbers: a record gives
the same result alone or in a batch (tested to 1e-5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .inference import decisions, label_names, run_windows, spec_of, standard_order, stride_samples
from .model import HubertECG
from .preprocess import PreprocessSpec, cut_windows, preprocess_batch, window_starts
from .tasks import get_task, probabilities

__all__ = ["ECGPipeline", "Prediction", "Predictions", "embed", "embed_files", "predict"]

# Records preprocessed together at most (memory: ~3 x B x 12 x n x 8 bytes of scratch).
_PREPROCESS_CHUNK = 128


@dataclass
class Prediction:
    """Output for one record."""

    probabilities: np.ndarray  # (L,) (multi-label, binary) / (C,) class probabilities / regression values
    decisions: np.ndarray  # (L,) 0/1 at the thresholds (0.5 when none); argmax one-hot for multi-class
    label_names: list[str]
    n_windows: int
    window_probabilities: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))

    def as_dict(self) -> dict[str, float]:
        return {name: float(p) for name, p in zip(self.label_names, np.atleast_1d(self.probabilities))}


@dataclass
class Predictions:
    """Outputs for a batch of N records; ``predictions[i]`` is the :class:`Prediction` of record i."""

    probabilities: np.ndarray  # (N, L)
    decisions: np.ndarray  # (N, L)
    label_names: list[str]
    n_windows: np.ndarray  # (N,) windows per record
    window_probabilities: list[np.ndarray] = field(repr=False, default_factory=list)  # N x (W_i, L)

    def __len__(self) -> int:
        return len(self.probabilities)

    def __getitem__(self, i: int) -> Prediction:
        windows = self.window_probabilities[i] if self.window_probabilities else np.zeros(0)
        return Prediction(self.probabilities[i], self.decisions[i], self.label_names, int(self.n_windows[i]), windows)

    def to_pandas(self, ids: Sequence[str] | None = None) -> Any:
        """A DataFrame with ``p_<label>`` and ``y_<label>`` columns (index: ``ids`` or 0..N-1)."""
        import pandas as pd

        frame = pd.DataFrame(self.probabilities, columns=[f"p_{k}" for k in self.label_names], index=ids)
        for j, name in enumerate(self.label_names):
            frame[f"y_{name}"] = self.decisions[:, j]
        return frame


@dataclass
class _Windows:
    x: np.ndarray  # (W, 12 * T) model windows of every record, record after record
    mask: np.ndarray  # (W, 12 * T) True on real samples
    counts: np.ndarray  # (N,) windows per record
    single: bool  # the caller passed one record: return one result, not a batch of one


class ECGPipeline:
    """A model plus everything needed to feed it raw ECGs: preprocessing spec, windowing, thresholds, engine.

    Args:
        model: a :class:`~hubert_ecg.model.HubertECG` (``hubert_ecg.load_model(...)``).
        windows: how records longer than 5 s are cut: ``sliding`` (default; every ``stride_s``
            seconds plus a last window flush with the end), ``first``, ``all_non_overlapping``, or
            ``random`` (``n_crops`` crops drawn with ``seed``).
        stride_s: seconds between sliding windows (default: the window length, no overlap).
        aggregate: ``mean`` or ``max`` over a record's windows.
        batch_size: windows per forward call (across records).
        engine: ``eager`` (exact float32) or a fast path (``auto``, ``bf16``, ``int8``, ``onnx``,
            ``compile``; see :mod:`hubert_ecg.fast_inference`), built once and kept by this pipeline.
        thresholds: decision thresholds per label; default: the model's tuned ones, else 0.5.
        spec: preprocessing; default: the one stored in the checkpoint (published pipeline when none).
        allow_missing_leads: with ``leads=``, accept records missing leads that cannot be derived
            (filled with zeros; the published models were trained on all 12).
    """

    def __init__(
        self,
        model: HubertECG,
        *,
        windows: str = "sliding",
        stride_s: float | None = None,
        aggregate: str = "mean",
        batch_size: int = 64,
        engine: str = "eager",
        n_crops: int = 3,
        seed: int = 0,
        thresholds: Sequence[float] | None = None,
        spec: PreprocessSpec | None = None,
        allow_missing_leads: bool = False,
    ) -> None:
        if aggregate not in ("mean", "max"):
            raise ValueError(f"aggregate must be 'mean' or 'max', got {aggregate!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.spec = spec if spec is not None else spec_of(model)
        self.windows, self.stride_s, self.aggregate = windows, stride_s, aggregate
        self.n_crops, self.seed = n_crops, seed
        self.batch_size, self.engine, self.allow_missing_leads = batch_size, engine, allow_missing_leads
        self.task = model.info.task or "multi_label"
        self.label_names = label_names(model)
        given = thresholds if thresholds is not None else model.info.thresholds
        self.thresholds = np.asarray(given, dtype=np.float64).reshape(-1) if given is not None and len(given) else None
        if self.thresholds is not None and np.isnan(self.thresholds).any():
            # every comparison with NaN is False: that label would silently never be decided positive
            bad = int(np.flatnonzero(np.isnan(self.thresholds))[0])
            raise ValueError(f"thresholds[{bad}] is NaN; give a number (above 1 never decides positive)")
        if (
            self.thresholds is not None
            and self.label_names
            and self.thresholds.size != len(self.label_names)
            and get_task(self.task).uses_thresholds
        ):
            raise ValueError(f"{self.thresholds.size} thresholds for {len(self.label_names)} labels")
        self._runners: dict[str, Any] = {}  # fast engines, built on first use

    # -- inputs -----------------------------------------------------------------------------------
    def prepare(
        self, signals: Any, fs: float | Sequence[float] | None = None, *, leads: Sequence[str] | None = None
    ) -> _Windows:
        """Raw records -> model windows of every record (see the module docstring for accepted inputs)."""
        records, rates, single = _as_records(signals, fs)
        ordered = [standard_order(r, leads, allow_missing_leads=self.allow_missing_leads) for r in records]
        prepared = self._preprocess(ordered, rates)
        stride = stride_samples(self.spec, self.stride_s)
        xs, masks, counts = [], [], []
        for record in prepared:
            starts = window_starts(
                record.shape[1],
                self.spec.window_samples,
                mode=self.windows,
                stride=stride,
                n_crops=self.n_crops,
                rng=self.seed,
            )
            x, mask = cut_windows(record, self.spec, starts)
            xs.append(x)
            masks.append(mask)
            counts.append(len(x))
        return _Windows(np.concatenate(xs), np.concatenate(masks), np.asarray(counts), single)

    def _preprocess(self, records: list[np.ndarray], rates: list[float]) -> list[np.ndarray]:
        """Preprocess records; those sharing (rate, length) go through one vectorised call per chunk."""
        out: list[np.ndarray | None] = [None] * len(records)
        groups: dict[tuple[float, int], list[int]] = {}
        for i, (record, rate) in enumerate(zip(records, rates)):
            groups.setdefault((rate, record.shape[1]), []).append(i)
        for (rate, _), members in groups.items():
            for start in range(0, len(members), _PREPROCESS_CHUNK):
                chunk = members[start : start + _PREPROCESS_CHUNK]
                batch = preprocess_batch(np.stack([records[i] for i in chunk]), rate, self.spec)
                for i, prepared in zip(chunk, batch):
                    out[i] = prepared
        return [p for p in out if p is not None]

    # -- outputs ----------------------------------------------------------------------------------
    def _forward(self, w: _Windows, *, layer: int | None = None, tokens: bool = False) -> dict[str, np.ndarray]:
        was_training = self.model.training
        self.model.eval()
        try:
            return run_windows(
                self.model,
                w.x,
                w.mask,
                batch_size=self.batch_size,
                layer=layer,
                tokens=tokens,
                engine=self.engine,
                runners=self._runners,
            )
        finally:
            self.model.train(was_training)

    def _pool(self, values: np.ndarray) -> np.ndarray:
        return values.max(0) if self.aggregate == "max" else values.mean(0)

    def embed(
        self,
        signals: Any,
        fs: float | Sequence[float] | None = None,
        *,
        leads: Sequence[str] | None = None,
        layer: int | None = None,
        tokens: bool = False,
    ) -> Any:
        """Embeddings: ``(N, hidden)`` for a batch, ``(hidden,)`` for one record.

        Each window's hidden states of ``layer`` (0 = encoder input, i = output of layer i; default
        the last) are averaged over valid tokens, then windows are pooled per record by
        ``aggregate``. With ``tokens``: per-token states ``(W, T, hidden)`` per record instead (a list
        for a batch), padded tokens zeroed.
        """
        w = self.prepare(signals, fs, leads=leads)
        emb = self._forward(w, layer=layer, tokens=tokens)["embedding"]
        per_record = np.split(emb, np.cumsum(w.counts)[:-1])
        if tokens:
            return per_record[0] if w.single else per_record
        pooled = np.stack([self._pool(e) for e in per_record])
        return pooled[0] if w.single else pooled

    def predict(
        self, signals: Any, fs: float | Sequence[float] | None = None, *, leads: Sequence[str] | None = None
    ) -> Any:
        """Probabilities and decisions: :class:`Predictions` for a batch, :class:`Prediction` for one record."""
        if self.model.config.head is None:
            raise ValueError("this model has no classification head: use embed() or fine-tune it first")
        w = self.prepare(signals, fs, leads=leads)
        logits = self._forward(w)["logits"]
        window_probs = probabilities(self.task, torch.from_numpy(logits)).numpy().reshape(len(logits), -1)
        per_record = np.split(window_probs, np.cumsum(w.counts)[:-1])
        probs = np.stack([self._pool(p) for p in per_record])
        batch = Predictions(
            probs,
            decisions(self.task, probs, self.thresholds),
            self.label_names or [f"output_{i}" for i in range(probs.shape[1])],
            w.counts,
            per_record,
        )
        return batch[0] if w.single else batch

    def __call__(self, signals: Any, fs: float | Sequence[float] | None = None, **kwargs: Any) -> Any:
        """``predict`` for models with a head, ``embed`` for backbones."""
        if self.model.config.head is None:
            return self.embed(signals, fs, **kwargs)
        return self.predict(signals, fs, **kwargs)


def _as_array(item: Any) -> Any:
    """A tensor on any device and of any float width (bf16 has no NumPy dtype) -> a NumPy array;
    anything else unchanged."""
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu()
        if item.is_floating_point() and item.dtype not in (torch.float32, torch.float64):
            item = item.float()
        return item.numpy()
    return item


def _as_records(signals: Any, fs: float | Sequence[float] | None) -> tuple[list[np.ndarray], list[float], bool]:
    """Normalise the accepted inputs to (records, their rates, was it a single record)."""
    signals = _as_array(signals)
    if isinstance(signals, np.ndarray) and signals.dtype != object:
        array = signals
        if array.ndim == 2:
            return [array], [_one_rate(fs, 1)[0]], True
        if array.ndim == 3:
            if len(array) == 0:
                raise ValueError(f"no records given (batch of shape {array.shape})")
            return list(array), _one_rate(fs, len(array)), False
        raise ValueError(
            f"expected one record (leads, samples) or a batch (N, leads, samples), got shape {array.shape}"
        )
    if hasattr(signals, "signal") and hasattr(signals, "fs"):  # one Record
        return [signals.signal], [float(signals.fs)], True
    if hasattr(signals, "columns") and hasattr(signals, "to_numpy"):
        # iterating a DataFrame yields its column names, not its rows
        raise TypeError(
            "a DataFrame is not read directly: pass df.to_numpy().T (leads as rows) with leads=list(df.columns)"
        )
    if isinstance(signals, (str, bytes, dict)) or not hasattr(signals, "__iter__"):
        raise TypeError(
            f"expected an array (12, samples) / (N, 12, samples), a list of records or Record objects, "
            f"got {type(signals).__name__}"
        )
    items = [_as_array(item) for item in signals]
    if not items:
        raise ValueError("no records given")
    if all(hasattr(item, "signal") and hasattr(item, "fs") for item in items):
        if fs is not None:
            raise ValueError("Record objects carry their own rate: do not pass fs")
        return [item.signal for item in items], [float(item.fs) for item in items], False
    if all(np.ndim(item) == 1 for item in items):
        # [[lead I ...], [lead II ...], ...] is one record: a record is never 1-D.
        lengths = sorted({len(item) for item in items})
        if len(lengths) > 1:
            raise ValueError(f"one record given as {len(items)} rows of different lengths {lengths}")
        return [np.asarray(items)], [_one_rate(fs, 1)[0]], True
    return [np.asarray(item) for item in items], _one_rate(fs, len(items)), False


def _one_rate(fs: float | Sequence[float] | None, n: int) -> list[float]:
    if fs is None:
        raise ValueError("pass the sampling rate: fs=500 (one for all records) or fs=[...] (one per record)")
    if np.ndim(fs) == 0:
        return [float(fs)] * n  # type: ignore[arg-type]
    rates = [float(f) for f in fs]  # type: ignore[union-attr]
    if len(rates) != n:
        raise ValueError(f"{len(rates)} sampling rates for {n} records")
    return rates


def embed(
    model: HubertECG,
    signals: Any,
    fs: float | Sequence[float] | None = None,
    *,
    leads: Sequence[str] | None = None,
    layer: int | None = None,
    tokens: bool = False,
    **options: Any,
) -> Any:
    """Embeddings of one record (``(hidden,)``) or a batch (``(N, hidden)``); see :meth:`ECGPipeline.embed`.

    ``options`` are :class:`ECGPipeline` arguments (``windows``, ``stride_s``, ``aggregate``,
    ``batch_size``, ``engine`` ...). For repeated calls with a fast engine build one
    :class:`ECGPipeline` and reuse it (the engine is built once per pipeline).
    """
    return ECGPipeline(model, **options).embed(signals, fs, leads=leads, layer=layer, tokens=tokens)


def predict(
    model: HubertECG,
    signals: Any,
    fs: float | Sequence[float] | None = None,
    *,
    leads: Sequence[str] | None = None,
    **options: Any,
) -> Any:
    """Probabilities and decisions of one record (:class:`Prediction`) or a batch (:class:`Predictions`).

    ``options`` are :class:`ECGPipeline` arguments (``thresholds``, ``windows``, ``engine`` ...).
    """
    return ECGPipeline(model, **options).predict(signals, fs, leads=leads)


def embed_files(
    model: HubertECG,
    inputs: str | Sequence[str],
    *,
    layer: int | None = None,
    windows: str = "sliding",
    stride_s: float | None = None,
    aggregate: str = "mean",
    batch_size: int = 64,
    engine: str = "eager",
    workers: int = 1,
    progress: bool = False,
    read_kwargs: dict[str, Any] | None = None,
) -> tuple[list[str], np.ndarray]:
    """Embed every record under ``inputs`` (files, folders, manifests; any supported format).

    Returns (record ids, (N, hidden) float32), rows in discovery order; the same numbers as
    ``hubert-ecg embed``. ``read_kwargs`` are the reader options (``fs``, ``units``, ``lead_names``
    ...). Records that cannot be used are left out with one warning giving their count and the first
    reason; when none can be used the error says why.
    """
    import csv
    import tempfile
    import warnings
    from pathlib import Path

    from .inference import predict_files, read_embeddings

    paths = [inputs] if isinstance(inputs, str) else list(inputs)
    with tempfile.TemporaryDirectory(prefix="hubert_ecg_embed_") as tmp:
        out = Path(tmp) / "embeddings.npy"
        summary = predict_files(
            model,
            paths,
            out,
            mode="embed",
            layer=layer,
            windows=windows,
            stride_s=stride_s,
            aggregate=aggregate,
            batch_size=batch_size,
            read_kwargs=read_kwargs,
            progress=progress,
            engine=engine,
            workers=workers,
        )
        if summary.rejects_path is not None:
            with open(summary.rejects_path, newline="") as fh:
                first = next(csv.DictReader(fh))
            reason = (
                first["reason"]
                if first["reason"].startswith(first["source"])
                else f"{first['source']}: {first['reason']}"
            )
            warnings.warn(f"{summary.rejected} record(s) left out; first: {reason}", stacklevel=2)
        return read_embeddings(out)
